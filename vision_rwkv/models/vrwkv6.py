"""VRWKV6: Vision-RWKV with RWKV-6 style blocks, in timm.

The official ``VRWKV6`` classifiers of OpenGVLab/Vision-RWKV (``classification/mmcls_custom/models/backbones/
vrwkv6.py``): the VRWKV model (patch embedding, absolute position embedding, ``ln0``, optional post-norm and
layer scale, final norm, average pooling, linear head) with ``BlockV6`` blocks, whose Spatial Mix has
data-dependent token-shift mixing and decay, a bidirectional multi-head WKV (heads of 64 channels), a
per-head GroupNorm and a SiLU gate (``SpatialMixV6``), and whose Channel Mix shifts within each head.

The models are ``VRWKV`` instances built with ``block_fn=BlockV6``: the timm interface, feature extraction,
gradient checkpointing and checkpoint loading are VRWKV's. Parameter names are the official ones, so official
checkpoints (mmcls: ``backbone.*``, ``head.fc.*``) load through ``checkpoint_filter_fn``.
VRWKV6's WKV has one definition (the official kernel's): the models have no ``wkv_mode`` other than
'raster' and no ``wkv_formula``.
"""
from typing import Optional

import torch
from timm.models import generate_default_cfgs, register_model

from vision_rwkv.layers import ChannelMix, SpatialMixV6
from vision_rwkv.layers.spatial_mix_v6 import HEAD_SIZE

from .vrwkv import VRWKV, BlockBase, _cfg, _create_vrwkv, checkpoint_filter_fn

__all__ = ['BlockV6', 'check_v6_options', 'checkpoint_filter_fn']


def check_v6_options(dim: int, num_heads: Optional[int], shift_pixel: int, channel_gamma: float, init_mode: str,
                      wkv_mode: str, wkv_formula: Optional[str]) -> int:
    """Clear errors for the VRWKV options that VRWKV6 does not have; returns the number of heads."""
    if wkv_mode != 'raster':
        raise ValueError(f"wkv_mode={wkv_mode!r}: VRWKV6 blocks scan the tokens in raster order only "
                         "(wkv_mode is an option of VRWKV (v1) models)")
    if wkv_formula is not None:
        raise ValueError(f"wkv_formula={wkv_formula!r}: VRWKV6's WKV has one definition (the official kernel's); "
                         "wkv_formula is an option of VRWKV (v1) models")
    if channel_gamma != 0.25:
        raise ValueError(f'channel_gamma={channel_gamma}: VRWKV6 shifts a quarter of each head per direction')
    if init_mode != 'fancy':
        raise ValueError(f"init_mode={init_mode!r}: VRWKV6 has the 'fancy' initialisation only (as upstream)")
    if shift_pixel < 1:
        raise ValueError(f'shift_pixel={shift_pixel}: VRWKV6 blocks need a Q-Shift of at least one patch')
    heads = dim // HEAD_SIZE if num_heads is None else num_heads
    if heads < 1 or dim != heads * HEAD_SIZE:
        raise ValueError(f'VRWKV6 runs heads of {HEAD_SIZE} channels: embed_dim must be {HEAD_SIZE} * num_heads, '
                         f'got embed_dim={dim}, num_heads={num_heads}')
    return heads


class BlockV6(BlockBase):
    """VRWKV6 block: ``SpatialMixV6`` and a head-wise shifted ``ChannelMix`` in ``BlockBase``'s residual structure
    (official ``Block`` of ``vrwkv6.py``).

    Takes the keyword arguments that ``VRWKV`` passes to every ``block_fn``. The VRWKV (v1) options must keep
    their only VRWKV6 values (``wkv_mode='raster'``, ``wkv_formula=None``, ``channel_gamma=0.25``,
    ``init_mode='fancy'``); other values raise ValueError. ``num_heads`` None: dim / 64.
    """

    #: VRWKV6's WKV has no formula to choose (``VRWKV`` then has no ``wkv_formula_id``).
    wkv_formulas = ()

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
            post_norm: bool = False,
            init_values: Optional[float] = None,
            drop_path: float = 0.,
            wkv_mode: str = 'raster',
            wkv_formula: Optional[str] = None,
            num_heads: Optional[int] = None,
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
    ):
        heads = check_v6_options(dim, num_heads, shift_pixel, channel_gamma, init_mode, wkv_mode, wkv_formula)
        dd = dict(device=device, dtype=dtype)
        att = SpatialMixV6(dim, heads, layer_id, num_layers, shift_pixel, key_norm, **dd)
        ffn = ChannelMix(dim, layer_id, num_layers, hidden_rate, shift_pixel, channel_gamma, init_mode, key_norm,
                         head_size=HEAD_SIZE, **dd)
        super().__init__(dim, layer_id, att, ffn, post_norm, init_values, drop_path, **dd)


def _create_vrwkv6(variant: str, pretrained: bool = False, **kwargs) -> VRWKV:
    return _create_vrwkv(variant, pretrained, block_fn=BlockV6, **kwargs)


default_cfgs = generate_default_cfgs({
    'vrwkv6_tiny_patch16_224.in1k': _cfg('vrwkv6_t_in1k_224.pth'),
    'vrwkv6_small_patch16_224.in1k': _cfg('vrwkv6_s_in1k_224.pth'),
    'vrwkv6_base_patch16_224.in1k': _cfg('vrwkv6_b_in1k_224.pth'),
})

# Official architectures (classification/configs/vrwkv6/*.py; num_heads = embed_dim / 64). The official recipes
# train with drop_path_rate 0 (T), 0.3 (S), 0.5 (B): a training choice, pass it to timm.create_model.
_TINY = dict(patch_size=16, embed_dim=192, depth=12)
_SMALL = dict(patch_size=16, embed_dim=384, depth=12, post_norm=True, init_values=1e-5)
_BASE = dict(patch_size=16, embed_dim=768, depth=12, post_norm=True, init_values=1e-5)


@register_model
def vrwkv6_tiny_patch16_224(pretrained: bool = False, **kwargs) -> VRWKV:
    """VRWKV6-T/16, 7.6M parameters, 76.6 top-1 on ImageNet-1K (official)."""
    return _create_vrwkv6('vrwkv6_tiny_patch16_224', pretrained, **dict(_TINY, **kwargs))


@register_model
def vrwkv6_small_patch16_224(pretrained: bool = False, **kwargs) -> VRWKV:
    """VRWKV6-S/16, 27.7M parameters, 81.1 top-1 on ImageNet-1K (official)."""
    return _create_vrwkv6('vrwkv6_small_patch16_224', pretrained, **dict(_SMALL, **kwargs))


@register_model
def vrwkv6_base_patch16_224(pretrained: bool = False, **kwargs) -> VRWKV:
    """VRWKV6-B/16, 104.9M parameters, 82.6 top-1 on ImageNet-1K (official)."""
    return _create_vrwkv6('vrwkv6_base_patch16_224', pretrained, **dict(_BASE, **kwargs))
