"""Model-level benchmark: VRWKV-T/S in each wkv_mode against timm ViT-T/S (SDPA attention).

CPU: forward latency at batch 1 (224, 448 and 896 for T; 224 and 448 for S).
CUDA: bf16 forward images/s and peak memory at 224, 512, 1024, 2048 (batch 8 at 224, fewer
above), each model alone. Prints markdown tables, writes JSON.

Usage: python tools/benchmark_models.py [--out benchmark_results/models.json] [--quick]
"""
import argparse
from typing import Dict, List

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


def bench_cpu(plan: Dict[str, List[int]]) -> List[Dict]:
    rows = []
    for family, sizes in plan.items():
        for size in sizes:
            x = torch.randn(1, 3, size, size)
            row = dict(family=family, img_size=size)
            for name in FAMILIES[family]:
                model = _create(name, size, 'cpu', torch.float32)
                with torch.inference_mode():
                    row[f'{name.split("_")[0]}_ms'] = measure(lambda: model(x), min_time=1.0, max_reps=10)
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
