"""The sequence-parallel 2D Bi-WKV Triton kernels against the float64 reference: several chunks per line
and several chunk blocks in the carry phase (short chunks forced on small grids), lines of one token,
extremes, half and non-contiguous inputs, launch geometry. Without CUDA Triton runs in its interpreter,
which runs scans element by element: grids and channel counts stay small.

Tolerances: fp32 with every sum in log space; a token's state passes through O(log2 chunk + chunks)
combines of about one rounding each, so y is within ~1e-7 relative (measured up to 3e-7) and the
gradients, sums of such terms, within ~1e-6 (limits 1e-6 and 1e-5 as in test_bi_wkv_2d.py).
"""
import pytest
import torch

import vision_rwkv.kernels.bi_wkv_2d_triton as k2d

from conftest import rel_err
from test_bi_wkv_2d import (TRITON_DEVICE, gk_error_to_scale, gu_error_to_scale, gw_error_to_scale,
                            log_denominators, make_inputs, reference_and_grads)


@pytest.fixture
def chunks(monkeypatch):
    """``set_chunks(chunk, block)``: lines cut into chunks of ``chunk`` tokens, carries scanned in blocks
    of ``block`` chunk totals, so small grids take the multi-chunk and multi-block paths."""
    def set_chunks(chunk: int, block: int = 2):
        monkeypatch.setattr(k2d, 'choose_chunk_len', lambda length: chunk)
        monkeypatch.setattr(k2d, 'choose_carry_block', lambda n_chunks: block)
    return set_chunks


def run_kernels(w, u, k, v, grid, gy):
    """The forward and backward launches, without autograd: y, log_den, (gw, gu, gk, gv)."""
    y, log_den = k2d.bi_wkv_2d_triton_forward(w.detach(), u.detach(), k.detach(), v.detach(), grid)
    grads = k2d.bi_wkv_2d_triton_backward(w.detach(), u.detach(), k.detach(), v.detach(), y, log_den, gy, grid)
    return y, log_den, grads


def log_den_error(log_den, w, u, k, grid) -> float:
    """max |log_den - ref| / (1 + |ref|): fp32 rounds log_den to ~6e-8 of its size, plus ~1e-7 from den."""
    ref = log_denominators(w, u, k, grid)
    return float(((log_den.cpu().double() - ref).abs() / (1 + ref.abs())).max())


def assert_matches_reference(w, u, k, v, grid, tol_y=1e-6, tol_g=1e-5):
    gy = torch.randn(k.shape, device=k.device).to(k.dtype)
    y, log_den, grads = run_kernels(w, u, k, v, grid, gy)
    assert y.dtype == log_den.dtype == torch.float32 and y.shape == k.shape
    assert all(g.dtype == torch.float32 for g in grads)
    y_ref, grads_ref = reference_and_grads(w, u, k, v, grid, gy)
    assert rel_err(y.cpu(), y_ref) < tol_y
    assert log_den_error(log_den, w, u, k, grid) < 1e-6
    gw, gu, gk, gv = grads
    gw_ref, gu_ref, gk_ref, gv_ref = grads_ref
    assert gw_error_to_scale(gw, gw_ref, gy, v) < tol_g / 10  # a signed sum over all tokens
    assert rel_err(gu.cpu(), gu_ref) < tol_g
    assert rel_err(gk.cpu(), gk_ref) < tol_g
    assert rel_err(gv.cpu(), gv_ref) < tol_g


# (chunk 4) columns of 9 = 4 + 4 + 1: three chunks in two carry blocks, rows of 6 = 4 + 2;
# (chunk 2) rows of 9: five chunks in three carry blocks, the last block and chunk partly masked
@pytest.mark.parametrize('chunk, B, H, W, C', [(4, 1, 9, 6, 2), (2, 1, 3, 9, 3)])
def test_several_chunks_match_reference(chunks, chunk, B, H, W, C):
    chunks(chunk)
    assert_matches_reference(*make_inputs(B, H, W, C, device=TRITON_DEVICE), (H, W))


def test_default_chunks_match_reference():
    """Rows of 20 tokens: two default chunks of 16 (the second 4 tokens), columns of 2: one chunk."""
    assert k2d.choose_chunk_len(20) == 16
    assert_matches_reference(*make_inputs(1, 2, 20, 2, device=TRITON_DEVICE), (2, 20))


@pytest.mark.parametrize('grid', [(1, 10), (10, 1), (1, 1)])
def test_single_row_column_and_token(chunks, grid):
    chunks(4)
    assert_matches_reference(*make_inputs(1, *grid, 2, device=TRITON_DEVICE), grid)


@pytest.mark.parametrize('decay_span, k_scale', [(10.0, 3.0), (-10.0, 3.0), (1.0, 30.0)])
def test_extremes_over_several_chunks(chunks, decay_span, k_scale):
    """w·(H + W) about ±10 (strong decay, growth with distance) or keys over ±30: finite and accurate."""
    chunks(2)
    H, W = 4, 5
    w, u, k, v = make_inputs(1, H, W, 2, k_scale=k_scale, device=TRITON_DEVICE)
    w = decay_span / (H + W) * (0.5 + torch.rand(2, device=TRITON_DEVICE))
    gy = torch.randn_like(k)
    y, log_den, grads = run_kernels(w, u, k, v, (H, W), gy)
    assert torch.isfinite(y).all() and torch.isfinite(log_den).all()
    assert all(torch.isfinite(g).all() for g in grads)
    y_ref, grads_ref = reference_and_grads(w, u, k, v, (H, W), gy)
    assert rel_err(y.cpu(), y_ref) < 1e-5
    assert log_den_error(log_den, w, u, k, (H, W)) < 1e-6
    (gw, gu, gk, gv), (gw_ref, gu_ref, gk_ref, gv_ref) = grads, grads_ref
    assert rel_err(gv.cpu(), gv_ref) < 1e-4
    assert gw_error_to_scale(gw, gw_ref, gy, v) < 1e-6
    assert gu_error_to_scale(gu, gu_ref, w, u, k, v, (H, W), gy, y_ref) < 1e-6
    _, (_, _, _, gv_abs_ref) = reference_and_grads(w, u, k, v, (H, W), gy.abs())
    assert gk_error_to_scale(gk, gk_ref, v, y_ref, gv_abs_ref) < 1e-6


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_inputs_accumulate_in_fp32(chunks, dtype):
    """k, v, gy in half precision are read exactly and accumulated in fp32: against the reference on the
    same rounded values, the fp32 tolerances hold (rows and columns of 2 + 1 tokens)."""
    chunks(2)
    w, u, k, v = make_inputs(1, 3, 3, 2, device=TRITON_DEVICE)
    assert_matches_reference(w, u, k.to(dtype), v.to(dtype), (3, 3))


def test_non_contiguous_inputs():
    B, H, W, C = 1, 3, 4, 2
    w2, u2 = torch.randn(2 * C, device=TRITON_DEVICE), torch.randn(2 * C, device=TRITON_DEVICE)
    k_t, v_t, gy_t = (torch.randn(B, C, H * W, device=TRITON_DEVICE) for _ in range(3))
    w, u, k, v, gy = w2[::2], u2[::2], k_t.transpose(1, 2), v_t.transpose(1, 2), gy_t.transpose(1, 2)
    assert not any(t.is_contiguous() for t in (w, u, k, v, gy))
    y, log_den, grads = run_kernels(w, u, k, v, (H, W), gy)
    y_ref, grads_ref = reference_and_grads(w, u, k, v, (H, W), gy)
    assert rel_err(y.cpu(), y_ref) < 1e-6
    assert rel_err(grads[3].cpu(), grads_ref[3]) < 1e-5  # gv


@pytest.mark.parametrize('B, H, W, C', [(1, 64, 64, 192), (1, 32, 128, 192)])
def test_launches_fill_a_gpu_at_batch_one(B, H, W, C):
    """Chunks of a power of two, 16 or more on long lines, and over 4 finishing programs per SM of a
    132-SM GPU at batch 1."""
    for lines in (k2d._row_lines(B, H, W), k2d._col_lines(B, H, W)):
        assert lines.chunk & (lines.chunk - 1) == 0 and lines.chunk >= min(16, lines.length)
        assert lines.chunk * lines.n_chunks >= lines.length > lines.chunk * (lines.n_chunks - 1)
        (n_chunk_programs, n_channel_blocks), options = k2d._finish_grid(lines, C)
        assert n_chunk_programs == B * lines.n_lines * lines.n_chunks
        assert n_chunk_programs * n_channel_blocks >= 4 * 132
        assert options['num_warps'] <= 8


def test_bad_shapes():
    w, u, k, v = make_inputs(1, 3, 4, 2)
    with pytest.raises(ValueError, match='grid 4x4 holds 16 tokens'):
        k2d.bi_wkv_2d_triton_forward(w, u, k, v, (4, 4))
    with pytest.raises(ValueError, match='w, u'):
        k2d.bi_wkv_2d_triton_forward(w[:1], u, k, v, (3, 4))

