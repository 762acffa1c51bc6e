"""Layers shared by the RWKV-SAM modules (segment-anything conventions)."""
from typing import Type

import torch
import torch.nn as nn
import torch.nn.functional as F


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of (B, C, H, W) maps (segment-anything's ``LayerNorm2d``).

    Runs the fused ``F.layer_norm`` on a channels-last view instead of segment-anything's chain of
    elementwise ops (same result and parameters; forward + backward several times faster on CPU).
    The output is a channels-last (NHWC-strided) tensor of shape (B, C, H, W).
    """

    def __init__(self, num_channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.weight.shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class MLPBlock(nn.Module):
    """Linear, activation, linear: (..., dim) -> (..., dim)."""

    def __init__(self, embedding_dim: int, mlp_dim: int, act: Type[nn.Module] = nn.GELU):
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))
