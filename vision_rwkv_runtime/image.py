"""Images and prompts as segment-anything's predictors take them, in numpy and Pillow (shared by the PyTorch and
the onnxruntime predictors)."""
import os.path as osp
from typing import Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from .errors import CorruptImageError, InputError, InputFileError

__all__ = ['ResizeLongestSide', 'check_prompts', 'read_image', 'to_rgb_uint8']


def read_image(path: str) -> np.ndarray:
    """(H, W[, C]) array of any image file OpenCV reads, channels in RGB(A) order, grayscale, RGBA and 16-bit kept
    as they are (``to_rgb_uint8`` makes them (H, W, 3) uint8)."""
    import cv2  # the demos' dependency, not the runtime's

    if not osp.isfile(path):
        raise InputFileError(f'image {path} does not exist')
    image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise CorruptImageError(f'{path}: not a readable image')
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA if image.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    return image


def to_rgb_uint8(image: np.ndarray, image_format: str = 'RGB') -> np.ndarray:
    """Any supported image array -> (H, W, 3) uint8 RGB.

    Grayscale is replicated, RGBA loses its alpha, uint16 is scaled by 1/257, and
    ``image_format='BGR'`` reverses the channels.
    """
    if image_format not in ('RGB', 'BGR'):
        raise InputError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
    image = np.asarray(image)
    if image.dtype == np.uint16:
        image = (image.astype(np.uint32) * 255 + 32767) // 65535
    elif image.dtype != np.uint8:
        raise InputError(f'images must be uint8 or uint16 arrays, got {image.dtype}')
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4) or 0 in image.shape[:2]:
        raise InputError(f'expected an (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) image, got shape {image.shape}')
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    image = image[..., :3]
    if image_format == 'BGR':
        image = image[..., ::-1]
    return np.ascontiguousarray(image.astype(np.uint8))


class ResizeLongestSide:
    """Resize images and prompt coordinates to a longest side of ``target_length``.

    Same arithmetic as segment-anything's ``ResizeLongestSide`` (``int(x + 0.5)`` rounding, PIL bilinear
    for uint8 images), so both predictors see identical inputs.
    """

    def __init__(self, target_length: int):
        self.target_length = target_length

    @staticmethod
    def get_preprocess_shape(oldh: int, oldw: int, long_side_length: int) -> Tuple[int, int]:
        """(H, W) after scaling the longest side of (oldh, oldw) to ``long_side_length``."""
        scale = long_side_length / max(oldh, oldw)
        return int(oldh * scale + 0.5), int(oldw * scale + 0.5)

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> (h, w, 3) uint8 with max(h, w) = target_length (PIL bilinear)."""
        h, w = self.get_preprocess_shape(image.shape[0], image.shape[1], self.target_length)
        return np.array(Image.fromarray(image).resize((w, h), Image.BILINEAR))

    def apply_coords(self, coords: np.ndarray, original_size: Tuple[int, int]) -> np.ndarray:
        """(..., 2) x, y pixel coordinates of the original image -> of the resized image (float)."""
        h, w = self.get_preprocess_shape(original_size[0], original_size[1], self.target_length)
        coords = np.array(coords, dtype=float)
        coords[..., 0] *= w / original_size[1]
        coords[..., 1] *= h / original_size[0]
        return coords

    def apply_boxes(self, boxes: np.ndarray, original_size: Tuple[int, int]) -> np.ndarray:
        """(..., 4) x0, y0, x1, y1 boxes -> (N, 4) in the resized frame."""
        return self.apply_coords(np.asarray(boxes).reshape(-1, 2, 2), original_size).reshape(-1, 4)


def check_prompts(point_coords, point_labels, box, mask_input, original_size: Tuple[int, int],
                  mask_input_size: Sequence[int]
                  ) -> Tuple[Optional[np.ndarray], Optional[np.ndarray], Optional[np.ndarray]]:
    """Validate one object's prompts in original-image coordinates (an (H, W) image).

    Returns points (N, 2) float, labels (N,) and box (1, 4), clipped to the image, or None where absent. Raises
    ``InputError`` for: no prompt at all, point and label counts that differ, labels other than 0 / 1,
    non-finite coordinates, points outside the image, boxes with x1 < x0 or y1 < y0, boxes entirely outside the
    image, and a mask input that is not (1, *mask_input_size).
    """
    if point_coords is None and box is None and mask_input is None:
        raise InputError('no prompt: give point_coords with point_labels, a box, or a mask_input')
    if (point_coords is None) != (point_labels is None):
        raise InputError('point_coords and point_labels go together: give both or neither')
    H, W = original_size
    points = labels = None
    if point_coords is not None:
        points = np.asarray(point_coords, dtype=float)
        labels = np.asarray(point_labels)
        if points.ndim != 2 or points.shape[1] != 2:
            raise InputError(f'point_coords must be (N, 2) x, y, got shape {points.shape}')
        if labels.shape != (len(points),):
            raise InputError(f'{len(points)} points but point_labels has shape {labels.shape}')
        if not np.isin(labels, (0, 1)).all():
            raise InputError(f'point_labels must be 1 (foreground) or 0 (background), got {np.unique(labels)}')
        if not np.isfinite(points).all():
            raise InputError('point_coords contain NaN or inf')
        outside = (points[:, 0] < 0) | (points[:, 0] > W) | (points[:, 1] < 0) | (points[:, 1] > H)
        if outside.any():
            raise InputError(f'points {points[outside].tolist()} are outside the {W}×{H} image')
    if box is not None:
        box = np.asarray(box, dtype=float).reshape(-1)
        if box.shape != (4,) or not np.isfinite(box).all():
            raise InputError(f'box must be 4 finite numbers x0, y0, x1, y1, got {box.tolist()}')
        if box[2] < box[0] or box[3] < box[1]:
            raise InputError(f'box {box.tolist()} has x1 < x0 or y1 < y0 (expected x0, y0, x1, y1)')
        if box[2] < 0 or box[3] < 0 or box[0] > W or box[1] > H:
            raise InputError(f'box {box.tolist()} lies outside the {W}×{H} image')
        box = np.clip(box, 0, [W, H, W, H])[None]
    expected = (1, *mask_input_size)
    if mask_input is not None and np.asarray(mask_input).shape != expected:
        raise InputError(f'mask_input must be {expected} low-resolution logits, got {np.asarray(mask_input).shape}')
    return points, labels, box
