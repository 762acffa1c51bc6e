"""The public Bi-WKV operator: input checks, autograd and dispatch to Triton (CUDA) or PyTorch."""
from typing import Optional, Sequence, Tuple

import torch

from .bi_wkv_torch import bi_wkv_torch_backward, bi_wkv_torch_forward

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_BACKENDS = ('auto', 'triton', 'torch')
_ORDERS = ('row', 'col', 'cross')


def _check_inputs(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    for name, t in (('w', w), ('u', u), ('k', k), ('v', v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f'bi_wkv: {name} must be a torch.Tensor, got {type(t).__name__}')
        if t.dtype not in _FLOAT_DTYPES:
            raise TypeError(f'bi_wkv: {name} must be float16, bfloat16, float32 or float64, got {t.dtype}')
    if k.dim() != 3:
        raise ValueError(f'bi_wkv: k must have shape (B, T, C), got {tuple(k.shape)}')
    if v.shape != k.shape:
        raise ValueError(f'bi_wkv: v has shape {tuple(v.shape)} but k has shape {tuple(k.shape)}')
    if v.dtype != k.dtype:
        raise TypeError(f'bi_wkv: k and v must share a dtype, got {k.dtype} and {v.dtype}')
    C = k.shape[-1]
    for name, t in (('w', w), ('u', u)):
        if t.shape != (C,):
            raise ValueError(f'bi_wkv: {name} must have shape (C,) = ({C},), got {tuple(t.shape)}')
    if k.shape[1] == 0:
        raise ValueError('bi_wkv: the sequence is empty (T = 0)')
    devices = {t.device for t in (w, u, k, v)}
    if len(devices) > 1:
        raise ValueError(f'bi_wkv: all inputs must be on one device, got {sorted(map(str, devices))}')


def _use_triton(k: torch.Tensor, backend: str) -> bool:
    if backend not in _BACKENDS:
        raise ValueError(f'bi_wkv: backend must be one of {_BACKENDS}, got {backend!r}')
    if backend == 'triton':
        if k.dtype == torch.float64:
            raise TypeError('bi_wkv: the Triton kernels take float32, float16 or bfloat16, not float64')
        return True
    return backend == 'auto' and k.is_cuda and k.dtype != torch.float64


def scan_layout(k: torch.Tensor, grid: Optional[Sequence[int]], order: str) -> Tuple[Tuple[int, int], int]:
    """((H, W), split) for ``order``: channels below ``split`` scan row-major, the rest column-major."""
    if order not in _ORDERS:
        raise ValueError(f'bi_wkv: order must be one of {_ORDERS}, got {order!r}')
    B, T, C = k.shape
    if grid is None:
        if order != 'row':
            raise ValueError(f"bi_wkv: order={order!r} needs grid=(H, W) of the {T} tokens")
        return (1, T), C
    H, W = (int(n) for n in grid)
    if H * W != T:
        raise ValueError(f'bi_wkv: grid {H}x{W} holds {H * W} tokens but the sequence has T = {T}')
    return (H, W), {'row': C, 'col': 0, 'cross': C // 2}[order]


def _column_major(x: torch.Tensor, grid_hw: Tuple[int, int], inverse: bool = False) -> torch.Tensor:
    """(B, H*W, C) tokens from row-major to column-major order (or back): a copy, PyTorch path only."""
    B, T, C = x.shape
    H, W = grid_hw
    shape = (B, W, H, C) if inverse else (B, H, W, C)
    return x.reshape(shape).transpose(1, 2).reshape(B, T, C)


def compute_dtype(k: torch.Tensor) -> torch.dtype:
    """Accumulation dtype of the PyTorch paths: float64 for float64 inputs, else float32."""
    return torch.float64 if k.dtype == torch.float64 else torch.float32


def _torch_raster(w, u, k, v, grid_hw):
    """Raster Bi-WKV on the PyTorch path; without autograd (inference) the forward alone runs."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in (w, u, k, v)):
        return BiWKVFunction.apply(w, u, k, v, 'torch', grid_hw, k.shape[-1])
    y, _ = bi_wkv_torch_forward(*(t.to(compute_dtype(k)) for t in (w, u, k, v)), with_log_den=False)
    return y.to(k.dtype)


def _torch_in_scan_order(w, u, k, v, grid_hw, split):
    """The PyTorch path runs raster scans: column-major lanes are permuted before and after."""
    C = k.shape[-1]
    if split == C:
        return _torch_raster(w, u, k, v, grid_hw)

    def to_col(x):
        return torch.cat([x[..., :split], _column_major(x[..., split:], grid_hw)], -1)

    y = _torch_raster(w, u, to_col(k), to_col(v), grid_hw)
    return torch.cat([y[..., :split], _column_major(y[..., split:], grid_hw, inverse=True)], -1)


class BiWKVFunction(torch.autograd.Function):
    """Autograd wrapper; fp32 accumulation, outputs and gradients in the input dtypes."""

    @staticmethod
    def forward(ctx, w, u, k, v, backend, grid_hw, split):
        triton_path = _use_triton(k, backend)
        compute = compute_dtype(k)
        w32, u32 = w.to(compute).contiguous(), u.to(compute).contiguous()
        if triton_path:
            from .bi_wkv_triton import bi_wkv_triton_forward
            k_in, v_in = k.contiguous(), v.contiguous()
            y, log_den = bi_wkv_triton_forward(w32, u32, k_in, v_in, grid_hw, split)
        else:
            k_in, v_in = k.to(compute).contiguous(), v.to(compute).contiguous()
            y, log_den = bi_wkv_torch_forward(w32, u32, k_in, v_in)
        ctx.save_for_backward(w32, u32, k_in, v_in, y, log_den)
        ctx.triton_path = triton_path
        ctx.layout = (grid_hw, split)
        ctx.dtypes = (w.dtype, u.dtype, k.dtype, v.dtype)
        return y.to(k.dtype)

    @staticmethod
    def backward(ctx, gy):
        w, u, k, v, y, log_den = ctx.saved_tensors
        if ctx.triton_path:
            from .bi_wkv_triton import bi_wkv_triton_backward
            grads = bi_wkv_triton_backward(w, u, k, v, y, log_den, gy.contiguous(), *ctx.layout)
        else:
            grads = bi_wkv_torch_backward(w, u, k, v, y, log_den, gy.to(y.dtype).contiguous())
        gw, gu, gk, gv = (g.to(dt) for g, dt in zip(grads, ctx.dtypes))
        return gw, gu, gk, gv, None, None, None


def bi_wkv(
        w: torch.Tensor,
        u: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        backend: Optional[str] = None,
        grid: Optional[Sequence[int]] = None,
        order: str = 'row',
) -> torch.Tensor:
    """Bidirectional WKV of Vision-RWKV.

    For every batch b, channel c and position t:

        y_t = (sum_{i != t} e^{-(|t-i|-1) w + k_i} v_i + e^{u + k_t} v_t)
              / (sum_{i != t} e^{-(|t-i|-1) w + k_i} + e^{u + k_t})

    Args:
        w: (C,) decay (already scaled by the caller; Vision-RWKV passes spatial_decay / T).
        u: (C,) bonus of the current token (Vision-RWKV passes spatial_first / T).
        k: (B, T, C) keys; fp32, fp16, bf16 (or fp64 on the PyTorch path).
        v: (B, T, C) values, same dtype as k.
        backend: 'auto' (default: Triton for CUDA tensors, PyTorch otherwise), 'triton' or 'torch'.
        grid: (H, W) of the token grid when the T = H * W tokens are an image (row-major in memory).
        order: which order the scan reads the grid in: 'row' (raster, the official model),
            'col' (column-major) or 'cross' (channels below C // 2 row-major, the others
            column-major). The Triton kernels read column-major tokens by index arithmetic on the
            row-major tensors; the PyTorch path permutes copies.

    Returns:
        (B, T, C) tensor in the dtype of k. Accumulation is in fp32 (fp64 for fp64 inputs).
    """
    _check_inputs(w, u, k, v)
    grid_hw, split = scan_layout(k, grid, order)
    backend = backend or 'auto'
    if _use_triton(k, backend):
        return BiWKVFunction.apply(w, u, k, v, backend, grid_hw, split)
    return _torch_in_scan_order(w, u, k, v, grid_hw, split)
