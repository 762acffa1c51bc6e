"""Channel Mix of Vision-RWKV: Q-Shift, squared-ReLU MLP gated by a receptance."""
from typing import Optional, Tuple

import torch
import torch.nn as nn
from timm.models import register_notrace_function

from .shift import shift_mix
from .token_mix import channel_mix_init


class _SquaredReLU(torch.autograd.Function):
    """relu(x)^2, whose backward 2·relu(x)·g reads the saved relu(x) once (autograd of
    square(relu(x)) runs pow's and relu's backward, three passes over the 4x wide hidden tensor)."""

    @staticmethod
    def forward(ctx, x):
        r = torch.relu(x)
        ctx.save_for_backward(r)
        return r * r

    @staticmethod
    def backward(ctx, g):
        r, = ctx.saved_tensors
        return torch.addcmul(g.new_zeros(()), g, r, value=2)  # 2·g·r in one pass


@register_notrace_function  # one torch.fx node, so traced graphs keep the fused backward
def squared_relu(x: torch.Tensor) -> torch.Tensor:
    """relu(x)^2 of any shape, with the one-pass backward of ``_SquaredReLU``."""
    return _SquaredReLU.apply(x)


class ChannelMix(nn.Module):
    """Channel mixing of a VRWKV block (official name: ``VRWKV_ChannelMix``).

    y = sigmoid(receptance(xr)) * value(key_norm(relu(key(xk)) ** 2)), hidden width hidden_rate * dim,
    where xk, xr interpolate the input with its Q-shifted copy: across all channels (``q_shift``, VRWKV), or
    within each head of ``head_size`` channels (``q_shift_multihead``: VRWKV6's channel mix, head_size 64).
    """

    def __init__(
            self,
            dim: int,
            layer_id: int,
            num_layers: int,
            hidden_rate: float = 4,
            shift_pixel: int = 1,
            channel_gamma: float = 0.25,
            init_mode: str = 'fancy',
            key_norm: bool = False,
            head_size: Optional[int] = None,
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if head_size is not None and (dim % head_size or channel_gamma != 0.25):
            raise ValueError(f'ChannelMix: the head-wise Q-Shift needs dim a multiple of head_size and channel_gamma '
                             f'1/4, got dim={dim}, head_size={head_size}, channel_gamma={channel_gamma}')
        self.shift_pixel = shift_pixel
        self.channel_gamma = channel_gamma
        self.head_size = head_size
        hidden = int(hidden_rate * dim)
        if shift_pixel > 0:
            init = channel_mix_init(dim, layer_id, num_layers, init_mode)
            self.spatial_mix_k = nn.Parameter(init['spatial_mix_k'].to(**dd))
            self.spatial_mix_r = nn.Parameter(init['spatial_mix_r'].to(**dd))
        self.key = nn.Linear(dim, hidden, bias=False, **dd)
        self.key_norm = nn.LayerNorm(hidden, **dd) if key_norm else None
        self.receptance = nn.Linear(dim, dim, bias=False, **dd)
        self.value = nn.Linear(hidden, dim, bias=False, **dd)

    def forward(self, x: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
        """x: (B, N, C) tokens of an (H, W) = grid patch grid -> (B, N, C)."""
        if self.shift_pixel > 0:
            mixes = (self.spatial_mix_k, self.spatial_mix_r)
            xk, xr = shift_mix(x, grid, mixes, self.shift_pixel, self.channel_gamma, self.head_size)
        else:
            xk = xr = x
        k = squared_relu(self.key(xk))
        if self.key_norm is not None:
            k = self.key_norm(k)
        return torch.sigmoid(self.receptance(xr)) * self.value(k)
