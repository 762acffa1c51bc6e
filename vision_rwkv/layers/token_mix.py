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


#: Widths of VRWKV6's low-rank projections: the five data-dependent mixing offsets (w, k, v, r, g) and the
#: data-dependent decay (official TIME_MIX_EXTRA_DIM, TIME_DECAY_EXTRA_DIM).
MIX_LORA_DIM = 32
DECAY_LORA_DIM = 64
LORA_INIT_BOUND = 1e-4


def spatial_mix_v6_init(dim: int, num_heads: int, layer_id: int, num_layers: int) -> Dict[str, torch.Tensor]:
    """Initial mixing, decay and bonus parameters of one VRWKV6 Spatial Mix (the official 'fancy' init).

    With r01 = layer_id / (num_layers - 1), r10 = 1 - layer_id / num_layers, ramp_i = i / dim, n = i / (dim - 1):
    time_maa_{x,w,k} = 1 - ramp^r10, time_maa_v = 1 - (ramp^r10 + 0.3 r01), time_maa_{r,g} = 1 - ramp^(r10 / 2);
    time_decay = -6 + 5 n^(0.7 + 1.3 r01); time_faaaa = r01 (1 - n) + 0.1 ((i + 1) mod 3 - 1), as (heads, dim /
    heads); the low-rank weights time_maa_w1 (dim, 5·32), time_maa_w2 (5, 32, dim), time_decay_w1 (dim, 64),
    time_decay_w2 (64, dim) uniform in [-1e-4, 1e-4] (torch's global generator). float32 on the CPU.
    """
    ratio_0_to_1 = layer_id / max(num_layers - 1, 1)
    ratio_1_to_almost0 = 1.0 - layer_id / num_layers
    ramp = channel_ramp(dim)
    n = torch.arange(dim, dtype=torch.float64) / max(dim - 1, 1)  # float64 as the official Python floats
    zigzag = (torch.arange(1, dim + 1) % 3 - 1).double() * 0.1

    def lora(*shape: int) -> torch.Tensor:
        return torch.empty(shape).uniform_(-LORA_INIT_BOUND, LORA_INIT_BOUND)

    return dict(
        time_maa_x=1.0 - ramp ** ratio_1_to_almost0,
        time_maa_w=1.0 - ramp ** ratio_1_to_almost0,
        time_maa_k=1.0 - ramp ** ratio_1_to_almost0,
        time_maa_v=1.0 - (ramp ** ratio_1_to_almost0 + 0.3 * ratio_0_to_1),
        time_maa_r=1.0 - ramp ** (0.5 * ratio_1_to_almost0),
        time_maa_g=1.0 - ramp ** (0.5 * ratio_1_to_almost0),
        time_maa_w1=lora(dim, 5 * MIX_LORA_DIM),
        time_maa_w2=lora(5, MIX_LORA_DIM, dim),
        time_decay=(-6 + 5 * n ** (0.7 + 1.3 * ratio_0_to_1)).float().view(1, 1, dim),
        time_decay_w1=lora(dim, DECAY_LORA_DIM),
        time_decay_w2=lora(DECAY_LORA_DIM, dim),
        time_faaaa=(ratio_0_to_1 * (1 - n) + zigzag).float().view(num_heads, dim // num_heads),
    )
