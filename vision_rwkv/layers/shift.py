"""Q-Shift: token shift over the 2D patch grid of Vision-RWKV (whole channels, or within each head: VRWKV6)."""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from timm.models import register_notrace_function


def _check_shift(x: torch.Tensor, grid: Tuple[int, int], gamma: float, head_size: Optional[int] = None) -> None:
    if gamma > 0.25:
        raise ValueError(f'q_shift: gamma must be at most 1/4, got {gamma}')
    H, W = grid
    if H * W != x.shape[1]:
        raise ValueError(f'q_shift: grid {H}x{W} does not match {x.shape[1]} tokens')
    if head_size is not None and (head_size <= 0 or x.shape[-1] % head_size):
        raise ValueError(f'q_shift: {x.shape[-1]} channels are not heads of {head_size}')


def _heads_view(x: torch.Tensor, grid: Tuple[int, int], head_size: Optional[int]) -> torch.Tensor:
    """(B, N, C) tokens as (B, H, W, heads, head_size); one head of C channels when ``head_size`` is None."""
    B, _, C = x.shape
    head_size = head_size or C
    return x.view(B, grid[0], grid[1], C // head_size, head_size)


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


def _shift(x: torch.Tensor, grid: Tuple[int, int], shift_pixel: int, gamma: float,
           head_size: Optional[int] = None) -> torch.Tensor:
    """The Q-Shift map of ``q_shift`` (``head_size`` None) or ``q_shift_multihead``, without checks.

    Each group is a zero-padded slice and the groups are concatenated: slice assignment into an empty tensor
    would export to ONNX as ScatterND nodes wrapped in Transposes, which made up half of onnxruntime's time.
    """
    H, W = grid
    s = shift_pixel
    x5 = _heads_view(x, grid, head_size)  # (B, H, W, heads, head_size); F.pad pads the last dims first
    from_left, from_right, from_up, from_down = _groups(x5.shape[-1], gamma, transpose=False)
    groups = [F.pad(x5[:, :, :W - s, :, from_left], (0, 0, 0, 0, s, 0)),
              F.pad(x5[:, :, s:, :, from_right], (0, 0, 0, 0, 0, s)),
              F.pad(x5[:, :H - s, :, :, from_up], (0, 0, 0, 0, 0, 0, s, 0)),
              F.pad(x5[:, s:, :, :, from_down], (0, 0, 0, 0, 0, 0, 0, s)),
              x5[..., from_down.stop:]]
    return torch.cat(groups, dim=-1).view(x.shape)


def _add_transposed_shift_(out: torch.Tensor, x: torch.Tensor, grid: Tuple[int, int], shift_pixel: int,
                           gamma: float, head_size: Optional[int] = None) -> None:
    """out += the transpose of the Q-Shift map applied to x (the backward of the shift), in place:
    every channel group moves the other way (left <-> right, up <-> down)."""
    H, W = grid
    s = shift_pixel
    x, out = _heads_view(x, grid, head_size), _heads_view(out, grid, head_size)
    from_left, from_right, from_up, from_down = _groups(x.shape[-1], gamma, transpose=True)
    out[:, :, s:, :, from_left] += x[:, :, :W - s, :, from_left]
    out[:, :, :W - s, :, from_right] += x[:, :, s:, :, from_right]
    out[:, s:, :, :, from_up] += x[:, :H - s, :, :, from_up]
    out[:, :H - s, :, :, from_down] += x[:, s:, :, :, from_down]
    rest = _group_bounds(x.shape[-1], gamma)[4]
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


@register_notrace_function  # one torch.fx node: its checks are Python control flow on the grid
def q_shift_multihead(x: torch.Tensor, grid: Tuple[int, int], shift_pixel: int = 1,
                      head_size: int = 64) -> torch.Tensor:
    """VRWKV6's Q-Shift: ``q_shift`` with gamma 1/4 inside each head of ``head_size`` channels.

    In every head, channels [0, hs/4) take the value of the patch to the left, [hs/4, hs/2) the patch to the
    right, [hs/2, 3hs/4) the patch above, [3hs/4, hs) the patch below (zeros at the border; boundaries
    int(hs * n / 4) as in the official ``q_shift_multihead``). No channel passes through unshifted.

    Args:
        x: (B, N, C) tokens in row-major grid order, N = H * W, C a multiple of ``head_size``.
        grid: (H, W) patch grid.
        shift_pixel: shift distance in patches (0: no shift).
        head_size: channels per head.

    Returns:
        (B, N, C) shifted tokens.
    """
    _check_shift(x, grid, 0.25, head_size)
    return _shift(x, grid, shift_pixel, 0.25, head_size)


def _lerps(xx: torch.Tensor, x: torch.Tensor, mixes: Tuple[torch.Tensor, ...]) -> Tuple[torch.Tensor, ...]:
    """torch.lerp(xx, x, m) for every ratio m, in x's dtype (autocast may hand in low-precision x)."""
    return tuple(torch.lerp(xx, x, m.to(x.dtype)) for m in mixes)


class _ShiftMix(torch.autograd.Function):
    """lerp(q_shift(x), x, m) for several ratios m, with one shift in the forward and one (transposed)
    shift in the backward: autograd of the slicing would zero-fill and add a full tensor per slice."""

    @staticmethod
    def forward(ctx, x, grid, shift_pixel, gamma, head_size, *mixes):
        xx = _shift(x, grid, shift_pixel, gamma, head_size)
        ctx.save_for_backward(x - xx, *mixes)
        ctx.layout = (grid, shift_pixel, gamma, head_size)
        return _lerps(xx, x, mixes)

    @staticmethod
    def backward(ctx, *grads):
        """out_j = xx + m_j (x - xx): dx = Σ g_j m_j + shiftᵀ(Σ g_j (1 - m_j)), dm_j = Σ_{b,n} g_j (x - xx)."""
        diff, *mixes = ctx.saved_tensors
        g_x = g_xx = product = None
        g_mixes = []
        for g, m, needs in zip(grads, mixes, ctx.needs_input_grad[5:]):
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
        return (g_x, None, None, None, None, *g_mixes)


@register_notrace_function  # one torch.fx node: its checks are Python control flow on the grid
def shift_mix(
        x: torch.Tensor,
        grid: Tuple[int, int],
        mixes: Tuple[torch.Tensor, ...],
        shift_pixel: int,
        gamma: float,
        head_size: Optional[int] = None,
) -> Tuple[torch.Tensor, ...]:
    """Interpolate tokens with their Q-shifted copy, once per mixing ratio: x * m + q_shift(x) * (1 - m).

    Args:
        x: (B, N, C) tokens; grid: (H, W); mixes: (1, 1, C) ratios; shift_pixel, gamma: as ``q_shift``.
        head_size: shift within heads of this many channels (``q_shift_multihead``, VRWKV6; gamma 1/4);
            None: across all C channels (``q_shift``).

    Returns:
        One (B, N, C) tensor per ratio (torch.lerp(q_shift(x), x, m), the same values as before the
        fused backward).
    """
    _check_shift(x, grid, gamma, head_size)
    if torch.compiler.is_compiling():  # dynamo cannot trace _ShiftMix; the compiler fuses the plain form
        xx = _shift(x, grid, shift_pixel, gamma, head_size)
        diff = x - xx  # lerp's formula written out: ONNX has no Lerp, and its decomposition selects with Where
        return tuple(xx + m.to(x.dtype) * diff for m in mixes)
    if not (torch.is_grad_enabled() and (x.requires_grad or any(m.requires_grad for m in mixes))):
        return _lerps(_shift(x, grid, shift_pixel, gamma, head_size), x, mixes)  # nothing to differentiate
    return _ShiftMix.apply(x, tuple(grid), shift_pixel, gamma, head_size, *mixes)
