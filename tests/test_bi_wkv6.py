"""VRWKV6's bidirectional RWKV-6 WKV: the chunked PyTorch path against the float64 recurrence, gradients,
extreme decays, long sequences.

Tolerances (norm-wise relative error, ``conftest.rel_err``):
- float64: the chunked path and the recurrence round differently, each by about eps64 per operation
  over sums of a few hundred terms: we allow 1e-12 (measured: 5e-16).
- float32 against the float64 recurrence on the same (float32-representable) inputs: each weight is
  exp of a sum of float32 log-decays (relative error eps32 * |exponent|, |exponent| <~ 20 for the
  weights that matter), then sums of up to S * N + N^2 products per output: we allow 16 * eps32 = 1.9e-6
  (measured: 2e-7), relative to the sums of the terms' magnitudes where a few terms can cancel
  (``natural_scales``). A wrong index or term gives 1e-3 or more.
"""
import pytest
import torch

import vision_rwkv.kernels.wkv6_torch as wkv6_torch
from vision_rwkv.kernels import bi_wkv6, bi_wkv6_reference
from vision_rwkv.kernels.wkv6_torch import wkv6_torch_backward, wkv6_torch_forward

from conftest import rel_err

EPS32 = torch.finfo(torch.float32).eps
TOL64 = 1e-12
TOL32 = 16 * EPS32
#: w from -10 (decay 1 - 5e-5 per token) to 4.7 (decay e^-110 per token)
W_EXTREME = (-10.0, 4.7)


@pytest.fixture(autouse=True)
def _one_thread():
    """Small tensors on a shared 2-core machine: intra-op threads only contend (10-100x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_inputs(B, T, C, w_range=(-3.0, 1.0), dtype=torch.float64):
    """r, k, v (B, T, C) standard normal; w uniform in ``w_range``; u (C // 64, 64) standard normal."""
    r, k, v = (torch.randn(B, T, C, dtype=dtype) for _ in range(3))
    lo, hi = w_range
    w = torch.rand(B, T, C, dtype=dtype) * (hi - lo) + lo
    u = torch.randn(C // 64, 64, dtype=dtype)
    return r, k, v, w, u


def reference_and_grads(inputs, gy):
    """y and (gr, gk, gv, gw, gu) of the float64 recurrence by autograd (zeros for unused inputs)."""
    leaves = [t.detach().double().requires_grad_() for t in inputs]
    y = bi_wkv6_reference(*leaves)
    grads = torch.autograd.grad((y * gy.double()).sum(), leaves, allow_unused=True)
    return y.detach(), [torch.zeros_like(x) if g is None else g for g, x in zip(grads, leaves)]


def natural_scales(inputs, gy):
    """y and gradients of the recurrence on |r|, |k|, |v|, |u| and |gy| (w as is): every term of every sum
    taken positive. Rounding errors are relative to these, not to the results, which cancel: at T = 1,
    gr = (gy . v) u k hangs on one 64-term dot product (measured: gr, gk, gu and gv over 16 eps32 from
    their own norms in 6% of float32 draws, up to 1000 times the bound; 0 of 1000 against these scales)."""
    r, k, v, w, u = (t.detach().double() for t in inputs)
    return reference_and_grads((r.abs(), k.abs(), v.abs(), w, u.abs()), gy.double().abs())


def assert_close(actual, expected, tol, name, scale=None):
    """Norm-wise relative error below tol, relative to ``scale`` (default: the expected value itself); a
    zero expected gradient (w at T = 1) must come out zero."""
    assert torch.isfinite(actual).all(), name
    if expected.abs().max() == 0:
        assert actual.abs().max() == 0, name
    else:
        error = rel_err(actual, expected, scale)
        assert error < tol, f'{name}: {float(error):.3g} >= {tol:.3g}'


@pytest.mark.parametrize('B,T,C,chunk', [(1, 1, 64, 16), (2, 13, 128, 16), (1, 16, 64, 16), (2, 37, 128, 16),
                                         (1, 50, 64, 4), (2, 23, 64, 8)])
@pytest.mark.parametrize('w_range', [(-3.0, 1.0), W_EXTREME])
@pytest.mark.parametrize('dtype,tol', [(torch.float64, TOL64), (torch.float32, TOL32)])
def test_torch_path_matches_reference(B, T, C, chunk, w_range, dtype, tol):
    """Forward and all five gradients; one chunk (T <= chunk) and several, T not a multiple of the chunk,
    T = 1, one and two heads."""
    inputs = make_inputs(B, T, C, w_range)
    gy = torch.randn(B, T, C, dtype=torch.float64)
    y_ref, grads_ref = reference_and_grads(inputs, gy)
    y_scale, grad_scales = natural_scales(inputs, gy)
    y = wkv6_torch_forward(*inputs, dtype=dtype, chunk=chunk)
    assert y.dtype == dtype and y.shape == (B, T, C)
    assert_close(y, y_ref, tol, 'y', y_scale)
    grads = wkv6_torch_backward(*inputs, gy, dtype=dtype, chunk=chunk)
    for name, g, g_ref, scale in zip(('gr', 'gk', 'gv', 'gw', 'gu'), grads, grads_ref, grad_scales):
        assert g.dtype == dtype and g.shape == g_ref.shape, name
        assert_close(g, g_ref, tol, name, scale)


def test_torch_path_groups_of_chunks(monkeypatch):
    """Many groups of chunks (states carried from group to group in both directions) give the same result."""
    inputs = make_inputs(2, 70, 128, W_EXTREME)
    gy = torch.randn(2, 70, 128, dtype=torch.float64)
    y_ref, grads_ref = reference_and_grads(inputs, gy)
    monkeypatch.setattr(wkv6_torch, 'MAX_GROUP_ELEMENTS', 4 * 64 * 64)  # B * H = 4 states of 64^2: one chunk
    assert len(wkv6_torch.group_slices(-(-70 // 4), 4, 4, 64)) == 18
    assert_close(wkv6_torch_forward(*inputs, dtype=torch.float64, chunk=4), y_ref, TOL64, 'y')
    grads = wkv6_torch_backward(*inputs, gy, dtype=torch.float64, chunk=4)
    for name, g, g_ref in zip(('gr', 'gk', 'gv', 'gw', 'gu'), grads, grads_ref):
        assert_close(g, g_ref, TOL64, name)


def test_torch_path_decay_zero_and_one():
    """w = +inf (decay 0: the state resets) and w = -inf (decay 1): finite, and the reference's values."""
    inputs = make_inputs(1, 20, 64)
    w = inputs[3].clone()
    w[0, 5] = float('inf')
    w[0, 12] = -float('inf')
    inputs = (*inputs[:3], w, inputs[4])
    gy = torch.randn(1, 20, 64, dtype=torch.float64)
    y_ref, (gr_ref, gk_ref, gv_ref, _, gu_ref) = reference_and_grads(inputs, gy)
    assert_close(wkv6_torch_forward(*inputs, dtype=torch.float64), y_ref, TOL64, 'y')
    gr, gk, gv, gw, gu = wkv6_torch_backward(*inputs, gy, dtype=torch.float64)
    for name, g, g_ref in (('gr', gr, gr_ref), ('gk', gk, gk_ref), ('gv', gv, gv_ref), ('gu', gu, gu_ref)):
        assert_close(g, g_ref, TOL64, name)
    # d/dw exp(-exp(w)) is 0 at w = +-inf (the reference's autograd gives NaN there: inf * 0)
    assert torch.isfinite(gw).all() and (gw[0, 5] == 0).all() and (gw[0, 12] == 0).all()


def test_torch_path_long_sequence_float32():
    """T = 65536 with extreme decays in float32: finite, and the float64 chunked path's values (the
    recurrence would take minutes here)."""
    T = 65536
    inputs = make_inputs(1, T, 64, W_EXTREME, dtype=torch.float32)
    gy = torch.randn(1, T, 64)
    y = wkv6_torch_forward(*inputs)
    grads = wkv6_torch_backward(*inputs, gy)
    y64 = wkv6_torch_forward(*inputs, dtype=torch.float64)
    grads64 = wkv6_torch_backward(*inputs, gy, dtype=torch.float64)
    assert_close(y, y64, TOL32, 'y')
    for name, g, g64 in zip(('gr', 'gk', 'gv', 'gw', 'gu'), grads, grads64):
        assert_close(g, g64, TOL32, name)


# ---- the public operator: dispatch, torch.library registration, errors -------------------------------
OPS = torch.ops.vision_rwkv
GRAD_NAMES = ('gr', 'gk', 'gv', 'gw', 'gu')


def leaves(B=2, T=12, C=128, dtypes=(torch.float32,) * 5):
    """r, k, v, w, u requiring grad, each in its dtype (w in [-3, 1])."""
    return [t.to(dt).requires_grad_() for t, dt in zip(make_inputs(B, T, C, dtype=torch.float32), dtypes)]


def test_bi_wkv6_autograd_matches_reference_in_input_dtypes():
    """bf16 r, k, v, u with fp32 w (the official model's mix): y in r's dtype, gradients in each input's.
    Only bf16 rounding of the output and gradients (eps 2^-8) separates them from the reference."""
    inputs = leaves(dtypes=(torch.bfloat16, torch.bfloat16, torch.bfloat16, torch.float32, torch.bfloat16))
    y = bi_wkv6(*inputs)
    assert y.dtype == torch.bfloat16 and y.shape == (2, 12, 128)
    gy = torch.randn_like(y)
    grads = torch.autograd.grad(y, inputs, gy)
    y_ref, grads_ref = reference_and_grads(inputs, gy)
    eps16 = torch.finfo(torch.bfloat16).eps
    assert rel_err(y, y_ref) < eps16
    for name, g, g_ref, x in zip(GRAD_NAMES, grads, grads_ref, inputs):
        assert g.dtype == x.dtype, name
        assert rel_err(g, g_ref) < eps16, name


def test_compile_without_graph_breaks_and_export_one_node_per_call():
    inputs = leaves()
    explanation = torch._dynamo.explain(bi_wkv6)(*inputs)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(bi_wkv6, backend='aot_eager', fullgraph=True)
    y, y_ref = compiled(*inputs), bi_wkv6(*inputs)
    gy = torch.randn_like(y)
    for g, g_ref in zip(torch.autograd.grad(y, inputs, gy), torch.autograd.grad(y_ref, inputs, gy)):
        assert torch.equal(g, g_ref)  # the same operator kernels run
    assert torch.equal(y, y_ref)

    class TwoCalls(torch.nn.Module):
        def forward(self, r, k, v, w, u):
            return bi_wkv6(bi_wkv6(r, k, v, w, u), k, v, w, u)

    detached = tuple(t.detach() for t in inputs)
    program = torch.export.export(TwoCalls(), detached)
    nodes = [n.target for n in program.graph.nodes
             if n.op == 'call_function' and getattr(n.target, 'namespace', None) == 'vision_rwkv']
    assert nodes == [OPS.bi_wkv6_forward.default] * 2
    assert torch.equal(program.module()(*detached), TwoCalls()(*detached))


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16, torch.float64])
def test_opcheck(dtype):
    """Schemas, fake kernels, autograd registration and AOT dispatch of both operators."""
    inputs = leaves(B=1, T=5, C=64, dtypes=(dtype,) * 5)
    torch.library.opcheck(OPS.bi_wkv6_forward, (*inputs, False))
    detached = [t.detach() for t in inputs]
    torch.library.opcheck(OPS.bi_wkv6_backward, (*detached, torch.randn(1, 5, 64, dtype=dtype), False))


def test_meta_tensors_give_shapes_and_dtypes():
    inputs = [t.detach().to('meta') for t in leaves(dtypes=(torch.float16, torch.float16, torch.float16,
                                                            torch.float32, torch.float32))]
    y = bi_wkv6(*inputs)
    assert (y.device.type, y.shape, y.dtype) == ('meta', (2, 12, 128), torch.float16)


@pytest.mark.parametrize('change, error, match', [
    (dict(C=96), ValueError, 'heads of 64'),
    (dict(u_shape=(3, 64)), ValueError, r'u must have shape \(H, 64\) = \(2, 64\)'),
    (dict(u_shape=(128,)), ValueError, 'u must have shape'),
    (dict(T=0), ValueError, 'empty'),
    (dict(w_shape=(2, 12, 64)), ValueError, 'w has shape'),
    (dict(k_dim=2), ValueError, r'k must have shape \(B, T, C\)'),
    (dict(int_v=True), TypeError, 'v must be float16'),
    (dict(backend='cuda'), ValueError, 'backend must be one of'),
    (dict(backend='triton', dtype=torch.float64), TypeError, 'not float64'),
])
def test_bad_inputs_are_clear_errors(change, error, match):
    C, T = change.get('C', 128), change.get('T', 12)
    dtype = change.get('dtype', torch.float32)
    r, k, v = (torch.randn(2, T, C, dtype=dtype) for _ in range(3))
    w = torch.randn(change.get('w_shape', (2, T, C)), dtype=dtype)
    u = torch.randn(change.get('u_shape', (C // 64, 64)), dtype=dtype)
    if change.get('k_dim') == 2:
        k = k[0]
    if change.get('int_v'):
        v = v.long()
    with pytest.raises(error, match=match):
        bi_wkv6(r, k, v, w, u, backend=change.get('backend'))


def test_nan_decay_is_a_clear_error_eager_and_compiled():
    r, k, v, w, u = leaves()
    w = w.detach().clone()
    w[1, 7, 100] = float('nan')
    with pytest.raises(ValueError, match='w .* contains NaN'):
        bi_wkv6(r, k, v, w, u)
    with pytest.raises(ValueError, match='w .* contains NaN'):
        torch.compile(bi_wkv6, backend='aot_eager', fullgraph=True)(r, k, v, w, u)


# ---- Triton kernels (the interpreter on CPU tensors: small shapes) --------------------------------------
TRITON_DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'  # cpu: TRITON_INTERPRET=1 (conftest)
#: Triton against the float64 recurrence: float32 accumulation, and on the GPU matmuls of three TF32
#: products (relative error about 2^-21 = 4 eps32 per product): 32 * eps32 = 3.8e-6 (measured in the
#: interpreter, whose matmuls are exact: 2e-7). Outputs stored in fp16 add its rounding, eps16 / 2.
TOL_TRITON = 32 * EPS32


def check_triton(monkeypatch, B, T, C, dtype, w_range, chunk=64, carry_block=32):
    """bi_wkv6(backend='triton') forward and gradients against the float64 recurrence (r, k, v, u in
    ``dtype``, w in float32), with CHUNK_LEN and CARRY_BLOCK shrunk to reach several chunks and carries."""
    import vision_rwkv.kernels.wkv6_triton as wkv6_triton
    monkeypatch.setattr(wkv6_triton, 'CHUNK_LEN', chunk)
    monkeypatch.setattr(wkv6_triton, 'CARRY_BLOCK', carry_block)
    r, k, v, w, u = make_inputs(B, T, C, w_range, dtype=torch.float32)
    inputs = [t.to(TRITON_DEVICE, dt).requires_grad_() for t, dt in zip((r, k, v, w, u), (dtype,) * 3 + (
        torch.float32, dtype))]
    y = bi_wkv6(*inputs, backend='triton')
    assert y.dtype == dtype and y.device.type == TRITON_DEVICE
    gy = torch.randn_like(y)
    grads = torch.autograd.grad(y, inputs, gy)
    y_ref, grads_ref = reference_and_grads([t.cpu() for t in inputs], gy.cpu())
    rounding = torch.finfo(dtype).eps / 2 if dtype != torch.float32 else 0.
    assert_close(y.cpu(), y_ref, TOL_TRITON + rounding, 'y')
    for name, g, g_ref, x in zip(GRAD_NAMES, grads, grads_ref, inputs):
        assert g.dtype == x.dtype, name
        assert_close(g.cpu(), g_ref, TOL_TRITON + (rounding if x.dtype == dtype else 0.), name)


def test_triton_float32_chunks_and_carries_extreme_decays(monkeypatch):
    """T = 70 in chunks of 32: three chunks (the last partial, one of its sub-blocks empty), carried across
    blocks of two chunks; decays from 1 - 5e-5 to e^-110 per token."""
    check_triton(monkeypatch, 1, 70, 64, torch.float32, W_EXTREME, chunk=32, carry_block=2)


def test_triton_float16_two_heads(monkeypatch):
    """fp16 r, k, v, u and float32 w, two heads, one partial chunk of 64 (sub-blocks 0-2 of 4)."""
    check_triton(monkeypatch, 1, 40, 128, torch.float16, (-3.0, 1.0))


# ---- the official kernel's formula, extremes ------------------------------------------------------------
def test_reference_matches_official_kernel_port():
    """kernels.reference.bi_wkv6_reference against a loop-for-loop float64 port of the official CUDA forward
    (tests/official_wkv6.py), two heads so that u is per head; both float64, so only summation order differs."""
    from official_wkv6 import official_wkv6_forward

    inputs = make_inputs(2, 7, 128, W_EXTREME)
    official = official_wkv6_forward(*inputs)
    assert rel_err(bi_wkv6_reference(*inputs), official) < TOL64
    assert rel_err(wkv6_torch_forward(*inputs, dtype=torch.float64), official) < TOL64


def test_bf16_inputs_with_extreme_decays_are_finite_and_close():
    """bf16 r, k, v, w, u with decays from 1 - 5e-5 to e^-110 per token: no NaN or inf anywhere, and the
    reference's values on the same (bf16) inputs up to bf16 rounding of the results."""
    inputs = [t.bfloat16().requires_grad_() for t in make_inputs(2, 150, 64, W_EXTREME, dtype=torch.float32)]
    y = bi_wkv6(*inputs)
    gy = torch.randn_like(y)
    grads = torch.autograd.grad(y, inputs, gy)
    y_ref, grads_ref = reference_and_grads(inputs, gy)
    eps16 = torch.finfo(torch.bfloat16).eps
    assert_close(y, y_ref, eps16, 'y')
    for name, g, g_ref in zip(GRAD_NAMES, grads, grads_ref):
        assert_close(g, g_ref, eps16, name)
