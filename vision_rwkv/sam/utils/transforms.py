"""Resize so that the longest side is the model's input size, and map prompts accordingly.

Same arithmetic as segment-anything's ``ResizeLongestSide`` (``int(x + 0.5)`` rounding, PIL bilinear
for uint8 images), so both predictors see identical inputs.
"""
from typing import Tuple

import torch
import torch.nn.functional as F

from vision_rwkv_runtime.image import ResizeLongestSide as ResizeLongestSideNumpy


class ResizeLongestSide(ResizeLongestSideNumpy):
    """Resize images and prompt coordinates to a longest side of ``target_length``: the numpy methods of
    ``vision_rwkv_runtime.image.ResizeLongestSide`` and their torch versions."""

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
