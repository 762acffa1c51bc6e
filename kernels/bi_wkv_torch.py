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

When T·max|w| is small (Vision-RWKV divides its decay by T) forward and backward skip the chunking
and take the whole sequence as one chunk (``fits_one_chunk``), and without autograd the forward skips
the log-denominator. The decays then factor into tables over positions (``_position_tables``), and a
single maximum of the keys per (batch, channel), shared by every term, replaces the log scales: it
cancels in y. Both directions run in one buffer (``_scan_buffer``): left-to-right rows and
right-to-left rows, summed by blocked cumulative sums (``_two_way_cumsum``) with no reversed copies
(torch.cumsum along the token dimension is several times slower on CPU); its intermediates live in
per-thread buffers reused between calls (``_scratch``).

The backward reuses the same scan on the output gradient divided by the denominator (the operator
is symmetric in t and i), and obtains the gradient of w from a second scan over the first one:
sum_{i<t} (t-1-i) W_ti x_i = exp(-w) * sum_{s<t} exp(-(t-1-s) w) A_s with A the first scan (one
chunk: a second cumulative sum of the first, ``_one_chunk_backward``).
"""
import functools
import math
import threading
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

#: Largest chunk length, and the bound on chunk_len * max|w| that sets it for large decays.
MAX_CHUNK = 64
MAX_CHUNK_DECAY = 8.0
#: The forward takes the whole sequence as one chunk while T * max|w| <= ONE_CHUNK_DECAY: the
#: terms it loses to underflow are then below e^-(87 - 2 * 24) = 1e-17 of y (see one_chunk_bidirectional).
ONE_CHUNK_DECAY = 24.0
#: Bi-WKV (``bi_wkv_torch_forward`` and ``_backward``) also needs max|u| <= ONE_CHUNK_BONUS for that route: its
#: factored sums carry e^u (see ``_one_chunk_forward``).
ONE_CHUNK_BONUS = 8.0
#: Largest scratch buffer (elements) the one-chunk route keeps per thread between calls (``_scratch``).
WORKSPACE_MAX_ELEMENTS = 2 ** 24


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


def _bi_wkv_fits_one_chunk(length: int, w: torch.Tensor, u: torch.Tensor) -> bool:
    """Whether Bi-WKV over ``length`` tokens takes the one-chunk route: ``fits_one_chunk`` and max|u| <=
    ONE_CHUNK_BONUS."""
    return fits_one_chunk(length, w) and float(u.detach().abs().max()) <= ONE_CHUNK_BONUS


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
    """Σ_{i<t} x_i along dim 1 (zeros at t = 0); without autograd by ``_blocked_cumsum``."""
    if torch.is_grad_enabled() and x.requires_grad:
        return F.pad(torch.cumsum(x[:, :-1], dim=1), (0, 0) * (x.dim() - 2) + (1, 0))
    N, T = x.shape[:2]
    block, length = _scan_blocks(T + 1)
    buf = x.new_zeros((1, N, length) + x.shape[2:])
    buf[0, :, 1:T + 1] = x
    return _blocked_cumsum(buf.view(1, N, length, -1), block, (False,))[0, :, :T].view(x.shape)


def _triangles(size: int, strict: bool, reverse: Tuple[bool, ...], dtype: torch.dtype,
               device: torch.device) -> torch.Tensor:
    """(D, 1, size, size) 0/1 lower triangles (upper where reverse[d]), without the diagonal when strict."""
    lower = torch.ones(size, size, dtype=dtype, device=device).tril(-int(strict))
    return torch.stack([lower.t() if r else lower for r in reverse]).unsqueeze(1)


def _positions(size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(2, size, 1) positions t and -t."""
    t = torch.arange(size, dtype=dtype, device=device)[:, None]
    return torch.stack([t, -t])


@functools.lru_cache(maxsize=256)
def _cached_constant(build, args: tuple, dtype: torch.dtype, device: torch.device, inference: bool):
    """``build(*args, dtype, device)``, once per key; ``inference`` keys inference tensors apart."""
    return build(*args, dtype=dtype, device=device)


def _constant(build, *args, like: torch.Tensor) -> torch.Tensor:
    """The small constant ``build(*args)`` (``_triangles``, ``_positions``) in the dtype and on the device of
    ``like``, cached (read-only: one tensor per key serves every call)."""
    return _cached_constant(build, args, like.dtype, like.device, torch.is_inference_mode_enabled())


def _scan_blocks(length: int) -> Tuple[int, int]:
    """(block, padded length): blocks of about sqrt(length) tokens covering ``length``."""
    block = max(1, math.isqrt(length - 1) + 1)
    return block, -(-length // block) * block


def _blocked_cumsum(x: torch.Tensor, block: int, reverse: Tuple[bool, ...],
                    out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Inclusive cumulative sums along dim 2 of x (D, N, n·block, C), into ``out`` (same shape, not x)
    or a new tensor: x[d] left to right, or right to left where reverse[d].

    Two levels of products with 0/1 triangular matrices: the sums inside every block of ``block``
    tokens, then the totals of the blocks before (after) each block, added to all of its tokens. A few
    large operations: torch.cumsum along a non-last dimension runs a strided scalar loop per column
    on CPU, several times slower.
    """
    D, N, length, C = x.shape
    n = length // block

    def triangles(size: int, strict: bool) -> torch.Tensor:  # (D, 1, size, size)
        return _constant(_triangles, size, strict, tuple(reverse), like=x)

    blocks = (D, N * n, block, C)
    y = torch.matmul(triangles(block, False), x.view(blocks), out=None if out is None else out.view(blocks))
    y = y.view(D, N, n, block, C)
    totals = torch.stack([y[d, :, :, 0 if r else -1] for d, r in enumerate(reverse)])  # (D, N, n, C)
    y += torch.matmul(triangles(n, True), totals).unsqueeze(3)
    return y.view(D, N, length, C)


_workspace = threading.local()


def _scratch(name: str, shape: Tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """An uninitialised buffer of ``shape``, kept per thread under ``name`` and reused (a prefix of it) by
    later calls of at most its size, dtype and device (up to WORKSPACE_MAX_ELEMENTS; larger ones are fresh).

    For intermediates of the one-chunk route only, never for what it returns (the log-denominator is
    built in a fresh tensor). Reusing them saves what fresh large tensors cost on CPU: the allocator
    hands their memory back to the system after each call and touching it again page-faults; measured
    at B=8, T=196, C=192, forward and backward took about twice as long with fresh intermediates.
    """
    numel = math.prod(shape)
    if numel > WORKSPACE_MAX_ELEMENTS:
        return like.new_empty(shape)
    buffers = _workspace.__dict__.setdefault('buffers', {})
    name = (name, torch.is_inference_mode_enabled())  # an inference tensor cannot be written outside it
    flat = buffers.get(name)
    if flat is None or flat.numel() < numel or flat.dtype != like.dtype or flat.device != like.device:
        buffers[name] = flat = like.new_empty(numel)
    return flat[:numel].view(shape)


def _scan_buffer(name: str, rows: int, T: int, C: int, like: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """A (2, rows, T_pad, C) ``_scratch`` buffer for ``_two_way_cumsum`` and the (2, rows, T, C) view its
    terms go to.

    Rows of block 0 are summed left to right, rows of block 1 right to left. Token i's term sits at
    padded position i + 1 and every other position is zero, so after the scan the exclusive sums over
    i < t are at positions t (``[0, :, :T]``) and those over i > t at t + 2 (``[1, :, 2:T + 2]``).
    """
    _, length = _scan_blocks(T + 2)  # a second scan of the first reads right to left up to T + 1
    buf = _scratch(name, (2, rows, length, C), like)
    buf[:, :, 0].zero_()
    buf[:, :, T + 1:].zero_()
    return buf, buf[:, :, 1:T + 1]


def _two_way_cumsum(buf: torch.Tensor, T: int, out: torch.Tensor) -> torch.Tensor:
    """Inclusive sums of a ``_scan_buffer`` of T tokens (or of such sums) into ``out`` of its shape:
    block 0 left to right, block 1 right to left."""
    return _blocked_cumsum(buf, _scan_blocks(T + 2)[0], (False, True), out)


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


def _position_tables(w: torch.Tensor, T: int) -> torch.Tensor:
    """E = (e^{t·w}, e^{-t·w}), (2, T, C): the decay factors of the one-chunk scans over T tokens, within e^{±D},
    D = T·max|w|.

    The exclusive sums factor by position: Σ_{i<t} e^{-(t-1-i)w} x_i = e^w E1_t Σ_{i<t} E0_i x_i and
    Σ_{i>t} e^{-(i-1-t)w} x_i = e^w E0_t Σ_{i>t} E1_i x_i. So one table weighs the terms (input side) and,
    swapped, the sums (output side); the common factor e^w joins the scale of the result.
    """
    return torch.mul(_constant(_positions, T, like=w), w).exp_()


def _one_chunk_sums(x: torch.Tensor, E: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Both exclusive sums of x (2, B, T, C) weighted by ``_position_tables``' E, in one ``_scan_buffer``.

    Returns the buffer and the ``_scratch`` tensor of its sums: left_t = Σ_{i<t} E[0]_i x_i at
    ``sums[0, :, :T]``, right_t = Σ_{i>t} E[1]_i x_i at ``sums[1, :, 2:T + 2]`` (rows: x[0]'s B, then x[1]'s).
    """
    _, B, T, C = x.shape
    buf, terms = _scan_buffer('terms', 2 * B, T, C, x)
    torch.mul(x, E.view(2, 1, 1, T, C), out=terms.view(2, 2, B, T, C))
    return buf, _two_way_cumsum(buf, T, _scratch('sums', buf.shape, x))


def _two_way_parts(sums: torch.Tensor, T: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(left, right) exclusive sums of ``_one_chunk_sums``, each (2, B, T, C)."""
    return sums[0, :, :T].unflatten(0, (2, -1)), sums[1, :, 2:T + 2].unflatten(0, (2, -1))


def _one_chunk_forward(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor, with_log_den: bool):
    """Bi-WKV forward with the whole sequence as one chunk (``_bi_wkv_fits_one_chunk``).

    With m = max_i k_i per (batch, channel) and ek = e^{k - m}, every term of y_t's numerator and denominator
    carries the factor e^{m + w}, which cancels: num_t = E1_t Σ_{i<t} E0_i ek_i v_i + E0_t Σ_{i>t} E1_i ek_i v_i +
    e^{u - w} ek_t v_t (``_position_tables``), den_t the same without v, and log_den = m + w + log den. Both
    directions' numerators and denominators are one ``_one_chunk_sums``. Nothing cancels (den is a sum of
    positive terms), so only the range matters: the terms are at most e^D (ek <= 1), and a term ek_i E_i that underflows
    (float32, below e^-87) has ek_i < e^{-87 + D}. The token j of the maximum key contributes
    e^{-(|t-j|-1)w} >= e^{-D} (or e^u when j = t) to every den_t, and a lost term is below e^{-87 + 2D} of
    that (1e-17 at D = ONE_CHUNK_DECAY), or e^{-87 + 2D + |w| - u} when j = t (at most e^-31 = 3e-14 for
    |u| <= ONE_CHUNK_BONUS): below float32's rounding.
    Intermediates live in ``_scratch`` buffers.
    """
    B, T, C = k.shape
    E = _position_tables(w, T)
    m = k.amax(dim=1, keepdim=True)  # (B, 1, C)
    x = _scratch('values', (2, B, T, C), k)  # (ek·v, ek)
    torch.mul(torch.sub(k, m, out=x[1]).exp_(), v, out=x[0])
    _, sums = _one_chunk_sums(x, E)
    left, right = _two_way_parts(sums, T)
    num, den = torch.mul(left, E[1], out=_scratch('combined', (2, B, T, C), k)).addcmul_(right, E[0]) \
        .addcmul_(x, torch.sub(u, w).exp_())
    return torch.div(num, den), (torch.log(den).add_(m + w) if with_log_den else None)


def bi_wkv_torch_forward(
        w: torch.Tensor,
        u: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        with_log_den: bool = True,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Bi-WKV forward in the dtype of its inputs (float32 or float64).

    When T·max|w| is within ``ONE_CHUNK_DECAY`` (Vision-RWKV scales w by 1/T, so T·|w| is its
    spatial_decay) and max|u| within ``ONE_CHUNK_BONUS``, the scans take the whole sequence as one chunk
    (``_one_chunk_forward``); otherwise chunks of ``choose_chunk_len(w)`` tokens are carried in log space.

    Args:
        w, u: (C,); k, v: (B, T, C), all of one floating dtype.
        with_log_den: also return the log-denominator (the backward needs it; inference does not).

    Returns:
        y: (B, T, C) output; log_den: (B, T, C) log of the softmax denominator, or None.
    """
    if _bi_wkv_fits_one_chunk(k.shape[1], w, u):
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


def _sum_batch_time(x: torch.Tensor) -> torch.Tensor:
    """(B, T, C) -> (C,) sum over batch and time. One dimension at a time: on CPU the two-dimension
    reduction of a view with a row stride (the buffer slices of ``_one_chunk_backward``) runs about
    ten times slower than the two reductions."""
    return x.sum(1).sum(0)


def _one_chunk_backward(
        w: torch.Tensor,
        u: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        y: torch.Tensor,
        log_den: torch.Tensor,
        gy: torch.Tensor,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of Bi-WKV with the whole sequence as one chunk (``_bi_wkv_fits_one_chunk``), in the factored form of
    ``_one_chunk_forward``.

    With a_ti = e^{-(|t-i|-1)w + k_i - log_den_t} the attention of output t on token i (i != t; e^{u + k_t -
    log_den_t} for i = t), ek = e^{k - m + w} and g = gy e^{m - log_den}, a_ti gy_t = ek_i e^{-|t-i|w} g_t
    (e^{u - w} ek_t g_t for i = t), so with x = (g, g·y) and E of ``_position_tables``:

    - S_i = E1_i Σ_{t<i} E0_t x_t + E0_i Σ_{t>i} E1_t x_t + e^{u - w} x_i: the forward's scans on the output
      side (``_one_chunk_sums``), and gv = ek·S_num, gk = v·gv - ek·S_den, gu = e^{u - w} Σ ek·g·(v - y);
    - gw = -Σ_i Σ_{t≠i} (|t-i|-1) a_ti gy_t (v_i - y_t). Left to right, Σ_{t<i} (i-1-t) e^{-(i-t)w} x_t
      = E1_i Σ_{s<i} c_s with c_s = Σ_{t<s} E0_t x_t the first sums (c_s counts token t once for each s with
      t < s < i): a second cumulative sum of the first, no (i-1)·A - B difference. Right to left mirrors it.

    Range: den >= min(e^{-D - |w|}, e^u) (see ``_one_chunk_forward``), so |g| <= |gy| max(e^{D + |w|}, e^{-u})
    and a term E_t x_t is at most e^{2D + |w|} (or e^{D + |u|}) times |gy_t|, |gy_t·y_t|; the first sums are
    at most T times that and the second T^2 times: finite in float32 up to T = 65536 for |gy|, |gy·y| <= 1e7
    even at D = ONE_CHUNK_DECAY and |u| = ONE_CHUNK_BONUS (much further for the models' D of a few units).
    A term E_t x_t that underflows (below e^-87) adds at most ek_i E_i e^-87 <= e^{D + |w| - 87} < 1e-27 to
    a gradient entry. gk and gw are differences (v_i·gv_i - ..., v_i Q_num - Q_den) and cancel where one token
    dominates, as in the chunked backward; everything else is sums of positive terms times signed values.

    Args: w, u (C,); k, v, y, log_den, gy (B, T, C) (y and log_den from the forward).
    Returns: gw, gu (C,); gk, gv (B, T, C).
    """
    B, T, C = k.shape
    E = _position_tables(w, T)
    eu = torch.sub(u, w).exp_()
    m = k.amax(dim=1, keepdim=True)
    ek = torch.sub(k, m - w, out=_scratch('ek', (B, T, C), k)).exp_()
    x = _scratch('values', (2, B, T, C), k)  # (g, g·y)
    g = torch.sub(m, log_den, out=x[0]).exp_().mul_(gy)
    torch.mul(g, y, out=x[1])
    buf, sums = _one_chunk_sums(x, E)
    left, right = _two_way_parts(sums, T)
    s = torch.mul(left, E[1], out=_scratch('combined', (2, B, T, C), k)).addcmul_(right, E[0]).addcmul_(x, eu)
    gv = torch.mul(s[0], ek)
    gk = torch.mul(v, gv).sub_(s[1].mul_(ek))
    gu = _sum_batch_time(torch.sub(v, y, out=s[1]).mul_(g).mul_(ek)).mul_(eu)
    sums = _two_way_cumsum(sums, T, buf)  # second sums: tokens 1..T-1 at 0..T-2 (left to right), 0..T-2 at 3..T+1
    (q1_f, q2_f), (q1_b, q2_b) = sums[0, :, :T - 1].unflatten(0, (2, -1)), sums[1, :, 3:T + 2].unflatten(0, (2, -1))
    ek_f, ek_b = torch.mul(ek[:, 1:], E[1, 1:], out=s[0, :, 1:]), torch.mul(ek[:, :-1], E[0, :-1], out=s[1, :, :-1])
    gw = _sum_batch_time(q1_f.mul_(v[:, 1:]).sub_(q2_f).mul_(ek_f))
    gw += _sum_batch_time(q1_b.mul_(v[:, :-1]).sub_(q2_b).mul_(ek_b))
    return gw.neg_(), gu, gk, gv


def _chunked_backward(
        w: torch.Tensor,
        u: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        y: torch.Tensor,
        log_den: torch.Tensor,
        gy: torch.Tensor,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of Bi-WKV by chunked scans of ``choose_chunk_len(w)`` tokens (any T·max|w|).

    Args and returns as ``bi_wkv_torch_backward``.
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

    Takes the whole sequence as one chunk (``_one_chunk_backward``) wherever the forward does
    (``_bi_wkv_fits_one_chunk``), else chunked scans (``_chunked_backward``).

    Args:
        w, u: (C,); k, v, y, log_den, gy: (B, T, C) (y and log_den from the forward).

    Returns:
        gw, gu: (C,); gk, gv: (B, T, C).
    """
    if _bi_wkv_fits_one_chunk(k.shape[1], w, u):
        return _one_chunk_backward(w, u, k, v, y, log_den, gy)
    return _chunked_backward(w, u, k, v, y, log_den, gy)
