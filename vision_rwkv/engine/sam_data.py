"""COCO-format instance masks for RWKV-SAM training and prompted evaluation (mmengine data set)."""
from __future__ import annotations

import json
import os.path as osp
from typing import Optional, Sequence

import numpy as np
import torch
from mmengine.dist import barrier, get_local_rank
from mmengine.registry import DATASETS
from mmengine.structures import BaseDataElement
from PIL import Image
from torch.utils.data import Dataset

from ..data.image_folder import DatasetError, load_rgb
from ..sam.utils.transforms import ResizeLongestSide

__all__ = ['CocoInstanceMasks']


def _read_coco(ann_file: str):
    """pycocotools' COCO index of ``ann_file``; a clear error names a missing or malformed file."""
    from pycocotools.coco import COCO

    if not osp.isfile(ann_file):
        raise DatasetError(f'{ann_file}: annotation file missing')
    try:
        with open(ann_file) as f:
            content = json.load(f)
        coco = COCO()
        coco.dataset = content
        coco.createIndex()
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise DatasetError(f'{ann_file}: not a COCO instances file ({type(e).__name__}: {e})') from e
    return coco


def _resize_masks(masks: np.ndarray, height: int, width: int) -> np.ndarray:
    """(N, H, W) bool masks -> (N, height, width), nearest neighbour."""
    return np.stack([np.array(Image.fromarray(m).resize((width, height), Image.NEAREST)) for m in masks])


@DATASETS.register_module()
class CocoInstanceMasks(Dataset):
    """Images with all their instance masks, resized to a longest side of ``img_size``.

    Each item is ``dict(inputs=(3, h, w) uint8 RGB, data_samples=BaseDataElement(masks=(N, h, w) bool,
    metainfo: image_id, original_size))`` with max(h, w) = ``img_size`` (padding is the model's job).
    Polygons and RLE segmentations are both decoded by pycocotools.

    Args:
        data_root: folder of the set; ``ann_file`` and ``img_dir`` are relative to it.
        ann_file: COCO instances JSON.
        img_dir: image folder.
        img_size: the model's input side.
        training: apply large-scale jitter (random rescale by ``scale_range`` of the input side, then
            a random crop) and horizontal flips.
        scale_range: jitter range (LSJ uses (0.1, 2.0)).
        min_area: instances with fewer visible pixels (after the transform) are dropped.
        generate: if given, arguments of ``vision_rwkv.data.make_coco_instance_set``: the embedded set
            is written to ``data_root`` on first use (local rank 0; other ranks wait).
    """

    def __init__(self, data_root: str, ann_file: str, img_dir: str, img_size: int = 1024, training: bool = False,
                 scale_range: Sequence[float] = (0.1, 2.0), min_area: int = 4, generate: Optional[dict] = None,
                 seed: int = 0):
        if generate is not None:
            from ..data import make_coco_instance_set
            if get_local_rank() == 0:
                make_coco_instance_set(data_root, **generate)
            barrier()
        self.ann_file = osp.join(data_root, ann_file)
        self.img_dir = osp.join(data_root, img_dir)
        self.coco = _read_coco(self.ann_file)
        self.ids = sorted(i for i in self.coco.getImgIds() if self.coco.getAnnIds(imgIds=i, iscrowd=False))
        if not self.ids:
            raise DatasetError(f'{self.ann_file}: no image with an instance annotation')
        self.transform = ResizeLongestSide(img_size)
        self.img_size, self.training, self.scale_range, self.min_area = img_size, training, scale_range, min_area
        self.rng = np.random.default_rng(seed)
        cats = self.coco.loadCats(self.coco.getCatIds())
        self.metainfo = dict(classes=tuple(c['name'] for c in cats))

    def __len__(self) -> int:
        return len(self.ids)

    def _masks(self, image_id: int, height: int, width: int) -> np.ndarray:
        anns = self.coco.loadAnns(self.coco.getAnnIds(imgIds=image_id, iscrowd=False))
        masks = []
        for ann in anns:
            try:
                mask = self.coco.annToMask(ann).astype(bool)
            except (KeyError, TypeError, ValueError, IndexError) as e:
                raise DatasetError(f'{self.ann_file}: annotation {ann.get("id")} of image {image_id} has a '
                                   f'malformed segmentation ({type(e).__name__}: {e})') from e
            if mask.shape != (height, width):
                raise DatasetError(f'{self.ann_file}: annotation {ann.get("id")} decodes to {mask.shape[::-1]} '
                                   f'(W, H) but image {image_id} is {width}×{height}')
            masks.append(mask)
        return np.stack(masks)

    def _jitter(self, image: np.ndarray, masks: np.ndarray):
        """Large-scale jitter: rescale to ``s × img_size`` longest side, random crop to ``img_size``, flip."""
        scale = self.rng.uniform(*self.scale_range)
        h, w = ResizeLongestSide.get_preprocess_shape(image.shape[0], image.shape[1],
                                                      max(1, int(round(self.img_size * scale))))
        image = np.array(Image.fromarray(image).resize((w, h), Image.BILINEAR))
        masks = _resize_masks(masks, h, w)
        y0 = self.rng.integers(0, max(h - self.img_size, 0) + 1)
        x0 = self.rng.integers(0, max(w - self.img_size, 0) + 1)
        image = image[y0:y0 + self.img_size, x0:x0 + self.img_size]
        masks = masks[:, y0:y0 + self.img_size, x0:x0 + self.img_size]
        if self.rng.random() < 0.5:
            image, masks = image[:, ::-1], masks[:, :, ::-1]
        return np.ascontiguousarray(image), np.ascontiguousarray(masks)

    def _resize(self, image: np.ndarray, masks: np.ndarray):
        image = self.transform.apply_image(image)
        return image, _resize_masks(masks, *image.shape[:2])

    def __getitem__(self, index: int) -> dict:
        image_id = self.ids[index]
        info = self.coco.loadImgs(image_id)[0]
        source = np.asarray(load_rgb(osp.join(self.img_dir, info['file_name'])))
        source_masks = self._masks(image_id, source.shape[0], source.shape[1])
        original_size = source.shape[:2]
        transform = self._jitter if self.training else self._resize
        image, masks = transform(source, source_masks)
        keep = masks.reshape(len(masks), -1).sum(1) >= self.min_area
        if not keep.any():  # every instance left the crop: use the whole image instead
            image, masks = self._resize(source, source_masks)
            keep = masks.reshape(len(masks), -1).sum(1) > 0
        sample = BaseDataElement(masks=torch.from_numpy(masks[keep]),
                                 metainfo=dict(image_id=image_id, original_size=original_size))
        return dict(inputs=torch.from_numpy(image).permute(2, 0, 1).contiguous(), data_samples=sample)
