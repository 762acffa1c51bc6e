"""Op-level benchmark of the Bi-WKV family on image grids: raster, cross and 2D against SDPA.

For each (B, H×W, C): forward and forward+backward time of bi_wkv in raster order (Eq. 5, and the official
kernels' formula), in cross order,
bi_wkv_2d, VRWKV6's bi_wkv6 (C / 64 heads of 64, data-dependent decays in the models' range), and torch's
scaled_dot_product_attention at the same B, T, C (C / 64 heads of 64), and
each op's forward+backward time over SDPA's; all ops of a shape are timed round-robin (medians).
CPU tensors run the PyTorch paths; on CUDA the Triton
kernels run (raster, cross, 2D, bi_wkv6) and the table adds the minimum bytes moved and GB/s. Prints
markdown tables, writes JSON (with the load average before and after, on a shared machine).

Usage: python tools/benchmark_ops.py [--out benchmark_results/ops.json] [--quick] [--threads N]
"""
import argparse
import os
import statistics
import time
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F

from benchmark import machine_info, op_inputs, report
from vision_rwkv.cli import add_debug_flag, run_tool
from vision_rwkv.kernels import bi_wkv, bi_wkv6, bi_wkv_2d

MODES = ('raster', 'official', 'cross', '2d', 'wkv6', 'sdpa')  # SDPA last: the ratios divide by its row
#: Minimum bytes moved per B·T·C element, in units of the input dtype's size: (forward, forward+backward).
#: Bi-WKV reads k, v and writes y; the backward also reads k, v, gy and writes gk, gv. bi_wkv6 reads r, k, v
#: and a float32 w (twice the units of bf16) and writes y; its backward also reads them and gy and writes
#: gr, gk, gv, gw.
TRAFFIC = {'wkv6': (6, 17)}
TRAFFIC_BI_WKV = (3, 8)


def wkv6_inputs(B: int, T: int, C: int, dtype: torch.dtype, device: str):
    """r, k, v (B, T, C) in ``dtype``, w (B, T, C) float32 uniform in [-7, 0] (the models' decays), u
    (C / 64, 64) in ``dtype``; all requiring grad."""
    r, k, v = (torch.randn(B, T, C, device=device, dtype=dtype) for _ in range(3))
    w = torch.rand(B, T, C, device=device) * 7 - 7
    u = torch.randn(C // 64, 64, device=device, dtype=dtype)
    return tuple(t.requires_grad_() for t in (r, k, v, w, u))


def _op(mode: str, grid, backend: str):
    if mode == 'wkv6':
        return lambda r, k, v, w, u: bi_wkv6(r, k, v, w, u, backend=backend)
    if mode == '2d':
        return lambda w, u, k, v: bi_wkv_2d(w, u, k, v, grid, backend=backend)
    if mode == 'sdpa':
        def sdpa(w, u, k, v):
            B, T, C = k.shape
            heads = max(C // 64, 1)
            q_, k_, v_ = (t.view(B, T, heads, C // heads).transpose(1, 2) for t in (k, k, v))
            return F.scaled_dot_product_attention(q_, k_, v_).transpose(1, 2).reshape(B, T, C)
        return sdpa
    order = 'cross' if mode == 'cross' else 'row'
    formula = 'official' if mode == 'official' else 'paper'
    return lambda w, u, k, v: bi_wkv(w, u, k, v, backend=backend, grid=grid, order=order, formula=formula)


def _fwd_and_fwd_bwd(op: Callable, args) -> Dict[str, Callable[[], None]]:
    def fwd():
        with torch.no_grad():
            op(*args)

    def fwd_bwd():
        torch.autograd.grad(op(*args).float().sum(), args, allow_unused=True)

    return {'fwd': fwd, 'fwd_bwd': fwd_bwd}


def _round_robin_medians(fns: Dict[str, Callable[[], None]], sync: Callable[[], None],
                         min_time: float = 3.0, max_rounds: int = 15) -> Dict[str, float]:
    """Median ms of each function after one warm-up call, timed round-robin (one call of each per
    round, at least 5 rounds) so that bursts of load on a shared machine hit all of them alike."""
    for fn in fns.values():
        fn()
    sync()
    times: Dict[str, List[float]] = {name: [] for name in fns}
    start = time.perf_counter()
    for rounds in range(max_rounds):
        if rounds >= 5 and time.perf_counter() - start >= min_time:
            break
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def bench(shapes: List[tuple], device: str, dtype: torch.dtype) -> List[Dict]:
    sync = torch.cuda.synchronize if device == 'cuda' else (lambda: None)
    backend = 'triton' if device == 'cuda' else 'torch'
    rows = []
    for B, H, W, C in shapes:
        T = H * W
        args = op_inputs(B, T, C, dtype, device)
        args6 = wkv6_inputs(B, T, C, dtype, device)
        fns = {(mode, kind): fn for mode in MODES
               for kind, fn in _fwd_and_fwd_bwd(_op(mode, (H, W), backend), args6 if mode == 'wkv6' else args).items()}
        medians = _round_robin_medians(fns, sync)
        for mode in MODES:
            r = {'fwd_ms': medians[mode, 'fwd'], 'fwd_bwd_ms': medians[mode, 'fwd_bwd']}
            row = dict(B=B, grid=f'{H}x{W}', C=C, dtype=str(dtype).replace('torch.', ''), op=mode, **r)
            if device == 'cuda':
                elt = args[2].element_size()
                fwd, fwd_bwd = TRAFFIC.get(mode, TRAFFIC_BI_WKV)
                row['fwd_GBps'] = fwd * B * T * C * elt / r['fwd_ms'] / 1e6
                row['fwd_bwd_GBps'] = fwd_bwd * B * T * C * elt / r['fwd_bwd_ms'] / 1e6
            rows.append(row)
        sdpa_ms = rows[-1]['fwd_bwd_ms']
        for row in rows[-len(MODES):]:
            row['fwd_bwd_over_sdpa'] = row['fwd_bwd_ms'] / sdpa_ms
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', default='benchmark_results/ops.json')
    parser.add_argument('--quick', action='store_true', help='the smallest shape only')
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: torch\'s)')
    add_debug_flag(parser)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cpu_shapes = [(8, 14, 14, 192), (8, 32, 32, 192), (2, 64, 64, 192)]
    machine = dict(machine_info(), load_avg_1m_before=os.getloadavg()[0])
    results = {'machine': machine,
               'op_cpu': bench(cpu_shapes[:1] if args.quick else cpu_shapes, 'cpu', torch.float32)}
    if torch.cuda.is_available():
        cuda_shapes = [(8, 64, 64, 384), (8, 128, 128, 384)]
        results['op_cuda'] = bench(cuda_shapes, 'cuda', torch.bfloat16) + bench(cuda_shapes[:1], 'cuda', torch.float32)
    else:
        results['op_cuda'] = 'not measured: no CUDA device'
    machine['load_avg_1m_after'] = os.getloadavg()[0]
    report(results, args.out)


if __name__ == '__main__':
    run_tool(main)
