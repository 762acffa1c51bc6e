"""Bi-WKV: PyTorch and Triton paths against the float64 reference, gradients, extremes, errors."""
import pytest
import torch

from vision_rwkv.kernels import bi_wkv, bi_wkv_reference
from vision_rwkv.kernels.reference import bi_wkv_scan_reference
from vision_rwkv.kernels.bi_wkv_torch import ONE_CHUNK_DECAY, choose_chunk_len

from conftest import rel_err

TRITON_DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'  # cpu: TRITON_INTERPRET=1


def make_inputs(B, T, C, dtype=torch.float32, device='cpu', w_scale=0.5, k_scale=3.0):
    w = torch.randn(C) * w_scale
    u = torch.randn(C)
    k = torch.randn(B, T, C) * k_scale
    v = torch.randn(B, T, C)
    return [t.to(device=device, dtype=dtype if t.dim() == 3 else torch.float32).requires_grad_()
            for t in (w, u, k, v)]


def reference_and_grads(w, u, k, v, gy):
    leaves = [t.detach().double().requires_grad_() for t in (w, u, k, v)]
    y = bi_wkv_reference(*leaves)
    grads = torch.autograd.grad((y * gy.double()).sum(), leaves)
    return y, grads


def check_against_reference(backend, B, T, C, dtype, device, tol_y, tol_g, gw_scale_tol=None, **scales):
    w, u, k, v = make_inputs(B, T, C, dtype, device, **scales)
    y = bi_wkv(w, u, k, v, backend=backend)
    assert y.dtype == dtype and y.shape == (B, T, C)
    gy = torch.randn_like(y)
    grads = torch.autograd.grad((y.float() * gy.float()).sum(), (w, u, k, v))
    y_ref, grads_ref = reference_and_grads(w.cpu(), u.cpu(), k.cpu(), v.cpu(), gy.cpu())
    assert rel_err(y.cpu(), y_ref) < tol_y
    for name, g, g_ref in zip('wukv', grads, grads_ref):
        assert torch.isfinite(g).all(), name
        if name == 'w' and gw_scale_tol is not None:
            # gw = -sum_t g_t (P_num - y_t P_den) cancels in fp32 when one far token dominates:
            # bound its error by the natural scale sum|gy| * max|v| instead of by |gw|
            scale = float(gy.abs().sum() * v.detach().abs().max())
            assert float((g.cpu().double() - g_ref).abs().max()) < gw_scale_tol * scale, name
        elif float(g_ref.abs().max()) < torch.finfo(torch.float32).tiny:
            # zero (T = 1: y = v for any u, w) or below float32's range: what float32 leaves is rounding
            # noise, bounded by the scale sum|gy| * max|v| of the gradient's terms
            scale = float(gy.abs().sum() * v.detach().abs().max())
            assert float(g.abs().max()) < 1e-6 * scale, name
        else:
            assert rel_err(g.cpu(), g_ref) < tol_g, name


@pytest.mark.parametrize('B,T,C', [(1, 1, 3), (2, 7, 5), (2, 33, 17), (1, 100, 8), (3, 197, 6)])
def test_torch_path_fp32_matches_reference(B, T, C):
    check_against_reference('torch', B, T, C, torch.float32, 'cpu', tol_y=1e-5, tol_g=1e-4)


@pytest.mark.parametrize('dtype,tol', [(torch.bfloat16, 2e-2), (torch.float16, 3e-3)])
def test_torch_path_half_inputs(dtype, tol):
    check_against_reference('torch', 2, 50, 12, dtype, 'cpu', tol_y=tol, tol_g=tol)


def test_torch_path_float64_gradcheck():
    w, u, k, v = (t.detach().double().requires_grad_() for t in make_inputs(2, 40, 3))
    assert torch.autograd.gradcheck(lambda *a: bi_wkv(*a, backend='torch'), (w, u, k, v))


def test_torch_path_float64_matches_reference_tightly():
    w, u, k, v = (t.detach().double() for t in make_inputs(2, 90, 5))
    assert rel_err(bi_wkv(w, u, k, v), bi_wkv_reference(w, u, k, v)) < 1e-12


@pytest.mark.parametrize('w_scale', [2.0, 20.0])
def test_torch_path_large_decay_uses_short_chunks(w_scale):
    """Per-token decays far beyond |w| T = 10 (w = w_scale N(0, 1)): chunks shrink, results stay accurate.

    Tolerance: float32 takes differences of cumulative log-decays up to T max|w| (about 3000 at w_scale 20), so
    every weight carries a relative error up to eps T max|w|. Gradient entries can be far smaller than their
    terms (one far token dominates; u's term is negligible against growing weights), so each gradient's error is
    bounded by eps T max|w| times its natural scale: sum|gy| for gv (weights sum to one), sum|gy| max|v| for gw,
    gu and gk. Measured over 500 draws at each w_scale: at most 0.09 of that bound, and y within 0.08 of it."""
    B, T, C = 2, 70, 4
    w, u, k, v = make_inputs(B, T, C, w_scale=w_scale)
    max_w = float(w.detach().abs().max())
    chunk_len = choose_chunk_len(w.detach())
    assert chunk_len == 1 or chunk_len * max_w <= 8.0
    y = bi_wkv(w, u, k, v, backend='torch')
    gy = torch.randn_like(y)
    grads = torch.autograd.grad((y * gy).sum(), (w, u, k, v))
    y_ref, grads_ref = reference_and_grads(w, u, k, v, gy)
    bound = torch.finfo(torch.float32).eps * T * max_w
    assert rel_err(y, y_ref) < bound
    scale = float(gy.abs().sum())
    for name, g, g_ref in zip('wukv', grads, grads_ref):
        natural = scale if name == 'v' else scale * float(v.detach().abs().max())
        assert float((g.double() - g_ref).abs().max()) < bound * natural, name


@pytest.mark.parametrize('B,T,C', [(1, 1, 3), (2, 50, 7), (1, 196, 16), (2, 1024, 4)])
def test_torch_path_one_chunk_forward(B, T, C):
    """Vision-RWKV's decays (w = spatial_decay / T, T·|w| up to 24): the forward takes the sequence as one
    chunk; the gradients (which use its log-denominator) match too."""
    w = (torch.rand(C) * 48 - 24) / T
    assert T * w.abs().max() <= ONE_CHUNK_DECAY
    _, u, k, v = make_inputs(B, T, C)
    w.requires_grad_()
    y = bi_wkv(w, u, k, v, backend='torch')
    gy = torch.randn_like(y)
    grads = torch.autograd.grad((y * gy).sum(), (w, u, k, v))
    y_ref, grads_ref = reference_and_grads(w, u, k, v, gy)
    assert rel_err(y, y_ref) < 1e-5
    for name, g, g_ref in zip('wukv', grads, grads_ref):
        assert rel_err(g, g_ref) < 1e-4, name
    with torch.no_grad():  # inference skips the log-denominator
        assert torch.equal(bi_wkv(w, u, k, v, backend='torch'), y)


def test_torch_path_one_chunk_forward_with_underflowing_keys():
    """Keys spread over ±60 underflow against the sequence maximum; those terms are negligible in y."""
    T, C = 300, 4
    w = torch.tensor([24.0, -24.0, 3.0, -0.5]) / T
    k = torch.rand(2, T, C) * 120 - 60
    v, u = torch.randn(2, T, C), torch.randn(C)
    y = bi_wkv(w, u, k, v, backend='torch')
    assert rel_err(y, bi_wkv_reference(w.double(), u.double(), k.double(), v.double())) < 1e-5


@pytest.mark.parametrize('B,T,C', [(1, 1, 3), (2, 19, 5), (2, 37, 130)])
def test_triton_fp32_matches_reference(B, T, C):
    check_against_reference('triton', B, T, C, torch.float32, TRITON_DEVICE, tol_y=1e-5, tol_g=1e-4)


@pytest.mark.parametrize('dtype,tol', [(torch.bfloat16, 2e-2), (torch.float16, 3e-3)])
def test_triton_half_inputs(dtype, tol):
    check_against_reference('triton', 2, 21, 9, dtype, TRITON_DEVICE, tol_y=tol, tol_g=tol)


def extreme_inputs(B, T, C, device='cpu'):
    """|w| T = 10 in both signs, keys spread over +-30."""
    w = torch.tensor([10.0, -10.0, 10.0, -10.0][:C]) / T
    u = torch.randn(C)
    k = (torch.rand(B, T, C) * 60 - 30)
    v = torch.randn(B, T, C)
    return [t.to(device).requires_grad_() for t in (w, u, k, v)]


@pytest.mark.parametrize('backend,T,device', [
    ('torch', 65536, 'cpu'),
    ('triton', 256, TRITON_DEVICE),
])
def test_extremes_are_finite_and_accurate(backend, T, device):
    w, u, k, v = extreme_inputs(1, T, 4, device)
    y = bi_wkv(w, u, k, v, backend=backend)
    gy = torch.randn_like(y)
    grads = torch.autograd.grad((y * gy).sum(), (w, u, k, v))
    assert torch.isfinite(y).all()
    for g in grads:
        assert torch.isfinite(g).all()
    rows = torch.randint(0, T, (16,))
    rows[:2] = torch.tensor([0, T - 1])
    y_ref = bi_wkv_reference(w.detach().cpu(), u.detach().cpu(), k.detach().cpu(), v.detach().cpu(), rows=rows)
    assert rel_err(y.detach().cpu()[:, rows], y_ref) < 1e-4


def test_extreme_gradients_match_reference():
    w, u, k, v = extreme_inputs(1, 512, 4)
    check_grads = torch.autograd.grad
    y = bi_wkv(w, u, k, v, backend='torch')
    gy = torch.randn_like(y)
    grads = check_grads((y * gy).sum(), (w, u, k, v))
    _, grads_ref = reference_and_grads(w, u, k, v, gy)
    for name, g, g_ref in zip('wukv', grads, grads_ref):
        assert rel_err(g, g_ref) < 1e-3, name


def test_non_contiguous_inputs():
    w, u, k, v = make_inputs(2, 30, 8)
    k_t = k.detach().transpose(0, 1).contiguous().transpose(0, 1)
    assert not k_t.is_contiguous()
    assert torch.allclose(bi_wkv(w, u, k_t, v), bi_wkv(w, u, k.detach(), v))


@pytest.mark.parametrize('args,match', [
    (lambda w, u, k, v: (w, u, k, v[:, :-1]), 'v has shape'),
    (lambda w, u, k, v: (w[:-1], u, k, v), r'w must have shape \(C,\)'),
    (lambda w, u, k, v: (w, u.view(1, -1), k, v), r'u must have shape \(C,\)'),
    (lambda w, u, k, v: (w, u, k[0], v[0]), r'k must have shape \(B, T, C\)'),
    (lambda w, u, k, v: (w, u, k, v.half()), 'share a dtype'),
    (lambda w, u, k, v: (w, u, k.long(), v.long()), 'must be float16'),
    (lambda w, u, k, v: (w, u, k, v.to('meta')), 'one device'),
    (lambda w, u, k, v: (w, u, k[:, :0], v[:, :0]), 'empty'),
])
def test_bad_inputs_raise_clear_errors(args, match):
    w, u, k, v = (t.detach() for t in make_inputs(2, 5, 4))
    with pytest.raises((ValueError, TypeError), match=match):
        bi_wkv(*args(w, u, k, v))


def test_bad_backend_and_nonfinite_decay():
    w, u, k, v = (t.detach() for t in make_inputs(1, 5, 4))
    with pytest.raises(ValueError, match='backend'):
        bi_wkv(w, u, k, v, backend='cuda')
    with pytest.raises(TypeError, match='float64'):
        bi_wkv(w.double(), u.double(), k.double(), v.double(), backend='triton')
    w[0] = float('nan')
    with pytest.raises(ValueError, match='inf or NaN'):
        bi_wkv(w, u, k, v, backend='torch')


@pytest.mark.parametrize('backend', ['torch', 'triton'])
@pytest.mark.parametrize('order', ['row', 'col', 'cross'])
@pytest.mark.parametrize('H, W, C', [(3, 5, 6), (4, 4, 40)])
def test_scan_orders_match_reference(backend, order, H, W, C):
    """Column-major and cross scans (C = 6 and 40: cross splits inside a 8- and a 32-lane block)."""
    device = TRITON_DEVICE if backend == 'triton' else 'cpu'
    w, u, k, v = make_inputs(2, H * W, C, device=device)
    y = bi_wkv(w, u, k, v, backend=backend, grid=(H, W), order=order)
    gy = torch.randn_like(y)
    grads = torch.autograd.grad((y * gy).sum(), (w, u, k, v))
    leaves = [t.detach().cpu().double().requires_grad_() for t in (w, u, k, v)]
    y_ref = bi_wkv_scan_reference(*leaves, grid=(H, W), order=order)
    grads_ref = torch.autograd.grad((y_ref * gy.cpu().double()).sum(), leaves)
    assert rel_err(y.cpu(), y_ref) < 1e-5
    for name, g, g_ref in zip('wukv', grads, grads_ref):
        assert rel_err(g.cpu(), g_ref) < 1e-4, name
    if order != 'row':  # the order matters: a raster scan gives another result
        assert rel_err(bi_wkv(w, u, k, v, backend=backend).cpu(), y_ref) > 1e-3


def test_scan_order_errors():
    w, u, k, v = make_inputs(1, 12, 4)
    with pytest.raises(ValueError, match='needs grid'):
        bi_wkv(w, u, k, v, order='col')
    with pytest.raises(ValueError, match='grid 3x5 holds 15 tokens'):
        bi_wkv(w, u, k, v, grid=(3, 5), order='cross')
    with pytest.raises(ValueError, match='order must be one of'):
        bi_wkv(w, u, k, v, grid=(3, 4), order='diagonal')


def test_inference_mode_then_training_on_the_torch_path():
    """The PyTorch path reuses scratch buffers between calls: one made under inference_mode (an inference
    tensor) must not be written by a later training call (as a benchmark or an evaluation loop does)."""
    import timm
    import vision_rwkv  # noqa: F401  (registers the models)

    model = timm.create_model('vrwkv_tiny_patch16_224', img_size=32, depth=2)
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        y_inf = model(x)
    y = model(x)
    y.sum().backward()
    assert torch.allclose(y.detach(), y_inf, rtol=1e-5, atol=1e-6)
