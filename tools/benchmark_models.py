"""Model-level benchmark: VRWKV-T/S in each wkv_mode against timm ViT-T/S (SDPA attention).

CPU: forward latency at batch 1 (224, 448 and 896 for T; 224 and 448 for S), the models of a
family timed round-robin (median of up to 15 rounds) so that load bursts hit them alike.
CUDA: bf16 forward images/s and peak memory at 224, 512, 1024, 2048 (batch 8 at 224, fewer
above), each model alone. Prints markdown tables, writes JSON.

Usage: python tools/benchmark_models.py [--out benchmark_results/models.json] [--quick]
"""
import argparse
import statistics
import time
from functools import partial
from typing import Callable, Dict, List

import timm
import torch

import vision_rwkv  # noqa: F401  (registers the VRWKV models)
from benchmark import machine_info, measure, report

FAMILIES = {
    'tiny': ('vit_tiny_patch16_224', 'vrwkv_tiny_patch16_224', 'vrwkvcross_tiny_patch16_224',
             'vrwkv2d_tiny_patch16_224'),
    'small': ('vit_small_patch16_224', 'vrwkv_small_patch16_224', 'vrwkvcross_small_patch16_224',
              'vrwkv2d_small_patch16_224'),
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
            rows.append(row)
    return rows


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
    parser.add_argument('--out', default='benchmark_results/models.json')
    parser.add_argument('--quick', action='store_true', help='VRWKV-T family at 224 only')
    args = parser.parse_args()
    plan = {'tiny': [224]} if args.quick else {'tiny': [224, 448, 896], 'small': [224, 448]}
    results = {'machine': machine_info(), 'model_cpu': bench_cpu(plan),
               'model_cuda': bench_cuda([224, 512, 1024, 2048]) if torch.cuda.is_available()
               else 'not measured: no CUDA device'}
    report(results, args.out)


if __name__ == '__main__':
    main()
