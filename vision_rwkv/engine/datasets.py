"""mmengine data set adapters: ImageFolder with timm transforms and the embedded shapes set."""
from __future__ import annotations

import os.path as osp
from typing import Optional, Sequence

from mmengine.dist import barrier, get_local_rank
from mmengine.registry import DATASETS
from timm.data import create_transform

from ..data import ImageFolderDataset, make_classification_set


@DATASETS.register_module()
class ImageFolder(ImageFolderDataset):
    """``data_root/split/<class>/<image>`` with a timm transform, for mmengine dataloader configs.

    Args:
        data_root: data set root; ``split`` is a sub-folder of it.
        split: ``'train'`` or ``'val'`` (any sub-folder name).
        transform: arguments of ``timm.data.create_transform`` (``input_size``, ``is_training``,
            ``auto_augment``, ``re_prob``, ``interpolation``, ``crop_pct``, ``mean``, ``std``, ...).
        classes, on_corrupt: as ``ImageFolderDataset``.
        generate: if given, arguments of ``vision_rwkv.data.make_classification_set``: the embedded
            shapes set is written to ``data_root`` on first use (by local rank 0; other ranks wait).
    """

    def __init__(self, data_root: str, split: str = 'train', transform: Optional[dict] = None,
                 classes: Optional[Sequence[str]] = None, on_corrupt: str = 'skip',
                 generate: Optional[dict] = None):
        if generate is not None:
            if get_local_rank() == 0:
                make_classification_set(data_root, **generate)
            barrier()
        super().__init__(osp.join(data_root, split), transform=create_transform(**(transform or {})),
                         classes=classes, on_corrupt=on_corrupt)
