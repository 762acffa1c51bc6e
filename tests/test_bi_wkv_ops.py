"""Bi-WKV as torch.library operators: torch.compile without graph breaks, torch.export, opcheck, fake kernels.

Compiled and eager runs call the same operator kernels (the operators are opaque to the compiler); only the
few fp32 operations around them (dtype casts, the model's layers) may be fused or reordered, each rounding
once more to fp32: compiled and eager results agree to a small multiple of fp32's epsilon.
"""
import pytest
import torch
import torch._dynamo as dynamo
from torch._subclasses.fake_tensor import FakeTensorMode

from vision_rwkv.kernels import bi_wkv, bi_wkv_2d, bi_wkv_2d_reference
from vision_rwkv.kernels.bi_wkv_torch import fits_one_chunk
from vision_rwkv.layers.spatial_mix import WKV_MODES
from vision_rwkv.models.vrwkv import VRWKV, Block

from conftest import rel_err

OPS = torch.ops.vision_rwkv
GRID = (3, 4)
EPS = torch.finfo(torch.float32).eps
#: the operator around a few casts: a few roundings
OP_TOL = 4 * EPS
#: two tiny VRWKV blocks (width 8, 16 tokens): reordered reductions of at most 64 terms, each term one
#: rounding, through two residual blocks and the head: 2 * 64 roundings at most
MODEL_TOL = 128 * EPS


def make_inputs(B=2, T=12, C=6, dtype=torch.float32, requires_grad=True):
    """w, u: (C,) float32 scaled as Vision-RWKV's decays over T tokens; k, v: (B, T, C) in ``dtype``."""
    w, u = torch.randn(C) * 4 / T, torch.randn(C) / T
    k, v = torch.randn(B, T, C, dtype=dtype) * 3, torch.randn(B, T, C, dtype=dtype)
    return [t.requires_grad_(requires_grad) for t in (w, u, k, v)]


def call(kind, backend):
    """The Bi-WKV call under test: a scan order of ``bi_wkv`` on GRID, or '2d'."""
    if kind == '2d':
        return lambda w, u, k, v: bi_wkv_2d(w, u, k, v, GRID, backend=backend)
    return lambda w, u, k, v: bi_wkv(w, u, k, v, backend=backend, grid=GRID, order=kind)


def outputs_and_grads(fn, inputs, gy=None):
    y = fn(*inputs)
    gy = torch.randn_like(y) if gy is None else gy
    return y, gy, torch.autograd.grad((y * gy).sum(), inputs)


def our_nodes(graph):
    """Targets of the vision_rwkv operator nodes of an FX graph, in graph order."""
    return [n.target for n in graph.nodes
            if n.op == 'call_function' and getattr(n.target, 'namespace', None) == 'vision_rwkv']


def tiny_model(mode):
    return VRWKV(img_size=16, patch_size=4, embed_dim=8, depth=2, num_classes=3, wkv_mode=mode)


# triton: the interpreter on CPU tensors, for one order (slow; test_opcheck_triton_path compiles both operators)
@pytest.mark.parametrize('kind, backend', [('row', 'torch'), ('col', 'torch'), ('cross', 'torch'), ('2d', 'torch'),
                                           ('cross', 'triton')])
def test_compiled_call_matches_eager(kind, backend):
    """fullgraph=True: any graph break fails the compile."""
    fn, inputs = call(kind, backend), make_inputs()
    y, gy, grads = outputs_and_grads(torch.compile(fn, backend='aot_eager', fullgraph=True), inputs)
    y_ref, _, grads_ref = outputs_and_grads(fn, inputs, gy)
    assert rel_err(y, y_ref) <= OP_TOL
    for name, g, g_ref in zip('wukv', grads, grads_ref):
        assert rel_err(g, g_ref) <= OP_TOL, name


@pytest.mark.slow
@pytest.mark.parametrize('mode', WKV_MODES)
def test_block_and_tiny_model_compile_without_graph_breaks(mode):
    block = Block(8, 0, 1, wkv_mode=mode)
    explanation = dynamo.explain(block)(torch.randn(2, 12, 8), GRID)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    model, x = tiny_model(mode), torch.randn(2, 3, 16, 16)
    explanation = dynamo.explain(model)(x)
    assert (explanation.graph_count, explanation.graph_break_count) == (1, 0), explanation.break_reasons

    # fullgraph=True: training and inference (no log-denominator) compile without graph breaks too
    params = list(model.parameters())
    loss = lambda m: m(x).square().sum()
    grads = torch.autograd.grad(loss(torch.compile(model, backend='aot_eager', fullgraph=True)), params)
    grads_ref = torch.autograd.grad(loss(model), params)
    for (name, _), g, g_ref in zip(model.named_parameters(), grads, grads_ref):
        assert rel_err(g, g_ref) <= MODEL_TOL, name
    with torch.no_grad():
        y = torch.compile(model, backend='aot_eager', fullgraph=True)(x)
        assert rel_err(y, model(x)) <= MODEL_TOL


def test_inductor_compile_of_forward_and_backward():
    """A real inductor compile: both operators run as extern kernels whose outputs inductor checks against
    the fake kernels' sizes and strides. Only matmuls around them, so no C++ kernel needs building."""
    w, u, k, v = make_inputs(C=4)
    w2, u2, v2 = (t.detach().clone().requires_grad_() for t in (w, u, v))
    p1, p2 = torch.randn(4, 4, requires_grad=True), torch.randn(4, 4, requires_grad=True)

    def fn(w, u, k, v, w2, u2, v2, p1, p2):
        y = bi_wkv(w, u, k @ p1, v, grid=GRID, order='cross')
        return bi_wkv_2d(w2, u2, y, v2, GRID) @ p2

    inputs = (w, u, k, v, w2, u2, v2, p1, p2)
    y, gy, grads = outputs_and_grads(torch.compile(fn, backend='inductor', fullgraph=True), inputs)
    y_ref, _, grads_ref = outputs_and_grads(fn, inputs, gy)
    assert rel_err(y, y_ref) <= OP_TOL
    for g, g_ref in zip(grads, grads_ref):
        assert rel_err(g, g_ref) <= OP_TOL


def test_export_has_one_operator_per_call():
    class ThreeCalls(torch.nn.Module):
        def forward(self, w, u, k, v):
            y = bi_wkv(w, u, k, v, grid=GRID, order='cross')
            y = bi_wkv_2d(w, u, y, v, GRID)
            return bi_wkv(w, u, y, v)

    inputs = make_inputs(requires_grad=False)
    program = torch.export.export(ThreeCalls(), tuple(inputs))
    assert our_nodes(program.graph) == [OPS.bi_wkv_forward.default, OPS.bi_wkv_2d_forward.default,
                                        OPS.bi_wkv_forward.default]
    assert rel_err(program.module()(*inputs), ThreeCalls()(*inputs)) == 0

    model, x = tiny_model('cross'), torch.randn(1, 3, 16, 16)
    program = torch.export.export(model, (x,))
    assert our_nodes(program.graph) == [OPS.bi_wkv_forward.default] * 2  # one per block, no backward
    with torch.no_grad():
        assert rel_err(program.module()(x), model(x)) <= MODEL_TOL


def opcheck_forward_and_backward(forward, backward, inputs, layout):
    """opcheck both operators: the forward with inputs requiring grad (autograd registration), then the
    backward on the forward's outputs."""
    torch.library.opcheck(forward, (*inputs, *layout, True))
    detached = [t.detach() for t in inputs]
    y, y_acc, log_den = forward(*detached, *layout, True)
    y_acc = y_acc if y_acc.numel() else y  # y itself when it is in the accumulation dtype
    torch.library.opcheck(backward, (*detached, y_acc, log_den, torch.randn_like(y), *layout))


def test_opcheck_torch_path():
    """Schemas, fake kernels, autograd registration and AOT dispatch (dynamic shapes) of the operators."""
    w, u, k, v = make_inputs(C=6)
    for split in (6, 0, 3):  # row, column and cross layouts
        opcheck_forward_and_backward(OPS.bi_wkv_forward, OPS.bi_wkv_backward, (w, u, k, v), (*GRID, split, False))
    opcheck_forward_and_backward(OPS.bi_wkv_2d_forward, OPS.bi_wkv_2d_backward, (w, u, k, v), (*GRID, False))
    float64 = [t.detach().double().requires_grad_() for t in (w, u, k, v)]
    torch.library.opcheck(OPS.bi_wkv_forward, (*float64, *GRID, 3, False, True))
    torch.library.opcheck(OPS.bi_wkv_2d_forward, (*float64, *GRID, False, True))
    half = [w, u, k.detach().bfloat16().requires_grad_(), v.detach().bfloat16().requires_grad_()]
    opcheck_forward_and_backward(OPS.bi_wkv_forward, OPS.bi_wkv_backward, half, (*GRID, 3, False))
    opcheck_forward_and_backward(OPS.bi_wkv_2d_forward, OPS.bi_wkv_2d_backward, half, (*GRID, False))
    inference = [t.detach() for t in half]
    torch.library.opcheck(OPS.bi_wkv_forward, (*inference, *GRID, 3, False, False))
    torch.library.opcheck(OPS.bi_wkv_2d_forward, (*inference, *GRID, False, False))


def test_opcheck_triton_path():
    """The Triton kernels (the interpreter on CPU tensors: one small grid, it runs each call several times)."""
    grid = (2, 3)
    w, u, k, v = make_inputs(B=1, T=6, C=4)
    opcheck_forward_and_backward(OPS.bi_wkv_forward, OPS.bi_wkv_backward, (w, u, k, v), (*grid, 2, True))
    opcheck_forward_and_backward(OPS.bi_wkv_2d_forward, OPS.bi_wkv_2d_backward, (w, u, k, v), (*grid, True))


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_fake_kernels_give_shapes_and_dtypes(dtype):
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    B, T, C = 2, 12, 6
    with FakeTensorMode():
        w, u = torch.empty(C), torch.empty(C)
        k, v = torch.empty(B, T, C, dtype=dtype), torch.empty(B, T, C, dtype=dtype)
        for with_log_den in (True, False):
            # y in the dtype of k; y unrounded (when rounded) and the log-denominator for the backward
            y_acc_shape = (B, T, C) if with_log_den and dtype != compute else (0,)
            expected = ((B, T, C), dtype), (y_acc_shape, compute), ((B, T, C) if with_log_den else (0,), compute)
            for outputs in (OPS.bi_wkv_forward(w, u, k, v, *GRID, 3, False, with_log_den),
                            OPS.bi_wkv_2d_forward(w, u, k, v, *GRID, False, with_log_den)):
                assert tuple((t.shape, t.dtype) for t in outputs) == expected
        y = torch.empty(B, T, C, dtype=compute)
        for grads in (OPS.bi_wkv_backward(w, u, k, v, y, y, y, *GRID, 3, False),
                      OPS.bi_wkv_2d_backward(w, u, k, v, y, y, y, *GRID, False)):
            assert [(g.shape, g.dtype) for g in grads] == [(t.shape, t.dtype) for t in (w, u, k, v)]
        for y in (bi_wkv(w, u, k, v, grid=GRID, order='col'), bi_wkv_2d(w, u, k, v, GRID)):
            assert (y.shape, y.dtype) == ((B, T, C), dtype)
    meta = [t.detach().to('meta', dtype if t.dim() == 3 else torch.float32) for t in make_inputs(B, T, C)]
    for y in (bi_wkv(*meta, grid=GRID, order='cross'), bi_wkv_2d(*meta, GRID)):
        assert (y.device.type, y.shape, y.dtype) == ('meta', (B, T, C), dtype)


def test_backward_without_log_denominator_is_a_clear_error():
    w, u, k, v = make_inputs(requires_grad=False)
    y, _, log_den = OPS.bi_wkv_forward(w, u, k, v, *GRID, 6, False, False)
    with pytest.raises(RuntimeError, match='log-denominator'):
        OPS.bi_wkv_backward(w, u, k, v, y, log_den, torch.ones_like(y), *GRID, 6, False)
    y, _, log_den = OPS.bi_wkv_2d_forward(w, u, k, v, *GRID, False, False)
    with pytest.raises(RuntimeError, match='log-denominator'):
        OPS.bi_wkv_2d_backward(w, u, k, v, y, log_den, torch.ones_like(y), *GRID, False)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason='needs two CUDA devices')
def test_triton_runs_on_a_second_gpu():
    """The device guard: inputs on cuda:1 while cuda:0 is current."""
    inputs = [t.detach().to('cuda:1').requires_grad_() for t in make_inputs()]
    for kind in ('cross', '2d'):
        y, gy, grads = outputs_and_grads(call(kind, 'triton'), inputs)
        cpu_inputs = [t.detach().cpu().requires_grad_() for t in inputs]
        y_ref, _, grads_ref = outputs_and_grads(call(kind, 'torch'), cpu_inputs, gy.cpu())
        assert y.device == inputs[2].device
        assert rel_err(y.cpu(), y_ref) < 1e-5  # the tolerances of test_bi_wkv.py
        for name, g, g_ref in zip('wukv', grads, grads_ref):
            assert rel_err(g.cpu(), g_ref) < 1e-4, name


@pytest.mark.parametrize('w_scale', [0.3, 6.0])
def test_2d_torch_backward_matches_reference(w_scale):
    """The explicit backward of the 2D PyTorch path (the one inside ``bi_wkv_2d_backward``) on both routes of
    its scans: one chunk per line, and chunks when a line's decay W·max|w| exceeds ONE_CHUNK_DECAY."""
    H, W = 6, 9
    w = (torch.tensor([1.0, 0.5, -0.1, 0.05]) * w_scale).requires_grad_()
    assert fits_one_chunk(W, w) == (w_scale < 1)
    u = torch.randn(4, requires_grad=True)
    k, v = (torch.randn(2, H * W, 4) * 3).requires_grad_(), torch.randn(2, H * W, 4, requires_grad=True)
    y, gy, grads = outputs_and_grads(lambda *a: bi_wkv_2d(*a, (H, W), backend='torch'), (w, u, k, v))
    leaves = [t.detach().double().requires_grad_() for t in (w, u, k, v)]
    y_ref, _, grads_ref = outputs_and_grads(lambda *a: bi_wkv_2d_reference(*a, grid=(H, W)), leaves, gy.double())
    assert rel_err(y, y_ref) < 1e-6  # the tolerances of test_bi_wkv_2d.py
    for name, g, g_ref in zip('wukv', grads, grads_ref):
        if name == 'w':  # a sum of signed terms over all tokens: bound by its scale Σ|gy|·max|v|, not by |gw|
            scale = float(gy.abs().sum() * v.detach().abs().max())
            assert float((g.double() - g_ref).abs().max()) < 1e-6 * scale
        else:
            assert rel_err(g, g_ref) < 1e-5, name
