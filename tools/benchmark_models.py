"""Model-level benchmark: VRWKV-T/S in each wkv_mode and VRWKV6-T/S against timm ViT-T/S (SDPA attention).

CPU inference: forward latency at batch 1 (224, 448 and 896 for T; 224 and 448 for S), the models of
a family timed round-robin (median of up to 15 rounds) so that load bursts hit them alike.
CPU training: one float32 training step (forward, cross-entropy, backward; no optimizer) of VRWKV-T,
VRWKV6-T and ViT-T at batch 8, 224x224, timed round-robin the same way.
CUDA: bf16 forward images/s and peak memory at 224, 512, 1024, 2048 (batch 8 at 224, fewer
above), each model alone. Prints markdown tables, writes JSON.

Usage: python tools/benchmark_models.py [--section all|inference|train] [--out PATH] [--quick] [--threads N]
(--out defaults to benchmark_results/models.json, or models_<section>.json for one section; the JSON
records the load average before and after, on a shared machine)
"""
import argparse
import os
import statistics
import time
from functools import partial
from typing import Callable, Dict, List

import timm
import torch
import torch.nn.functional as F

import vision_rwkv  # noqa: F401  (registers the VRWKV models)
from vision_rwkv.cli import add_debug_flag, run_tool
from benchmark import machine_info, measure, report

FAMILIES = {
    'tiny': ('vit_tiny_patch16_224', 'vrwkv_tiny_patch16_224', 'vrwkvcross_tiny_patch16_224',
             'vrwkv2d_tiny_patch16_224', 'vrwkv6_tiny_patch16_224'),
    'small': ('vit_small_patch16_224', 'vrwkv_small_patch16_224', 'vrwkvcross_small_patch16_224',
              'vrwkv2d_small_patch16_224', 'vrwkv6_small_patch16_224'),
}


def _create(name: str, size: int, device: str, dtype: torch.dtype):
    return timm.create_model(name, img_size=size, num_classes=1000).to(device=device, dtype=dtype).eval()


def _interleaved_medians(fns: Dict[str, Callable[[], None]], min_time: float = 3.0, max_rounds: int = 15,
                         warmup: int = 2) -> Dict[str, float]:
    """Median ms per function, timed round-robin (one call of each per round) so that the machine's
    drift and bursts of load hit every model alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: Dict[str, List[float]] = {name: [] for name in fns}
    start = time.perf_counter()
    for rounds in range(max_rounds):
        if rounds >= 3 and time.perf_counter() - start >= min_time:
            break
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def bench_cpu(plan: Dict[str, List[int]]) -> List[Dict]:
    """Batch-1 forward latency of every model of a family, measured interleaved at each size."""
    rows = []
    for family, sizes in plan.items():
        for size in sizes:
            x = torch.randn(1, 3, size, size)
            models = {name.split('_')[0]: _create(name, size, 'cpu', torch.float32) for name in FAMILIES[family]}
            with torch.inference_mode():
                medians = _interleaved_medians({name: partial(model, x) for name, model in models.items()})
            row = dict(family=family, img_size=size, **{f'{name}_ms': ms for name, ms in medians.items()})
            row['raster_over_vit'] = row['vrwkv_ms'] / row['vit_ms']
            row['v6_over_raster'] = row['vrwkv6_ms'] / row['vrwkv_ms']
            rows.append(row)
    return rows


#: (label, timm name) of the models whose training steps are compared
TRAIN_MODELS = (('vit', 'vit_tiny_patch16_224'), ('vrwkv', 'vrwkv_tiny_patch16_224'),
                ('vrwkv6', 'vrwkv6_tiny_patch16_224'))


def _train_step(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor) -> None:
    """Forward, cross-entropy and backward in training mode; gradients are dropped, not accumulated."""
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), target).backward()


def bench_cpu_train(batch: int = 8, size: int = 224) -> List[Dict]:
    """Median ms of one training step of each of TRAIN_MODELS, measured interleaved."""
    x = torch.randn(batch, 3, size, size)
    target = torch.randint(0, 1000, (batch,))
    models = {label: timm.create_model(name, img_size=size, num_classes=1000).train()
              for label, name in TRAIN_MODELS}
    medians = _interleaved_medians({label: partial(_train_step, model, x, target)
                                    for label, model in models.items()}, min_time=10.0)
    row = dict(family='tiny', img_size=size, batch=batch, **{f'{label}_ms': ms for label, ms in medians.items()})
    row['vrwkv_over_vit'] = row['vrwkv_ms'] / row['vit_ms']
    row['vrwkv6_over_vrwkv'] = row['vrwkv6_ms'] / row['vrwkv_ms']
    return [row]


def bench_cuda(sizes: List[int]) -> List[Dict]:
    rows = []
    for family, names in FAMILIES.items():
        for size in sizes:
            batch = max(1, 8 * (224 // size) ** 2) if size <= 224 else max(1, 8 * 224 * 224 // (size * size))
            x = torch.randn(batch, 3, size, size, device='cuda', dtype=torch.bfloat16)
            for name in names:
                model = _create(name, size, 'cuda', torch.bfloat16)
                torch.cuda.reset_peak_memory_stats()
                with torch.inference_mode():
                    ms = measure(lambda m=model: m(x), torch.cuda.synchronize, min_time=1.0, max_reps=20)
                rows.append(dict(family=family, model=name, img_size=size, batch=batch,
                                 images_per_s=batch / ms * 1e3,
                                 peak_mem_GiB=torch.cuda.max_memory_allocated() / 2 ** 30))
                del model
                torch.cuda.empty_cache()
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--section', choices=('all', 'inference', 'train'), default='all',
                        help='inference (CPU and CUDA forward tables), train (CPU training step) or both')
    parser.add_argument('--out', default=None)
    parser.add_argument('--quick', action='store_true', help='inference: VRWKV-T family at 224 only')
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: torch\'s)')
    add_debug_flag(parser)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or ('benchmark_results/models.json' if args.section == 'all'
                       else f'benchmark_results/models_{args.section}.json')
    results = {'machine': dict(machine_info(), load_avg_1m_before=os.getloadavg()[0])}
    if args.section in ('all', 'inference'):
        plan = {'tiny': [224]} if args.quick else {'tiny': [224, 448, 896], 'small': [224, 448]}
        results['model_cpu'] = bench_cpu(plan)
        results['model_cuda'] = (bench_cuda([224, 512, 1024, 2048]) if torch.cuda.is_available()
                                 else 'not measured: no CUDA device')
    if args.section in ('all', 'train'):
        results['train_cpu'] = bench_cpu_train()
    results['machine']['load_avg_1m_after'] = os.getloadavg()[0]
    report(results, out)


if __name__ == '__main__':
    run_tool(main)
