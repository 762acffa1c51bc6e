"""Bi-WKV Triton kernels, sequence-parallel: chunk totals, a scan across chunks, then every chunk at once.

The operator is two exclusive decayed scans (left-to-right and right-to-left) plus the bonus term of
the current token (DESIGN.md section 2). Each scan runs in three launches over chunks of L tokens:

1. **totals**: every (batch, chunk, channel block) program reduces its chunk to two log-space states
   (``triton_scan``): the left-to-right total seen from the chunk's last position and the right-to-left
   total seen from its first. A max, then a sum of exp(e - max) of positive weights: nothing overflows.
2. **carries**: one program per (batch, channel block) and direction scans the chunk totals with
   ``tl.associative_scan`` in blocks of CARRY_BLOCK chunks (blocks carried serially: T / (L·CARRY_BLOCK)
   steps) and writes the state entering every chunk.
3. **finish**: every (batch, chunk, channel block) program scans its (L, BLOCK_C) tile with
   ``tl.associative_scan``: element r is token r - 1 of the chunk, element 0 the incoming carry, so
   row r of the inclusive scan is the exclusive state of token r. The right-to-left direction is the
   same on the reversed token order. Both states and the bonus term are combined under one maximum.

No program re-reads what it stored (launch boundaries order the phases), every load and store is
masked, offsets are int64. At B = 1, T = 4096, C = 192 the totals and finish launches run
128 chunks x 6 channel blocks = 768 programs.

Scan order is index arithmetic, never a copy: token t of the scan sits at grid position
(t % H, t // H) in column-major order, i.e. at row-major memory index (t % H) * W + t // H of the
channel-last (B, H*W, C) tensors. Each channel lane picks its own order: channels below SPLIT scan
row-major, the others column-major (SPLIT = C: raster; 0: column-major; C / 2: cross mode).

Memory traffic: the forward reads k and v and writes y and log_den (fp32, kept for the backward), plus
chunk totals and carries (6 values per chunk and channel: 6/L of a token plane). The finish phase
loads its tile three times (aligned, shifted by one each way); the repeats hit the cache. The backward
saves nothing beyond the forward's y and log_den: it re-reads k, v, y, log_den and gy, recomputes the
input-side states with distance sums (for the gradient of w) and the output-side states (keys
q = -log_den, values gy and gy·y, which give the gradients of k and v, since the operator is symmetric
in t and i), and writes gk and gv; per-chunk partials of gw and gu are summed on the host (no atomics).
"""
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from .interpreter import interpreting, vectorise_interpreter_scans
from .triton_scan import NEG_INF, combine2, combine2_dist, last_row, ratio_and_log

if interpreting():  # CPU tensors in Triton's interpreter: its element-wise scans would take minutes
    vectorise_interpreter_scans()

#: Tokens per chunk, and chunks per block of the carry scan (tests shrink them to reach many chunks).
CHUNK_LEN = 32
CARRY_BLOCK = 64


def block_c(C: int) -> int:
    """Channels per program: one 32-lane vector (fewer for small C)."""
    return min(32, triton.next_power_of_2(C))


def _num_warps(rows: int, cols: int) -> int:
    """Warps for a (rows, cols) fp32 tile: about 4 elements per thread, 1 to 8 warps. With 4 warps the
    (32, 32) backward finish spills registers on sm_90 (255 registers); with 8 it uses 156, no spills
    (ptxas, tests/test_triton_compile.py)."""
    return max(1, min(8, rows * cols // 128))


@triton.jit
def _token_offsets(row0, t, offs_c, H, W, SPLIT, C):
    """Memory offsets of scan steps t (any shape broadcasting with offs_c): row-major lanes read token
    t, lanes at or above SPLIT the token at column-major step t."""
    col_major = (t % H) * W + t // H
    pos = tl.where(offs_c < SPLIT, t, col_major)
    return (row0 + pos) * C + offs_c


@triton.jit
def _steps(row0, t, offs_c, c_mask, T, H, W, SPLIT, C):
    """Offsets and mask of the (L, BLOCK_C) tile of scan steps t (L,); steps outside [0, T) are masked."""
    valid = (t >= 0) & (t < T)
    offs = _token_offsets(row0, tl.where(valid, t, 0)[:, None], offs_c[None, :], H, W, SPLIT, C)
    return offs, valid[:, None] & c_mask[None, :]


@triton.jit
def _load(ptr, offs, mask):
    """fp32 tile (0 where masked) of a tensor of any float dtype."""
    return tl.load(ptr + offs, mask=mask, other=0.).to(tl.float32)


@triton.jit
def _load3(ptr, offs, N, mask):
    """A state (a1, a2, p) stored as three planes of N values (empty where masked)."""
    a1 = tl.load(ptr + offs, mask=mask, other=0.)
    offs += N
    a2 = tl.load(ptr + offs, mask=mask, other=0.)
    offs += N
    return a1, a2, tl.load(ptr + offs, mask=mask, other=NEG_INF)


@triton.jit
def _load5(ptr, offs, N, mask):
    """A state (a1, a2, d1, d2, p) stored as five planes of N values (empty where masked)."""
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
def _store3(ptr, offs, N, mask, a1, a2, p):
    tl.store(ptr + offs, a1, mask=mask)
    offs += N
    tl.store(ptr + offs, a2, mask=mask)
    offs += N
    tl.store(ptr + offs, p, mask=mask)


@triton.jit
def _store5(ptr, offs, N, mask, a1, a2, d1, d2, p):
    _store3(ptr, offs, N, mask, a1, a2, d1)
    offs += 3 * N
    tl.store(ptr + offs, d2, mask=mask)
    offs += N
    tl.store(ptr + offs, p, mask=mask)


@triton.jit
def _total(e, x1, x2):
    """State (a1, a2, p) of the sum over rows of e^{e}·(x1, x2), for (L, BLOCK_C) tiles."""
    p = tl.max(e, axis=0)
    wt = tl.exp(e - p[None, :])
    return tl.sum(wt * x1, axis=0), tl.sum(wt * x2, axis=0), p


@triton.jit
def _total_dist(e, dist, x1, x2):
    """``_total`` with the distance sums (d1, d2) = Σ dist·e^{e}·(x1, x2): state (a1, a2, d1, d2, p)."""
    p = tl.max(e, axis=0)
    wt = tl.exp(e - p[None, :])
    t1 = wt * x1
    t2 = wt * x2
    return tl.sum(t1, axis=0), tl.sum(t2, axis=0), tl.sum(dist * t1, axis=0), tl.sum(dist * t2, axis=0), p


@triton.jit
def _exclusive(c1, c2, cp, key, x1, x2, mask, w, rows):
    """Exclusive states (a1, a2, p) of every row of a chunk: ``key``, ``x1``, ``x2`` hold the token BEFORE
    each row (masked: no token), and row 0 takes the state (c1, c2, cp) entering the chunk."""
    is0 = (rows == 0)[:, None]
    e1 = tl.where(is0, c1[None, :], x1)
    e2 = tl.where(is0, c2[None, :], x2)
    ep = tl.where(is0, cp[None, :], tl.where(mask, key, NEG_INF))
    a1, a2, p, _ = tl.associative_scan((e1, e2, ep, tl.zeros_like(e1) + w[None, :]), 0, combine2)
    return a1, a2, p


@triton.jit
def _exclusive_dist(c1, c2, cd1, cd2, cp, key, x1, x2, mask, w, rows):
    """``_exclusive`` with distance sums: the entering state is (c1, c2, cd1, cd2, cp); returns
    (a1, a2, d1, d2, p)."""
    is0 = (rows == 0)[:, None]
    zero = tl.zeros_like(x1)
    e1 = tl.where(is0, c1[None, :], x1)
    e2 = tl.where(is0, c2[None, :], x2)
    f1 = tl.where(is0, cd1[None, :], zero)
    f2 = tl.where(is0, cd2[None, :], zero)
    ep = tl.where(is0, cp[None, :], tl.where(mask, key, NEG_INF))
    a1, a2, d1, d2, p, _, _ = tl.associative_scan(
        (e1, e2, f1, f2, ep, zero + w[None, :], zero + 1.), 0, combine2_dist)
    return a1, a2, d1, d2, p


@triton.jit
def _chunk_program(n_chunks, C, L: tl.constexpr, BLOCK_C: tl.constexpr):
    """(batch, chunk, channel lanes, lane mask, rows, offsets of this chunk's summaries) of a chunk program."""
    pid = tl.program_id(0)
    b = (pid // n_chunks).to(tl.int64)
    j = pid % n_chunks
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    return b, j, offs_c, offs_c < C, tl.arange(0, L), (b * n_chunks + j) * C + offs_c


@triton.jit
def _fwd_totals_kernel(
        w_ptr, k_ptr, v_ptr, tot_ptr,
        T, C, H, W, SPLIT, n_chunks, N,
        L: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Chunk totals of e^{k}·(v, 1): states (a1, a2, p), left-to-right then right-to-left, 6 planes of N."""
    b, j, offs_c, c_mask, rows, offs_s = _chunk_program(n_chunks, C, L, BLOCK_C)
    w = tl.load(w_ptr + offs_c, mask=c_mask, other=0.)
    offs, mask = _steps(b * T, j * L + rows, offs_c, c_mask, T, H, W, SPLIT, C)
    key = tl.where(mask, _load(k_ptr, offs, mask), NEG_INF)
    val = _load(v_ptr, offs, mask)
    one = mask.to(tl.float32)
    r = rows.to(tl.float32)[:, None]
    a1, a2, p = _total(key - (L - 1 - r) * w[None, :], val, one)  # seen from the chunk's last position
    _store3(tot_ptr, offs_s, N, c_mask, a1, a2, p)
    a1, a2, p = _total(key - r * w[None, :], val, one)  # seen from its first
    _store3(tot_ptr + 3 * N, offs_s, N, c_mask, a1, a2, p)


@triton.jit
def _carry_kernel(
        w_ptr, tot_ptr, carry_ptr,
        C, n_chunks, N,
        L: tl.constexpr, CB: tl.constexpr, BLOCK_C: tl.constexpr,
        REVERSE: tl.constexpr, WITH_DIST: tl.constexpr,
):
    """The state entering every chunk of one direction (chunks in reverse order if REVERSE): an exclusive
    scan of the chunk totals, CB chunks at a time. States are planes (a1, a2, p), or (a1, a2, d1, d2, p)
    WITH_DIST, of N values, at ``tot_ptr`` (chunk totals) and ``carry_ptr`` (result)."""
    b = tl.program_id(0).to(tl.int64)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = offs_c < C
    w = tl.load(w_ptr + offs_c, mask=c_mask, other=0.)
    rows = tl.arange(0, CB)
    zero = tl.zeros([BLOCK_C], dtype=tl.float32)
    s1, s2, sd1, sd2, sp = zero, zero, zero, zero, tl.full([BLOCK_C], NEG_INF, dtype=tl.float32)
    zero2 = tl.zeros([CB, BLOCK_C], dtype=tl.float32)
    for start in range(0, n_chunks, CB):
        # element r is the chunk of scan step start + r - 1; element 0 is the state carried so far
        steps = start + rows
        ok = (steps >= 1) & (steps <= n_chunks)
        if REVERSE:
            src = n_chunks - steps
        else:
            src = steps - 1
        offs = (b * n_chunks + tl.where(ok, src, 0))[:, None] * C + offs_c[None, :]
        mask = ok[:, None] & c_mask[None, :]
        if WITH_DIST:
            x1, x2, f1, f2, xp = _load5(tot_ptr, offs, N, mask)
        else:
            x1, x2, xp = _load3(tot_ptr, offs, N, mask)
            f1, f2 = zero2, zero2
        is0 = (rows == 0)[:, None]
        x1 = tl.where(is0, s1[None, :], x1)
        x2 = tl.where(is0, s2[None, :], x2)
        f1 = tl.where(is0, sd1[None, :], f1)
        f2 = tl.where(is0, sd2[None, :], f2)
        xp = tl.where(is0, sp[None, :], xp)
        a1, a2, d1, d2, p, _, _ = tl.associative_scan(
            (x1, x2, f1, f2, xp, zero2 + L * w[None, :], zero2 + L), 0, combine2_dist)

        ok = steps < n_chunks
        if REVERSE:
            dst = n_chunks - 1 - steps
        else:
            dst = steps
        offs = (b * n_chunks + tl.where(ok, dst, 0))[:, None] * C + offs_c[None, :]
        mask = ok[:, None] & c_mask[None, :]
        if WITH_DIST:
            _store5(carry_ptr, offs, N, mask, a1, a2, d1, d2, p)
        else:
            _store3(carry_ptr, offs, N, mask, a1, a2, p)

        # the state entering the next block: this block's last exclusive state plus its last chunk
        last = start + CB - 1
        ok = last < n_chunks
        if REVERSE:
            src = n_chunks - 1 - last
        else:
            src = last
        offs = (b * n_chunks + tl.where(ok, src, 0)) * C + offs_c
        if WITH_DIST:
            t1, t2, td1, td2, tp = _load5(tot_ptr, offs, N, c_mask & ok)
        else:
            t1, t2, tp = _load3(tot_ptr, offs, N, c_mask & ok)
            td1, td2 = zero, zero
        s1, s2, sd1, sd2, sp, _, _ = combine2_dist(
            last_row(a1, rows, CB), last_row(a2, rows, CB), last_row(d1, rows, CB), last_row(d2, rows, CB),
            last_row(p, rows, CB), zero, zero, t1, t2, td1, td2, tp, L * w, zero + L)


@triton.jit
def _fwd_finish_kernel(
        w_ptr, u_ptr, k_ptr, v_ptr, carry_ptr, y_ptr, lse_ptr,
        T, C, H, W, SPLIT, n_chunks, N,
        L: tl.constexpr, BLOCK_C: tl.constexpr, WITH_LSE: tl.constexpr,
):
    """y = (left + right + bonus) as num / den (stored in y's dtype), and log den if WITH_LSE, for every
    token of the chunk."""
    b, j, offs_c, c_mask, rows, offs_s = _chunk_program(n_chunks, C, L, BLOCK_C)
    w = tl.load(w_ptr + offs_c, mask=c_mask, other=0.)
    u = tl.load(u_ptr + offs_c, mask=c_mask, other=0.)
    row0 = b * T
    t0 = j * L

    # left to right: element r is token t0 + r - 1
    offs, mask = _steps(row0, t0 + rows - 1, offs_c, c_mask, T, H, W, SPLIT, C)
    c1, c2, cp = _load3(carry_ptr, offs_s, N, c_mask)
    a1, a2, p = _exclusive(c1, c2, cp, _load(k_ptr, offs, mask), _load(v_ptr, offs, mask),
                           mask.to(tl.float32), mask, w, rows)
    ratio_l, ld_l = ratio_and_log(a1, a2, p)
    # right to left on the reversed chunk: row r is token t0 + L - 1 - r, element r is token t0 + L - r
    offs, mask = _steps(row0, t0 + L - rows, offs_c, c_mask, T, H, W, SPLIT, C)
    c1, c2, cp = _load3(carry_ptr + 3 * N, offs_s, N, c_mask)
    a1, a2, p = _exclusive(c1, c2, cp, _load(k_ptr, offs, mask), _load(v_ptr, offs, mask),
                           mask.to(tl.float32), mask, w, rows)
    ratio_r, ld_r = ratio_and_log(tl.flip(a1, 0), tl.flip(a2, 0), tl.flip(p, 0))

    offs, mask = _steps(row0, t0 + rows, offs_c, c_mask, T, H, W, SPLIT, C)
    key = _load(k_ptr, offs, mask)
    ld_d = u[None, :] + key
    m = tl.maximum(tl.maximum(ld_l, ld_r), ld_d)
    e_l = tl.exp(ld_l - m)
    e_r = tl.exp(ld_r - m)
    e_d = tl.exp(ld_d - m)
    den = e_l + e_r + e_d
    y = (ratio_l * e_l + ratio_r * e_r + _load(v_ptr, offs, mask) * e_d) / den
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)
    if WITH_LSE:
        tl.store(lse_ptr + offs, m + tl.log(den), mask=mask)


@triton.jit
def _bwd_totals_kernel(
        w_ptr, k_ptr, v_ptr, y_ptr, lse_ptr, gy_ptr, tot_ptr,
        T, C, H, W, SPLIT, n_chunks, N,
        L: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Chunk totals for the backward, 16 planes of N: per direction (left-to-right first) the output
    side (a1, a2, p) of e^{q}·(gy, gy·y), q = -log den, then the input side (a1, a2, d1, d2, p) of
    e^{k}·(v, 1) with its distance sums."""
    b, j, offs_c, c_mask, rows, offs_s = _chunk_program(n_chunks, C, L, BLOCK_C)
    w = tl.load(w_ptr + offs_c, mask=c_mask, other=0.)[None, :]
    offs, mask = _steps(b * T, j * L + rows, offs_c, c_mask, T, H, W, SPLIT, C)
    key = tl.where(mask, _load(k_ptr, offs, mask), NEG_INF)
    q = tl.where(mask, -_load(lse_ptr, offs, mask), NEG_INF)
    gy = _load(gy_ptr, offs, mask)
    gyy = gy * _load(y_ptr, offs, mask)
    val = _load(v_ptr, offs, mask)
    one = mask.to(tl.float32)
    r = rows.to(tl.float32)[:, None] + tl.zeros_like(val)
    for direction in tl.static_range(2):
        if direction == 0:  # distances to the chunk's last position, then to its first
            dist = L - 1 - r
        else:
            dist = r
        a1, a2, p = _total(q - dist * w, gy, gyy)
        _store3(tot_ptr + 8 * direction * N, offs_s, N, c_mask, a1, a2, p)
        a1, a2, d1, d2, p = _total_dist(key - dist * w, dist, val, one)
        _store5(tot_ptr + (8 * direction + 3) * N, offs_s, N, c_mask, a1, a2, d1, d2, p)


@triton.jit
def _bwd_terms(carry_ptr, offs_s, N, c_mask, k_ptr, v_ptr, y_ptr, lse_ptr, gy_ptr,
               row0, t_row, t_prev, offs_c, T, H, W, SPLIT, C, w, rows):
    """One direction's contributions at rows of scan steps ``t_row`` (``t_prev``: the step before each):
    (s1, s2) (L, BLOCK_C) = Σ_t W_ti e^{k_i}·(gy_t, gy_t·y_t) / den_t over that side's tokens t, and
    the row sum of -gy·e^{q}·(D_num - y·D_den) (BLOCK_C,), this side's part of gw."""
    offs, mask = _steps(row0, t_prev, offs_c, c_mask, T, H, W, SPLIT, C)
    gy = _load(gy_ptr, offs, mask)
    c1, c2, cp = _load3(carry_ptr, offs_s, N, c_mask)
    g1, g2, pg = _exclusive(c1, c2, cp, -_load(lse_ptr, offs, mask), gy, gy * _load(y_ptr, offs, mask),
                            mask, w, rows)
    c1, c2, cd1, cd2, cp = _load5(carry_ptr + 3 * N, offs_s, N, c_mask)
    a1, a2, d1, d2, pa = _exclusive_dist(c1, c2, cd1, cd2, cp, _load(k_ptr, offs, mask),
                                         _load(v_ptr, offs, mask), mask.to(tl.float32), mask, w, rows)

    offs, mask = _steps(row0, t_row, offs_c, c_mask, T, H, W, SPLIT, C)
    e_g = tl.where(mask, tl.exp(pg + _load(k_ptr, offs, mask)), 0.)  # <= 1: sums of softmax weights
    y = _load(y_ptr, offs, mask)
    gw_terms = _load(gy_ptr, offs, mask) * tl.exp(pa - _load(lse_ptr, offs, mask)) * (d1 - y * d2)
    return g1 * e_g, g2 * e_g, -tl.sum(tl.where(mask, gw_terms, 0.), axis=0)


@triton.jit
def _bwd_finish_kernel(
        w_ptr, u_ptr, k_ptr, v_ptr, y_ptr, lse_ptr, gy_ptr, carry_ptr,
        gk_ptr, gv_ptr, gw_ptr, gu_ptr,
        T, C, H, W, SPLIT, n_chunks, N,
        L: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """gv_i = Σ_t W_ti e^{k_i} gy_t / den_t and gk_i = v_i·gv_i - Σ_t W_ti e^{k_i} gy_t y_t / den_t (bonus
    term included), and this chunk's partials of gw and gu = Σ e^{u+k-log den} gy (v - y)."""
    b, j, offs_c, c_mask, rows, offs_s = _chunk_program(n_chunks, C, L, BLOCK_C)
    w = tl.load(w_ptr + offs_c, mask=c_mask, other=0.)
    u = tl.load(u_ptr + offs_c, mask=c_mask, other=0.)
    row0 = b * T
    t0 = j * L

    s1, s2, gw = _bwd_terms(carry_ptr, offs_s, N, c_mask, k_ptr, v_ptr, y_ptr, lse_ptr, gy_ptr,
                            row0, t0 + rows, t0 + rows - 1, offs_c, T, H, W, SPLIT, C, w, rows)
    # right to left on the reversed chunk, flipped back to token order
    r1, r2, gw_r = _bwd_terms(carry_ptr + 8 * N, offs_s, N, c_mask, k_ptr, v_ptr, y_ptr, lse_ptr, gy_ptr,
                              row0, t0 + L - 1 - rows, t0 + L - rows, offs_c, T, H, W, SPLIT, C, w, rows)
    s1 += tl.flip(r1, 0)
    s2 += tl.flip(r2, 0)

    offs, mask = _steps(row0, t0 + rows, offs_c, c_mask, T, H, W, SPLIT, C)
    val = _load(v_ptr, offs, mask)
    y = _load(y_ptr, offs, mask)
    gy = _load(gy_ptr, offs, mask)
    e_d = tl.where(mask, tl.exp(u[None, :] + _load(k_ptr, offs, mask) - _load(lse_ptr, offs, mask)), 0.)
    s1 += e_d * gy
    s2 += e_d * gy * y
    tl.store(gv_ptr + offs, s1, mask=mask)
    tl.store(gk_ptr + offs, val * s1 - s2, mask=mask)
    tl.store(gw_ptr + offs_s, gw + gw_r, mask=c_mask)
    tl.store(gu_ptr + offs_s, tl.sum(e_d * gy * (val - y), axis=0), mask=c_mask)


class _Plan:
    """Launch geometry shared by the forward and backward: chunk length, chunk count, blocks, warps."""

    def __init__(self, B: int, T: int, C: int, chunk_len: Optional[int], carry_block: Optional[int]):
        self.L = chunk_len or max(2, min(CHUNK_LEN, triton.next_power_of_2(T)))
        self.n_chunks = triton.cdiv(T, self.L)
        self.CB = carry_block or max(2, min(CARRY_BLOCK, triton.next_power_of_2(self.n_chunks)))
        self.block_c = block_c(C)
        self.n_cb = triton.cdiv(C, self.block_c)
        self.N = B * self.n_chunks * C
        self.chunk_grid = (B * self.n_chunks, self.n_cb)
        self.line_grid = (B, self.n_cb)
        self.warps = _num_warps(self.L, self.block_c)
        self.carry_warps = _num_warps(self.CB, self.block_c)

    def carries(self, w: torch.Tensor, totals: torch.Tensor, carry: torch.Tensor, C: int, with_dist: bool):
        """Launch the carry scan of one direction for the planes at ``totals`` into ``carry`` (views)."""
        for reverse, (tot, car) in enumerate(zip(totals, carry)):
            _carry_kernel[self.line_grid](w, tot, car, C, self.n_chunks, self.N, L=self.L, CB=self.CB,
                                          BLOCK_C=self.block_c, REVERSE=bool(reverse), WITH_DIST=with_dist,
                                          num_warps=self.carry_warps)


def bi_wkv_triton_forward(
        w: torch.Tensor,
        u: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        grid_hw: Tuple[int, int],
        split: int,
        with_log_den: bool = True,
        chunk_len: Optional[int] = None,
        carry_block: Optional[int] = None,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Launch the forward: chunk totals, carries of both directions, chunk finish.

    Args:
        w, u: (C,) float32; k, v: (B, T, C) contiguous fp32, fp16 or bf16.
        grid_hw: (H, W) of the token grid, H * W = T.
        split: channels below it scan row-major, the others column-major.
        with_log_den: training: y in float32 and the log denominators, both kept for the backward.
            Inference (False): y in the dtype of k and no log denominators, the least memory traffic.
        chunk_len, carry_block: powers of two overriding CHUNK_LEN and CARRY_BLOCK (tests).

    Returns:
        y: (B, T, C) output (float32, or k's dtype without log_den); log_den: (B, T, C) float32 log
        denominators, or None.
    """
    B, T, C = k.shape
    plan = _Plan(B, T, C, chunk_len, carry_block)
    y = torch.empty(B, T, C, device=k.device, dtype=torch.float32 if with_log_den else k.dtype)
    log_den = torch.empty_like(y) if with_log_den else y
    totals = torch.empty(6, B, plan.n_chunks, C, device=k.device, dtype=torch.float32)
    carry = torch.empty_like(totals)
    layout = (T, C, *grid_hw, split, plan.n_chunks, plan.N)
    meta = dict(L=plan.L, BLOCK_C=plan.block_c, num_warps=plan.warps)
    _fwd_totals_kernel[plan.chunk_grid](w, k, v, totals, *layout, **meta)
    plan.carries(w, (totals[:3], totals[3:]), (carry[:3], carry[3:]), C, with_dist=False)
    _fwd_finish_kernel[plan.chunk_grid](w, u, k, v, carry, y, log_den, *layout, WITH_LSE=with_log_den, **meta)
    return y, (log_den if with_log_den else None)


def bi_wkv_triton_backward(
        w: torch.Tensor,
        u: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        y: torch.Tensor,
        log_den: torch.Tensor,
        gy: torch.Tensor,
        grid_hw: Tuple[int, int],
        split: int,
        chunk_len: Optional[int] = None,
        carry_block: Optional[int] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the backward: chunk totals of both sides, their carries, chunk finish.

    Args:
        w, u: (C,) float32; k, v, gy: (B, T, C) contiguous; y, log_den: (B, T, C) float32 from
            the forward; grid_hw, split, chunk_len, carry_block: as in the forward.

    Returns:
        gw, gu: (C,) float32; gk, gv: (B, T, C) float32.
    """
    B, T, C = k.shape
    plan = _Plan(B, T, C, chunk_len, carry_block)
    gk = torch.empty(B, T, C, device=k.device, dtype=torch.float32)
    gv = torch.empty_like(gk)
    gw = torch.empty(B * plan.n_chunks, C, device=k.device, dtype=torch.float32)
    gu = torch.empty_like(gw)
    totals = torch.empty(16, B, plan.n_chunks, C, device=k.device, dtype=torch.float32)
    carry = torch.empty_like(totals)
    layout = (T, C, *grid_hw, split, plan.n_chunks, plan.N)
    meta = dict(L=plan.L, BLOCK_C=plan.block_c, num_warps=plan.warps)
    _bwd_totals_kernel[plan.chunk_grid](w, k, v, y, log_den, gy, totals, *layout, **meta)
    plan.carries(w, (totals[0:3], totals[8:11]), (carry[0:3], carry[8:11]), C, with_dist=False)
    plan.carries(w, (totals[3:8], totals[11:16]), (carry[3:8], carry[11:16]), C, with_dist=True)
    _bwd_finish_kernel[plan.chunk_grid](w, u, k, v, y, log_den, gy, carry, gk, gv, gw, gu, *layout, **meta)
    return gw.sum(0), gu.sum(0), gk, gv
