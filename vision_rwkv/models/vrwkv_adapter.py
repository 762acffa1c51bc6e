"""VRWKV with the ViT-Adapter: a 4-level feature pyramid for dense prediction (official ADE20K backbone).

The backbone blocks (VRWKV's, or VRWKV6's with ``block_fn=BlockV6``) run in ``len(interaction_indexes)``
groups; before each group an injector adds the convolutional spatial prior into the tokens, after it
extractors pull the tokens back into the prior. The outputs are the prior levels at strides 4, 8, 16 and
32, each plus the (resized) tokens after the matching group, batch-normalised: four (B, D, H/s, W/s) maps
for UperNet.

Parameter names follow the official ``VRWKV_Adapter``, so official segmentation checkpoints load
as they are, and classification checkpoints (official or ours) initialise the backbone part.
"""
import itertools
import logging
import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import trunc_normal_

from vision_rwkv.layers.adapter import InteractionBlock, SpatialPriorModule, deform_inputs, pyramid_shapes
from vision_rwkv.layers.ms_deform_attn import MSDeformAttn

from ..checkpoint import load_checkpoint_file, strip_prefixes, unwrap_state_dict
from .vrwkv import _STRIP_PREFIXES, _VERSION_MARKERS, VRWKV, official_formula_id, resample_square_pos_embed

__all__ = ['VRWKVAdapter', 'backbone_checkpoint_filter', 'load_backbone_checkpoint']

_logger = logging.getLogger(__name__)

# The mmseg backbones of each Vision-RWKV version (vision_rwkv.mmseg), for error messages.
_MMSEG_TYPES = {'VRWKV (v1)': "'VRWKV' / 'VRWKV_Adapter'", 'VRWKV6': "'VRWKV6' / 'VRWKV6_Adapter'"}
# Keys of classifiers and decode heads, not of a dense-prediction backbone.
_DROPPED_PREFIXES = ('decode_head.', 'auxiliary_head.', 'neck.', 'data_preprocessor.', 'head.', 'pre_logits.')


class VRWKVAdapter(VRWKV):
    """VRWKV backbone + ViT-Adapter: (B, 3, H, W) images -> 4 maps (B, D, H/s, W/s), s = 4, 8, 16, 32.

    Args:
        interaction_indexes: [first, last] block of each interaction group, e.g.
            [[0, 2], [3, 5], [6, 8], [9, 11]] (official T/S/B) or [[0, 5], ..., [18, 23]] (L).
        conv_inplane: width of the spatial prior stem.
        n_points: deformable sampling points per head and level.
        deform_num_heads: deformable attention heads.
        init_values_inject: initial injector gate (0: the adapter starts as the plain backbone).
        with_cffn: ConvFFN in the extractors.
        cffn_ratio: ConvFFN hidden width as a fraction of the embedding width.
        deform_ratio: deformable attention value width as a fraction of the embedding width.
        add_rwkv_feature: add the resized backbone tokens of each group to the pyramid.
        use_extra_extractor: two more extractors after the last group.
        norm_layer: the batch norm of the prior and the outputs (official: SyncBatchNorm), called as
            ``norm_layer(num_features, device=..., dtype=...)``.
        device: device of the parameters (e.g. 'meta' to build without allocating).
        dtype: dtype of the floating-point parameters.
        **kwargs: ``VRWKV`` arguments (``img_size`` sets the position-embedding grid; inputs of
            other sizes resample it, as the official backbone does; ``block_fn=BlockV6`` and ``num_heads``
            give the VRWKV6 adapter).
    """

    def __init__(
            self,
            interaction_indexes: Sequence[Sequence[int]] = ((0, 2), (3, 5), (6, 8), (9, 11)),
            conv_inplane: int = 64,
            n_points: int = 4,
            deform_num_heads: int = 6,
            init_values_inject: float = 0.,
            with_cffn: bool = True,
            cffn_ratio: float = 0.25,
            deform_ratio: float = 1.0,
            add_rwkv_feature: bool = True,
            use_extra_extractor: bool = True,
            norm_layer: Callable[..., nn.Module] = nn.BatchNorm2d,
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
            **kwargs: Any,
    ):
        dd = dict(device=device, dtype=dtype)
        kwargs = dict(kwargs, num_classes=0, global_pool='', final_norm=False, dynamic_img_size=True)
        super().__init__(**kwargs, **dd)
        if kwargs.get('patch_size', 16) != 16:
            raise ValueError('the adapter aligns the tokens with the stride-16 prior level: patch_size must be 16')
        self.interaction_indexes = _check_groups(interaction_indexes, len(self.layers))
        if add_rwkv_feature and len(self.interaction_indexes) != 4:
            raise ValueError('add_rwkv_feature adds the tokens after each group to one pyramid level: '
                             f'it needs 4 interaction groups, got {len(self.interaction_indexes)}')
        self.add_rwkv_feature = add_rwkv_feature
        dim = self.embed_dim
        self.level_embed = nn.Parameter(torch.zeros(3, dim, **dd))
        self.spm = SpatialPriorModule(conv_inplane, dim, norm_layer, **dd)
        last = len(self.interaction_indexes) - 1
        self.interactions = nn.Sequential(*[
            InteractionBlock(dim, deform_num_heads, n_points, deform_ratio, init_values_inject, with_cffn,
                             cffn_ratio, drop_path=kwargs.get('drop_path_rate', 0.),
                             extra_extractor=use_extra_extractor and i == last, **dd)
            for i in range(len(self.interaction_indexes))])
        self.up = nn.ConvTranspose2d(dim, dim, 2, 2, **dd)
        self.norm1, self.norm2, self.norm3, self.norm4 = (norm_layer(dim, **dd) for _ in range(4))
        for module in (self.up, self.spm, self.interactions):
            module.apply(_init_adapter_weights)
        for module in self.modules():
            if isinstance(module, MSDeformAttn):
                module.reset_parameters()
        nn.init.normal_(self.level_embed)

    def forward_pyramid(self, x: torch.Tensor) -> List[torch.Tensor]:
        """(B, 3, H, W) images, H and W multiples of 32 -> [f1, f2, f3, f4], f_i (B, D, H/s_i, W/s_i)."""
        B, _, height, width = x.shape
        if height % 32 or width % 32:
            raise ValueError(f'VRWKVAdapter needs image sides that are multiples of 32, got {height}×{width} '
                             '(pad or resize the input, e.g. mmseg SegDataPreProcessor size_divisor=32)')
        inject_geometry, extract_geometry = deform_inputs(height, width, x.device)
        c_shapes = pyramid_shapes(height, width)

        c1, c2, c3, c4 = self.spm(x)
        c = torch.cat([c2 + self.level_embed[0], c3 + self.level_embed[1], c4 + self.level_embed[2]], dim=1)
        x, (H, W) = self._embed(x)
        token_maps = []
        for interaction, (first, last) in zip(self.interactions, self.interaction_indexes):
            x = interaction.inject(x, c, inject_geometry)
            for block in self.layers[first:last + 1]:
                x = self._run_block(block, x, (H, W))
            c = interaction.extract(x, c, extract_geometry, c_shapes)
            token_maps.append(x.transpose(1, 2).reshape(B, -1, H, W))

        c2, c3, c4 = (part.transpose(1, 2).reshape(B, -1, h, w)
                      for part, (h, w) in zip(c.split([h * w for h, w in c_shapes], dim=1), c_shapes))
        c1 = self.up(c2) + c1
        features = [c1, c2, c3, c4]
        if self.add_rwkv_feature:
            features = [f + F.interpolate(t, size=f.shape[-2:], mode='bilinear', align_corners=False)
                        for f, t in zip(features, token_maps)]
        return [norm(f) for norm, f in zip((self.norm1, self.norm2, self.norm3, self.norm4), features)]

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        return self.forward_pyramid(x)


def _check_groups(groups: Sequence[Sequence[int]], depth: int) -> List[Tuple[int, int]]:
    """Interaction groups must be consecutive [first, last] ranges that cover blocks 0..depth-1."""
    groups = [tuple(int(i) for i in g) for g in groups]
    expected = 0
    for first, last in groups:
        if first != expected or last < first:
            break
        expected = last + 1
    else:
        if expected == depth:
            return groups
    raise ValueError(f'interaction_indexes {groups} must be consecutive [first, last] groups covering '
                     f'blocks 0..{depth - 1}')


def _init_adapter_weights(module: nn.Module) -> None:
    """Official adapter initialisation: trunc-normal linears, unit norms, He-normal (fan-out) convs."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.LayerNorm, nn.modules.batchnorm._BatchNorm)):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, 0, math.sqrt(2.0 / fan_out))
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def backbone_checkpoint_filter(checkpoint: Dict[str, Any], model: VRWKV) -> Dict[str, torch.Tensor]:
    """Backbone (and adapter) weights of a checkpoint, in the names and grid of ``model``.

    Accepts official classification checkpoints (mmcls ``state_dict`` / InternImage-style ``model``),
    official segmentation checkpoints (``backbone.*`` of ``VRWKV_Adapter``; heads dropped), timm-format
    state dicts of our ``VRWKV`` / VRWKV6 models and checkpoints written by ``tools/train.py``. The position
    embedding is resampled to the model's ``img_size`` grid. For a VRWKV (v1) model, checkpoints that record no
    Bi-WKV formula (official ones) get the official formula's extra state, as in ``checkpoint_filter_fn``
    (VRWKV6 models have no formula to record).
    """
    own = model.state_dict()
    out = {}
    for key, value in unwrap_state_dict(checkpoint).items():
        key = strip_prefixes(key, _STRIP_PREFIXES)
        if key.startswith(_DROPPED_PREFIXES) or not torch.is_tensor(value):
            continue
        if key.startswith('ln1.') and key not in own:
            continue  # final norm of a classifier; the adapter has none
        if key == 'pos_embed' and key in own and value.shape != own[key].shape:
            value = resample_square_pos_embed(value, model)
        out[key] = value
    if out and 'wkv_formula_id' in own:
        out.setdefault('wkv_formula_id', official_formula_id())
    return out


def _other_version(state: Dict[str, torch.Tensor], own: Dict[str, torch.Tensor]) -> Optional[Tuple[str, str]]:
    """(checkpoint's version, model's version) when the checkpoint's blocks are VRWKV (v1) and the model's VRWKV6,
    or the reverse (each version's Spatial Mix has a key the other lacks); None otherwise."""
    def has(keys, marker: str) -> bool:
        return any(k.endswith(marker) for k in keys)

    versions = [(name, marker) for name, _, marker in _VERSION_MARKERS]
    for (theirs, their_marker), (ours, our_marker) in itertools.permutations(versions, 2):
        if has(state, their_marker) and not has(own, their_marker) and has(own, our_marker):
            return theirs, ours
    return None


def load_backbone_checkpoint(model: VRWKV, path: str, map_location: Optional[str] = 'cpu') -> Dict[str, list]:
    """Load a checkpoint file (``weights_only=True``) into ``model``; return the missing and unexpected keys.

    Missing adapter keys are normal for classification checkpoints. Raises ``ValueError`` when the file
    holds no key of the backbone at all, the blocks of the other Vision-RWKV version (VRWKV (v1) weights for a
    VRWKV6 model or the reverse), or a tensor whose shape does not match (another model size), and
    ``RuntimeError`` (naming the file) when it holds other Python objects or is truncated.
    """
    checkpoint = load_checkpoint_file(path, map_location=map_location)
    state = backbone_checkpoint_filter(checkpoint, model)
    own = model.state_dict()
    if not any(k in own for k in state if k != 'wkv_formula_id'):
        raise ValueError(f'{path}: no Vision-RWKV backbone weights found (keys look like '
                         f'{list(state)[:3]}); is this a Vision-RWKV checkpoint?')
    versions = _other_version(state, own)
    if versions:
        raise ValueError(f'{path}: its blocks are {versions[0]} blocks, this backbone has {versions[1]} blocks '
                         f'(mmseg: {_MMSEG_TYPES[versions[0]]} backbones take this checkpoint)')
    mismatched = [f'{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}'
                  for k, v in state.items() if k in own and v.shape != own[k].shape]
    if mismatched:
        raise ValueError(f'{path}: weights of another model size:\n  ' + '\n  '.join(mismatched[:5]))
    result = model.load_state_dict(state, strict=False)
    report = dict(missing=list(result.missing_keys), unexpected=list(result.unexpected_keys))
    if report['unexpected']:
        _logger.warning('%s: %d unexpected keys ignored, e.g. %s', path, len(report['unexpected']),
                        report['unexpected'][:5])
    if report['missing']:
        _logger.info('%s: %d keys not in the checkpoint keep their initial values, e.g. %s', path,
                     len(report['missing']), report['missing'][:5])
    return report
