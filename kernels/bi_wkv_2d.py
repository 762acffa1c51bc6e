"""2D Bi-WKV: decay by the Manhattan distance of grid positions, in O(H·W) by separable scans.

    y_t = ( Σ_{s≠t} e^{-(d(s,t)-1)·w + k_s}·v_s + e^{u + k_t}·v_t ) / ( same with v = 1 ),
    d(s, t) = |row_s - row_t| + |col_s - col_t|.

Because d - 1 = (|Δrow| - 1) + |Δcol| for tokens in other rows, the sum splits into
- the token's own row, excluding itself: the exclusive two-sided row scan R_excl (as 1D Bi-WKV);
- the other rows: the exclusive two-sided column scan of the *inclusive* row sums
  R_incl = e^{-w}·R_excl + e^{k_t}·(v_t, 1), each row sum already decayed by |Δcol|.
Every part is a positive sum kept in log-scaled form (s, l) and combined under a shared maximum,
so nothing large is ever subtracted. Time and memory O(B·H·W·C).

CUDA tensors run the Triton kernels of ``bi_wkv_2d_triton`` (same decomposition, forward and
backward); other tensors run the PyTorch path below (any device, autograd through the scans).
"""
from typing import Optional, Sequence, Tuple

import torch

from .bi_wkv import _check_inputs, _use_triton, compute_dtype, scan_layout
from .bi_wkv_torch import _bidirectional, choose_chunk_len, fits_one_chunk, one_chunk_bidirectional


def _log_add(a: Tuple[torch.Tensor, torch.Tensor], b: Tuple[torch.Tensor, torch.Tensor]):
    """(s, l) of s_a·e^{l_a} + s_b·e^{l_b} (s: (..., C, V), l: (..., C)) under a shared maximum."""
    (s_a, l_a), (s_b, l_b) = a, b
    m = torch.maximum(l_a, l_b)
    return s_a * torch.exp(l_a - m).unsqueeze(-1) + s_b * torch.exp(l_b - m).unsqueeze(-1), m


def _exclusive_two_sided(z: torch.Tensor, x: torch.Tensor, w: torch.Tensor):
    """Σ_{i≠t} e^{-(|t-i|-1)w + z_i} x_i along dim 1, as (s, l): both exclusive scans added (one chunk
    when the scan's length times max|w| allows it, else chunks of ``choose_chunk_len(w)``)."""
    if fits_one_chunk(z.shape[1], w):
        fwd, bwd = one_chunk_bidirectional(z, x, w)
    else:
        fwd, bwd = _bidirectional(z, x, w, choose_chunk_len(w.detach()))
    return _log_add(fwd, bwd)


class BiWKV2DFunction(torch.autograd.Function):
    """Autograd wrapper of the Triton kernels; fp32 accumulation, outputs and gradients in the input dtypes."""

    @staticmethod
    def forward(ctx, w, u, k, v, grid_hw):
        from .bi_wkv_2d_triton import bi_wkv_2d_triton_forward
        w32, u32 = w.float().contiguous(), u.float().contiguous()
        k_in, v_in = k.contiguous(), v.contiguous()
        y, log_den = bi_wkv_2d_triton_forward(w32, u32, k_in, v_in, grid_hw)
        ctx.save_for_backward(w32, u32, k_in, v_in, y, log_den)
        ctx.grid_hw = grid_hw
        ctx.dtypes = (w.dtype, u.dtype, k.dtype, v.dtype)
        return y.to(k.dtype)

    @staticmethod
    def backward(ctx, gy):
        from .bi_wkv_2d_triton import bi_wkv_2d_triton_backward
        grads = bi_wkv_2d_triton_backward(*ctx.saved_tensors, gy.contiguous(), ctx.grid_hw)
        return tuple(g.to(dt) for g, dt in zip(grads, ctx.dtypes)) + (None,)


def bi_wkv_2d(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              grid: Sequence[int], backend: Optional[str] = None) -> torch.Tensor:
    """2D Bi-WKV over an H x W grid of row-major tokens.

    Args:
        w, u: (C,) decay and bonus (already scaled by the caller).
        k, v: (B, H*W, C) keys and values.
        grid: (H, W).
        backend: 'auto' (default: Triton for CUDA tensors, PyTorch otherwise), 'triton' or 'torch'.

    Returns:
        (B, H*W, C) in the dtype of k (fp16/bf16 inputs are computed in fp32).
    """
    _check_inputs(w, u, k, v)
    grid_hw, _ = scan_layout(k, grid, 'row')
    if _use_triton(k, backend or 'auto'):
        return BiWKV2DFunction.apply(w, u, k, v, grid_hw)
    return _bi_wkv_2d_torch(w, u, k, v, grid_hw)


def _bi_wkv_2d_torch(w, u, k, v, grid_hw):
    """The PyTorch path of ``bi_wkv_2d`` (autograd through the scans)."""
    H, W = grid_hw
    B, T, C = k.shape
    w_, u_, k_, v_ = (t.to(compute_dtype(k)) for t in (w, u, k, v))
    x = torch.stack([v_, torch.ones_like(v_)], dim=-1)  # (B, T, C, 2): numerator and denominator

    # own row, other columns: exclusive row scans over W
    row_s, row_l = _exclusive_two_sided(k_.reshape(B * H, W, C), x.reshape(B * H, W, C, 2), w_)
    # inclusive row sums, e^{-w} R_excl + own token, to be carried across rows
    inc_s, inc_l = _log_add((row_s, row_l - w_), (x.reshape(B * H, W, C, 2), k_.reshape(B * H, W, C)))
    # other rows: exclusive column scans over H of the inclusive row sums
    col_z = inc_l.reshape(B, H, W, C).transpose(1, 2).reshape(B * W, H, C)
    col_x = inc_s.reshape(B, H, W, C, 2).transpose(1, 2).reshape(B * W, H, C, 2)
    col_s, col_l = _exclusive_two_sided(col_z, col_x, w_)
    col_s = col_s.reshape(B, W, H, C, 2).transpose(1, 2).reshape(B, T, C, 2)
    col_l = col_l.reshape(B, W, H, C).transpose(1, 2).reshape(B, T, C)

    s, log_scale = _log_add((row_s.reshape(B, T, C, 2), row_l.reshape(B, T, C)), (col_s, col_l))
    s, _ = _log_add((s, log_scale), (x, u_ + k_))
    num, den = s.unbind(-1)
    return (num / den).to(k.dtype)
