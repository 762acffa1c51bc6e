"""Op-level benchmark of the Bi-WKV family on image grids: raster, cross and 2D against SDPA.

For each (B, H×W, C): forward and forward+backward time of bi_wkv in raster order, in cross order,
bi_wkv_2d, and torch's scaled_dot_product_attention at the same B, T, C (C / 64 heads of 64).
CPU tensors run the PyTorch paths; on CUDA the Triton kernels run (raster, cross and 2D) and
the table adds the minimum bytes moved and GB/s. Prints markdown tables, writes JSON.

Usage: python tools/benchmark_ops.py [--out benchmark_results/ops.json] [--quick]
"""
import argparse
from typing import Dict, List

import torch
import torch.nn.functional as F

from benchmark import fwd_and_fwdbwd, machine_info, op_inputs, report
from vision_rwkv.kernels import bi_wkv, bi_wkv_2d

MODES = ('raster', 'cross', '2d', 'sdpa')


def _op(mode: str, grid, backend: str):
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
    return lambda w, u, k, v: bi_wkv(w, u, k, v, backend=backend, grid=grid, order=order)


def bench(shapes: List[tuple], device: str, dtype: torch.dtype) -> List[Dict]:
    sync = torch.cuda.synchronize if device == 'cuda' else (lambda: None)
    backend = 'triton' if device == 'cuda' else 'torch'
    rows = []
    for B, H, W, C in shapes:
        T = H * W
        args = op_inputs(B, T, C, dtype, device)
        for mode in MODES:
            r = fwd_and_fwdbwd(_op(mode, (H, W), backend), args, sync, max_reps=10)
            row = dict(B=B, grid=f'{H}x{W}', C=C, dtype=str(dtype).replace('torch.', ''), op=mode, **r)
            if device == 'cuda':
                elt = args[2].element_size()  # minimum traffic: read k, v, write y; bwd: gy in, gk, gv out
                row['fwd_GBps'] = 3 * B * T * C * elt / r['fwd_ms'] / 1e6
                row['fwd_bwd_GBps'] = 8 * B * T * C * elt / r['fwd_bwd_ms'] / 1e6
            rows.append(row)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', default='benchmark_results/ops.json')
    parser.add_argument('--quick', action='store_true', help='the smallest shape only')
    args = parser.parse_args()
    cpu_shapes = [(8, 14, 14, 192), (8, 32, 32, 192), (2, 64, 64, 192)]
    results = {'machine': machine_info(),
               'op_cpu': bench(cpu_shapes[:1] if args.quick else cpu_shapes, 'cpu', torch.float32)}
    if torch.cuda.is_available():
        cuda_shapes = [(8, 64, 64, 384), (8, 128, 128, 384)]
        results['op_cuda'] = bench(cuda_shapes, 'cuda', torch.bfloat16) + bench(cuda_shapes[:1], 'cuda', torch.float32)
    else:
        results['op_cuda'] = 'not measured: no CUDA device'
    report(results, args.out)


if __name__ == '__main__':
    main()
