"""Bi-WKV with formula='official': the weight table against a port of the official CUDA kernel, and the
PyTorch and Triton paths (forward and exact gradients) against the float64 table reference."""
import pytest
import torch

from vision_rwkv.kernels import bi_wkv
from vision_rwkv.kernels.reference import bi_wkv_official_reference, bi_wkv_reference

from conftest import rel_err
from official_bi_wkv import official_bi_wkv_forward

TRITON_DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'  # cpu: TRITON_INTERPRET=1
F64_EPS = torch.finfo(torch.float64).eps
F32_EPS = torch.finfo(torch.float32).eps


def make_inputs(B, T, C, decay=4.0, dtype=torch.float64, device='cpu'):
    """Vision-RWKV's scaling: w = spatial_decay / T, u = spatial_first / T, with spread decays and keys."""
    w = torch.randn(C, dtype=torch.float64) * decay / T
    u = torch.randn(C, dtype=torch.float64) * 3 / T
    k = torch.randn(B, T, C, dtype=torch.float64) * 2
    v = torch.randn(B, T, C, dtype=torch.float64)
    return [t.to(device=device, dtype=dtype if t.dim() == 3 else w.dtype if dtype == torch.float64
                 else torch.float32) for t in (w, u, k, v)]


@pytest.mark.parametrize('T', [1, 2, 5, 31, 32, 33, 64, 65, 100, 196, 197, 300])
def test_weight_table_matches_the_official_kernel(T):
    """The table of kernels.reference reproduces the kernel's loops (EPS off) to float64 rounding: every
    T class, T <= 32 (one token per lane), lanes left idle (T = 33, 100, 197) and a short last lane."""
    w, u, k, v = make_inputs(2, T, 7)
    expected = official_bi_wkv_forward(w, u, k, v, eps=0.)
    # float64 sums of T terms of size <= e^{2·max|k| + T·max|w|}: a few hundred ulps at most
    assert rel_err(bi_wkv_official_reference(w, u, k, v), expected) < 1e3 * F64_EPS


@pytest.mark.parametrize('T', [16, 64, 196])
def test_omitted_eps_is_below_fp32_noise(T):
    """The kernels add EPS = 1e-6 to the max-scaled denominator; the operator leaves it out. It moves y
    by EPS·e^M / den (M the kernel's running maximum, about the largest term): ~EPS relative or less once
    several tokens share the denominator (at T = 1 it is EPS·e^{-u} when u < 0)."""
    w, u, k, v = make_inputs(2, T, 8)
    with_eps = official_bi_wkv_forward(w, u, k, v)
    assert rel_err(bi_wkv_official_reference(w, u, k, v), with_eps) < 1e-5


def test_formulas_differ_as_measured():
    """The official operator is not Eq. 5 (the gap the checkpoints depend on): about 1e-3 at T = 196."""
    w, u, k, v = make_inputs(2, 196, 16)
    gap = rel_err(bi_wkv(w, u, k, v, formula='official'), bi_wkv_reference(w, u, k, v))
    assert 1e-5 < gap < 1e-1


def _check_grads(backend, T, C, dtype, tol_y, tol_g, decay=4.0, device='cpu'):
    w, u, k, v = (t.requires_grad_() for t in make_inputs(2, T, C, decay, dtype, device))
    y = bi_wkv(w, u, k, v, backend=backend, formula='official')
    assert y.dtype == dtype and y.shape == (2, T, C)
    gy = torch.randn_like(y)
    grads = torch.autograd.grad((y * gy).sum(), (w, u, k, v))
    leaves = [t.detach().cpu().double().requires_grad_() for t in (w, u, k, v)]
    y_ref = bi_wkv_official_reference(*leaves)
    grads_ref = torch.autograd.grad((y_ref * gy.cpu().double()).sum(), leaves)
    assert rel_err(y.cpu(), y_ref) < tol_y
    for name, g, g_ref in zip('wukv', grads, grads_ref):
        assert g.dtype == {'w': w.dtype, 'u': u.dtype}.get(name, dtype), name
        if T == 1 and name != 'v':  # y = v whatever w, u, k: zero up to rounding of size eps·Σ|gy|·max|v|
            scale = float(gy.abs().sum() * v.detach().abs().max())
            assert float(g.abs().max()) < 1e2 * torch.finfo(dtype).eps * scale, name
        else:
            assert rel_err(g.cpu(), g_ref) < tol_g, name


@pytest.mark.parametrize('T', [1, 7, 32, 33, 65, 196, 197])
def test_torch_path_float64_is_exact(T):
    """Forward and the exact backward in float64: rounding only (sums of O(T) positive terms, then the
    (y5 + ν)/(1 + ρ) combination and the gradients' differences, each a few ulps times T)."""
    _check_grads('torch', T, 6, torch.float64, tol_y=1e2 * T * F64_EPS + 1e-14, tol_g=1e3 * T * F64_EPS + 1e-13)


@pytest.mark.parametrize('T', [5, 100, 196])
def test_torch_path_float32(T):
    """float32: the same computation with eps32 ≈ 1.2e-7; y within ~T·eps32 of the reference in the worst
    case, gradients (differences like v·gv - Σ a·q·y) within ~10·T·eps32."""
    _check_grads('torch', T, 9, torch.float32, tol_y=T * F32_EPS, tol_g=10 * T * F32_EPS)


@pytest.mark.parametrize('T', [65, 197])
def test_torch_path_chunked_segment_scans(monkeypatch, T):
    """Segments too long for the one-chunk products (L·|w| > 24) take the chunked log-space scans: forced
    here at small T, in float64, where both routes must be exact."""
    from vision_rwkv.kernels import bi_wkv_official
    monkeypatch.setattr(bi_wkv_official, 'fits_one_chunk', lambda length, w: False)
    _check_grads('torch', T, 6, torch.float64, tol_y=1e2 * T * F64_EPS, tol_g=1e3 * T * F64_EPS)


def test_torch_path_long_sequence_with_large_decays():
    """T = 2048 with |w|·T up to ~40: the segments (64 tokens) run as several chunks of the log-space scan."""
    _check_grads('torch', 2048, 2, torch.float64, tol_y=1e-11, tol_g=1e-9, decay=12.0)


@pytest.mark.parametrize('T,dtype,tol_y,tol_g', [
    (33, torch.float32, 1e-5, 1e-4),   # fp32 accumulation: ~T·eps32 (y), 10x for the gradients
    (70, torch.float16, 2e-3, 4e-3),   # fp16 inputs and output: rounding of k, v, y (2^-11 ≈ 5e-4)
])
@pytest.mark.slow
def test_triton_path(T, dtype, tol_y, tol_g):
    _check_grads('triton', T, 33, dtype, tol_y, tol_g, device=TRITON_DEVICE)


@pytest.mark.slow
@pytest.mark.parametrize('T', [7, 70])
def test_triton_path_carries_across_tiles(monkeypatch, T):
    """Tiles of 2 tokens: segments of 1 (T = 7) and 3 tokens (T = 70) walk 1 and 2 tiles, so the carries
    between tiles (both directions, with distance sums) are exercised."""
    from vision_rwkv.kernels import bi_wkv_official_triton
    monkeypatch.setattr(bi_wkv_official_triton, 'TILE', 2)
    _check_grads('triton', T, 5, torch.float32, 1e-5, 1e-4, device=TRITON_DEVICE)


def test_inference_skips_log_den_and_matches_training_forward():
    w, u, k, v = make_inputs(2, 50, 8, dtype=torch.float32)
    with torch.inference_mode():
        y_inf = bi_wkv(w, u, k, v, formula='official')
    y_train = bi_wkv(w.requires_grad_(), u, k, v, formula='official')
    assert torch.equal(y_inf, y_train.detach())


def test_one_op_per_call_under_export():
    class Wkv(torch.nn.Module):
        def forward(self, w, u, k, v):
            return bi_wkv(w, u, k, v, formula='official')

    program = torch.export.export(Wkv(), tuple(make_inputs(1, 20, 4, dtype=torch.float32)))
    targets = [str(n.target) for n in program.graph.nodes if n.op == 'call_function']
    assert targets.count('vision_rwkv.bi_wkv_official_forward.default') == 1


def test_bad_formula_or_order():
    w, u, k, v = make_inputs(1, 16, 4, dtype=torch.float32)
    with pytest.raises(ValueError, match='formula must be one of'):
        bi_wkv(w, u, k, v, formula='cuda')
    with pytest.raises(ValueError, match='raster order only'):
        bi_wkv(w, u, k, v, grid=(4, 4), order='cross', formula='official')
