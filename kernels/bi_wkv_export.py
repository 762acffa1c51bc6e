"""Bi-WKV from standard tensor ops, for ONNX export (``bi_wkv`` and ``bi_wkv_2d`` switch to it while
``torch.onnx.is_in_onnx_export()``).

The training operators are ``torch.library`` ops with Triton and chunked PyTorch implementations that no
exporter can translate. Here every sum is a cumulative sum over positions (ONNX ``CumSum``), so the graph
has no loop, takes any sequence length or grid, and needs O(B·T·C) memory (no T x T matrix).

The decay factorises, e^{-(t-1-i)w} = e^{-(p_t)w}·e^{(p_i+1)w} with p the position minus the centre, so an
exclusive decayed prefix sum is a position scale times a cumulative sum. The keys enter as e^{k - max k}
(one maximum per batch and channel, the same for numerator and denominator). Everything runs in float64:
the factors stay finite and the sums keep float64's relative precision while

    T·|w| + (max k - min k) < 700 per channel (1D; 2D: (H + W)·|w| + the spread of k),

i.e. e^{-700} is the smallest ratio of two terms that still counts. The models scale the learned decay by
1/T (1/(H + W) in 2D), so T·|w| is |spatial_decay| at every resolution. The output is cast back to k's dtype.
"""
from typing import Sequence

import torch
import torch.nn.functional as F

from .bi_wkv_official import SEGMENTS


def onnx_exporting() -> bool:
    """Whether an ONNX exporter is tracing (cheap when not: two flag reads before the ONNX check)."""
    return (torch.jit.is_tracing() or torch.compiler.is_exporting()) and torch.onnx.is_in_onnx_export()


def check_exporter(op: str) -> None:
    """Refuse the TorchScript exporter: it records the shapes as constants, so the graph would be wrong at
    any other input size."""
    if torch.jit.is_tracing():
        raise RuntimeError(f'{op}: the TorchScript ONNX exporter (torch.onnx.export(..., dynamo=False)) bakes '
                           'the input size into the graph; export with dynamo=True (the default) or '
                           'tools/export_onnx.py')


def _positions(n: int, like: torch.Tensor) -> torch.Tensor:
    """(n,) float64 positions minus their centre (n - 1) / 2."""
    return torch.arange(n, device=like.device, dtype=torch.float64) - (n - 1) / 2


def _shift_right(x: torch.Tensor, dim: int) -> torch.Tensor:
    """x moved one step along ``dim`` (dim counted from the end), a zero entering first."""
    pad = [0, 0] * (-dim - 1) + [1, 0]
    return F.pad(x.narrow(dim, 0, x.shape[dim] - 1), pad)


def _decayed_prefix(x: torch.Tensor, w: torch.Tensor, dim: int) -> torch.Tensor:
    """Σ_{i<t} e^{-(t-1-i)w} x_i along ``dim`` (negative; the axes after it broadcast with w (C,))."""
    p = _positions(x.shape[dim], x).reshape((-1,) + (1,) * (-dim - 1))
    scale = torch.exp(p * w)  # the same (T, C) factor for every call on one sequence: the graph computes it once
    return torch.cumsum(_shift_right(x * (scale * torch.exp(w)), dim), dim) / scale


def _decayed_suffix(x: torch.Tensor, w: torch.Tensor, dim: int) -> torch.Tensor:
    """Σ_{i>t} e^{-(i-1-t)w} x_i along ``dim``: the prefix sum of the reversed sequence."""
    return _decayed_prefix(x.flip(dim), w, dim).flip(dim)


def _scaled_keys(k: torch.Tensor) -> torch.Tensor:
    """e^{k - max_t k} in float64, (B, T, C)."""
    k = k.double()
    return torch.exp(k - k.amax(dim=1, keepdim=True))


def _eq5(w: torch.Tensor, u: torch.Tensor, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Σ_{i≠t} e^{-(|t-i|-1)w} z_i x_i + e^u z_t x_t along dim 1 of (B, T, C) float64 tensors."""
    zx = z * x
    return _decayed_prefix(zx, w, -2) + _decayed_suffix(zx, w, -2) + torch.exp(u) * zx


def _column_major(x: torch.Tensor, H: int, W: int, inverse: bool = False) -> torch.Tensor:
    """(B, H·W, C) tokens from row-major to column-major order (or back)."""
    B, T, C = x.shape
    return x.reshape((B, W, H, C) if inverse else (B, H, W, C)).transpose(1, 2).reshape(B, T, C)


def bi_wkv_export(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  grid: Sequence[int], split: int) -> torch.Tensor:
    """Eq. 5 Bi-WKV (see ``bi_wkv``) of (B, T, C) k, v over the (H, W) = grid tokens; channels from
    ``split`` on are read column-major. Returns (B, T, C) in the dtype of k."""
    H, W = grid
    C = k.shape[-1]
    w, u = w.double(), u.double()
    z, x = _scaled_keys(k), v.double()
    if split < C:
        cols = slice(split, None)
        z = torch.cat([z[..., :split], _column_major(z[..., cols], H, W)], -1)
        x = torch.cat([x[..., :split], _column_major(x[..., cols], H, W)], -1)
    y = _eq5(w, u, z, x) / _eq5(w, u, z, torch.ones_like(x))
    if split < C:
        y = torch.cat([y[..., :split], _column_major(y[..., split:], H, W, inverse=True)], -1)
    return y.to(k.dtype)


def _segments(x: torch.Tensor, L: int) -> torch.Tensor:
    """(B, T, C) -> (B, n, L, C): the segments of L tokens, the last padded with zeros (n = ceil(T / L))."""
    B, T, C = x.shape
    n = (T + L - 1) // L
    return F.pad(x, (0, 0, 0, n * L - T)).reshape(B, n, L, C)


def _official_local(w: torch.Tensor, zx: torch.Tensor) -> torch.Tensor:
    """The official kernels' segment-local terms (``kernels.bi_wkv_official``) of (B, T, C) float64 zx:
    α Σ_{s≤i<t} e^{-(t-i-1)w} zx_i + β Σ_{s<i≤t} e^{(t-i)w} zx_i, s the start of t's segment of
    ceil(T / 32) tokens, α = 1 - e^{-w}, β = 1 - e^w."""
    B, T, C = zx.shape
    L = (T + SEGMENTS - 1) // SEGMENTS
    seg = _segments(zx, L)  # (B, n, L, C)
    lin = _decayed_prefix(seg, w, -2)
    not_first = (torch.arange(L, device=zx.device) > 0).to(zx.dtype)[:, None]
    grow = seg * not_first
    grow = torch.exp(w) * _decayed_prefix(grow, -w, -2) + grow  # Σ_{i<t} e^{(t-i)w}·, plus the i = t term
    local = -torch.expm1(-w) * lin - torch.expm1(w) * grow
    return local.reshape(B, -1, C)[:, :T]


def bi_wkv_official_export(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Bi-WKV of the official kernels (``bi_wkv(..., formula='official')``): e^{-w} Eq. 5 with the bonus
    u + w plus the segment-local terms. Returns (B, T, C) in the dtype of k."""
    w, u = w.double(), u.double()
    z, x = _scaled_keys(k), v.double()
    ones = torch.ones_like(x)
    num = torch.exp(-w) * _eq5(w, u + w, z, x) + _official_local(w, z * x)
    den = torch.exp(-w) * _eq5(w, u + w, z, ones) + _official_local(w, z)
    return (num / den).to(k.dtype)


def _two_sided(x: torch.Tensor, w: torch.Tensor, dim: int) -> torch.Tensor:
    """Σ_j e^{-|t-j|w} x_j along ``dim``."""
    return x + torch.exp(-w) * (_decayed_prefix(x, w, dim) + _decayed_suffix(x, w, dim))


def _manhattan(w: torch.Tensor, u: torch.Tensor, z: torch.Tensor, x: torch.Tensor, H: int, W: int):
    """Σ_{s≠t} e^{-(d(s,t)-1)w} z_s x_s + e^u z_t x_t on the (H, W) grid, d the Manhattan distance:
    the separable sum over rows and columns, less its s = t term (float64 keeps that difference exact to
    about 1e-16 of the bonus term)."""
    B, T, C = z.shape
    zx = z * x
    s = _two_sided(_two_sided(zx.reshape(B, H, W, C), w, -2), w, -3).reshape(B, T, C)
    return torch.exp(w) * (s - zx) + torch.exp(u) * zx


def bi_wkv_2d_export(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     grid: Sequence[int]) -> torch.Tensor:
    """2D Bi-WKV (see ``bi_wkv_2d``) of (B, H·W, C) k, v. Returns (B, T, C) in the dtype of k."""
    H, W = grid
    w, u = w.double(), u.double()
    z, x = _scaled_keys(k), v.double()
    y = _manhattan(w, u, z, x, H, W) / _manhattan(w, u, z, torch.ones_like(x), H, W)
    return y.to(k.dtype)
