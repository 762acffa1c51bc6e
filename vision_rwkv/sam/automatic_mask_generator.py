"""Segment everything in an image with RWKV-SAM: segment-anything's ``SamAutomaticMaskGenerator`` API.

A grid of single-point prompts covers the image (and, with ``crop_n_layers`` > 0, each of a pyramid
of overlapping crops). Every point gives three masks; masks with a low predicted IoU or an unstable
threshold are dropped, then duplicates by box NMS within each crop and, across crops, preferring the
smaller crop's mask. Optionally small islands and holes are removed (OpenCV) with one more NMS.

Same parameters, defaults, records and order of records as segment-anything (tested on the same
model); differences, all for bad input: arguments are checked with ``ValueError``s, and ``generate``
takes every image kind of ``RWKVSamPredictor.set_image`` (grayscale, RGBA, 16-bit, ``image_format``).
"""
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torchvision.ops import box_area

from .modeling.sam import RWKVSam
from .predictor import RWKVSamPredictor, to_rgb_uint8
from .utils.amg import (MaskData, area_from_rle, box_xyxy_to_xywh, build_all_layer_point_grids,
                        calculate_stability_score, coco_encode_rle, fill_small_holes, generate_crop_boxes,
                        is_box_near_crop_edge, mask_to_box, mask_to_rle, nms, remove_small_islands, require_cv2,
                        require_pycocotools, rle_to_mask, uncrop_boxes_xyxy, uncrop_masks, uncrop_points)

__all__ = ['RWKVSamAutomaticMaskGenerator']

OUTPUT_MODES = ('binary_mask', 'uncompressed_rle', 'coco_rle')


class RWKVSamAutomaticMaskGenerator:
    """All masks of an image from a grid of point prompts (segment-anything's automatic mask generator).

    Args:
        model: an ``RWKVSam``.
        points_per_side: an n × n point grid on the image (fewer on crops, see below); or None with
            ``point_grids``.
        points_per_batch: points run through the mask decoder at once (memory vs. speed).
        pred_iou_thresh: keep masks whose predicted IoU is above this (0 keeps all).
        stability_score_thresh: keep masks whose stability score (IoU of the masks thresholded at
            ``mask_threshold ± stability_score_offset``) is at least this (0 keeps all).
        stability_score_offset: the logit offset of the stability score.
        box_nms_thresh: box IoU above which a mask of lower predicted IoU is dropped within a crop.
        crop_n_layers: crop layers besides the whole image; layer i is a 2^i × 2^i tiling.
        crop_nms_thresh: box IoU above which a duplicate mask is dropped across crops (smaller crops win).
        crop_overlap_ratio: overlap of neighbouring layer-1 crops as a fraction of the image's short
            side (halved at each further layer).
        crop_n_points_downscale_factor: layer i uses ``points_per_side / factor**i`` points per side.
        point_grids: instead of ``points_per_side``, one (N, 2) grid of x, y in [0, 1] per layer.
        min_mask_region_area: if > 0, remove islands and fill holes smaller than this many pixels
            (needs OpenCV), then repeat NMS with the larger of the two NMS thresholds.
        output_mode: 'binary_mask' ((H, W) bool arrays), 'uncompressed_rle' or 'coco_rle' (pycocotools).
    """

    def __init__(self, model: RWKVSam, points_per_side: Optional[int] = 32, points_per_batch: int = 64,
                 pred_iou_thresh: float = 0.88, stability_score_thresh: float = 0.95,
                 stability_score_offset: float = 1.0, box_nms_thresh: float = 0.7, crop_n_layers: int = 0,
                 crop_nms_thresh: float = 0.7, crop_overlap_ratio: float = 512 / 1500,
                 crop_n_points_downscale_factor: int = 1, point_grids: Optional[List[np.ndarray]] = None,
                 min_mask_region_area: int = 0, output_mode: str = 'binary_mask') -> None:
        _check_count('points_per_batch', points_per_batch, minimum=1)
        _check_count('crop_n_layers', crop_n_layers, minimum=0)
        _check_count('crop_n_points_downscale_factor', crop_n_points_downscale_factor, minimum=1)
        if not 0 <= crop_overlap_ratio < 1:
            raise ValueError(f'crop_overlap_ratio must be in [0, 1), got {crop_overlap_ratio}')
        if min_mask_region_area < 0:
            raise ValueError(f'min_mask_region_area must be >= 0, got {min_mask_region_area}')
        if output_mode not in OUTPUT_MODES:
            raise ValueError(f'output_mode must be one of {OUTPUT_MODES}, got {output_mode!r}')
        if output_mode == 'coco_rle':
            require_pycocotools()
        if min_mask_region_area > 0:
            require_cv2()
        self.point_grids = _point_grids(points_per_side, point_grids, crop_n_layers, crop_n_points_downscale_factor)
        self.predictor = RWKVSamPredictor(model)
        self.points_per_batch = points_per_batch
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset
        self.box_nms_thresh = box_nms_thresh
        self.crop_n_layers = crop_n_layers
        self.crop_nms_thresh = crop_nms_thresh
        self.crop_overlap_ratio = crop_overlap_ratio
        self.crop_n_points_downscale_factor = crop_n_points_downscale_factor
        self.min_mask_region_area = min_mask_region_area
        self.output_mode = output_mode

    @torch.no_grad()
    def generate(self, image: np.ndarray, image_format: str = 'RGB') -> List[Dict[str, Any]]:
        """One record per mask of an (H, W[, C]) image (kinds as ``to_rgb_uint8``), in the order of the
        last NMS (segment-anything's order; empty when no mask survives).

        Record keys: ``segmentation`` ((H, W) bool array or RLE dict, per ``output_mode``), ``area``
        (pixels), ``bbox`` (x, y, w, h with w = last column - first column), ``predicted_iou``,
        ``point_coords`` ([[x, y]] the prompt), ``stability_score``, ``crop_box`` (x, y, w, h).
        """
        image = to_rgb_uint8(image, image_format)
        data = self._generate_masks(image)
        if self.min_mask_region_area > 0:
            data = self._remove_small_regions(data)
        return self._records(data)

    def _generate_masks(self, image: np.ndarray) -> MaskData:
        """Masks of every crop in the full-image frame, deduplicated across crops."""
        crop_boxes, layers = generate_crop_boxes(image.shape[:2], self.crop_n_layers, self.crop_overlap_ratio)
        data = MaskData.cat([self._process_crop(image, box, layer) for box, layer in zip(crop_boxes, layers)])
        if len(crop_boxes) > 1:
            data.filter(nms(data['boxes'], 1 / box_area(data['crop_boxes']), self.crop_nms_thresh))
        return data

    def _process_crop(self, image: np.ndarray, crop_box: List[int], layer: int) -> MaskData:
        """Masks of the point grid of one crop, deduplicated, in the full-image frame."""
        x0, y0, x1, y1 = crop_box
        crop = image[y0:y1, x0:x1]
        self.predictor.set_image(crop)
        points = self.point_grids[layer] * np.array([[crop.shape[1], crop.shape[0]]])
        batches = [self._process_batch(points[i:i + self.points_per_batch], crop_box, image.shape[:2])
                   for i in range(0, len(points), self.points_per_batch)]
        self.predictor.reset_image()
        data = MaskData.cat(batches)
        data.filter(nms(data['boxes'], data['iou_preds'], self.box_nms_thresh))
        data['boxes'] = uncrop_boxes_xyxy(data['boxes'], crop_box)
        data['points'] = uncrop_points(data['points'], crop_box)
        data['crop_boxes'] = torch.tensor([crop_box], device=data['boxes'].device).expand(len(data), 4)
        return data

    def _process_batch(self, points: np.ndarray, crop_box: List[int], image_size: Tuple[int, int]) -> MaskData:
        """(B, 2) points of the current crop -> the surviving masks of their 3 B predictions.

        Boxes and points are in the crop frame, the masks are RLEs of the full image.
        """
        device, threshold = self.predictor.device, self.predictor.model.mask_threshold
        # float64 like segment-anything's generator: the prompt encoder casts after dividing by the input size
        coords = torch.as_tensor(self.predictor.transform.apply_coords(points, self.predictor.original_size),
                                 device=device)
        labels = torch.ones((len(points), 1), dtype=torch.int64, device=device)
        logits, iou_preds, _ = self.predictor.predict_torch(coords[:, None], labels, multimask_output=True,
                                                            return_logits=True)
        n_masks = logits.shape[1]
        data = MaskData(logits=logits.flatten(0, 1), iou_preds=iou_preds.flatten(0, 1),
                        points=torch.as_tensor(points, device=device).repeat_interleave(n_masks, dim=0))
        if self.pred_iou_thresh > 0:
            data.filter(data['iou_preds'] > self.pred_iou_thresh)
        data['stability_score'] = calculate_stability_score(data['logits'], threshold, self.stability_score_offset)
        if self.stability_score_thresh > 0:
            data.filter(data['stability_score'] >= self.stability_score_thresh)
        masks = data['logits'] > threshold
        del data['logits']
        data['boxes'] = mask_to_box(masks)
        keep = ~is_box_near_crop_edge(data['boxes'], crop_box, [0, 0, image_size[1], image_size[0]])
        data.filter(keep)
        data['rles'] = mask_to_rle(uncrop_masks(masks[keep], crop_box, *image_size))
        return data

    def _remove_small_regions(self, data: MaskData) -> MaskData:
        """Fill small holes and drop small islands of every mask, then NMS preferring unchanged masks
        (box IoU above the larger NMS threshold); boxes and RLEs of kept changed masks are updated."""
        if not len(data):
            return data
        masks, unchanged = [], []
        for rle in data['rles']:
            mask, filled = fill_small_holes(rle_to_mask(rle), self.min_mask_region_area)
            mask, removed = remove_small_islands(mask, self.min_mask_region_area)
            masks.append(mask)
            unchanged.append(not (filled or removed))
        masks = torch.as_tensor(np.stack(masks))
        boxes = mask_to_box(masks)
        keep = nms(boxes, torch.tensor(unchanged, dtype=torch.float32),
                   max(self.box_nms_thresh, self.crop_nms_thresh))
        for i in keep.tolist():
            if not unchanged[i]:
                data['rles'][i] = mask_to_rle(masks[i:i + 1])[0]
                data['boxes'][i] = boxes[i]
        data.filter(keep)
        return data

    def _segmentations(self, rles: List[Dict[str, Any]]) -> List[Any]:
        """RLEs -> the masks of ``output_mode``."""
        if self.output_mode == 'binary_mask':
            return [rle_to_mask(rle) for rle in rles]
        if self.output_mode == 'coco_rle':
            return [coco_encode_rle(rle) for rle in rles]
        return rles

    def _records(self, data: MaskData) -> List[Dict[str, Any]]:
        """segment-anything's mask records, one per mask of ``data``."""
        fields = zip(self._segmentations(data['rles']), data['rles'], box_xyxy_to_xywh(data['boxes']).tolist(),
                     data['iou_preds'].tolist(), data['points'].tolist(), data['stability_score'].tolist(),
                     box_xyxy_to_xywh(data['crop_boxes']).tolist())
        return [dict(segmentation=segmentation, area=area_from_rle(rle), bbox=bbox, predicted_iou=iou,
                     point_coords=[point], stability_score=stability, crop_box=crop_box)
                for segmentation, rle, bbox, iou, point, stability, crop_box in fields]


def _check_count(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f'{name} must be an integer >= {minimum}, got {value!r}')


def _point_grids(points_per_side: Optional[int], point_grids: Optional[Sequence[np.ndarray]], crop_n_layers: int,
                 downscale_factor: int) -> List[np.ndarray]:
    """The (N_i, 2) normalised point grid of each crop layer 0..crop_n_layers, checked."""
    if (points_per_side is None) == (point_grids is None):
        raise ValueError('give exactly one of points_per_side and point_grids (set the other to None)')
    if point_grids is None:
        _check_count('points_per_side', points_per_side, minimum=1)
        if int(points_per_side / downscale_factor ** crop_n_layers) < 1:
            raise ValueError(f'points_per_side={points_per_side} leaves no point in crop layer {crop_n_layers} '
                             f'(points_per_side / crop_n_points_downscale_factor**layer must be >= 1)')
        return build_all_layer_point_grids(points_per_side, crop_n_layers, downscale_factor)
    if len(point_grids) < crop_n_layers + 1:
        raise ValueError(f'point_grids needs one grid per crop layer ({crop_n_layers + 1}), got {len(point_grids)}')
    grids = [np.asarray(grid, dtype=float) for grid in point_grids]
    for layer, grid in enumerate(grids):
        if grid.ndim != 2 or grid.shape[1] != 2 or not len(grid):
            raise ValueError(f'point_grids[{layer}] must be a non-empty (N, 2) array of x, y, got shape {grid.shape}')
        if not (np.isfinite(grid).all() and (grid >= 0).all() and (grid <= 1).all()):
            raise ValueError(f'point_grids[{layer}] must hold x, y normalised to [0, 1]')
    return grids
