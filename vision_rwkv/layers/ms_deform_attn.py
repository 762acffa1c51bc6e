"""Multi-scale deformable attention (Deformable DETR), as the ViT-Adapter uses it.

Each query attends to ``n_points`` bilinearly sampled points per head and level around its
reference point; the offsets and the softmax weights are linear functions of the query. The
ViT-Adapter variant projects values to ``ratio × d_model`` channels. Parameter names
(``sampling_offsets``, ``attention_weights``, ``value_proj``, ``output_proj``) follow the original
``MSDeformAttn``, so official ViT-Adapter / Vision-RWKV segmentation checkpoints load.

Paper: "Deformable DETR: Deformable Transformers for End-to-End Object Detection",
https://arxiv.org/abs/2010.04159
"""
import functools
import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ['MSDeformAttn', 'ms_deform_attn']


@functools.lru_cache(maxsize=None)
def _cuda_kernel():
    """mmcv's CUDA kernel when mmcv was compiled with CUDA ops, else None (PyTorch path)."""
    try:
        from mmcv.ops import get_compiling_cuda_version
        from mmcv.ops.multi_scale_deform_attn import MultiScaleDeformableAttnFunction
    except ImportError:
        return None
    return MultiScaleDeformableAttnFunction if get_compiling_cuda_version() != 'not available' else None


def ms_deform_attn(
        value: torch.Tensor,
        spatial_shapes: torch.Tensor,
        sampling_locations: torch.Tensor,
        attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Weighted sum of bilinear samples of a multi-level value map (PyTorch path, any device).

    Args:
        value: (B, S, M, D) values of all levels, flattened row-major and concatenated;
            S = Σ H_l·W_l, M heads of D channels.
        spatial_shapes: (L, 2) long, the (H_l, W_l) of each level.
        sampling_locations: (B, Q, M, L, P, 2) points as (x, y) in [0, 1] of each level
            (pixel centres at (i + 0.5) / W_l; outside samples read zeros).
        attention_weights: (B, Q, M, L, P) weights of the samples.

    Returns:
        (B, Q, M·D).
    """
    B, _, M, D = value.shape
    _, Q, _, L, P, _ = sampling_locations.shape
    sizes = [int(h) * int(w) for h, w in spatial_shapes.tolist()]
    grids = 2 * sampling_locations - 1  # grid_sample coordinates, align_corners=False
    samples = []
    for level, (value_l, (h, w)) in enumerate(zip(value.split(sizes, dim=1), spatial_shapes.tolist())):
        value_l = value_l.flatten(2).transpose(1, 2).reshape(B * M, D, h, w)
        grid_l = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)  # (B·M, Q, P, 2)
        samples.append(F.grid_sample(value_l, grid_l, mode='bilinear', padding_mode='zeros', align_corners=False))
    weights = attention_weights.transpose(1, 2).reshape(B * M, 1, Q, L * P)
    out = (torch.stack(samples, dim=-2).flatten(-2) * weights).sum(-1)  # (B·M, D, Q)
    return out.view(B, M * D, Q).transpose(1, 2)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention.

    Args:
        d_model: query and output width.
        n_levels: number of feature levels.
        n_heads: attention heads; ``ratio × d_model`` must divide by it.
        n_points: sampling points per head and level.
        ratio: value width as a fraction of ``d_model`` (ViT-Adapter ``deform_ratio``).
        device, dtype: factory arguments of the parameters.
    """

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4,
                 ratio: float = 1.0, device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        value_dim = int(d_model * ratio)
        if value_dim % n_heads:
            raise ValueError(f'value width d_model*ratio = {value_dim} must be divisible by n_heads = {n_heads}')
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2, **dd)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points, **dd)
        self.value_proj = nn.Linear(d_model, value_dim, **dd)
        self.output_proj = nn.Linear(value_dim, d_model, **dd)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Offsets start on rings around the reference point, one direction per head; uniform weights."""
        nn.init.zeros_(self.sampling_offsets.weight)
        theta = torch.arange(self.n_heads, dtype=torch.float32) * (2 * math.pi / self.n_heads)
        directions = torch.stack([theta.cos(), theta.sin()], -1)
        directions = directions / directions.abs().max(-1, keepdim=True)[0]
        rings = torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        grid = directions.view(self.n_heads, 1, 1, 2) * rings  # (M, 1, P, 2)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.expand(-1, self.n_levels, -1, -1).reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(
            self,
            query: torch.Tensor,
            reference_points: torch.Tensor,
            features: torch.Tensor,
            spatial_shapes: torch.Tensor,
            padding_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Attend from queries to a multi-level feature map.

        Args:
            query: (B, Q, d_model).
            reference_points: (B or 1, Q, L or 1, 2) as (x, y) in [0, 1].
            features: (B, S, d_model), the L levels flattened row-major and concatenated.
            spatial_shapes: (L, 2) long, (H_l, W_l) per level, Σ H_l·W_l = S.
            padding_mask: (B, S) True where ``features`` is padding (its values are zeroed).

        Returns:
            (B, Q, d_model).
        """
        B, Q, _ = query.shape
        S = features.shape[1]
        if spatial_shapes.shape != (self.n_levels, 2) or int(spatial_shapes.prod(1).sum()) != S:
            raise ValueError(f'spatial_shapes {spatial_shapes.tolist()} must list {self.n_levels} levels '
                             f'covering the {S} feature tokens')
        value = self.value_proj(features)
        if padding_mask is not None:
            value = value.masked_fill(padding_mask[..., None], 0.0)
        value = value.view(B, S, self.n_heads, -1)
        offsets = self.sampling_offsets(query).view(B, Q, self.n_heads, self.n_levels, self.n_points, 2)
        weights = self.attention_weights(query).view(B, Q, self.n_heads, self.n_levels * self.n_points)
        weights = weights.softmax(-1).view(B, Q, self.n_heads, self.n_levels, self.n_points)
        normalizer = spatial_shapes.flip(-1).to(offsets.dtype)  # (L, 2) as (W, H)
        locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        kernel = _cuda_kernel() if value.is_cuda else None
        if kernel is not None:
            level_start = torch.cat([spatial_shapes.new_zeros(1), spatial_shapes.prod(1).cumsum(0)[:-1]])
            out = kernel.apply(value, spatial_shapes, level_start, locations, weights, 64)
        else:
            out = ms_deform_attn(value, spatial_shapes, locations, weights)
        return self.output_proj(out)
