"""Image-encoder benchmark: RWKV-SAM tiny/small/base against segment-anything's ViT-B image encoder.

Both with random weights, on the same machine, one (B, 3, S, S) batch at S = 1024 by default.

CPU: float32 forward latency (batch 1) and the peak resident memory the forward adds, each model
     measured in a fresh process (the peak RSS of a process never goes down).
CUDA: float32 and bfloat16 forward latency, images/s and peak allocated memory (batch 1 and 4).

Prints markdown tables and writes JSON.

Usage: python tools/benchmark_sam.py [--out benchmark_results/sam_encoder.json] [--sizes 1024]
           [--models tiny,small,base,sam_vit_b] [--quick]
"""
import argparse
import multiprocessing as mp
import resource
from functools import partial
from typing import Dict, List

import torch

from vision_rwkv.cli import add_debug_flag, run_tool
from benchmark import machine_info, measure, report

MODELS = ('tiny', 'small', 'base', 'sam_vit_b')


def build_encoder(name: str, size: int) -> torch.nn.Module:
    """A randomly initialised image encoder for (B, 3, size, size) inputs."""
    if name == 'sam_vit_b':
        from segment_anything.modeling import ImageEncoderViT

        # segment-anything's build_sam_vit_b encoder, with img_size free so that --quick can shrink it
        return ImageEncoderViT(depth=12, embed_dim=768, img_size=size, mlp_ratio=4,
                               norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=12, patch_size=16,
                               qkv_bias=True, use_rel_pos=True, global_attn_indexes=(2, 5, 8, 11), window_size=14,
                               out_chans=256)
    from vision_rwkv.sam.modeling.image_encoder import build_image_encoder

    return build_image_encoder(name, img_size=size)


def parameters_m(model: torch.nn.Module) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _cpu_row(name: str, size: int, threads: int, queue) -> None:
    """Child process: build, measure the latency, then report the forward's added peak RSS."""
    torch.set_num_threads(threads)
    model = build_encoder(name, size).eval()
    x = torch.randn(1, 3, size, size)
    before = _peak_rss_mib()
    with torch.inference_mode():
        ms = measure(lambda: model(x), min_time=2.0, max_reps=5)
    queue.put(dict(model=name, img_size=size, params_M=parameters_m(model), latency_ms=ms,
                   forward_peak_MiB=_peak_rss_mib() - before))


def bench_cpu(models: List[str], sizes: List[int]) -> List[Dict]:
    rows = []
    context = mp.get_context('spawn')
    threads = torch.get_num_threads()
    for size in sizes:
        for name in models:
            queue = context.Queue()
            child = context.Process(target=_cpu_row, args=(name, size, threads, queue))
            child.start()
            row = queue.get()
            child.join()
            rows.append(row)
        _add_ratio(rows[-len(models):], 'latency_ms')
    return rows


def bench_cuda(models: List[str], sizes: List[int]) -> List[Dict]:
    rows = []
    for size in sizes:
        for dtype in (torch.float32, torch.bfloat16):
            for batch in (1, 4):
                group = []
                for name in models:
                    model = build_encoder(name, size).to('cuda', dtype).eval()
                    x = torch.randn(batch, 3, size, size, device='cuda', dtype=dtype)
                    torch.cuda.reset_peak_memory_stats()
                    with torch.inference_mode():
                        ms = measure(lambda m=model, x=x: m(x), torch.cuda.synchronize, min_time=1.0, max_reps=20)
                    group.append(dict(model=name, img_size=size, dtype=str(dtype).replace('torch.', ''), batch=batch,
                                      latency_ms=ms, images_per_s=batch / ms * 1e3,
                                      peak_mem_GiB=torch.cuda.max_memory_allocated() / 2 ** 30))
                    del model, x
                    torch.cuda.empty_cache()
                _add_ratio(group, 'latency_ms')
                rows += group
    return rows


def _add_ratio(group: List[Dict], key: str) -> None:
    """Each row's ``key`` over segment-anything ViT-B's in the same group (if it was measured)."""
    reference = next((r[key] for r in group if r['model'] == 'sam_vit_b'), None)
    for row in group:
        row[f'{key.split("_")[0]}_vs_vit_b'] = row[key] / reference if reference else float('nan')


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', default='benchmark_results/sam_encoder.json')
    parser.add_argument('--sizes', default='1024', help='comma-separated input sides (multiples of 16)')
    parser.add_argument('--models', default=','.join(MODELS), help=f'comma-separated, from {",".join(MODELS)}')
    parser.add_argument('--quick', action='store_true', help='tiny against ViT-B at 256 (a smoke run)')
    add_debug_flag(parser)
    args = parser.parse_args()
    models = ['tiny', 'sam_vit_b'] if args.quick else args.models.split(',')
    sizes = [256] if args.quick else [int(s) for s in args.sizes.split(',')]
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        parser.error(f'unknown models {unknown}; choose from {",".join(MODELS)}')
    results = {'machine': machine_info(), 'sam_encoder_cpu': bench_cpu(models, sizes),
               'sam_encoder_cuda': bench_cuda(models, sizes) if torch.cuda.is_available()
               else 'not measured: no CUDA device'}
    report(results, args.out)


if __name__ == '__main__':
    run_tool(main)
