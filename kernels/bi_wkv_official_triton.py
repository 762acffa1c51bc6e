"""Triton kernels of the official Bi-WKV's segment-local terms (``kernels.bi_wkv_official``).

The official operator is the Eq. 5 operator (``bi_wkv_triton``) with bonus u + w, scaled by e^{-w}, plus
two scans inside every segment of L = ceil(T / 32) tokens (t, i in the segment starting at s):

    Lin_t = Σ_{s<=i<t} e^{-(t-i-1)w} x_i   (decay w, exclusive),
    G_t   = Σ_{s<i<=t} e^{(t-i)w} x_i      (decay -w, inclusive, the segment start left out),

weighted by α = 1 - e^{-w} and β = 1 - e^w, with x_i = e^{k_i}(v_i, 1). One program per (batch, segment,
channel block) walks its segment in tiles of BT tokens: each tile is one ``tl.associative_scan`` of the
log-space states of ``triton_scan`` (element 0 the state carried from the tile before, element r the token
before row r, so row r is the exclusive state of token r), and the carry moves on by the tile's last row.
At B = 1, C = 192 that is 32 x 6 = 192 programs whatever T; a segment of L tokens takes ceil(L / BT)
dependent steps (L = 128 at T = 4096).

- ``_local_fwd_kernel``: y = (y5 + ν) / (1 + ρ) and log den = log den5 - w + log(1 + ρ), with
  (ν, ρ) = (α Lin + β G)·e^{w - log den5}, from the Eq. 5 forward's y5 and log den5.
- ``_local_bwd_kv_kernel``: the same two scans right to left (tiles in reversed token order) over
  e^{-log den}·(gy, gy·y), which add e^{k_i} Σ_t Loc_ti q_t (..) to gv and gk.
- ``_local_bwd_w_kernel``: the left-to-right scans with distance sums (P, Q), whose combination
  e^{-w} Lin - e^w G - α P + β Q is the w-derivative of the local sums; per-program partials of
  Σ_t q_t (∂N_t - y_t ∂D_t), summed on the host.

No program re-reads what it stored, every load and store is masked, offsets are int64.
"""
from typing import Tuple

import torch
import triton
import triton.language as tl

from .bi_wkv_triton import _exclusive, _exclusive_dist, _load, _num_warps, block_c
from .interpreter import interpreting, vectorise_interpreter_scans
from .triton_scan import NEG_INF, combine2, combine2_dist, last_row

if interpreting():
    vectorise_interpreter_scans()

#: Tokens per tile of a segment.
TILE = 32


@triton.jit
def _segment_program(n_seg, C, SEG, T, BLOCK_C: tl.constexpr):
    """(first token of the batch row, segment start, segment end, channel lanes, lane mask)."""
    pid = tl.program_id(0)
    b = (pid // n_seg).to(tl.int64)
    s0 = (pid % n_seg) * SEG
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    return b * T, s0, tl.minimum(s0 + SEG, T), offs_c, offs_c < C


@triton.jit
def _tile(row0, t, s0, end, offs_c, c_mask, C):
    """Offsets and mask of the (BT, BLOCK_C) tile of tokens t (BT,), masked outside [s0, end)."""
    valid = (t >= s0) & (t < end)
    offs = (row0 + tl.where(valid, t, 0)).to(tl.int64)[:, None] * C + offs_c[None, :]
    return offs, valid[:, None] & c_mask[None, :]


@triton.jit
def _vec(ptr, offs_c, c_mask):
    return tl.load(ptr + offs_c, mask=c_mask, other=0.)


@triton.jit
def _local_fwd_kernel(
        w_ptr, alpha_ptr, beta_ptr, k_ptr, v_ptr, y5_ptr, lse5_ptr, y_ptr, lse_ptr,
        T, C, SEG, n_seg,
        BT: tl.constexpr, BLOCK_C: tl.constexpr,
):
    row0, s0, end, offs_c, c_mask = _segment_program(n_seg, C, SEG, T, BLOCK_C)
    w = _vec(w_ptr, offs_c, c_mask)
    alpha = _vec(alpha_ptr, offs_c, c_mask)[None, :]
    beta = _vec(beta_ptr, offs_c, c_mask)[None, :]
    rows = tl.arange(0, BT)
    zero = tl.zeros([BLOCK_C], dtype=tl.float32)
    l1, l2, lp = zero, zero, zero + NEG_INF  # Lin state entering the tile
    g1, g2, gp = zero, zero, zero + NEG_INF  # G state of the token before the tile
    for start in range(0, SEG, BT):
        t = s0 + start + rows
        offs, mask = _tile(row0, t - 1, s0, end, offs_c, c_mask, C)  # element r: the token before row r
        key, val = _load(k_ptr, offs, mask), _load(v_ptr, offs, mask)
        a1, a2, ap = _exclusive(l1, l2, lp, key, val, mask.to(tl.float32), mask, w, rows)
        after_start = mask & (t - 1 > s0)[:, None]
        e1, e2, ep = _exclusive(g1, g2, gp, key, val, after_start.to(tl.float32), after_start, -w, rows)
        offs, mask = _tile(row0, t, s0, end, offs_c, c_mask, C)
        key, val = _load(k_ptr, offs, mask), _load(v_ptr, offs, mask)
        own = mask & (t > s0)[:, None]
        b1, b2, bp, _ = combine2(e1, e2, ep, 0., tl.where(own, val, 0.), own.to(tl.float32),
                                 tl.where(own, key, NEG_INF), -w[None, :])

        lse5 = _load(lse5_ptr, offs, mask)
        off = w[None, :] - lse5
        ea = alpha * tl.exp(ap + off)
        eb = beta * tl.exp(bp + off)
        rho = tl.where(mask, ea * a2 + eb * b2, 0.)
        y = (_load(y5_ptr, offs, mask) + ea * a1 + eb * b1) / (1. + rho)
        tl.store(y_ptr + offs, y, mask=mask)
        tl.store(lse_ptr + offs, lse5 - w[None, :] + tl.log(1. + rho), mask=mask)

        # the carries: Lin through the tile's last token, G at it
        last_key = last_row(tl.where(mask, key, NEG_INF), rows, BT)
        l1, l2, lp, _ = combine2(last_row(a1, rows, BT), last_row(a2, rows, BT), last_row(ap, rows, BT), zero,
                                 last_row(val, rows, BT), last_row(mask.to(tl.float32), rows, BT), last_key, w)
        g1, g2, gp = last_row(b1, rows, BT), last_row(b2, rows, BT), last_row(bp, rows, BT)


@triton.jit
def _local_bwd_kv_kernel(
        w_ptr, alpha_ptr, beta_ptr, k_ptr, v_ptr, y_ptr, lse_ptr, gy_ptr, gk5_ptr, gv5_ptr, gk_ptr, gv_ptr,
        T, C, SEG, n_seg,
        BT: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """gv = gv5 + e^{k_i} Σ_t Loc_ti q_t gy_t, gk = gk5 + v_i·(that) - e^{k_i} Σ_t Loc_ti q_t gy_t y_t, with
    Loc_ti = α e^{-(t-i-1)w} (t > i) + β e^{(t-i)w} (t >= i > s): the local scans right to left."""
    row0, s0, end, offs_c, c_mask = _segment_program(n_seg, C, SEG, T, BLOCK_C)
    w = _vec(w_ptr, offs_c, c_mask)
    alpha = _vec(alpha_ptr, offs_c, c_mask)[None, :]
    beta = _vec(beta_ptr, offs_c, c_mask)[None, :]
    rows = tl.arange(0, BT)
    zero = tl.zeros([BLOCK_C], dtype=tl.float32)
    l1, l2, lp = zero, zero, zero + NEG_INF
    g1, g2, gp = zero, zero, zero + NEG_INF
    for start in range(0, SEG, BT):
        t = end - 1 - start - rows  # row r: token t, right to left
        offs, mask = _tile(row0, t + 1, s0, end, offs_c, c_mask, C)  # element r: the token after row r
        q = -_load(lse_ptr, offs, mask)
        gy = _load(gy_ptr, offs, mask)
        gyy = gy * _load(y_ptr, offs, mask)
        a1, a2, ap = _exclusive(l1, l2, lp, q, gy, gyy, mask, w, rows)
        e1, e2, ep = _exclusive(g1, g2, gp, q, gy, gyy, mask, -w, rows)
        offs, mask = _tile(row0, t, s0, end, offs_c, c_mask, C)
        q = tl.where(mask, -_load(lse_ptr, offs, mask), NEG_INF)
        gy = _load(gy_ptr, offs, mask)
        gyy = gy * _load(y_ptr, offs, mask)
        b1, b2, bp, _ = combine2(e1, e2, ep, 0., gy, gyy, q, -w[None, :])

        key = _load(k_ptr, offs, mask)
        ea = alpha * tl.exp(ap + key)
        eb = tl.where((t > s0)[:, None], beta * tl.exp(bp + key), 0.)
        s1 = ea * a1 + eb * b1
        s2 = ea * a2 + eb * b2
        tl.store(gv_ptr + offs, _load(gv5_ptr, offs, mask) + s1, mask=mask)
        tl.store(gk_ptr + offs, _load(gk5_ptr, offs, mask) + _load(v_ptr, offs, mask) * s1 - s2, mask=mask)

        l1, l2, lp, _ = combine2(last_row(a1, rows, BT), last_row(a2, rows, BT), last_row(ap, rows, BT), zero,
                                 last_row(gy, rows, BT), last_row(gyy, rows, BT), last_row(q, rows, BT), w)
        g1, g2, gp = last_row(b1, rows, BT), last_row(b2, rows, BT), last_row(bp, rows, BT)


@triton.jit
def _local_bwd_w_kernel(
        w_ptr, alpha_ptr, beta_ptr, k_ptr, v_ptr, y_ptr, lse_ptr, gy_ptr, gw_ptr,
        T, C, SEG, n_seg,
        BT: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """This segment's Σ_t q_t gy_t (∂N_t - y_t ∂D_t), ∂ = e^{-w} Lin - e^w G - α P + β Q of x = e^k (v, 1),
    P and Q the distance sums of Lin (t-i-1) and G (t-i)."""
    row0, s0, end, offs_c, c_mask = _segment_program(n_seg, C, SEG, T, BLOCK_C)
    w = _vec(w_ptr, offs_c, c_mask)
    alpha = _vec(alpha_ptr, offs_c, c_mask)[None, :]
    beta = _vec(beta_ptr, offs_c, c_mask)[None, :]
    rows = tl.arange(0, BT)
    zero = tl.zeros([BLOCK_C], dtype=tl.float32)
    l1, l2, ld1, ld2, lp = zero, zero, zero, zero, zero + NEG_INF
    g1, g2, gd1, gd2, gp = zero, zero, zero, zero, zero + NEG_INF
    gw = zero
    for start in range(0, SEG, BT):
        t = s0 + start + rows
        offs, mask = _tile(row0, t - 1, s0, end, offs_c, c_mask, C)
        key, val = _load(k_ptr, offs, mask), _load(v_ptr, offs, mask)
        a1, a2, ad1, ad2, ap = _exclusive_dist(l1, l2, ld1, ld2, lp, key, val, mask.to(tl.float32), mask, w, rows)
        after_start = mask & (t - 1 > s0)[:, None]
        e1, e2, ed1, ed2, ep = _exclusive_dist(g1, g2, gd1, gd2, gp, key, val, after_start.to(tl.float32),
                                               after_start, -w, rows)
        offs, mask = _tile(row0, t, s0, end, offs_c, c_mask, C)
        key, val = _load(k_ptr, offs, mask), _load(v_ptr, offs, mask)
        own = mask & (t > s0)[:, None]
        ones = own.to(tl.float32)
        b1, b2, bd1, bd2, bp, _, _ = combine2_dist(
            e1, e2, ed1, ed2, ep, 0., 0., tl.where(own, val, 0.), ones, 0. * ones, 0. * ones,
            tl.where(own, key, NEG_INF), -w[None, :], ones)

        y = _load(y_ptr, offs, mask)
        q = -_load(lse_ptr, offs, mask)  # gy_t / den_t = gy_t e^{q_t}, taken into the exponents
        wc = w[None, :]
        lin = tl.exp(ap + q - wc) * (a1 - y * a2) - alpha * tl.exp(ap + q) * (ad1 - y * ad2)
        grow = -tl.exp(bp + q + wc) * (b1 - y * b2) + beta * tl.exp(bp + q) * (bd1 - y * bd2)
        gw += tl.sum(tl.where(mask, _load(gy_ptr, offs, mask) * (lin + grow), 0.), axis=0)

        last_key = last_row(tl.where(mask, key, NEG_INF), rows, BT)
        lm = last_row(mask.to(tl.float32), rows, BT)
        l1, l2, ld1, ld2, lp, _, _ = combine2_dist(
            last_row(a1, rows, BT), last_row(a2, rows, BT), last_row(ad1, rows, BT), last_row(ad2, rows, BT),
            last_row(ap, rows, BT), zero, zero, last_row(val, rows, BT), lm, zero, zero, last_key, w, lm)
        g1, g2, gp = last_row(b1, rows, BT), last_row(b2, rows, BT), last_row(bp, rows, BT)
        gd1, gd2 = last_row(bd1, rows, BT), last_row(bd2, rows, BT)
    tl.store(gw_ptr + tl.program_id(0).to(tl.int64) * C + offs_c, gw, mask=c_mask)


def _launch(B: int, T: int, C: int, seg: int):
    n_seg = triton.cdiv(T, seg)
    bt = max(2, min(TILE, triton.next_power_of_2(seg)))
    bc = block_c(C)
    return (B * n_seg, triton.cdiv(C, bc)), n_seg, dict(BT=bt, BLOCK_C=bc, num_warps=_num_warps(bt, bc))


def _coefs(w: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    return -torch.expm1(-w), -torch.expm1(w)


def official_local_triton_forward(w, k, v, y5, log_den5, seg: int):
    """y, log den (B, T, C) fp32 of the official operator from the Eq. 5 forward's y5, log den5 (w: fp32
    (C,), all contiguous)."""
    B, T, C = k.shape
    grid, n_seg, meta = _launch(B, T, C, seg)
    y, log_den = torch.empty_like(y5), torch.empty_like(log_den5)
    _local_fwd_kernel[grid](w, *_coefs(w), k, v, y5, log_den5, y, log_den, T, C, seg, n_seg, **meta)
    return y, log_den


def official_local_triton_backward(w, k, v, y, log_den, gy, gk5, gv5, seg: int):
    """(gw_local (C,), gk, gv (B, T, C)) fp32: the local terms' gradients added to the Eq. 5 part's gk5, gv5."""
    B, T, C = k.shape
    grid, n_seg, meta = _launch(B, T, C, seg)
    alpha, beta = _coefs(w)
    gk, gv = torch.empty_like(gk5), torch.empty_like(gv5)
    _local_bwd_kv_kernel[grid](w, alpha, beta, k, v, y, log_den, gy, gk5, gv5, gk, gv, T, C, seg, n_seg, **meta)
    gw = torch.empty(B * n_seg, C, device=k.device, dtype=torch.float32)
    _local_bwd_w_kernel[grid](w, alpha, beta, k, v, y, log_den, gy, gw, T, C, seg, n_seg, **meta)
    return gw.sum(0), gk, gv
