"""2D Bi-WKV: decay by the Manhattan distance of grid positions, in O(H·W) by separable scans.

    y_t = ( Σ_{s≠t} e^{-(d(s,t)-1)·w + k_s}·v_s + e^{u + k_t}·v_t ) / ( same with v = 1 ),
    d(s, t) = |row_s - row_t| + |col_s - col_t|.

Because d - 1 = (|Δrow| - 1) + |Δcol| for tokens in other rows, the sum splits into
- the token's own row, excluding itself: the exclusive two-sided row scan R_excl (as 1D Bi-WKV);
- the other rows: the exclusive two-sided column scan of the *inclusive* row sums
  R_incl = e^{-w}·R_excl + e^{k_t}·(v_t, 1), each row sum already decayed by |Δcol|.
Every part is a positive sum kept in log-scaled form (s, l) and combined under a shared maximum,
so nothing large is ever subtracted. Time and memory O(B·H·W·C).

This module is the PyTorch path (any device, autograd through the scans); the Triton kernel for
the 2D mode is not written yet.
"""
from typing import Sequence, Tuple

import torch

from .bi_wkv import _check_inputs, compute_dtype, scan_layout
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


def bi_wkv_2d(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              grid: Sequence[int]) -> torch.Tensor:
    """2D Bi-WKV over an H x W grid of row-major tokens.

    Args:
        w, u: (C,) decay and bonus (already scaled by the caller).
        k, v: (B, H*W, C) keys and values.
        grid: (H, W).

    Returns:
        (B, H*W, C) in the dtype of k (fp16/bf16 inputs are computed in fp32).
    """
    _check_inputs(w, u, k, v)
    (H, W), _ = scan_layout(k, grid, 'row')
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

    s, l = _log_add((row_s.reshape(B, T, C, 2), row_l.reshape(B, T, C)), (col_s, col_l))
    s, _ = _log_add((s, l), (x, u_ + k_))
    num, den = s.unbind(-1)
    return (num / den).to(k.dtype)
