"""An embedded instance-segmentation set of shapes in COCO's layout and annotation format.

Each image is one background texture with 1 to ``max_shapes`` shapes on top; every shape whose
visible (unoccluded) mask keeps at least ``MIN_AREA`` pixels is one instance whose category is its
shape kind (``COCO_CLASSES``, category ids 1..8). The annotation files are plain COCO json
(``images``, ``annotations``, ``categories``, ``info``, ``licenses``) that ``pycocotools.coco.COCO``
reads (tested); COCO readers such as mmdetection's ``CocoDataset`` should take it with
``metainfo=dict(classes=COCO_CLASSES)`` (not tested here: mmdetection is not a dependency).

As in real COCO, segmentations come in both encodings, so readers must handle both:

* polygons (a list of flat ``[x0, y0, x1, y1, ...]`` lists, one per connected part): the outline of
  the visible mask traced with ``cv2.findContours`` (``CHAIN_APPROX_SIMPLE``) on the mask upsampled
  2× and mapped back to pixel coordinates, so the outline runs a quarter pixel inside the pixel edges
  and ``pycocotools`` rasterises it back to the same mask (nearly always exactly);
* compressed RLE (``{'size': [h, w], 'counts': str}``, ``pycocotools.mask.encode``) for every
  annotation whose id is a multiple of ``RLE_EVERY``, and for any mask that polygons cannot carry:
  one whose polygon round trip has IoU < ``POLYGON_MIN_IOU`` (rings and other masks with holes).

``area`` is the visible mask's pixel count, ``bbox`` its tight box ``[x, y, w, h]`` (floats) and
``iscrowd`` is 0 throughout. Image ids are ``index + 1``; annotation ids run 1, 2, ... per split in
image order, then drawing order.

OpenCV and pycocotools (extra ``sam``) are imported only when a set is written or a mask encoded,
so ``vision_rwkv.data`` imports without them.

Layout::

    root/train/shapes_train_<index>.jpg       RGB JPEG, quality 95
    root/val/shapes_val_<index>.jpg
    root/annotations/instances_train.json
    root/annotations/instances_val.json
    root/generator.json
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from .generate import JPEG_QUALITY, SPLITS, _write_atomically
from .segmentation import _check_count
from .shapes import SHAPE_CLASSES, render_scene

COCO_CLASSES = SHAPE_CLASSES
COCO_CATEGORIES = tuple(dict(id=i + 1, name=name, supercategory='shape') for i, name in enumerate(COCO_CLASSES))
# objects are reasonably large: circumradius between 15 % and 35 % of the image side
RADIUS_RANGE = (0.15, 0.35)
# background textures drawn with a visible contrast, as for the segmentation set
BACKGROUND_CONTRAST = 60.0
# instances whose visible mask keeps fewer pixels are occluded away and not annotated
MIN_AREA = 16
# smallest image side at which the smallest shape, drawn last (unoccluded), keeps MIN_AREA pixels
MIN_IMAGE_SIZE = 32
# every RLE_EVERY-th annotation (by id) is stored as RLE, as are masks polygons cannot carry
RLE_EVERY = 4
POLYGON_MIN_IOU = 0.95
# third entry of the generator seed; classification uses the class index (< 8), segmentation 0x5E6
STREAM_TAG = 0xC0C0
ANNOTATION_DIR = 'annotations'


def coco_instance_sample(seed: int, split: str, index: int, image_size: int = 64, max_shapes: int = 4
                         ) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """Image number ``index`` of ``split`` and its instances, exactly as the writer annotates them.

    Returns:
        image: (image_size, image_size, 3) uint8 RGB.
        instances: ``(category_id, mask)`` per annotated instance in drawing order: category ids
            1..8 index ``COCO_CLASSES`` from 1, masks are the visible (H, W) bool masks with at least
            ``MIN_AREA`` pixels.
    """
    rng = np.random.default_rng((seed, SPLITS[split], STREAM_TAG, index))
    labels = list(rng.integers(len(COCO_CLASSES), size=rng.integers(1, max_shapes + 1)))
    image, shapes = render_scene(rng, (image_size, image_size), COCO_CLASSES, labels, radius_range=RADIUS_RANGE,
                                 contrast=BACKGROUND_CONTRAST)
    return image, [(int(s.label) + 1, s.mask) for s in shapes if int(s.mask.sum()) >= MIN_AREA]


def mask_to_polygons(mask: np.ndarray) -> list[list[float]]:
    """Outer outlines of ``mask`` (H, W) bool as COCO polygons; holes are lost (COCO polygons cannot hold them).

    The mask is upsampled 2× so that ``cv2.findContours`` traces the centres of the half pixels
    along the edge; mapped back, the outline lies a quarter pixel inside the pixel edges.
    """
    import cv2

    up = np.repeat(np.repeat(mask.astype(np.uint8), 2, axis=0), 2, axis=1)
    contours, _ = cv2.findContours(up, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [((c.reshape(-1, 2).astype(np.float64) + 0.5) / 2).ravel().tolist() for c in contours if len(c) >= 3]


def mask_to_rle(mask: np.ndarray) -> dict:
    """``mask`` (H, W) bool as compressed COCO RLE with ``counts`` as str (JSON-ready)."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {'size': [int(s) for s in rle['size']], 'counts': rle['counts'].decode('ascii')}


def polygons_to_mask(polygons: list[list[float]], height: int, width: int) -> np.ndarray:
    """Rasterise COCO polygons the way ``pycocotools`` does (union of the parts), (H, W) bool."""
    from pycocotools import mask as mask_utils

    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))).astype(bool)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum()) / float((a | b).sum())


def encode_segmentation(mask: np.ndarray, annotation_id: int) -> list[list[float]] | dict:
    """The COCO segmentation of one instance: RLE for every ``RLE_EVERY``-th id or a lossy polygon, else polygons."""
    if annotation_id % RLE_EVERY != 0:
        polygons = mask_to_polygons(mask)
        if polygons and _iou(polygons_to_mask(polygons, *mask.shape), mask) >= POLYGON_MIN_IOU:
            return polygons
    return mask_to_rle(mask)


def _bbox(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    return [float(x0), float(y0), float(int(xs.max()) - x0 + 1), float(int(ys.max()) - y0 + 1)]


def _image_name(split: str, index: int) -> str:
    return f'shapes_{split}_{index:05d}.jpg'


def make_coco_instance_set(root: str | os.PathLike, image_size: int = 64, train_images: int = 1000,
                           val_images: int = 100, max_shapes: int = 4, seed: int = 0) -> Path:
    """Write (or reuse) the COCO-format instance segmentation set of shapes and return its root.

    See the module docstring for the layout and the annotation format.
    """
    _check_count('image_size', image_size, MIN_IMAGE_SIZE)
    _check_count('train_images', train_images, 1)
    _check_count('val_images', val_images, 1)
    _check_count('max_shapes', max_shapes, 1)
    _check_count('seed', seed, 0)
    params = dict(kind='coco_instance', classes=list(COCO_CLASSES), background_contrast=BACKGROUND_CONTRAST,
                  radius_range=list(RADIUS_RANGE), min_area=MIN_AREA, image_size=image_size,
                  train_images=train_images, val_images=val_images, max_shapes=max_shapes, seed=seed)

    def fill(tmp: Path) -> None:
        (tmp / ANNOTATION_DIR).mkdir()
        for split, count in (('train', train_images), ('val', val_images)):
            folder = tmp / split
            folder.mkdir()
            images, annotations = [], []
            for i in range(count):
                image, instances = coco_instance_sample(seed, split, i, image_size, max_shapes)
                name = _image_name(split, i)
                Image.fromarray(image).save(folder / name, quality=JPEG_QUALITY)
                images.append(dict(id=i + 1, file_name=name, height=image_size, width=image_size))
                for category_id, mask in instances:
                    ann_id = len(annotations) + 1
                    annotations.append(dict(id=ann_id, image_id=i + 1, category_id=category_id,
                                            segmentation=encode_segmentation(mask, ann_id),
                                            area=int(mask.sum()), bbox=_bbox(mask), iscrowd=0))
            info = dict(description=f'vision_rwkv synthetic shapes, COCO instance segmentation, {split} split',
                        version='1.0', contributor='vision_rwkv.data.coco', url='', seed=seed)
            dataset = dict(info=info, licenses=[], images=images, annotations=annotations,
                           categories=[dict(c) for c in COCO_CATEGORIES])
            (tmp / ANNOTATION_DIR / f'instances_{split}.json').write_text(json.dumps(dataset, separators=(',', ':')))

    return _write_atomically(Path(root), params, fill)
