"""Helpers of the automatic mask generator: point grids, crops, mask scores, boxes and run-length encoding.

Conventions (segment-anything's, so that records match its ``SamAutomaticMaskGenerator``):

* points are x, y pixel coordinates; boxes are x0, y0, x1, y1 with ``(x1, y1)`` the last pixel
  *inside* a mask box, but one past the end for crop boxes;
* an uncompressed RLE is ``{'size': [H, W], 'counts': [...]}`` over the column-major (Fortran order)
  flattened mask, runs alternating 0 and 1 and starting with a (possibly empty) run of 0 — the
  layout pycocotools reads.
"""
import math
from itertools import product
from typing import Any, Dict, List, Sequence, Tuple, Union

import numpy as np
import torch
from torchvision.ops import batched_nms

__all__ = ['MaskData', 'RLE', 'area_from_rle', 'box_xyxy_to_xywh', 'build_all_layer_point_grids',
           'build_point_grid', 'calculate_stability_score', 'coco_encode_rle', 'fill_small_holes',
           'generate_crop_boxes', 'is_box_near_crop_edge', 'mask_to_box', 'mask_to_rle', 'nms',
           'remove_small_islands', 'require_cv2', 'require_pycocotools', 'rle_to_mask', 'uncrop_boxes_xyxy',
           'uncrop_masks', 'uncrop_points']

RLE = Dict[str, List[int]]  # {'size': [H, W], 'counts': [zeros, ones, zeros, ...]}
Field = Union[torch.Tensor, list]


class MaskData:
    """Per-mask fields kept aligned: tensors with the masks along dim 0, or lists with one item per mask."""

    def __init__(self, **fields: Field):
        self._fields: Dict[str, Field] = {}
        for name, value in fields.items():
            self[name] = value

    def __getitem__(self, name: str) -> Field:
        return self._fields[name]

    def __setitem__(self, name: str, value: Field) -> None:
        if not isinstance(value, (torch.Tensor, list)):
            raise TypeError(f'MaskData field {name!r} must be a tensor or a list, got {type(value).__name__}')
        self._fields[name] = value

    def __delitem__(self, name: str) -> None:
        del self._fields[name]

    def __len__(self) -> int:
        return len(next(iter(self._fields.values()), []))

    def filter(self, keep: torch.Tensor) -> None:
        """Keep the masks selected by a (N,) bool mask, or take the (K,) indices ``keep`` in that order."""
        if keep.dtype == torch.bool:
            keep = keep.nonzero()[:, 0]
        indices = keep.tolist()
        for name, value in self._fields.items():
            if isinstance(value, torch.Tensor):
                self._fields[name] = value[keep.to(value.device)]
            else:
                self._fields[name] = [value[i] for i in indices]

    @classmethod
    def cat(cls, parts: Sequence['MaskData']) -> 'MaskData':
        """Concatenate masks of parts with the same fields, in order."""
        merged = {}
        for name, first in parts[0]._fields.items():
            values = [part[name] for part in parts]
            merged[name] = torch.cat(values) if isinstance(first, torch.Tensor) else [x for v in values for x in v]
        return cls(**merged)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Indices (K,) of the (N, 4) boxes kept by non-maximum suppression, highest score first."""
    categories = torch.zeros(len(boxes), dtype=torch.int64, device=boxes.device)
    return batched_nms(boxes.float(), scores.to(boxes.device), categories, iou_threshold)


# ----------------------------------------------------------------------------- point grids and crops

def build_point_grid(n_per_side: int) -> np.ndarray:
    """(n², 2) x, y cell centres of an n × n grid over [0, 1]², row by row."""
    half_cell = 1 / (2 * n_per_side)
    centres = np.linspace(half_cell, 1 - half_cell, n_per_side)
    xs, ys = np.meshgrid(centres, centres)
    return np.stack([xs.reshape(-1), ys.reshape(-1)], axis=-1)


def build_all_layer_point_grids(n_per_side: int, n_layers: int, scale_per_layer: int) -> List[np.ndarray]:
    """One grid per crop layer 0..n_layers; layer i has ``int(n_per_side / scale_per_layer**i)`` per side."""
    return [build_point_grid(int(n_per_side / scale_per_layer ** i)) for i in range(n_layers + 1)]


def _crop_length(image_length: int, n_crops: int, overlap: int) -> int:
    """Side of each of ``n_crops`` crops that tile ``image_length`` with ``overlap`` pixels in common."""
    return int(math.ceil((image_length + overlap * (n_crops - 1)) / n_crops))


def generate_crop_boxes(image_size: Tuple[int, int], n_layers: int,
                        overlap_ratio: float) -> Tuple[List[List[int]], List[int]]:
    """Crop boxes x0, y0, x1, y1 (exclusive ends) of every layer and each box's layer index.

    Layer 0 is the whole (H, W) image; layer i ≥ 1 is a 2^i × 2^i tiling whose neighbouring crops
    overlap by ``overlap_ratio`` × short side × 2 / 2^i pixels. Crops go column by column (x outer).
    """
    height, width = image_size
    boxes, layers = [[0, 0, width, height]], [0]
    for layer in range(1, n_layers + 1):
        n_crops = 2 ** layer
        overlap = int(overlap_ratio * min(height, width) * 2 / n_crops)
        crop_w, crop_h = _crop_length(width, n_crops, overlap), _crop_length(height, n_crops, overlap)
        x0s = [(crop_w - overlap) * i for i in range(n_crops)]
        y0s = [(crop_h - overlap) * i for i in range(n_crops)]
        for x0, y0 in product(x0s, y0s):
            boxes.append([x0, y0, min(x0 + crop_w, width), min(y0 + crop_h, height)])
            layers.append(layer)
    return boxes, layers


def _offset(crop_box: Sequence[int], n_coords: int, like: torch.Tensor) -> torch.Tensor:
    """(x0, y0) of a crop repeated to ``n_coords`` coordinates (x, y, x, y, ...) on ``like``'s device."""
    return torch.tensor(list(crop_box[:2]) * (n_coords // 2), device=like.device)


def uncrop_boxes_xyxy(boxes: torch.Tensor, crop_box: Sequence[int]) -> torch.Tensor:
    """(..., 4) boxes in a crop -> in the full image."""
    return boxes + _offset(crop_box, 4, boxes)


def uncrop_points(points: torch.Tensor, crop_box: Sequence[int]) -> torch.Tensor:
    """(..., 2) points in a crop -> in the full image."""
    return points + _offset(crop_box, 2, points)


def uncrop_masks(masks: torch.Tensor, crop_box: Sequence[int], height: int, width: int) -> torch.Tensor:
    """(N, h, w) masks of a crop -> (N, height, width), zero outside the crop."""
    x0, y0, x1, y1 = crop_box
    if (x0, y0, x1, y1) == (0, 0, width, height):
        return masks
    full = masks.new_zeros((masks.shape[0], height, width))
    full[:, y0:y1, x0:x1] = masks
    return full


def is_box_near_crop_edge(boxes: torch.Tensor, crop_box: Sequence[int], image_box: Sequence[int],
                          atol: float = 20.0) -> torch.Tensor:
    """(N,) whether each (N, 4) box of a crop (crop frame) comes within ``atol`` pixels of a crop side
    that is not also an image side (such masks are probably cut by the crop)."""
    boxes = uncrop_boxes_xyxy(boxes, crop_box).float()
    crop = torch.as_tensor(crop_box, dtype=torch.float32, device=boxes.device)
    image = torch.as_tensor(image_box, dtype=torch.float32, device=boxes.device)
    near_crop_side = (boxes - crop).abs() <= atol
    near_image_side = (boxes - image).abs() <= atol
    return (near_crop_side & ~near_image_side).any(dim=1)


# ----------------------------------------------------------------------------- masks, scores, boxes

def calculate_stability_score(logits: torch.Tensor, mask_threshold: float, offset: float) -> torch.Tensor:
    """(..., H, W) mask logits -> (...,) IoU of the masks thresholded at ``mask_threshold ± offset``.

    The higher-threshold mask lies inside the lower one, so the IoU is the ratio of their areas
    (NaN when both are empty).
    """
    inner = (logits > mask_threshold + offset).flatten(-2).sum(-1)
    outer = (logits > mask_threshold - offset).flatten(-2).sum(-1)
    return inner / outer


def _first_true(flags: torch.Tensor) -> torch.Tensor:
    """(..., L) bool -> (...,) index of the first True along the last dim (0 when there is none)."""
    return flags.to(torch.uint8).argmax(dim=-1)


def mask_to_box(masks: torch.Tensor) -> torch.Tensor:
    """(..., H, W) bool masks -> (..., 4) int64 boxes x0, y0, x1, y1 of their first and last pixels;
    [0, 0, 0, 0] for an empty mask."""
    height, width = masks.shape[-2:]
    if masks.numel() == 0:
        return torch.zeros((*masks.shape[:-2], 4), dtype=torch.int64, device=masks.device)
    rows, cols = masks.any(dim=-1), masks.any(dim=-2)
    boxes = torch.stack([_first_true(cols), _first_true(rows),
                         width - 1 - _first_true(cols.flip(-1)), height - 1 - _first_true(rows.flip(-1))], dim=-1)
    return boxes * rows.any(dim=-1, keepdim=True)


def box_xyxy_to_xywh(box: torch.Tensor) -> torch.Tensor:
    """(..., 4) x0, y0, x1, y1 -> x0, y0, x1 - x0, y1 - y0."""
    return torch.cat([box[..., :2], box[..., 2:] - box[..., :2]], dim=-1)


# ----------------------------------------------------------------------------- run-length encoding

def mask_to_rle(masks: torch.Tensor) -> List[RLE]:
    """(N, H, W) bool masks -> N uncompressed RLEs (column-major runs, see the module docstring)."""
    n, height, width = masks.shape
    if n == 0:
        return []
    flat = masks.transpose(1, 2).reshape(n, height * width)
    # a False pixel before each mask makes the first change the start of the first run of 1s (maybe at 0)
    padded = torch.cat([flat.new_zeros((n, 1)), flat], dim=1)
    rows, starts = (padded[:, 1:] != padded[:, :-1]).nonzero(as_tuple=True)
    per_mask = torch.bincount(rows, minlength=n).tolist()
    rles = []
    for run_starts in starts.cpu().split(per_mask):
        bounds = torch.cat([torch.zeros(1, dtype=torch.int64), run_starts, torch.tensor([height * width])])
        rles.append({'size': [height, width], 'counts': bounds.diff().tolist()})
    return rles


def rle_to_mask(rle: RLE) -> np.ndarray:
    """Uncompressed RLE -> (H, W) bool mask (C-contiguous)."""
    height, width = rle['size']
    counts = np.asarray(rle['counts'], dtype=np.int64)
    values = np.arange(len(counts)) % 2 == 1
    return np.ascontiguousarray(np.repeat(values, counts).reshape(width, height).T)


def area_from_rle(rle: RLE) -> int:
    """Number of mask pixels of an uncompressed RLE (the sum of its runs of 1s)."""
    return int(sum(rle['counts'][1::2]))


def require_pycocotools() -> Any:
    """``pycocotools.mask``, or an ImportError saying what needs it."""
    try:
        from pycocotools import mask as mask_utils
    except ImportError as error:
        raise ImportError("output_mode='coco_rle' needs pycocotools (pip install pycocotools)") from error
    return mask_utils


def coco_encode_rle(rle: RLE) -> Dict[str, Any]:
    """Uncompressed RLE -> COCO compressed RLE ``{'size': [H, W], 'counts': str}`` (JSON-serialisable)."""
    height, width = rle['size']
    encoded = require_pycocotools().frPyObjects(rle, height, width)
    return {'size': list(encoded['size']), 'counts': encoded['counts'].decode('utf-8')}


# ----------------------------------------------------------------------------- small regions (OpenCV)

def require_cv2() -> Any:
    """The ``cv2`` module, or an ImportError saying what needs it."""
    try:
        import cv2
    except ImportError as error:
        raise ImportError('min_mask_region_area > 0 needs OpenCV (pip install opencv-python-headless)') from error
    return cv2


def _components(mask: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """8-connected components of the True pixels of an (H, W) mask: labels (H, W) with 0 for the False
    pixels and 1..K for the components, and the (K,) component areas."""
    cv2 = require_cv2()
    _, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    return labels, stats[1:, cv2.CC_STAT_AREA]


def fill_small_holes(mask: np.ndarray, min_area: float) -> Tuple[np.ndarray, bool]:
    """Set the 8-connected False regions smaller than ``min_area`` pixels (border ones included) to True.

    Returns the (H, W) bool mask and whether anything changed.
    """
    labels, areas = _components(~mask)
    small = np.flatnonzero(areas < min_area) + 1
    if not len(small):
        return mask, False
    return np.isin(labels, np.concatenate([[0], small])), True


def remove_small_islands(mask: np.ndarray, min_area: float) -> Tuple[np.ndarray, bool]:
    """Drop the 8-connected True regions smaller than ``min_area`` pixels; if all are, keep the largest.

    Returns the (H, W) bool mask and whether anything changed.
    """
    labels, areas = _components(mask)
    small = areas < min_area
    if not small.any():
        return mask, False
    kept = np.flatnonzero(~small) + 1 if not small.all() else [int(np.argmax(areas)) + 1]
    return np.isin(labels, kept), True
