"""ImageFolder classification data set (``root/<class>/<image>``) that survives corrupt files."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Optional, Sequence

from PIL import Image
from torch.utils.data import Dataset

from ..errors import CorruptImageError, UserError

IMG_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff', '.webp')
logger = logging.getLogger(__name__)


class DatasetError(UserError, ValueError):
    """A data set is unusable (missing, empty class, mismatched classes; raised before training), or the
    parameters asked of a data set generator are invalid."""


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Decode an image file completely (truncation is detected here, not later) and convert to RGB."""
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert('RGB')
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise CorruptImageError(f'cannot decode image {path}: {e}') from e


class ImageFolderDataset(Dataset):
    """Images in class sub-folders, labelled by the sorted folder names (torchvision's convention).

    Args:
        root: folder holding one sub-folder per class.
        transform: called on the RGB ``PIL.Image``; its result is returned as ``inputs``.
        classes: class names in label order; by default all sub-folders, sorted. Every named class
            must exist and hold at least one image.
        on_corrupt: ``'skip'`` logs the path of an undecodable image once and returns the next good
            sample instead; ``'fail'`` raises ``CorruptImageError`` naming the file.
        extensions: file suffixes counted as images (case-insensitive).

    Items are ``dict(inputs=transform(image), labels=int)``; ``metainfo['classes']`` lists the classes.
    """

    def __init__(self, root: str | os.PathLike, transform: Optional[Callable] = None,
                 classes: Optional[Sequence[str]] = None, on_corrupt: str = 'skip',
                 extensions: Sequence[str] = IMG_EXTENSIONS):
        if on_corrupt not in ('skip', 'fail'):
            raise ValueError(f"on_corrupt must be 'skip' or 'fail', got {on_corrupt!r}")
        self.root = Path(root)
        self.transform = transform
        self.on_corrupt = on_corrupt
        self.extensions = tuple(e.lower() for e in extensions)
        self.classes = self._find_classes(classes)
        self.samples = self._find_samples()
        self.metainfo = dict(classes=self.classes)
        self._corrupt: set[int] = set()

    def _find_classes(self, classes: Optional[Sequence[str]]) -> tuple[str, ...]:
        if not self.root.is_dir():
            raise DatasetError(f'data set folder {self.root} does not exist')
        found = sorted(d.name for d in self.root.iterdir() if d.is_dir() and not d.name.startswith('.'))
        if classes is None:
            if not found:
                raise DatasetError(f'{self.root} has no class sub-folders (expected {self.root}/<class>/<image>)')
            return tuple(found)
        missing = [c for c in classes if c not in found]
        if missing:
            raise DatasetError(f'class folders missing in {self.root}: {missing}')
        return tuple(classes)

    def _find_samples(self) -> list[tuple[str, int]]:
        samples, empty = [], []
        for label, name in enumerate(self.classes):
            files = sorted(p for p in (self.root / name).rglob('*')
                           if p.suffix.lower() in self.extensions and p.is_file())
            if not files:
                empty.append(str(self.root / name))
            samples.extend((str(p), label) for p in files)
        if empty:
            raise DatasetError(f'empty class folder(s), no {"/".join(self.extensions)} files: {empty}')
        return samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        for offset in range(len(self.samples)):
            i = (index + offset) % len(self.samples)
            if i in self._corrupt:
                continue
            path, label = self.samples[i]
            try:
                image = load_rgb(path)
            except CorruptImageError as e:
                if self.on_corrupt == 'fail':
                    raise
                self._corrupt.add(i)
                logger.warning('skipping corrupt image (on_corrupt=skip): %s', e)
                continue
            return dict(inputs=self.transform(image) if self.transform else image, labels=label)
        raise CorruptImageError(f'no decodable image left in {self.root}')
