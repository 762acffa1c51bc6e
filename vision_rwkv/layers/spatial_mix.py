"""Spatial Mix of Vision-RWKV: Q-Shift, receptance/key/value projections and Bi-WKV."""
from typing import Optional, Tuple

import torch
import torch.nn as nn
from timm.models import register_notrace_function

from vision_rwkv.kernels import bi_wkv, bi_wkv_2d

from .shift import shift_mix
from .token_mix import spatial_mix_init


WKV_MODES = ('raster', 'cross', '2d')
#: Bi-WKV arithmetic: Eq. 5 of the paper, or the official CUDA kernels' (raster only; see ``bi_wkv``).
WKV_FORMULAS = ('paper', 'official')

# torch.fx (timm feature extraction) keeps every Bi-WKV call one graph node, around its torch.library op
register_notrace_function(bi_wkv)
register_notrace_function(bi_wkv_2d)


class SpatialMix(nn.Module):
    """Token mixing of a VRWKV block (official name: ``VRWKV_SpatialMix``).

    y = output(sigmoid(r) * key_norm(Bi-WKV(spatial_decay / n, spatial_first / n, k, v))), where k,
    v, r are projections of the input interpolated with its Q-shifted copy.

    ``wkv_mode`` chooses how Bi-WKV reads the (H, W) token grid and the normaliser n of the learned
    decay and bonus, which keeps ``spatial_decay`` the total decay across the longest distance:
    - 'raster' (official): one scan in row-major order, n = T = H * W;
    - 'cross': half of the channels row-major, half column-major, n = T;
    - '2d': decay by the Manhattan distance |Δrow| + |Δcol| (``bi_wkv_2d``), n = H + W.

    ``wkv_formula`` chooses the arithmetic of the raster scan: 'paper' (Eq. 5) or 'official', the one of
    the official CUDA kernels that the released checkpoints were trained with (``bi_wkv(...,
    formula='official')``). The other modes compute Eq. 5 only.
    """

    def __init__(
            self,
            dim: int,
            layer_id: int,
            num_layers: int,
            shift_pixel: int = 1,
            channel_gamma: float = 0.25,
            init_mode: str = 'fancy',
            key_norm: bool = False,
            wkv_mode: str = 'raster',
            wkv_formula: str = 'paper',
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if wkv_mode not in WKV_MODES:
            raise ValueError(f'wkv_mode must be one of {WKV_MODES}, got {wkv_mode!r}')
        self.wkv_mode = wkv_mode
        self.set_wkv_formula(wkv_formula)
        self.shift_pixel = shift_pixel
        self.channel_gamma = channel_gamma
        init = spatial_mix_init(dim, layer_id, num_layers, init_mode)
        init = {name: value.to(**dd) for name, value in init.items()}
        self.spatial_decay = nn.Parameter(init['spatial_decay'])
        self.spatial_first = nn.Parameter(init['spatial_first'])
        if shift_pixel > 0:
            self.spatial_mix_k = nn.Parameter(init['spatial_mix_k'])
            self.spatial_mix_v = nn.Parameter(init['spatial_mix_v'])
            self.spatial_mix_r = nn.Parameter(init['spatial_mix_r'])
        self.key = nn.Linear(dim, dim, bias=False, **dd)
        self.value = nn.Linear(dim, dim, bias=False, **dd)
        self.receptance = nn.Linear(dim, dim, bias=False, **dd)
        self.key_norm = nn.LayerNorm(dim, **dd) if key_norm else None
        self.output = nn.Linear(dim, dim, bias=False, **dd)

    def set_wkv_formula(self, formula: str) -> None:
        """Use ``formula`` ('paper' or 'official') for Bi-WKV from now on."""
        if formula not in WKV_FORMULAS:
            raise ValueError(f'wkv_formula must be one of {WKV_FORMULAS}, got {formula!r}')
        if formula == 'official' and self.wkv_mode != 'raster':
            raise ValueError(f"wkv_formula='official' (the official kernels' arithmetic) exists for "
                             f"wkv_mode='raster' only, this layer has wkv_mode={self.wkv_mode!r}")
        self.wkv_formula = formula

    def forward(self, x: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
        """x: (B, N, C) tokens of an (H, W) = grid patch grid -> (B, N, C)."""
        if self.shift_pixel > 0:
            mixes = (self.spatial_mix_k, self.spatial_mix_v, self.spatial_mix_r)
            xk, xv, xr = shift_mix(x, grid, mixes, self.shift_pixel, self.channel_gamma)
        else:
            xk = xv = xr = x
        k = self.key(xk)
        v = self.value(xv)
        sr = torch.sigmoid(self.receptance(xr))
        x = self.wkv(k, v, grid)
        if self.key_norm is not None:
            x = self.key_norm(x)
        return self.output(sr * x)

    def wkv(self, k: torch.Tensor, v: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
        """Bi-WKV of (B, N, C) keys and values over the (H, W) grid in this layer's mode."""
        if self.wkv_mode == '2d':
            n = grid[0] + grid[1]
            return bi_wkv_2d(self.spatial_decay / n, self.spatial_first / n, k, v, grid)
        n = k.shape[1]
        order = 'cross' if self.wkv_mode == 'cross' else 'row'
        return bi_wkv(self.spatial_decay / n, self.spatial_first / n, k, v, grid=grid, order=order,
                      formula=self.wkv_formula)
