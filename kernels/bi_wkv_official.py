"""The official Vision-RWKV Bi-WKV: the arithmetic of the OpenGVLab CUDA kernels, with its exact gradient.

The official kernels (``cuda/wkv_cuda.cu``, used for the released checkpoints, and ``cuda_new/bi_wkv_kernel.cu``)
give each warp lane a segment of L = ceil(T / 32) tokens and do not compute Eq. 5 of the paper. For t in the
segment starting at s, the weight on token i (y_t = Σ_i W_ti e^{k_i} v_i / Σ_i W_ti e^{k_i}) is

    e^{-(i-t)w} (i > t),  e^{-(t-i)w} (i < s),  e^{-(t-i-1)w} (i = s < t),
    e^{-(t-i-1)w} + (1 - e^w) e^{(t-i)w} (s < i < t),  e^u + [t > s](1 - e^w) (i = t)

(``kernels.reference.official_weights``). That is Eq. 5 with the bonus u + w, scaled by e^{-w}, plus terms
local to the segment:

    W = e^{-w} E5(u + w) + α Lin + β G,   α = 1 - e^{-w},  β = 1 - e^w,
    Lin_ti = e^{-(t-i-1)w} for s <= i < t,   G_ti = e^{(t-i)w} for s < i <= t.

So the forward runs the Eq. 5 operator (Triton or PyTorch) with u + w and adds two scans inside every segment
(an exclusive one with decay w, an inclusive one with decay -w), kept in log-scaled form (``decay_scan``):

    y = (y5 + ν) / (1 + ρ),  log den = log den5 - w + log1p(ρ),  (ν, ρ) = (α Lin + β G)·(e^k v, e^k)·e^{w - log den5}.

The backward is the exact gradient of this forward (the official backward is not: its k and v gradients use
Eq. 5). With q_t = gy_t / den_t:

- the Eq. 5 part is the Eq. 5 backward with u + w and log den + w (which scales q by e^{-w}); the derivative of
  e^{-w} in front of E5 adds -Σ_{t≠i} e^{-w} E5_ti e^{k_i} q_t (v_i - y_t) = -(Σ gk5 - gu5) to gw;
- the local part: gv_i += e^{k_i} Σ_t Loc_ti q_t and gk_i += v_i·that - e^{k_i} Σ_t Loc_ti q_t y_t, by the same
  two scans run right to left on (gy, gy·y) with log-weights -log den; gw += Σ_t q_t (∂N_t - y_t ∂D_t) with
  ∂ = ∂/∂w of the local sums: e^{-w} Lin - e^w G - α P + β Q, where P, Q weigh each term by its distance
  (t-i-1 and t-i), a scan of the scan as in the Eq. 5 backward (no (t-i)·A - B differences).

The kernels' EPS = 1e-6 in the max-scaled denominator is left out: it changes y by about 1e-7 relative at
T >= 64 and at most about 5e-6 at T <= 32 (measured against a port of the kernel, ``tests/official_bi_wkv.py``).
"""
import math
from typing import Tuple

import torch
import torch.nn.functional as F

from .bi_wkv_torch import bi_wkv_torch_backward, bi_wkv_torch_forward, choose_chunk_len, decay_scan, fits_one_chunk

#: Lanes of a warp in the official kernels: T is split into this many segments of ceil(T / 32) tokens.
SEGMENTS = 32

Scan = Tuple[torch.Tensor, torch.Tensor]  # (s, l): value s·e^l, s (N, L, C, V), l (N, L, C)


def segment_length(T: int) -> int:
    """Tokens per segment of the official kernels, ceil(T / 32)."""
    return -(-T // SEGMENTS)


def _segments(x: torch.Tensor, L: int, fill: float) -> torch.Tensor:
    """(B, T, C, ...) -> (B·n, L, C, ...): the segments of L tokens, the last padded with ``fill``."""
    B, T = x.shape[:2]
    n = -(-T // L)
    pad = n * L - T
    if pad:
        x = torch.cat([x, x.new_full((B, pad) + x.shape[2:], fill)], dim=1)
    return x.reshape((B * n, L) + x.shape[2:])


def _unsegment(x: torch.Tensor, B: int, T: int) -> torch.Tensor:
    """Inverse of ``_segments``: (B·n, L, C, ...) -> (B, T, C, ...)."""
    return x.reshape((B, -1) + x.shape[2:])[:, :T]


def _chunk_len(w: torch.Tensor, L: int) -> int:
    """Chunk length of the segment scans: ``choose_chunk_len``, at most the power of two covering L + 1."""
    return min(choose_chunk_len(w), 2 ** math.ceil(math.log2(L + 1)))


def _with_end(z: torch.Tensor, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """One more token (log-weight -inf, value 0) after every segment: an exclusive scan at position r + 1 is
    the inclusive scan at r."""
    return F.pad(z, (0, 0, 0, 1), value=-math.inf), F.pad(x, (0, 0, 0, 0, 0, 1))


def _segment_scans(z: torch.Tensor, x: torch.Tensor, w: torch.Tensor, weighted: bool, skip_first: bool = True):
    """The two local scans of segments z (N, L, C) log-weights, x (N, L, C, V) values, left to right:

    lin_r = Σ_{j<r} e^{-(r-j-1)w + z_j} x_j and grow_r = Σ_{j<=r} e^{(r-j)w + z_j} x_j (j > 0 only when
    ``skip_first``), as (s, l); with ``weighted`` also their distance-weighted forms Σ (r-j-1)(...) and
    Σ (r-j)(...). Short segments (L·max|w| <= ONE_CHUNK_DECAY: always in the models) take
    ``_one_chunk_scans``; others the chunked log-space ``decay_scan`` (weighted forms: scans of the scans).
    """
    z_grow = torch.cat([torch.full_like(z[:, :1], -math.inf), z[:, 1:]], 1) if skip_first else z
    L = z.shape[1]
    if fits_one_chunk(L, w):
        return _one_chunk_scans(z, z_grow, x, w, weighted)
    chunk = _chunk_len(w, L)
    lin = decay_scan(z, x, w, chunk)
    grow_all = decay_scan(*_with_end(z_grow, x), -w, chunk)  # position r + 1: the inclusive sum at r
    grow = grow_all[0][:, 1:], grow_all[1][:, 1:]
    if not weighted:
        return lin, grow
    s, l = decay_scan(lin[1], lin[0], w, chunk)
    lin_weighted = s, l - w  # e^{-w}·scan(lin)
    s, l = decay_scan(grow_all[1], grow_all[0], -w, chunk)
    grow_weighted = s[:, 1:], l[:, 1:] + w  # e^{w}·scan(grow) at r + 1
    return lin, grow, lin_weighted, grow_weighted


def _position_matrices(L: int, like: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """(L, L) matrices M[r, j] of the one-chunk scans: [j < r], [j <= r], (r-1-j)[j < r], (r-j)[j <= r]."""
    r = torch.arange(L, device=like.device, dtype=like.dtype)
    d = r[:, None] - r[None, :]
    return (d > 0).to(like.dtype), (d >= 0).to(like.dtype), (d - 1).clamp_min(0), d.clamp_min(0)


def _one_chunk_scans(z: torch.Tensor, z_grow: torch.Tensor, x: torch.Tensor, w: torch.Tensor, weighted: bool):
    """``_segment_scans`` of short segments: the decay is separable, e^{-(r-j-1)w} = e^{-(r-1)w}·e^{jw}, so
    each scan is one product with an (L, L) position matrix (which also carries the distance weights, with
    no (r-1)·A - B difference). Terms e^{z_j - m ± jw} are at most e^{L·max|w|}, m the segment's maximum
    of z; a term that underflows is below e^{-87 + 2·L·max|w|} of the largest: under float32 precision."""
    N, L, C = z.shape
    r = torch.arange(L, device=z.device, dtype=z.dtype)[:, None]  # (L, 1)
    m = z.amax(dim=1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    lin_terms = (torch.exp(z - m + r * w).unsqueeze(-1) * x).reshape(N, L, -1)
    grow_terms = (torch.exp(z_grow - m - r * w).unsqueeze(-1) * x).reshape(N, L, -1)
    before, upto, lin_dist, grow_dist = _position_matrices(L, z)
    l_lin, l_grow = m - (r - 1) * w, m + r * w
    scan = lambda mat, terms: torch.matmul(mat, terms).view(x.shape)
    out = (scan(before, lin_terms), l_lin), (scan(upto, grow_terms), l_grow)
    if weighted:
        out += (scan(lin_dist, lin_terms), l_lin), (scan(grow_dist, grow_terms), l_grow)
    return out


def _combine(parts, coefs, log_offset: torch.Tensor) -> torch.Tensor:
    """Σ coef·s·e^{l + log_offset} of (s, l) parts: (..., C, V) (log_offset (..., C), coefs (C,))."""
    out = 0
    for (s, l), coef in zip(parts, coefs):
        out = out + s * (coef * torch.exp(l + log_offset)).unsqueeze(-1)
    return out


def _local_coefs(w: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """α = 1 - e^{-w} and β = 1 - e^w, the weights of the two local scans (exact for small w)."""
    return -torch.expm1(-w), -torch.expm1(w)


def local_torch_forward(w: torch.Tensor, k: torch.Tensor, v: torch.Tensor, y5: torch.Tensor,
                        log_den5: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """y, log den (B, T, C) of the official operator from the Eq. 5 part's y5, log den5: the local scans in
    PyTorch (any device), in the dtype of y5."""
    B, T, C = k.shape
    L = segment_length(T)
    alpha, beta = _local_coefs(w)
    z = _segments(k, L, -math.inf)
    x = _segments(torch.stack([v, torch.ones_like(v)], -1), L, 0.)
    lin, grow = _segment_scans(z, x, w, weighted=False)
    offset = _segments(w - log_den5, L, 0.)
    nu, rho = _unsegment(_combine((lin, grow), (alpha, beta), offset), B, T).unbind(-1)
    return (y5 + nu) / (1 + rho), log_den5 - w + torch.log1p(rho)


def official_forward(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     eq5_forward=bi_wkv_torch_forward, local_forward=local_torch_forward):
    """Forward of the official operator: y and log den (B, T, C) in the accumulation dtype.

    ``eq5_forward(w, u, k, v)`` -> (y, log den) runs the Eq. 5 part and ``local_forward(w, k, v, y5,
    log_den5)`` -> (y, log den) adds the local terms (both PyTorch by default, Triton on CUDA). w, u (C,) in
    the accumulation dtype, k, v (B, T, C) contiguous.
    """
    y5, log_den5 = eq5_forward(w, u + w, k, v)
    return local_forward(w, k.to(y5.dtype), v.to(y5.dtype), y5, log_den5)


def _transposed_local(w: torch.Tensor, k: torch.Tensor, log_den: torch.Tensor, gx: torch.Tensor, L: int):
    """e^{k_i} Σ_t Loc_ti e^{-log den_t} gx_t (B, T, C, 2) for gx (B, T, C, 2) = (gy, gy·y): the local scans
    right to left (on the segments reversed), the grow scan zero at each segment start."""
    B, T, C = k.shape
    alpha, beta = _local_coefs(w)
    q = _segments(-log_den, L, -math.inf).flip(1)
    lin, (s, l) = _segment_scans(q, _segments(gx, L, 0.).flip(1), w, weighted=False, skip_first=False)
    s = s.clone()
    s[:, -1] = 0  # the segment start (last when reversed) takes no grow term
    local = _combine((lin, (s, l)), (alpha, beta), _segments(k, L, 0.).flip(1))
    return _unsegment(local.flip(1), B, T)


def local_torch_backward(w: torch.Tensor, k: torch.Tensor, v: torch.Tensor, y: torch.Tensor,
                         log_den: torch.Tensor, gy: torch.Tensor, gk5: torch.Tensor, gv5: torch.Tensor):
    """(gw_local (C,), gk, gv (B, T, C)): the local terms' gradients, gk and gv added to the Eq. 5 part's."""
    B, T, C = k.shape
    L = segment_length(T)
    gv_local, s2 = _transposed_local(w, k, log_den, torch.stack([gy, gy * y], -1), L).unbind(-1)

    # gw: Σ_t q_t (∂N_t - y_t ∂D_t), ∂ the w-derivative of the local sums of (e^k v, e^k)
    alpha, beta = _local_coefs(w)
    z = _segments(k, L, -math.inf)
    x = _segments(torch.stack([v, torch.ones_like(v)], -1), L, 0.)
    parts = _segment_scans(z, x, w, weighted=True)
    coefs = (torch.exp(-w), -torch.exp(w), -alpha, beta)
    d_num, d_den = _unsegment(_combine(parts, coefs, _segments(-log_den, L, 0.)), B, T).unbind(-1)
    return (gy * (d_num - y * d_den)).sum(dim=(0, 1)), gk5 + v * gv_local - s2, gv5 + gv_local


def official_backward(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor, y: torch.Tensor,
                      log_den: torch.Tensor, gy: torch.Tensor, eq5_backward=bi_wkv_torch_backward,
                      local_backward=local_torch_backward):
    """Exact gradients (gw, gu, gk, gv) of ``official_forward`` from its y and log den (B, T, C), in the
    accumulation dtype of y.

    ``eq5_backward(w, u, k, v, y, log_den, gy)`` runs the Eq. 5 part and ``local_backward`` (as
    ``local_torch_backward``) the local terms (PyTorch by default, Triton on CUDA).
    """
    gw, gu, gk, gv = (g.to(y.dtype) for g in eq5_backward(w, u + w, k, v, y, log_den + w, gy))
    gw = gw - (gk.sum(dim=(0, 1)) - gu)
    gw_local, gk, gv = local_backward(w, k.to(y.dtype), v.to(y.dtype), y, log_den, gy.to(y.dtype), gk, gv)
    return gw + gw_local, gu, gk, gv
