"""Q-Shift: token shift over the 2D patch grid of Vision-RWKV."""
from typing import Tuple

import torch
from timm.models import register_notrace_function


def _check_shift(x: torch.Tensor, grid: Tuple[int, int], gamma: float) -> None:
    if gamma > 0.25:
        raise ValueError(f'q_shift: gamma must be at most 1/4, got {gamma}')
    H, W = grid
    if H * W != x.shape[1]:
        raise ValueError(f'q_shift: grid {H}x{W} does not match {x.shape[1]} tokens')


def _group_bounds(C: int, gamma: float) -> Tuple[int, int, int, int, int]:
    """Channel boundaries of the four shifted groups, int(C * gamma * n) for n = 0..4 (official q_shift).

    Not n * int(C * gamma): for C = 30, gamma = 1/4 the groups are [0, 7), [7, 15), [15, 22), [22, 30).
    """
    return tuple(int(C * gamma * n) for n in range(5))


def _groups(C: int, gamma: float, transpose: bool) -> Tuple[slice, slice, slice, slice]:
    """Channels taken from the left, right, upper and lower neighbour (swapped when ``transpose``)."""
    b = _group_bounds(C, gamma)
    from_left, from_right, from_up, from_down = (slice(b[i], b[i + 1]) for i in range(4))
    if transpose:
        return from_right, from_left, from_down, from_up
    return from_left, from_right, from_up, from_down


def _shift(x: torch.Tensor, grid: Tuple[int, int], shift_pixel: int, gamma: float) -> torch.Tensor:
    """The Q-Shift map of ``q_shift``, without checks."""
    B, N, C = x.shape
    H, W = grid
    s = shift_pixel
    from_left, from_right, from_up, from_down = _groups(C, gamma, transpose=False)
    x = x.view(B, H, W, C)
    out = torch.empty_like(x)
    out[:, :, s:, from_left] = x[:, :, :W - s, from_left]
    out[:, :, :s, from_left] = 0
    out[:, :, :W - s, from_right] = x[:, :, s:, from_right]
    out[:, :, W - s:, from_right] = 0
    out[:, s:, :, from_up] = x[:, :H - s, :, from_up]
    out[:, :s, :, from_up] = 0
    out[:, :H - s, :, from_down] = x[:, s:, :, from_down]
    out[:, H - s:, :, from_down] = 0
    rest = from_down.stop
    out[..., rest:] = x[..., rest:]
    return out.view(B, N, C)


def _add_transposed_shift_(out: torch.Tensor, x: torch.Tensor, grid: Tuple[int, int], shift_pixel: int,
                           gamma: float) -> None:
    """out += the transpose of the Q-Shift map applied to x (the backward of the shift), in place:
    every channel group moves the other way (left <-> right, up <-> down)."""
    B, N, C = x.shape
    H, W = grid
    s = shift_pixel
    from_left, from_right, from_up, from_down = _groups(C, gamma, transpose=True)
    x, out = x.view(B, H, W, C), out.view(B, H, W, C)
    out[:, :, s:, from_left] += x[:, :, :W - s, from_left]
    out[:, :, :W - s, from_right] += x[:, :, s:, from_right]
    out[:, s:, :, from_up] += x[:, :H - s, :, from_up]
    out[:, :H - s, :, from_down] += x[:, s:, :, from_down]
    rest = _group_bounds(C, gamma)[4]
    out[..., rest:] += x[..., rest:]


def q_shift(x: torch.Tensor, grid: Tuple[int, int], shift_pixel: int = 1, gamma: float = 0.25) -> torch.Tensor:
    """Shift four channel groups by ``shift_pixel`` from the left, right, top and bottom neighbour.

    With boundaries b_n = int(C * gamma * n) as in the official code, channels [b_0, b_1) take the
    value of the patch to the left, [b_1, b_2) the patch to the right, [b_2, b_3) the patch above,
    [b_3, b_4) the patch below (zeros at the border); the remaining channels pass through unchanged.

    Args:
        x: (B, N, C) tokens in row-major grid order, N = H * W.
        grid: (H, W) patch grid.
        shift_pixel: shift distance in patches.
        gamma: fraction of channels per direction (at most 1/4).

    Returns:
        (B, N, C) shifted tokens.
    """
    _check_shift(x, grid, gamma)
    return _shift(x, grid, shift_pixel, gamma)


class _ShiftMix(torch.autograd.Function):
    """lerp(q_shift(x), x, m) for several ratios m, with one shift in the forward and one (transposed)
    shift in the backward: autograd of the slicing would zero-fill and add a full tensor per slice."""

    @staticmethod
    def forward(ctx, x, grid, shift_pixel, gamma, *mixes):
        xx = _shift(x, grid, shift_pixel, gamma)
        ctx.save_for_backward(x - xx, *mixes)
        ctx.layout = (grid, shift_pixel, gamma)
        return tuple(torch.lerp(xx, x, m.to(x.dtype)) for m in mixes)  # autocast may hand in low-precision x

    @staticmethod
    def backward(ctx, *grads):
        """out_j = xx + m_j (x - xx): dx = Σ g_j m_j + shiftᵀ(Σ g_j (1 - m_j)), dm_j = Σ_{b,n} g_j (x - xx)."""
        diff, *mixes = ctx.saved_tensors
        g_x = g_xx = product = None
        g_mixes = []
        for g, m, needs in zip(grads, mixes, ctx.needs_input_grad[4:]):
            if needs:
                product = torch.mul(g, diff, out=product)  # one temporary for all ratios
                g_mixes.append(product.sum(dim=(0, 1), keepdim=True).to(m.dtype))
            else:
                g_mixes.append(None)
            m = m.to(g.dtype)
            g_x = g * m if g_x is None else g_x.addcmul_(g, m)
            g_xx = g * (1 - m) if g_xx is None else g_xx.addcmul_(g, 1 - m)
        if ctx.needs_input_grad[0]:
            _add_transposed_shift_(g_x, g_xx, *ctx.layout)
        else:
            g_x = None
        return (g_x, None, None, None, *g_mixes)


@register_notrace_function  # one torch.fx node: its checks are Python control flow on the grid
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
        One (B, N, C) tensor per ratio (torch.lerp(q_shift(x), x, m), the same values as before the
        fused backward).
    """
    _check_shift(x, grid, gamma)
    if torch.compiler.is_compiling():  # dynamo cannot trace _ShiftMix; the compiler fuses the plain form
        xx = _shift(x, grid, shift_pixel, gamma)
        return tuple(torch.lerp(xx, x, m.to(x.dtype)) for m in mixes)
    return _ShiftMix.apply(x, tuple(grid), shift_pixel, gamma, *mixes)
