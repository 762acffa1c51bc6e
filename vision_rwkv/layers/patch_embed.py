"""Patch embedding and absolute position embedding resampling."""
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import register_notrace_function, register_notrace_module

from vision_rwkv.kernels.bi_wkv_export import check_exporter, onnx_exporting


@register_notrace_module  # one torch.fx node: its input checks and padding are Python control flow on shapes
class PatchEmbed(nn.Module):
    """Non-overlapping conv patch embedding (official parameter name ``projection``).

    Args:
        img_size: nominal (H, W) input size; sets ``grid_size``.
        patch_size: patch side.
        in_chans: input channels.
        embed_dim: output channels.
        strict_img_size: require inputs of exactly ``img_size``.
        dynamic_img_pad: pad inputs bottom/right to a multiple of the patch size (as the official
            ``AdaptivePadding``); otherwise such inputs are an error.
        device, dtype: factory arguments of the projection.
    """

    def __init__(
            self,
            img_size: Tuple[int, int],
            patch_size: int,
            in_chans: int,
            embed_dim: int,
            strict_img_size: bool = True,
            dynamic_img_pad: bool = False,
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
    ):
        super().__init__()
        self.img_size = tuple(img_size)
        self.patch_size = (patch_size, patch_size)
        self.grid_size = (self.img_size[0] // patch_size, self.img_size[1] // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.strict_img_size = strict_img_size
        self.dynamic_img_pad = dynamic_img_pad
        self.projection = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size,
                                    device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """x: (B, in_chans, H, W) -> tokens (B, N, embed_dim) in row-major order and grid (H', W')."""
        if x.dim() != 4 or x.shape[1] != self.projection.in_channels:
            raise ValueError(
                f'expected images of shape (B, {self.projection.in_channels}, H, W), got {tuple(x.shape)}')
        if onnx_exporting():
            check_exporter('VRWKV')  # before any layer the TorchScript tracer fails on with an obscure error
        H, W = x.shape[-2:]
        p = self.patch_size[0]
        if self.strict_img_size and (H, W) != self.img_size:
            raise ValueError(
                f'input size ({H}, {W}) does not match the model ({self.img_size[0]}, {self.img_size[1]}); '
                'create the model with img_size=... or dynamic_img_size=True')
        if H % p or W % p:
            if not self.dynamic_img_pad:
                raise ValueError(
                    f'input size ({H}, {W}) is not divisible by the patch size {p}; '
                    'resize the input or create the model with dynamic_img_pad=True')
            x = F.pad(x, (0, -W % p, 0, -H % p))
        x = self.projection(x)
        grid = (x.shape[-2], x.shape[-1])
        return x.flatten(2).transpose(1, 2), grid


@register_notrace_function  # one torch.fx node: it compares grid sizes in Python
def resample_pos_embed(
        pos_embed: torch.Tensor,
        old_grid: Tuple[int, int],
        new_grid: Tuple[int, int],
        mode: str = 'bicubic',
) -> torch.Tensor:
    """Resample a (1, H*W, C) absolute position embedding to another grid.

    Interpolates as the official code (``F.interpolate``, align_corners=False, no antialiasing). While
    exporting it always interpolates (the identity at the same size), so the graph holds for every size.
    """
    if not torch.compiler.is_exporting() and tuple(old_grid) == tuple(new_grid):
        return pos_embed
    C = pos_embed.shape[-1]
    grid = pos_embed.reshape(1, old_grid[0], old_grid[1], C).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=tuple(new_grid), mode=mode, align_corners=False)
    return grid.to(pos_embed.dtype).permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], C)
