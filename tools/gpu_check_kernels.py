"""Kernel checks of ``tools/gpu_check.py``: every Triton Bi-WKV kernel against the float64 references.

A ``Case`` is one call of ``bi_wkv(..., backend='triton', grid=(H, W), order=op)`` (op 'row', 'col',
'cross'), ``bi_wkv_2d(..., backend='triton')`` (op '2d') or VRWKV6's ``bi_wkv6(..., backend='triton')``
(op 'wkv6', T tokens as a 1 x T grid): the forward, and the backward when ``backward``. ``run_case``
returns one result row per checked quantity (y, then the gradients of w, u, k, v; for wkv6 of r, k, v,
w, u), each with its norm-wise relative error against the float64 reference of ``vision_rwkv.kernels``
(gradients: float64 autograd of that reference) and its tolerance.

Long sequences compare a subset of output rows (``rows``; the reference costs B·R·T·C instead of
B·T²·C); their gradients use an upstream gradient that is zero outside those rows, so the kernels'
full gradients are still exact to compare. The largest case also restricts the reference to a few
channels (``channels``), which Bi-WKV treats independently; wkv6's largest to a few batch elements
(``batches``: the first and the last, whose offsets pass 2^31), as its heads mix channels.
"""
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from vision_rwkv.kernels import (bi_wkv, bi_wkv6, bi_wkv6_reference, bi_wkv_2d, bi_wkv_2d_reference, bi_wkv_reference,
                                 bi_wkv_scan_reference)
from vision_rwkv.kernels.reference import bi_wkv_official_reference

OPS = ('row', 'col', 'cross', '2d')
GRAD_NAMES = ('gw', 'gu', 'gk', 'gv')
WKV6_GRAD_NAMES = ('gr', 'gk', 'gv', 'gw', 'gu')
SHORT_DTYPE = {torch.float32: 'fp32', torch.float16: 'fp16', torch.bfloat16: 'bf16'}
FP32_EPS = torch.finfo(torch.float32).eps  # 2^-23


@dataclass(frozen=True)
class Case:
    """One kernel call to check (see the module docstring)."""
    op: str
    dtype: torch.dtype
    B: int
    grid: Tuple[int, int]
    C: int
    backward: bool = True
    rows: int = 0  # 0: full reference; R > 0: R output rows (and gy zero elsewhere)
    channels: int = 0  # 0: all channels; n > 0: the reference on n channels (forward only)
    layout: str = 'contiguous'  # 'transposed': k, v views of (T, B, C) memory; 'strided': every other channel
    device: str = ''  # '' the main device; e.g. 'cuda:1'
    note: str = ''
    extreme: bool = False  # wkv6: decays from 1 - 5e-5 to e^-110 per token instead of the models' range
    batches: int = 0  # wkv6: 0 all batch elements in the reference; n > 0: the first and last n / 2

    @property
    def T(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def name(self) -> str:
        parts = [self.op, SHORT_DTYPE[self.dtype], f'{self.B}x{self.T}x{self.C}', f'grid {self.grid[0]}x{self.grid[1]}',
                 'fwd+bwd' if self.backward else 'fwd']
        if self.layout != 'contiguous':
            parts.append(self.layout)
        if self.rows:
            parts.append(f'{self.rows} rows' + (f' x {self.channels} ch' if self.channels else ''))
        if self.batches:
            parts.append(f'{self.batches} batch elements')
        if self.extreme:
            parts.append('extreme decays')
        if self.device:
            parts.append(self.device)
        if self.note:
            parts.append(f'({self.note})')
        return ' '.join(parts)

    def bytes_needed(self) -> int:
        """Rough peak device memory of the case: kernel tensors plus the float64 reference."""
        elt = torch.finfo(self.dtype).bits // 8
        n = self.B * self.T * self.C
        if self.op == 'wkv6':  # r, k, v, y, fp32 w; fp32 chunk states, deltas and scores (16 + 4 bytes per element)
            kernel = n * (4 * elt + 4 + 20) * (2 if self.backward else 1)
            batches = self.batches or self.B  # the recurrence's autograd keeps a (64, 64) state per head and step
            return kernel + batches * self.T * self.C * 8 * (1 + (2 * 64 if self.backward else 0))
        kernel = n * (3 * elt + 8)  # k, v, y in the input dtype; y and log_den in fp32
        if self.backward:
            kernel += n * (3 * elt + 8)  # gy, gk, gv in the input dtype; gk, gv in fp32
        rows = self.rows or self.T
        ref = self.B * rows * self.T * (self.channels or self.C) * 8 * (6 if self.backward else 3)
        return kernel + ref


def tolerance(out_dtype: torch.dtype, T: int, gradient: bool) -> float:
    """Norm-wise relative error allowed for a result stored in ``out_dtype`` (y, gk, gv: the input dtype;
    gw, gu: float32) after float32 accumulation over T tokens.

    - Storing the fp32 result in ``out_dtype`` rounds each element by at most eps/2 relative, so the
      norm-wise error is at most eps/2 (bf16 2^-8, fp16 2^-11); we allow eps, twice that. The
      references take the rounded inputs, so input rounding adds nothing.
    - fp32 arithmetic: rounding in the log-space recurrences of a sequential scan accumulates along
      it, between sqrt(T) and T (measured on CPU with these inputs: 4e-6 at T = 512, 1e-5 at 8192,
      1e-4 at 65536 in an fp32 emulation of the kernel's recurrence); we allow
      16·eps32·(sqrt(T) + T/256) for y (3e-5 at T = 300, 1e-3 at T = 65536, 5e-3 at T = 2^19) and ten
      times that for gradients, where gk = v·S1 - S2 cancels. Index or term errors give 1e-2 and more.
    """
    slack = 16 * FP32_EPS * (math.sqrt(T) + T / 256) * (10 if gradient else 1)
    return torch.finfo(out_dtype).eps + slack


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected|| in float64 (absolute when expected is zero; inf if not finite)."""
    actual, expected = actual.detach().double(), expected.detach().double().to(actual.device)
    if not torch.isfinite(actual).all():
        return math.inf
    denom = expected.norm()
    diff = (actual - expected).norm()
    return float(diff / denom) if denom > 0 else float(diff)


# ---- inputs -----------------------------------------------------------------------------------
def make_inputs(case: Case, device: torch.device) -> List[torch.Tensor]:
    """Leaves (w, u, k, v): w, u (C,) fp32; k, v (B, T, C) in the case's dtype and layout.

    Even channels decay as the models' learned decays do (spatial_decay / n with a total decay in
    ±10 over the sequence: n = T, or H + W for 2D), odd channels decay fast (0.05 to 1 per token), except
    for the official formula, whose segment weights turn negative when a segment decays by more than ~1:
    all its channels decay as the models'.
    """
    B, T, C = case.B, case.T, case.C
    n = case.grid[0] + case.grid[1] if case.op == '2d' else T
    lanes = torch.arange(C, device=device)
    long_range = (torch.rand(C, device=device) * 20 - 10) / n
    local = torch.rand(C, device=device) * 0.95 + 0.05
    w = torch.where((lanes % 2 == 0) | (case.op == 'official'), long_range, local)
    u = torch.randn(C, device=device)
    k = _in_layout(case, device, scale=2.)
    v = _in_layout(case, device, scale=1.)
    return [t.detach().requires_grad_(case.backward) for t in (w, u, k, v)]


def make_wkv6_inputs(case: Case, device: torch.device) -> List[torch.Tensor]:
    """Leaves (r, k, v, w, u): r, k, v (B, T, C) standard normal in the case's dtype and layout; w (B, T, C)
    float32 uniform in [-7, 0] (the models' time_decay runs from -6 to -1, plus a data-dependent term), or
    with ``extreme`` in [-10, 4.7] (decays from 1 - 5e-5 to e^-110 per token); u (C / 64, 64) in the dtype."""
    lo, hi = (-10., 4.7) if case.extreme else (-7., 0.)
    w = torch.rand(case.B, case.T, case.C, device=device) * (hi - lo) + lo
    u = torch.randn(case.C // 64, 64, device=device, dtype=case.dtype)
    r, k, v = (_in_layout(case, device, scale=1.) for _ in range(3))
    return [t.detach().requires_grad_(case.backward) for t in (r, k, v, w, u)]


def _in_layout(case: Case, device: torch.device, scale: float) -> torch.Tensor:
    """(B, T, C) normal with std ``scale`` in the case's dtype, contiguous or as a strided view."""
    B, T, C = case.B, case.T, case.C
    if case.layout == 'transposed':
        return (torch.randn(T, B, C, device=device, dtype=case.dtype) * scale).transpose(0, 1)
    if case.layout == 'strided':
        return (torch.randn(B, T, 2 * C, device=device, dtype=case.dtype) * scale)[..., ::2]
    return torch.randn(B, T, C, device=device, dtype=case.dtype) * scale


def pick(n: int, count: int, must: Sequence[int], device: torch.device) -> torch.Tensor:
    """Sorted unique indices below n: ``must`` (clipped) plus random ones, about ``count`` in all."""
    chosen = {min(max(i, 0), n - 1) for i in must}
    extra = torch.randperm(n)[:count].tolist()
    for i in extra:
        if len(chosen) >= count:
            break
        chosen.add(i)
    return torch.tensor(sorted(chosen), device=device)


# ---- references -------------------------------------------------------------------------------
def column_major_lanes(op: str, C: int) -> torch.Tensor:
    """(C,) bool: the channels that scan column-major ('col': all, 'cross': from C // 2 on; none for 'row', '2d')."""
    split = {'row': C, 'col': 0, 'cross': C // 2, '2d': C, 'official': C}[op]
    return torch.arange(C) >= split


def bi_wkv_2d_reference_rows(w, u, k, v, grid: Tuple[int, int], rows: torch.Tensor) -> torch.Tensor:
    """``bi_wkv_2d_reference`` at output positions ``rows`` only: (B, R, C) float64 (checked against the
    full reference by ``reference_self_checks``)."""
    H, W = grid
    w, u, k, v = (x.double() for x in (w, u, k, v))
    pos = torch.arange(H * W, device=k.device)
    rows = rows.to(k.device)
    dist = ((rows[:, None] // W - pos[None] // W).abs() + (rows[:, None] % W - pos[None] % W).abs()).double()
    logits = -(dist - 1)[None, :, :, None] * w + k[:, None, :, :]  # (B, R, T, C)
    diag = (rows[:, None] == pos[None, :])[None, :, :, None]
    logits = torch.where(diag, (u + k)[:, None, :, :].expand_as(logits), logits)
    return (torch.softmax(logits, dim=2) * v[:, None, :, :]).sum(dim=2)


def scan_reference_rows(w, u, k, v, grid: Tuple[int, int], col_major: torch.Tensor,
                        rows: Optional[torch.Tensor]) -> torch.Tensor:
    """1D Bi-WKV reference in float64 with each channel in its own scan order, at output positions
    ``rows`` (all when None): (B, R, C). Row-major channels run ``bi_wkv_reference`` on the tokens as
    stored; column-major ones on the tokens gathered in column-major order, where token r sits at
    scan position inv[r]."""
    H, W = grid
    T = H * W
    rows_all = torch.arange(T, device=k.device) if rows is None else rows.to(k.device)
    out = torch.zeros(k.shape[0], len(rows_all), k.shape[2], dtype=torch.float64, device=k.device)
    row_lanes = (~col_major).nonzero().flatten().to(k.device)
    col_lanes = col_major.nonzero().flatten().to(k.device)
    if len(row_lanes):
        out = out.index_copy(2, row_lanes, bi_wkv_reference(
            w[row_lanes], u[row_lanes], k[..., row_lanes], v[..., row_lanes], rows=rows_all))
    if len(col_lanes):
        perm = torch.arange(T, device=k.device).view(H, W).t().reshape(-1)  # scan position -> token
        inv = torch.argsort(perm)  # token -> scan position
        out = out.index_copy(2, col_lanes, bi_wkv_reference(
            w[col_lanes], u[col_lanes], k[:, perm][..., col_lanes], v[:, perm][..., col_lanes], rows=inv[rows_all]))
    return out


def reference(case: Case, w, u, k, v, rows: Optional[torch.Tensor], col_major: torch.Tensor) -> torch.Tensor:
    """float64 y[:, rows] of the case's op: the library references when all of y is needed, else the
    row-subset forms above. ``col_major``: (C,) bool, the channels of w, u, k, v that scan column-major
    (the caller may have kept only some channels)."""
    if case.op == 'official':  # full reference only (the cases keep T small enough)
        return bi_wkv_official_reference(w, u, k, v)
    if case.op == '2d':
        if rows is None:
            return bi_wkv_2d_reference(w, u, k, v, case.grid)
        return bi_wkv_2d_reference_rows(w, u, k, v, case.grid, rows)
    if rows is None and len(col_major) == case.C:
        if case.op == 'row':
            return bi_wkv_reference(w, u, k, v)
        return bi_wkv_scan_reference(w, u, k, v, case.grid, case.op)
    return scan_reference_rows(w, u, k, v, case.grid, col_major, rows)


# ---- running a case ---------------------------------------------------------------------------
def run_op(case: Case, w, u, k, v) -> torch.Tensor:
    if case.op == 'official':
        return bi_wkv(w, u, k, v, backend='triton', formula='official')
    if case.op == '2d':
        return bi_wkv_2d(w, u, k, v, case.grid, backend='triton')
    return bi_wkv(w, u, k, v, backend='triton', grid=case.grid, order=case.op)


def _row(case: Case, quantity: str, err: float, tol: float, ref: str) -> Dict:
    return dict(case=case.name, op=case.op, dtype=SHORT_DTYPE[case.dtype], B=case.B, T=case.T, C=case.C,
                grid=f'{case.grid[0]}x{case.grid[1]}', layout=case.layout, reference=ref, quantity=quantity,
                rel_err=err, tol=tol, status='PASS' if err <= tol else 'FAIL')


def run_wkv6_case(case: Case, device: torch.device) -> List[Dict]:
    """``run_case`` for op 'wkv6': against ``bi_wkv6_reference`` in float64 on the device, all tokens (of the
    first and last batch elements only when ``batches``)."""
    leaves = make_wkv6_inputs(case, device)
    with torch.set_grad_enabled(case.backward):
        y = bi_wkv6(*leaves, backend='triton')
    if y.dtype != case.dtype or tuple(y.shape) != (case.B, case.T, case.C):
        raise AssertionError(f'output {y.dtype} {tuple(y.shape)}, expected {case.dtype} {(case.B, case.T, case.C)}')
    if case.batches:
        half = case.batches // 2
        keep = torch.tensor(list(range(half)) + list(range(case.B - (case.batches - half), case.B)), device=device)
        ref_inputs = [t.detach()[keep] if t.dim() == 3 else t.detach() for t in leaves]
        y_sel = y.detach()[keep]
    else:
        ref_inputs, y_sel = [t.detach() for t in leaves], y.detach()
    ref_leaves = [t.double().requires_grad_(case.backward) for t in ref_inputs]
    with torch.set_grad_enabled(case.backward):
        y_ref = bi_wkv6_reference(*ref_leaves)
    ref_name = 'full' if not case.batches else f'{case.batches} batch elements'
    results = [_row(case, 'y', rel_err(y_sel, y_ref), tolerance(case.dtype, case.T, False), ref_name)]
    if case.backward:
        gy = torch.randn_like(y)
        grads = torch.autograd.grad(y, leaves, gy)
        grads_ref = torch.autograd.grad(y_ref, ref_leaves, gy.double(), allow_unused=True)
        for name, g, g_ref, leaf in zip(WKV6_GRAD_NAMES, grads, grads_ref, ref_leaves):
            g_ref = torch.zeros_like(leaf) if g_ref is None else g_ref  # w at T = 1
            results.append(_row(case, name, rel_err(g, g_ref), tolerance(g.dtype, case.T, True), ref_name))
    return results


def run_case(case: Case, device: torch.device) -> List[Dict]:
    """Run one case on ``device``; one result row per checked quantity (see the module docstring)."""
    if case.op == 'wkv6':
        return run_wkv6_case(case, device)
    leaves = make_inputs(case, device)
    with torch.set_grad_enabled(case.backward):
        y = run_op(case, *leaves)
    if y.dtype != case.dtype or tuple(y.shape) != (case.B, case.T, case.C):
        raise AssertionError(f'output {y.dtype} {tuple(y.shape)}, expected {case.dtype} {(case.B, case.T, case.C)}')
    rows = pick(case.T, case.rows, [0, 1, case.T // 2, case.T - 2, case.T - 1], device) if case.rows else None
    col_major = column_major_lanes(case.op, case.C)
    ref_inputs = [t.detach() for t in leaves]
    if case.channels:  # keep a few channels (both sides of the cross split) before going to float64
        channels = pick(case.C, case.channels, [0, case.C // 2 - 1, case.C // 2, case.C - 1], device)
        col_major = col_major[channels.cpu()]
        ref_inputs = [t[channels] if t.dim() == 1 else t[..., channels] for t in ref_inputs]
    ref_leaves = [t.double().requires_grad_(case.backward) for t in ref_inputs]
    with torch.set_grad_enabled(case.backward):
        y_ref = reference(case, *ref_leaves, rows, col_major)
    ref_name = 'full' if rows is None else f'{len(rows)} rows'
    y_sel = y.detach() if rows is None else y.detach()[:, rows]
    if case.channels:
        ref_name += f' x {len(channels)} ch'
        y_sel = y_sel[..., channels]
    results = [_row(case, 'y', rel_err(y_sel, y_ref), tolerance(case.dtype, case.T, False), ref_name)]
    if case.backward:
        gy = torch.randn_like(y)
        if rows is not None:
            keep = torch.zeros(case.T, dtype=torch.bool, device=device)
            keep[rows] = True
            gy = gy * keep[None, :, None]
        grads = torch.autograd.grad(y, leaves, gy)
        gy_ref = gy.double() if rows is None else gy[:, rows].double()
        grads_ref = torch.autograd.grad(y_ref, ref_leaves, gy_ref)
        for name, g, g_ref, leaf in zip(GRAD_NAMES, grads, grads_ref, leaves):
            results.append(_row(case, name, rel_err(g, g_ref), tolerance(leaf.dtype, case.T, True), ref_name))
    return results


def reference_self_checks(device: torch.device) -> List[Dict]:
    """The row-subset references of this module against the library's full references (small grids)."""
    results = []
    for op, grid, C in (('cross', (3, 5), 6), ('col', (4, 3), 3), ('2d', (3, 4), 4)):
        case = Case(op, torch.float32, 2, grid, C, backward=False, note='self-check')
        w, u, k, v = (t.detach().double() for t in make_inputs(case, device))
        rows = pick(case.T, 5, [0, case.T - 1], device)
        full = reference(case, w, u, k, v, None, column_major_lanes(op, C))
        subset = (bi_wkv_2d_reference_rows(w, u, k, v, grid, rows) if op == '2d'
                  else scan_reference_rows(w, u, k, v, grid, column_major_lanes(op, C), rows))
        row = _row(case, 'row-subset reference', rel_err(subset, full[:, rows]), 1e-12, 'full')
        row['case'] = f'reference self-check: {op} row subset vs library reference, grid {grid[0]}x{grid[1]}'
        results.append(row)
    return results


# ---- the case lists ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Sizes:
    """Shapes and extent of the case list of one mode (see ``kernel_cases``)."""
    main: Tuple[int, Tuple[int, int], int]  # B, grid, C of the every-op cases
    half: Tuple[Tuple[torch.dtype, str], ...]  # (dtype, op) also run at the main shape
    line: int  # length of the 1xT and Tx1 grids
    edges: int  # how many of the edge cases
    layouts: int  # how many of the non-contiguous cases
    long_fwd: Tuple[int, Tuple[int, int], int]  # B, grid, C of the forwards against a row subset
    long_fwd_ops: Tuple[Tuple[torch.dtype, str], ...]
    long_grad: Tuple[int, Tuple[int, int], int]  # B, grid, C of the gradients with gy on a row subset
    long_grad_ops: Tuple[Tuple[torch.dtype, str], ...]
    huge: Tuple[int, int, int]  # B, T, C of the forwards over more than 2^31 elements (bf16)
    huge_ops: Tuple[str, ...]
    rows: int
    note_huge: str = ''


BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32
SIZES = {
    'full': Sizes(main=(2, (12, 25), 37), half=tuple((dt, op) for dt in (FP16, BF16) for op in OPS),
                  line=40, edges=6, layouts=3,
                  long_fwd=(2, (256, 256), 64),
                  long_fwd_ops=((FP32, 'row'), (FP16, 'row'), (BF16, 'row'), (BF16, 'col'), (BF16, 'cross'),
                                (BF16, '2d')),
                  long_grad=(1, (128, 128), 37),
                  long_grad_ops=((FP32, 'row'), (FP16, 'row'), (BF16, 'row'), (FP32, 'col'), (FP32, 'cross'),
                                 (FP32, '2d')),
                  huge=(4, 2 ** 19 + 1, 1024), huge_ops=('row', 'cross'), rows=8),
    'quick': Sizes(main=(2, (12, 25), 37), half=((BF16, 'row'), (BF16, '2d')), line=40, edges=2, layouts=1,
                   long_fwd=(2, (256, 256), 64), long_fwd_ops=((BF16, 'row'),),
                   long_grad=(1, (128, 128), 37), long_grad_ops=((BF16, 'row'),),
                   huge=(4, 2 ** 19 + 1, 1024), huge_ops=('row',), rows=8),
    'smoke': Sizes(main=(2, (3, 4), 5), half=(), line=6, edges=2, layouts=1,
                   long_fwd=(1, (4, 8), 5), long_fwd_ops=((BF16, 'cross'), (BF16, '2d')),
                   long_grad=(1, (4, 6), 5), long_grad_ops=((FP32, 'cross'), (FP32, '2d')),
                   huge=(1, 9, 9), huge_ops=('cross',), rows=4,
                   note_huge='smoke: the > 2^31-element shape scaled down'),
}


def wkv6_cases(mode: str) -> Tuple[List[Case], List[Case]]:
    """VRWKV6's operator, (early cases, late cases): fp32, bf16, fp16 at a main shape (two heads, T not a
    multiple of the chunk), extreme decays, one token; in full mode also non-contiguous inputs and T = 4096
    at VRWKV-S's width; late: a forward over more than 2^31 elements (C = 1024: sixteen heads)."""
    if mode == 'smoke':
        return [Case('wkv6', FP32, 1, (1, 5), 64), Case('wkv6', FP16, 1, (1, 5), 64, extreme=True)], []
    main = [Case('wkv6', dtype, 2, (1, 300), 128) for dtype in (FP32, BF16, FP16)]
    extra = [Case('wkv6', FP32, 1, (1, 1000), 64, extreme=True), Case('wkv6', FP32, 3, (1, 1), 64)]
    if mode == 'quick':
        return main[:2] + extra, []
    return (main + extra + [Case('wkv6', BF16, 2, (1, 300), 128, layout='transposed'),
                            Case('wkv6', BF16, 1, (1, 4096), 384)],
            [Case('wkv6', BF16, 513, (1, 4096), 1024, backward=False, batches=2)])


def kernel_cases(mode: str) -> List[Case]:
    """The checks of a mode, most important first (a time budget skips from the end; Triton compiles
    each new dtype and shape class, about a second per kernel, so the cheap-to-run edge cases, which
    need many compiles, come late)."""
    s = SIZES[mode]
    B, grid, C = s.main
    hb, ht, hc = s.huge
    lb, lgrid, lc = s.long_fwd
    gb, ggrid, gc = s.long_grad
    # more than 2^31 elements (bf16 forward): raster, and cross on a 3-row grid
    grids = {'row': (1, ht), 'cross': (3, ht // 3) if ht % 3 == 0 else (1, ht)}
    huge = [Case(op, BF16, hb, grids[op], hc, backward=False, rows=s.rows, channels=6, note=s.note_huge)
            for op in s.huge_ops]
    # one token; single-row and single-column grids (odd channel counts throughout)
    edges = [Case('row', FP32, 3, (1, 1), 5), Case('col', FP32, 2, (1, s.line), C),
             Case('2d', FP32, 3, (1, 1), 5), Case('cross', FP32, 2, (s.line, 1), C),
             Case('2d', FP32, 2, (1, s.line), C), Case('2d', FP32, 2, (s.line, 1), C)]
    # non-contiguous inputs (the wrappers copy them)
    layouts = [Case('row', BF16, B, grid, C, layout='transposed'), Case('cross', FP32, B, grid, C, layout='strided'),
               Case('2d', BF16, B, grid, C, layout='transposed')]
    # the official formula (raster, segments of ceil(T / 32) tokens): the main shape, and T = 2048 (segments
    # of 64 tokens, two tiles each) against the full reference
    official = [Case('official', FP32, B, grid, C), Case('official', BF16, B, grid, C)]
    if mode != 'smoke':
        official.append(Case('official', FP32, 1, (32, 64), C))
    wkv6_early, wkv6_late = wkv6_cases(mode)
    return ([Case(op, FP32, B, grid, C) for op in OPS]
            + official
            + wkv6_early
            + [Case(op, dtype, B, grid, C) for dtype, op in s.half]
            + layouts[:s.layouts]
            + huge[:1]
            # long sequences: forwards against a row subset; gradients at a smaller T with gy on a row subset
            + [Case(op, dtype, lb, lgrid, lc, backward=False, rows=s.rows) for dtype, op in s.long_fwd_ops]
            + [Case(op, dtype, gb, ggrid, gc, rows=s.rows) for dtype, op in s.long_grad_ops]
            + edges[:s.edges]
            + huge[1:]
            + wkv6_late)


def second_device_cases(mode: str, device: str) -> List[Case]:
    """Small cases on another device (the wrappers must launch on the tensors' device)."""
    B, grid, C = SIZES[mode].main
    return [Case('row', FP32, B, grid, C, device=device), Case('cross', BF16, B, grid, C, device=device),
            Case('2d', FP32, B, grid, C, device=device), Case('wkv6', BF16, B, (1, 70), 128, device=device)]
