"""An embedded semantic-segmentation set in ADE20K's layout, with real ADE20K label ids.

Each image is one background texture ("stuff") with 1 to ``max_shapes`` shapes ("things") on top.
Every class is named after an ADE20K category and its label PNG stores that category's ADE20K id
(1-based index in mmsegmentation's ``ADE20KDataset.METAINFO['classes']``; 0 = unlabelled), so
mmsegmentation's own ``ADE20KDataset`` reads the set with ``metainfo=dict(classes=SEG_TOY_CLASSES)``:
it maps these ids to 0..7 and everything else, the unlabelled 0 included, to 255 (ignored).
As in ADE20K, region boundaries are left unlabelled: a pixel whose 4-neighbourhood holds another
label gets 0, which leaves one unlabelled pixel on each side of every boundary.

Layout::

    root/images/{training,validation}/toy_{train,val}_<index>.jpg       RGB JPEG, quality 95
    root/annotations/{training,validation}/toy_{train,val}_<index>.png  mode 'L', ADE20K ids
    root/generator.json
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from .generate import JPEG_QUALITY, SPLITS, _write_atomically
from .image_folder import DatasetError
from .shapes import BACKGROUND_KINDS, ShapeInstance, render_scene


class SegClass(NamedTuple):
    """One class of the toy set: its ADE20K name and id, and the texture or shape kind that draws it."""
    name: str
    ade_id: int
    source: str


SEG_CLASSES = (
    SegClass('sky', 3, 'noise'),
    SegClass('wall', 1, 'stripes'),
    SegClass('floor', 4, 'checkerboard'),
    SegClass('ball', 120, 'circle'),
    SegClass('box', 42, 'square'),
    SegClass('signboard', 44, 'triangle'),
    SegClass('flag', 150, 'star'),
    SegClass('plate', 143, 'ring'),
)
SEG_TOY_CLASSES = tuple(c.name for c in SEG_CLASSES)
UNLABELLED = 0
# objects are large: circumradius between 20 % and 40 % of the image side
RADIUS_RANGE = (0.2, 0.4)
# background textures are labelled classes here, so they are drawn with a visible contrast
BACKGROUND_CONTRAST = 60.0
# smallest image side at which the smallest ring keeps pixels inside its unlabelled boundary band
MIN_IMAGE_SIZE = 32
# third entry of the generator seed; classification uses the class index (< 8) there
STREAM_TAG = 0x5E6
SPLIT_FOLDERS = {'train': 'training', 'val': 'validation'}

_BACKGROUND_IDS = {c.source: c.ade_id for c in SEG_CLASSES if c.source in BACKGROUND_KINDS}
_OBJECTS = tuple(c for c in SEG_CLASSES if c.source not in BACKGROUND_KINDS)
_OBJECT_KINDS = tuple(c.source for c in _OBJECTS)


def _label_map(size: tuple[int, int], background_id: int, instances: list[ShapeInstance]) -> np.ndarray:
    """ADE20K ids (H, W) uint8: ``background_id`` everywhere, then each visible mask with its object's id."""
    label = np.full(size, background_id, dtype=np.uint8)
    for instance in instances:
        label[instance.mask] = _OBJECTS[instance.label].ade_id
    return label


def _unlabel_boundaries(label: np.ndarray) -> np.ndarray:
    """``label`` (H, W) with 0 wherever a 4-neighbour (inside the image) holds another label."""
    boundary = np.zeros(label.shape, dtype=bool)
    vertical = label[1:] != label[:-1]
    horizontal = label[:, 1:] != label[:, :-1]
    boundary[1:] |= vertical
    boundary[:-1] |= vertical
    boundary[:, 1:] |= horizontal
    boundary[:, :-1] |= horizontal
    return np.where(boundary, np.uint8(UNLABELLED), label)


def segmentation_sample(seed: int, split: str, index: int, image_size: int = 64, max_shapes: int = 3
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Image number ``index`` of ``split`` and its label map.

    Returns:
        image: (image_size, image_size, 3) uint8 RGB.
        label: (image_size, image_size) uint8 ADE20K ids of ``SEG_CLASSES``, 0 on region boundaries.
    """
    rng = np.random.default_rng((seed, SPLITS[split], STREAM_TAG, index))
    background = BACKGROUND_KINDS[rng.integers(len(BACKGROUND_KINDS))]
    labels = list(rng.integers(len(_OBJECT_KINDS), size=rng.integers(1, max_shapes + 1)))
    size = (image_size, image_size)
    image, instances = render_scene(rng, size, _OBJECT_KINDS, labels, radius_range=RADIUS_RANGE,
                                    background=background, contrast=BACKGROUND_CONTRAST)
    return image, _unlabel_boundaries(_label_map(size, _BACKGROUND_IDS[background], instances))


def _check_count(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise DatasetError(f'{name} must be an integer ≥ {minimum}, got {value!r}')


def make_segmentation_set(root: str | os.PathLike, image_size: int = 64, train_images: int = 1000,
                          val_images: int = 100, max_shapes: int = 3, seed: int = 0) -> Path:
    """Write (or reuse) the ADE20K-layout segmentation set of shapes and return its root.

    Files are named ``toy_<split>_<index:05d>`` under ``images/`` (.jpg) and ``annotations/`` (.png);
    see the module docstring for the layout and the label values.
    """
    _check_count('image_size', image_size, MIN_IMAGE_SIZE)
    _check_count('train_images', train_images, 1)
    _check_count('val_images', val_images, 1)
    _check_count('max_shapes', max_shapes, 1)
    _check_count('seed', seed, 0)
    params = dict(kind='segmentation', classes=list(SEG_TOY_CLASSES), background_contrast=BACKGROUND_CONTRAST,
                  image_size=image_size,
                  train_images=train_images, val_images=val_images, max_shapes=max_shapes, seed=seed)

    def fill(tmp: Path) -> None:
        for split, count in (('train', train_images), ('val', val_images)):
            images = tmp / 'images' / SPLIT_FOLDERS[split]
            annotations = tmp / 'annotations' / SPLIT_FOLDERS[split]
            images.mkdir(parents=True)
            annotations.mkdir(parents=True)
            for i in range(count):
                image, label = segmentation_sample(seed, split, i, image_size, max_shapes)
                Image.fromarray(image).save(images / f'toy_{split}_{i:05d}.jpg', quality=JPEG_QUALITY)
                Image.fromarray(label).save(annotations / f'toy_{split}_{i:05d}.png')

    return _write_atomically(Path(root), params, fill)
