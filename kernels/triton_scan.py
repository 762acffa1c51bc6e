"""Log-space decayed-sum states and their associative combines, shared by the Bi-WKV Triton kernels.

A *state* is the decayed sum of a segment of tokens [s, e] seen from its last token e:

    S = sum_{i in [s, e]} e^{-(e - i)·w + key_i} · x_i,

kept as values ``a`` (one per value channel x) times ``e^{p}``, so no exponent overflows. Its
*log-decay* ``dk = (e - s + 1)·w`` is what the segment decays a state before it by. Appending segment
R to segment L decays L across R and adds R:

    (a, p, dk) = L·e^{-dk_R} ⊕ R,   p = max(p_L - dk_R, p_R),

an associative operation: ``tl.associative_scan`` over a tile of single-token states (a = x,
p = key, dk = w) gives every prefix in parallel, and a scan over chunk totals carries states across
chunks. Nothing is subtracted, every sum is of positive weights, and an empty state is
(0, NEG_INF), which every combine leaves at exactly zero weight.

The backward also needs *distance sums* d = sum_i (e - i)·(term_i), the derivative of S by -w: with
n_R tokens in R, d = (d_L + n_R·a_L)·e^{-dk_R} ⊕ d_R.
"""
import triton
import triton.language as tl

NEG_INF = tl.constexpr(-1.0e38)  # log of an empty sum: exp(NEG_INF - x) == 0 without inf - inf


@triton.jit
def combine2(a1, a2, p, dk, b1, b2, q, dk_r):
    """State of segment L followed by segment R: L (a1, a2, p, dk) decayed by R's dk_r, plus R (b1, b2, q)."""
    p_l = p - dk_r
    m = tl.maximum(p_l, q)
    e_l = tl.exp(p_l - m)
    e_r = tl.exp(q - m)
    return a1 * e_l + b1 * e_r, a2 * e_l + b2 * e_r, m, dk + dk_r


@triton.jit
def combine2_dist(a1, a2, d1, d2, p, dk, n, b1, b2, e1, e2, q, dk_r, n_r):
    """``combine2`` that also carries the distance sums (d1, d2) and the token count n."""
    p_l = p - dk_r
    m = tl.maximum(p_l, q)
    e_l = tl.exp(p_l - m)
    e_r = tl.exp(q - m)
    return (a1 * e_l + b1 * e_r, a2 * e_l + b2 * e_r,
            (d1 + n_r * a1) * e_l + e1 * e_r, (d2 + n_r * a2) * e_l + e2 * e_r,
            m, dk + dk_r, n + n_r)


@triton.jit
def add_states(a1, a2, p, b1, b2, q):
    """Sum of two states seen from the same token, under their shared maximum exponent."""
    m = tl.maximum(p, q)
    e_a = tl.exp(p - m)
    e_b = tl.exp(q - m)
    return a1 * e_a + b1 * e_b, a2 * e_a + b2 * e_b, m


@triton.jit
def ratio_and_log(a, b, p):
    """(a / b, log(b·e^p)) of a state, with (0, NEG_INF) for an empty state."""
    nonempty = b > 0
    b_safe = tl.where(nonempty, b, 1.)
    return tl.where(nonempty, a / b_safe, 0.), tl.where(nonempty, p + tl.log(b_safe), NEG_INF)


@triton.jit
def last_row(x, rows, n_rows):
    """Row ``n_rows - 1`` of a (ROWS, BLOCK_C) tile as a (BLOCK_C,) vector (a masked reduction)."""
    return tl.sum(tl.where(rows[:, None] == n_rows - 1, x, 0.), axis=0)
