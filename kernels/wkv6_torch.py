"""Bidirectional RWKV-6 WKV (VRWKV6) in PyTorch, chunked: matmuls inside chunks, a short scan across chunks.

Per batch and head (N = 64 channels; j a key channel, i a value channel), with log-decays
lw = -exp(w) <= 0 and W_j(t, s) = exp(sum_{m strictly between s and t} lw_{m,j}), symmetric in t and s:

    y_{t,i} = sum_s P[t, s] v_{s,i},   P[t, s] = sum_j r_{t,j} k_{s,j} W_j(t, s)  (s != t),
                                       P[t, t] = sum_j r_{t,j} u_j k_{t,j}.

The tokens are cut into chunks of S tokens (f a chunk's first token, e its last):

- **inside a chunk** every pair has its own weight (``pair_weights``): an (S, S, N) tensor per chunk
  whose exponents are sums of the log-decays strictly between the two tokens, one matmul with a 0/1
  matrix (``between_mask``). Terms of one sign: no cancellation, no positive exponent.
- **across chunks** a weight factors through the chunk boundaries into factors <= 1:
  W(t, s) = a_t * (decays of the whole chunks between) * b_s for s in an earlier chunk than t, with
  a_t = exp(sum_{f <= m < t} lw_m) (from t's chunk start) and b_s = exp(sum_{s < m <= e} lw_m) (to s's
  chunk end). A scan over chunks carries the (N, N) state of all earlier chunks, and each chunk reads
  it with one matmul. Right to left is the mirror image (a and b swap roles).

No exponent is ever positive, so nothing overflows; a factor that underflows to 0 stands for a weight
that is at most that small. Decays of e^-110 per token (w = 4.7) and of 1 - 5e-5 (w = -10) are both
exact to rounding (weights below e^-70 in float32 are flushed to 0, ``EXP_FLOOR``). Accumulation is in
``dtype`` (float32 for fp16/bf16/fp32 inputs, float64 for float64).

Backward (``wkv6_torch_backward``), with G[t, s] = gy_t . v_s and W_j(t, t) = u_j:

    gv = P^T gy,   gr_{t,j} = sum_s G[t, s] k_{s,j} W_j(t, s),   gk_{s,j} = sum_t G[t, s] r_{t,j} W_j(t, s),
    gu_j = sum_t G[t, t] r_{t,j} k_{t,j},   glw_{m,j} = sum_{(t, s) straddling m} G[t, s] r_{t,j} k_{s,j} W_j(t, s),

and gw = glw * lw. Chunk-local pairs as in the forward (glw: the transposed ``between_mask`` matmul);
across chunks, states of (k, v) give gr, states of (r, gy) give gk and gv. Each term of glw_m holds the
factor d_m = exp(lw_m), so glw is summed from its own terms only, never as a difference of cumulative
sums (which would leave errors of eps * |sum| where glw_m ~ d_m is tiny, e.g. at w = 4.7): for m in
chunk c, pairs inside c, pairs with one token in c (within-chunk cumulative sums of the cross-chunk parts
of r*gr and k*gk) and pairs spanning c (the states entering c from both sides, times c's decay).

Layout: chunk-major (n, B * H, S, N). The (S, S, N) pair tensors and (N, N) states are built for a group
of chunks at a time (``MAX_GROUP_ELEMENTS``), so temporaries stay bounded for any T.
"""
import functools
import math
from typing import List, Tuple

import torch
import torch.nn.functional as F

#: Tokens per chunk: (S, S, N) pair weights per chunk, one scan step per chunk and direction.
CHUNK = 16
#: Elements of the largest temporary (pair weights or chunk states of a group of chunks).
MAX_GROUP_ELEMENTS = 2 ** 21
#: Floor of the log-decays: w = +inf (decay 0) gives this instead of -inf (so that 0 * lw = 0 in the
#: matmuls); exp of it is 0 all the same.
LOG_DECAY_FLOOR = -1e30
#: Weights below exp(floor) are flushed to 0: the CPU computes with subnormal numbers about 100 times more
#: slowly, and a product of a few weights near the float32 floor (e^-70 = 4e-31) with values down to 1e-7
#: stays above its normal range (1.2e-38). Flushed weights are below 4e-31 of the weight 1 that adjacent
#: tokens always have.
EXP_FLOOR = {torch.float32: -70.0, torch.float64: -700.0}


# ---- layout -------------------------------------------------------------------------------------
def to_chunks(x: torch.Tensor, heads: int, chunk: int, dtype: torch.dtype) -> torch.Tensor:
    """(B, T, C) -> (n, B * H, S, N) in ``dtype``, zero-padded to n = ceil(T / S) chunks of S tokens."""
    B, T, C = x.shape
    n = -(-T // chunk)
    x = x.to(dtype)
    if n * chunk != T:
        x = F.pad(x, (0, 0, 0, n * chunk - T))
    x = x.reshape(B, n, chunk, heads, C // heads).permute(1, 0, 3, 2, 4)
    return x.reshape(n, B * heads, chunk, C // heads)


def from_chunks(x: torch.Tensor, batch: int, length: int) -> torch.Tensor:
    """Inverse of ``to_chunks``: (n, B * H, S, N) -> (B, T, H * N), padding dropped."""
    n, BH, S, N = x.shape
    heads = BH // batch
    x = x.reshape(n, batch, heads, S, N).permute(1, 0, 3, 2, 4).reshape(batch, n * S, heads * N)
    return x[:, :length]


def group_slices(n: int, X: int, S: int, N: int) -> List[slice]:
    """Groups of chunks whose (S, S, N) pair weights and (N, N) states stay within MAX_GROUP_ELEMENTS."""
    size = max(1, MAX_GROUP_ELEMENTS // (X * N * max(S * S, N)))
    return [slice(i, min(n, i + size)) for i in range(0, n, size)]


# ---- decays -------------------------------------------------------------------------------------
def log_decays(w: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """lw = -exp(w) in ``dtype``, floored at LOG_DECAY_FLOOR."""
    return torch.clamp(-torch.exp(w.to(dtype)), min=LOG_DECAY_FLOOR)


def shift(x: torch.Tensor, steps: int) -> torch.Tensor:
    """x moved by ``steps`` along the token dimension (-2) of each chunk, zero-filled:
    shift(x, 1)[t] = x[t - 1], shift(x, -1)[t] = x[t + 1]."""
    if steps > 0:
        return F.pad(x[..., :-steps, :], (0, 0, steps, 0))
    return F.pad(x[..., -steps:, :], (0, 0, 0, -steps))


def cumsum_exclusive(x: torch.Tensor, reverse: bool) -> torch.Tensor:
    """sum_{t' < t} x_{t'} (or t' > t if ``reverse``) along the token dimension (-2) of each chunk."""
    if reverse:
        return torch.cumsum(shift(x, -1).flip(-2), -2).flip(-2)
    return torch.cumsum(shift(x, 1), -2)


def exp_flushed(x: torch.Tensor) -> torch.Tensor:
    """exp(x) of exponents x <= 0, with exponents below EXP_FLOOR giving 0 (in place)."""
    return F.threshold_(x, EXP_FLOOR[x.dtype], -math.inf).exp_()


def boundary_decays(lw: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decays between each token and its chunk's boundaries, all <= 1 (sums of one sign).

    Args:
        lw: (..., S, N) log-decays (<= 0) of the tokens of each chunk.

    Returns:
        a: (..., S, N) exp(sum_{f <= m < t} lw_m), from the chunk's first token f to t (exclusive);
        b: (..., S, N) exp(sum_{t < m <= e} lw_m), from t (exclusive) to the chunk's last token e;
        total: (..., N, 1) exp(sum of the chunk's lw), to scale the key rows of a state.
    """
    a = exp_flushed(cumsum_exclusive(lw, reverse=False))
    b = exp_flushed(cumsum_exclusive(lw, reverse=True))
    return a, b, exp_flushed(lw.sum(-2)).unsqueeze(-1)


@functools.lru_cache(maxsize=16)
def between_mask(chunk: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(S * S, S) 0/1 matrix: row (t, s), column m is 1 when m lies strictly between t and s."""
    idx = torch.arange(chunk, device=device)
    t, s, m = idx[:, None, None], idx[None, :, None], idx[None, None, :]
    return ((m > torch.minimum(t, s)) & (m < torch.maximum(t, s))).to(dtype).reshape(chunk * chunk, chunk)


def pair_weights(lw: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Weights of all token pairs inside each chunk: W[t, s] = W(t, s) for t != s, u on the diagonal.

    Args:
        lw: (g, X, S, N) log-decays of the tokens of g chunks.
        u: (X, N) bonus.

    Returns:
        (g, X, S, S, N), symmetric in its two token dimensions.
    """
    g, X, S, N = lw.shape
    mask = between_mask(S, lw.dtype, lw.device)
    weights = exp_flushed(torch.bmm(mask.expand(g * X, S * S, S), lw.reshape(g * X, S, N))).view(g, X, S, S, N)
    weights.diagonal(dim1=2, dim2=3).copy_(u.view(1, X, N, 1).expand(g, X, N, S))
    return weights


def straddling_sums(pairs: torch.Tensor) -> torch.Tensor:
    """(g, X, S, N): for each token m, the sum of pairs[t, s] over the pairs (t, s) of its chunk with m
    strictly between t and s ((g, X, S, S, N) in; the transpose of the matmul in ``pair_weights``)."""
    g, X, S, _, N = pairs.shape
    mask = between_mask(S, pairs.dtype, pairs.device)
    return torch.bmm(mask.t().expand(g * X, S, S * S), pairs.reshape(g * X, S * S, N)).view(g, X, S, N)


# ---- scans across chunks --------------------------------------------------------------------------
def scan_group(keys: torch.Tensor, values: torch.Tensor, total: torch.Tensor, h: torch.Tensor, reverse: bool
               ) -> Tuple[torch.Tensor, torch.Tensor]:
    """States entering each chunk of a group, from the state ``h`` entering the group.

    Left to right, the state entering chunk c is H_c = sum_{c' < c} (prod_{c' < c'' < c} total_{c''})
    keys_{c'}^T values_{c'}: H_{c+1} = total_c * H_c + keys_c^T values_c. Right to left (``reverse``)
    the mirror image.

    Args:
        keys: (g, X, S, N) keys scaled to the boundary their chunk's state is seen from (b left to right,
            a right to left).
        values: (g, X, S, M).
        total: (g, X, N, 1) whole-chunk decays.
        h: (X, N, M) state entering the group (from the left, or from the right if ``reverse``).

    Returns:
        (g, X, N, M) states entering the group's chunks, and the state leaving the group.
    """
    delta = keys.transpose(-1, -2) @ values
    states = torch.empty_like(delta)
    g = delta.shape[0]
    order = range(g - 1, -1, -1) if reverse else range(g)
    states[order[0]] = h
    for i, j in zip(order[:-1], order[1:]):
        torch.addcmul(delta[i], total[i], states[i], out=states[j])
    return states, torch.addcmul(delta[order[-1]], total[order[-1]], states[order[-1]])


def entry_states(keys, values, total, groups, reverse: bool) -> list:
    """The state entering each group (listed in the order of ``groups``) of the scan over all chunks."""
    _, X, _, N = keys.shape
    h = keys.new_zeros(X, N, values.shape[-1])
    entries = [None] * len(groups)
    for i in (range(len(groups) - 1, -1, -1) if reverse else range(len(groups))):
        entries[i] = h
        sl = groups[i]
        h = scan_group(keys[sl], values[sl], total[sl], h, reverse)[1]
    return entries


# ---- forward ------------------------------------------------------------------------------------
def _prepare(r, k, v, w, u, chunk, dtype):
    """Chunked inputs (n, X, S, N) in ``dtype``, the log-decays (padding: 0) and the bonus (X, N)."""
    B = k.shape[0]
    H, N = u.shape
    rc, kc, vc = (to_chunks(x, H, chunk, dtype) for x in (r, k, v))
    lw = to_chunks(log_decays(w, dtype), H, chunk, dtype)
    return rc, kc, vc, lw, u.to(dtype).expand(B, H, N).reshape(B * H, N)


def _local_scores(r: torch.Tensor, k: torch.Tensor, lw: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """(g, X, S, S) scores P[t, s] of the pairs inside each chunk of a group ((g, X, S, N) inputs)."""
    weights = pair_weights(lw, u).mul_(k.unsqueeze(2))  # [t, s]: W(t, s) k_s
    return (weights @ r.unsqueeze(-1)).squeeze(-1)


def wkv6_torch_forward(r: torch.Tensor, k: torch.Tensor, v: torch.Tensor, w: torch.Tensor, u: torch.Tensor,
                       dtype: torch.dtype = torch.float32, chunk: int = CHUNK) -> torch.Tensor:
    """Bidirectional RWKV-6 WKV, chunked (module docstring).

    Args:
        r, k, v, w: (B, T, C) receptance, keys, values and log-log decays (d = exp(-exp(w))), C = H * N.
        u: (H, N) bonus of the current token.
        dtype: accumulation dtype (float32, or float64).
        chunk: tokens per chunk.

    Returns:
        (B, T, C) in ``dtype``.
    """
    B, T, C = k.shape
    rc, kc, vc, lw, uc = _prepare(r, k, v, w, u, chunk, dtype)
    n, X, S, N = kc.shape
    if n == 1:  # one chunk: every pair is inside it, no states
        return from_chunks(_local_scores(rc, kc, lw, uc) @ vc, B, T)
    a, b, total = boundary_decays(lw)
    groups = group_slices(n, X, S, N)
    entries_rl = entry_states(kc * a, vc, total, groups, reverse=True)
    h_lr = kc.new_zeros(X, N, N)
    y = torch.empty_like(vc)
    for sl, h_rl in zip(groups, entries_rl):
        r, k, v, ga, gb, tot = (x[sl] for x in (rc, kc, vc, a, b, total))
        scores = _local_scores(r, k, lw[sl], uc)
        states_lr, h_lr = scan_group(k * gb, v, tot, h_lr, reverse=False)
        states_rl, _ = scan_group(k * ga, v, tot, h_rl, reverse=True)
        y[sl] = scores @ v + (r * ga) @ states_lr + (r * gb) @ states_rl
    return from_chunks(y, B, T)


# ---- backward -----------------------------------------------------------------------------------
def _local_grads(r, k, v, gy, lw, u):
    """Gradient parts from the pairs inside each chunk of a group (g, X, S, N), bonus included.

    Returns gr, gk, gv (g, X, S, N), glw from the pairs straddling each token, and G's diagonal (g, X, S, 1)."""
    grads = gy @ v.transpose(-1, -2)  # G[t, s]
    weights = pair_weights(lw, u)
    weights_r = weights * r.unsqueeze(2)  # [s, t]: W(s, t) r_t
    gk = (grads.transpose(-1, -2).unsqueeze(-2) @ weights_r).squeeze(-2)
    weights_k = weights.mul_(k.unsqueeze(2))  # [t, s]: W(t, s) k_s
    gr = (grads.unsqueeze(-2) @ weights_k).squeeze(-2)
    scores = (weights_k @ r.unsqueeze(-1)).squeeze(-1)
    gv = scores.transpose(-1, -2) @ gy
    terms = weights_k.mul_(r.unsqueeze(3)).mul_(grads.unsqueeze(-1))  # G[t, s] r_t k_s W(t, s)
    return gr, gk, gv, straddling_sums(terms), torch.diagonal(grads, dim1=-2, dim2=-1).unsqueeze(-1)


def wkv6_torch_backward(r: torch.Tensor, k: torch.Tensor, v: torch.Tensor, w: torch.Tensor, u: torch.Tensor,
                        gy: torch.Tensor, dtype: torch.dtype = torch.float32, chunk: int = CHUNK
                        ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact gradients of ``wkv6_torch_forward`` (module docstring), from the inputs alone.

    Args:
        r, k, v, w, u: the forward's inputs; gy: (B, T, C) gradient of y.
        dtype, chunk: as the forward.

    Returns:
        gr, gk, gv, gw (B, T, C) and gu (H, N), in ``dtype``.
    """
    B, T, C = k.shape
    H, N = u.shape
    rc, kc, vc, lw, uc = _prepare(r, k, v, w, u, chunk, dtype)
    gyc = to_chunks(gy, H, chunk, dtype)
    n, X, S, _ = kc.shape
    if n == 1:  # one chunk: every pair is inside it, no states
        gr, gk, gv, glw, diag = _local_grads(rc, kc, vc, gyc, lw, uc)
        gu = (diag * rc * kc).sum((0, 2))
        return (*(from_chunks(x, B, T) for x in (gr, gk, gv, glw * lw)), gu.reshape(B, H, N).sum(0))
    a, b, total = boundary_decays(lw)
    groups = group_slices(n, X, S, N)
    # right-to-left states entering each group; the left-to-right ones are carried along
    entries_kv = entry_states(kc * a, vc, total, groups, reverse=True)
    entries_rg = entry_states(rc * a, gyc, total, groups, reverse=True)
    h_kv = h_rg = kc.new_zeros(X, N, N)
    gr, gk, gv, gw = (torch.empty_like(kc) for _ in range(4))
    gu = kc.new_zeros(X, N)
    for sl, rl_kv, rl_rg in zip(groups, entries_kv, entries_rg):
        r, k, v, g_y, ga, gb, tot = (x[sl] for x in (rc, kc, vc, gyc, a, b, total))
        gr_loc, gk_loc, gv_loc, glw, diag = _local_grads(r, k, v, g_y, lw[sl], uc)
        # states of (k, v) give gr; states of (r, gy) give gk and gv (module docstring)
        kv_lr, h_kv = scan_group(k * gb, v, tot, h_kv, reverse=False)
        rg_lr, h_rg = scan_group(r * gb, g_y, tot, h_rg, reverse=False)
        kv_rl, _ = scan_group(k * ga, v, tot, rl_kv, reverse=True)
        rg_rl, _ = scan_group(r * ga, g_y, tot, rl_rg, reverse=True)
        gr_lr = ga * (g_y @ kv_lr.transpose(-1, -2))  # pairs s < t, s in an earlier chunk
        gr_rl = gb * (g_y @ kv_rl.transpose(-1, -2))  # pairs s > t, s in a later chunk
        gk_lr = gb * (v @ rg_rl.transpose(-1, -2))  # pairs t > s, t in a later chunk
        gk_rl = ga * (v @ rg_lr.transpose(-1, -2))  # pairs t < s, t in an earlier chunk
        gr[sl] = gr_loc + gr_lr + gr_rl
        gk[sl] = gk_loc + gk_lr + gk_rl
        gv[sl] = gv_loc + (k * ga) @ rg_lr + (k * gb) @ rg_rl
        # glw_m: pairs straddling m with one token outside the chunk, then those spanning the whole chunk
        glw += cumsum_exclusive(r * gr_lr + k * gk_rl, reverse=True)
        glw += cumsum_exclusive(r * gr_rl + k * gk_lr, reverse=False)
        spanning = ((kv_lr * rg_rl).sum(-1) + (rg_lr * kv_rl).sum(-1)) * tot.squeeze(-1)
        gw[sl] = (glw + spanning.unsqueeze(-2)) * lw[sl]
        gu += (diag * r * k).sum((0, 2))
    return (*(from_chunks(x, B, T) for x in (gr, gk, gv, gw)), gu.reshape(B, H, N).sum(0))
