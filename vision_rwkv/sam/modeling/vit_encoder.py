"""A plain ViT image encoder for RWKV-SAM's decoders: the baseline of the equal-budget comparison.

``ViTSamImageEncoder`` runs segment-anything's own ``ImageEncoderViT`` (patch embedding, absolute and relative
position embeddings, global attention blocks, the 256-channel neck) and returns the same ``ImageFeatures`` as
``RWKVSamImageEncoder``. A ViT has no stride-4 or stride-8 stage, so for the multiscale decoder the maps come from
its last block, upsampled as in ViTDet's simple feature pyramid (Li et al. 2022): a 2×2 transposed convolution to
stride 8, and two (LayerNorm2d and GELU between them) to stride 4. The embedding is exactly ``ImageEncoderViT``'s
output. segment-anything is imported when the encoder is built (the ``sam`` extra).

Default size: 4 blocks of width 192 with 3 heads of 64 (SAM ViT-B's head width) and an MLP ratio of 2.5, so that a
block has 9·192² weights as a VRWKV block of hidden rate 4 has. At a 128 input the encoder has 2.28 M parameters
with the pyramid and 2.14 M without (for segment-anything's single-scale decoder, ``pyramid=False``); the toy
RWKV-SAM encoder (4 blocks) has 2.26 M.
"""
from functools import partial
from typing import Sequence

import torch
import torch.nn as nn

from .common import LayerNorm2d
from .image_encoder import ImageFeatures

__all__ = ['ViTSamImageEncoder']


class ViTSamImageEncoder(nn.Module):
    """(B, 3, S, S) normalised, padded images -> ``ImageFeatures`` from segment-anything's ``ImageEncoderViT``.

    Args:
        img_size: input side S (multiple of 16); the embedding is S/16 square.
        embed_dim, depth, num_heads, mlp_ratio: the ViT's width, blocks, heads and MLP ratio.
        out_chans: channels of the embedding (the neck's output).
        widths: channels of the stride-4 and stride-8 maps (the RWKV encoder's ``widths``).
        pyramid: build the stride-4 and stride-8 maps; without it they are None (only a decoder with
            ``fusion='none'`` can read the features).
    """

    def __init__(self, img_size: int = 1024, embed_dim: int = 192, depth: int = 4, num_heads: int = 3,
                 mlp_ratio: float = 2.5, out_chans: int = 256, widths: Sequence[int] = (32, 64), pyramid: bool = True):
        super().__init__()
        from segment_anything.modeling import ImageEncoderViT

        self.img_size = img_size
        self.vit = ImageEncoderViT(img_size=img_size, patch_size=16, embed_dim=embed_dim, depth=depth,
                                   num_heads=num_heads, mlp_ratio=mlp_ratio, out_chans=out_chans, qkv_bias=True,
                                   norm_layer=partial(nn.LayerNorm, eps=1e-6), use_rel_pos=True,
                                   window_size=0)  # window_size 0: global attention in every block
        self.widths = tuple(widths)
        self.pyramid = pyramid
        if pyramid:
            self._build_pyramid(embed_dim, widths)

    def _build_pyramid(self, embed_dim: int, widths: Sequence[int]) -> None:
        self.to_stride8 = nn.ConvTranspose2d(embed_dim, widths[1], kernel_size=2, stride=2)
        self.to_stride4 = nn.Sequential(
            nn.ConvTranspose2d(embed_dim, embed_dim // 2, kernel_size=2, stride=2),
            LayerNorm2d(embed_dim // 2),
            nn.GELU(),
            nn.ConvTranspose2d(embed_dim // 2, widths[0], kernel_size=2, stride=2),
        )

    def forward(self, x: torch.Tensor) -> ImageFeatures:
        """(B, 3, S, S) -> the (B, out_chans, S/16, S/16) embedding with (B, widths[0], S/4, S/4) and
        (B, widths[1], S/8, S/8) maps, or None without the pyramid (``ImageEncoderViT.forward``'s steps, keeping the
        last block's tokens)."""
        if x.dim() != 4 or x.shape[1] != 3 or tuple(x.shape[-2:]) != (self.img_size, self.img_size):
            raise ValueError(f'ViTSamImageEncoder takes (B, 3, {self.img_size}, {self.img_size}) images, '
                             f'got {tuple(x.shape)}')
        vit = self.vit
        tokens = vit.patch_embed(x)
        if vit.pos_embed is not None:
            tokens = tokens + vit.pos_embed
        for block in vit.blocks:
            tokens = block(tokens)
        last = tokens.permute(0, 3, 1, 2)
        if not self.pyramid:
            return ImageFeatures(vit.neck(last), None, None)
        return ImageFeatures(vit.neck(last), self.to_stride4(last), self.to_stride8(last))
