"""The embedded shapes set in SA-1B's layout: one JPEG and one JSON file per image.

SA-1B (segment-anything's data set) ships flat folders of ``sa_<id>.jpg`` / ``sa_<id>.json`` pairs.
Each JSON holds::

    {"image": {"image_id": int, "width": int, "height": int, "file_name": "sa_<id>.jpg"},
     "annotations": [{"id": int, "segmentation": {"size": [h, w], "counts": str},   # COCO RLE
                      "bbox": [x, y, w, h], "area": int, "predicted_iou": float,
                      "point_coords": [[x, y]], "crop_box": [x, y, w, h],
                      "stability_score": float}, ...]}

SA-1B masks are class-agnostic and always compressed RLE. The images and instances here are those of
the COCO-format set (``coco_instance_sample``, same seed and split), so both readers can be checked
against one source. ``predicted_iou`` and ``stability_score`` are 1.0 (the masks are exact) and
``point_coords`` is the mask pixel farthest from its boundary.

Layout::

    root/sa_<id>.jpg     RGB JPEG, quality 95; ids run 1..num_images
    root/sa_<id>.json
    root/generator.json
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from .coco import MIN_IMAGE_SIZE, _bbox, coco_instance_sample, mask_to_rle
from .generate import JPEG_QUALITY, SPLITS, _write_atomically
from .image_folder import DatasetError
from .segmentation import _check_count

__all__ = ['make_sa1b_set', 'sa1b_point']


def sa1b_point(mask: np.ndarray) -> list[float]:
    """[x, y] of the pixel centre farthest from the boundary of a non-empty (H, W) bool mask
    (the centre point RWKV-SAM's evaluation prompts with)."""
    import torch

    from ..sam.prompts import centre_point

    return [float(c) for c in centre_point(torch.from_numpy(mask))[0]]


def make_sa1b_set(root: str | os.PathLike, image_size: int = 64, num_images: int = 100, split: str = 'val',
                  max_shapes: int = 4, seed: int = 0) -> Path:
    """Write (or reuse) ``num_images`` images of the shapes set's ``split`` in SA-1B's layout; return the root."""
    _check_count('image_size', image_size, MIN_IMAGE_SIZE)
    _check_count('num_images', num_images, 1)
    _check_count('max_shapes', max_shapes, 1)
    _check_count('seed', seed, 0)
    if split not in SPLITS:
        raise DatasetError(f'split must be one of {sorted(SPLITS)}, got {split!r}')
    params = dict(kind='sa1b', image_size=image_size, num_images=num_images, split=split, max_shapes=max_shapes,
                  seed=seed)

    def fill(tmp: Path) -> None:
        ann_id = 0
        for i in range(num_images):
            image, instances = coco_instance_sample(seed, split, i, image_size, max_shapes)
            image_id = i + 1
            name = f'sa_{image_id}.jpg'
            Image.fromarray(image).save(tmp / name, quality=JPEG_QUALITY)
            annotations = []
            for _, mask in instances:
                ann_id += 1
                annotations.append(dict(id=ann_id, segmentation=mask_to_rle(mask), bbox=_bbox(mask),
                                        area=int(mask.sum()), predicted_iou=1.0, point_coords=[sa1b_point(mask)],
                                        crop_box=[0.0, 0.0, float(image_size), float(image_size)],
                                        stability_score=1.0))
            record = dict(image=dict(image_id=image_id, width=image_size, height=image_size, file_name=name),
                          annotations=annotations)
            (tmp / f'sa_{image_id}.json').write_text(json.dumps(record, separators=(',', ':')))

    return _write_atomically(Path(root), params, fill)
