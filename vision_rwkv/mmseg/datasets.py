"""Segmentation data for mmseg: the embedded set on first use, and annotation loading with clear errors."""
from __future__ import annotations

import os.path as osp

import numpy as np
from mmengine.dist import barrier, get_local_rank
from mmseg.datasets.transforms import LoadAnnotations
from mmseg.registry import DATASETS, TRANSFORMS

from vision_rwkv.data import make_segmentation_set
from vision_rwkv.data.image_folder import DatasetError


def embedded_dataset(dataset: dict, generate: dict):
    """Write the embedded segmentation set to ``dataset['data_root']`` if absent, then build ``dataset``.

    Args:
        dataset: the data set config, e.g. ``dict(type='ADE20KDataset', data_root=..., ...)``: it is
            built by mmseg's registry as it would be without this wrapper.
        generate: arguments of ``vision_rwkv.data.make_segmentation_set`` (local rank 0 writes the
            set; the other ranks wait at a barrier).

    Returns:
        The built data set (an ``ADE20KDataset`` for that type).
    """
    if 'data_root' not in dataset:
        raise DatasetError('EmbeddedDataset: the wrapped dataset needs a data_root to write the set to')
    if get_local_rank() == 0:
        make_segmentation_set(dataset['data_root'], **generate)
    barrier()
    return DATASETS.build(dataset)


DATASETS.register_module(name='EmbeddedDataset', module=embedded_dataset)


@TRANSFORMS.register_module()
class LoadCheckedAnnotations(LoadAnnotations):
    """mmseg's ``LoadAnnotations`` that names the file when a label map is missing, unreadable,
    of another size than its image, or holds labels outside ``[0, num_classes)`` (after
    ``reduce_zero_label`` and the data set's label map) other than ``ignore_index``.

    Place it after ``LoadImageFromFile`` (the image size is compared).

    Args:
        num_classes: number of classes of the data set (after any class subset).
        ignore_index: the label that marks unlabelled pixels.
        **kwargs: ``LoadAnnotations`` arguments.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.ignore_index = ignore_index

    def _load_seg_map(self, results: dict) -> None:
        path = results['seg_map_path']
        if not osp.isfile(path):
            raise DatasetError(f'{path}: annotation file missing (image {results.get("img_path")})')
        try:
            super()._load_seg_map(results)
        except (AttributeError, ValueError, OSError) as e:  # mmcv returns None for undecodable files
            raise DatasetError(f'{path}: cannot read the label map ({e})') from e
        labels = results['gt_seg_map']
        image_hw = results.get('ori_shape', results.get('img_shape'))
        if image_hw is not None and labels.shape[:2] != tuple(image_hw[:2]):
            raise DatasetError(f'{path}: label map is {labels.shape[1]}×{labels.shape[0]} (W×H) but its image '
                               f'{results.get("img_path")} is {image_hw[1]}×{image_hw[0]}')
        if labels.ndim != 2:
            raise DatasetError(f'{path}: label map must have one channel, got shape {labels.shape}')
        bad = np.unique(labels[(labels >= self.num_classes) & (labels != self.ignore_index)])
        if bad.size:
            raise DatasetError(f'{path}: labels {bad.tolist()[:10]} are outside [0, {self.num_classes}) '
                               f'(num_classes={self.num_classes}, ignore_index={self.ignore_index}, '
                               'after reduce_zero_label and the class subset)')
