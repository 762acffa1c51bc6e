"""RWKV-SAM: the image encoder, prompt encoder and multiscale mask decoder behind segment-anything's API.

The attributes and methods segment-anything's ``SamPredictor`` and ``SamAutomaticMaskGenerator`` use
are the same as ``segment_anything.modeling.Sam``; the image embedding the encoder returns is an
``ImageFeatures``: the (B, 256, h, w) embedding tensor, carrying the stride-4 and stride-8 maps that the
multiscale decoder reads from its ``image_embeddings``.
"""
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .image_encoder import ImageFeatures, RWKVSamImageEncoder
from .mask_decoder import MultiScaleMaskDecoder
from .prompt_encoder import PromptEncoder

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


class RWKVSam(nn.Module):
    """Promptable segmentation with an RWKV image encoder.

    Args:
        image_encoder: (B, 3, S, S) normalised, padded images -> ``ImageFeatures``.
        prompt_encoder: points, boxes and mask prompts -> sparse and dense embeddings.
        mask_decoder: image features + prompt embeddings -> mask logits and predicted IoU.
        pixel_mean, pixel_std: RGB normalisation (0..255 scale).
    """

    mask_threshold: float = 0.0
    image_format: str = 'RGB'

    def __init__(self, image_encoder: RWKVSamImageEncoder, prompt_encoder: PromptEncoder,
                 mask_decoder: MultiScaleMaskDecoder, pixel_mean: Sequence[float] = PIXEL_MEAN,
                 pixel_std: Sequence[float] = PIXEL_STD):
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.register_buffer('pixel_mean', torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1), False)
        self.register_buffer('pixel_std', torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1), False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """(3, h, w) RGB, longest side resized to ``img_size`` -> normalised and padded (3, S, S)."""
        x = (x - self.pixel_mean) / self.pixel_std
        size = self.image_encoder.img_size
        return F.pad(x, (0, size - x.shape[-1], 0, size - x.shape[-2]))

    def postprocess_masks(self, masks: torch.Tensor, input_size: Tuple[int, ...],
                          original_size: Tuple[int, ...]) -> torch.Tensor:
        """(B, C, 256, 256) logits -> (B, C, H, W) logits at the original image size (padding removed)."""
        size = self.image_encoder.img_size
        masks = F.interpolate(masks, (size, size), mode='bilinear', align_corners=False)
        masks = masks[..., :input_size[0], :input_size[1]]
        return F.interpolate(masks, tuple(original_size), mode='bilinear', align_corners=False)

    def decode_prompts(self, features: ImageFeatures, points: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
                       boxes: Optional[torch.Tensor] = None, masks: Optional[torch.Tensor] = None,
                       multimask_output: bool = False, image_index: Optional[torch.Tensor] = None
                       ) -> Tuple[torch.Tensor, torch.Tensor]:
        """B prompts -> (B, C, 4h, 4w) low-resolution logits and (B, C) IoU.

        ``points`` (B, N, 2) coordinates with (B, N) labels, ``boxes`` (B, 4) and ``masks``
        (B, 1, 4h, 4w), all in the resized frame; C = 3 with ``multimask_output``, else 1.
        ``features`` are one image's, shared by all prompts, unless ``image_index`` (B,) says which
        image of the batch each prompt belongs to.
        """
        sparse, dense = self.prompt_encoder(points=points, boxes=boxes, masks=masks)
        return self.mask_decoder(image_embeddings=features, image_pe=self.prompt_encoder.get_dense_pe(),
                                 sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                 multimask_output=multimask_output, image_index=image_index)

    def forward(self, batched_input: List[Dict[str, Any]], multimask_output: bool) -> List[Dict[str, torch.Tensor]]:
        """Segment a batch of prompted images end to end (segment-anything's records).

        Args:
            batched_input: one dict per image with 'image' (3, h, w) already resized to the longest
                side ``img_size``, 'original_size' (H, W), and optionally 'point_coords' (B, N, 2),
                'point_labels' (B, N), 'boxes' (B, 4), 'mask_inputs' (B, 1, 256, 256), all in the
                resized frame.
            multimask_output: three masks per prompt instead of one.

        Returns:
            One dict per image: 'masks' (B, C, H, W) bool, 'iou_predictions' (B, C),
            'low_res_logits' (B, C, 256, 256).
        """
        images = torch.stack([self.preprocess(record['image']) for record in batched_input])
        features = self.mask_decoder.fuse_image(self.image_encoder(images))
        outputs = []
        for i, record in enumerate(batched_input):
            points = (record['point_coords'], record['point_labels']) if 'point_coords' in record else None
            low_res, iou = self.decode_prompts(features.select(i), points, record.get('boxes'),
                                               record.get('mask_inputs'), multimask_output)
            masks = self.postprocess_masks(low_res, record['image'].shape[-2:], record['original_size'])
            outputs.append(dict(masks=masks > self.mask_threshold, iou_predictions=iou, low_res_logits=low_res))
        return outputs
