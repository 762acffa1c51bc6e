"""Initialisation of the token-mixing coefficients shared by Spatial Mix and Channel Mix."""
import math
from typing import Dict

import torch

INIT_MODES = ('fancy', 'local', 'global')


def channel_ramp(dim: int) -> torch.Tensor:
    """(1, 1, dim) ramp i / dim used by the RWKV 'fancy' initialisation."""
    return (torch.arange(dim, dtype=torch.float32) / dim).view(1, 1, dim)


def spatial_mix_init(dim: int, layer_id: int, num_layers: int, init_mode: str) -> Dict[str, torch.Tensor]:
    """Initial spatial_decay, spatial_first and spatial_mix_{k,v,r} of one Spatial Mix.

    'fancy' is the RWKV-4 initialisation of the official Vision-RWKV: per-channel decay from -5 to 3
    with a layer-dependent curve, first-token bonus log(0.3) with a zigzag, and mixing ratios
    ramping over the channels.
    """
    if init_mode not in INIT_MODES:
        raise ValueError(f'init_mode must be one of {INIT_MODES}, got {init_mode!r}')
    if init_mode == 'local':
        ones = torch.ones(1, 1, dim)
        return dict(spatial_decay=torch.ones(dim), spatial_first=torch.ones(dim),
                    spatial_mix_k=ones, spatial_mix_v=ones.clone(), spatial_mix_r=ones.clone())
    if init_mode == 'global':
        half = torch.full((1, 1, dim), 0.5)
        return dict(spatial_decay=torch.zeros(dim), spatial_first=torch.zeros(dim),
                    spatial_mix_k=half, spatial_mix_v=half.clone(), spatial_mix_r=half.clone())
    ratio_0_to_1 = layer_id / max(num_layers - 1, 1)
    ratio_1_to_almost0 = 1.0 - layer_id / num_layers
    h = torch.arange(dim, dtype=torch.float32) / max(dim - 1, 1)
    decay = -5 + 8 * h ** (0.7 + 1.3 * ratio_0_to_1)
    zigzag = torch.tensor([(i + 1) % 3 - 1 for i in range(dim)], dtype=torch.float32) * 0.5
    ramp = channel_ramp(dim)
    return dict(
        spatial_decay=decay,
        spatial_first=torch.full((dim,), math.log(0.3)) + zigzag,
        spatial_mix_k=ramp ** ratio_1_to_almost0,
        spatial_mix_v=ramp ** ratio_1_to_almost0 + 0.3 * ratio_0_to_1,
        spatial_mix_r=ramp ** (0.5 * ratio_1_to_almost0),
    )


def channel_mix_init(dim: int, layer_id: int, num_layers: int, init_mode: str) -> Dict[str, torch.Tensor]:
    """Initial spatial_mix_{k,r} of one Channel Mix (same modes as ``spatial_mix_init``)."""
    if init_mode not in INIT_MODES:
        raise ValueError(f'init_mode must be one of {INIT_MODES}, got {init_mode!r}')
    if init_mode == 'local':
        return dict(spatial_mix_k=torch.ones(1, 1, dim), spatial_mix_r=torch.ones(1, 1, dim))
    if init_mode == 'global':
        return dict(spatial_mix_k=torch.full((1, 1, dim), 0.5), spatial_mix_r=torch.full((1, 1, dim), 0.5))
    ratio = channel_ramp(dim) ** (1.0 - layer_id / num_layers)
    return dict(spatial_mix_k=ratio, spatial_mix_r=ratio.clone())
