"""Q-Shift: token shift over the 2D patch grid of Vision-RWKV."""
from typing import Tuple

import torch


def q_shift(x: torch.Tensor, grid: Tuple[int, int], shift_pixel: int = 1, gamma: float = 0.25) -> torch.Tensor:
    """Shift four channel groups by ``shift_pixel`` from the left, right, top and bottom neighbour.

    Channel group g = int(C * gamma): channels [0, g) take the value of the patch to the left,
    [g, 2g) the patch to the right, [2g, 3g) the patch above, [3g, 4g) the patch below (zeros at
    the border); the remaining channels pass through unchanged.

    Args:
        x: (B, N, C) tokens in row-major grid order, N = H * W.
        grid: (H, W) patch grid.
        shift_pixel: shift distance in patches.
        gamma: fraction of channels per direction (at most 1/4).

    Returns:
        (B, N, C) shifted tokens.
    """
    if gamma > 0.25:
        raise ValueError(f'q_shift: gamma must be at most 1/4, got {gamma}')
    B, N, C = x.shape
    H, W = grid
    if H * W != N:
        raise ValueError(f'q_shift: grid {H}x{W} does not match {N} tokens')
    s = shift_pixel
    g = int(C * gamma)
    x = x.view(B, H, W, C)
    out = torch.zeros_like(x)
    out[:, :, s:, 0:g] = x[:, :, :W - s, 0:g]
    out[:, :, :W - s, g:2 * g] = x[:, :, s:, g:2 * g]
    out[:, s:, :, 2 * g:3 * g] = x[:, :H - s, :, 2 * g:3 * g]
    out[:, :H - s, :, 3 * g:4 * g] = x[:, s:, :, 3 * g:4 * g]
    out[..., 4 * g:] = x[..., 4 * g:]
    return out.view(B, N, C)


def shift_mix(
        x: torch.Tensor,
        grid: Tuple[int, int],
        mixes: Tuple[torch.Tensor, ...],
        shift_pixel: int,
        gamma: float,
) -> Tuple[torch.Tensor, ...]:
    """Interpolate tokens with their Q-shifted copy, once per mixing ratio: x * m + q_shift(x) * (1 - m).

    Args:
        x: (B, N, C) tokens; grid: (H, W); mixes: (1, 1, C) ratios; shift_pixel, gamma: as ``q_shift``.

    Returns:
        One (B, N, C) tensor per ratio.
    """
    xx = q_shift(x, grid, shift_pixel, gamma)
    return tuple(torch.lerp(xx, x, m.to(x.dtype)) for m in mixes)  # autocast may hand in low-precision x
