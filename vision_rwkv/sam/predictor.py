"""Prompted prediction on one image, with segment-anything's ``SamPredictor`` interface.

Differences from segment-anything, all for bad input:

* ``set_image`` accepts grayscale (H, W) / (H, W, 1), RGB, RGBA (alpha dropped) and 8- or 16-bit
  integer images (16-bit scaled to 8 bits); other dtypes, shapes or empty images raise ``InputError``
  (``vision_rwkv.errors``, a ``ValueError``).
* ``predict`` raises ``InputError`` for: no prompt at all, point and label counts that differ, labels
  other than 0 / 1, non-finite coordinates, points outside the image, boxes with x1 < x0 or
  y1 < y0, boxes entirely outside the image (boxes that overlap it are clipped to it), and a
  mask input that is not (1, 256, 256) (the low-resolution logits size at a 1024 input).

``to_rgb_uint8`` and the prompt checks are numpy code shared with the onnxruntime predictor
(``vision_rwkv_runtime.image``).
"""
from typing import Optional, Tuple

import numpy as np
import torch

from vision_rwkv_runtime.image import check_prompts, to_rgb_uint8

from ..errors import InputError
from .modeling.image_encoder import ImageFeatures
from .modeling.sam import RWKVSam
from .utils.transforms import ResizeLongestSide

__all__ = ['RWKVSamPredictor', 'to_rgb_uint8']


class RWKVSamPredictor:
    """Compute the image features once, then answer many prompts (segment-anything's API).

    Args:
        sam_model: an ``RWKVSam`` (or any model with segment-anything's attributes).
    """

    def __init__(self, sam_model: RWKVSam):
        self.model = sam_model
        self.transform = ResizeLongestSide(sam_model.image_encoder.img_size)
        self.reset_image()

    @property
    def device(self) -> torch.device:
        return self.model.device

    def reset_image(self) -> None:
        self.is_image_set = False
        self.features: Optional[ImageFeatures] = None
        self.original_size: Optional[Tuple[int, int]] = None
        self.input_size: Optional[Tuple[int, int]] = None

    def set_image(self, image: np.ndarray, image_format: str = 'RGB') -> None:
        """Compute the features of an (H, W[, C]) image (see ``to_rgb_uint8`` for what is accepted)."""
        image = to_rgb_uint8(image, image_format)
        resized = self.transform.apply_image(image)
        tensor = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()[None]
        self.set_torch_image(tensor, image.shape[:2])

    @torch.no_grad()
    def set_torch_image(self, transformed_image: torch.Tensor, original_image_size: Tuple[int, ...]) -> None:
        """(1, 3, h, w) image already resized to the longest side ``img_size``; the original (H, W)."""
        size = self.model.image_encoder.img_size
        if transformed_image.ndim != 4 or transformed_image.shape[:2] != (1, 3) or \
                max(transformed_image.shape[2:]) != size:
            raise InputError(f'set_torch_image takes a (1, 3, h, w) image with longest side {size}, '
                             f'got {tuple(transformed_image.shape)}')
        self.reset_image()
        self.original_size = tuple(int(s) for s in original_image_size)
        self.input_size = tuple(transformed_image.shape[-2:])
        features = self.model.image_encoder(self.model.preprocess(transformed_image.float()))
        fuse_image = getattr(self.model.mask_decoder, 'fuse_image', None)  # once per image, not per prompt
        self.features = fuse_image(features) if fuse_image is not None else features
        self.is_image_set = True

    def predict(self, point_coords: Optional[np.ndarray] = None, point_labels: Optional[np.ndarray] = None,
                box: Optional[np.ndarray] = None, mask_input: Optional[np.ndarray] = None,
                multimask_output: bool = True, return_logits: bool = False
                ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks for prompts in original-image pixel coordinates.

        Args:
            point_coords: (N, 2) x, y points.
            point_labels: (N,) 1 foreground, 0 background.
            box: (4,) x0, y0, x1, y1.
            mask_input: (1, 256, 256) low-resolution logits of an earlier prediction (at a 1024 input).
            multimask_output: three masks instead of one.
            return_logits: logits instead of boolean masks.

        Returns:
            masks (C, H, W), scores (C,), low-resolution logits (C, 256, 256), as numpy arrays.
        """
        self._require_image()
        points, labels, box = check_prompts(point_coords, point_labels, box, mask_input, self.original_size,
                                            self.model.prompt_encoder.mask_input_size)
        coords = boxes = masks_in = None
        if points is not None:
            coords = self._tensor(self.transform.apply_coords(points, self.original_size)[None])
            labels = self._tensor(labels[None], torch.int64)
        if box is not None:
            boxes = self._tensor(self.transform.apply_boxes(box, self.original_size))
        if mask_input is not None:
            masks_in = self._tensor(np.asarray(mask_input)[None])
        masks, scores, logits = self.predict_torch(coords, labels, boxes, masks_in, multimask_output, return_logits)
        return masks[0].cpu().numpy(), scores[0].float().cpu().numpy(), logits[0].float().cpu().numpy()

    def _tensor(self, array: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.as_tensor(array, dtype=dtype, device=self.device)

    @torch.no_grad()
    def predict_torch(self, point_coords: Optional[torch.Tensor], point_labels: Optional[torch.Tensor],
                      boxes: Optional[torch.Tensor] = None, mask_input: Optional[torch.Tensor] = None,
                      multimask_output: bool = True, return_logits: bool = False
                      ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Batched prompts already in the resized frame: (B, N, 2), (B, N), (B, 4), (B, 1, 256, 256).

        Returns:
            masks (B, C, H, W), scores (B, C), low-resolution logits (B, C, 256, 256).
        """
        self._require_image()
        points = (point_coords, point_labels) if point_coords is not None else None
        sparse, dense = self.model.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
        low_res, iou = self.model.mask_decoder(
            image_embeddings=self.features, image_pe=self.model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=multimask_output)
        masks = self.model.postprocess_masks(low_res, self.input_size, self.original_size)
        if not return_logits:
            masks = masks > self.model.mask_threshold
        return masks, iou, low_res

    def get_image_embedding(self) -> torch.Tensor:
        """The (1, 256, h, w) image embedding of the current image (the full bundle is ``self.features``)."""
        self._require_image()
        return self.features.embedding

    def _require_image(self) -> None:
        if not self.is_image_set:
            raise RuntimeError('no image: call set_image(...) before predicting')
