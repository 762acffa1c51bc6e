"""Vision-RWKV (VRWKV, RWKV-4 style) backbones for timm.

Faithful to the official OpenGVLab/Vision-RWKV models: patch embedding, absolute position
embedding, blocks of Spatial Mix (Q-Shift + Bi-WKV) and Channel Mix (squared ReLU), layer 0 input
norm ``ln0``, optional post-norm and layer scale, final norm ``ln1``, global average pooling and a
linear head (VRWKV-L: fc + tanh + linear). Parameter names follow the official code, so official
checkpoints load after ``checkpoint_filter_fn`` strips their wrappers.

``VRWKV`` builds its blocks with ``block_fn``: ``Block`` here, VRWKV6's ``BlockV6`` in ``vrwkv6.py``, which
registers the VRWKV6 models on this class.

Paper: "Vision-RWKV: Efficient and Scalable Visual Perception with RWKV-Like Architectures",
https://arxiv.org/abs/2403.02308
"""
import logging
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple, Type, Union

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, to_2tuple, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, load_pretrained, register_model
from timm.models._features import feature_take_indices

from vision_rwkv.layers import ChannelMix, PatchEmbed, SpatialMix, resample_pos_embed
from vision_rwkv.layers.spatial_mix import WKV_FORMULAS

from ..checkpoint import load_checkpoint_file, strip_prefixes, unwrap_state_dict

__all__ = ['VRWKV', 'Block', 'BlockBase', 'checkpoint_filter_fn']

_logger = logging.getLogger(__name__)

GLOBAL_POOLS = ('', 'avg', 'max', 'avgmax')


class BlockBase(nn.Module):
    """Residual structure of the VRWKV blocks: x + drop_path(gamma1 * att(ln1(x))), then the same with ffn
    and ln2.

    With ``post_norm`` the norms move to the branch outputs: x + drop_path(gamma1 * ln1(att(x))).
    Block 0 first normalises its input with ``ln0``. ``gamma1``, ``gamma2`` (layer scale) exist when
    ``init_values`` is given. ``att`` and ``ffn`` map (B, N, C) tokens and their (H, W) grid to (B, N, C);
    ``device`` and ``dtype`` are the factory arguments of the norms and layer scales.
    """

    def __init__(
            self,
            dim: int,
            layer_id: int,
            att: nn.Module,
            ffn: nn.Module,
            post_norm: bool = False,
            init_values: Optional[float] = None,
            drop_path: float = 0.,
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.post_norm = post_norm
        self.ln0 = nn.LayerNorm(dim, **dd) if layer_id == 0 else None
        self.ln1 = nn.LayerNorm(dim, **dd)
        self.ln2 = nn.LayerNorm(dim, **dd)
        self.att = att
        self.ffn = ffn
        if init_values is not None:
            self.gamma1 = nn.Parameter(torch.full((dim,), float(init_values), **dd))
            self.gamma2 = nn.Parameter(torch.full((dim,), float(init_values), **dd))
        else:
            self.gamma1 = self.gamma2 = None
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    @staticmethod
    def _scale(x: torch.Tensor, gamma: Optional[torch.Tensor]) -> torch.Tensor:
        return x if gamma is None else gamma * x

    def forward(self, x: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
        """x: (B, N, C) tokens of an (H, W) = grid patch grid -> (B, N, C)."""
        if self.ln0 is not None:
            x = self.ln0(x)
        if self.post_norm:
            x = x + self.drop_path(self._scale(self.ln1(self.att(x, grid)), self.gamma1))
            x = x + self.drop_path(self._scale(self.ln2(self.ffn(x, grid)), self.gamma2))
        else:
            x = x + self.drop_path(self._scale(self.att(self.ln1(x), grid), self.gamma1))
            x = x + self.drop_path(self._scale(self.ffn(self.ln2(x), grid), self.gamma2))
        return x


class Block(BlockBase):
    """VRWKV block: Spatial Mix (Q-Shift + Bi-WKV) and Channel Mix in ``BlockBase``'s residual structure.

    Takes the keyword arguments that ``VRWKV`` passes to every ``block_fn``; ``num_heads`` belongs to VRWKV6
    blocks and must stay None. ``wkv_formula`` None means 'paper'.
    """

    #: Bi-WKV arithmetics the block can run (``SpatialMix.set_wkv_formula``); VRWKV records the one in use.
    wkv_formulas = WKV_FORMULAS

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
            wkv_formula: Optional[str] = 'paper',
            num_heads: Optional[int] = None,
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
    ):
        if num_heads is not None:
            raise ValueError(f'num_heads={num_heads}: VRWKV (v1) blocks have no heads (their Bi-WKV mixes each '
                             'channel alone); num_heads is an option of the VRWKV6 models')
        dd = dict(device=device, dtype=dtype)
        att = SpatialMix(dim, layer_id, num_layers, shift_pixel, channel_gamma, init_mode, key_norm, wkv_mode,
                         wkv_formula or 'paper', **dd)
        ffn = ChannelMix(dim, layer_id, num_layers, hidden_rate, shift_pixel, channel_gamma, init_mode, key_norm, **dd)
        super().__init__(dim, layer_id, att, ffn, post_norm, init_values, drop_path, **dd)


class VRWKV(nn.Module):
    """Vision-RWKV with the timm model interface.

    Args:
        img_size: input size; sets the position-embedding grid.
        patch_size: patch side.
        in_chans: input channels.
        num_classes: classifier outputs (0: no classifier).
        global_pool: '' (tokens), 'avg' (official), 'max' or 'avgmax'.
        embed_dim: width (official ``embed_dims``).
        depth: number of blocks.
        hidden_rate: Channel Mix hidden width as a multiple of ``embed_dim``.
        channel_gamma: fraction of channels per Q-Shift direction.
        shift_pixel: Q-Shift distance (0 disables the shift).
        init_mode: 'fancy' (official), 'local' or 'global' initialisation of the mixing parameters.
        post_norm: normalise branch outputs instead of branch inputs (official S/B/L).
        key_norm: LayerNorm after Bi-WKV and after the squared ReLU (official L).
        wkv_mode: how Bi-WKV reads the token grid: 'raster' (official), 'cross' (half of the
            channels column-major) or '2d' (Manhattan-distance decay); see ``SpatialMix``.
        wkv_formula: Bi-WKV arithmetic of the raster mode: 'paper' (Eq. 5) or 'official' (the official
            CUDA kernels', which the released checkpoints were trained with). None (default): decided by
            the checkpoint loaded (official checkpoints: 'official'; ours record theirs), else 'paper'. A
            value given here is kept whatever the checkpoint records.
        init_values: layer-scale initial value (None: no layer scale).
        final_norm: LayerNorm ``ln1`` after the last block.
        head_hidden_size: width of a fc + tanh pre-logits layer before the classifier (official L: 3072);
            part of the classifier head, so a model created with ``num_classes=0`` has none.
        drop_rate: dropout before the classifier.
        pos_drop_rate: dropout after adding the position embedding (official ``drop_rate``).
        drop_path_rate: stochastic depth, linearly increasing over the blocks.
        dynamic_img_size: accept any input size, resampling the position embedding.
        dynamic_img_pad: pad inputs to a multiple of the patch size.
        interpolate_mode: position-embedding resampling mode.
        block_fn: block class, called with the keyword arguments dim, layer_id, num_layers, hidden_rate,
            shift_pixel, channel_gamma, init_mode, key_norm, post_norm, init_values, drop_path, wkv_mode,
            wkv_formula, num_heads, device, dtype: ``Block`` (VRWKV) or ``vrwkv6.BlockV6`` (VRWKV6, which
            takes neither another wkv_mode nor a wkv_formula). Its class attribute ``wkv_formulas`` (none:
            no choice) decides whether the model has the Bi-WKV formula API and buffer.
        num_heads: VRWKV6 only: number of heads of 64 channels (None: embed_dim / 64).
        device: device of the parameters (e.g. 'meta' to build without allocating).
        dtype: dtype of the floating-point parameters.
    """

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            patch_size: int = 16,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            embed_dim: int = 192,
            depth: int = 12,
            hidden_rate: float = 4,
            channel_gamma: float = 0.25,
            shift_pixel: int = 1,
            init_mode: str = 'fancy',
            post_norm: bool = False,
            key_norm: bool = False,
            wkv_mode: str = 'raster',
            wkv_formula: Optional[str] = None,
            init_values: Optional[float] = None,
            final_norm: bool = True,
            head_hidden_size: Optional[int] = None,
            drop_rate: float = 0.,
            pos_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            dynamic_img_size: bool = False,
            dynamic_img_pad: bool = False,
            interpolate_mode: str = 'bicubic',
            block_fn: Type[nn.Module] = Block,
            num_heads: Optional[int] = None,
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if global_pool not in GLOBAL_POOLS:
            raise ValueError(f'global_pool must be one of {GLOBAL_POOLS}, got {global_pool!r}')
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.embed_dim = embed_dim
        self.num_prefix_tokens = 0
        self.dynamic_img_size = dynamic_img_size
        self.interpolate_mode = interpolate_mode
        self.grad_checkpointing = False

        self.patch_embed = PatchEmbed(
            to_2tuple(img_size), patch_size, in_chans, embed_dim,
            strict_img_size=not dynamic_img_size, dynamic_img_pad=dynamic_img_pad, **dd)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches, embed_dim, **dd))
        self.pos_drop = nn.Dropout(pos_drop_rate)

        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # linear, as torch.linspace
        self.layers = nn.ModuleList([
            block_fn(dim=embed_dim, layer_id=i, num_layers=depth, hidden_rate=hidden_rate, shift_pixel=shift_pixel,
                     channel_gamma=channel_gamma, init_mode=init_mode, key_norm=key_norm, post_norm=post_norm,
                     init_values=init_values, drop_path=dpr[i], wkv_mode=wkv_mode, wkv_formula=wkv_formula,
                     num_heads=num_heads, **dd)
            for i in range(depth)])
        self.wkv_formula_fixed = wkv_formula is not None
        # the Bi-WKV formula the weights run with (None: blocks without a choice, e.g. VRWKV6)
        formula_id = (torch.tensor(WKV_FORMULAS.index(wkv_formula or 'paper'), dtype=torch.uint8, device=device)
                      if getattr(block_fn, 'wkv_formulas', ()) else None)
        self.register_buffer('wkv_formula_id', formula_id)
        self.ln1 = nn.LayerNorm(embed_dim, **dd) if final_norm else nn.Identity()
        self.feature_info = [
            dict(module=f'layers.{i}', num_chs=embed_dim, reduction=patch_size) for i in range(depth)]

        if head_hidden_size and num_classes > 0:
            self.pre_logits = nn.Sequential(OrderedDict([
                ('fc', nn.Linear(embed_dim, head_hidden_size, **dd)), ('act', nn.Tanh())]))
            self.head_hidden_size = head_hidden_size
        else:
            self.pre_logits = nn.Identity()
            self.head_hidden_size = embed_dim
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.head_hidden_size, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.apply(_init_weights)  # runs on the meta device too (the init ops have meta kernels)

    # ---- Bi-WKV formula ----------------------------------------------------------------------
    @property
    def wkv_formula(self) -> Optional[str]:
        """'paper' (Eq. 5) or 'official' (the official CUDA kernels' arithmetic) in every block; None for blocks
        whose WKV has one definition (VRWKV6)."""
        if self.wkv_formula_id is None:
            return None
        return self.layers[0].att.wkv_formula if len(self.layers) else 'paper'

    def set_wkv_formula(self, formula: str) -> None:
        """Run every block's Bi-WKV with ``formula`` ('paper' or 'official', raster mode only); recorded in
        the ``wkv_formula_id`` buffer, so checkpoints carry it."""
        if self.wkv_formula_id is None:
            raise ValueError(f"wkv_formula={formula!r}: this model's WKV has one definition (VRWKV6: the official "
                             "kernel's); wkv_formula is an option of VRWKV (v1) models")
        for block in self.layers:
            block.att.set_wkv_formula(formula)
        if not self.wkv_formula_id.is_meta:
            self.wkv_formula_id.fill_(WKV_FORMULAS.index(formula))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Load as usual, then run the formula the checkpoint records (``wkv_formula_id``), unless
        ``wkv_formula`` was given to the constructor. Every loader (torch, timm, mmengine) calls this."""
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        key = prefix + 'wkv_formula_id'
        if self.wkv_formula_id is None or key not in state_dict or self.wkv_formula_id.is_meta:
            return
        code = int(self.wkv_formula_id)
        if code not in range(len(WKV_FORMULAS)):
            raise ValueError(f'{key} = {code} in the checkpoint names no Bi-WKV formula; expected one of '
                             f'{dict(enumerate(WKV_FORMULAS))}')
        formula = WKV_FORMULAS[code]
        if self.wkv_formula_fixed:
            if formula != self.wkv_formula:
                _logger.info('checkpoint trained with wkv_formula=%r; keeping wkv_formula=%r as given',
                             formula, self.wkv_formula)
            self.set_wkv_formula(self.wkv_formula)
            return
        try:
            self.set_wkv_formula(formula)
        except ValueError as e:
            raise ValueError(f"the checkpoint was trained with wkv_formula={formula!r}, which this model does not "
                             f"have ({e}); pass wkv_formula='paper' to load its weights with Eq. 5") from e

    # ---- timm model interface -------------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        return {'pos_embed'}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(stem=r'^pos_embed|patch_embed', blocks=[(r'^layers\.(\d+)', None), (r'^ln1', (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            if global_pool not in GLOBAL_POOLS:
                raise ValueError(f'global_pool must be one of {GLOBAL_POOLS}, got {global_pool!r}')
            self.global_pool = global_pool
        device, dtype = self.pos_embed.device, self.pos_embed.dtype
        self.head = (nn.Linear(self.head_hidden_size, num_classes, device=device, dtype=dtype)
                     if num_classes > 0 else nn.Identity()).train(self.training)

    @torch.jit.ignore
    def load_pretrained(self, checkpoint_path: str) -> None:
        """Load a pretrained checkpoint file: timm calls this for our configs (``custom_load``).

        The file is read with ``weights_only=True`` (errors name the file), then timm's own
        ``load_pretrained`` converts it with ``checkpoint_filter_fn``, adapts the patch projection
        to ``in_chans`` and drops a classifier of another ``num_classes``.
        """
        state_dict = load_checkpoint_file(checkpoint_path)
        cfg = dict(getattr(self, 'pretrained_cfg', None) or _cfg(), source='', state_dict=state_dict)
        try:
            load_pretrained(self, cfg, num_classes=self.num_classes, in_chans=self.in_chans,
                            filter_fn=checkpoint_filter_fn)
        except ValueError as e:  # a checkpoint of another format: say which file
            raise ValueError(f'checkpoint {checkpoint_path}: {e}') from None

    # ---- forward ----------------------------------------------------------------------------
    def _embed(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """Images (B, C, H, W) -> position-embedded tokens (B, N, D) and their grid."""
        x, grid = self.patch_embed(x)
        pos = resample_pos_embed(self.pos_embed, self.patch_embed.grid_size, grid, self.interpolate_mode)
        return self.pos_drop(x + pos), grid

    def _run_block(self, block: Block, x: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
            return checkpoint(block, x, grid, use_reentrant=False)
        return block(x, grid)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images -> (B, N, D) normalised tokens."""
        x, grid = self._embed(x)
        for block in self.layers:
            x = self._run_block(block, x, grid)
        return self.ln1(x)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, D) tokens -> (B, D) with ``global_pool`` (tokens unchanged for '')."""
        if self.global_pool == 'avg':
            return x.mean(dim=1)
        if self.global_pool == 'max':
            return x.amax(dim=1)
        if self.global_pool == 'avgmax':
            return 0.5 * (x.mean(dim=1) + x.amax(dim=1))
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, N, D) tokens -> (B, num_classes) logits, or pooled pre-logit features."""
        x = self.pre_logits(self.pool(x))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Block outputs as in timm's ``VisionTransformer.forward_intermediates``.

        Args:
            x: (B, C, H, W) images.
            indices: last n blocks if int, all if None, else the given block indices.
            norm: apply the final norm to every intermediate.
            stop_early: stop after the last requested block.
            output_fmt: 'NCHW' (B, D, H', W') or 'NLC' (B, N, D).
            intermediates_only: return only the intermediates.

        Returns:
            The list of intermediates, or (final normalised tokens, intermediates).
        """
        if output_fmt not in ('NCHW', 'NLC'):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.layers), indices)
        x, grid = self._embed(x)
        blocks = self.layers[:max_index + 1] if stop_early else self.layers
        intermediates = []
        for i, block in enumerate(blocks):
            x = self._run_block(block, x, grid)
            if i in take_indices:
                intermediates.append(self.ln1(x) if norm else x)
        if output_fmt == 'NCHW':
            B = x.shape[0]
            intermediates = [y.reshape(B, grid[0], grid[1], -1).permute(0, 3, 1, 2).contiguous()
                             for y in intermediates]
        if intermediates_only:
            return intermediates
        return self.ln1(x), intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the blocks after the last requested intermediate (and optionally norm and head)."""
        take_indices, max_index = feature_take_indices(len(self.layers), indices)
        self.layers = self.layers[:max_index + 1]
        if prune_norm:
            self.ln1 = nn.Identity().train(self.training)
        if prune_head:
            self.pre_logits = nn.Identity().train(self.training)
            self.head_hidden_size = self.embed_dim
            self.reset_classifier(0, '')
        return take_indices


def _init_weights(module: nn.Module) -> None:
    """Official initialisation: truncated normal (std 0.02) linears with zero bias, unit LayerNorms.

    The position embedding starts at zero and the mixing parameters keep their 'fancy' values, as in
    the official classification configs.
    """
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


# ---- checkpoints ------------------------------------------------------------------------------
_NON_BACKBONE_PREFIXES = (
    'decode_head.', 'auxiliary_head.', 'neck.', 'data_preprocessor.',
    # ViT-Adapter modules of the official segmentation / detection backbone
    'spm.', 'interactions.', 'level_embed', 'up.', 'norm1.', 'norm2.', 'norm3.', 'norm4.',
)
_STRIP_PREFIXES = ('module.', 'model.', 'backbone.')
# What follows the blocks: a checkpoint's final norm and classifier are dropped for a model without them.
_TOP_PREFIXES = ('ln1.', 'pre_logits.', 'head.')


def official_formula_id() -> torch.Tensor:
    """The ``wkv_formula_id`` of an official checkpoint, which records none: the official kernels'."""
    return torch.tensor(WKV_FORMULAS.index('official'), dtype=torch.uint8)


def _rename_head(key: str) -> str:
    """Official classifier names -> ours: mmcls 'head.fc.*', InternImage-style L 'head.0/2.*'."""
    if key.startswith('head.fc.'):
        return 'head.' + key[len('head.fc.'):]
    if key.startswith('head.0.'):
        return 'pre_logits.fc.' + key[len('head.0.'):]
    if key.startswith('head.2.'):
        return 'head.' + key[len('head.2.'):]
    return key


def resample_square_pos_embed(pos_embed: torch.Tensor, model: VRWKV) -> torch.Tensor:
    """A checkpoint's (1, S·S, C) position embedding of a square S×S grid -> ``model``'s grid."""
    side = int(round(pos_embed.shape[1] ** 0.5))
    if side * side != pos_embed.shape[1]:
        raise ValueError(f'cannot infer the grid of a position embedding with {pos_embed.shape[1]} tokens')
    return resample_pos_embed(pos_embed, (side, side), model.patch_embed.grid_size, model.interpolate_mode)


#: A key that only the Spatial Mix of each version has: VRWKV (v1) and VRWKV6.
_VERSION_MARKERS = (('VRWKV (v1)', 'vrwkv_*', '.att.spatial_decay'), ('VRWKV6', 'vrwkv6_*', '.att.time_decay'))


def _version_hint(unexpected: Sequence[str], missing: Sequence[str]) -> str:
    """' (its blocks are VRWKV6 blocks: ...)' when the checkpoint's blocks are of the other Vision-RWKV version."""
    for version, models, marker in _VERSION_MARKERS:
        if any(k.endswith(marker) for k in unexpected) and not any(k.endswith(marker) for k in missing):
            return f' (its blocks are {version} blocks: load it into a {models} model)'
    return ''


def _check_keys(state_dict: Dict[str, torch.Tensor], own: Dict[str, torch.Tensor], model: nn.Module) -> None:
    """Raise when the converted keys are not exactly the model's, naming a few of each kind."""
    unexpected = [k for k in state_dict if k not in own]
    missing = [k for k in own if k not in state_dict]
    if unexpected or missing:
        raise ValueError(
            f'checkpoint keys match neither the official Vision-RWKV formats (mmcls, InternImage-style VRWKV-L, '
            f'mmseg VRWKV_Adapter) nor this {type(model).__name__}: {len(unexpected)} unexpected keys, e.g. '
            f'{unexpected[:5]}; {len(missing)} missing keys, e.g. {missing[:5]}{_version_hint(unexpected, missing)}')


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: VRWKV) -> Dict[str, torch.Tensor]:
    """Convert an official Vision-RWKV or VRWKV6 checkpoint (or ours) to this model's state dict.

    Accepts the mmcls classification format (``state_dict`` with ``backbone.*``, ``head.fc.*``; VRWKV and VRWKV6),
    the InternImage-style format of VRWKV-L (``model`` with ``head.0/2.*``), and mmseg / mmdet
    checkpoints whose backbone is the official ``VRWKV_Adapter`` (adapter modules and decode heads
    are dropped; their missing final norm and classifier keep this model's initial values). The
    position embedding is resampled to the model's grid; the patch projection is left to timm's
    loader, which adapts it to ``in_chans`` (once). A checkpoint that records no Bi-WKV formula
    (``wkv_formula_id``: every official one) was trained with the official kernels: the model switches to
    ``wkv_formula='official'`` as it loads, unless the formula was given to its constructor (VRWKV6 models
    have no formula to choose and record none).

    Raises:
        ValueError: the checkpoint is not a state dict, or its keys are not this model's after the
            conversion (the message names a few unexpected and missing keys).
    """
    own = model.state_dict()
    out = {}
    for key, value in unwrap_state_dict(state_dict).items():
        key = _rename_head(strip_prefixes(key, _STRIP_PREFIXES))
        if not (key.startswith(_NON_BACKBONE_PREFIXES) or (key.startswith(_TOP_PREFIXES) and key not in own)):
            out[key] = value
    if out and 'wkv_formula_id' in own:
        out.setdefault('wkv_formula_id', official_formula_id())
    backbone_only = not any(k.startswith(('head.', 'ln1.')) for k in out)
    if backbone_only:
        for key in own:
            if key.startswith(_TOP_PREFIXES) and key not in out:
                _logger.info('checkpoint has no %s (backbone-only checkpoint); keeping the initial value', key)
                out[key] = own[key]
    _check_keys(out, own, model)
    if out['pos_embed'].shape != own['pos_embed'].shape:
        out['pos_embed'] = resample_square_pos_embed(out['pos_embed'], model)
    return out


# ---- registration -----------------------------------------------------------------------------
def _create_vrwkv(variant: str, pretrained: bool = False, **kwargs) -> VRWKV:
    out_indices = kwargs.pop('out_indices', 3)
    overlay = kwargs.pop('pretrained_cfg_overlay', None) or {}
    if overlay.get('file'):
        # a weights file loads through VRWKV.load_pretrained too (timm resets custom_load when given a file)
        overlay = {'custom_load': True, **overlay}
    return build_model_with_cfg(
        VRWKV, variant, pretrained,
        pretrained_cfg_overlay=overlay,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
        **kwargs,
    )


def _cfg(hf_hub_filename: str = '', **kwargs) -> Dict[str, Any]:
    return {
        'hf_hub_id': 'OpenGVLab/Vision-RWKV' if hf_hub_filename else None,
        'hf_hub_filename': hf_hub_filename or None,
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': None,
        'crop_pct': 0.875, 'interpolation': 'bicubic', 'fixed_input_size': True,
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'patch_embed.projection', 'classifier': 'head',
        'license': 'apache-2.0', 'paper_ids': 'arXiv:2403.02308',
        'origin_url': 'https://github.com/OpenGVLab/Vision-RWKV',
        # Hugging Face downloads (and, with _create_vrwkv, weights files) load through VRWKV.load_pretrained
        'custom_load': 'hf',
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    'vrwkv_tiny_patch16_224.in1k': _cfg('vrwkv_t_in1k_224.pth'),
    'vrwkv_small_patch16_224.in1k': _cfg('vrwkv_s_in1k_224.pth'),
    'vrwkv_base_patch16_224.in1k': _cfg('vrwkv_b_in1k_224.pth'),
    'vrwkv_large_patch16_224': _cfg(),
    'vrwkv_large_patch16_192.in22k': _cfg('vrwkv_l_in22k_192.pth', num_classes=21841, input_size=(3, 192, 192)),
    'vrwkv_large_patch16_384.in22k_ft_in1k': _cfg('vrwkv_l_22kto1k_384.pth', input_size=(3, 384, 384)),
    **{f'vrwkv{mode}_{size}_patch16_224': _cfg() for mode in ('cross', '2d') for size in ('tiny', 'small', 'base')},
})

# Official architectures (classification configs of OpenGVLab/Vision-RWKV). Regularisation is a
# training choice, as everywhere in timm: the official recipes use drop_path_rate 0 (T), 0.3 (S),
# 0.5 (B) and 0.1 (L fine-tuning); pass it to timm.create_model.
_TINY = dict(patch_size=16, embed_dim=192, depth=12)
_SMALL = dict(patch_size=16, embed_dim=384, depth=12, post_norm=True, init_values=1.0)
_BASE = dict(patch_size=16, embed_dim=768, depth=12, post_norm=True, init_values=1e-5)
_LARGE = dict(patch_size=16, embed_dim=1024, depth=24, post_norm=True, init_values=1e-5, key_norm=True,
              head_hidden_size=3072)


@register_model
def vrwkv_tiny_patch16_224(pretrained: bool = False, **kwargs) -> VRWKV:
    """VRWKV-T/16, 6.2M parameters, 75.1 top-1 on ImageNet-1K (official)."""
    return _create_vrwkv('vrwkv_tiny_patch16_224', pretrained, **dict(_TINY, **kwargs))


@register_model
def vrwkv_small_patch16_224(pretrained: bool = False, **kwargs) -> VRWKV:
    """VRWKV-S/16, 23.8M parameters, 80.1 top-1 on ImageNet-1K (official)."""
    return _create_vrwkv('vrwkv_small_patch16_224', pretrained, **dict(_SMALL, **kwargs))


@register_model
def vrwkv_base_patch16_224(pretrained: bool = False, **kwargs) -> VRWKV:
    """VRWKV-B/16, 93.7M parameters, 82.0 top-1 on ImageNet-1K (official)."""
    return _create_vrwkv('vrwkv_base_patch16_224', pretrained, **dict(_BASE, **kwargs))


@register_model
def vrwkv_large_patch16_224(pretrained: bool = False, **kwargs) -> VRWKV:
    """VRWKV-L/16 at 224 (no official weights at this size)."""
    return _create_vrwkv('vrwkv_large_patch16_224', pretrained, **dict(_LARGE, **kwargs))


@register_model
def vrwkv_large_patch16_192(pretrained: bool = False, **kwargs) -> VRWKV:
    """VRWKV-L/16 at 192, ImageNet-22K pre-training (official)."""
    return _create_vrwkv('vrwkv_large_patch16_192', pretrained, **dict(dict(_LARGE, img_size=192), **kwargs))


@register_model
def vrwkv_large_patch16_384(pretrained: bool = False, **kwargs) -> VRWKV:
    """VRWKV-L/16 at 384, 334.9M parameters, 86.0 top-1 after ImageNet-22K pre-training (official)."""
    return _create_vrwkv('vrwkv_large_patch16_384', pretrained, **dict(dict(_LARGE, img_size=384), **kwargs))


def _register_grid_mode(mode: str, size: str, arch: Dict[str, Any]) -> None:
    """Register ``vrwkv{mode}_{size}_patch16_224``: the official architecture with another wkv_mode."""
    name = f'vrwkv{mode}_{size}_patch16_224'

    def create(pretrained: bool = False, **kwargs) -> VRWKV:
        return _create_vrwkv(name, pretrained, **dict(arch, wkv_mode=mode, **kwargs))

    create.__name__ = name
    create.__doc__ = (f'VRWKV-{size[0].upper()}/16 with wkv_mode={mode!r} (no official weights; official raster '
                      "checkpoints load into it with wkv_formula='paper').")
    create.__module__ = __name__
    globals()[name] = register_model(create)


for _mode in ('cross', '2d'):
    for _size, _arch in (('tiny', _TINY), ('small', _SMALL), ('base', _BASE)):
        _register_grid_mode(_mode, _size, _arch)
