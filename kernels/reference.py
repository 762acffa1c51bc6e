"""Float64 O(T^2) reference of the bidirectional WKV operator, used by the tests.

Bi-WKV is a softmax attention whose logits depend only on the keys and the token distance:

    logit[t, i] = -(|t - i| - 1) * w + k_i   for i != t
    logit[t, t] = u + k_t
    y_t = sum_i softmax_i(logit[t, :]) * v_i

so the reference is a float64 softmax over explicit T x T logits (memory B * C * T^2).
"""
from typing import Optional, Sequence

import torch


def bi_wkv_reference(
        w: torch.Tensor,
        u: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        rows: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Bi-WKV in float64 by explicit softmax.

    Args:
        w: (C,) decay per channel (already scaled by the caller).
        u: (C,) bonus of the current token.
        k: (B, T, C) keys.
        v: (B, T, C) values.
        rows: optional (R,) long tensor of output positions to compute (all T when None);
            lets tests check single rows of very long sequences.

    Returns:
        (B, R, C) float64 output (R = T when ``rows`` is None). Differentiable.
    """
    B, T, C = k.shape
    w, u, k, v = (x.double() for x in (w, u, k, v))
    pos = torch.arange(T, device=k.device)
    rows = pos if rows is None else rows.to(k.device)
    dist = (rows[:, None] - pos[None, :]).abs().double()  # (R, T)
    logits = -(dist - 1)[None, :, :, None] * w + k[:, None, :, :]  # (B, R, T, C)
    diag = (rows[:, None] == pos[None, :])[None, :, :, None]
    logits = torch.where(diag, (u + k)[:, None, :, :].expand_as(logits), logits)
    attn = torch.softmax(logits, dim=2)
    return (attn * v[:, None, :, :]).sum(dim=2)


def column_major_order(H: int, W: int) -> torch.Tensor:
    """(H*W,) row-major token indices in column-major reading order."""
    return torch.arange(H * W).view(H, W).t().reshape(-1)


def bi_wkv_scan_reference(
        w: torch.Tensor,
        u: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        grid: Sequence[int],
        order: str,
) -> torch.Tensor:
    """Bi-WKV over an H x W token grid read in ``order`` ('row', 'col' or 'cross'), float64.

    Column-major channels (all for 'col', those from C // 2 on for 'cross') run the 1D reference on
    the tokens gathered in column-major order; the result is scattered back to row-major positions.
    Returns (B, H*W, C) float64. Differentiable.
    """
    H, W = grid
    C = k.shape[-1]
    split = {'row': C, 'col': 0, 'cross': C // 2}[order]
    perm = column_major_order(H, W).to(k.device)
    inv = torch.argsort(perm)

    def gather(x):
        return torch.cat([x[:, :, :split], x[:, perm, split:]], dim=-1)

    y = bi_wkv_reference(w, u, gather(k), gather(v))
    return torch.cat([y[:, :, :split], y[:, inv, split:]], dim=-1)


def bi_wkv_2d_reference(
        w: torch.Tensor,
        u: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        grid: Sequence[int],
) -> torch.Tensor:
    """2D Bi-WKV in float64 by explicit softmax over the Manhattan distance of grid positions.

    logit[t, s] = -(d(s, t) - 1) * w + k_s for s != t and u + k_t for s = t, with
    d(s, t) = |row_s - row_t| + |col_s - col_t| on the H x W grid (tokens row-major).
    Returns (B, H*W, C) float64. Differentiable.
    """
    H, W = grid
    B, T, C = k.shape
    w, u, k, v = (x.double() for x in (w, u, k, v))
    rows = torch.arange(T, device=k.device) // W
    cols = torch.arange(T, device=k.device) % W
    dist = ((rows[:, None] - rows[None, :]).abs() + (cols[:, None] - cols[None, :]).abs()).double()
    logits = -(dist - 1)[None, :, :, None] * w + k[:, None, :, :]  # (B, T, T, C)
    diag = torch.eye(T, dtype=torch.bool, device=k.device)[None, :, :, None]
    logits = torch.where(diag, (u + k)[:, None, :, :].expand_as(logits), logits)
    return (torch.softmax(logits, dim=2) * v[:, None, :, :]).sum(dim=2)


#: Lanes of a warp in the official CUDA kernels: each owns one segment of ceil(T / 32) tokens.
OFFICIAL_SEGMENTS = 32


def official_weights(w: torch.Tensor, u: torch.Tensor, T: int) -> torch.Tensor:
    """(T, T, C) float64 weights W[t, i] of the official Vision-RWKV kernels: y_t = Σ_i W[t, i] e^{k_i} v_i
    / Σ_i W[t, i] e^{k_i}.

    The kernels split T into segments of L = ceil(T / 32) tokens; for t in the segment starting at s:
    e^{-(i-t)w} for i > t; e^{-(t-i)w} for i < s; e^{-(t-i-1)w} for i = s < t;
    e^{-(t-i-1)w} + (1 - e^w) e^{(t-i)w} for s < i < t; e^u on the diagonal, plus 1 - e^w when t > s.
    (Eq. 5 of the paper has e^{-(|t-i|-1)w} off the diagonal and e^u on it.) The kernels' EPS = 1e-6 in
    the max-scaled denominator is left out.
    """
    w, u = w.double(), u.double()
    pos = torch.arange(T, device=w.device)
    seg = -(-T // OFFICIAL_SEGMENTS)
    t, i = pos[:, None], pos[None, :]
    s = (t // seg) * seg  # segment start of the output token
    d = (t - i).double()[..., None]  # (T, T, 1)
    inside = ((i >= s) & (i < t))[..., None]
    weights = torch.where((i < s)[..., None] | (i > t)[..., None], torch.exp(-d.abs() * w), torch.zeros(()))
    weights = weights + torch.where(inside, torch.exp(-(d - 1) * w), torch.zeros(()))
    weights = weights + torch.where((inside & (i > s)[..., None]) | (i == t)[..., None] & (t > s)[..., None],
                                    -torch.expm1(w) * torch.exp(d * w), torch.zeros(()))
    return weights + torch.where((i == t)[..., None], torch.exp(u), torch.zeros(()))


def bi_wkv_official_reference(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Bi-WKV of the official kernels (``official_weights``) in float64, (B, T, C). Differentiable."""
    k, v = k.double(), v.double()
    weights = official_weights(w, u, k.shape[1])  # (T, T, C)
    e = torch.exp(k - k.amax(dim=1, keepdim=True))  # the same scale for numerator and denominator
    num = torch.einsum('tic,bic->btc', weights, e * v)
    return num / torch.einsum('tic,bic->btc', weights, e)


def bi_wkv6_reference(r: torch.Tensor, k: torch.Tensor, v: torch.Tensor, w: torch.Tensor,
                      u: torch.Tensor) -> torch.Tensor:
    """Bidirectional RWKV-6 WKV of VRWKV6 in float64, by the naive recurrence (O(T) steps of a matrix state).

    Per batch and head (i a value channel, j a key channel, d_{t,j} = exp(-exp(w_{t,j}))):

        y_{t,i} = sum_j r_{t,j} [u_j k_{t,j} v_{t,i} + sum_{s != t} (prod_{m strictly between s and t} d_{m,j})
                                                     k_{s,j} v_{s,i}]

    i.e. a causal pass with the bonus u plus a reverse pass without it, neither state holding the current
    token when it is read.

    Args:
        r, k, v, w: (B, T, C) receptance, keys, values and log-log decays, C = H * N.
        u: (H, N) bonus per head and key channel.

    Returns:
        (B, T, C) float64 output. Differentiable.
    """
    B, T, C = k.shape
    H, N = u.shape
    r, k, v, w = (x.double().reshape(B, T, H, N) for x in (r, k, v, w))
    u, decay = u.double(), torch.exp(-torch.exp(w))
    y = (r * u * k).sum(-1, keepdim=True) * v  # the current token: sum_j r_j u_j k_j v_i
    outs = list(y.unbind(1))
    for steps in (range(T), range(T - 1, -1, -1)):
        state = k.new_zeros(B, H, N, N, dtype=torch.float64)  # (B, H, key j, value i)
        for t in steps:
            outs[t] = outs[t] + torch.einsum('bhj,bhji->bhi', r[:, t], state)
            state = state * decay[:, t, :, :, None] + k[:, t, :, :, None] * v[:, t, :, None, :]
    return torch.stack(outs, 1).reshape(B, T, C)
