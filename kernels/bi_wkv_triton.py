"""Bi-WKV Triton kernels: forward and backward as log-space recurrences along T.

One program owns one batch row and BLOCK_C channels (channel-last tensors, so every load is a
contiguous vector) and walks the sequence twice: right-to-left, then left-to-right. Each
direction carries an RWKV-4 style state (a, b, p) whose value is (a, b) * exp(p), updated with
p' = max(p - w, k_t) so no exponent ever overflows. The right-to-left pass parks its exclusive
state per position in the output buffers; the left-to-right pass combines both states with the
bonus term under one shared maximum. No subtraction of large terms; any T, any B and C.

Scan order is index arithmetic, never a copy: token t of the scan sits at grid position
(t % H, t // H) in column-major order, i.e. at row-major memory index (t % H) * W + t // H of the
channel-last (B, H*W, C) tensors. Each channel lane picks its own order: channels below SPLIT scan
row-major, the others column-major (SPLIT = C: raster; 0: column-major; C / 2: cross mode).

Backward: with q_t = -log den_t, the gradients of k and v are the same bidirectional scan over the
output side (keys q_t, values gy_t and gy_t * y_t). The gradient of w uses derivative carries
P_{t+1} = e^{-w} (P_t + A_t) of each forward scan. Batch partials of gw and gu are summed on the
host, so the kernels use no atomics.
"""
from typing import Tuple

import torch
import triton
import triton.language as tl

NEG_INF = tl.constexpr(-1.0e38)  # log of an empty sum: exp(NEG_INF - x) == 0 without inf - inf


def _block_c(C: int) -> int:
    """Channels per program: small blocks give B * C / 32 programs for the sequential T loop."""
    return min(32, triton.next_power_of_2(C))


@triton.jit
def _ratio_and_log(a, b, p):
    """(a / b, log(b * e^p)) of a state, with (0, NEG_INF) for an empty state."""
    nonempty = b > 0
    b_safe = tl.where(nonempty, b, 1.)
    return tl.where(nonempty, a / b_safe, 0.), tl.where(nonempty, p + tl.log(b_safe), NEG_INF)


@triton.jit
def _update(a, b, p, w, key, val_a, val_b):
    """Fold one token into a decayed log-space state: (a, b) * exp(p) -> e^{-w} (a, b) * exp(p)
    + e^{key} (val_a, val_b)."""
    p_new = tl.maximum(p - w, key)
    e_old = tl.exp(p - w - p_new)
    e_new = tl.exp(key - p_new)
    return a * e_old + e_new * val_a, b * e_old + e_new * val_b, p_new


@triton.jit
def _empty_state(BLOCK_C: tl.constexpr):
    """(a, b, p) of an empty sum for BLOCK_C channels."""
    zero = tl.zeros([BLOCK_C], dtype=tl.float32)
    return zero, zero, tl.full([BLOCK_C], NEG_INF, dtype=tl.float32)


@triton.jit
def _park_and_fold(a, b, p, w, k_ptr, v_ptr, ratio_ptr, log_ptr, offs, mask):
    """Store the exclusive state at ``offs`` as (num / den, log den), then fold that token in."""
    ratio, log_den = _ratio_and_log(a, b, p)
    tl.store(ratio_ptr + offs, ratio, mask=mask)
    tl.store(log_ptr + offs, log_den, mask=mask)
    key = tl.load(k_ptr + offs, mask=mask, other=0.).to(tl.float32)
    val = tl.load(v_ptr + offs, mask=mask, other=0.).to(tl.float32)
    return _update(a, b, p, w, key, val, 1.)


@triton.jit
def _fold(a1, a2, d1, d2, p, w, key, x1, x2, dx1, dx2):
    """As ``_update``, also carrying the distance-weighted sums D of the state: decay by e^{-w} and add
    the item e^{key}·(x1, x2) with its own distance sums (dx1, dx2), so D' = e^{-w}·(D + A) + e^{key}·dx
    (dx = 0 for a single token; the 2D column scans fold whole row sums)."""
    p_new = tl.maximum(p - w, key)
    e_old = tl.exp(p - w - p_new)
    e_new = tl.exp(key - p_new)
    return (a1 * e_old + x1 * e_new, a2 * e_old + x2 * e_new,
            (d1 + a1) * e_old + dx1 * e_new, (d2 + a2) * e_old + dx2 * e_new, p_new)


@triton.jit
def _token_offsets(row0, t, offs_c, H, W, SPLIT, C):
    """Memory offsets of scan step t for every channel lane: row-major lanes read token t, the
    lanes at or above SPLIT read the token at column-major step t."""
    col_major = (t % H) * W + t // H
    pos = tl.where(offs_c < SPLIT, t, col_major)
    return (row0 + pos) * C + offs_c


@triton.jit
def _bi_wkv_fwd_kernel(
        w_ptr, u_ptr, k_ptr, v_ptr, y_ptr, lse_ptr,
        T, C, H, W, SPLIT,
        BLOCK_C: tl.constexpr,
):
    pid_b = tl.program_id(0).to(tl.int64)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = offs_c < C
    w = tl.load(w_ptr + offs_c, mask=mask, other=0.).to(tl.float32)
    u = tl.load(u_ptr + offs_c, mask=mask, other=0.).to(tl.float32)
    row0 = pid_b * T

    # right-to-left: park the exclusive state of i > t as (num/den, log den) in y and lse
    a, b, p = _empty_state(BLOCK_C)
    for i in range(T):
        offs = _token_offsets(row0, T - 1 - i, offs_c, H, W, SPLIT, C)
        a, b, p = _park_and_fold(a, b, p, w, k_ptr, v_ptr, y_ptr, lse_ptr, offs, mask)

    # left-to-right: combine left state, parked right state and the bonus term
    a, b, p = _empty_state(BLOCK_C)
    for t in range(T):
        offs = _token_offsets(row0, t, offs_c, H, W, SPLIT, C)
        key = tl.load(k_ptr + offs, mask=mask, other=0.).to(tl.float32)
        val = tl.load(v_ptr + offs, mask=mask, other=0.).to(tl.float32)
        ratio_r = tl.load(y_ptr + offs, mask=mask, other=0.)
        ld_r = tl.load(lse_ptr + offs, mask=mask, other=NEG_INF)
        ratio_l, ld_l = _ratio_and_log(a, b, p)
        ld_d = u + key
        m = tl.maximum(tl.maximum(ld_l, ld_r), ld_d)
        e_l = tl.exp(ld_l - m)
        e_r = tl.exp(ld_r - m)
        e_d = tl.exp(ld_d - m)
        den = e_l + e_r + e_d
        num = ratio_l * e_l + ratio_r * e_r + val * e_d
        tl.store(y_ptr + offs, num / den, mask=mask)
        tl.store(lse_ptr + offs, m + tl.log(den), mask=mask)
        a, b, p = _update(a, b, p, w, key, val, 1.)


@triton.jit
def _bi_wkv_bwd_kernel(
        w_ptr, u_ptr, k_ptr, v_ptr, y_ptr, lse_ptr, gy_ptr,
        gk_ptr, gv_ptr, gw_ptr, gu_ptr,
        T, C, H, W, SPLIT,
        BLOCK_C: tl.constexpr,
):
    pid_b = tl.program_id(0).to(tl.int64)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = offs_c < C
    w = tl.load(w_ptr + offs_c, mask=mask, other=0.).to(tl.float32)
    u = tl.load(u_ptr + offs_c, mask=mask, other=0.).to(tl.float32)
    row0 = pid_b * T
    gw = tl.zeros([BLOCK_C], dtype=tl.float32)
    gu = tl.zeros([BLOCK_C], dtype=tl.float32)

    for direction in tl.static_range(2):  # 0: right-to-left, 1: left-to-right
        # output-side scan: sum_{t'} W e^{q_t'} (gy_t', gy_t' y_t')
        g1 = tl.zeros([BLOCK_C], dtype=tl.float32)
        g2 = tl.zeros([BLOCK_C], dtype=tl.float32)
        pg = tl.full([BLOCK_C], NEG_INF, dtype=tl.float32)
        # input-side scan with derivative carries for gw
        an = tl.zeros([BLOCK_C], dtype=tl.float32)
        ad = tl.zeros([BLOCK_C], dtype=tl.float32)
        dn = tl.zeros([BLOCK_C], dtype=tl.float32)
        dd = tl.zeros([BLOCK_C], dtype=tl.float32)
        pa = tl.full([BLOCK_C], NEG_INF, dtype=tl.float32)
        for i in range(T):
            if direction == 0:
                t = T - 1 - i
            else:
                t = i
            offs = _token_offsets(row0, t, offs_c, H, W, SPLIT, C)
            key = tl.load(k_ptr + offs, mask=mask, other=0.).to(tl.float32)
            val = tl.load(v_ptr + offs, mask=mask, other=0.).to(tl.float32)
            y = tl.load(y_ptr + offs, mask=mask, other=0.)
            q = -tl.load(lse_ptr + offs, mask=mask, other=0.)
            gy = tl.load(gy_ptr + offs, mask=mask, other=0.).to(tl.float32)

            e_g = tl.exp(pg + key)
            s1 = g1 * e_g
            s2 = g2 * e_g
            gw -= gy * tl.exp(q + pa) * (dn - y * dd)
            if direction == 0:
                tl.store(gv_ptr + offs, s1, mask=mask)
                tl.store(gk_ptr + offs, val * s1 - s2, mask=mask)
            else:
                e_d = tl.exp(u + key + q)
                s1 += e_d * gy
                s2 += e_d * gy * y
                gu += e_d * gy * (val - y)
                s1_r = tl.load(gv_ptr + offs, mask=mask, other=0.)
                sk_r = tl.load(gk_ptr + offs, mask=mask, other=0.)
                tl.store(gv_ptr + offs, s1 + s1_r, mask=mask)
                tl.store(gk_ptr + offs, val * s1 - s2 + sk_r, mask=mask)

            g1, g2, pg = _update(g1, g2, pg, w, q, gy, gy * y)
            an, ad, dn, dd, pa = _fold(an, ad, dn, dd, pa, w, key, val, 1., 0., 0.)

    offs_bc = pid_b * C + offs_c
    tl.store(gw_ptr + offs_bc, gw, mask=mask)
    tl.store(gu_ptr + offs_bc, gu, mask=mask)


def bi_wkv_triton_forward(
        w: torch.Tensor,
        u: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        grid_hw: Tuple[int, int],
        split: int,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward kernel.

    Args:
        w, u: (C,) float32; k, v: (B, T, C) contiguous fp32, fp16 or bf16.
        grid_hw: (H, W) of the token grid, H * W = T.
        split: channels below it scan row-major, the others column-major.

    Returns:
        y: (B, T, C) float32 output; log_den: (B, T, C) float32 log denominators.
    """
    B, T, C = k.shape
    y = torch.empty(B, T, C, device=k.device, dtype=torch.float32)
    log_den = torch.empty_like(y)
    block_c = _block_c(C)
    grid = (B, triton.cdiv(C, block_c))
    _bi_wkv_fwd_kernel[grid](w, u, k, v, y, log_den, T, C, *grid_hw, split, BLOCK_C=block_c)
    return y, log_den


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
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the backward kernel.

    Args:
        w, u: (C,) float32; k, v, gy: (B, T, C) contiguous; y, log_den: (B, T, C) float32 from
            the forward; grid_hw, split: as in the forward.

    Returns:
        gw, gu: (C,) float32; gk, gv: (B, T, C) float32.
    """
    B, T, C = k.shape
    gk = torch.empty(B, T, C, device=k.device, dtype=torch.float32)
    gv = torch.empty_like(gk)
    gw = torch.empty(B, C, device=k.device, dtype=torch.float32)
    gu = torch.empty_like(gw)
    block_c = _block_c(C)
    grid = (B, triton.cdiv(C, block_c))
    _bi_wkv_bwd_kernel[grid](w, u, k, v, y, log_den, gy, gk, gv, gw, gu, T, C, *grid_hw, split,
                             BLOCK_C=block_c)
    return gw.sum(0), gu.sum(0), gk, gv
