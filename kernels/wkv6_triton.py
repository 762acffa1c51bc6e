"""Bidirectional RWKV-6 WKV (VRWKV6) in Triton: sequence-parallel chunked kernels, forward and backward.

The arithmetic is that of ``wkv6_torch`` (its docstring has the formulas), laid out for the GPU. Per
batch element and head (N = 64 channels), tokens are cut into chunks of L = 64 tokens, and chunks into
sub-blocks of SUB = 16 tokens:

1. **summaries** (every chunk in parallel): the chunk's contribution to the states that cross its
   boundaries, keys^T values with the keys decayed to the chunk's end (left to right) or start (right
   to left), (N, N) each, and the chunk's total decay.
2. **scan** (short, parallel over batch, head, direction and blocks of state elements): the states
   entering every chunk, H_{c+1} = total_c * H_c + delta_c, by ``tl.associative_scan`` over blocks of
   CARRY_BLOCK chunks (T / (L * CARRY_BLOCK) serial steps).
3. **scores** (every sub-block in parallel): the rows of the chunk's (L, L) score matrix P: pairs inside
   the sub-block one key at a time (each pair's exponent a running sum of the log-decays between its
   tokens, terms of one sign), pairs with the other sub-blocks by matmuls of queries and keys decayed to
   the sub-block boundaries.
4. **output** (every chunk in parallel): y = P v + the two chunk states read by the queries decayed from
   the chunk's start / to its end.

No exponent is ever positive: every decay factor is exp of a sum of log-decays <= 0 (weights that
underflow are at most that small). Accumulation is in float32: matmuls over 16 tokens of 0/1 masks run
in fp32 FMA (``EXACT``), the others with three TF32 products (``WIDE``, about 2^-21 relative): fp32 FMA
matmuls over 64 channels hold a 64-long operand slice per thread and spill registers. Inputs and outputs
are fp16, bf16 or fp32 (w and u any of them); offsets are int64; loads and stores of the (B, T, C) tensors
are masked to t < T, those of the chunk buffers (states, P, G: whole tiles of buffers allocated per chunk)
are in bounds by construction; no program reads what another program of its launch writes, and a program
re-reads only what an earlier launch stored.

Backward: states of (k, v) and of (r, gy) (steps 1-2), P (step 3) and each chunk's G[t, s] = gy_t . v_s,
then gr, gk, gv and glw (the gradient of the log-decays) in float32 buffers: pairs inside a sub-block
(``_backward_pairs_kernel``), pairs with the other sub-blocks of the chunk (``_backward_chunk_pairs_kernel``,
one side at a time), pairs with a token outside the chunk (``_backward_inter_kernel``, one side and one
gradient at a time, and ``_beyond_kernel`` for their glw), the last launches writing the gradients in the
inputs' dtypes and gw = glw * lw. Each term of glw_m holds the decay of m (a pair straddling m), so no sum
in glw cancels (see ``wkv6_torch``). Kernels are split this finely so that none spills registers on
sm_90 (tools/triton_compile_check.py).
"""
from typing import Tuple

import torch
import triton
import triton.language as tl

from .interpreter import interpreting, vectorise_interpreter_scans

if interpreting():  # CPU tensors in Triton's interpreter: its element-wise scans would take minutes
    vectorise_interpreter_scans()

#: Tokens per chunk and per sub-block, and chunks per block of the scan (tests shrink them).
CHUNK_LEN = 64
SUB_LEN = 16
CARRY_BLOCK = 32
HEAD_SIZE = 64
#: Floor of the log-decays (w = +inf: decay 0), as in ``wkv6_torch``.
LOG_DECAY_FLOOR = tl.constexpr(-1e30)
#: Matmul precisions: EXACT (fp32 FMA) for the sums of 0/1-masked terms over 16 tokens; WIDE (three TF32
#: tensor-core products, float32 accuracy to about 2^-21) for the others: in fp32 FMA form a matmul holds
#: its whole contraction per thread and spills registers (tools/triton_compile_check.py).
EXACT = tl.constexpr('ieee')
WIDE = tl.constexpr('tf32x3')
#: Elements of the (N, N) state per scan program (the interpreter takes the whole state: fewer programs).
STATE_BLOCK = 128


def state_block() -> int:
    return HEAD_SIZE * HEAD_SIZE if interpreting() else STATE_BLOCK


# ---- loads ----------------------------------------------------------------------------------------
@triton.jit
def _row_starts(t, T, row0, head, C, N: tl.constexpr):
    """int64 offsets of channel 0 of a head at tokens t of a batch element (row0 = b * T), and whether
    t is in [0, T)."""
    valid = (t >= 0) & (t < T)
    return (row0 + tl.where(valid, t, 0).to(tl.int64)) * C + head * N, valid


@triton.jit
def _rows(t, T, row0, head, C, N: tl.constexpr):
    """int64 offsets (len(t), N) of tokens t of a (batch, head) and their mask (t in [0, T))."""
    starts, valid = _row_starts(t, T, row0, head, C, N)
    n = tl.arange(0, N)
    return starts[:, None] + n[None, :], valid[:, None] & (n[None, :] < N)


@triton.jit
def _load(ptr, offs, mask):
    """fp32 tile (0 where masked) of a tensor of any float dtype."""
    return tl.load(ptr + offs, mask=mask, other=0.).to(tl.float32)


@triton.jit
def _log_decay(w_ptr, offs, mask):
    """lw = -exp(w) (0 where masked: no decay), floored at LOG_DECAY_FLOOR (NaN stays NaN)."""
    lw = -tl.exp(tl.load(w_ptr + offs, mask=mask, other=float('-inf')).to(tl.float32))
    return tl.where(lw < LOG_DECAY_FLOOR, LOG_DECAY_FLOOR, lw)


@triton.jit
def _boundary_logs(w_ptr, t, lo, hi, T, row0, head, C, N: tl.constexpr):
    """Exponents of the decays from the block [lo, hi] of tokens t to t (exclusive) and from t (exclusive)
    to the block's end: sum_{lo <= m < t} lw_m and sum_{t < m <= hi} lw_m, as cumulative sums of the
    neighbours' log-decays (terms of one sign, nothing subtracted)."""
    offs, mask = _rows(t - 1, T, row0, head, C, N)
    before = _log_decay(w_ptr, offs, mask & (t - 1 >= lo)[:, None])
    offs, mask = _rows(t + 1, T, row0, head, C, N)
    after = _log_decay(w_ptr, offs, mask & (t + 1 <= hi)[:, None])
    return tl.cumsum(before, 0), tl.cumsum(after, 0, reverse=True)


@triton.jit
def _state_offsets(N: tl.constexpr):
    n = tl.arange(0, N)
    return n[:, None] * N + n[None, :]


# ---- 1. chunk summaries ---------------------------------------------------------------------------
@triton.jit
def _summary_kernel(
        x_ptr, z_ptr, w_ptr, delta_ptr, total_ptr,
        T, H, C, n_chunks, BH,
        L: tl.constexpr, N: tl.constexpr,
):
    """delta[d, bh, c] = (x * decay to the chunk's end (d = 0) or from its start (d = 1))^T z, (N, N);
    total[bh, c] = exp(sum of the chunk's lw). Grid (n_chunks, B * H, 2)."""
    c = tl.program_id(0)
    bh = tl.program_id(1)
    d = tl.program_id(2)
    row0 = (bh // H).to(tl.int64) * T
    head = bh % H
    t = c * L + tl.arange(0, L)
    offs, mask = _rows(t, T, row0, head, C, N)
    x = _load(x_ptr, offs, mask)
    z = _load(z_ptr, offs, mask)
    from_start, to_end = _boundary_logs(w_ptr, t, c * L, c * L + L - 1, T, row0, head, C, N)
    scaled = x * tl.exp(tl.where(d == 0, to_end, from_start))
    delta = tl.dot(tl.trans(scaled), z, input_precision=WIDE)
    base = ((d * BH + bh).to(tl.int64) * n_chunks + c) * N * N
    tl.store(delta_ptr + base + _state_offsets(N), delta)
    n = tl.arange(0, N)
    lw = _log_decay(w_ptr, offs, mask)
    tl.store(total_ptr + (bh.to(tl.int64) * n_chunks + c) * N + n, tl.exp(tl.sum(lw, 0)), mask=(n < N) & (d == 0))


# ---- 2. scan across chunks ------------------------------------------------------------------------
@triton.jit
def _decayed_sum(d1, h1, d2, h2):
    """Segment 1 followed by segment 2: decays multiply, segment 1's sum decays across segment 2."""
    return d1 * d2, h1 * d2 + h2


@triton.jit
def _scan_kernel(
        delta_ptr, total_ptr, states_ptr,
        n_chunks, BH,
        N: tl.constexpr, CB: tl.constexpr, BLOCK: tl.constexpr,
):
    """states[d, bh, c] = the state entering chunk c in direction d (even d: left to right, odd: right to
    left), from the chunk summaries delta[d, bh] and decays total[bh]. Grid (B * H, directions, N * N / BLOCK)."""
    bh = tl.program_id(0)
    d = tl.program_id(1)
    e = tl.program_id(2) * BLOCK + tl.arange(0, BLOCK)  # state elements: row e // N (key), column e % N
    base = (d * BH + bh).to(tl.int64) * n_chunks * N * N
    reverse = d % 2 == 1
    h = tl.zeros([BLOCK], dtype=tl.float32)
    tl.store(states_ptr + base + tl.where(reverse, n_chunks - 1, 0).to(tl.int64) * N * N + e, h, mask=e < N * N)
    for c0 in range(0, n_chunks, CB):
        pos = c0 + tl.arange(0, CB)  # positions in scan order
        valid = pos < n_chunks
        chunk = tl.where(reverse, n_chunks - 1 - pos, pos)
        mask = valid[:, None] & (e[None, :] < N * N)
        delta = tl.load(delta_ptr + base + chunk.to(tl.int64)[:, None] * N * N + e[None, :], mask=mask, other=0.)
        total = tl.load(total_ptr + (bh.to(tl.int64) * n_chunks + chunk)[:, None] * N + (e // N)[None, :],
                        mask=mask, other=1.)
        decay, acc = tl.associative_scan((total, delta), 0, _decayed_sum)
        acc += decay * h[None, :]  # inclusive: the state leaving each chunk
        nxt = tl.where(reverse, chunk - 1, chunk + 1)  # the chunk it enters
        tl.store(states_ptr + base + nxt.to(tl.int64)[:, None] * N * N + e[None, :], acc,
                 mask=mask & ((pos + 1) < n_chunks)[:, None])
        last = tl.minimum(n_chunks - 1 - c0, CB - 1)
        h = tl.sum(tl.where(tl.arange(0, CB)[:, None] == last, acc, 0.), 0)


# ---- 3. score matrices, 4. outputs --------------------------------------------------------------------
@triton.jit
def _pair_scores(r, k, u, w_ptr, r_ptr, k_ptr, base, t0, T, C,
                 SUB: tl.constexpr, N: tl.constexpr):
    """(SUB, SUB) scores P[t, s] = sum_n r_tn k_sn W_n(t, s) of the pairs of one sub-block (u on the
    diagonal); ``base`` is the offset of the sub-block's first token t0 in its head. One key s at a time,
    from the last: the exponent of rows t > s + 1 grows by lw_{s+1}, so each pair's exponent sums the
    log-decays between its tokens, nearest first. (Loads are inline: a helper called in a loop costs the
    interpreter a re-patch per call.)"""
    rows = tl.arange(0, SUB)
    n = tl.arange(0, N)
    exponent = tl.zeros([SUB, N], dtype=tl.float32)
    scores = tl.where(rows[:, None] == rows[None, :], tl.sum(r * u[None, :] * k, 1)[:, None], 0.)
    for jj in range(SUB):
        s = SUB - 1 - jj
        o = base + s * C + n
        nxt = (n < N) & (s + 1 < SUB) & (t0 + s + 1 < T)
        lw_next = -tl.exp(tl.load(w_ptr + o + C, mask=nxt, other=float('-inf')).to(tl.float32))
        lw_next = tl.where(lw_next < LOG_DECAY_FLOOR, LOG_DECAY_FLOOR, lw_next)
        exponent = tl.where(rows[:, None] >= s + 2, exponent + lw_next[None, :], exponent)
        weights = tl.where(rows[:, None] > s, tl.exp(exponent), 0.)
        cur = (n < N) & (t0 + s < T)
        k_s = tl.load(k_ptr + o, mask=cur, other=0.).to(tl.float32)
        r_s = tl.load(r_ptr + o, mask=cur, other=0.).to(tl.float32)
        later_query = tl.sum(r * (weights * k_s[None, :]), 1)  # P[t, s], t > s
        later_key = tl.sum(k * (weights * r_s[None, :]), 1)  # P[s, t], t > s
        scores += tl.where(rows[None, :] == s, later_query[:, None], 0.)
        scores += tl.where(rows[:, None] == s, later_key[None, :], 0.)
    return scores


@triton.jit
def _scores_kernel(
        r_ptr, k_ptr, w_ptr, u_ptr, scores_ptr,
        T, H, C, n_chunks, BH,
        L: tl.constexpr, SUB: tl.constexpr, N: tl.constexpr,
):
    """Rows of one sub-block i of its chunk's (L, L) score matrix P[t, s] = sum_n r_tn k_sn W_n(t, s)
    (u on the diagonal): its own pairs (``_pair_scores``), and for each other sub-block j of the chunk
    the matmul of the queries and keys decayed to the boundaries between them (j < i: W(t, s) =
    exp(from_start_t) exp(decay of the sub-blocks between) exp(to_end_s); j > i the mirror image).
    Tokens past T give zeros. Grid (n_chunks * L / SUB, B * H)."""
    NB: tl.constexpr = L // SUB
    c = tl.program_id(0) // NB
    i = tl.program_id(0) % NB
    bh = tl.program_id(1)
    row0 = (bh // H).to(tl.int64) * T
    head = bh % H
    t0 = c * L + i * SUB
    rows = tl.arange(0, SUB)
    n = tl.arange(0, N)
    offs, mask = _rows(t0 + rows, T, row0, head, C, N)
    r = _load(r_ptr, offs, mask)
    k = _load(k_ptr, offs, mask)
    u = tl.load(u_ptr + head * N + n, mask=n < N, other=0.).to(tl.float32)
    from_start, to_end = _boundary_logs(w_ptr, t0 + rows, t0, t0 + SUB - 1, T, row0, head, C, N)
    out = scores_ptr + (bh.to(tl.int64) * n_chunks + c) * L * L + (i * SUB + rows)[:, None] * L + rows[None, :]
    block = rows[:, None] < SUB  # (SUB, 1): every element of the buffer's block is in bounds
    tl.store(out + i * SUB, _pair_scores(r, k, u, w_ptr, r_ptr, k_ptr, (row0 + t0) * C + head * N, t0, T, C,
                                         SUB, N), mask=block)
    r_a = r * tl.exp(from_start)
    between = tl.zeros([N], dtype=tl.float32)
    for jj in range(0, i):
        j = i - 1 - jj
        j0 = c * L + j * SUB
        offs_j, mask_j = _rows(j0 + rows, T, row0, head, C, N)
        _, to_end_j = _boundary_logs(w_ptr, j0 + rows, j0, j0 + SUB - 1, T, row0, head, C, N)
        k_j = _load(k_ptr, offs_j, mask_j) * tl.exp(to_end_j + between[None, :])
        tl.store(out + j * SUB, tl.dot(r_a, tl.trans(k_j), input_precision=WIDE), mask=block)
        between += tl.sum(_log_decay(w_ptr, offs_j, mask_j), 0)
    r_b = r * tl.exp(to_end)
    between = tl.zeros([N], dtype=tl.float32)
    for j in range(i + 1, NB):
        j0 = c * L + j * SUB
        offs_j, mask_j = _rows(j0 + rows, T, row0, head, C, N)
        from_start_j, _ = _boundary_logs(w_ptr, j0 + rows, j0, j0 + SUB - 1, T, row0, head, C, N)
        k_j = _load(k_ptr, offs_j, mask_j) * tl.exp(from_start_j + between[None, :])
        tl.store(out + j * SUB, tl.dot(r_b, tl.trans(k_j), input_precision=WIDE), mask=block)
        between += tl.sum(_log_decay(w_ptr, offs_j, mask_j), 0)


@triton.jit
def _chunk_tile(ptr, c, T, row0, head, C, L: tl.constexpr, N: tl.constexpr):
    offs, mask = _rows(c * L + tl.arange(0, L), T, row0, head, C, N)
    return _load(ptr, offs, mask)


@triton.jit
def _forward_output_kernel(
        r_ptr, v_ptr, w_ptr, scores_ptr, states_ptr, y_ptr,
        T, H, C, n_chunks, BH,
        L: tl.constexpr, N: tl.constexpr,
):
    """y of one chunk: P v (pairs inside the chunk) plus the states entering it from each side, read by
    the queries decayed from the chunk's start (left) or to its end (right). Grid (n_chunks, B * H)."""
    c = tl.program_id(0)
    bh = tl.program_id(1)
    row0 = (bh // H).to(tl.int64) * T
    head = bh % H
    t = c * L + tl.arange(0, L)
    offs, mask = _rows(t, T, row0, head, C, N)
    r = _load(r_ptr, offs, mask)
    chunk = (bh.to(tl.int64) * n_chunks + c)
    y = tl.dot(tl.load(scores_ptr + chunk * L * L + _state_offsets(L)), _load(v_ptr, offs, mask), input_precision=WIDE)
    from_start, to_end = _boundary_logs(w_ptr, t, c * L, c * L + L - 1, T, row0, head, C, N)
    state = states_ptr + chunk * N * N + _state_offsets(N)
    y += tl.dot(r * tl.exp(from_start), tl.load(state), input_precision=WIDE)
    y += tl.dot(r * tl.exp(to_end), tl.load(state + BH.to(tl.int64) * n_chunks * N * N), input_precision=WIDE)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


# ---- backward -------------------------------------------------------------------------------------
@triton.jit
def _pair_grads(r, k, v, gy, u, w_ptr, r_ptr, k_ptr, v_ptr, gy_ptr, base, t0, T, C,
                SUB: tl.constexpr, N: tl.constexpr):
    """Gradient parts of the pairs of one sub-block and of its bonus terms (see ``_pair_scores``):
    gr, gk, gv (SUB, N), glw (SUB, N) from the pairs straddling each token, gu (N,)."""
    rows = tl.arange(0, SUB)
    n = tl.arange(0, N)
    diag = tl.sum(gy * v, 1)[:, None]  # G[t, t]
    gr = diag * u[None, :] * k
    gk = diag * u[None, :] * r
    gv = tl.sum(r * u[None, :] * k, 1)[:, None] * gy
    gu = tl.sum(diag * r * k, 0)
    glw = tl.zeros([SUB, N], dtype=tl.float32)
    exponent = tl.zeros([SUB, N], dtype=tl.float32)
    for jj in range(SUB):
        s = SUB - 1 - jj
        o = base + s * C + n
        nxt = (n < N) & (s + 1 < SUB) & (t0 + s + 1 < T)
        lw_next = -tl.exp(tl.load(w_ptr + o + C, mask=nxt, other=float('-inf')).to(tl.float32))
        lw_next = tl.where(lw_next < LOG_DECAY_FLOOR, LOG_DECAY_FLOOR, lw_next)
        exponent = tl.where(rows[:, None] >= s + 2, exponent + lw_next[None, :], exponent)
        weights = tl.where(rows[:, None] > s, tl.exp(exponent), 0.)
        cur = (n < N) & (t0 + s < T)
        k_s = tl.load(k_ptr + o, mask=cur, other=0.).to(tl.float32)
        r_s = tl.load(r_ptr + o, mask=cur, other=0.).to(tl.float32)
        v_s = tl.load(v_ptr + o, mask=cur, other=0.).to(tl.float32)
        gy_s = tl.load(gy_ptr + o, mask=cur, other=0.).to(tl.float32)
        g_query = tl.sum(gy * v_s[None, :], 1)[:, None]  # G[t, s]: query t > s, key s
        g_key = tl.sum(v * gy_s[None, :], 1)[:, None]  # G[s, t]: query s, key t > s
        w_k = weights * k_s[None, :]
        w_r = weights * r_s[None, :]
        p_query = tl.sum(r * w_k, 1)[:, None]  # P[t, s]
        p_key = tl.sum(k * w_r, 1)[:, None]  # P[s, t]
        gr += g_query * w_k
        gk += g_key * w_r
        gv += p_key * gy_s[None, :]
        row_s = rows[:, None] == s
        gr += tl.where(row_s, tl.sum(g_key * k * weights, 0)[None, :], 0.)
        gk += tl.where(row_s, tl.sum(g_query * r * weights, 0)[None, :], 0.)
        gv += tl.where(row_s, tl.sum(p_query * gy, 0)[None, :], 0.)
        # both pairs (t, s) and (s, t) straddle the tokens m with s < m < t: glw_m += sum_{t > m} of them
        terms = g_query * r * w_k + g_key * k * w_r
        straddle = ((rows[None, :] > rows[:, None]) & (rows[:, None] > s)).to(tl.float32)
        glw += tl.dot(straddle, terms, input_precision=EXACT)
    return gr, gk, gv, glw, gu


@triton.jit
def _grads_kernel(
        gy_ptr, v_ptr, grads_ptr,
        T, H, C, n_chunks,
        L: tl.constexpr, N: tl.constexpr,
):
    """G[t, s] = gy_t . v_s for the pairs of each chunk, (L, L). Grid (n_chunks, B * H)."""
    c = tl.program_id(0)
    bh = tl.program_id(1)
    row0 = (bh // H).to(tl.int64) * T
    gy = _chunk_tile(gy_ptr, c, T, row0, bh % H, C, L, N)
    v = _chunk_tile(v_ptr, c, T, row0, bh % H, C, L, N)
    out = grads_ptr + (bh.to(tl.int64) * n_chunks + c) * L * L + _state_offsets(L)
    tl.store(out, tl.dot(gy, tl.trans(v), input_precision=WIDE))


@triton.jit
def _block_t(ptr, j, i, L: tl.constexpr, SUB: tl.constexpr):
    """Block (rows of sub-block j, columns of sub-block i) of an (L, L) matrix, transposed: [t, s] = M[s, t]."""
    rows = tl.arange(0, SUB)
    return tl.load(ptr + (j * SUB + rows)[None, :] * L + (i * SUB + rows)[:, None])


@triton.jit
def _backward_pairs_kernel(
        r_ptr, k_ptr, v_ptr, w_ptr, u_ptr, gy_ptr, gr_ptr, gk_ptr, gv_ptr, glw_ptr, gu_ptr,
        T, H, C, n_chunks, BH,
        L: tl.constexpr, SUB: tl.constexpr, N: tl.constexpr,
):
    """Gradient parts (float32 gr, gk, gv, glw, and gu) of the pairs inside one sub-block and of its bonus
    terms (``_pair_grads``). Grid (n_chunks * L / SUB, B * H)."""
    bh = tl.program_id(1)
    row0 = (bh // H).to(tl.int64) * T
    head = bh % H
    t0 = tl.program_id(0) * SUB
    if t0 >= T:
        return
    n = tl.arange(0, N)
    offs, mask = _rows(t0 + tl.arange(0, SUB), T, row0, head, C, N)
    r = _load(r_ptr, offs, mask)
    k = _load(k_ptr, offs, mask)
    v = _load(v_ptr, offs, mask)
    gy = _load(gy_ptr, offs, mask)
    u = tl.load(u_ptr + head * N + n, mask=n < N, other=0.).to(tl.float32)
    gr, gk, gv, glw, gu = _pair_grads(r, k, v, gy, u, w_ptr, r_ptr, k_ptr, v_ptr, gy_ptr,
                                      (row0 + t0) * C + head * N, t0, T, C, SUB, N)
    tl.store(gr_ptr + offs, gr, mask=mask)
    tl.store(gk_ptr + offs, gk, mask=mask)
    tl.store(gv_ptr + offs, gv, mask=mask)
    tl.store(glw_ptr + offs, glw, mask=mask)
    tl.store(gu_ptr + (tl.program_id(0).to(tl.int64) * BH + bh) * N + n, gu, mask=n < N)


@triton.jit
def _backward_chunk_pairs_kernel(
        r_ptr, k_ptr, gy_ptr, w_ptr, scores_ptr, grads_ptr, gr_ptr, gk_ptr, gv_ptr, glw_ptr,
        T, H, C, n_chunks, BH,
        L: tl.constexpr, SUB: tl.constexpr, N: tl.constexpr, SIDE: tl.constexpr,
):
    """Adds to the float32 gr, gk, gv, glw of one sub-block i the parts of the pairs with the other
    sub-blocks j of its chunk on one side (SIDE 0: j < i; 1: j > i): matmuls of the blocks of P and G with
    the keys / queries decayed to the boundaries (j < i: W(t, s) = exp(from_start_t) exp(decay of the
    sub-blocks between) exp(to_end_s); j > i the mirror image). glw_m of a pair with one token t in the
    sub-block: m between t and the edge facing the other; side 0 also adds the pairs with a token in an
    earlier and one in a later sub-block, which straddle every m of the sub-block (times its decay).
    Grid (n_chunks * L / SUB, B * H)."""
    NB: tl.constexpr = L // SUB
    c = tl.program_id(0) // NB
    i = tl.program_id(0) % NB
    bh = tl.program_id(1)
    row0 = (bh // H).to(tl.int64) * T
    head = bh % H
    t0 = c * L + i * SUB
    if t0 >= T:
        return
    rows = tl.arange(0, SUB)
    offs, mask = _rows(t0 + rows, T, row0, head, C, N)
    chunk = (bh.to(tl.int64) * n_chunks + c) * L * L
    grads = grads_ptr + chunk
    scores = scores_ptr + chunk
    rows_i = (i * SUB + rows)[:, None] * L
    gr = tl.zeros([SUB, N], dtype=tl.float32)
    gk = tl.zeros([SUB, N], dtype=tl.float32)
    gv = tl.load(gv_ptr + offs, mask=mask, other=0.)
    spanning = tl.zeros([N], dtype=tl.float32)
    between = tl.zeros([N], dtype=tl.float32)
    for jj in range(0, i if SIDE == 0 else NB - 1 - i):
        j = i - 1 - jj if SIDE == 0 else i + 1 + jj
        j0 = c * L + j * SUB
        offs_j, mask_j = _rows(j0 + rows, T, row0, head, C, N)
        from_start_j, to_end_j = _boundary_logs(w_ptr, j0 + rows, j0, j0 + SUB - 1, T, row0, head, C, N)
        decay = tl.exp((to_end_j if SIDE == 0 else from_start_j) + between[None, :])
        k_j = _load(k_ptr, offs_j, mask_j) * decay
        r_j = _load(r_ptr, offs_j, mask_j) * decay
        gr += tl.dot(tl.load(grads + rows_i + j * SUB + rows[None, :]), k_j, input_precision=WIDE)
        gk += tl.dot(_block_t(grads, j, i, L, SUB), r_j, input_precision=WIDE)
        gv += tl.dot(_block_t(scores, j, i, L, SUB), _load(gy_ptr, offs_j, mask_j), input_precision=WIDE)
        if SIDE == 0:  # pairs of j with the sub-blocks q after i span i
            after = tl.zeros([N], dtype=tl.float32)
            for q in range(i + 1, NB):
                q0 = c * L + q * SUB
                offs_q, mask_q = _rows(q0 + rows, T, row0, head, C, N)
                from_start_q, _ = _boundary_logs(w_ptr, q0 + rows, q0, q0 + SUB - 1, T, row0, head, C, N)
                decay_q = tl.exp(from_start_q + after[None, :])
                lr = tl.dot(tl.load(grads + (q * SUB + rows)[:, None] * L + j * SUB + rows[None, :]), k_j,
                            input_precision=WIDE)  # query in q, key in j
                rl = tl.dot(tl.load(grads + (j * SUB + rows)[:, None] * L + q * SUB + rows[None, :]),
                            _load(k_ptr, offs_q, mask_q) * decay_q, input_precision=WIDE)  # query in j, key in q
                spanning += tl.sum(_load(r_ptr, offs_q, mask_q) * decay_q * lr + r_j * rl, 0)
                after += tl.sum(_log_decay(w_ptr, offs_q, mask_q), 0)
        between += tl.sum(_log_decay(w_ptr, offs_j, mask_j), 0)
    from_start, to_end = _boundary_logs(w_ptr, t0 + rows, t0, t0 + SUB - 1, T, row0, head, C, N)
    decay = tl.exp(from_start if SIDE == 0 else to_end)
    gr *= decay
    gk *= decay
    if SIDE == 0:
        beyond = (rows[None, :] > rows[:, None]).to(tl.float32)  # [m, t]: t > m
    else:
        beyond = (rows[None, :] < rows[:, None]).to(tl.float32)  # [m, t]: t < m
    glw = tl.dot(beyond, _load(r_ptr, offs, mask) * gr + _load(k_ptr, offs, mask) * gk, input_precision=EXACT)
    if SIDE == 0:
        glw += (spanning * tl.exp(tl.sum(_log_decay(w_ptr, offs, mask), 0)))[None, :]
    tl.store(gr_ptr + offs, tl.load(gr_ptr + offs, mask=mask, other=0.) + gr, mask=mask)
    tl.store(gk_ptr + offs, tl.load(gk_ptr + offs, mask=mask, other=0.) + gk, mask=mask)
    tl.store(gv_ptr + offs, gv, mask=mask)
    tl.store(glw_ptr + offs, tl.load(glw_ptr + offs, mask=mask, other=0.) + glw, mask=mask)


@triton.jit
def _chunk_decay(w_ptr, t, c, T, row0, head, C, L: tl.constexpr, N: tl.constexpr, SIDE: tl.constexpr):
    """Decay between tokens t of chunk c and its start (SIDE 0: exp(from_start)) or end (1: exp(to_end))."""
    from_start, to_end = _boundary_logs(w_ptr, t, c * L, c * L + L - 1, T, row0, head, C, N)
    return tl.exp(from_start if SIDE == 0 else to_end)


@triton.jit
def _backward_inter_kernel(
        x_ptr, y_ptr, w_ptr, states_ptr, part_ptr, terms_ptr, out_ptr,
        T, H, C, n_chunks, BH,
        L: tl.constexpr, N: tl.constexpr, SIDE: tl.constexpr, PART: tl.constexpr, LAST: tl.constexpr,
):
    """One part of the gradients of one chunk from the pairs with one token in the chunk and the other
    outside it, on one side (SIDE 0: in earlier chunks, state index 0 / 2; SIDE 1: later, 1 / 3):

    - PART 0: gr += decay * (gy S(k, v)^T), with x = r, y = gy;
    - PART 1: gk += decay * (v S(r, gy)^T), with x = k, y = v;
    - PART 2: gv += (k * decay) S(r, gy), with x = k;

    ``decay`` is exp(from_start) on side 0 (from the chunk's start to the token), exp(to_end) on side 1.
    The float32 ``part_ptr`` is read and written, or with LAST read and written to ``out_ptr`` in its dtype.
    Parts 0 and 1 also leave x * (their increment) in ``terms_ptr`` (part 0 writes, part 1 adds), the glw
    terms of these pairs (``_beyond_kernel``). Grid (n_chunks, B * H)."""
    c = tl.program_id(0)
    bh = tl.program_id(1)
    row0 = (bh // H).to(tl.int64) * T
    head = bh % H
    t = c * L + tl.arange(0, L)
    offs, mask = _rows(t, T, row0, head, C, N)
    plane = BH.to(tl.int64) * n_chunks * N * N
    state_ptr = states_ptr + (bh.to(tl.int64) * n_chunks + c) * N * N + (SIDE + (0 if PART == 0 else 2)) * plane
    n = tl.arange(0, N)
    if PART == 2:
        part = tl.dot(_load(x_ptr, offs, mask) * _chunk_decay(w_ptr, t, c, T, row0, head, C, L, N, SIDE),
                      tl.load(state_ptr + _state_offsets(N)), input_precision=WIDE)
    else:
        state_t = tl.load(state_ptr + n[None, :] * N + n[:, None])  # S^T
        part = tl.dot(_load(y_ptr, offs, mask), state_t, input_precision=WIDE)
        part *= _chunk_decay(w_ptr, t, c, T, row0, head, C, L, N, SIDE)
        terms = _load(x_ptr, offs, mask) * part
        if PART == 1:
            terms += tl.load(terms_ptr + offs, mask=mask, other=0.)
        tl.store(terms_ptr + offs, terms, mask=mask)
    part += tl.load(part_ptr + offs, mask=mask, other=0.)
    if LAST:
        tl.store(out_ptr + offs, part.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(part_ptr + offs, part, mask=mask)


@triton.jit
def _beyond_kernel(
        w_ptr, states_ptr, total_ptr, terms_ptr, glw_ptr, gw_ptr,
        T, H, C, n_chunks, BH,
        L: tl.constexpr, N: tl.constexpr, SIDE: tl.constexpr,
):
    """glw_m += sum of the ``_backward_inter_kernel`` terms of the chunk's tokens t beyond m (t > m on side 0,
    t < m on side 1): a pair with one token t in the chunk straddles the m between t and the chunk's edge
    facing the other token. Side 1 then adds the pairs spanning the chunk (the chunk's decay times
    sum over values of S^<(k, v) S^>(r, gy) + S^<(r, gy) S^>(k, v)) and writes gw = glw * lw in its dtype.
    Grid (n_chunks, B * H)."""
    c = tl.program_id(0)
    bh = tl.program_id(1)
    row0 = (bh // H).to(tl.int64) * T
    head = bh % H
    rows = tl.arange(0, L)
    offs, mask = _rows(c * L + rows, T, row0, head, C, N)
    if SIDE == 0:
        beyond = (rows[None, :] > rows[:, None]).to(tl.float32)  # [m, t]: t > m
    else:
        beyond = (rows[None, :] < rows[:, None]).to(tl.float32)  # [m, t]: t < m
    glw = tl.load(glw_ptr + offs, mask=mask, other=0.)
    glw += tl.dot(beyond, tl.load(terms_ptr + offs, mask=mask, other=0.), input_precision=WIDE)
    if SIDE == 0:
        tl.store(glw_ptr + offs, glw, mask=mask)
    else:
        n = tl.arange(0, N)
        plane = BH.to(tl.int64) * n_chunks * N * N
        state = states_ptr + (bh.to(tl.int64) * n_chunks + c) * N * N + _state_offsets(N)
        spanning = tl.sum(tl.load(state) * tl.load(state + 3 * plane), 1)  # S^<(k, v) S^>(r, gy)
        spanning += tl.sum(tl.load(state + 2 * plane) * tl.load(state + plane), 1)
        spanning *= tl.load(total_ptr + (bh.to(tl.int64) * n_chunks + c) * N + n, mask=n < N, other=0.)
        lw = _log_decay(w_ptr, offs, mask)
        tl.store(gw_ptr + offs, ((glw + spanning[None, :]) * lw).to(gw_ptr.dtype.element_ty), mask=mask)


# ---- host -----------------------------------------------------------------------------------------
class _Plan:
    """Launch geometry and buffers for (B, T, C) inputs."""

    def __init__(self, B: int, T: int, C: int):
        self.B, self.T, self.C = B, T, C
        self.H = C // HEAD_SIZE
        self.BH = B * self.H
        self.L, self.SUB = CHUNK_LEN, SUB_LEN
        self.n_chunks = triton.cdiv(T, self.L)
        self.sub_blocks = self.n_chunks * (self.L // self.SUB)
        self.layout = (T, self.H, C, self.n_chunks, self.BH)

    def matrices(self, device, count: int, size: int) -> torch.Tensor:
        return torch.empty(count, self.BH, self.n_chunks, size, size, device=device, dtype=torch.float32)

    def chunk_states(self, pairs, w) -> Tuple[torch.Tensor, torch.Tensor]:
        """States entering every chunk: for each (x, z) of ``pairs``, left to right (x decayed to the chunk's
        end) then right to left (from its start): (2 * len(pairs), B * H, n, N, N) float32; and the chunks'
        decays (B * H, n, N)."""
        deltas = self.matrices(w.device, 2 * len(pairs), HEAD_SIZE)
        total = torch.empty(self.BH, self.n_chunks, HEAD_SIZE, device=w.device, dtype=torch.float32)
        for p, (x, z) in enumerate(pairs):
            _summary_kernel[(self.n_chunks, self.BH, 2)](
                x, z, w, deltas[2 * p:], total, *self.layout, L=self.L, N=HEAD_SIZE, num_warps=8)
        states = torch.empty_like(deltas)
        block = state_block()
        _scan_kernel[(self.BH, deltas.shape[0], HEAD_SIZE * HEAD_SIZE // block)](
            deltas, total, states, self.n_chunks, self.BH, N=HEAD_SIZE, CB=CARRY_BLOCK, BLOCK=block, num_warps=4)
        return states, total

    def scores(self, r, k, w, u) -> torch.Tensor:
        """Each chunk's (L, L) score matrix P (``_scores_kernel``): (B * H, n, L, L) float32."""
        scores = self.matrices(k.device, 1, self.L)[0]
        _scores_kernel[(self.sub_blocks, self.BH)](
            r, k, w, u, scores, *self.layout, L=self.L, SUB=self.SUB, N=HEAD_SIZE, num_warps=8)
        return scores


def _contiguous(*tensors):
    return [t.contiguous() for t in tensors]


def wkv6_triton_forward(r: torch.Tensor, k: torch.Tensor, v: torch.Tensor, w: torch.Tensor,
                        u: torch.Tensor) -> torch.Tensor:
    """Forward: chunk summaries, scan, score matrices, outputs.

    Args:
        r, k, v, w: (B, T, C) fp16, bf16 or fp32 (any mix), C = 64 H; u: (H, 64).

    Returns:
        y: (B, T, C) in the dtype of r.
    """
    r, k, v, w, u = _contiguous(r, k, v, w, u)
    plan = _Plan(*k.shape)
    states, _ = plan.chunk_states([(k, v)], w)
    scores = plan.scores(r, k, w, u)
    y = torch.empty_like(r)
    _forward_output_kernel[(plan.n_chunks, plan.BH)](
        r, v, w, scores, states, y, *plan.layout, L=plan.L, N=HEAD_SIZE, num_warps=8)
    return y


def wkv6_triton_backward(r: torch.Tensor, k: torch.Tensor, v: torch.Tensor, w: torch.Tensor, u: torch.Tensor,
                         gy: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """Backward: chunk states of (k, v) and (r, gy), score matrices P and G, the pairs inside each chunk
    (by sub-block), then those with a token outside (by chunk, one side at a time).

    Args:
        r, k, v, w, u: the forward's inputs; gy: (B, T, C) gradient of y (any float dtype).

    Returns:
        gr, gk, gv, gw (B, T, C) in the dtypes of r, k, v, w; gu (H, 64) float32.
    """
    r, k, v, w, u, gy = _contiguous(r, k, v, w, u, gy)
    plan = _Plan(*k.shape)
    states, total = plan.chunk_states([(k, v), (r, gy)], w)
    scores = plan.scores(r, k, w, u)
    grads = torch.empty_like(scores)
    _grads_kernel[(plan.n_chunks, plan.BH)](gy, v, grads, plan.T, plan.H, plan.C, plan.n_chunks,
                                            L=plan.L, N=HEAD_SIZE, num_warps=8)
    parts = [torch.empty(k.shape, device=k.device, dtype=torch.float32) for _ in range(4)]  # gr, gk, gv, glw
    gu = torch.zeros(plan.sub_blocks, plan.BH, HEAD_SIZE, device=k.device, dtype=torch.float32)
    meta = dict(L=plan.L, SUB=plan.SUB, N=HEAD_SIZE)
    _backward_pairs_kernel[(plan.sub_blocks, plan.BH)](r, k, v, w, u, gy, *parts, gu, *plan.layout, **meta,
                                                       num_warps=8)
    for side in (0, 1):
        _backward_chunk_pairs_kernel[(plan.sub_blocks, plan.BH)](r, k, gy, w, scores, grads, *parts, *plan.layout,
                                                                 **meta, SIDE=side, num_warps=8)
    outs = [torch.empty_like(x) for x in (r, k, v, w)]
    terms = torch.empty(k.shape, device=k.device, dtype=torch.float32)
    grid = (plan.n_chunks, plan.BH)
    for side in (0, 1):
        for part, (x, y) in enumerate(((r, gy), (k, v), (k, k))):  # (x, y) of parts 0, 1, 2 (y unused in 2)
            _backward_inter_kernel[grid](x, y, w, states, parts[part], terms, outs[part], *plan.layout,
                                         L=plan.L, N=HEAD_SIZE, SIDE=side, PART=part, LAST=side == 1, num_warps=8)
        _beyond_kernel[grid](w, states, total, terms, parts[3], outs[3], *plan.layout, L=plan.L, N=HEAD_SIZE,
                             SIDE=side, num_warps=8)
    return (*outs, gu.sum(0).view(plan.B, plan.H, HEAD_SIZE).sum(0))
