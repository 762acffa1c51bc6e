"""The public Bi-WKV operator: input checks, and the ``vision_rwkv::bi_wkv_forward`` / ``_backward``
operators (``torch.library`` custom ops with a fake kernel and autograd) that dispatch to Triton
(CUDA) or PyTorch."""
import contextlib
from typing import Optional, Sequence, Tuple

import torch

from .bi_wkv_export import bi_wkv_export, bi_wkv_official_export, check_exporter, onnx_exporting
from .bi_wkv_official import official_backward, official_forward, segment_length
from .bi_wkv_torch import bi_wkv_torch_backward, bi_wkv_torch_forward

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_BACKENDS = ('auto', 'triton', 'torch')
_ORDERS = ('row', 'col', 'cross')
_FORMULAS = ('paper', 'official')


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


def _needs_grad(*tensors: torch.Tensor) -> bool:
    """Whether autograd will record the call (else the forward skips the log-denominator)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def scan_layout(k: torch.Tensor, grid: Optional[Sequence[int]], order: str) -> Tuple[Tuple[int, int], int]:
    """((H, W), split) for ``order``: channels below ``split`` scan row-major, the rest column-major."""
    if order not in _ORDERS:
        raise ValueError(f'bi_wkv: order must be one of {_ORDERS}, got {order!r}')
    B, T, C = k.shape
    if grid is None:
        if order != 'row':
            raise ValueError(f"bi_wkv: order={order!r} needs grid=(H, W) of the {T} tokens")
        return (1, T), C
    H, W = (n if isinstance(n, torch.SymInt) else int(n) for n in grid)  # int() would fix an exported size
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


def _cuda_guard(t: torch.Tensor):
    """Make ``t``'s GPU current while Triton launches (inputs on cuda:1 from a cuda:0 process)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def launch_triton(host_fn, w, u, k, v, *args, **kwargs):
    """Call a Triton host function with fp32 contiguous w, u and contiguous k, v (then ``args``), under
    k's CUDA device guard."""
    with _cuda_guard(k):
        return host_fn(w.float().contiguous(), u.float().contiguous(), k.contiguous(), v.contiguous(),
                       *args, **kwargs)


def check_log_den(op: str, y: torch.Tensor, log_den: torch.Tensor) -> None:
    """The backward operators need the forward's log-denominator: a clear error when it was skipped."""
    if log_den.shape != y.shape:
        raise RuntimeError(f'{op}: the backward needs the log-denominator, which the forward skipped '
                           '(it ran with grad disabled or on inputs that did not require grad)')


def grads_like(grads, inputs):
    """Gradients (gw, gu, gk, gv) in the dtypes of the inputs (w, u, k, v), contiguous."""
    return tuple(g.to(t.dtype).contiguous() for g, t in zip(grads, inputs))


def _to_scan_order(x: torch.Tensor, grid_hw: Tuple[int, int], split: int) -> torch.Tensor:
    """(B, T, C) tokens with the lanes from ``split`` on permuted to column-major (PyTorch path)."""
    if split == x.shape[-1]:
        return x
    return torch.cat([x[..., :split], _column_major(x[..., split:], grid_hw)], -1)


def _from_scan_order(x: torch.Tensor, grid_hw: Tuple[int, int], split: int) -> torch.Tensor:
    """Inverse of ``_to_scan_order``."""
    if split == x.shape[-1]:
        return x
    return torch.cat([x[..., :split], _column_major(x[..., split:], grid_hw, inverse=True)], -1)


def _torch_forward(w, u, k, v, grid_hw, split, with_log_den):
    """PyTorch path: raster scans in ``compute_dtype``, column-major lanes permuted before and after."""
    compute = compute_dtype(k)
    w, u = w.to(compute).contiguous(), u.to(compute).contiguous()
    k, v = (_to_scan_order(t.to(compute), grid_hw, split).contiguous() for t in (k, v))
    y, log_den = bi_wkv_torch_forward(w, u, k, v, with_log_den=with_log_den)
    y = _from_scan_order(y, grid_hw, split).contiguous()
    return y, (_from_scan_order(log_den, grid_hw, split).contiguous() if with_log_den else None)


def _torch_backward(w, u, k, v, y, log_den, gy, grid_hw, split):
    """Gradients on the PyTorch path, in ``compute_dtype`` and token order."""
    compute = compute_dtype(k)
    w, u = w.to(compute).contiguous(), u.to(compute).contiguous()
    k, v, y, log_den, gy = (_to_scan_order(t.to(compute), grid_hw, split).contiguous()
                            for t in (k, v, y, log_den, gy))
    gw, gu, gk, gv = bi_wkv_torch_backward(w, u, k, v, y, log_den, gy)
    return gw, gu, _from_scan_order(gk, grid_hw, split), _from_scan_order(gv, grid_hw, split)


#: Holds the registrations of the vision_rwkv operators (they last as long as it does).
_LIB = torch.library.Library('vision_rwkv', 'FRAGMENT')


def define_op(schema: str, impl, fake):
    """Define ``vision_rwkv::<schema>`` with ``impl`` for tensors of every device and ``fake`` for fake and
    meta tensors; return its OpOverload. (``torch.library.Library`` rather than ``custom_op``: that adds
    about 10 µs more per call in eager mode, half its overhead.)"""
    name = schema.split('(')[0]
    _LIB.define(schema)
    _LIB.impl(name, impl, 'CompositeExplicitAutograd')
    torch.library.register_fake(f'vision_rwkv::{name}', fake, lib=_LIB)
    return getattr(torch.ops.vision_rwkv, name).default


def forward_outputs(y: torch.Tensor, log_den: Optional[torch.Tensor], k: torch.Tensor, with_log_den: bool):
    """The three outputs of the forward operators from y and log_den in the accumulation dtype:
    y in the dtype of k; y_acc, the unrounded y the backward reads when that dtype is narrower (else an
    empty (0,) tensor: outputs may not alias each other); log_den, or an empty tensor without
    ``with_log_den`` (inference), as y_acc then."""
    if not with_log_den:  # (the Triton inference forward writes k's dtype already)
        empty = y.new_empty(0, dtype=compute_dtype(k))
        return y.to(k.dtype), empty, empty.new_empty(0)
    if y.dtype == k.dtype:
        return y, y.new_empty(0), log_den
    return y.to(k.dtype), y, log_den


def fake_forward_outputs(k: torch.Tensor, with_log_den: bool):
    """Shapes and dtypes of ``forward_outputs`` (fake kernels)."""
    acc = compute_dtype(k)
    if not with_log_den:
        return k.new_empty(k.shape), k.new_empty(0, dtype=acc), k.new_empty(0, dtype=acc)
    y_acc = k.new_empty(0 if acc == k.dtype else k.shape, dtype=acc)
    return k.new_empty(k.shape), y_acc, k.new_empty(k.shape, dtype=acc)


def saved_for_backward(ctx, w, u, k, v, output) -> None:
    """Save the forward's inputs, the accumulation-dtype y and log_den, for the backward operator; the
    gradient of y alone flows back."""
    y, y_acc, log_den = output
    ctx.save_for_backward(w, u, k, v, y if y.dtype == log_den.dtype else y_acc, log_den)
    ctx.mark_non_differentiable(y_acc, log_den)
    ctx.set_materialize_grads(False)


def _bi_wkv_forward_impl(w, u, k, v, H, W, split, use_triton, with_log_den):
    """Bi-WKV forward as one operator (``torch.compile`` and ``torch.export`` see a single node).

    Args:
        w, u: (C,); k, v: (B, T, C), checked by ``bi_wkv``.
        H, W, split: the scan layout of ``scan_layout``.
        use_triton: run the Triton kernels (CUDA, or the interpreter on CPU), else the PyTorch path.
        with_log_den: also return the log-denominator the backward needs (Triton computes it anyway).

    Returns:
        y (B, T, C) in the dtype of k, y_acc and log_den: see ``forward_outputs``; accumulation in
        ``compute_dtype(k)`` (float32, or float64 on the PyTorch path for float64 inputs).
    """
    if not use_triton:
        y, log_den = _torch_forward(w, u, k, v, (H, W), split, with_log_den)
    else:
        from .bi_wkv_triton import bi_wkv_triton_forward
        y, log_den = launch_triton(bi_wkv_triton_forward, w, u, k, v, (H, W), split, with_log_den=with_log_den)
    return forward_outputs(y, log_den, k, with_log_den)


def _bi_wkv_forward_fake(w, u, k, v, H, W, split, use_triton, with_log_den):
    return fake_forward_outputs(k, with_log_den)


def _bi_wkv_backward_impl(w, u, k, v, y, log_den, gy, H, W, split, use_triton):
    """Gradients of ``bi_wkv_forward``: w, u, k, v its inputs; y, log_den (B, T, C) its outputs in the
    accumulation dtype; gy (B, T, C) the gradient of y (any float dtype); the layout and path as the forward.
    Returns gw, gu, gk, gv in the dtypes of w, u, k, v."""
    check_log_den('bi_wkv', y, log_den)
    if use_triton:
        from .bi_wkv_triton import bi_wkv_triton_backward
        grads = launch_triton(bi_wkv_triton_backward, w, u, k, v, y, log_den, gy.contiguous(), (H, W), split)
    else:
        grads = _torch_backward(w, u, k, v, y, log_den, gy, (H, W), split)
    return grads_like(grads, (w, u, k, v))


def _bi_wkv_backward_fake(w, u, k, v, y, log_den, gy, H, W, split, use_triton):
    return tuple(t.new_empty(t.shape) for t in (w, u, k, v))


bi_wkv_forward_op = define_op(
    'bi_wkv_forward(Tensor w, Tensor u, Tensor k, Tensor v, SymInt H, SymInt W, SymInt split, bool use_triton, '
    'bool with_log_den) -> (Tensor y, Tensor y_acc, Tensor log_den)', _bi_wkv_forward_impl, _bi_wkv_forward_fake)
bi_wkv_backward_op = define_op(
    'bi_wkv_backward(Tensor w, Tensor u, Tensor k, Tensor v, Tensor y, Tensor log_den, Tensor gy, SymInt H, '
    'SymInt W, SymInt split, bool use_triton) -> (Tensor gw, Tensor gu, Tensor gk, Tensor gv)',
    _bi_wkv_backward_impl, _bi_wkv_backward_fake)


def _setup_context(ctx, inputs, output):
    w, u, k, v, H, W, split, use_triton, _ = inputs
    saved_for_backward(ctx, w, u, k, v, output)
    ctx.layout = (H, W, split, use_triton)


def _backward(ctx, gy, *_):
    if gy is None:
        return (None,) * 9
    grads = bi_wkv_backward_op(*ctx.saved_tensors, gy, *ctx.layout)
    return grads + (None,) * 5


torch.library.register_autograd('vision_rwkv::bi_wkv_forward', _backward, setup_context=_setup_context, lib=_LIB)


def _official_parts(k: torch.Tensor, use_triton: bool):
    """Keyword arguments of ``official_forward`` and ``official_backward`` for the chosen path: the Eq. 5
    part and the local terms, taking w, u in the accumulation dtype and k, v as given."""
    T, C = k.shape[1:]
    if use_triton:
        from .bi_wkv_official_triton import official_local_triton_backward, official_local_triton_forward
        from .bi_wkv_triton import bi_wkv_triton_backward, bi_wkv_triton_forward
        seg = segment_length(T)
        return (dict(eq5_forward=lambda w, u, k, v: launch_triton(bi_wkv_triton_forward, w, u, k, v, (1, T), C),
                     local_forward=lambda w, k, v, y5, ld5: official_local_triton_forward(
                         w.float().contiguous(), k, v, y5, ld5, seg)),
                dict(eq5_backward=lambda w, u, k, v, y, log_den, gy: launch_triton(
                         bi_wkv_triton_backward, w, u, k, v, y, log_den, gy.contiguous(), (1, T), C),
                     local_backward=lambda w, k, v, y, ld, gy, gk, gv: official_local_triton_backward(
                         w.float().contiguous(), k, v, y, ld, gy.contiguous(), gk.contiguous(), gv.contiguous(),
                         seg)))
    acc = compute_dtype(k)
    cast = lambda t: t.to(acc).contiguous()
    return (dict(eq5_forward=lambda w, u, k, v: bi_wkv_torch_forward(w, u, cast(k), cast(v))),
            dict(eq5_backward=lambda w, u, k, v, y, log_den, gy: bi_wkv_torch_backward(
                w, u, cast(k), cast(v), y, log_den, cast(gy))))


def _bi_wkv_official_forward_impl(w, u, k, v, use_triton, with_log_den):
    """The official operator's forward (``kernels.bi_wkv_official``), outputs as ``_bi_wkv_forward_impl``."""
    acc = compute_dtype(k)
    with _cuda_guard(k):
        y, log_den = official_forward(w.to(acc), u.to(acc), k.contiguous(), v.contiguous(),
                                      **_official_parts(k, use_triton)[0])
    return forward_outputs(y, log_den if with_log_den else None, k, with_log_den)


def _bi_wkv_official_forward_fake(w, u, k, v, use_triton, with_log_den):
    return fake_forward_outputs(k, with_log_den)


def _bi_wkv_official_backward_impl(w, u, k, v, y, log_den, gy, use_triton):
    """Exact gradients of ``bi_wkv_official_forward`` (see ``_bi_wkv_backward_impl``)."""
    check_log_den('bi_wkv', y, log_den)
    acc = compute_dtype(k)
    with _cuda_guard(k):
        grads = official_backward(w.to(acc), u.to(acc), k.contiguous(), v.contiguous(), y, log_den, gy,
                                  **_official_parts(k, use_triton)[1])
    return grads_like(grads, (w, u, k, v))


def _bi_wkv_official_backward_fake(w, u, k, v, y, log_den, gy, use_triton):
    return tuple(t.new_empty(t.shape) for t in (w, u, k, v))


bi_wkv_official_forward_op = define_op(
    'bi_wkv_official_forward(Tensor w, Tensor u, Tensor k, Tensor v, bool use_triton, bool with_log_den) '
    '-> (Tensor y, Tensor y_acc, Tensor log_den)', _bi_wkv_official_forward_impl, _bi_wkv_official_forward_fake)
bi_wkv_official_backward_op = define_op(
    'bi_wkv_official_backward(Tensor w, Tensor u, Tensor k, Tensor v, Tensor y, Tensor log_den, Tensor gy, '
    'bool use_triton) -> (Tensor gw, Tensor gu, Tensor gk, Tensor gv)',
    _bi_wkv_official_backward_impl, _bi_wkv_official_backward_fake)


def _official_setup_context(ctx, inputs, output):
    w, u, k, v, use_triton, _ = inputs
    saved_for_backward(ctx, w, u, k, v, output)
    ctx.use_triton = use_triton


def _official_backward(ctx, gy, *_):
    if gy is None:
        return (None,) * 6
    return bi_wkv_official_backward_op(*ctx.saved_tensors, gy, ctx.use_triton) + (None, None)


torch.library.register_autograd('vision_rwkv::bi_wkv_official_forward', _official_backward,
                                setup_context=_official_setup_context, lib=_LIB)


def bi_wkv(
        w: torch.Tensor,
        u: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        backend: Optional[str] = None,
        grid: Optional[Sequence[int]] = None,
        order: str = 'row',
        formula: str = 'paper',
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
        formula: 'paper' (Eq. 5 above) or 'official': the arithmetic of the official CUDA kernels, which
            the released checkpoints were trained with (segments of ceil(T / 32) tokens with their own
            weights, see ``kernels.bi_wkv_official``; raster order only). Both are O(T), forward and backward.

    Returns:
        (B, T, C) tensor in the dtype of k. Accumulation is in fp32 (fp64 for fp64 inputs).
    """
    _check_inputs(w, u, k, v)
    (H, W), split = scan_layout(k, grid, order)
    use_triton = _use_triton(k, backend or 'auto')
    if formula not in _FORMULAS:
        raise ValueError(f'bi_wkv: formula must be one of {_FORMULAS}, got {formula!r}')
    if formula == 'official' and order != 'row':
        raise ValueError(f"bi_wkv: formula='official' exists for the raster order only (order='row'), "
                         f'got order={order!r}')
    if onnx_exporting():
        check_exporter('bi_wkv')
        if formula == 'official':
            return bi_wkv_official_export(w, u, k, v)
        return bi_wkv_export(w, u, k, v, (H, W), split)
    if formula == 'official':
        return bi_wkv_official_forward_op(w, u, k, v, use_triton, _needs_grad(w, u, k, v))[0]
    return bi_wkv_forward_op(w, u, k, v, H, W, split, use_triton, _needs_grad(w, u, k, v))[0]
