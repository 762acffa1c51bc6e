"""Sequence-parallel Bi-WKV Triton kernels: many chunks and carry blocks against the float64 reference.

The kernels run in Triton's interpreter on CPU tensors (conftest), so shapes are small; short chunks
(``chunk_len``) and carry blocks (``carry_block``) make small sequences cross many chunk and block
boundaries, where the three phases meet.
"""
import pytest
import torch
import triton
import triton.language as tl

from vision_rwkv.kernels.bi_wkv_triton import _Plan, bi_wkv_triton_backward, bi_wkv_triton_forward
from vision_rwkv.kernels.reference import bi_wkv_scan_reference
from vision_rwkv.kernels.triton_scan import combine2

from conftest import rel_err

DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'


def run_kernels(w, u, k, v, gy, grid, order, **plan):
    """Forward and backward kernels as the op calls them (fp32 w, u; k, v in their dtype)."""
    split = {'row': k.shape[-1], 'col': 0, 'cross': k.shape[-1] // 2}[order]
    y, log_den = bi_wkv_triton_forward(w, u, k, v, grid, split, **plan)
    return y, bi_wkv_triton_backward(w, u, k, v, y, log_den, gy, grid, split, **plan)


def reference(w, u, k, v, gy, grid, order):
    leaves = [t.detach().cpu().double().requires_grad_() for t in (w, u, k, v)]
    y = bi_wkv_scan_reference(*leaves, grid=grid, order=order)
    return y.detach(), torch.autograd.grad((y * gy.cpu().double()).sum(), leaves)


@pytest.mark.parametrize('B, grid, C, order, chunk_len, carry_block', [
    (1, (1, 37), 5, 'row', 4, 2),     # 10 chunks, the last partial, in 5 carry blocks
    (1, (5, 6), 6, 'col', 8, 2),      # column-major reading, 4 chunks in 2 blocks
    (1, (4, 5), 40, 'cross', 4, 4),   # lanes split inside a 32-lane block, two channel blocks
    (1, (1, 1), 3, 'row', 2, 2),      # a single token
])
def test_many_chunks_match_reference(B, grid, C, order, chunk_len, carry_block):
    T = grid[0] * grid[1]
    w, u = torch.randn(C) * 0.5, torch.randn(C)
    k, v, gy = torch.randn(B, T, C) * 3, torch.randn(B, T, C), torch.randn(B, T, C)
    w, u, k, v, gy = (t.to(DEVICE) for t in (w, u, k, v, gy))
    y, grads = run_kernels(w, u, k, v, gy, grid, order, chunk_len=chunk_len, carry_block=carry_block)
    y_ref, grads_ref = reference(w, u, k, v, gy, grid, order)
    # fp32 accumulation: y is a convex combination of v (error ~ a few ulp of max|v|); the gradients
    # are sums of T terms of bounded size (error ~ T ulp relative to their scale)
    assert rel_err(y.cpu(), y_ref) < 1e-5
    for name, g, g_ref in zip('wukv', grads, grads_ref):
        if T == 1 and name in 'wuk':  # y = v for one token: these gradients are exactly zero
            assert torch.equal(g.cpu(), torch.zeros_like(g.cpu())), name
        else:
            assert rel_err(g.cpu(), g_ref) < 1e-4, name


def test_chunking_does_not_change_the_result():
    """One chunk, many chunks in one carry block, and many blocks agree to fp32 rounding."""
    B, T, C = 1, 24, 4
    w, u = torch.randn(C) * 0.3, torch.randn(C)
    k, v, gy = torch.randn(B, T, C) * 3, torch.randn(B, T, C), torch.randn(B, T, C)
    w, u, k, v, gy = (t.to(DEVICE) for t in (w, u, k, v, gy))
    y1, g1 = run_kernels(w, u, k, v, gy, (1, T), 'row', chunk_len=64)
    for plan in (dict(chunk_len=4, carry_block=16), dict(chunk_len=4, carry_block=2)):
        y2, g2 = run_kernels(w, u, k, v, gy, (1, T), 'row', **plan)
        assert rel_err(y2.cpu(), y1.cpu()) < 1e-6
        for a, b in zip(g2, g1):
            assert rel_err(a.cpu(), b.cpu()) < 1e-5


def test_extreme_decays_and_keys_across_chunks():
    """|w|·T = 10 in both signs, keys over ±30, across 8 chunks: finite and accurate."""
    B, T, C = 1, 64, 4
    w = torch.tensor([10.0, -10.0, 10.0, -10.0]) / T
    u, k = torch.randn(C), torch.rand(B, T, C) * 60 - 30
    v, gy = torch.randn(B, T, C), torch.randn(B, T, C)
    w, u, k, v, gy = (t.to(DEVICE) for t in (w, u, k, v, gy))
    y, grads = run_kernels(w, u, k, v, gy, (1, T), 'row', chunk_len=8, carry_block=4)
    y_ref, grads_ref = reference(w, u, k, v, gy, (1, T), 'row')
    assert rel_err(y.cpu(), y_ref) < 1e-5
    for name, g, g_ref in zip('wukv', grads, grads_ref):
        assert torch.isfinite(g).all(), name
        if name == 'w':
            # gw = -Σ gy/den (D_num - y D_den) cancels when one far token dominates: bound its error by
            # the natural scale Σ|gy|·max|v| (as tests/test_bi_wkv.py does)
            scale = float(gy.abs().sum() * v.abs().max())
            assert float((g.cpu().double() - g_ref).abs().max()) < 1e-5 * scale
        else:
            assert rel_err(g.cpu(), g_ref) < 1e-3, name


def test_half_inputs_across_chunks():
    """bf16 / fp16 k and v are read as they are and accumulated in fp32; compared with the reference
    on the same rounded inputs, the error is fp32 rounding (the output is fp32 here)."""
    B, T, C = 2, 20, 6
    for dtype in (torch.float16, torch.bfloat16):
        w, u = torch.randn(C) * 0.5, torch.randn(C)
        k, v = (torch.randn(B, T, C) * 3).to(dtype), torch.randn(B, T, C).to(dtype)
        gy = torch.randn(B, T, C)
        w, u, k, v, gy = (t.to(DEVICE) for t in (w, u, k, v, gy))
        y, grads = run_kernels(w, u, k, v, gy, (1, T), 'row', chunk_len=4, carry_block=2)
        y_ref, grads_ref = reference(w, u, k, v, gy, (1, T), 'row')
        assert rel_err(y.cpu(), y_ref) < 1e-5
        for name, g, g_ref in zip('wukv', grads, grads_ref):
            assert rel_err(g.cpu(), g_ref) < 1e-4, name


def test_launches_fill_a_gpu_at_batch_one():
    """B = 1, T = 4096, C = 192: many more chunk programs than an H200's 132 multiprocessors, and
    the serial part (the carry scan) is a few steps."""
    plan = _Plan(1, 4096, 192, None, None)
    assert plan.chunk_grid[0] * plan.chunk_grid[1] >= 4 * 132
    assert plan.n_chunks / plan.CB <= 4


@triton.jit
def scan_and_flip(k_ptr, v_ptr, w_ptr, ratio_ptr, flip_ptr, L: tl.constexpr, C: tl.constexpr):
    """A (L, C) associative scan of single-token states, and a flip of its log scales."""
    offs = tl.arange(0, L)[:, None] * C + tl.arange(0, C)[None, :]
    val = tl.load(v_ptr + offs)
    w = tl.zeros_like(val) + tl.load(w_ptr + tl.arange(0, C))[None, :]
    a1, a2, p, _ = tl.associative_scan((val, tl.zeros_like(val) + 1., tl.load(k_ptr + offs), w), 0, combine2)
    tl.store(ratio_ptr + offs, a1 / a2)
    tl.store(flip_ptr + offs, tl.flip(p, 0))  # tl.flip reduces with xor


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests Triton's CPU interpreter, which CUDA runs do not use")
def test_vectorised_interpreter_scan_matches_element_wise():
    """kernels.interpreter replaces the interpreter's element-wise scan and reduction (minutes per call
    for our tiles) by slice-wise ones: same combine, same order per element, so identical results."""
    from triton.runtime.interpreter import ReduceOps, ScanOps

    L, C = 8, 4
    k, v, w = torch.randn(L, C) * 3, torch.randn(L, C), torch.randn(C)
    results = []
    for scan, reduce in ((ScanOps.generic_scan, ReduceOps.generic_reduce),
                         (ScanOps.element_wise_generic_scan, ReduceOps.element_wise_generic_reduce)):
        patched = ScanOps.generic_scan, ReduceOps.generic_reduce
        ScanOps.generic_scan, ReduceOps.generic_reduce = scan, reduce
        try:
            out = torch.empty(2, L, C)
            scan_and_flip[(1,)](k, v, w, out[0], out[1], L=L, C=C)
        finally:
            ScanOps.generic_scan, ReduceOps.generic_reduce = patched
        results.append(out)
    assert torch.equal(results[0], results[1])
    assert not torch.equal(results[0][1], results[0][1].flip(0))  # the flip did something


@pytest.mark.parametrize('dtype', [torch.float32, torch.float16])
def test_inference_forward_writes_the_input_dtype(dtype):
    """Without log denominators (inference) y is written once, in k's dtype: the training forward's
    fp32 y rounded to that dtype. (bf16 is left out: the interpreter truncates fp32 -> bf16 casts.)"""
    B, T, C = 1, 12, 6
    w, u = torch.randn(C, device=DEVICE) * 0.5, torch.randn(C, device=DEVICE)
    k, v = (torch.randn(2, B, T, C, device=DEVICE) * 2).to(dtype)
    y32, _ = bi_wkv_triton_forward(w, u, k, v, (1, T), C, chunk_len=4)
    y, log_den = bi_wkv_triton_forward(w, u, k, v, (1, T), C, with_log_den=False, chunk_len=4)
    assert log_den is None and y.dtype == dtype
    assert torch.equal(y, y32.to(dtype))
