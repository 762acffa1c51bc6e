"""Resize so that the longest side is the model's input size, and map prompts accordingly.

Same arithmetic as segment-anything's ``ResizeLongestSide`` (``int(x + 0.5)`` rounding, PIL bilinear
for uint8 images), so both predictors see identical inputs.
"""
from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


class ResizeLongestSide:
    """Resize images and prompt coordinates to a longest side of ``target_length``."""

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

    def apply_image_torch(self, image: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) float -> resized (bilinear, antialiased); close to, not equal to, ``apply_image``."""
        size = self.get_preprocess_shape(image.shape[-2], image.shape[-1], self.target_length)
        return F.interpolate(image, size, mode='bilinear', align_corners=False, antialias=True)

    def apply_coords_torch(self, coords: torch.Tensor, original_size: Tuple[int, int]) -> torch.Tensor:
        h, w = self.get_preprocess_shape(original_size[0], original_size[1], self.target_length)
        coords = coords.clone().float()
        coords[..., 0] *= w / original_size[1]
        coords[..., 1] *= h / original_size[0]
        return coords

    def apply_boxes_torch(self, boxes: torch.Tensor, original_size: Tuple[int, int]) -> torch.Tensor:
        return self.apply_coords_torch(boxes.reshape(-1, 2, 2), original_size).reshape(-1, 4)
