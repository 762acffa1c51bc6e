"""Bi-WKV in PyTorch: a chunked, log-space scan for CPU tensors (and float64 anywhere).

The operator is two exclusive decayed scans (left-to-right and right-to-left) plus the bonus term
of the current token. Each scan is computed in chunks of L tokens:

- inside a chunk the decay is separable, exp(-(t-1-i)w) = exp(-(r_t-1)w) * exp(r_i w) for chunk
  offsets r, so the chunk-local sum is one cumulative sum of exp(z_i + r_i w - m) x_i, with m the
  chunk maximum of the exponents;
- a short loop over chunks carries the decayed sum of all previous chunks, in log space.

Every partial sum is kept as (s, l) with value s * exp(l); parts are combined with one shared
maximum, never by subtracting large terms. The chunk length is chosen so that L * |w| stays small,
which bounds the spread of exponents inside a chunk. Memory is O(B * T * C); no T x T matrices.

When T·max|w| is small (Vision-RWKV divides its decay by T) the forward skips the chunking and
takes the whole sequence as one chunk, and without autograd it skips the log-denominator: a few
operations per call, which is what short sequences on CPU are bound by.

The backward reuses the same scan on the output gradient divided by the denominator (the operator
is symmetric in t and i), and obtains the gradient of w from a second scan over the first one:
sum_{i<t} (t-1-i) W_ti x_i = exp(-w) * sum_{s<t} exp(-(t-1-s) w) A_s with A the first scan.
"""
import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

#: Largest chunk length, and the bound on chunk_len * max|w| that sets it for large decays.
MAX_CHUNK = 64
MAX_CHUNK_DECAY = 8.0
#: The forward takes the whole sequence as one chunk while T * max|w| <= ONE_CHUNK_DECAY: the
#: terms it loses to underflow are then below e^-(87 - 2 * 24) = 1e-17 of y (see one_chunk_bidirectional).
ONE_CHUNK_DECAY = 24.0


def choose_chunk_len(w: torch.Tensor) -> int:
    """Largest power of two <= MAX_CHUNK with chunk_len * max|w| <= MAX_CHUNK_DECAY."""
    w_max = float(w.abs().max()) if w.numel() else 0.0
    if not math.isfinite(w_max):
        raise ValueError('bi_wkv: w contains inf or NaN')
    if w_max * MAX_CHUNK <= MAX_CHUNK_DECAY:
        return MAX_CHUNK
    return max(1, 2 ** int(math.floor(math.log2(MAX_CHUNK_DECAY / w_max))))


def decay_scan(
        z: torch.Tensor,
        x: torch.Tensor,
        w: torch.Tensor,
        chunk_len: int,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Exclusive left-to-right decayed sum, in log-scaled form.

    S_t = sum_{i<t} exp(-(t-1-i) * w + z_i) * x_i, returned as (s, l) with S_t = s_t * exp(l_t).

    Args:
        z: (B, T, C) log-weights (finite or -inf).
        x: (B, T, C, V) values, V value channels sharing the weights.
        w: (C,) decay per channel.
        chunk_len: chunk length L (see ``choose_chunk_len``).

    Returns:
        s: (B, T, C, V) scaled sums; l: (B, T, C) finite log scales.
    """
    B, T, C = z.shape
    L = chunk_len
    n = -(-T // L)
    pad = n * L - T
    if pad:
        z = F.pad(z, (0, 0, 0, pad), value=-math.inf)
        x = F.pad(x, (0, 0, 0, 0, 0, pad))
    z = z.view(B, n, L, C)
    x = x.view(B, n, L, C, -1)
    r = torch.arange(L, device=z.device, dtype=z.dtype)[:, None]  # (L, 1) offset in chunk

    # chunk-local exclusive sums: exp(-(r_t-1)w) * sum_{r_i<r_t} exp(z_i + r_i w) x_i
    e = z + r * w
    m = e.amax(dim=2, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    cs = torch.cumsum(torch.exp(e - m).unsqueeze(-1) * x, dim=2)
    total = cs[:, :, -1]  # (B, n, C, V) whole chunk, scaled by exp(m)
    cs = F.pad(cs[:, :, :-1], (0, 0, 0, 0, 1, 0))  # shift: exclusive sums
    l_intra = m - (r - 1) * w

    # carry over chunks: H_{j+1} = exp(-L w) H_j + exp(m_j - (L-1) w) total_j
    l_total = (m - (L - 1) * w).squeeze(2)  # (B, n, C)
    h = torch.zeros_like(total[:, 0])
    lh = torch.full_like(l_total[:, 0], -math.inf)
    carry_s, carry_l = [], []
    for j in range(n):
        carry_s.append(h)
        carry_l.append(lh)
        lh_new = torch.maximum(lh - L * w, l_total[:, j])
        h = h * torch.exp(lh - L * w - lh_new).unsqueeze(-1) \
            + total[:, j] * torch.exp(l_total[:, j] - lh_new).unsqueeze(-1)
        lh = lh_new
    h = torch.stack(carry_s, dim=1).unsqueeze(2)  # (B, n, 1, C, V)
    l_inter = torch.stack(carry_l, dim=1).unsqueeze(2) - r * w  # (B, n, L, C)

    l = torch.maximum(l_intra, l_inter)
    s = cs * torch.exp(l_intra - l).unsqueeze(-1) + h * torch.exp(l_inter - l).unsqueeze(-1)
    return s.reshape(B, n * L, C, -1)[:, :T], l.reshape(B, n * L, C)[:, :T]


def _bidirectional(z: torch.Tensor, x: torch.Tensor, w: torch.Tensor, chunk_len: int):
    """Left-to-right and right-to-left exclusive scans of the same inputs, batched in one scan."""
    B = z.shape[0]
    s, l = decay_scan(torch.cat([z, z.flip(1)]), torch.cat([x, x.flip(1)]), w, chunk_len)
    return (s[:B], l[:B]), (s[B:].flip(1), l[B:].flip(1))


def _ratio_and_log(s: torch.Tensor, l: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(num/den, log den) of a scan whose value channels are (num, den)."""
    num, den = s.unbind(-1)
    ratio = torch.where(den > 0, num / den.clamp_min(torch.finfo(den.dtype).tiny), 0.)
    return ratio, l + torch.log(den)


def fits_one_chunk(length: int, w: torch.Tensor) -> bool:
    """Whether scans of ``length`` tokens may run as one chunk: length · max|w| <= ONE_CHUNK_DECAY."""
    return length * float(w.detach().abs().max()) <= ONE_CHUNK_DECAY


def _one_chunk_weights(z: torch.Tensor, w: torch.Tensor):
    """Weights and scales of both one-chunk scans of (B, T, C) log-weights ``z``.

    Returns p (2B, T, C) = exp(z_i + i·w - m) for the sequence and (rows B..) its reversal, m the
    maximum over i, and the log scales l_f, l_b (B, T, C) of the left-to-right and (in the original
    order) right-to-left exclusive sums: S_t = exp(l_t) · Σ p_i x_i over the tokens before t.
    """
    B, T, C = z.shape
    r = torch.arange(T, device=z.device, dtype=z.dtype)[:, None]  # (T, 1) position
    e = torch.cat([z, z.flip(1)]) + r * w  # the right-to-left half reversed: both scan left-to-right
    m = e.amax(dim=1, keepdim=True)
    l_f = m[:B] - (r - 1) * w
    l_b = m[B:] - (T - 2 - r) * w  # the reversed half's scale at reversed position T-1-t
    return torch.exp(e - m), l_f, l_b


def _exclusive_cumsum(x: torch.Tensor) -> torch.Tensor:
    """Σ_{i<t} x_i along dim 1 (zeros at t = 0)."""
    if torch.is_grad_enabled() and x.requires_grad:  # out= has no autograd
        return F.pad(torch.cumsum(x[:, :-1], dim=1), (0, 0) * (x.dim() - 2) + (1, 0))
    out = torch.zeros_like(x)
    torch.cumsum(x[:, :-1], dim=1, out=out[:, 1:])
    return out


def one_chunk_bidirectional(z: torch.Tensor, x: torch.Tensor, w: torch.Tensor):
    """``_bidirectional`` with the whole sequence as one chunk (for D = T·max|w| <= ONE_CHUNK_DECAY).

    Left to right, S_t = exp(l_t) · Σ_{i<t} exp(z_i + i·w - m) x_i with m = max_i (z_i + i·w) and
    l_t = m - (t-1)·w: one exclusive cumulative sum; right to left is the same on the reversed
    sequence, run in the same batch. A term exp(z_i + i·w - m) underflows (float32) when
    z_i + i·w < m - 87; the token j that sets m is itself in one of the two sums (or is token t),
    and the decays of i and j towards t differ by at most |i - j|·|w| <= D, so the lost term is below
    e^-(87 - 2D) of token j's: under float32 precision for D <= ONE_CHUNK_DECAY.

    Args: z (B, T, C) finite log-weights, x (B, T, C, V) values, w (C,).
    Returns: ((s, l) left to right, (s, l) right to left), s (B, T, C, V), l (B, T, C).
    """
    B = z.shape[0]
    p, l_f, l_b = _one_chunk_weights(z, w)
    s = _exclusive_cumsum(p.unsqueeze(-1) * torch.cat([x, x.flip(1)]))
    return (s[:B], l_f), (s[B:].flip(1), l_b)


def _one_chunk_forward(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor, with_log_den: bool):
    """Bi-WKV forward by the scans of ``one_chunk_bidirectional``, with numerators and denominators
    stacked along the batch (contiguous, fast on CPU); both sums and the bonus term are combined under
    the largest of their log scales (a term lost there is negligible for the same reason)."""
    B = k.shape[0]
    p, l_f, l_b = _one_chunk_weights(k, w)
    s = _exclusive_cumsum(torch.cat([p * torch.cat([v, v.flip(1)]), p]))  # (4B, T, C): num, den
    num_f, num_b, den_f, den_b = s[:B], s[B:2 * B].flip(1), s[2 * B:3 * B], s[3 * B:].flip(1)
    l_d = u + k
    top = torch.maximum(torch.maximum(l_f, l_b), l_d)
    # in place: the forward never runs under autograd (BiWKVFunction.forward, or inference)
    a_f, a_b, a_d = l_f.sub_(top).exp_(), l_b.sub_(top).exp_(), l_d.sub_(top).exp_()
    den = (den_f * a_f).addcmul_(den_b, a_b).add_(a_d)
    y = (num_f * a_f).addcmul_(num_b, a_b).addcmul_(v, a_d).div_(den)
    return y, (top.add_(den.log_()) if with_log_den else None)


def bi_wkv_torch_forward(
        w: torch.Tensor,
        u: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        with_log_den: bool = True,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Bi-WKV forward in the dtype of its inputs (float32 or float64).

    When T·max|w| is within ``ONE_CHUNK_DECAY`` (Vision-RWKV scales w by 1/T, so T·|w| is its
    spatial_decay) the scans take the whole sequence as one chunk (``_one_chunk_forward``);
    otherwise chunks of ``choose_chunk_len(w)`` tokens are carried in log space.

    Args:
        w, u: (C,); k, v: (B, T, C), all of one floating dtype.
        with_log_den: also return the log-denominator (the backward needs it; inference does not).

    Returns:
        y: (B, T, C) output; log_den: (B, T, C) log of the softmax denominator, or None.
    """
    if fits_one_chunk(k.shape[1], w):
        return _one_chunk_forward(w, u, k, v, with_log_den)
    x = torch.stack([v, torch.ones_like(v)], dim=-1)
    (s_f, l_f), (s_b, l_b) = _bidirectional(k, x, w, choose_chunk_len(w))
    r_f, ld_f = _ratio_and_log(s_f, l_f)
    r_b, ld_b = _ratio_and_log(s_b, l_b)
    ld_d = u + k
    m = torch.maximum(torch.maximum(ld_f, ld_b), ld_d)
    e_f, e_b, e_d = torch.exp(ld_f - m), torch.exp(ld_b - m), torch.exp(ld_d - m)
    den = e_f + e_b + e_d
    y = (r_f * e_f + r_b * e_b + v * e_d) / den
    return y, (m + torch.log(den) if with_log_den else None)


def _decay_weighted_grad(
        k: torch.Tensor,
        v: torch.Tensor,
        w: torch.Tensor,
        y: torch.Tensor,
        g_scale: torch.Tensor,
        gy: torch.Tensor,
        chunk_len: int,
) -> torch.Tensor:
    """Gradient of w from one scan direction (left-to-right), summed over batch and time.

    With A_t = sum_{i<t} W_ti e^{k_i} (v_i, 1) and P_t = sum_{i<t} (t-1-i) W_ti e^{k_i} (v_i, 1),
    dL/dw = -sum_t gy_t / den_t * (P_num_t - y_t P_den_t), and P_t = e^{-w} * scan(A)_t.
    """
    x = torch.stack([v, torch.ones_like(v)], dim=-1)
    s_a, l_a = decay_scan(k, x, w, chunk_len)
    s_p, l_p = decay_scan(l_a, s_a, w, chunk_len)
    p_num, p_den = s_p.unbind(-1)
    scale = torch.exp(g_scale + l_p - w)
    return -(gy * scale * (p_num - y * p_den)).sum(dim=(0, 1))


def bi_wkv_torch_backward(
        w: torch.Tensor,
        u: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        y: torch.Tensor,
        log_den: torch.Tensor,
        gy: torch.Tensor,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of Bi-WKV, all in the dtype of the inputs.

    Args:
        w, u: (C,); k, v, y, log_den, gy: (B, T, C) (y and log_den from the forward).

    Returns:
        gw, gu: (C,); gk, gv: (B, T, C).
    """
    chunk_len = choose_chunk_len(w)
    q = -log_den  # gy_t / den_t = gy_t * exp(q_t)
    gx = torch.stack([gy, gy * y], dim=-1)
    (s_f, l_f), (s_b, l_b) = _bidirectional(q, gx, w, chunk_len)
    e_f = torch.exp(l_f + k).unsqueeze(-1)
    e_b = torch.exp(l_b + k).unsqueeze(-1)
    e_d = torch.exp(u + k + q)
    s = s_f * e_f + s_b * e_b
    s1 = s[..., 0] + e_d * gy  # sum_t W_ti e^{k_i} gy_t / den_t
    s2 = s[..., 1] + e_d * gy * y
    gv = s1
    gk = v * s1 - s2
    gu = (e_d * gy * (v - y)).sum(dim=(0, 1))
    both = lambda t: torch.cat([t, t.flip(1)])  # both scan directions as one batch
    gw = _decay_weighted_grad(both(k), both(v), w, both(y), both(q), both(gy), chunk_len)
    return gw, gu, gk, gv
