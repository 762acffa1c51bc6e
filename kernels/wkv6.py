"""The public bidirectional RWKV-6 WKV operator of VRWKV6 (``bi_wkv6``): input checks and dispatch.

Interface first: this version runs the float64 recurrence of ``kernels.reference`` (correct, slow, O(T)
Python steps); the chunked PyTorch path, the Triton kernels and the ``torch.library`` operator replace it
behind the same signature.
"""
import torch

from .reference import bi_wkv6_reference

HEAD_SIZE = 64
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


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


def bi_wkv6(r: torch.Tensor, k: torch.Tensor, v: torch.Tensor, w: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Bidirectional RWKV-6 WKV (VRWKV6's spatial mix), heads of 64 channels.

    y_{t,i} = sum_j r_{t,j} [u_j k_{t,j} v_{t,i} + sum_{s != t} (prod_{m strictly between s and t} d_{m,j})
    k_{s,j} v_{s,i}] per batch and head, with d = exp(-exp(w)) (see ``kernels.reference.bi_wkv6_reference``).

    Args:
        r, k, v: (B, T, C) receptance, keys and values, C = 64 * H.
        w: (B, T, C) data-dependent log-log decay (the official ``time_decay + tanh(x_w W1) W2``).
        u: (H, 64) bonus of the current token (the official ``time_faaaa``).

    Returns:
        (B, T, C) in the dtype of r.
    """
    check_wkv6_inputs(r, k, v, w, u)
    return bi_wkv6_reference(r, k, v, w, u).to(r.dtype)
