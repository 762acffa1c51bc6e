"""Segment an image file with a config and a checkpoint; write a colour overlay PNG with OpenCV."""
from __future__ import annotations

import os
from typing import Optional

import cv2
import numpy as np

from vision_rwkv.data.image_folder import CorruptImageError
from vision_rwkv.engine.checkpoint import atomic_write, use_safe_local_loader
from vision_rwkv.errors import InputFileError


def _load_model(config: str, checkpoint: str, device: str):
    """mmseg's ``init_model``, with a test pipeline that loads no annotations."""
    from mmseg.apis import init_model

    for path, what in ((config, 'config'), (checkpoint, 'checkpoint')):
        if not os.path.isfile(path):
            raise InputFileError(f'{what} file {path} does not exist')
    use_safe_local_loader()
    model = init_model(config, checkpoint, device=device)
    model.cfg.test_pipeline = [t for t in model.cfg.test_pipeline if 'Annotations' not in t['type']]
    return model


def _read_bgr(path: str) -> np.ndarray:
    if not os.path.isfile(path):
        raise InputFileError(f'image {path} does not exist')
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise CorruptImageError(f'{path}: not a readable image')
    return image


def overlay(image_bgr: np.ndarray, labels: np.ndarray, palette: np.ndarray, opacity: float = 0.5) -> np.ndarray:
    """Blend class colours over an image.

    Args:
        image_bgr: (H, W, 3) uint8 BGR image.
        labels: (H, W) integer class indices.
        palette: (num_classes, 3) uint8 RGB colours.
        opacity: weight of the class colours.

    Returns:
        (H, W, 3) uint8 BGR overlay.
    """
    colours = palette[labels][..., ::-1]  # RGB palette -> BGR
    return cv2.addWeighted(image_bgr, 1.0 - opacity, np.ascontiguousarray(colours), opacity, 0.0)


def segment_image(config: str, checkpoint: str, image: str, out: Optional[str] = None, device: str = 'cpu',
                  opacity: float = 0.5, model=None) -> np.ndarray:
    """Segment one image file.

    Args:
        config: mmseg config file of the model.
        checkpoint: checkpoint written by ``tools/train.py`` (loaded with ``weights_only=True``).
        image: image file path.
        out: if given, the overlay PNG to write (atomically).
        device: 'cpu' or 'cuda[:N]'.
        opacity: weight of the class colours in the overlay, in [0, 1].
        model: an already loaded model (``config`` and ``checkpoint`` are then ignored).

    Returns:
        (H, W) int64 class indices at the image's resolution.
    """
    from mmseg.apis import inference_model

    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f'opacity must be in [0, 1], got {opacity}')
    if out is not None and not out.lower().endswith('.png'):
        raise ValueError(f'the overlay is written as PNG: {out} must end in .png')
    bgr = _read_bgr(image)
    model = model if model is not None else _load_model(config, checkpoint, device)
    result = inference_model(model, bgr)
    labels = result.pred_sem_seg.data[0].cpu().numpy().astype(np.int64)
    if out is not None:
        palette = _palette(model, int(labels.max()) + 1)
        ok, png = cv2.imencode('.png', overlay(bgr, labels, palette, opacity))
        if not ok:
            raise RuntimeError(f'OpenCV could not encode the overlay for {out}')
        atomic_write(png.tobytes(), out)
    return labels


def _palette(model, min_classes: int) -> np.ndarray:
    """The data set palette saved with the model, else a fixed random one: (num_classes, 3) uint8."""
    meta = getattr(model, 'dataset_meta', None) or {}
    palette = meta.get('palette')
    if palette is not None and len(palette) >= min_classes:
        return np.asarray(palette, dtype=np.uint8)
    return np.random.default_rng(0).integers(0, 256, size=(max(min_classes, 1), 3), dtype=np.uint8)

