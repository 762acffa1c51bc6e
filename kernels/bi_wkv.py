"""The public Bi-WKV operator: input checks, autograd and dispatch to Triton (CUDA) or PyTorch."""
from typing import Optional

import torch

from .bi_wkv_torch import bi_wkv_torch_backward, bi_wkv_torch_forward

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_BACKENDS = ('auto', 'triton', 'torch')


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


class BiWKVFunction(torch.autograd.Function):
    """Autograd wrapper; fp32 accumulation, outputs and gradients in the input dtypes."""

    @staticmethod
    def forward(ctx, w, u, k, v, backend):
        triton_path = _use_triton(k, backend)
        compute = torch.float64 if k.dtype == torch.float64 else torch.float32
        w32, u32 = w.to(compute).contiguous(), u.to(compute).contiguous()
        if triton_path:
            from .bi_wkv_triton import bi_wkv_triton_forward
            k_in, v_in = k.contiguous(), v.contiguous()
            y, log_den = bi_wkv_triton_forward(w32, u32, k_in, v_in)
        else:
            k_in, v_in = k.to(compute).contiguous(), v.to(compute).contiguous()
            y, log_den = bi_wkv_torch_forward(w32, u32, k_in, v_in)
        ctx.save_for_backward(w32, u32, k_in, v_in, y, log_den)
        ctx.triton_path = triton_path
        ctx.dtypes = (w.dtype, u.dtype, k.dtype, v.dtype)
        return y.to(k.dtype)

    @staticmethod
    def backward(ctx, gy):
        w, u, k, v, y, log_den = ctx.saved_tensors
        if ctx.triton_path:
            from .bi_wkv_triton import bi_wkv_triton_backward
            grads = bi_wkv_triton_backward(w, u, k, v, y, log_den, gy.contiguous())
        else:
            grads = bi_wkv_torch_backward(w, u, k, v, y, log_den, gy.to(y.dtype).contiguous())
        gw, gu, gk, gv = (g.to(dt) for g, dt in zip(grads, ctx.dtypes))
        return gw, gu, gk, gv, None


def bi_wkv(
        w: torch.Tensor,
        u: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        backend: Optional[str] = None,
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

    Returns:
        (B, T, C) tensor in the dtype of k. Accumulation is in fp32 (fp64 for fp64 inputs).
    """
    _check_inputs(w, u, k, v)
    return BiWKVFunction.apply(w, u, k, v, backend or 'auto')
