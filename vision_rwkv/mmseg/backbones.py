"""VRWKV and VRWKV6 backbones in mmsegmentation's ``MODELS``: thin adapters around ``vision_rwkv.models``.

``VRWKV`` / ``VRWKV_Adapter`` build VRWKV (v1) blocks, ``VRWKV6`` / ``VRWKV6_Adapter`` VRWKV6 blocks
(``vision_rwkv.models.BlockV6``); the VRWKV6 pair takes the arguments of the official VRWKV6 backbone
(``num_heads``, ``shift_mode``) and none of VRWKV's Bi-WKV options. Arguments use the official Vision-RWKV
names (``embed_dims``, ``in_channels``, ``drop_rate``, ``with_cp``), so official configs port unchanged.
``init_cfg=dict(type='Pretrained', checkpoint=PATH)`` loads official classification or segmentation
checkpoints and ours (timm state dicts, ``tools/train.py`` checkpoints) with ``weights_only=True``; the
position embedding is resampled from the checkpoint's grid to ``img_size`` (set it to the crop size) and
again, per forward, to the input's grid. A checkpoint of the other Vision-RWKV version is refused by name.
"""
from __future__ import annotations

import os.path as osp
from typing import List, Optional, Sequence, Tuple, Union

import torch
from mmengine.logging import print_log
from mmseg.registry import MODELS

from vision_rwkv.errors import ConfigError, InputFileError
from vision_rwkv.models import VRWKV, BlockV6, VRWKVAdapter, load_backbone_checkpoint
from vision_rwkv.models.vrwkv6 import check_v6_options


def _checkpoint_path(init_cfg: Optional[dict], pretrained: Optional[str]) -> Optional[str]:
    """The checkpoint named by ``init_cfg`` (or the deprecated ``pretrained``), else None."""
    if pretrained is not None:
        if init_cfg is not None:
            raise ConfigError('give init_cfg or pretrained, not both')
        init_cfg = dict(type='Pretrained', checkpoint=pretrained)
    if init_cfg is None:
        return None
    if init_cfg.get('type') != 'Pretrained' or 'checkpoint' not in init_cfg:
        raise ConfigError(f"VRWKV backbones take init_cfg=dict(type='Pretrained', checkpoint=PATH), got {init_cfg}")
    return init_cfg['checkpoint']


class _PretrainedBackbone:
    """``init_weights`` as mmengine calls it: load ``self.checkpoint`` if set."""

    checkpoint: Optional[str]

    def init_weights(self) -> None:
        if self.checkpoint is None:
            print_log(f'{type(self).__name__}: no pretrained checkpoint, training from scratch', logger='current')
            return
        if not osp.isfile(self.checkpoint):
            raise InputFileError(
                f'pretrained checkpoint {self.checkpoint} not found: download it (see the config) or set '
                f'model.backbone.init_cfg=None')
        try:
            report = load_backbone_checkpoint(self, self.checkpoint)
        except ValueError as e:
            raise ConfigError(str(e)) from e
        print_log(f'{type(self).__name__}: loaded {self.checkpoint} ({len(report["missing"])} parameters kept '
                  f'their initial values, {len(report["unexpected"])} checkpoint keys unused)', logger='current')


def _vrwkv_kwargs(img_size, patch_size, in_channels, embed_dims, depth, drop_rate, drop_path_rate, hidden_rate,
                  channel_gamma, shift_pixel, init_mode, init_values, post_norm, key_norm, wkv_mode,
                  interpolate_mode, wkv_formula) -> dict:
    """Official (mmseg) argument names -> ``VRWKV`` arguments."""
    return dict(img_size=img_size, patch_size=patch_size, in_chans=in_channels, embed_dim=embed_dims, depth=depth,
                pos_drop_rate=drop_rate, drop_path_rate=drop_path_rate, hidden_rate=hidden_rate,
                channel_gamma=channel_gamma, shift_pixel=shift_pixel, init_mode=init_mode, init_values=init_values,
                post_norm=post_norm, key_norm=key_norm, wkv_mode=wkv_mode, interpolate_mode=interpolate_mode,
                wkv_formula=wkv_formula)


def _vrwkv6_kwargs(img_size, patch_size, in_channels, embed_dims, num_heads, depth, drop_rate, drop_path_rate,
                   hidden_rate, shift_pixel, shift_mode, init_mode, init_values, post_norm, key_norm,
                   interpolate_mode) -> dict:
    """Official VRWKV6 argument names -> ``VRWKV`` arguments with ``block_fn=BlockV6``.

    Raises ConfigError for what VRWKV6 does not have: another ``shift_mode`` or ``init_mode``, a width that is
    not 64 channels per head.
    """
    if shift_mode != 'q_shift_multihead':
        raise ConfigError(f"shift_mode={shift_mode!r}: VRWKV6 shifts within each head of 64 channels "
                          "('q_shift_multihead', the official VRWKV6's only mode)")
    try:
        check_v6_options(embed_dims, num_heads, shift_pixel, 0.25, init_mode, 'raster', None)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    return dict(img_size=img_size, patch_size=patch_size, in_chans=in_channels, embed_dim=embed_dims, depth=depth,
                num_heads=num_heads, block_fn=BlockV6, pos_drop_rate=drop_rate, drop_path_rate=drop_path_rate,
                hidden_rate=hidden_rate, shift_pixel=shift_pixel, init_mode=init_mode, init_values=init_values,
                post_norm=post_norm, key_norm=key_norm, interpolate_mode=interpolate_mode)


class _PlainBackbone(_PretrainedBackbone, VRWKV):
    """A ``VRWKV`` (any ``block_fn``) giving the (B, D, H/16, W/16) outputs of the blocks at ``out_indices``.

    As the official backbones, the final norm applies to the last block's output only.
    """

    def __init__(self, vrwkv_kwargs: dict, out_indices: Union[int, Sequence[int]], final_norm: bool, with_cp: bool,
                 pretrained: Optional[str], init_cfg: Optional[dict]):
        super().__init__(**vrwkv_kwargs, num_classes=0, global_pool='', final_norm=final_norm, dynamic_img_size=True)
        self.out_indices = _block_indices(out_indices, vrwkv_kwargs['depth'])
        self.checkpoint = _checkpoint_path(init_cfg, pretrained)
        self.set_grad_checkpointing(with_cp)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """(B, C, H, W) -> one (B, D, H/16, W/16) map per ``out_indices`` entry."""
        B = x.shape[0]
        x, (H, W) = self._embed(x)
        outs = []
        for i, block in enumerate(self.layers):
            x = self._run_block(block, x, (H, W))
            if i == len(self.layers) - 1:
                x = self.ln1(x)
            if i in self.out_indices:
                outs.append(x.transpose(1, 2).reshape(B, -1, H, W))
        return tuple(outs)


@MODELS.register_module(name='VRWKV')
class MMSegVRWKV(_PlainBackbone):
    """Plain VRWKV: the (B, D, H/16, W/16) outputs of the blocks at ``out_indices``.

    As the official backbone, the final norm applies to the last block's output only. Use with a
    neck that builds a pyramid (e.g. mmseg's ``MultiLevelNeck``), or use ``VRWKV_Adapter``.
    """

    def __init__(self, img_size: Union[int, Tuple[int, int]] = 224, patch_size: int = 16, in_channels: int = 3,
                 embed_dims: int = 192, depth: int = 12, out_indices: Union[int, Sequence[int]] = -1,
                 drop_rate: float = 0., drop_path_rate: float = 0., hidden_rate: float = 4,
                 channel_gamma: float = 0.25, shift_pixel: int = 1, init_mode: str = 'fancy',
                 init_values: Optional[float] = None, post_norm: bool = False, key_norm: bool = False,
                 wkv_mode: str = 'raster', final_norm: bool = True, interpolate_mode: str = 'bicubic',
                 wkv_formula: Optional[str] = None, with_cp: bool = False, pretrained: Optional[str] = None,
                 init_cfg: Optional[dict] = None):
        super().__init__(_vrwkv_kwargs(img_size, patch_size, in_channels, embed_dims, depth, drop_rate,
                                       drop_path_rate, hidden_rate, channel_gamma, shift_pixel, init_mode,
                                       init_values, post_norm, key_norm, wkv_mode, interpolate_mode, wkv_formula),
                         out_indices, final_norm, with_cp, pretrained, init_cfg)


@MODELS.register_module(name='VRWKV6')
class MMSegVRWKV6(_PlainBackbone):
    """Plain VRWKV6 (the official ``VRWKV6`` backbone's arguments): the (B, D, H/16, W/16) outputs of the blocks
    at ``out_indices``.

    ``num_heads`` heads of 64 channels (None: embed_dims / 64); ``shift_mode`` and ``init_mode`` have one value
    each, as upstream. The final norm applies to the last block's output only. Loads official VRWKV6
    classification checkpoints (``init_cfg``). Use with a neck that builds a pyramid, or use ``VRWKV6_Adapter``.
    """

    def __init__(self, img_size: Union[int, Tuple[int, int]] = 224, patch_size: int = 16, in_channels: int = 3,
                 embed_dims: int = 192, num_heads: Optional[int] = None, depth: int = 12,
                 out_indices: Union[int, Sequence[int]] = -1, drop_rate: float = 0., drop_path_rate: float = 0.,
                 hidden_rate: float = 4, shift_pixel: int = 1, shift_mode: str = 'q_shift_multihead',
                 init_mode: str = 'fancy', init_values: Optional[float] = None, post_norm: bool = False,
                 key_norm: bool = False, final_norm: bool = True, interpolate_mode: str = 'bicubic',
                 with_cp: bool = False, pretrained: Optional[str] = None, init_cfg: Optional[dict] = None):
        super().__init__(_vrwkv6_kwargs(img_size, patch_size, in_channels, embed_dims, num_heads, depth, drop_rate,
                                        drop_path_rate, hidden_rate, shift_pixel, shift_mode, init_mode, init_values,
                                        post_norm, key_norm, interpolate_mode),
                         out_indices, final_norm, with_cp, pretrained, init_cfg)


def _block_indices(out_indices: Union[int, Sequence[int]], depth: int) -> List[int]:
    """``out_indices`` (negative counts from the end) -> sorted block indices in [0, depth)."""
    indices = [out_indices] if isinstance(out_indices, int) else list(out_indices)
    bad = [i for i in indices if not -depth <= i < depth]
    if bad:
        raise ConfigError(f'out_indices {bad} are not blocks of a depth-{depth} VRWKV')
    return sorted(i % depth for i in indices)


class _AdapterBackbone(_PretrainedBackbone, VRWKVAdapter):
    """A ``VRWKVAdapter`` (any ``block_fn``) with mmcv's norm from ``norm_cfg`` (default SyncBN, official)."""

    def __init__(self, vrwkv_kwargs: dict, adapter_kwargs: dict, norm_cfg: Optional[dict], with_cp: bool,
                 pretrained: Optional[str], init_cfg: Optional[dict]):
        norm_cfg = dict(type='SyncBN', requires_grad=True) if norm_cfg is None else norm_cfg
        super().__init__(norm_layer=_norm_builder(norm_cfg), **adapter_kwargs, **vrwkv_kwargs)
        self.checkpoint = _checkpoint_path(init_cfg, pretrained)
        self.set_grad_checkpointing(with_cp)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        return self.forward_pyramid(x)


def _adapter_kwargs(interaction_indexes, conv_inplane, n_points, deform_num_heads, init_values_inject, with_cffn,
                    cffn_ratio, deform_ratio, add_rwkv_feature, use_extra_extractor) -> dict:
    """The ViT-Adapter arguments of ``VRWKVAdapter`` (official names)."""
    return dict(interaction_indexes=interaction_indexes, conv_inplane=conv_inplane, n_points=n_points,
                deform_num_heads=deform_num_heads, init_values_inject=init_values_inject, with_cffn=with_cffn,
                cffn_ratio=cffn_ratio, deform_ratio=deform_ratio, add_rwkv_feature=add_rwkv_feature,
                use_extra_extractor=use_extra_extractor)


@MODELS.register_module(name='VRWKV_Adapter')
class MMSegVRWKVAdapter(_AdapterBackbone):
    """VRWKV + ViT-Adapter (official ADE20K backbone): four maps at strides 4, 8, 16 and 32.

    ``norm_cfg`` is the batch norm of the spatial prior and of the outputs (official: SyncBN; use
    BN for CPU multi-process training). Input sides must be multiples of 32.
    """

    def __init__(self, img_size: Union[int, Tuple[int, int]] = 224, patch_size: int = 16, in_channels: int = 3,
                 embed_dims: int = 192, depth: int = 12, drop_rate: float = 0., drop_path_rate: float = 0.,
                 hidden_rate: float = 4, channel_gamma: float = 0.25, shift_pixel: int = 1, init_mode: str = 'fancy',
                 init_values: Optional[float] = None, post_norm: bool = False, key_norm: bool = False,
                 wkv_mode: str = 'raster', interpolate_mode: str = 'bicubic', wkv_formula: Optional[str] = None,
                 interaction_indexes: Sequence[Sequence[int]] = ((0, 2), (3, 5), (6, 8), (9, 11)),
                 conv_inplane: int = 64, n_points: int = 4, deform_num_heads: int = 6,
                 init_values_inject: float = 0., with_cffn: bool = True, cffn_ratio: float = 0.25,
                 deform_ratio: float = 1.0, add_rwkv_feature: bool = True, use_extra_extractor: bool = True,
                 norm_cfg: Optional[dict] = None, with_cp: bool = False, pretrained: Optional[str] = None,
                 init_cfg: Optional[dict] = None):
        super().__init__(
            _vrwkv_kwargs(img_size, patch_size, in_channels, embed_dims, depth, drop_rate, drop_path_rate,
                          hidden_rate, channel_gamma, shift_pixel, init_mode, init_values, post_norm, key_norm,
                          wkv_mode, interpolate_mode, wkv_formula),
            _adapter_kwargs(interaction_indexes, conv_inplane, n_points, deform_num_heads, init_values_inject,
                            with_cffn, cffn_ratio, deform_ratio, add_rwkv_feature, use_extra_extractor),
            norm_cfg, with_cp, pretrained, init_cfg)


@MODELS.register_module(name='VRWKV6_Adapter')
class MMSegVRWKV6Adapter(_AdapterBackbone):
    """VRWKV6 + ViT-Adapter: the ``VRWKV_Adapter`` pyramid (four maps at strides 4, 8, 16 and 32) around VRWKV6
    blocks. Upstream has no VRWKV6 segmentation backbone: the arguments are ``VRWKV_Adapter``'s adapter arguments
    and the official ``VRWKV6`` backbone's (``num_heads``: heads of 64 channels, None: embed_dims / 64).

    ``norm_cfg`` is the batch norm of the spatial prior and of the outputs (default SyncBN; use BN for CPU
    multi-process training). Input sides must be multiples of 32. Loads official VRWKV6 classification
    checkpoints (``init_cfg``).
    """

    def __init__(self, img_size: Union[int, Tuple[int, int]] = 224, patch_size: int = 16, in_channels: int = 3,
                 embed_dims: int = 192, num_heads: Optional[int] = None, depth: int = 12, drop_rate: float = 0.,
                 drop_path_rate: float = 0., hidden_rate: float = 4, shift_pixel: int = 1,
                 shift_mode: str = 'q_shift_multihead', init_mode: str = 'fancy', init_values: Optional[float] = None,
                 post_norm: bool = False, key_norm: bool = False, interpolate_mode: str = 'bicubic',
                 interaction_indexes: Sequence[Sequence[int]] = ((0, 2), (3, 5), (6, 8), (9, 11)),
                 conv_inplane: int = 64, n_points: int = 4, deform_num_heads: int = 6,
                 init_values_inject: float = 0., with_cffn: bool = True, cffn_ratio: float = 0.25,
                 deform_ratio: float = 1.0, add_rwkv_feature: bool = True, use_extra_extractor: bool = True,
                 norm_cfg: Optional[dict] = None, with_cp: bool = False, pretrained: Optional[str] = None,
                 init_cfg: Optional[dict] = None):
        super().__init__(
            _vrwkv6_kwargs(img_size, patch_size, in_channels, embed_dims, num_heads, depth, drop_rate,
                           drop_path_rate, hidden_rate, shift_pixel, shift_mode, init_mode, init_values, post_norm,
                           key_norm, interpolate_mode),
            _adapter_kwargs(interaction_indexes, conv_inplane, n_points, deform_num_heads, init_values_inject,
                            with_cffn, cffn_ratio, deform_ratio, add_rwkv_feature, use_extra_extractor),
            norm_cfg, with_cp, pretrained, init_cfg)


def _norm_builder(norm_cfg: dict):
    """``norm_cfg`` (mmcv ``build_norm_layer`` config) -> a ``(num_features, device, dtype) -> nn.Module`` factory."""
    from mmcv.cnn import build_norm_layer

    def build(num_features: int, device=None, dtype=None) -> torch.nn.Module:
        return build_norm_layer(dict(norm_cfg, device=device, dtype=dtype), num_features)[1]

    return build
