"""2D Bi-WKV Triton kernels: separable row and column scans, forward and backward.

The sum over the grid splits as in ``bi_wkv_2d``: the token's own row (exclusive row scan R), and
the other rows (exclusive column scan of the inclusive row sums I = e^{-w}·R + e^{k}·x). Each
direction of autograd is two launches, so rows and columns both run in parallel:

- the row kernel, one program per (batch, row, channel block), walks its row right-to-left
  (parking the exclusive right state) and left-to-right, and writes R for every token;
- the column kernel, one program per (batch, column, channel block), walks its column top-down
  (parking the state of the rows above) and bottom-up, where it adds R, the rows above, the rows
  below and the bonus term. I is rebuilt from R on the fly, never stored.

Every state is a sum kept as (values) · e^{p} with p' = max(p - w, key), as in the 1D kernels, so no
exponent overflows and nothing large is subtracted. Tokens are row-major, channel-last (B, H·W, C):
row lines step by one token, column lines by W tokens, and every load is a contiguous channel vector.

Backward: with q_t = -log den_t, the gradients of k and v are the same 2D scan on the output side
(keys q, values gy and gy·y), because the Manhattan distance is symmetric. Its states also carry the
distance-weighted sums D = Σ (d - 1)·term, which give gw = -Σ_s e^{k_s}·(v_s·D1_s - D2_s). An item
folded into a column state brings its own row distances: D_I = e^{-w}·(D_R + R).
"""
from typing import Tuple

import torch
import triton
import triton.language as tl

from .bi_wkv_triton import NEG_INF, _block_c, _empty_state, _fold, _park_and_fold, _ratio_and_log, _update

_STATE_PLANES = 5  # backward state: a1, a2, d1, d2, p


@triton.jit
def _merge_ratio(ratio_a, ld_a, ratio_b, ld_b):
    """(ratio, log den) of the sum of two states given as (num / den, log den)."""
    m = tl.maximum(ld_a, ld_b)
    e_a = tl.exp(ld_a - m)
    e_b = tl.exp(ld_b - m)
    den = e_a + e_b
    return (ratio_a * e_a + ratio_b * e_b) / den, m + tl.log(den)


@triton.jit
def _add(a1, a2, d1, d2, p, b1, b2, e1, e2, q):
    """Sum of two states under their shared maximum exponent."""
    m = tl.maximum(p, q)
    e_a = tl.exp(p - m)
    e_b = tl.exp(q - m)
    return a1 * e_a + b1 * e_b, a2 * e_a + b2 * e_b, d1 * e_a + e1 * e_b, d2 * e_a + e2 * e_b, m


@triton.jit
def _store_state(ptr, offs, N, mask, a1, a2, d1, d2, p):
    """Store a state in five planes of N values (offsets stepped in int64: 5·N may pass 2^31)."""
    tl.store(ptr + offs, a1, mask=mask)
    offs += N
    tl.store(ptr + offs, a2, mask=mask)
    offs += N
    tl.store(ptr + offs, d1, mask=mask)
    offs += N
    tl.store(ptr + offs, d2, mask=mask)
    offs += N
    tl.store(ptr + offs, p, mask=mask)


@triton.jit
def _load_state(ptr, offs, N, mask):
    a1 = tl.load(ptr + offs, mask=mask, other=0.)
    offs += N
    a2 = tl.load(ptr + offs, mask=mask, other=0.)
    offs += N
    d1 = tl.load(ptr + offs, mask=mask, other=0.)
    offs += N
    d2 = tl.load(ptr + offs, mask=mask, other=0.)
    offs += N
    return a1, a2, d1, d2, tl.load(ptr + offs, mask=mask, other=NEG_INF)


@triton.jit
def _load_output_side(y_ptr, lse_ptr, gy_ptr, offs, mask):
    """Key q = -log den and values (gy, gy·y) of the output-side scan at one token."""
    y = tl.load(y_ptr + offs, mask=mask, other=0.)
    q = -tl.load(lse_ptr + offs, mask=mask, other=0.)
    gy = tl.load(gy_ptr + offs, mask=mask, other=0.).to(tl.float32)
    return q, gy, gy * y, y


@triton.jit
def _line(T, C, n_lines, line_step, BLOCK_C: tl.constexpr):
    """This program's channel lanes, their mask, and the first token of its line: line l of batch b
    (program id b·n_lines + l) starts at token b·T + l·line_step (rows: n_lines = H, line_step = W;
    columns: n_lines = W, line_step = 1)."""
    pid = tl.program_id(0)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    return offs_c, offs_c < C, (pid // n_lines).to(tl.int64) * T + (pid % n_lines) * line_step


@triton.jit
def _fwd_rows_kernel(
        w_ptr, k_ptr, v_ptr, r_ptr, rl_ptr,
        T, C, H, W,
        BLOCK_C: tl.constexpr,
):
    """R_t = Σ_{s in row, s≠t} e^{-(|Δcol|-1)w + k_s}·(v_s, 1), written as (num / den, log den)."""
    offs_c, mask, start = _line(T, C, H, W, BLOCK_C)
    w = tl.load(w_ptr + offs_c, mask=mask, other=0.).to(tl.float32)

    a, b, p = _empty_state(BLOCK_C)
    for i in range(W):  # right-to-left: park the exclusive right state
        offs = (start + W - 1 - i) * C + offs_c
        a, b, p = _park_and_fold(a, b, p, w, k_ptr, v_ptr, r_ptr, rl_ptr, offs, mask)

    a, b, p = _empty_state(BLOCK_C)
    for j in range(W):  # left-to-right: add the left state to the parked right state
        offs = (start + j) * C + offs_c
        ratio_l, ld_l = _ratio_and_log(a, b, p)
        ratio_r = tl.load(r_ptr + offs, mask=mask, other=0.)
        ld_r = tl.load(rl_ptr + offs, mask=mask, other=NEG_INF)
        ratio, log_den = _merge_ratio(ratio_l, ld_l, ratio_r, ld_r)
        tl.store(r_ptr + offs, ratio, mask=mask)
        tl.store(rl_ptr + offs, log_den, mask=mask)
        key = tl.load(k_ptr + offs, mask=mask, other=0.).to(tl.float32)
        val = tl.load(v_ptr + offs, mask=mask, other=0.).to(tl.float32)
        a, b, p = _update(a, b, p, w, key, val, 1.)


@triton.jit
def _fwd_cols_kernel(
        w_ptr, u_ptr, k_ptr, v_ptr, y_ptr, lse_ptr, s_ptr, sl_ptr,
        T, C, H, W,
        BLOCK_C: tl.constexpr,
):
    """y = (R + rows above + rows below + bonus) as num / den, and log den; (y, lse) hold R on entry,
    (s, sl) park the rows-above state."""
    offs_c, mask, start = _line(T, C, W, 1, BLOCK_C)
    w = tl.load(w_ptr + offs_c, mask=mask, other=0.).to(tl.float32)
    u = tl.load(u_ptr + offs_c, mask=mask, other=0.).to(tl.float32)

    a, b, p = _empty_state(BLOCK_C)
    for r in range(H):  # top-down: park the rows-above state, fold the inclusive row sum I
        offs = (start + r * W) * C + offs_c
        ratio, log_den = _ratio_and_log(a, b, p)
        tl.store(s_ptr + offs, ratio, mask=mask)
        tl.store(sl_ptr + offs, log_den, mask=mask)
        key = tl.load(k_ptr + offs, mask=mask, other=0.).to(tl.float32)
        val = tl.load(v_ptr + offs, mask=mask, other=0.).to(tl.float32)
        ratio_i, ld_i = _merge_ratio(tl.load(y_ptr + offs, mask=mask, other=0.),
                                     tl.load(lse_ptr + offs, mask=mask, other=NEG_INF) - w, val, key)
        a, b, p = _update(a, b, p, w, ld_i, ratio_i, 1.)

    a, b, p = _empty_state(BLOCK_C)
    for i in range(H):  # bottom-up: combine the four parts under one maximum
        offs = (start + (H - 1 - i) * W) * C + offs_c
        key = tl.load(k_ptr + offs, mask=mask, other=0.).to(tl.float32)
        val = tl.load(v_ptr + offs, mask=mask, other=0.).to(tl.float32)
        ratio_r = tl.load(y_ptr + offs, mask=mask, other=0.)
        ld_r = tl.load(lse_ptr + offs, mask=mask, other=NEG_INF)
        ratio_a = tl.load(s_ptr + offs, mask=mask, other=0.)
        ld_a = tl.load(sl_ptr + offs, mask=mask, other=NEG_INF)
        ratio_b, ld_b = _ratio_and_log(a, b, p)
        ld_d = u + key
        m = tl.maximum(tl.maximum(ld_r, ld_a), tl.maximum(ld_b, ld_d))
        e_r = tl.exp(ld_r - m)
        e_a = tl.exp(ld_a - m)
        e_b = tl.exp(ld_b - m)
        e_d = tl.exp(ld_d - m)
        den = e_r + e_a + e_b + e_d
        tl.store(y_ptr + offs, (ratio_r * e_r + ratio_a * e_a + ratio_b * e_b + val * e_d) / den, mask=mask)
        tl.store(lse_ptr + offs, m + tl.log(den), mask=mask)
        ratio_i, ld_i = _merge_ratio(ratio_r, ld_r - w, val, key)
        a, b, p = _update(a, b, p, w, ld_i, ratio_i, 1.)


@triton.jit
def _bwd_rows_kernel(
        w_ptr, y_ptr, lse_ptr, gy_ptr, r_ptr,
        T, C, H, W, N,
        BLOCK_C: tl.constexpr,
):
    """Output-side R_t = Σ_{s in row, s≠t} e^{-(|Δcol|-1)w + q_s}·(gy_s, gy_s·y_s) with its distance
    sums, written as five planes (a1, a2, d1, d2, p) of N = B·T·C values."""
    offs_c, mask, start = _line(T, C, H, W, BLOCK_C)
    w = tl.load(w_ptr + offs_c, mask=mask, other=0.).to(tl.float32)
    zero = tl.zeros([BLOCK_C], dtype=tl.float32)

    a1, a2, d1, d2 = zero, zero, zero, zero
    p = tl.full([BLOCK_C], NEG_INF, dtype=tl.float32)
    for i in range(W):  # right-to-left: park the exclusive right state
        offs = (start + W - 1 - i) * C + offs_c
        _store_state(r_ptr, offs, N, mask, a1, a2, d1, d2, p)
        q, x1, x2, _ = _load_output_side(y_ptr, lse_ptr, gy_ptr, offs, mask)
        a1, a2, d1, d2, p = _fold(a1, a2, d1, d2, p, w, q, x1, x2, 0., 0.)

    a1, a2, d1, d2 = zero, zero, zero, zero
    p = tl.full([BLOCK_C], NEG_INF, dtype=tl.float32)
    for j in range(W):  # left-to-right: add the left state to the parked right state
        offs = (start + j) * C + offs_c
        b1, b2, e1, e2, pb = _load_state(r_ptr, offs, N, mask)
        s1, s2, s3, s4, ps = _add(a1, a2, d1, d2, p, b1, b2, e1, e2, pb)
        _store_state(r_ptr, offs, N, mask, s1, s2, s3, s4, ps)
        q, x1, x2, _ = _load_output_side(y_ptr, lse_ptr, gy_ptr, offs, mask)
        a1, a2, d1, d2, p = _fold(a1, a2, d1, d2, p, w, q, x1, x2, 0., 0.)


@triton.jit
def _bwd_cols_kernel(
        w_ptr, u_ptr, k_ptr, v_ptr, y_ptr, lse_ptr, gy_ptr, r_ptr, s_ptr,
        gk_ptr, gv_ptr, gw_ptr, gu_ptr,
        T, C, H, W, N,
        BLOCK_C: tl.constexpr,
):
    """Gradients from the output-side total E = R + rows above + rows below (exclusive) and the bonus:
    gv = e^{k}·E1 + e^{u+k+q}·gy, gk = v·gv - (e^{k}·E2 + e^{u+k+q}·gy·y), per-column partials of
    gw = -Σ e^{k}·(v·D1 - D2) and gu = Σ e^{u+k+q}·gy·(v - y). (s) parks the rows-above state."""
    offs_c, mask, start = _line(T, C, W, 1, BLOCK_C)
    w = tl.load(w_ptr + offs_c, mask=mask, other=0.).to(tl.float32)
    u = tl.load(u_ptr + offs_c, mask=mask, other=0.).to(tl.float32)
    zero = tl.zeros([BLOCK_C], dtype=tl.float32)

    a1, a2, d1, d2 = zero, zero, zero, zero
    p = tl.full([BLOCK_C], NEG_INF, dtype=tl.float32)
    for r in range(H):  # top-down: park the rows-above state, fold I = e^{-w}·R + e^{q}·x
        offs = (start + r * W) * C + offs_c
        _store_state(s_ptr, offs, N, mask, a1, a2, d1, d2, p)
        q, x1, x2, _ = _load_output_side(y_ptr, lse_ptr, gy_ptr, offs, mask)
        r1, r2, rd1, rd2, pr = _load_state(r_ptr, offs, N, mask)
        i1, i2, id1, id2, pi = _fold(r1, r2, rd1, rd2, pr, w, q, x1, x2, 0., 0.)
        a1, a2, d1, d2, p = _fold(a1, a2, d1, d2, p, w, pi, i1, i2, id1, id2)

    gw = zero
    gu = zero
    a1, a2, d1, d2 = zero, zero, zero, zero
    p = tl.full([BLOCK_C], NEG_INF, dtype=tl.float32)
    for i in range(H):  # bottom-up: total exclusive sum, then the gradients of this token
        offs = (start + (H - 1 - i) * W) * C + offs_c
        q, x1, x2, y = _load_output_side(y_ptr, lse_ptr, gy_ptr, offs, mask)
        key = tl.load(k_ptr + offs, mask=mask, other=0.).to(tl.float32)
        val = tl.load(v_ptr + offs, mask=mask, other=0.).to(tl.float32)
        r1, r2, rd1, rd2, pr = _load_state(r_ptr, offs, N, mask)
        b1, b2, e1, e2, pb = _load_state(s_ptr, offs, N, mask)
        t1, t2, td1, td2, pt = _add(r1, r2, rd1, rd2, pr, b1, b2, e1, e2, pb)
        t1, t2, td1, td2, pt = _add(t1, t2, td1, td2, pt, a1, a2, d1, d2, p)
        e_k = tl.exp(key + pt)  # ≤ 1: q_s ≤ -(logit of this token in row s's softmax)
        e_d = tl.exp(u + key + q)
        g1 = t1 * e_k + e_d * x1
        tl.store(gv_ptr + offs, g1, mask=mask)
        tl.store(gk_ptr + offs, val * g1 - t2 * e_k - e_d * x2, mask=mask)
        gw -= e_k * (val * td1 - td2)
        gu += e_d * x1 * (val - y)
        i1, i2, id1, id2, pi = _fold(r1, r2, rd1, rd2, pr, w, q, x1, x2, 0., 0.)
        a1, a2, d1, d2, p = _fold(a1, a2, d1, d2, p, w, pi, i1, i2, id1, id2)

    offs_pc = tl.program_id(0).to(tl.int64) * C + offs_c
    tl.store(gw_ptr + offs_pc, gw, mask=mask)
    tl.store(gu_ptr + offs_pc, gu, mask=mask)


def bi_wkv_2d_triton_forward(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                             grid_hw: Tuple[int, int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Launch the row and column forward kernels.

    Args:
        w, u: (C,) float32; k, v: (B, H·W, C) contiguous fp32, fp16 or bf16; grid_hw: (H, W).

    Returns:
        y: (B, H·W, C) float32 output; log_den: (B, H·W, C) float32 log denominators.
    """
    B, T, C = k.shape
    H, W = grid_hw
    y = torch.empty(B, T, C, device=k.device, dtype=torch.float32)
    log_den = torch.empty_like(y)
    parked = torch.empty(2, B, T, C, device=k.device, dtype=torch.float32)
    block_c = _block_c(C)
    n_c = triton.cdiv(C, block_c)
    _fwd_rows_kernel[(B * H, n_c)](w, k, v, y, log_den, T, C, H, W, BLOCK_C=block_c)
    _fwd_cols_kernel[(B * W, n_c)](w, u, k, v, y, log_den, parked[0], parked[1], T, C, H, W, BLOCK_C=block_c)
    return y, log_den


def bi_wkv_2d_triton_backward(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                              y: torch.Tensor, log_den: torch.Tensor, gy: torch.Tensor,
                              grid_hw: Tuple[int, int]
                              ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the row and column backward kernels.

    Args:
        w, u: (C,) float32; k, v, gy: (B, H·W, C) contiguous; y, log_den: (B, H·W, C) float32 from
            the forward; grid_hw: (H, W).

    Returns:
        gw, gu: (C,) float32; gk, gv: (B, H·W, C) float32.
    """
    B, T, C = k.shape
    H, W = grid_hw
    N = B * T * C
    rows = torch.empty(_STATE_PLANES, B, T, C, device=k.device, dtype=torch.float32)
    parked = torch.empty_like(rows)
    gk = torch.empty(B, T, C, device=k.device, dtype=torch.float32)
    gv = torch.empty_like(gk)
    gw = torch.empty(B * W, C, device=k.device, dtype=torch.float32)
    gu = torch.empty_like(gw)
    block_c = _block_c(C)
    n_c = triton.cdiv(C, block_c)
    _bwd_rows_kernel[(B * H, n_c)](w, y, log_den, gy, rows, T, C, H, W, N, BLOCK_C=block_c)
    _bwd_cols_kernel[(B * W, n_c)](w, u, k, v, y, log_den, gy, rows, parked, gk, gv, gw, gu, T, C, H, W, N,
                                   BLOCK_C=block_c)
    return gw.sum(0), gu.sum(0), gk, gv
