"""Spatial Mix of VRWKV6 (RWKV-6 style): head-wise Q-Shift with data-dependent mixing, data-dependent decay,
bidirectional multi-head WKV, per-head GroupNorm and a SiLU gate."""
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import register_notrace_function

from vision_rwkv.kernels import bi_wkv6

from .shift import q_shift_multihead
from .token_mix import MIX_LORA_DIM, spatial_mix_v6_init

#: Channels per head of VRWKV6 (the official HEAD_SIZE; the WKV operator's head size).
HEAD_SIZE = 64

# torch.fx (timm feature extraction) keeps every WKV call one graph node
register_notrace_function(bi_wkv6)


class SpatialMixV6(nn.Module):
    """Token mixing of a VRWKV6 block (official name: ``VRWKV_SpatialMix_V6``), parameter names as upstream.

    With xx = q_shift_multihead(x) - x and the data-dependent offsets
    (m_w, m_k, m_v, m_r, m_g) = tanh((x + xx * time_maa_x) @ time_maa_w1) @ time_maa_w2 (five rank-32 maps):

        x_c = x + xx * (time_maa_c + m_c) for c in w, k, v, r, g
        r, k, v = receptance(x_r), key(x_k), value(x_v);  g = silu(gate(x_g))
        w = time_decay + tanh(x_w @ time_decay_w1) @ time_decay_w2       (per token and channel)
        y = output(ln_x(key_norm(bi_wkv6(r, k, v, w, time_faaaa))) * g)

    ``bi_wkv6`` decays by exp(-exp(w)) per step in both directions; ``ln_x`` is a GroupNorm with one group per
    head (eps 1e-5) applied to each token. The initial values are the official 'fancy' ones
    (``spatial_mix_v6_init``); the five linears keep PyTorch's default init (the model re-initialises them).

    Args:
        dim: channels C, ``num_heads`` heads of 64.
        num_heads: number of heads (C / 64).
        layer_id, num_layers: position of the block, for the initial values.
        shift_pixel: Q-Shift distance in patches.
        key_norm: LayerNorm(C) after the WKV (before ``ln_x``).
        device, dtype: factory arguments of the parameters.
    """

    def __init__(
            self,
            dim: int,
            num_heads: int,
            layer_id: int,
            num_layers: int,
            shift_pixel: int = 1,
            key_norm: bool = False,
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if dim != num_heads * HEAD_SIZE:
            raise ValueError(f'SpatialMixV6 runs heads of {HEAD_SIZE} channels: dim must be {HEAD_SIZE} * num_heads, '
                             f'got dim={dim}, num_heads={num_heads}')
        self.num_heads = num_heads
        self.shift_pixel = shift_pixel
        for name, value in spatial_mix_v6_init(dim, num_heads, layer_id, num_layers).items():
            setattr(self, name, nn.Parameter(value.to(**dd)))
        self.key = nn.Linear(dim, dim, bias=False, **dd)
        self.value = nn.Linear(dim, dim, bias=False, **dd)
        self.receptance = nn.Linear(dim, dim, bias=False, **dd)
        self.gate = nn.Linear(dim, dim, bias=False, **dd)
        self.key_norm = nn.LayerNorm(dim, **dd) if key_norm else None
        self.output = nn.Linear(dim, dim, bias=False, **dd)
        self.ln_x = nn.GroupNorm(num_heads, dim, eps=1e-5, **dd)

    def mix_inputs(self, x: torch.Tensor, grid: Tuple[int, int]) -> Tuple[torch.Tensor, ...]:
        """(B, N, C) tokens -> the five (B, N, C) inputs x_w, x_k, x_v, x_r, x_g of the projections."""
        xx = q_shift_multihead(x, grid, self.shift_pixel, HEAD_SIZE) - x
        lora = torch.tanh((x + xx * self.time_maa_x) @ self.time_maa_w1)  # (B, N, 5 * 32)
        offsets = torch.einsum('bnfd,fdc->fbnc', lora.unflatten(-1, (5, MIX_LORA_DIM)), self.time_maa_w2)
        maa = (self.time_maa_w, self.time_maa_k, self.time_maa_v, self.time_maa_r, self.time_maa_g)
        return tuple(x + xx * (m + offsets[i]) for i, m in enumerate(maa))  # indexing: torch.fx cannot unpack

    def forward(self, x: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
        """x: (B, N, C) tokens of an (H, W) = grid patch grid -> (B, N, C)."""
        xw, xk, xv, xr, xg = self.mix_inputs(x, grid)
        r = self.receptance(xr)
        k = self.key(xk)
        v = self.value(xv)
        g = F.silu(self.gate(xg))
        w = self.time_decay + torch.tanh(xw @ self.time_decay_w1) @ self.time_decay_w2
        y = bi_wkv6(r, k, v, w, self.time_faaaa)
        if self.key_norm is not None:
            y = self.key_norm(y)
        y = self.ln_x(y.flatten(0, 1)).view_as(y)  # GroupNorm over each token's heads
        return self.output(y * g)
