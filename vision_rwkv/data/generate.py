"""Writers of the embedded data sets, in the file layouts that real data sets use.

``make_classification_set`` writes an ImageFolder tree (``train/<class>/*.jpg``, ``val/<class>/*.jpg``).
Every writer builds the whole tree in a temporary sibling directory and renames it into place, so
an interrupted run never leaves a half-written data set behind, and concurrent writers (one per
distributed rank) cannot interleave: the first rename wins and the others discard their copy.
The parameters are stored in ``generator.json``; asking for an existing root with different
parameters is an error rather than a silent reuse.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import OutputExistsError
from .image_folder import DatasetError
from .shapes import SHAPE_CLASSES, render_scene

META_FILE = 'generator.json'
SPLITS = {'train': 0, 'val': 1}
JPEG_QUALITY = 95


def _write_atomically(root: Path, params: dict, fill) -> Path:
    """Create ``root`` by ``fill(tmp_dir)`` in a temporary sibling, then rename; reuse a matching one."""
    meta = root / META_FILE
    if root.exists():
        if not meta.is_file():
            raise OutputExistsError(f'{root} exists but was not written by the generator (no {META_FILE}); '
                                  'pass another root or remove it')
        found = json.loads(meta.read_text())
        if found != params:
            raise OutputExistsError(f'{root} was generated with other parameters:\n  found {found}\n'
                                  f'  asked {params}\nremove it or choose another root')
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{root.name}.tmp-', dir=root.parent))
    try:
        fill(tmp)
        (tmp / META_FILE).write_text(json.dumps(params, indent=1, sort_keys=True))
        os.rename(tmp, root)
    except OSError:
        if not (root / META_FILE).is_file():
            raise
        # another process finished the same data set first
        return _write_atomically(root, params, fill)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def classification_image(seed: int, split: str, label: int, index: int, classes: tuple[str, ...],
                         image_size: int) -> np.ndarray:
    """The (H, W, 3) uint8 image number ``index`` of class ``label`` in ``split``: one shape on a texture."""
    rng = np.random.default_rng((seed, SPLITS[split], label, index))
    image, _ = render_scene(rng, (image_size, image_size), classes, [label])
    return image


def make_classification_set(root: str | os.PathLike, classes: tuple[str, ...] | list[str] = SHAPE_CLASSES[:6],
                            train_per_class: int = 500, val_per_class: int = 100, image_size: int = 64,
                            seed: int = 0) -> Path:
    """Write (or reuse) an ImageFolder classification set of shapes and return its root.

    Layout: ``root/{train,val}/<class>/<class>_<index>.jpg`` (RGB JPEG, quality 95) and
    ``root/generator.json``. Each class is one shape kind; sizes, rotations, colours and textures vary.
    """
    classes = tuple(classes)
    unknown = [c for c in classes if c not in SHAPE_CLASSES]
    if unknown or len(set(classes)) != len(classes) or len(classes) < 2:
        raise DatasetError(f'classes must be ≥ 2 distinct names from {SHAPE_CLASSES}, got {classes}')
    params = dict(kind='classification', classes=list(classes), train_per_class=train_per_class,
                  val_per_class=val_per_class, image_size=image_size, seed=seed)

    def fill(tmp: Path) -> None:
        for split, count in (('train', train_per_class), ('val', val_per_class)):
            for label, name in enumerate(classes):
                folder = tmp / split / name
                folder.mkdir(parents=True)
                for i in range(count):
                    image = classification_image(seed, split, label, i, classes, image_size)
                    Image.fromarray(image).save(folder / f'{name}_{i:05d}.jpg', quality=JPEG_QUALITY)

    return _write_atomically(Path(root), params, fill)
