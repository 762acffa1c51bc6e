"""VRWKV6's bidirectional RWKV-6 WKV from exportable ops, for ONNX (``bi_wkv6`` switches to it while an ONNX
exporter traces).

The arithmetic of ``kernels.wkv6_torch`` (see its docstring): chunks of S tokens, every pair inside a chunk
weighted by its own decays (exponents <= 0), and states carried across chunks with factors <= 1. The data-
dependent decays accumulate without bound over a sequence, so no cumulative-sum factorisation is finite; the
states are carried by ``torch``'s ``scan`` operator, which exports to one ONNX ``Scan`` node over the chunks
(a loop of T / S steps, any T). All chunks are processed at once (the eager path groups them to bound
memory): the pair weights take B·T·C·S elements. Without in-place ops.
"""
import math

import torch
import torch.nn.functional as F
from torch._higher_order_ops.scan import scan

from .wkv6_torch import CHUNK, EXP_FLOOR, between_mask, cumsum_exclusive, from_chunks, log_decays


def _to_chunks(x: torch.Tensor, heads: int, chunk: int, dtype: torch.dtype) -> torch.Tensor:
    """(B, T, C) -> (n, B·H, S, N) in ``dtype``, zero-padded to n = ceil(T / S) chunks (padding always applied,
    so no branch on T)."""
    B, T, C = x.shape
    n = (T + chunk - 1) // chunk
    x = F.pad(x.to(dtype), (0, 0, 0, n * chunk - T))
    x = x.reshape(B, n, chunk, heads, C // heads).permute(1, 0, 3, 2, 4)
    return x.reshape(n, B * heads, chunk, C // heads)


def _exp(x: torch.Tensor) -> torch.Tensor:
    """exp of exponents <= 0, those below EXP_FLOOR flushed to 0 (as the eager path)."""
    return torch.exp(torch.where(x < EXP_FLOOR[x.dtype], torch.full_like(x, -math.inf), x))


def _chunk_states(delta: torch.Tensor, total: torch.Tensor, reverse: bool) -> torch.Tensor:
    """States entering each chunk: H_{c+1} = total_c·H_c + delta_c from H_0 = 0 (right to left if ``reverse``).

    delta: (n, X, N, M) each chunk's own state; total: (n, X, N, 1) its whole-chunk decays. Returns (n, X, N, M).
    """
    if reverse:
        return _chunk_states(delta.flip(0), total.flip(0), False).flip(0)

    def step(h, inputs):
        d, t = inputs
        return t * h + d, h.clone()

    _, states = scan(step, torch.zeros_like(delta[0]), (delta, total))
    return states


def bi_wkv6_export(r: torch.Tensor, k: torch.Tensor, v: torch.Tensor, w: torch.Tensor, u: torch.Tensor,
                   chunk: int = CHUNK) -> torch.Tensor:
    """``bi_wkv6`` (r, k, v, w: (B, T, C); u: (H, N)) from exportable ops; returns (B, T, C) in r's dtype.
    Accumulation in float32 (float64 for float64 inputs)."""
    B, T, C = k.shape
    H, N = u.shape
    dtype = torch.float64 if r.dtype == torch.float64 else torch.float32
    rc, kc, vc = (_to_chunks(x, H, chunk, dtype) for x in (r, k, v))
    lw = _to_chunks(log_decays(w, dtype), H, chunk, dtype)
    n, X, S, _ = kc.shape
    uc = u.to(dtype).expand(B, H, N).reshape(X, N)
    # pairs inside each chunk: W[t, s] = exp(Σ lw strictly between), u on the diagonal
    mask = between_mask(S, dtype, k.device)  # (S·S, S)
    pairs = _exp(torch.matmul(mask, lw)).reshape(n, X, S, S, N)
    eye = torch.eye(S, dtype=torch.bool, device=k.device)[:, :, None]
    pairs = torch.where(eye, uc[:, None, None, :], pairs)
    scores = (pairs * kc.unsqueeze(2) * rc.unsqueeze(3)).sum(-1)  # (n, X, S, S): P[t, s]
    # across chunks: a = decay from the chunk's start to t, b = from t to its end, total = the whole chunk
    a = _exp(cumsum_exclusive(lw, reverse=False))
    b = _exp(cumsum_exclusive(lw, reverse=True))
    total = _exp(lw.sum(-2)).unsqueeze(-1)
    states_lr = _chunk_states((kc * b).transpose(-1, -2) @ vc, total, reverse=False)
    states_rl = _chunk_states((kc * a).transpose(-1, -2) @ vc, total, reverse=True)
    y = scores @ vc + (rc * a) @ states_lr + (rc * b) @ states_rl
    return from_chunks(y, B, T).to(r.dtype)
