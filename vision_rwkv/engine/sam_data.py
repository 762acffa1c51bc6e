"""Instance masks for RWKV-SAM training and prompted evaluation (mmengine data sets).

``CocoInstanceMasks`` reads COCO instance files (polygons and RLE), ``SA1BMasks`` SA-1B-style folders
of per-image JSON files; both share the resizing, large-scale jitter and sample format of
``InstanceMasks``.
"""
from __future__ import annotations

import glob
import json
import os.path as osp
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from mmengine.dist import barrier, get_local_rank, get_rank
from mmengine.registry import DATASETS
from mmengine.structures import BaseDataElement
from PIL import Image
from torch.utils.data import Dataset, get_worker_info

from ..data.image_folder import DatasetError, load_rgb
from ..sam.utils.transforms import ResizeLongestSide

__all__ = ['CocoInstanceMasks', 'InstanceMasks', 'SA1BMasks']


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


def _generate(writer, data_root: str, generate: Optional[dict]) -> None:
    """Write an embedded set with ``writer(data_root, **generate)`` on local rank 0; other ranks wait."""
    if generate is not None:
        if get_local_rank() == 0:
            writer(data_root, **generate)
        barrier()


class InstanceMasks(Dataset):
    """Images with all their instance masks, resized to a longest side of ``img_size``.

    Each item is ``dict(inputs=(3, h, w) uint8 RGB, data_samples=BaseDataElement(masks=(N, h, w) bool,
    metainfo: image_id, original_size))`` with max(h, w) = ``img_size`` (padding is the model's job).
    Subclasses implement ``__len__`` and ``_load(index) -> (image_id, (H, W, 3) uint8, (N, H, W) bool)``.

    Args:
        img_size: the model's input side.
        training: apply large-scale jitter (random rescale by ``scale_range`` of the input side, then
            a random crop) and horizontal flips.
        scale_range: jitter range (LSJ uses (0.1, 2.0)).
        min_area: instances with fewer visible pixels (after the transform) are dropped.
        seed: seed of the jitter; each rank and DataLoader worker draws its own stream from it (``rng``).
    """

    def __init__(self, img_size: int = 1024, training: bool = False, scale_range: Sequence[float] = (0.1, 2.0),
                 min_area: int = 4, seed: int = 0):
        self.transform = ResizeLongestSide(img_size)
        self.img_size, self.training, self.scale_range, self.min_area = img_size, training, scale_range, min_area
        self.seed = seed
        self._rng: Optional[np.random.Generator] = None
        self._rng_key: Optional[tuple] = None

    @property
    def rng(self) -> np.random.Generator:
        """The jitter's generator, seeded by (seed, rank, DataLoader worker id, the worker's torch seed).

        A generator made in ``__init__`` would be copied into every worker and every rank, which would then draw
        the same augmentations. The worker's torch seed changes each time the DataLoader starts its workers
        (every epoch unless they persist), so re-created workers do not repeat an epoch's jitter either.
        """
        info = get_worker_info()
        key = (self.seed, get_rank()) + ((info.id, info.seed) if info is not None else ())
        if key != self._rng_key:
            self._rng, self._rng_key = np.random.default_rng(key), key
        return self._rng

    def _load(self, index: int) -> Tuple[int, np.ndarray, np.ndarray]:
        raise NotImplementedError

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
        image_id, source, source_masks = self._load(index)
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


@DATASETS.register_module()
class CocoInstanceMasks(InstanceMasks):
    """COCO instance segmentation files (polygons and RLE, decoded by pycocotools) as ``InstanceMasks``.

    Images without a non-crowd instance are left out; crowd annotations are ignored.

    Args:
        data_root: folder of the set; ``ann_file`` and ``img_dir`` are relative to it.
        ann_file: COCO instances JSON.
        img_dir: image folder.
        generate: if given, arguments of ``vision_rwkv.data.make_coco_instance_set``: the embedded set
            is written to ``data_root`` on first use (local rank 0; other ranks wait).
        img_size, training, scale_range, min_area, seed: see ``InstanceMasks``.
    """

    def __init__(self, data_root: str, ann_file: str, img_dir: str, img_size: int = 1024, training: bool = False,
                 scale_range: Sequence[float] = (0.1, 2.0), min_area: int = 4, generate: Optional[dict] = None,
                 seed: int = 0):
        from ..data import make_coco_instance_set
        _generate(make_coco_instance_set, data_root, generate)
        super().__init__(img_size, training, scale_range, min_area, seed)
        self.ann_file = osp.join(data_root, ann_file)
        self.img_dir = osp.join(data_root, img_dir)
        self.coco = _read_coco(self.ann_file)
        self.ids = sorted(i for i in self.coco.getImgIds() if self.coco.getAnnIds(imgIds=i, iscrowd=False))
        if not self.ids:
            raise DatasetError(f'{self.ann_file}: no image with an instance annotation')
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

    def _load(self, index: int) -> Tuple[int, np.ndarray, np.ndarray]:
        image_id = self.ids[index]
        info = self.coco.loadImgs(image_id)[0]
        image = np.asarray(load_rgb(osp.join(self.img_dir, info['file_name'])))
        return image_id, image, self._masks(image_id, image.shape[0], image.shape[1])


def _read_sa1b(path: str) -> Tuple[dict, List[dict]]:
    """The ``image`` record and the ``annotations`` of one SA-1B JSON file; a clear error names a bad file."""
    try:
        with open(path) as f:
            content = json.load(f)
        image, annotations = content['image'], content['annotations']
        if not isinstance(image, dict) or not isinstance(image['file_name'], str) or not isinstance(annotations, list):
            raise TypeError('"image" must be an object with a file_name, "annotations" a list')
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise DatasetError(f'{path}: not an SA-1B annotation file ({type(e).__name__}: {e})') from e
    return image, annotations


def _decode_rle(segmentation, height: int, width: int, where: str) -> np.ndarray:
    """A COCO RLE (compressed or uncompressed) as an (H, W) bool mask of the image's size."""
    from pycocotools import mask as mask_utils

    try:
        rle = dict(segmentation)
        if list(rle['size']) != [height, width]:
            raise ValueError(f'size {rle["size"]} differs from the image\'s [{height}, {width}]')
        if isinstance(rle['counts'], list):
            rle = mask_utils.frPyObjects(rle, height, width)
        elif isinstance(rle['counts'], str):
            rle['counts'] = rle['counts'].encode('ascii')
        mask = mask_utils.decode(rle)
    except (KeyError, TypeError, ValueError, IndexError, UnicodeEncodeError) as e:
        raise DatasetError(f'{where} has a malformed RLE segmentation ({type(e).__name__}: {e})') from e
    if mask.shape != (height, width):
        raise DatasetError(f'{where} decodes to {mask.shape[::-1]} (W, H) but its image is {width}×{height}')
    return mask.astype(bool)


@DATASETS.register_module()
class SA1BMasks(InstanceMasks):
    """SA-1B-style folders as ``InstanceMasks``: ``sa_<id>.jpg`` with ``sa_<id>.json`` holding
    ``{"image": {"image_id", "width", "height", "file_name"}, "annotations": [{"id", "segmentation": RLE, ...}]}``.

    Masks are class-agnostic. A file is read when its item is loaded (each SA-1B tar holds about 11k
    JSON files of about 1 MB, too many to parse at start-up), so a malformed file, or one without
    annotations, raises a ``DatasetError`` naming it then.

    Args:
        data_root: folder of the JSON files.
        img_dir: image folder relative to ``data_root`` ('' for SA-1B's flat layout).
        pattern: glob of the annotation files in ``data_root``.
        max_masks: keep at most this many masks of an image, the largest first (SA-1B has ~100 per image).
        generate: if given, arguments of ``vision_rwkv.data.make_sa1b_set`` (written on first use).
        img_size, training, scale_range, min_area, seed: see ``InstanceMasks``.
    """

    def __init__(self, data_root: str, img_dir: str = '', pattern: str = 'sa_*.json', img_size: int = 1024,
                 training: bool = False, scale_range: Sequence[float] = (0.1, 2.0), min_area: int = 4,
                 max_masks: Optional[int] = None, generate: Optional[dict] = None, seed: int = 0):
        from ..data import make_sa1b_set
        _generate(make_sa1b_set, data_root, generate)
        super().__init__(img_size, training, scale_range, min_area, seed)
        self.img_dir = osp.join(data_root, img_dir)
        self.max_masks = max_masks
        files = sorted(glob.glob(osp.join(glob.escape(data_root), pattern)))
        if not files:
            raise DatasetError(f'{data_root}: no SA-1B annotation file matches {pattern!r}')
        self.files = files
        self.metainfo = dict(classes=('object',))

    def __len__(self) -> int:
        return len(self.files)

    def _load(self, index: int) -> Tuple[int, np.ndarray, np.ndarray]:
        path = self.files[index]
        info, annotations = _read_sa1b(path)
        if not annotations:
            raise DatasetError(f'{path}: no annotations (an SA-1B file lists at least one mask)')
        image = np.asarray(load_rgb(osp.join(self.img_dir, info['file_name'])))
        height, width = image.shape[:2]
        if self.max_masks is not None:
            annotations = sorted(annotations, key=lambda a: -float(a.get('area', 0)))[:self.max_masks]
        masks = np.stack([_decode_rle(a.get('segmentation'), height, width, f'{path}: annotation {a.get("id")}')
                          for a in annotations])
        return int(info.get('image_id', index)), image, masks
