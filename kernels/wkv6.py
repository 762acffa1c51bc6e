"""The public bidirectional RWKV-6 WKV operator of VRWKV6 (``bi_wkv6``): input checks, and the
``vision_rwkv::bi_wkv6_forward`` / ``bi_wkv6_backward`` operators (``torch.library`` custom ops with fake
kernels and autograd) that dispatch to Triton (CUDA) or to the chunked PyTorch path.

Each call is one operator node for ``torch.compile`` (no graph break) and ``torch.export``. The backward
operator recomputes what it needs from the inputs (r, k, v, w, u): the forward saves nothing else.

NaN decays: a NaN in w has no meaning (every weight across it is NaN). On CPU tensors the forward
operator raises a ValueError (one pass over w, inside the operator, so compiled graphs keep it without a
graph break). On CUDA tensors it does not check: a check needs the answer on the host, i.e. a device
synchronisation per call (it stalls the launch queue and breaks CUDA graphs), and
``torch._assert_async`` fails with a device-side assert that leaves the CUDA context unusable for the rest
of the process. There a NaN in w gives NaN outputs for that batch element and head.
"""
from typing import Optional

import torch

from .bi_wkv import _LIB, _cuda_guard, define_op
from .bi_wkv_export import check_exporter, onnx_exporting
from .wkv6_torch import wkv6_torch_backward, wkv6_torch_forward

HEAD_SIZE = 64
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_BACKENDS = ('auto', 'triton', 'torch')


def check_wkv6_inputs(r: torch.Tensor, k: torch.Tensor, v: torch.Tensor, w: torch.Tensor, u: torch.Tensor) -> None:
    """Clear errors for what ``bi_wkv6`` cannot take: types, shapes, head size, empty sequences."""
    for name, t in (('r', r), ('k', k), ('v', v), ('w', w), ('u', u)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f'bi_wkv6: {name} must be a torch.Tensor, got {type(t).__name__}')
        if t.dtype not in _FLOAT_DTYPES:
            raise TypeError(f'bi_wkv6: {name} must be float16, bfloat16, float32 or float64, got {t.dtype}')
    if k.dim() != 3:
        raise ValueError(f'bi_wkv6: k must have shape (B, T, C), got {tuple(k.shape)}')
    for name, t in (('r', r), ('v', v), ('w', w)):
        if t.shape != k.shape:
            raise ValueError(f'bi_wkv6: {name} has shape {tuple(t.shape)} but k has shape {tuple(k.shape)}')
    B, T, C = k.shape
    if C % HEAD_SIZE:
        raise ValueError(f'bi_wkv6: the channels must be heads of {HEAD_SIZE}, got C = {C}')
    if u.shape != (C // HEAD_SIZE, HEAD_SIZE):
        raise ValueError(f'bi_wkv6: u must have shape (H, {HEAD_SIZE}) = ({C // HEAD_SIZE}, {HEAD_SIZE}), '
                         f'got {tuple(u.shape)}')
    if T == 0:
        raise ValueError('bi_wkv6: the sequence is empty (T = 0)')
    devices = {t.device for t in (r, k, v, w, u)}
    if len(devices) > 1:
        raise ValueError(f'bi_wkv6: all inputs must be on one device, got {sorted(map(str, devices))}')


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """Accumulation dtype: float64 when an input is float64, else float32."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def use_triton(r, k, v, w, backend: str) -> bool:
    """Whether ``backend`` runs the Triton kernels: 'triton', or 'auto' on CUDA tensors without float64."""
    if backend not in _BACKENDS:
        raise ValueError(f'bi_wkv6: backend must be one of {_BACKENDS}, got {backend!r}')
    float64 = compute_dtype(r, k, v, w) == torch.float64
    if backend == 'triton':
        if float64:
            raise TypeError('bi_wkv6: the Triton kernels take float32, float16 or bfloat16, not float64')
        return True
    return backend == 'auto' and k.is_cuda and not float64


def check_decays(w: torch.Tensor) -> None:
    """ValueError for NaN decays, on CPU tensors only (module docstring)."""
    if w.device.type == 'cpu' and bool(torch.isnan(w).any()):
        raise ValueError('bi_wkv6: w (the log-log decays) contains NaN')


def _no_autocast(t: torch.Tensor):
    """The PyTorch path computes in its own accumulation dtype: an enclosing autocast region (the operator's
    implementation runs inside it) would run its matmuls in bf16 / fp16."""
    return torch.autocast(t.device.type, enabled=False)


def _forward_impl(r, k, v, w, u, use_triton):
    """y (B, T, C) in the dtype of r: the Triton kernels or the chunked PyTorch path."""
    check_decays(w)
    if use_triton:
        from .wkv6_triton import wkv6_triton_forward
        with _cuda_guard(k):
            y = wkv6_triton_forward(r, k, v, w, u)
    else:
        with _no_autocast(k):
            y = wkv6_torch_forward(r, k, v, w, u, dtype=compute_dtype(r, k, v, w))
    return y.to(r.dtype).contiguous()


def _forward_fake(r, k, v, w, u, use_triton):
    return r.new_empty(r.shape)


def _backward_impl(r, k, v, w, u, gy, use_triton):
    """Gradients (gr, gk, gv, gw, gu) of ``_forward_impl`` for the gradient gy of y, in the inputs' dtypes."""
    if use_triton:
        from .wkv6_triton import wkv6_triton_backward
        with _cuda_guard(k):
            grads = wkv6_triton_backward(r, k, v, w, u, gy)
    else:
        with _no_autocast(k):
            grads = wkv6_torch_backward(r, k, v, w, u, gy, dtype=compute_dtype(r, k, v, w))
    return tuple(g.to(t.dtype).contiguous() for g, t in zip(grads, (r, k, v, w, u)))


def _backward_fake(r, k, v, w, u, gy, use_triton):
    return tuple(t.new_empty(t.shape) for t in (r, k, v, w, u))


bi_wkv6_forward_op = define_op(
    'bi_wkv6_forward(Tensor r, Tensor k, Tensor v, Tensor w, Tensor u, bool use_triton) -> Tensor',
    _forward_impl, _forward_fake)
bi_wkv6_backward_op = define_op(
    'bi_wkv6_backward(Tensor r, Tensor k, Tensor v, Tensor w, Tensor u, Tensor gy, bool use_triton) '
    '-> (Tensor gr, Tensor gk, Tensor gv, Tensor gw, Tensor gu)', _backward_impl, _backward_fake)


def _setup_context(ctx, inputs, output):
    *tensors, triton = inputs
    ctx.save_for_backward(*tensors)
    ctx.use_triton = triton
    ctx.set_materialize_grads(False)


def _backward(ctx, gy):
    if gy is None:
        return (None,) * 6
    return bi_wkv6_backward_op(*ctx.saved_tensors, gy, ctx.use_triton) + (None,)


torch.library.register_autograd('vision_rwkv::bi_wkv6_forward', _backward, setup_context=_setup_context, lib=_LIB)


def bi_wkv6(r: torch.Tensor, k: torch.Tensor, v: torch.Tensor, w: torch.Tensor, u: torch.Tensor,
            backend: Optional[str] = None) -> torch.Tensor:
    """Bidirectional RWKV-6 WKV (VRWKV6's spatial mix), heads of 64 channels.

    y_{t,i} = sum_j r_{t,j} [u_j k_{t,j} v_{t,i} + sum_{s != t} (prod_{m strictly between s and t} d_{m,j})
    k_{s,j} v_{s,i}] per batch and head, with d = exp(-exp(w)) (see ``kernels.reference.bi_wkv6_reference``).

    Args:
        r, k, v: (B, T, C) receptance, keys and values, C = 64 * H; float16, bfloat16, float32 or float64.
        w: (B, T, C) data-dependent log-log decay (the official ``time_decay + tanh(x_w W1) W2``); NaN is an
            error on CPU tensors (see the module docstring for CUDA).
        u: (H, 64) bonus of the current token (the official ``time_faaaa``).
        backend: 'auto' (default: Triton for CUDA tensors, PyTorch otherwise), 'triton' or 'torch'.

    Returns:
        (B, T, C) in the dtype of r. Accumulation in float32 (float64 when an input is float64, PyTorch
        path only); gradients in the dtypes of the inputs.
    """
    check_wkv6_inputs(r, k, v, w, u)
    if onnx_exporting():
        check_exporter('bi_wkv6')
        from .wkv6_export import bi_wkv6_export  # torch's scan operator, imported for exports only
        return bi_wkv6_export(r, k, v, w, u)
    return bi_wkv6_forward_op(r, k, v, w, u, use_triton(r, k, v, w, backend or 'auto'))

