"""2D Bi-WKV (Manhattan-distance decay) against its float64 reference: values, gradients, extremes."""
import pytest
import torch

from vision_rwkv.kernels import bi_wkv, bi_wkv_2d, bi_wkv_2d_reference

from conftest import rel_err


def make_inputs(B, H, W, C, dtype=torch.float32, w_scale=0.5, k_scale=3.0):
    tensors = (torch.randn(C) * w_scale, torch.randn(C), torch.randn(B, H * W, C) * k_scale,
               torch.randn(B, H * W, C))
    return [t.to(dtype).requires_grad_() for t in tensors]


def reference_and_grads(w, u, k, v, grid, gy):
    leaves = [t.detach().double().requires_grad_() for t in (w, u, k, v)]
    y = bi_wkv_2d_reference(*leaves, grid=grid)
    return y, torch.autograd.grad((y * gy.double()).sum(), leaves)


@pytest.mark.parametrize('B, H, W, C', [(2, 3, 4, 5), (1, 7, 5, 8), (2, 9, 9, 3)])
def test_fp32_matches_reference(B, H, W, C):
    w, u, k, v = make_inputs(B, H, W, C)
    y = bi_wkv_2d(w, u, k, v, (H, W))
    assert y.shape == (B, H * W, C) and y.dtype == torch.float32
    gy = torch.randn_like(y)
    grads = torch.autograd.grad((y * gy).sum(), (w, u, k, v))
    y_ref, grads_ref = reference_and_grads(w, u, k, v, (H, W), gy)
    assert rel_err(y, y_ref) < 1e-6
    for name, g, g_ref in zip('wukv', grads, grads_ref):
        assert rel_err(g, g_ref) < 1e-5, name
    with torch.no_grad():  # inference takes the scans' no-autograd path
        assert rel_err(bi_wkv_2d(w, u, k, v, (H, W)), y_ref) < 1e-6


def test_float64_gradcheck():
    w, u, k, v = make_inputs(1, 3, 4, 3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda *a: bi_wkv_2d(*a, (3, 4)), (w, u, k, v))


@pytest.mark.parametrize('dtype, tol', [(torch.bfloat16, 2e-2), (torch.float16, 3e-3)])
def test_half_inputs(dtype, tol):
    w, u, k, v = make_inputs(2, 4, 5, 6)
    y = bi_wkv_2d(w, u, k.to(dtype), v.to(dtype), (4, 5))
    assert y.dtype == dtype
    y_ref = bi_wkv_2d_reference(w, u, k.to(dtype), v.to(dtype), (4, 5))
    assert rel_err(y, y_ref) < tol


def test_a_single_row_or_column_is_1d_bi_wkv():
    w, u, k, v = make_inputs(2, 1, 9, 4)
    assert rel_err(bi_wkv_2d(w, u, k, v, (1, 9)), bi_wkv(w, u, k, v)) < 1e-6
    assert rel_err(bi_wkv_2d(w, u, k, v, (9, 1)), bi_wkv(w, u, k, v)) < 1e-6


@pytest.mark.parametrize('w_scale, k_scale', [(4.0, 3.0), (-0.6, 3.0), (0.5, 30.0)])
def test_extremes_are_finite_and_accurate(w_scale, k_scale):
    """Strong decay, growth with distance (w < 0: |w|·(H+W) ≈ 10), keys over ±30."""
    w, u, k, v = make_inputs(1, 8, 9, 4, w_scale=1.0, k_scale=k_scale)
    w = (w.detach().abs() * w_scale).requires_grad_()
    y = bi_wkv_2d(w, u, k, v, (8, 9))
    gy = torch.randn_like(y)
    grads = torch.autograd.grad((y * gy).sum(), (w, u, k, v))
    y_ref, grads_ref = reference_and_grads(w, u, k, v, (8, 9), gy)
    assert torch.isfinite(y).all() and all(torch.isfinite(g).all() for g in grads)
    assert rel_err(y, y_ref) < 1e-5
    for name, g, g_ref in zip('ukv', grads[1:], grads_ref[1:]):
        assert rel_err(g, g_ref) < 1e-4, name


def test_bad_grid():
    w, u, k, v = make_inputs(1, 3, 4, 2)
    with pytest.raises(ValueError, match='grid 4x4 holds 16 tokens'):
        bi_wkv_2d(w, u, k, v, (4, 4))
    with pytest.raises(ValueError, match='k must have shape'):
        bi_wkv_2d(w, u, k[0], v, (3, 4))
