"""RWKV-SAM image encoder: a convolutional ViTamin-style stem and stages, VRWKV blocks, SAM's neck.

Layout (strides relative to the input):
- ``stem``: conv 3×3 stride 2, LayerNorm2d, GELU, conv 3×3 (stride 2 in all);
- ``stage1`` / ``stage2``: MBConv blocks, the first of each with stride 2 (strides 4 and 8);
- ``downsample``: LayerNorm2d + conv 3×3 stride 2 to the token width (stride 16);
- ``blocks``: VRWKV blocks (``vision_rwkv.models.vrwkv.Block``, as the paper) or VRWKV6 blocks
  (``vision_rwkv.models.vrwkv6.BlockV6``: ``block='v6'``, the ``*_v6`` variants) on the H/16 × W/16 tokens,
  no absolute position embedding, then the LayerNorm ``norm``;
- ``neck``: segment-anything's neck (1×1 conv, LayerNorm2d, 3×3 conv, LayerNorm2d) to 256 channels.

The encoder returns the stride-16 embedding together with the stride-4 and stride-8 maps, which the
RWKV-SAM mask decoder fuses into its upscaled features.

Paper: "Mamba or RWKV: Exploring High-Quality and High-Efficiency Segment Anything Model",
https://arxiv.org/abs/2406.19369
"""
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from timm.layers import DropPath, trunc_normal_

from vision_rwkv.models.vrwkv import Block
from vision_rwkv.models.vrwkv6 import BlockV6

from .common import LayerNorm2d

__all__ = ['BLOCKS', 'ENCODER_CONFIGS', 'ImageFeatures', 'MBConv', 'RWKVSamImageEncoder', 'build_image_encoder']

PATCH_STRIDE = 16

#: Token-stage blocks: VRWKV (v1, the paper's) and VRWKV6 (heads of 64 channels, dim / 64 heads).
BLOCKS = {'v1': Block, 'v6': BlockV6}

# Architectures of the paper; the MLP rate (2), layer scale (1e-2) and neck width (256) are shared.
_PAPER_CONFIGS: Dict[str, Dict[str, Any]] = {
    'tiny': dict(stem_width=32, widths=(32, 64), depths=(2, 4), dim=192, depth=14),
    'small': dict(stem_width=64, widths=(64, 128), depths=(2, 4), dim=384, depth=14),
    'base': dict(stem_width=128, widths=(128, 256), depths=(2, 4), dim=768, depth=14),
}
# The paper's variants, and the same architectures with VRWKV6 blocks in the token stage ('tiny_v6', ...).
ENCODER_CONFIGS: Dict[str, Dict[str, Any]] = {
    **_PAPER_CONFIGS,
    **{f'{name}_v6': dict(arch, block='v6') for name, arch in _PAPER_CONFIGS.items()},
}


class ImageFeatures(torch.Tensor):
    """The encoder's output for (B, 3, H, W) images: the embedding, carrying the multiscale maps.

    The tensor itself is the (B, out_chans, H/16, W/16) neck output (SAM's image embedding), so that
    segment-anything's ``SamPredictor.get_image_embedding()`` returns the tensor its callers expect; the maps
    ride along as attributes and reach the mask decoder through segment-anything's own ``predict``:

    stride4: (B, widths[0], H/4, W/4) output of the first convolutional stage.
    stride8: (B, widths[1], H/8, W/8) output of the second convolutional stage.
    (Both None from a ``ViTSamImageEncoder`` built without its pyramid.)
    embedding: the embedding as a plain tensor (the same data, attached to autograd).
    fusion: None, or the mask decoder's image-only fusion of the two maps, computed once by
        ``MultiScaleMaskDecoder.fuse_image`` for every later prompt on these features.

    Operations on it return plain tensors (its ``__torch_function__`` is disabled, as ``nn.Parameter``'s), so the
    maps never travel with a derived tensor by mistake; ``ImageFeatures(embedding, stride4, stride8)`` builds one.
    """
    stride4: Optional[torch.Tensor]
    stride8: Optional[torch.Tensor]
    fusion: Optional[torch.Tensor]

    __torch_function__ = torch._C._disabled_torch_function_impl

    @staticmethod
    def __new__(cls, embedding: torch.Tensor, stride4: Optional[torch.Tensor], stride8: Optional[torch.Tensor],
                fusion: Optional[torch.Tensor] = None) -> 'ImageFeatures':
        features = embedding.as_subclass(cls)
        features.stride4, features.stride8, features.fusion = stride4, stride8, fusion
        return features

    @property
    def embedding(self) -> torch.Tensor:
        return self.as_subclass(torch.Tensor)

    def maps(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(embedding, stride4, stride8) as plain tensors."""
        return self.embedding, self.stride4, self.stride8

    def select(self, index: int) -> 'ImageFeatures':
        """The features of image ``index`` of the batch, keeping a batch dimension of 1 (and the fusion, if any)."""
        rows = slice(index, index + 1)
        return ImageFeatures(*(None if t is None else t[rows] for t in (*self.maps(), self.fusion)))


class Stem(nn.Module):
    """Conv 3×3 stride 2, LayerNorm2d, GELU, conv 3×3: (B, C_in, H, W) -> (B, width, H/2, W/2)."""

    def __init__(self, in_chans: int, width: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, width, 3, 2, 1)
        self.norm = LayerNorm2d(width)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.act(self.norm(self.conv1(x))))


class Shortcut(nn.Module):
    """Residual path of an MBConv block: 2×2 average pool when striding, 1×1 conv when widening.

    (B, C_in, H, W) -> (B, C_out, ceil(H/s), ceil(W/s)); the pool uses ``ceil_mode`` so that odd
    sides match the stride-2 depth-wise conv of the main path.
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int):
        super().__init__()
        self.pool = (nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False) if stride == 2
                     else nn.Identity())
        self.proj = nn.Conv2d(in_chs, out_chs, 1) if in_chs != out_chs else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.pool(x))


class MBConv(nn.Module):
    """Pre-norm inverted residual block: x' = shortcut(x) + drop_path(project(dw(expand(norm(x))))).

    Main path: LayerNorm2d, 1×1 conv to ``expand_ratio`` × ``out_chs``, GELU, depth-wise 3×3 conv
    with ``stride``, GELU, 1×1 conv to ``out_chs``.

    (B, in_chs, H, W) -> (B, out_chs, ceil(H/stride), ceil(W/stride)).
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, expand_ratio: float = 4.,
                 drop_path: float = 0.):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f'MBConv stride must be 1 or 2, got {stride}')
        mid_chs = int(out_chs * expand_ratio)
        self.norm = LayerNorm2d(in_chs)
        self.expand = nn.Conv2d(in_chs, mid_chs, 1)
        self.act1 = nn.GELU()
        self.dwconv = nn.Conv2d(mid_chs, mid_chs, 3, stride, 1, groups=mid_chs)
        self.act2 = nn.GELU()
        self.project = nn.Conv2d(mid_chs, out_chs, 1)
        self.shortcut = Shortcut(in_chs, out_chs, stride)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.expand(self.norm(x)))
        y = self.project(self.act2(self.dwconv(y)))
        return self.shortcut(x) + self.drop_path(y)


class Downsample(nn.Module):
    """LayerNorm2d + conv 3×3 stride 2: (B, C_in, H, W) -> (B, C_out, H/2, W/2)."""

    def __init__(self, in_chs: int, out_chs: int):
        super().__init__()
        self.norm = LayerNorm2d(in_chs)
        self.conv = nn.Conv2d(in_chs, out_chs, 3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.norm(x))


class RWKVSamImageEncoder(nn.Module):
    """Hybrid MBConv / VRWKV image encoder of RWKV-SAM.

    (B, in_chans, H, W) images, H and W multiples of 16 -> ``ImageFeatures`` with
    embedding (B, out_chans, H/16, W/16), stride4 (B, widths[0], H/4, W/4) and
    stride8 (B, widths[1], H/8, W/8); a 1024 × 1024 input gives a 64 × 64 embedding.

    Args:
        img_size: side of the square input that segment-anything's predictor resizes and pads to
            (read as ``image_encoder.img_size``). The encoder has no position embedding, so it
            accepts any size whose sides are multiples of 16.
        in_chans: input channels.
        stem_width: width of the stride-2 stem.
        widths: widths of the stride-4 and stride-8 MBConv stages.
        depths: MBConv blocks per stage (at least 1: the first block of a stage strides).
        dim: width of the VRWKV blocks.
        depth: number of VRWKV blocks.
        mlp_ratio: Channel Mix hidden width as a multiple of ``dim``.
        out_chans: neck output channels.
        wkv_mode: 'raster', 'cross' or '2d' (see ``vision_rwkv.layers.SpatialMix``); VRWKV6 blocks scan in
            'raster' order only.
        block: 'v1' (VRWKV blocks, the paper's) or 'v6' (VRWKV6 blocks: ``dim`` / 64 heads of 64 channels).
        drop_path_rate: stochastic depth, rising linearly from 0 over the MBConv and VRWKV blocks
            together.
        layer_scale_init: initial value of the VRWKV layer scales.

    Initialisation: linears truncated normal (std 0.02) with zero biases, as ``VRWKV``; convs
    normal with std sqrt(2 / fan_out) (He, fan-out mode, counting groups) and zero biases; norms
    unit scale and zero shift; the VRWKV mixing parameters keep their 'fancy' values.
    """

    def __init__(
            self,
            img_size: int = 1024,
            in_chans: int = 3,
            stem_width: int = 64,
            widths: Sequence[int] = (64, 128),
            depths: Sequence[int] = (2, 4),
            dim: int = 384,
            depth: int = 14,
            mlp_ratio: float = 2.,
            out_chans: int = 256,
            wkv_mode: str = 'raster',
            drop_path_rate: float = 0.,
            layer_scale_init: float = 1e-2,
            block: str = 'v1',
    ):
        super().__init__()
        if block not in BLOCKS:
            raise ValueError(f'block must be one of {sorted(BLOCKS)} (VRWKV or VRWKV6 blocks), got {block!r}')
        if len(widths) != 2 or len(depths) != 2:
            raise ValueError(f'widths and depths need one entry per MBConv stage (2), got {widths} and {depths}')
        if min(depths) < 1:
            raise ValueError(f'every MBConv stage needs at least one block, got depths {depths}')
        self.img_size = img_size
        self.in_chans = in_chans
        self.embed_dim = dim
        self.out_chans = out_chans
        self.grad_checkpointing = False

        num_conv = sum(depths)
        total = num_conv + depth
        dpr = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]

        self.stem = Stem(in_chans, stem_width)
        self.stage1 = self._stage(stem_width, widths[0], depths[0], dpr[:depths[0]])
        self.stage2 = self._stage(widths[0], widths[1], depths[1], dpr[depths[0]:num_conv])
        self.downsample = Downsample(widths[1], dim)
        self.blocks = nn.ModuleList([
            BLOCKS[block](dim=dim, layer_id=i, num_layers=depth, hidden_rate=mlp_ratio, init_values=layer_scale_init,
                          drop_path=dpr[num_conv + i], wkv_mode=wkv_mode)
            for i in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.neck = nn.Sequential(
            nn.Conv2d(dim, out_chans, 1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, 3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )
        self.apply(_init_weights)

    @staticmethod
    def _stage(in_chs: int, out_chs: int, num_blocks: int, drop_paths: List[float]) -> nn.Sequential:
        """``num_blocks`` MBConv blocks at width ``out_chs``; the first strides by 2."""
        return nn.Sequential(*[
            MBConv(in_chs if i == 0 else out_chs, out_chs, 2 if i == 0 else 1, drop_path=drop_paths[i])
            for i in range(num_blocks)])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each MBConv and VRWKV block in the backward pass instead of storing its activations."""
        self.grad_checkpointing = enable

    def _run(self, block: nn.Module, *args: Any) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4:
            raise ValueError(f'expected images of shape (B, C, H, W), got {tuple(x.shape)}')
        if x.shape[1] != self.in_chans:
            raise ValueError(f'expected {self.in_chans} input channels, got {x.shape[1]} (shape {tuple(x.shape)})')
        H, W = x.shape[-2:]
        if H % PATCH_STRIDE or W % PATCH_STRIDE or H == 0 or W == 0:
            raise ValueError(f'image sides must be positive multiples of {PATCH_STRIDE}, got {H}x{W}')

    def forward_tokens(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """(B, dim, h, w) stride-16 map -> normalised VRWKV tokens (B, h·w, dim) and their grid (h, w)."""
        grid = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)
        for block in self.blocks:
            x = self._run(block, x, grid)
        return self.norm(x), grid

    def forward(self, x: torch.Tensor) -> ImageFeatures:
        """(B, in_chans, H, W) images -> ``ImageFeatures`` (the embedding with its stride-4 and stride-8 maps)."""
        return ImageFeatures(*self.forward_maps(x))

    def forward_maps(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, in_chans, H, W) images -> plain (embedding, stride4, stride8) tensors; see the class docstring
        (``torch.export`` and the ONNX export trace this)."""
        self._check_input(x)
        x = self.stem(x)
        for block in self.stage1:
            x = self._run(block, x)
        stride4 = x
        for block in self.stage2:
            x = self._run(block, x)
        stride8 = x
        tokens, (h, w) = self.forward_tokens(self.downsample(x))
        x = tokens.transpose(1, 2).reshape(tokens.shape[0], self.embed_dim, h, w)
        return self.neck(x), stride4, stride8


def _init_weights(module: nn.Module) -> None:
    """Truncated normal linears, fan-out normal convs, zero biases (see ``RWKVSamImageEncoder``)."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, std=(2.0 / fan_out) ** 0.5)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def build_image_encoder(variant: str = 'small', **kwargs: Any) -> RWKVSamImageEncoder:
    """``RWKVSamImageEncoder`` of an ``ENCODER_CONFIGS`` variant ('tiny', 'small', 'base', or 'tiny_v6', 'small_v6',
    'base_v6' with VRWKV6 blocks); kwargs override."""
    if variant not in ENCODER_CONFIGS:
        raise ValueError(f'unknown RWKV-SAM encoder variant {variant!r}; choose from {sorted(ENCODER_CONFIGS)}')
    return RWKVSamImageEncoder(**dict(ENCODER_CONFIGS[variant], **kwargs))
