"""2D Bi-WKV: decay by the Manhattan distance of grid positions, in O(H·W) by separable scans.

    y_t = ( Σ_{s≠t} e^{-(d(s,t)-1)·w + k_s}·v_s + e^{u + k_t}·v_t ) / ( same with v = 1 ),
    d(s, t) = |row_s - row_t| + |col_s - col_t|.

Because d - 1 = (|Δrow| - 1) + |Δcol| for tokens in other rows, the sum splits into
- the token's own row, excluding itself: the exclusive two-sided row scan R_excl (as 1D Bi-WKV);
- the other rows: the exclusive two-sided column scan of the *inclusive* row sums
  R_incl = e^{-w}·R_excl + e^{k_t}·(v_t, 1), each row sum already decayed by |Δcol|.
Every part is a positive sum kept in log-scaled form (s, l) and combined under a shared maximum,
so nothing large is ever subtracted. Time and memory O(B·H·W·C).

The gradients use the symmetry of the weights W_ts (d(s, t) = d(t, s)): with g_t = gy_t / den_t,
- gv_s = e^{k_s}·Σ_t W_st·g_t and gk_s = v_s·gv_s - e^{k_s}·Σ_t W_st·g_t·y_t: the same 2D sums of
  (gy, gy·y) with log-weights -log den;
- gw = -Σ_t g_t·Σ_{s≠t} (d(s,t) - 1)·W_ts·e^{k_s}·(v_s - y_t), with distance-weighted sums in the
  same decomposition: (d - 1) = (|Δcol| - 1) in the own row and (|Δrow| - 1) + |Δcol| across rows,
  and a distance-weighted exclusive scan is an exclusive scan of the exclusive scan, times e^{-w}.

CUDA tensors run the Triton kernels of ``bi_wkv_2d_triton`` (same decomposition, forward and
backward); other tensors run the PyTorch path below (any device). Both run inside the operators
``vision_rwkv::bi_wkv_2d_forward`` / ``_backward`` (one graph node each for torch.compile / export).
"""
from typing import Optional, Sequence, Tuple

import torch

from .bi_wkv import (_LIB, _check_inputs, _needs_grad, _use_triton, check_log_den, compute_dtype, define_op,
                     fake_forward_outputs, forward_outputs, grads_like, launch_triton, saved_for_backward,
                     scan_layout)
from .bi_wkv_export import bi_wkv_2d_export, check_exporter, onnx_exporting
from .bi_wkv_torch import _bidirectional, choose_chunk_len, decay_scan, fits_one_chunk, one_chunk_bidirectional


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
        fwd, bwd = _bidirectional(z, x, w, choose_chunk_len(w))
    return _log_add(fwd, bwd)


def _exclusive_cumsum(x: torch.Tensor) -> torch.Tensor:
    """Σ_{j<t} x_j along dim 1 (zeros at t = 0)."""
    out = torch.zeros_like(x)
    torch.cumsum(x[:, :-1], dim=1, out=out[:, 1:])
    return out


def _exclusive_two_sided_weighted(z: torch.Tensor, x: torch.Tensor, w: torch.Tensor):
    """Σ_{i≠t} (|t-i|-1)·e^{-(|t-i|-1)w + z_i}·x_i along dim 1, as (s, l). Per direction the weight
    (t-1-i) counts the tokens j strictly between i and t, so the sum is Σ_{j<t} of the exclusive sums
    with their decay to j removed: in one chunk (same condition as ``_exclusive_two_sided``), the
    exclusive cumulative sum of the scaled exclusive sums (positive terms only); else
    e^{-w}·Σ_{j<t} e^{-(t-1-j)w}·A_j with A the exclusive scan, by ``decay_scan`` twice."""
    if fits_one_chunk(z.shape[1], w):
        (s_f, l_f), (s_b, l_b) = one_chunk_bidirectional(z, x, w)
        s_f, s_b = _exclusive_cumsum(s_f), _exclusive_cumsum(s_b.flip(1)).flip(1)
        return _log_add((s_f, l_f), (s_b, l_b))
    B = z.shape[0]
    chunk_len = choose_chunk_len(w)
    s_a, l_a = decay_scan(torch.cat([z, z.flip(1)]), torch.cat([x, x.flip(1)]), w, chunk_len)
    s_p, l_p = decay_scan(l_a, s_a, w, chunk_len)
    l_p = l_p - w
    return _log_add((s_p[:B], l_p[:B]), (s_p[B:].flip(1), l_p[B:].flip(1)))


def _transpose_grid(t: torch.Tensor, B: int, n: int, m: int) -> torch.Tensor:
    """(B·n, m, ...) lines of a grid -> (B·m, n, ...): rows to columns (n = H, m = W), or back."""
    return t.reshape(B, n, m, *t.shape[2:]).transpose(1, 2).reshape(B * m, n, *t.shape[2:])


def _column_scan(scan, part, w: torch.Tensor, grid_hw: Tuple[int, int]):
    """``scan`` (an exclusive two-sided scan) along the columns of a part (s, l) laid out in rows
    (B·H, W, C, V) and (B·H, W, C); the result in the same layout."""
    H, W = grid_hw
    s, l = part
    B = s.shape[0] // H
    s, l = scan(_transpose_grid(l, B, H, W), _transpose_grid(s, B, H, W), w)
    return _transpose_grid(s, B, W, H), _transpose_grid(l, B, W, H)


def _row_sums(z_rows: torch.Tensor, x_rows: torch.Tensor, w: torch.Tensor):
    """The own-row exclusive sums and the inclusive row sums e^{-w}·(own row) + e^{z_t}·x_t, as (s, l),
    of log-weights z (B·H, W, C) and values x (B·H, W, C, V) laid out in rows."""
    row = _exclusive_two_sided(z_rows, x_rows, w)
    return row, _log_add((row[0], row[1] - w), (x_rows, z_rows))


def _grid_sums(z: torch.Tensor, x: torch.Tensor, w: torch.Tensor, u: torch.Tensor, grid_hw: Tuple[int, int]):
    """Σ_s W_ts·e^{z_s}·x_s of 2D Bi-WKV (W_tt = e^u) for z (B, T, C) and x (B, T, C, V), as
    (s (B, T, C, V), l (B, T, C)): own row, other rows (column scans of the inclusive row sums), own token."""
    B, T, C = z.shape
    H, W = grid_hw
    z_rows, x_rows = z.reshape(B * H, W, C), x.reshape(B * H, W, C, -1)
    row, inclusive = _row_sums(z_rows, x_rows, w)
    s, l = _log_add(_log_add(row, _column_scan(_exclusive_two_sided, inclusive, w, grid_hw)),
                    (x_rows, u + z_rows))
    return s.reshape(B, T, C, -1), l.reshape(B, T, C)


def _distance_weighted_grid_sums(z: torch.Tensor, x: torch.Tensor, w: torch.Tensor, grid_hw: Tuple[int, int]):
    """Σ_{s≠t} (d(s,t) - 1)·W_ts·e^{z_s}·x_s (= -∂/∂w of ``_grid_sums``), as (s, l) like ``_grid_sums``:
    own row (|Δcol| - 1); other rows: (|Δrow| - 1) by a weighted column scan of the inclusive row sums,
    plus |Δcol| by a column scan of the row sums weighted by |Δcol|, e^{-w}·(weighted + plain own-row sums)."""
    B, T, C = z.shape
    H, W = grid_hw
    z_rows, x_rows = z.reshape(B * H, W, C), x.reshape(B * H, W, C, -1)
    row, inclusive = _row_sums(z_rows, x_rows, w)
    row_weighted = _exclusive_two_sided_weighted(z_rows, x_rows, w)
    s, l = _log_add(row_weighted, row)
    across = _log_add(_column_scan(_exclusive_two_sided_weighted, inclusive, w, grid_hw),
                      _column_scan(_exclusive_two_sided, (s, l - w), w, grid_hw))
    s, l = _log_add(row_weighted, across)
    return s.reshape(B, T, C, -1), l.reshape(B, T, C)


def _bi_wkv_2d_torch_forward(w, u, k, v, grid_hw, with_log_den):
    """The PyTorch path: y (B, H·W, C) in ``compute_dtype(k)`` and its log-denominator (or None)."""
    w, u, k, v = (t.to(compute_dtype(k)) for t in (w, u, k, v))
    s, l = _grid_sums(k, torch.stack([v, torch.ones_like(v)], dim=-1), w, u, grid_hw)
    num, den = s.unbind(-1)
    y = (num / den).contiguous()
    return y, ((l + torch.log(den)).contiguous() if with_log_den else None)


def _bi_wkv_2d_torch_backward(w, u, k, v, y, log_den, gy, grid_hw):
    """Gradients on the PyTorch path (see the module docstring), in ``compute_dtype(k)``."""
    w, u, k, v, gy = (t.to(compute_dtype(k)) for t in (w, u, k, v, gy))
    q = -log_den  # g_t = gy_t·e^{q_t}
    s, l = _grid_sums(q, torch.stack([gy, gy * y], dim=-1), w, u, grid_hw)
    scale = torch.exp(k + l)
    gv = scale * s[..., 0]
    gk = v * gv - scale * s[..., 1]
    gu = (torch.exp(u + k + q) * gy * (v - y)).sum(dim=(0, 1))
    s, l = _distance_weighted_grid_sums(k, torch.stack([v, torch.ones_like(v)], dim=-1), w, grid_hw)
    gw = -(gy * torch.exp(l + q) * (s[..., 0] - y * s[..., 1])).sum(dim=(0, 1))
    return gw, gu, gk, gv


def _bi_wkv_2d_forward_impl(w, u, k, v, H, W, use_triton, with_log_den):
    """2D Bi-WKV forward as one operator (``torch.compile`` and ``torch.export`` see a single node).

    Args:
        w, u: (C,); k, v: (B, H·W, C), checked by ``bi_wkv_2d``.
        H, W: the grid.
        use_triton: run the Triton kernels (CUDA, or the interpreter on CPU), else the PyTorch path.
        with_log_den: also return the log-denominator the backward needs (Triton computes it anyway).

    Returns:
        y (B, H·W, C) in the dtype of k, y_acc and log_den: see ``forward_outputs``.
    """
    if not use_triton:
        y, log_den = _bi_wkv_2d_torch_forward(w, u, k, v, (H, W), with_log_den)
    else:
        from .bi_wkv_2d_triton import bi_wkv_2d_triton_forward
        y, log_den = launch_triton(bi_wkv_2d_triton_forward, w, u, k, v, (H, W))
    return forward_outputs(y, log_den, k, with_log_den)


def _bi_wkv_2d_forward_fake(w, u, k, v, H, W, use_triton, with_log_den):
    return fake_forward_outputs(k, with_log_den)


def _bi_wkv_2d_backward_impl(w, u, k, v, y, log_den, gy, H, W, use_triton):
    """Gradients of ``bi_wkv_2d_forward``: w, u, k, v its inputs; y, log_den (B, H·W, C) its outputs in the
    accumulation dtype; gy (B, H·W, C) the gradient of y (any float dtype); grid and path as the forward.
    Returns gw, gu, gk, gv in the dtypes of w, u, k, v."""
    check_log_den('bi_wkv_2d', y, log_den)
    if use_triton:
        from .bi_wkv_2d_triton import bi_wkv_2d_triton_backward
        grads = launch_triton(bi_wkv_2d_triton_backward, w, u, k, v, y, log_den, gy.contiguous(), (H, W))
    else:
        grads = _bi_wkv_2d_torch_backward(w, u, k, v, y, log_den, gy, (H, W))
    return grads_like(grads, (w, u, k, v))


def _bi_wkv_2d_backward_fake(w, u, k, v, y, log_den, gy, H, W, use_triton):
    return tuple(t.new_empty(t.shape) for t in (w, u, k, v))


bi_wkv_2d_forward_op = define_op(
    'bi_wkv_2d_forward(Tensor w, Tensor u, Tensor k, Tensor v, SymInt H, SymInt W, bool use_triton, '
    'bool with_log_den) -> (Tensor y, Tensor y_acc, Tensor log_den)', _bi_wkv_2d_forward_impl,
    _bi_wkv_2d_forward_fake)
bi_wkv_2d_backward_op = define_op(
    'bi_wkv_2d_backward(Tensor w, Tensor u, Tensor k, Tensor v, Tensor y, Tensor log_den, Tensor gy, SymInt H, '
    'SymInt W, bool use_triton) -> (Tensor gw, Tensor gu, Tensor gk, Tensor gv)',
    _bi_wkv_2d_backward_impl, _bi_wkv_2d_backward_fake)


def _setup_context(ctx, inputs, output):
    w, u, k, v, H, W, use_triton, _ = inputs
    saved_for_backward(ctx, w, u, k, v, output)
    ctx.layout = (H, W, use_triton)


def _backward(ctx, gy, *_):
    if gy is None:
        return (None,) * 8
    return bi_wkv_2d_backward_op(*ctx.saved_tensors, gy, *ctx.layout) + (None,) * 4


torch.library.register_autograd('vision_rwkv::bi_wkv_2d_forward', _backward, setup_context=_setup_context, lib=_LIB)


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
    (H, W), _ = scan_layout(k, grid, 'row')
    if onnx_exporting():
        check_exporter('bi_wkv_2d')
        return bi_wkv_2d_export(w, u, k, v, (H, W))
    use_triton = _use_triton(k, backend or 'auto')
    return bi_wkv_2d_forward_op(w, u, k, v, H, W, use_triton, _needs_grad(w, u, k, v))[0]
