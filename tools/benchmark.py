"""Benchmark Bi-WKV and VRWKV: prints markdown tables and writes JSON.

Sections:
  op_cpu     Bi-WKV PyTorch path vs the naive O(T^2) float64 reference, forward and forward+backward.
  op_cpu_model_shape  the PyTorch path alone at a model-like shape (B=8, C=192).
  model_cpu  VRWKV-T vs timm vit_tiny_patch16_224 forward latency (batch 1) at 224 and 448.
  op_cuda    Triton kernels, time and effective bandwidth (only when a CUDA device is present).

Usage: python tools/benchmark.py [--out benchmark_results/benchmark.json] [--quick]
"""
import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch

import timm
import vision_rwkv  # noqa: F401  (registers the VRWKV models)
from vision_rwkv.cli import add_debug_flag, run_tool
from vision_rwkv.kernels import bi_wkv, bi_wkv_reference


def measure(fn: Callable[[], None], sync: Callable[[], None] = lambda: None,
            min_time: float = 1.0, max_reps: int = 20) -> float:
    """Median wall time of ``fn`` in milliseconds (one warm-up call, then up to ``max_reps``)."""
    fn()
    sync()
    times: List[float] = []
    start = time.perf_counter()
    while len(times) < max_reps and (not times or time.perf_counter() - start < min_time):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def op_inputs(B: int, T: int, C: int, dtype=torch.float32, device='cpu'):
    w = (torch.randn(C, device=device) * 5 / T).requires_grad_()
    u = (torch.randn(C, device=device) / T).requires_grad_()
    k = torch.randn(B, T, C, device=device, dtype=dtype).requires_grad_()
    v = torch.randn(B, T, C, device=device, dtype=dtype).requires_grad_()
    return w, u, k, v


def fwd_and_fwdbwd(op: Callable, args, sync=lambda: None, **kw) -> Dict[str, float]:
    def fwd():
        with torch.no_grad():
            op(*args)

    def fwd_bwd():
        y = op(*args)
        torch.autograd.grad(y.float().sum(), args, allow_unused=True)

    return {'fwd_ms': measure(fwd, sync, **kw), 'fwd_bwd_ms': measure(fwd_bwd, sync, **kw)}


def bench_op_cpu(seq_lens: List[int]) -> List[Dict]:
    rows = []
    B, C = 1, 16
    for T in seq_lens:
        args = op_inputs(B, T, C)
        ours = fwd_and_fwdbwd(lambda *a: bi_wkv(*a, backend='torch'), args)
        naive = fwd_and_fwdbwd(bi_wkv_reference, args, min_time=0.0, max_reps=1 if T > 1024 else 5)
        rows.append(dict(B=B, T=T, C=C, ours_fwd_ms=ours['fwd_ms'], ours_fwd_bwd_ms=ours['fwd_bwd_ms'],
                         naive_fwd_ms=naive['fwd_ms'], naive_fwd_bwd_ms=naive['fwd_bwd_ms'],
                         speedup_fwd=naive['fwd_ms'] / ours['fwd_ms'],
                         speedup_fwd_bwd=naive['fwd_bwd_ms'] / ours['fwd_bwd_ms']))
    return rows


def bench_op_cpu_model_shape(seq_lens: List[int]) -> List[Dict]:
    rows = []
    B, C = 8, 192
    for T in seq_lens:
        r = fwd_and_fwdbwd(lambda *a: bi_wkv(*a, backend='torch'), op_inputs(B, T, C))
        rows.append(dict(B=B, T=T, C=C, **r))
    return rows


def bench_models_cpu(sizes: List[int]) -> List[Dict]:
    rows = []
    for size in sizes:
        x = torch.randn(1, 3, size, size)
        row = dict(img_size=size)
        for label, name in (('vrwkv_t', 'vrwkv_tiny_patch16_224'), ('vit_t', 'vit_tiny_patch16_224')):
            model = timm.create_model(name, img_size=size).eval()
            with torch.inference_mode():
                row[f'{label}_ms'] = measure(lambda: model(x), min_time=2.0)
        row['ratio_vrwkv_over_vit'] = row['vrwkv_t_ms'] / row['vit_t_ms']
        rows.append(row)
    return rows


def bench_op_cuda() -> List[Dict]:
    rows = []
    sync = torch.cuda.synchronize
    B, T, C = 8, 4096, 384
    for dtype in (torch.float32, torch.bfloat16):
        args = op_inputs(B, T, C, dtype, 'cuda')
        r = fwd_and_fwdbwd(lambda *a: bi_wkv(*a, backend='triton'), args, sync)
        elt = args[2].element_size()
        # minimum traffic: forward reads k, v and writes y; backward also reads gy and writes gk, gv
        fwd_bytes = 3 * B * T * C * elt
        fwd_bwd_bytes = fwd_bytes + 5 * B * T * C * elt
        rows.append(dict(B=B, T=T, C=C, dtype=str(dtype).replace('torch.', ''), **r,
                         fwd_GBps=fwd_bytes / r['fwd_ms'] / 1e6, fwd_bwd_GBps=fwd_bwd_bytes / r['fwd_bwd_ms'] / 1e6))
    return rows


def table(rows: List[Dict]) -> str:
    if not rows:
        return '(none)'
    keys = list(rows[0])

    def fmt(v):
        if not isinstance(v, float):
            return str(v)
        return f'{v:.2f}' if v == 0 or abs(v) >= 0.01 else f'{v:.1e}'  # relative errors: 1.2e-06

    lines = ['| ' + ' | '.join(keys) + ' |', '|' + '---|' * len(keys)]
    lines += ['| ' + ' | '.join(fmt(r[k]) for k in keys) + ' |' for r in rows]
    return '\n'.join(lines)


def machine_info() -> Dict:
    return dict(platform=platform.platform(), torch=torch.__version__, threads=torch.get_num_threads(),
                cuda=torch.cuda.get_device_name() if torch.cuda.is_available() else None)


def report(results: Dict, out: str) -> None:
    """Print every section as a markdown table and write the JSON atomically."""
    for section, rows in results.items():
        if section == 'machine':
            print(f'machine: {rows}\n')
            continue
        print(f'## {section}\n')
        print(table(rows) if isinstance(rows, list) else rows)
        print()
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix('.tmp')
    tmp.write_text(json.dumps(results, indent=2))
    tmp.replace(path)
    print(f'wrote {path}')


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', default='benchmark_results/benchmark.json', help='JSON output path')
    parser.add_argument('--quick', action='store_true', help='short sequences and 224 only (smoke run)')
    add_debug_flag(parser)
    args = parser.parse_args()

    seq_lens = [196, 1024] if args.quick else [196, 1024, 4096]
    sizes = [224] if args.quick else [224, 448]
    results = {
        'machine': machine_info(),
        'op_cpu': bench_op_cpu(seq_lens),
        'op_cpu_model_shape': bench_op_cpu_model_shape(seq_lens),
        'model_cpu': bench_models_cpu(sizes),
        'op_cuda': bench_op_cuda() if torch.cuda.is_available() else 'not measured: no CUDA device',
    }
    report(results, args.out)


if __name__ == '__main__':
    run_tool(main)
