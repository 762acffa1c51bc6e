"""2D Bi-WKV Triton kernels: sequence-parallel row and column scans, forward and backward.

The sum over the grid splits as in ``bi_wkv_2d``: the token's own row (R, the exclusive two-sided
row sum), the other rows (the exclusive two-sided column sum of the inclusive row sums
I = e^{-w}·R + e^{k}·(v, 1)) and the bonus e^{u+k}·(v, 1). Every sum is a log-space state of
``triton_scan`` (values · e^{p}), combined under shared maxima: nothing overflows, nothing large is
subtracted. Tokens are row-major, channel-last (B, H·W, C): row lines step by one token, column lines
by W tokens, and every access is a contiguous channel vector.

A pass (rows, then columns) cuts its lines into chunks of CHUNK tokens (``choose_chunk_len``) and
runs three launches; the launches are the only ordering between phases:

1. totals: a program per (chunk, channel block) reduces its chunk to two states, left-to-right seen
   from the chunk's last position and right-to-left seen from its first (a max of the log-weights,
   then a sum of e^{e - max}; all weights are positive);
2. carries: a program per (line, channel block, direction) scans its line's chunk totals with
   ``tl.associative_scan`` over blocks of ``choose_carry_block`` chunks (blocks carried serially) and
   writes the inclusive scan; chunk c's incoming carry is entry c - 1 (left-to-right) or c + 1;
3. finish: a program per (chunk, channel block) scans its (CHUNK, BLOCK_C) tile whose element 0 is
   the carry and element r the token r - 1: that gives every token's exclusive state. Right-to-left
   scans the tokens loaded in reverse order (no ``reverse=True``) and a ``tl.gather`` puts the result
   back in token order. All parts are combined under one maximum and stored once.

Phases 1 and 2 are skipped when a line fits one chunk. No program reads what any program of its own
launch stores; every load and store is masked; token and scratch offsets are int64.

Forward: the row pass writes R as (num / den, log den) planes, the column pass rebuilds I from R and
writes y and log_den. Scratch: R, (B·T, 2, C) floats, and per pass the chunk totals and carries,
2 · (n_chunks · lines, 2 directions, 3 planes, C), about 12 / CHUNK of a (B, T, C) tensor. The
forward keeps only y and log_den; the backward reads k, v, y, log_den and gy, nothing else.

Backward: with q = -log den, gk and gv are the same 2D scan on the output side (keys q, values gy
and gy·y), as the Manhattan distance is symmetric. Its states also carry the distance sums
D = Σ (d - 1)·term (``combine2_dist``), which give gw = -Σ_s e^{k_s}·(v_s·D1_s - D2_s); an item folded
into a column state brings its own row distances, D_I = e^{-w}·(D_R + R). The row pass writes R as five
planes (a1, a2, d1, d2, p), (B·T, 5, C) floats, plus totals and carries of 5 planes (20 / CHUNK of a
tensor); the column pass writes gk, gv and per-program partials of gw and gu, (programs, C), summed on
the host (no atomics).
"""
from typing import NamedTuple, Tuple

import torch
import triton
import triton.language as tl

from .triton_scan import NEG_INF, add_states, combine2, combine2_dist, last_row, ratio_and_log

_FWD_PLANES = 3  # forward chunk totals and carries: a1, a2, p
_BWD_PLANES = 5  # backward states: a1, a2, d1, d2, p


def choose_chunk_len(length: int) -> int:
    """Tokens per chunk of a line of ``length`` tokens: a power of two from 2 to 32 (16 up to 64-token
    lines, else 32), so a 64 x 64 grid has four chunks per line."""
    return max(2, min(16 if length <= 64 else 32, triton.next_power_of_2(length)))


def choose_carry_block(n_chunks: int) -> int:
    """Chunk totals per ``tl.associative_scan`` block of the carry phase (a power of two, 2 to 32)."""
    return max(2, min(32, triton.next_power_of_2(n_chunks)))


def _block_c(C: int) -> int:
    """Channels per program: a power of two up to 32 (one 128-byte fp32 row)."""
    return min(32, triton.next_power_of_2(C))


def _num_warps(rows: int, block_c: int) -> int:
    """Warps for a (rows, block_c) tile: 4 elements per thread, 1 to 8 warps (ptxas for sm_90a: the
    backward column finish then needs about 100 registers and does not spill at 16 x 32 or 32 x 32)."""
    return max(1, min(8, rows * block_c // 128))


class _Lines(NamedTuple):
    """The lines of one pass: per batch ``n_lines`` lines of ``length`` tokens, line l starting at token
    l·stride, its tokens ``step`` apart, cut into ``n_chunks`` chunks of ``chunk`` tokens."""
    batch: int
    n_lines: int
    length: int
    stride: int
    step: int
    chunk: int
    n_chunks: int

    @property
    def n_items(self) -> int:
        """Chunks of all lines (programs along axis 0 of the totals and finish launches)."""
        return self.batch * self.n_lines * self.n_chunks

    @property
    def geometry(self) -> Tuple[int, int, int, int, int]:
        return self.n_lines, self.length, self.stride, self.step, self.n_chunks


def _lines(B: int, n_lines: int, length: int, stride: int, step: int) -> _Lines:
    chunk = choose_chunk_len(length)
    return _Lines(B, n_lines, length, stride, step, chunk, triton.cdiv(length, chunk))


def _row_lines(B: int, H: int, W: int) -> _Lines:
    return _lines(B, H, W, W, 1)


def _col_lines(B: int, H: int, W: int) -> _Lines:
    return _lines(B, W, H, 1, W)


# ---------------------------------------------------------------------------------------------
# shared pieces

@triton.jit
def _channels(C, BLOCK_C: tl.constexpr):
    """This program's channel lanes (program axis 1) and their mask."""
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    return offs_c, offs_c < C


@triton.jit
def _chunk_of_program(T, n_lines, stride, step, n_chunks, CHUNK: tl.constexpr):
    """(item, chunk, pos0, first) of this program (axis 0 = (batch, line, chunk) flattened): the
    chunk's index over all lines, in its line, its first position in the line, its first token (int64)."""
    item = tl.program_id(0).to(tl.int64)
    chunk = item % n_chunks
    line = item // n_chunks
    pos0 = chunk * CHUNK
    first = (line // n_lines) * T + (line % n_lines) * stride + pos0 * step
    return item, chunk, pos0, first


@triton.jit
def _shifted_layout(rows, item, chunk, pos0, length, n_chunks, CHUNK: tl.constexpr, REVERSE: tl.constexpr):
    """Layout of a finishing scan: element 0 is the incoming carry, element r >= 1 chunk position
    r - 1 (REVERSE: CHUNK - r). Returns the positions (0 where invalid), their validity, the carry's
    entry and direction in the carries buffer, and whether there is a carry."""
    if REVERSE:
        pos = CHUNK - rows
        src = item + 1
        direction = 1
        has_carry = chunk + 1 < n_chunks
    else:
        pos = rows - 1
        src = item - 1
        direction = 0
        has_carry = chunk > 0
    valid = (rows >= 1) & (pos0 + pos < length)
    return tl.where(valid, pos, 0), valid, src, direction, has_carry


@triton.jit
def _load_state3(ptr, offs, C, mask):
    """(a1, a2, p) from three planes C apart (empty where masked)."""
    return (tl.load(ptr + offs, mask=mask, other=0.), tl.load(ptr + offs + C, mask=mask, other=0.),
            tl.load(ptr + offs + 2 * C, mask=mask, other=NEG_INF))


@triton.jit
def _store_state3(ptr, offs, C, mask, a1, a2, p):
    tl.store(ptr + offs, a1, mask=mask)
    tl.store(ptr + offs + C, a2, mask=mask)
    tl.store(ptr + offs + 2 * C, p, mask=mask)


@triton.jit
def _load_state5(ptr, offs, C, mask):
    """(a1, a2, d1, d2, p) from five planes C apart (empty where masked)."""
    return (tl.load(ptr + offs, mask=mask, other=0.), tl.load(ptr + offs + C, mask=mask, other=0.),
            tl.load(ptr + offs + 2 * C, mask=mask, other=0.), tl.load(ptr + offs + 3 * C, mask=mask, other=0.),
            tl.load(ptr + offs + 4 * C, mask=mask, other=NEG_INF))


@triton.jit
def _store_state5(ptr, offs, C, mask, a1, a2, d1, d2, p):
    tl.store(ptr + offs, a1, mask=mask)
    tl.store(ptr + offs + C, a2, mask=mask)
    tl.store(ptr + offs + 2 * C, d1, mask=mask)
    tl.store(ptr + offs + 3 * C, d2, mask=mask)
    tl.store(ptr + offs + 4 * C, p, mask=mask)


@triton.jit
def _add_states_dist(a1, a2, d1, d2, p, b1, b2, e1, e2, q):
    """Sum of two states with distance sums, seen from the same token, under their shared maximum."""
    m = tl.maximum(p, q)
    e_a = tl.exp(p - m)
    e_b = tl.exp(q - m)
    return a1 * e_a + b1 * e_b, a2 * e_a + b2 * e_b, d1 * e_a + e1 * e_b, d2 * e_a + e2 * e_b, m


@triton.jit
def _chunk_weights(p, dist, w):
    """Log-weight maximum m (BLOCK_C,) and weights e^{p - dist·w - m} of a tile's items seen from a
    token ``dist`` (ROWS, 1) positions away."""
    e = p - dist * w
    m = tl.max(e, axis=0)
    return m, tl.exp(e - m[None, :])


# ---------------------------------------------------------------------------------------------
# forward

@triton.jit
def _fwd_items(w, k_ptr, v_ptr, r_ptr, tok, C, offs_c, mask, IS_COL: tl.constexpr):
    """States (a1, a2, p), (ROWS, BLOCK_C), of the items at tokens ``tok``: e^{k}·(v, 1) for rows; for
    columns the inclusive row sums I = e^{-w}·R + e^{k}·(v, 1), R read from (B·T, 2, C) planes
    (num / den, log den). Empty where masked."""
    offs = tok[:, None] * C + offs_c[None, :]
    key = tl.load(k_ptr + offs, mask=mask, other=0.).to(tl.float32)
    a1 = tl.load(v_ptr + offs, mask=mask, other=0.).to(tl.float32)
    a2 = tl.where(mask, 1., 0.)
    p = key
    if IS_COL:
        r_offs = tok[:, None] * 2 * C + offs_c[None, :]
        ratio = tl.load(r_ptr + r_offs, mask=mask, other=0.)
        log_den = tl.load(r_ptr + r_offs + C, mask=mask, other=NEG_INF)
        a1, a2, p, _ = combine2(ratio, 1., log_den, 0., a1, 1., key, w)
    return tl.where(mask, a1, 0.), tl.where(mask, a2, 0.), tl.where(mask, p, NEG_INF)


@triton.jit
def _fwd_totals_kernel(
        w_ptr, k_ptr, v_ptr, r_ptr, tot_ptr,
        T, C, n_lines, length, stride, step, n_chunks,
        IS_COL: tl.constexpr, CHUNK: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Phase 1: the chunk's two totals, entry ``item`` of tot (items, 2 directions, 3 planes, C)."""
    offs_c, cmask = _channels(C, BLOCK_C)
    w = tl.load(w_ptr + offs_c, mask=cmask, other=0.)[None, :]
    item, chunk, pos0, first = _chunk_of_program(T, n_lines, stride, step, n_chunks, CHUNK)
    rows = tl.arange(0, CHUNK)
    mask = (pos0 + rows < length)[:, None] & cmask[None, :]
    a1, a2, p = _fwd_items(w, k_ptr, v_ptr, r_ptr, first + rows * step, C, offs_c, mask, IS_COL)
    base = item * (6 * C) + offs_c
    for direction in tl.static_range(2):  # 0: seen from the last position, 1: from the first
        if direction == 0:
            dist = (CHUNK - 1 - rows).to(tl.float32)[:, None]
        else:
            dist = rows.to(tl.float32)[:, None]
        m, wt = _chunk_weights(p, dist, w)
        _store_state3(tot_ptr, base + direction * 3 * C, C, cmask,
                      tl.sum(a1 * wt, axis=0), tl.sum(a2 * wt, axis=0), m)


@triton.jit
def _fwd_carries_kernel(
        w_ptr, tot_ptr, car_ptr, C, n_chunks,
        CHUNK: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Phase 2: inclusive scan of one line's chunk totals in one direction (axis 2: 0 over chunks
    0, 1, ...; 1 over chunks n - 1, n - 2, ...), written to car (same layout as tot)."""
    offs_c, cmask = _channels(C, BLOCK_C)
    w = tl.load(w_ptr + offs_c, mask=cmask, other=0.)[None, :]
    line = tl.program_id(0).to(tl.int64)
    direction = tl.program_id(2)
    rows = tl.arange(0, BLOCK_N)
    c1 = tl.zeros([BLOCK_C], dtype=tl.float32)
    c2 = tl.zeros([BLOCK_C], dtype=tl.float32)
    cp = tl.full([BLOCK_C], NEG_INF, dtype=tl.float32)
    for start in range(0, n_chunks, BLOCK_N):
        idx = start + rows
        valid = idx < n_chunks
        chunk = tl.where(valid, tl.where(direction == 0, idx, n_chunks - 1 - idx), 0)
        mask = valid[:, None] & cmask[None, :]
        offs = ((line * n_chunks + chunk) * 2 + direction)[:, None] * 3 * C + offs_c[None, :]
        a1, a2, p = _load_state3(tot_ptr, offs, C, mask)
        dk = tl.where(mask, CHUNK * w, 0.)
        s1, s2, sp, sdk = tl.associative_scan((a1, a2, p, dk), 0, combine2)
        s1, s2, sp, _ = combine2(c1[None, :], c2[None, :], cp[None, :], 0., s1, s2, sp, sdk)
        _store_state3(car_ptr, offs, C, mask, s1, s2, sp)
        c1 = last_row(s1, rows, BLOCK_N)
        c2 = last_row(s2, rows, BLOCK_N)
        cp = last_row(sp, rows, BLOCK_N)


@triton.jit
def _fwd_exclusive(w, k_ptr, v_ptr, r_ptr, car_ptr, C, offs_c, cmask, item, chunk, pos0, first,
                   length, step, n_chunks,
                   IS_COL: tl.constexpr, REVERSE: tl.constexpr, CHUNK: tl.constexpr):
    """Phase 3 scan: the exclusive state (a1, a2, p) of every chunk position, (CHUNK, BLOCK_C), in one
    direction (left-to-right, or right-to-left when REVERSE), including the carry of the other chunks."""
    rows = tl.arange(0, CHUNK)
    pos, valid, src, direction, has_carry = _shifted_layout(rows, item, chunk, pos0, length, n_chunks,
                                                            CHUNK, REVERSE)
    mask = valid[:, None] & cmask[None, :]
    x1, x2, p = _fwd_items(w, k_ptr, v_ptr, r_ptr, first + pos * step, C, offs_c, mask, IS_COL)
    c1, c2, cp = _load_state3(car_ptr, src * (6 * C) + direction * 3 * C + offs_c, C, cmask & has_carry)
    head = (rows == 0)[:, None]
    x1 = tl.where(head, c1[None, :], x1)
    x2 = tl.where(head, c2[None, :], x2)
    p = tl.where(head, cp[None, :], p)
    dk = tl.where(mask, w, 0.)
    s1, s2, sp, _ = tl.associative_scan((x1, x2, p, dk), 0, combine2)
    if REVERSE:  # element r is position CHUNK - 1 - r: back to position order by a gather (tl.flip
        # is an xor-reduction, run element by element in Triton's interpreter)
        back = tl.broadcast_to((CHUNK - 1 - rows)[:, None], s1.shape)
        s1, s2, sp = tl.gather(s1, back, 0), tl.gather(s2, back, 0), tl.gather(sp, back, 0)
    return s1, s2, sp


@triton.jit
def _fwd_rows_kernel(
        w_ptr, k_ptr, v_ptr, car_ptr, r_ptr,
        T, C, n_lines, length, stride, step, n_chunks,
        CHUNK: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Phase 3 of rows: R_t = Σ_{s in row, s≠t} e^{-(|Δcol|-1)w + k_s}·(v_s, 1) as (num / den, log den)
    planes of r (B·T, 2, C)."""
    offs_c, cmask = _channels(C, BLOCK_C)
    w = tl.load(w_ptr + offs_c, mask=cmask, other=0.)[None, :]
    item, chunk, pos0, first = _chunk_of_program(T, n_lines, stride, step, n_chunks, CHUNK)
    geometry = (C, offs_c, cmask, item, chunk, pos0, first, length, step, n_chunks)
    # rows read tokens only: r_ptr is passed as an unused item source
    l1, l2, lp = _fwd_exclusive(w, k_ptr, v_ptr, r_ptr, car_ptr, *geometry, False, False, CHUNK)
    r1, r2, rp = _fwd_exclusive(w, k_ptr, v_ptr, r_ptr, car_ptr, *geometry, False, True, CHUNK)
    ratio, log_den = ratio_and_log(*add_states(l1, l2, lp, r1, r2, rp))
    rows = tl.arange(0, CHUNK)
    mask = (pos0 + rows < length)[:, None] & cmask[None, :]
    offs = (first + rows * step)[:, None] * 2 * C + offs_c[None, :]
    tl.store(r_ptr + offs, ratio, mask=mask)
    tl.store(r_ptr + offs + C, log_den, mask=mask)


@triton.jit
def _fwd_cols_kernel(
        w_ptr, u_ptr, k_ptr, v_ptr, r_ptr, car_ptr, y_ptr, lse_ptr,
        T, C, n_lines, length, stride, step, n_chunks,
        CHUNK: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Phase 3 of columns: y = (R + rows above + rows below + bonus) as num / den, and log den."""
    offs_c, cmask = _channels(C, BLOCK_C)
    w = tl.load(w_ptr + offs_c, mask=cmask, other=0.)[None, :]
    u = tl.load(u_ptr + offs_c, mask=cmask, other=0.)[None, :]
    item, chunk, pos0, first = _chunk_of_program(T, n_lines, stride, step, n_chunks, CHUNK)
    geometry = (C, offs_c, cmask, item, chunk, pos0, first, length, step, n_chunks)
    a1, a2, pa = _fwd_exclusive(w, k_ptr, v_ptr, r_ptr, car_ptr, *geometry, True, False, CHUNK)
    b1, b2, pb = _fwd_exclusive(w, k_ptr, v_ptr, r_ptr, car_ptr, *geometry, True, True, CHUNK)

    rows = tl.arange(0, CHUNK)
    tok = first + rows * step
    mask = (pos0 + rows < length)[:, None] & cmask[None, :]
    offs = tok[:, None] * C + offs_c[None, :]
    key = tl.load(k_ptr + offs, mask=mask, other=0.).to(tl.float32)
    val = tl.load(v_ptr + offs, mask=mask, other=0.).to(tl.float32)
    r_offs = tok[:, None] * 2 * C + offs_c[None, :]
    ratio = tl.load(r_ptr + r_offs, mask=mask, other=0.)
    pr = tl.load(r_ptr + r_offs + C, mask=mask, other=NEG_INF)
    pd = u + key
    m = tl.maximum(tl.maximum(pa, pb), tl.maximum(pr, pd))
    e_a = tl.exp(pa - m)
    e_b = tl.exp(pb - m)
    e_r = tl.exp(pr - m)
    e_d = tl.exp(pd - m)
    den = a2 * e_a + b2 * e_b + e_r + e_d
    tl.store(y_ptr + offs, (a1 * e_a + b1 * e_b + ratio * e_r + val * e_d) / den, mask=mask)
    tl.store(lse_ptr + offs, m + tl.log(den), mask=mask)


# ---------------------------------------------------------------------------------------------
# backward

@triton.jit
def _output_side(y_ptr, lse_ptr, gy_ptr, offs, mask):
    """Key q = -log den, values (gy, gy·y) and y of the output-side scan at ``offs``."""
    y = tl.load(y_ptr + offs, mask=mask, other=0.)
    q = -tl.load(lse_ptr + offs, mask=mask, other=0.)
    gy = tl.load(gy_ptr + offs, mask=mask, other=0.).to(tl.float32)
    return q, gy, gy * y, y


@triton.jit
def _bwd_items(w, y_ptr, lse_ptr, gy_ptr, r_ptr, tok, C, offs_c, mask, IS_COL: tl.constexpr):
    """States (a1, a2, d1, d2, p) of output-side items at tokens ``tok``: e^{q}·(gy, gy·y) for rows;
    for columns the inclusive row sums I = e^{-w}·R + e^{q}·(gy, gy·y) with D_I = e^{-w}·(D_R + R),
    R read from (B·T, 5, C) planes. Empty where masked."""
    q, x1, x2, _ = _output_side(y_ptr, lse_ptr, gy_ptr, tok[:, None] * C + offs_c[None, :], mask)
    zero = tl.zeros_like(x1)
    a1, a2, d1, d2, p = x1, x2, zero, zero, q
    if IS_COL:
        b1, b2, e1, e2, pb = _load_state5(r_ptr, tok[:, None] * 5 * C + offs_c[None, :], C, mask)
        a1, a2, d1, d2, p, _, _ = combine2_dist(b1, b2, e1, e2, pb, 0., 0., x1, x2, zero, zero, q, w, 1.)
    return (tl.where(mask, a1, 0.), tl.where(mask, a2, 0.), tl.where(mask, d1, 0.), tl.where(mask, d2, 0.),
            tl.where(mask, p, NEG_INF))


@triton.jit
def _bwd_totals_kernel(
        w_ptr, y_ptr, lse_ptr, gy_ptr, r_ptr, tot_ptr,
        T, C, n_lines, length, stride, step, n_chunks,
        IS_COL: tl.constexpr, CHUNK: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Phase 1: the chunk's two totals with distance sums, entry ``item`` of tot (items, 2, 5, C)."""
    offs_c, cmask = _channels(C, BLOCK_C)
    w = tl.load(w_ptr + offs_c, mask=cmask, other=0.)[None, :]
    item, chunk, pos0, first = _chunk_of_program(T, n_lines, stride, step, n_chunks, CHUNK)
    rows = tl.arange(0, CHUNK)
    mask = (pos0 + rows < length)[:, None] & cmask[None, :]
    a1, a2, d1, d2, p = _bwd_items(w, y_ptr, lse_ptr, gy_ptr, r_ptr, first + rows * step, C, offs_c, mask,
                                   IS_COL)
    base = item * (10 * C) + offs_c
    for direction in tl.static_range(2):  # 0: seen from the last position, 1: from the first
        if direction == 0:
            dist = (CHUNK - 1 - rows).to(tl.float32)[:, None]
        else:
            dist = rows.to(tl.float32)[:, None]
        m, wt = _chunk_weights(p, dist, w)
        _store_state5(tot_ptr, base + direction * 5 * C, C, cmask,
                      tl.sum(a1 * wt, axis=0), tl.sum(a2 * wt, axis=0),
                      tl.sum((d1 + dist * a1) * wt, axis=0), tl.sum((d2 + dist * a2) * wt, axis=0), m)


@triton.jit
def _bwd_carries_kernel(
        w_ptr, tot_ptr, car_ptr, C, n_chunks,
        CHUNK: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Phase 2: as ``_fwd_carries_kernel``, for states with distance sums (5 planes)."""
    offs_c, cmask = _channels(C, BLOCK_C)
    w = tl.load(w_ptr + offs_c, mask=cmask, other=0.)[None, :]
    line = tl.program_id(0).to(tl.int64)
    direction = tl.program_id(2)
    rows = tl.arange(0, BLOCK_N)
    c1 = tl.zeros([BLOCK_C], dtype=tl.float32)
    c2 = tl.zeros([BLOCK_C], dtype=tl.float32)
    g1 = tl.zeros([BLOCK_C], dtype=tl.float32)
    g2 = tl.zeros([BLOCK_C], dtype=tl.float32)
    cp = tl.full([BLOCK_C], NEG_INF, dtype=tl.float32)
    for start in range(0, n_chunks, BLOCK_N):
        idx = start + rows
        valid = idx < n_chunks
        chunk = tl.where(valid, tl.where(direction == 0, idx, n_chunks - 1 - idx), 0)
        mask = valid[:, None] & cmask[None, :]
        offs = ((line * n_chunks + chunk) * 2 + direction)[:, None] * 5 * C + offs_c[None, :]
        a1, a2, d1, d2, p = _load_state5(tot_ptr, offs, C, mask)
        dk = tl.where(mask, CHUNK * w, 0.)
        n = tl.where(mask, CHUNK * 1., 0.)
        s1, s2, sd1, sd2, sp, sdk, sn = tl.associative_scan((a1, a2, d1, d2, p, dk, n), 0, combine2_dist)
        s1, s2, sd1, sd2, sp, _, _ = combine2_dist(c1[None, :], c2[None, :], g1[None, :], g2[None, :], cp[None, :],
                                                   0., 0., s1, s2, sd1, sd2, sp, sdk, sn)
        _store_state5(car_ptr, offs, C, mask, s1, s2, sd1, sd2, sp)
        c1 = last_row(s1, rows, BLOCK_N)
        c2 = last_row(s2, rows, BLOCK_N)
        g1 = last_row(sd1, rows, BLOCK_N)
        g2 = last_row(sd2, rows, BLOCK_N)
        cp = last_row(sp, rows, BLOCK_N)


@triton.jit
def _bwd_exclusive(w, y_ptr, lse_ptr, gy_ptr, r_ptr, car_ptr, C, offs_c, cmask, item, chunk, pos0, first,
                   length, step, n_chunks,
                   IS_COL: tl.constexpr, REVERSE: tl.constexpr, CHUNK: tl.constexpr):
    """Phase 3 scan: the exclusive output-side state (a1, a2, d1, d2, p) of every chunk position in one
    direction, as ``_fwd_exclusive``."""
    rows = tl.arange(0, CHUNK)
    pos, valid, src, direction, has_carry = _shifted_layout(rows, item, chunk, pos0, length, n_chunks,
                                                            CHUNK, REVERSE)
    mask = valid[:, None] & cmask[None, :]
    x1, x2, xd1, xd2, p = _bwd_items(w, y_ptr, lse_ptr, gy_ptr, r_ptr, first + pos * step, C, offs_c, mask,
                                     IS_COL)
    c1, c2, cd1, cd2, cp = _load_state5(car_ptr, src * (10 * C) + direction * 5 * C + offs_c, C,
                                        cmask & has_carry)
    head = (rows == 0)[:, None]
    x1 = tl.where(head, c1[None, :], x1)
    x2 = tl.where(head, c2[None, :], x2)
    xd1 = tl.where(head, cd1[None, :], xd1)
    xd2 = tl.where(head, cd2[None, :], xd2)
    p = tl.where(head, cp[None, :], p)
    dk = tl.where(mask, w, 0.)
    n = tl.where(mask, 1., 0.)
    s1, s2, sd1, sd2, sp, _, _ = tl.associative_scan((x1, x2, xd1, xd2, p, dk, n), 0, combine2_dist)
    if REVERSE:  # element r is position CHUNK - 1 - r: back to position order (see _fwd_exclusive)
        back = tl.broadcast_to((CHUNK - 1 - rows)[:, None], s1.shape)
        s1, s2, sp = tl.gather(s1, back, 0), tl.gather(s2, back, 0), tl.gather(sp, back, 0)
        sd1, sd2 = tl.gather(sd1, back, 0), tl.gather(sd2, back, 0)
    return s1, s2, sd1, sd2, sp


@triton.jit
def _bwd_rows_kernel(
        w_ptr, y_ptr, lse_ptr, gy_ptr, car_ptr, r_ptr,
        T, C, n_lines, length, stride, step, n_chunks,
        CHUNK: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Phase 3 of rows: output-side R_t = Σ_{s in row, s≠t} e^{-(|Δcol|-1)w + q_s}·(gy_s, gy_s·y_s) with
    its distance sums, as five planes of r (B·T, 5, C)."""
    offs_c, cmask = _channels(C, BLOCK_C)
    w = tl.load(w_ptr + offs_c, mask=cmask, other=0.)[None, :]
    item, chunk, pos0, first = _chunk_of_program(T, n_lines, stride, step, n_chunks, CHUNK)
    geometry = (C, offs_c, cmask, item, chunk, pos0, first, length, step, n_chunks)
    # rows read tokens only: r_ptr is passed as an unused item source
    left = _bwd_exclusive(w, y_ptr, lse_ptr, gy_ptr, r_ptr, car_ptr, *geometry, False, False, CHUNK)
    right = _bwd_exclusive(w, y_ptr, lse_ptr, gy_ptr, r_ptr, car_ptr, *geometry, False, True, CHUNK)
    s1, s2, sd1, sd2, sp = _add_states_dist(*left, *right)
    rows = tl.arange(0, CHUNK)
    mask = (pos0 + rows < length)[:, None] & cmask[None, :]
    _store_state5(r_ptr, (first + rows * step)[:, None] * 5 * C + offs_c[None, :], C, mask, s1, s2, sd1, sd2, sp)


@triton.jit
def _bwd_cols_kernel(
        w_ptr, u_ptr, k_ptr, v_ptr, y_ptr, lse_ptr, gy_ptr, r_ptr, car_ptr,
        gk_ptr, gv_ptr, gw_ptr, gu_ptr,
        T, C, n_lines, length, stride, step, n_chunks,
        CHUNK: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Phase 3 of columns: from the output-side total E = R + rows above + rows below (exclusive) and
    the bonus, gv = e^{k}·E1 + e^{u+k+q}·gy and gk = v·gv - (e^{k}·E2 + e^{u+k+q}·gy·y) per token, and
    this program's partials of gw = -Σ e^{k}·(v·D1 - D2) and gu = Σ e^{u+k+q}·gy·(v - y), row ``item``
    of gw and gu (items, C)."""
    offs_c, cmask = _channels(C, BLOCK_C)
    w = tl.load(w_ptr + offs_c, mask=cmask, other=0.)[None, :]
    u = tl.load(u_ptr + offs_c, mask=cmask, other=0.)[None, :]
    item, chunk, pos0, first = _chunk_of_program(T, n_lines, stride, step, n_chunks, CHUNK)
    geometry = (C, offs_c, cmask, item, chunk, pos0, first, length, step, n_chunks)
    above = _bwd_exclusive(w, y_ptr, lse_ptr, gy_ptr, r_ptr, car_ptr, *geometry, True, False, CHUNK)
    below = _bwd_exclusive(w, y_ptr, lse_ptr, gy_ptr, r_ptr, car_ptr, *geometry, True, True, CHUNK)

    rows = tl.arange(0, CHUNK)
    tok = first + rows * step
    mask = (pos0 + rows < length)[:, None] & cmask[None, :]
    own = _load_state5(r_ptr, tok[:, None] * 5 * C + offs_c[None, :], C, mask)
    t1, t2, td1, td2, pt = _add_states_dist(*_add_states_dist(*own, *above), *below)
    offs = tok[:, None] * C + offs_c[None, :]
    q, x1, x2, y = _output_side(y_ptr, lse_ptr, gy_ptr, offs, mask)
    key = tl.load(k_ptr + offs, mask=mask, other=0.).to(tl.float32)
    val = tl.load(v_ptr + offs, mask=mask, other=0.).to(tl.float32)
    e_k = tl.exp(key + pt)  # <= 1: key + pt is the largest log-softmax weight of this token
    e_d = tl.exp(u + key + q)
    g1 = t1 * e_k + e_d * x1
    tl.store(gv_ptr + offs, g1, mask=mask)
    tl.store(gk_ptr + offs, val * g1 - t2 * e_k - e_d * x2, mask=mask)
    gw = -tl.sum(tl.where(mask, e_k * (val * td1 - td2), 0.), axis=0)
    gu = tl.sum(tl.where(mask, e_d * x1 * (val - y), 0.), axis=0)
    tl.store(gw_ptr + item * C + offs_c, gw, mask=cmask)
    tl.store(gu_ptr + item * C + offs_c, gu, mask=cmask)


# ---------------------------------------------------------------------------------------------
# launches

def _carries(totals_kernel, carries_kernel, planes: int, sources, w: torch.Tensor, lines: _Lines,
             T: int, C: int, is_col: bool) -> torch.Tensor:
    """Phases 1 and 2 of a pass: the carries buffer (items, 2, planes, C), or a placeholder that is
    never read when every line fits one chunk."""
    if lines.n_chunks == 1:
        return w
    tot = torch.empty(lines.n_items, 2, planes, C, device=w.device, dtype=torch.float32)
    car = torch.empty_like(tot)
    block_c = _block_c(C)
    n_cb = triton.cdiv(C, block_c)
    totals_kernel[(lines.n_items, n_cb)](w, *sources, tot, T, C, *lines.geometry, IS_COL=is_col,
                                         CHUNK=lines.chunk, BLOCK_C=block_c,
                                         num_warps=_num_warps(lines.chunk, block_c))
    block_n = choose_carry_block(lines.n_chunks)
    carries_kernel[(lines.batch * lines.n_lines, n_cb, 2)](w, tot, car, C, lines.n_chunks, CHUNK=lines.chunk,
                                                          BLOCK_N=block_n, BLOCK_C=block_c,
                                                          num_warps=_num_warps(block_n, block_c))
    return car


def _finish_grid(lines: _Lines, C: int):
    """Grid and launch options of a phase-3 kernel."""
    block_c = _block_c(C)
    return ((lines.n_items, triton.cdiv(C, block_c)),
            dict(CHUNK=lines.chunk, BLOCK_C=block_c, num_warps=_num_warps(lines.chunk, block_c)))


def _check_shapes(w, u, k, v, grid_hw):
    B, T, C = k.shape
    H, W = grid_hw
    if H * W != T:
        raise ValueError(f'bi_wkv_2d_triton: grid {H}x{W} holds {H * W} tokens but k has T = {T}')
    if v.shape != k.shape or w.shape != (C,) or u.shape != (C,):
        raise ValueError(f'bi_wkv_2d_triton: k, v must be (B, T, C) and w, u (C,), got {tuple(k.shape)}, '
                         f'{tuple(v.shape)}, {tuple(w.shape)}, {tuple(u.shape)}')


def bi_wkv_2d_triton_forward(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                             grid_hw: Tuple[int, int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """The forward: row pass (R), then column pass (y, log den).

    Args:
        w, u: (C,) decay and bonus (cast to float32); k, v: (B, H·W, C) fp32, fp16 or bf16 (made
            contiguous); grid_hw: (H, W).

    Returns:
        y: (B, H·W, C) float32 output; log_den: (B, H·W, C) float32 log denominators.
    """
    _check_shapes(w, u, k, v, grid_hw)
    B, T, C = k.shape
    H, W = grid_hw
    w, u = w.float().contiguous(), u.float().contiguous()
    k, v = k.contiguous(), v.contiguous()
    y = torch.empty(B, T, C, device=k.device, dtype=torch.float32)
    log_den = torch.empty_like(y)
    r = torch.empty(B * T, 2, C, device=k.device, dtype=torch.float32)

    rows = _row_lines(B, H, W)
    car = _carries(_fwd_totals_kernel, _fwd_carries_kernel, _FWD_PLANES, (k, v, r), w, rows, T, C, False)
    grid, opts = _finish_grid(rows, C)
    _fwd_rows_kernel[grid](w, k, v, car, r, T, C, *rows.geometry, **opts)

    cols = _col_lines(B, H, W)
    car = _carries(_fwd_totals_kernel, _fwd_carries_kernel, _FWD_PLANES, (k, v, r), w, cols, T, C, True)
    grid, opts = _finish_grid(cols, C)
    _fwd_cols_kernel[grid](w, u, k, v, r, car, y, log_den, T, C, *cols.geometry, **opts)
    return y, log_den


def bi_wkv_2d_triton_backward(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                              y: torch.Tensor, log_den: torch.Tensor, gy: torch.Tensor,
                              grid_hw: Tuple[int, int]
                              ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The backward: output-side row pass (R with distance sums), then column pass (gradients).

    Args:
        w, u: (C,); k, v, gy: (B, H·W, C) fp32, fp16 or bf16; y, log_den: (B, H·W, C) float32 from
            the forward; grid_hw: (H, W). Tensors are made contiguous.

    Returns:
        gw, gu: (C,) float32; gk, gv: (B, H·W, C) float32.
    """
    _check_shapes(w, u, k, v, grid_hw)
    B, T, C = k.shape
    H, W = grid_hw
    w, u = w.float().contiguous(), u.float().contiguous()
    k, v, gy = k.contiguous(), v.contiguous(), gy.contiguous()
    y, log_den = y.float().contiguous(), log_den.float().contiguous()
    r = torch.empty(B * T, _BWD_PLANES, C, device=k.device, dtype=torch.float32)
    gk = torch.empty(B, T, C, device=k.device, dtype=torch.float32)
    gv = torch.empty_like(gk)
    sources = (y, log_den, gy, r)

    rows = _row_lines(B, H, W)
    car = _carries(_bwd_totals_kernel, _bwd_carries_kernel, _BWD_PLANES, sources, w, rows, T, C, False)
    grid, opts = _finish_grid(rows, C)
    _bwd_rows_kernel[grid](w, y, log_den, gy, car, r, T, C, *rows.geometry, **opts)

    cols = _col_lines(B, H, W)
    car = _carries(_bwd_totals_kernel, _bwd_carries_kernel, _BWD_PLANES, sources, w, cols, T, C, True)
    gw = torch.empty(cols.n_items, C, device=k.device, dtype=torch.float32)
    gu = torch.empty_like(gw)
    grid, opts = _finish_grid(cols, C)
    _bwd_cols_kernel[grid](w, u, k, v, y, log_den, gy, r, car, gk, gv, gw, gu, T, C, *cols.geometry, **opts)
    return gw.sum(0), gu.sum(0), gk, gv
