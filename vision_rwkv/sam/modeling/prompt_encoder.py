"""Prompt encoder with segment-anything's behaviour and parameter names.

Points, boxes and low-resolution mask logits become the decoder's prompt embeddings:

* sparse (B, K, C): one token per point and two per box (its corners). Each token is the random
  Fourier encoding of the pixel centre plus a learned type embedding: ``point_embeddings[0]``
  background (label 0), ``[1]`` foreground (label 1), ``[2]``/``[3]`` top-left/bottom-right box
  corner. Label -1 marks padding: its positional term is dropped and ``not_a_point_embed`` used
  instead. As in segment-anything, one padding point is appended to the points when no box is
  given, so K = N + 1 (points), 2 (box), N + 2 (points and box), 0 (neither).
* dense (B, C, h, w): the (B, 1, 4h, 4w) mask logits downscaled by two stride-2 convolutions, or
  ``no_mask_embed`` broadcast over the embedding grid when no mask is given.

State dicts of segment-anything's ``PromptEncoder`` load into this module by name.
"""
import math
from typing import Optional, Tuple, Type

import torch
import torch.nn as nn

from .common import LayerNorm2d


class PositionEmbeddingRandom(nn.Module):
    """Random Fourier features of 2-D positions in [0, 1]²: (..., 2) -> (..., 2 * num_pos_feats).

    ``positional_encoding_gaussian_matrix`` (2, num_pos_feats) is drawn from N(0, scale²) and kept
    as a (persistent) buffer, so it is saved with the weights, as in segment-anything.
    """

    def __init__(self, num_pos_feats: int = 64, scale: Optional[float] = None):
        super().__init__()
        if scale is None or scale <= 0.0:
            scale = 1.0
        self.register_buffer('positional_encoding_gaussian_matrix', scale * torch.randn((2, num_pos_feats)))

    def _pe_encoding(self, coords: torch.Tensor) -> torch.Tensor:
        """(..., 2) x, y in [0, 1] -> (..., 2F): [sin(2π(2p - 1)G), cos(2π(2p - 1)G)]."""
        proj = (2 * coords - 1) @ self.positional_encoding_gaussian_matrix
        proj = 2 * math.pi * proj
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)

    def forward(self, size: Tuple[int, int]) -> torch.Tensor:
        """Encoding of the pixel centres of an (h, w) grid: (2F, h, w)."""
        h, w = size
        matrix = self.positional_encoding_gaussian_matrix
        ys = (torch.arange(h, device=matrix.device, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, device=matrix.device, dtype=torch.float32) + 0.5) / w
        grid = torch.stack([xs[None, :].expand(h, w), ys[:, None].expand(h, w)], dim=-1)
        return self._pe_encoding(grid.to(matrix.dtype)).permute(2, 0, 1)

    def forward_with_coords(self, coords_input: torch.Tensor, image_size: Tuple[int, int]) -> torch.Tensor:
        """(B, N, 2) x, y pixel coordinates in an (H, W) image -> (B, N, 2F)."""
        coords = torch.stack([coords_input[..., 0] / image_size[1], coords_input[..., 1] / image_size[0]], dim=-1)
        return self._pe_encoding(coords.to(self.positional_encoding_gaussian_matrix.dtype))


class PromptEncoder(nn.Module):
    """Embeds point, box and mask prompts for the mask decoder (segment-anything's ``PromptEncoder``).

    Args:
        embed_dim: channels of the prompt embeddings (the decoder's transformer width).
        image_embedding_size: (h, w) of the image embedding.
        input_image_size: (H, W) of the padded encoder input; point and box coordinates are pixels of it.
        mask_in_chans: hidden channels of the mask downscaling convolutions.
        activation: activation of the mask downscaling path.
    """

    def __init__(self, embed_dim: int = 256, image_embedding_size: Tuple[int, int] = (64, 64),
                 input_image_size: Tuple[int, int] = (1024, 1024), mask_in_chans: int = 16,
                 activation: Type[nn.Module] = nn.GELU):
        super().__init__()
        self.embed_dim = embed_dim
        self.input_image_size = tuple(input_image_size)
        self.image_embedding_size = tuple(image_embedding_size)
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)

        self.num_point_embeddings: int = 4  # background, foreground, box top-left, box bottom-right
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(self.num_point_embeddings))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)

        self.mask_input_size = (4 * self.image_embedding_size[0], 4 * self.image_embedding_size[1])
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            activation(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            activation(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> torch.Tensor:
        """Positional encoding of every image-embedding cell: (1, embed_dim, h, w)."""
        return self.pe_layer(self.image_embedding_size).unsqueeze(0)

    def _embed_points(self, points: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        """(B, N, 2) pixel coordinates and (B, N) labels -> (B, N [+1 when pad], embed_dim)."""
        points = points + 0.5  # pixel centres
        if pad:
            points = torch.cat([points, points.new_zeros((points.shape[0], 1, 2))], dim=1)
            labels = torch.cat([labels, labels.new_full((labels.shape[0], 1), -1)], dim=1)
        embedding = self.pe_layer.forward_with_coords(points, self.input_image_size)
        labels = labels[..., None]
        padding = labels == -1
        embedding = torch.where(padding, torch.zeros_like(embedding), embedding)
        embedding = embedding + padding * self.not_a_point_embed.weight
        embedding = embedding + (labels == 0) * self.point_embeddings[0].weight
        embedding = embedding + (labels == 1) * self.point_embeddings[1].weight
        return embedding

    def _embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """(B, 4) x0, y0, x1, y1 pixel boxes -> (B, 2, embed_dim): the two corner tokens."""
        corners = (boxes + 0.5).reshape(-1, 2, 2)
        embedding = self.pe_layer.forward_with_coords(corners, self.input_image_size)
        corner_types = torch.cat([self.point_embeddings[2].weight, self.point_embeddings[3].weight], dim=0)
        return embedding + corner_types

    def _embed_masks(self, masks: torch.Tensor) -> torch.Tensor:
        """(B, 1, 4h, 4w) mask logits -> (B, embed_dim, h, w)."""
        return self.mask_downscaling(masks)

    @staticmethod
    def _get_batch_size(points: Optional[Tuple[torch.Tensor, torch.Tensor]], boxes: Optional[torch.Tensor],
                        masks: Optional[torch.Tensor]) -> int:
        if points is not None:
            return points[0].shape[0]
        if boxes is not None:
            return boxes.shape[0]
        if masks is not None:
            return masks.shape[0]
        return 1

    def _get_device(self) -> torch.device:
        return self.point_embeddings[0].weight.device

    def forward(self, points: Optional[Tuple[torch.Tensor, torch.Tensor]], boxes: Optional[torch.Tensor],
                masks: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Embed the prompts of B objects.

        Args:
            points: ((B, N, 2) x, y coordinates in the input frame, (B, N) labels 1 / 0 / -1) or None.
            boxes: (B, 4) x0, y0, x1, y1 in the input frame, or None.
            masks: (B, 1, 4h, 4w) mask logits, or None.

        Returns:
            sparse (B, K, embed_dim) and dense (B, embed_dim, h, w) embeddings (B = 1 with no prompt).
        """
        bs = self._get_batch_size(points, boxes, masks)
        weight = self.point_embeddings[0].weight
        sparse = torch.empty((bs, 0, self.embed_dim), device=weight.device, dtype=weight.dtype)
        if points is not None:
            coords, labels = points
            sparse = torch.cat([sparse, self._embed_points(coords, labels, pad=boxes is None)], dim=1)
        if boxes is not None:
            sparse = torch.cat([sparse, self._embed_boxes(boxes)], dim=1)

        if masks is not None:
            dense = self._embed_masks(masks)
        else:
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(bs, -1, *self.image_embedding_size)
        return sparse, dense
