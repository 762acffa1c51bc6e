"""Build RWKV-SAM variants: ``rwkv_sam_model_registry[name](checkpoint=None)`` as segment-anything."""
from functools import partial
from typing import Any, Dict, Mapping, Optional

import torch

from ..errors import CheckpointError
from ..checkpoint import load_checkpoint_file, unwrap_state_dict
from .modeling.image_encoder import ENCODER_CONFIGS, RWKVSamImageEncoder
from .modeling.mask_decoder import MultiScaleMaskDecoder
from .modeling.prompt_encoder import PromptEncoder
from .modeling.sam import RWKVSam
from .modeling.transformer import TwoWayTransformer
from .modeling.vit_encoder import ViTSamImageEncoder

__all__ = ['build_rwkv_sam', 'build_rwkv_sam_from_cfg', 'describe_encoder', 'load_rwkv_sam_checkpoint',
           'rwkv_sam_model_registry']

PROMPT_EMBED_DIM = 256
EMBEDDING_STRIDE = 16
VIT_VARIANT = 'vit'


def build_rwkv_sam(variant: str = 'small', checkpoint: Optional[str] = None, img_size: int = 1024,
                   wkv_mode: str = 'raster', fusion: str = 'mix', **encoder_kwargs: Any) -> RWKVSam:
    """An RWKV-SAM in eval mode.

    Args:
        variant: 'tiny', 'small' or 'base' (see ``ENCODER_CONFIGS``), or 'tiny_v6', 'small_v6', 'base_v6': the
            same encoders with VRWKV6 blocks in the token stage; or 'vit', the baseline of the equal-budget
            comparison: segment-anything's ``ImageEncoderViT`` (``ViTSamImageEncoder``; ``encoder_kwargs`` are its
            arguments, ``wkv_mode`` is unused).
        checkpoint: weights file (``weights_only=True``): a state dict, or a ``tools/train.py``
            checkpoint.
        img_size: input side (multiple of 16); the embedding is img_size / 16 square and the
            low-resolution masks are 4× that (256² at the default 1024).
        wkv_mode: Bi-WKV scan of the RWKV blocks ('raster', 'cross' or '2d'; VRWKV6 blocks: 'raster').
        fusion: the mask decoder's multiscale fusion: 'mix' (upstream RWKV-SAM), 'add' (image-only, once per
            image) or 'none' (segment-anything's decoder); see ``MultiScaleMaskDecoder``.
        **encoder_kwargs: overrides of the variant's encoder arguments (e.g. ``depth``, ``block``).
    """
    if variant not in ENCODER_CONFIGS and variant != VIT_VARIANT:
        raise ValueError(f'unknown RWKV-SAM variant {variant!r}; known: {sorted(ENCODER_CONFIGS) + [VIT_VARIANT]}')
    if img_size % EMBEDDING_STRIDE:
        raise ValueError(f'img_size must be a multiple of {EMBEDDING_STRIDE}, got {img_size}')
    if variant == VIT_VARIANT:
        encoder = ViTSamImageEncoder(img_size=img_size, out_chans=PROMPT_EMBED_DIM, pyramid=fusion != 'none',
                                     **encoder_kwargs)
        widths = encoder.widths
    else:
        arch = dict(ENCODER_CONFIGS[variant], **encoder_kwargs)
        encoder = RWKVSamImageEncoder(img_size=img_size, out_chans=PROMPT_EMBED_DIM, wkv_mode=wkv_mode, **arch)
        widths = arch['widths']
    grid = img_size // EMBEDDING_STRIDE
    model = RWKVSam(
        image_encoder=encoder,
        prompt_encoder=PromptEncoder(embed_dim=PROMPT_EMBED_DIM, image_embedding_size=(grid, grid),
                                     input_image_size=(img_size, img_size), mask_in_chans=16),
        mask_decoder=MultiScaleMaskDecoder(
            transformer_dim=PROMPT_EMBED_DIM,
            transformer=TwoWayTransformer(depth=2, embedding_dim=PROMPT_EMBED_DIM, num_heads=8, mlp_dim=2048),
            num_multimask_outputs=3, iou_head_depth=3, iou_head_hidden_dim=256,
            stride4_chans=widths[0], stride8_chans=widths[1], fusion=fusion),
    )
    if checkpoint is not None:
        load_rwkv_sam_checkpoint(model, checkpoint)
    return model.eval()


def build_rwkv_sam_from_cfg(model: Mapping[str, Any], checkpoint: Optional[str] = None, img_size: Optional[int] = None,
                            **encoder_kwargs: Any) -> RWKVSam:
    """The RWKV-SAM a ``tools/train.py`` config's ``model`` (an ``RWKVSamTrainer`` dict) describes: its ``variant``,
    ``img_size``, ``wkv_mode``, ``fusion`` and ``encoder`` overrides, with the trainer's defaults; ``img_size`` and
    ``encoder_kwargs`` (``wkv_mode`` and ``fusion`` among them) override the config's."""
    wkv_mode = encoder_kwargs.pop('wkv_mode', model.get('wkv_mode', 'raster'))
    fusion = encoder_kwargs.pop('fusion', model.get('fusion', 'mix'))
    return build_rwkv_sam(model.get('variant', 'tiny'), checkpoint, img_size or model.get('img_size', 1024), wkv_mode,
                          fusion, **dict(model.get('encoder') or {}, **encoder_kwargs))


def _model_state(checkpoint: Any, path: str) -> Dict[str, torch.Tensor]:
    """The model's state dict inside a checkpoint: plain, wrapped (``unwrap_state_dict``), or with the
    ``model.`` or ``sam.`` prefix on every key (``tools/train.py`` checkpoints of ``RWKVSamTrainer``)."""
    state = unwrap_state_dict(checkpoint, source=path)
    for prefix in ('model.', 'sam.'):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def describe_encoder(state: Mapping[str, torch.Tensor]) -> str:
    """The image encoder an RWKV-SAM state dict holds, in words: its variant (from its width and block type) and
    its depth, e.g. "'tiny' (4 VRWKV blocks of dim 192)"."""
    if any(k.startswith('image_encoder.vit.') for k in state):
        return "'vit' (segment-anything's ImageEncoderViT)"
    conv = state.get('image_encoder.downsample.conv.weight')
    if conv is None:
        return 'no RWKV-SAM image encoder'
    dim, v6 = conv.shape[0], any(k.endswith('.att.time_maa_x') for k in state)
    depth = len({k.split('.')[2] for k in state if k.startswith('image_encoder.blocks.')})
    names = [n for n, c in ENCODER_CONFIGS.items() if c['dim'] == dim and (c.get('block') == 'v6') == v6]
    kind = 'VRWKV6' if v6 else 'VRWKV'
    return f"{repr(names[0]) if names else 'an unknown variant'} ({depth} {kind} blocks of dim {dim})"


def load_rwkv_sam_checkpoint(model: RWKVSam, path: str) -> None:
    """Load all weights of ``path`` into ``model`` (strict; a clear error names what does not match: both encoders
    when they differ)."""
    state = _model_state(load_checkpoint_file(path), path)
    held, wanted = describe_encoder(state), describe_encoder(model.state_dict())
    if held != wanted:
        raise CheckpointError(f'{path} holds an RWKV-SAM with image encoder {held}, but this model\'s is {wanted}: '
                              'build the variant (and depth) the checkpoint was trained with')
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # same keys, other shapes (img_size, widths, fusion)
        raise CheckpointError(f'{path} does not fit this RWKV-SAM: {str(error).splitlines()[-1].strip()}; '
                              'wrong img_size or decoder fusion?') from None
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(f'{path} does not fit this RWKV-SAM: {len(result.missing_keys)} missing keys '
                              f'(e.g. {result.missing_keys[:3]}), {len(result.unexpected_keys)} unexpected '
                              f'(e.g. {result.unexpected_keys[:3]}); wrong variant, img_size or decoder fusion?')


rwkv_sam_model_registry = {
    'default': partial(build_rwkv_sam, 'small'),
    'tiny': partial(build_rwkv_sam, 'tiny'),
    'small': partial(build_rwkv_sam, 'small'),
    'base': partial(build_rwkv_sam, 'base'),
    # the same architectures with VRWKV6 blocks in the encoder's token stage
    'tiny_v6': partial(build_rwkv_sam, 'tiny_v6'),
    'small_v6': partial(build_rwkv_sam, 'small_v6'),
    'base_v6': partial(build_rwkv_sam, 'base_v6'),
}
