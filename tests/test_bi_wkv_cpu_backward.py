"""One-chunk backward of the PyTorch Bi-WKV path (T·max|w| <= ONE_CHUNK_DECAY, Vision-RWKV's decays)
against float64 reference gradients, against the chunked backward, and its blocked cumulative sums."""
import pytest
import torch
import torch.nn.functional as F

from vision_rwkv.kernels import bi_wkv, bi_wkv_reference
from vision_rwkv.kernels import bi_wkv_torch
from vision_rwkv.kernels.bi_wkv_torch import ONE_CHUNK_BONUS, ONE_CHUNK_DECAY, fits_one_chunk

from conftest import rel_err

#: T·|w| of the strongest decays the one-chunk route takes (just inside: D / T may round up in float32)
D_MAX = ONE_CHUNK_DECAY * (1 - 2 ** -20)


def one_chunk_decays(T, C, dtype=torch.float32):
    """(C,) decays with T·|w| <= D_MAX, both extremes included (C >= 2)."""
    w = (torch.rand(C, dtype=dtype) * 2 - 1) * D_MAX / T
    w[:2] = torch.tensor([D_MAX, -D_MAX], dtype=dtype) / T
    assert fits_one_chunk(T, w)
    return w


def make_inputs(B, T, C, k_spread=3.0, dtype=torch.float32):
    """w as ``one_chunk_decays``, u ~ N(0, 1), keys uniform in ±k_spread, v ~ N(0, 1); k, v in ``dtype``."""
    w = one_chunk_decays(T, C)
    u = torch.randn(C)
    k = (torch.rand(B, T, C) * 2 - 1) * k_spread
    v = torch.randn(B, T, C)
    return w, u, k.to(dtype), v.to(dtype)


@pytest.fixture
def one_chunk_only(monkeypatch):
    """Fail if the backward takes the chunked route."""
    def chunked(*args):
        raise AssertionError('the chunked backward ran where the one-chunk route applies')
    monkeypatch.setattr(bi_wkv_torch, '_chunked_backward', chunked)


def torch_path_grads(w, u, k, v):
    """Output of bi_wkv (PyTorch path), random gy, and the gradients of (y·gy).sum()."""
    leaves = [t.clone().requires_grad_() for t in (w, u, k, v)]
    y = bi_wkv(*leaves, backend='torch')
    assert y.dtype == k.dtype
    gy = torch.randn(y.shape)
    return y, gy, torch.autograd.grad((y.float() * gy).sum(), leaves)


def reference_grads(w, u, k, v, gy):
    leaves = [t.detach().double().requires_grad_() for t in (w, u, k, v)]
    return torch.autograd.grad((bi_wkv_reference(*leaves) * gy.double()).sum(), leaves)


def assert_grads_close(grads, grads_ref, gy, v, tol_g):
    """The conventions of test_bi_wkv.check_against_reference: relative error below ``tol_g``; gw and
    gradients that vanish bounded by their natural scale instead.

    gw = -Σ_t Σ_{i≠t} (|t-i|-1) a_ti gy_t (v_i - y_t) cancels in float32 when one far token dominates:
    its error is bounded by 1e-6 of its natural scale Σ|gy|·max|v|·(T-2) (largest distance factor
    T-2; measured at most 5e-9 of it over T = 7..1024 and keys over ±3, ±30, ±60). A gradient
    below float32's range (T = 1: y = v for any w, u; T = 2: w has no effect) is rounding noise,
    bounded by 1e-6 of Σ|gy|·max|v|.
    """
    T = v.shape[1]
    scale = float(gy.abs().sum() * v.float().abs().max())
    for name, g, g_ref in zip('wukv', grads, grads_ref):
        assert g.shape == g_ref.shape and torch.isfinite(g).all(), name
        if name == 'w':
            assert float((g.double() - g_ref).abs().max()) < 1e-6 * scale * max(T - 2, 1), name
        elif float(g_ref.abs().max()) < torch.finfo(torch.float32).tiny:
            assert float(g.abs().max()) < 1e-6 * scale, name
        else:
            assert rel_err(g, g_ref) < tol_g, name


@pytest.mark.parametrize('B,T,C', [(1, 1, 3), (2, 2, 4), (2, 3, 5), (2, 17, 6), (3, 64, 5), (2, 196, 8),
                                   (1, 1024, 4)])
def test_one_chunk_backward_matches_reference(one_chunk_only, B, T, C):
    w, u, k, v = make_inputs(B, T, C)
    y, gy, grads = torch_path_grads(w, u, k, v)
    assert_grads_close(grads, reference_grads(w, u, k, v, gy), gy, v, tol_g=1e-4)


@pytest.mark.parametrize('T,k_spread', [(200, 30.0), (300, 60.0)])
def test_one_chunk_backward_with_keys_spread_wide(one_chunk_only, T, k_spread):
    """Keys over ±30, and over ±60 where the forward's one-chunk weights e^{k_i ± i·w - m} underflow."""
    w, u, k, v = make_inputs(2, T, 4, k_spread)
    if k_spread == 60.0:
        e = k + torch.arange(T)[:, None] * w
        assert float((e.amax(dim=1) - e.amin(dim=1)).max()) > 104  # below e^-104: under float32's range
    y, gy, grads = torch_path_grads(w, u, k, v)
    assert_grads_close(grads, reference_grads(w, u, k, v, gy), gy, v, tol_g=1e-4)


@pytest.mark.parametrize('dtype,tol', [(torch.bfloat16, 2e-2), (torch.float16, 3e-3)])
def test_one_chunk_backward_half_inputs(one_chunk_only, dtype, tol):
    """Half k, v (computed in float32, gk and gv rounded to half): the tolerances of
    test_bi_wkv.test_torch_path_half_inputs, against the reference on the rounded inputs."""
    w, u, k, v = make_inputs(2, 196, 12, dtype=dtype)
    y, gy, grads = torch_path_grads(w, u, k, v)
    assert grads[2].dtype == grads[3].dtype == dtype
    assert_grads_close(grads, reference_grads(w, u, k, v, gy), gy, v, tol_g=tol)


def test_one_chunk_backward_float64(one_chunk_only):
    """Float64 end to end: gradcheck by finite differences, and the reference gradients to 1e-10 with keys
    over ±30 (float64 rounding is 1e-16; the cancellations of gk and gw lose at most a few digits)."""
    w, u, k, v = (t.double().requires_grad_() for t in make_inputs(2, 40, 3))
    assert torch.autograd.gradcheck(lambda *a: bi_wkv(*a, backend='torch'), (w, u, k, v))
    w, u, k, v = (t.double() for t in make_inputs(2, 300, 4, k_spread=30.0))
    y, gy, grads = torch_path_grads(w, u, k, v)
    for name, g, g_ref in zip('wukv', grads, reference_grads(w, u, k, v, gy)):
        assert rel_err(g, g_ref) < 1e-10, name


def test_one_chunk_and_chunked_backward_agree():
    """Both backward routes on the same forward outputs, at a shape where both apply (T·|w| <= 24 and
    4 chunks of 64): each is within 2e-6 of the reference here (float32 sums of 196 terms)."""
    w, u, k, v = make_inputs(2, 196, 8)
    y, log_den = bi_wkv_torch.bi_wkv_torch_forward(w, u, k, v)
    gy = torch.randn_like(y)
    one = bi_wkv_torch._one_chunk_backward(w, u, k, v, y, log_den, gy)
    chunked = bi_wkv_torch._chunked_backward(w, u, k, v, y, log_den, gy)
    assert_grads_close(one, [g.double() for g in chunked], gy, v, tol_g=1e-5)


@pytest.mark.parametrize('decay,route', [(D_MAX, '_one_chunk_backward'),
                                         (ONE_CHUNK_DECAY * 1.001, '_chunked_backward')])
def test_backward_route_follows_the_forward(monkeypatch, decay, route):
    """bi_wkv_torch_backward takes the one-chunk route exactly where the forward does (fits_one_chunk)."""
    T = 50
    w, u, k, v = make_inputs(1, T, 3)
    w[0] = decay / T
    y, log_den = bi_wkv_torch.bi_wkv_torch_forward(w, u, k, v)
    called = []
    original = getattr(bi_wkv_torch, route)
    monkeypatch.setattr(bi_wkv_torch, route, lambda *a: called.append(route) or original(*a))
    bi_wkv_torch.bi_wkv_torch_backward(w, u, k, v, y, log_den, torch.randn_like(y))
    assert called == [route] and fits_one_chunk(T, w) == (route == '_one_chunk_backward')


@pytest.mark.parametrize('bonus', [ONE_CHUNK_BONUS * 1.001, 100.0, -100.0])
def test_large_bonus_takes_the_chunked_route(monkeypatch, bonus):
    """max|u| > ONE_CHUNK_BONUS: the one-chunk sums would carry e^u (e^100 overflows float32),
    so forward and backward take the chunked route, in log space, and match the reference (the tolerances of
    test_one_chunk_backward_matches_reference)."""
    def one_chunk(*args):
        raise AssertionError('the one-chunk route ran with max|u| > ONE_CHUNK_BONUS')
    monkeypatch.setattr(bi_wkv_torch, '_one_chunk_forward', one_chunk)
    monkeypatch.setattr(bi_wkv_torch, '_one_chunk_backward', one_chunk)
    w, u, k, v = make_inputs(2, 50, 4)
    u[0] = bonus
    y, gy, grads = torch_path_grads(w, u, k, v)
    assert rel_err(y, bi_wkv_reference(*(t.double() for t in (w, u, k, v)))) < 1e-5
    assert_grads_close(grads, reference_grads(w, u, k, v, gy), gy, v, tol_g=1e-4)


@pytest.mark.parametrize('T', [1, 2, 3, 8, 9, 10, 17, 196, 1030])
def test_blocked_cumsums_match_torch_cumsum(T):
    """The blocked cumulative sums (both directions at once) and the exclusive cumulative sum, in float64."""
    x = torch.randn(2, 3, T, 5, dtype=torch.float64)
    block, length = bi_wkv_torch._scan_blocks(T)
    assert length >= T and length % block == 0
    sums = bi_wkv_torch._blocked_cumsum(F.pad(x, (0, 0, 0, length - T)), block, (False, True))
    assert rel_err(sums[0, :, :T], x[0].cumsum(1)) < 1e-14
    assert rel_err(sums[1, :, :T], x[1].flip(1).cumsum(1).flip(1)) < 1e-14
    x4 = torch.randn(2, T, 3, 2, dtype=torch.float64)
    expected = F.pad(x4.cumsum(1)[:, :-1], (0, 0, 0, 0, 1, 0))
    assert rel_err(bi_wkv_torch._exclusive_cumsum(x4), expected) < 1e-14
