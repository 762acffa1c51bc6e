"""ONNX deployment benchmark on the CPU: onnxruntime against PyTorch eager, on the same inputs and threads.

Rows (random weights, seed 0, float32, batch 1):
- VRWKV-T (``vrwkv_tiny_patch16_224``, exported once at 224 with dynamic sizes) at 224 and 448;
- the RWKV-SAM tiny image encoder at 1024 (eager: ``RWKVSamPredictor.set_image``; onnxruntime:
  ``OnnxSamPredictor.set_image``, which also computes the image-only part of the decoder's fusion);
- the RWKV-SAM tiny decoder per prompt at 1024 (one point, three masks, upscaled to the 512×512 photo): eager
  ``RWKVSamPredictor.predict`` against ``OnnxSamPredictor.predict``;
- segment-anything's own decoder at 1024 for reference: its ``SamOnnxModel`` (exported with the TorchScript exporter,
  as its ``scripts/export_onnx_model.py`` does), eager against onnxruntime, same prompt and output size;
- the same decoder on the toy model (img_size 128, 4 RWKV blocks: ``configs/sam/rwkv_sam_tiny_toy_shapes.py``).

Each latency is the median of repeated calls after a warm-up (``benchmark.measure``); each row also reports the
relative error of onnxruntime's output against PyTorch's. The exports are written to ``--work-dir``; ``--reuse``
times the files found there instead when their weights fingerprint matches (to re-time without re-exporting; the
fingerprint does not see changes to the export code).

Usage: python tools/benchmark_export.py [--out benchmark_results/export.json] [--threads 2]
           [--work-dir work_dirs/benchmark_export] [--reuse] [--quick]
"""
import argparse
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np
import torch

import timm
from vision_rwkv.cli import add_debug_flag, run_tool
from vision_rwkv.deploy import export_onnx, export_sam_onnx, onnx_metadata, onnx_session, state_fingerprint
from vision_rwkv.sam import RWKVSamPredictor, build_rwkv_sam
from vision_rwkv_runtime import OnnxSamPredictor
from vision_rwkv_runtime.onnx import relative_error
from benchmark import machine_info, measure, report


def photo() -> np.ndarray:
    """scikit-image's 512×512 astronaut (RGB uint8)."""
    from skimage import data

    return data.astronaut()


def fresh(paths: List[Path], model: torch.nn.Module, export: Callable[[], None], reuse: bool) -> None:
    """Run ``export`` (which writes ``paths``) unless ``reuse`` and every path holds ``model``'s weights already."""
    fingerprint = state_fingerprint(model)
    if not reuse or not all(p.is_file() and onnx_metadata(p)['metadata'].get('vision_rwkv.fingerprint') == fingerprint
                            for p in paths):
        print(f'exporting {", ".join(map(str, paths))} (minutes)', flush=True)
        export()


def row(model: str, what: str, size: str, eager_ms: float, ort_ms: float, rel_err: float) -> Dict:
    return dict(model=model, what=what, size=size, eager_ms=eager_ms, onnxruntime_ms=ort_ms,
                speedup=eager_ms / ort_ms, rel_err=rel_err)


def bench_backbone(work_dir: Path, threads: int, sizes: List[int], reps: int, reuse: bool) -> List[Dict]:
    torch.manual_seed(0)
    model = timm.create_model('vrwkv_tiny_patch16_224', dynamic_img_size=True).eval()
    path = work_dir / 'vrwkv_t.onnx'
    fresh([path], model, lambda: export_onnx(model, path, img_size=224), reuse)
    session = onnx_session(path, threads)
    rows = []
    for size in sizes:
        x = torch.randn(1, 3, size, size)
        with torch.inference_mode():
            ref = model(x).numpy()
            eager = measure(lambda: model(x), max_reps=reps)
        feed = {'images': x.numpy()}
        ort = measure(lambda: session.run(None, feed), max_reps=reps)
        rows.append(row('VRWKV-T', 'classifier forward', f'{size}²', eager, ort,
                        relative_error(session.run(None, feed)[0], ref)))
    return rows


def sam_pair(sam, work_dir: Path, slug: str, threads: int,
             reuse: bool) -> Tuple[RWKVSamPredictor, OnnxSamPredictor]:
    """The PyTorch and the onnxruntime predictor of ``sam`` (exported to ``work_dir/<slug>_{encoder,decoder}.onnx``)."""
    encoder, decoder = work_dir / f'{slug}_encoder.onnx', work_dir / f'{slug}_decoder.onnx'
    fresh([encoder, decoder], sam, lambda: export_sam_onnx(sam, encoder, decoder), reuse)
    return RWKVSamPredictor(sam), OnnxSamPredictor(encoder, decoder, threads)


def bench_sam(name: str, slug: str, sam, work_dir: Path, threads: int, reps: int, reuse: bool) -> List[Dict]:
    eager, ort = sam_pair(sam, work_dir, slug, threads, reuse)
    image = photo()
    size = f'{sam.image_encoder.img_size}²'
    rows = []
    with torch.inference_mode():
        eager.set_image(image)
        ort.set_image(image)
        rows.append(row(name, 'image encoder (set_image)', size, measure(lambda: eager.set_image(image), max_reps=reps),
                        measure(lambda: ort.set_image(image), max_reps=reps),
                        relative_error(ort.get_image_embedding(), eager.get_image_embedding().numpy())))
        prompt = dict(point_coords=np.array([[256.0, 200.0]]), point_labels=np.array([1]), return_logits=True)
        ref = eager.predict(**prompt)[0]
        out = ort.predict(**prompt)[0]
        rows.append(row(name, 'decoder per prompt (predict)', size, measure(lambda: eager.predict(**prompt),
                                                                             max_reps=reps),
                        measure(lambda: ort.predict(**prompt), max_reps=reps), relative_error(out, ref)))
    return rows


def bench_sam_reference_decoder(work_dir: Path, threads: int, reps: int) -> List[Dict]:
    """segment-anything's ``SamOnnxModel`` (ViT-B SAM, random weights; the decoder is the same in every SAM) at a
    64x64 embedding: one point and its padding point, four masks upscaled to 512x512."""
    from segment_anything import sam_model_registry
    from segment_anything.utils.onnx import SamOnnxModel

    torch.manual_seed(0)
    model = SamOnnxModel(sam_model_registry['vit_b'](), return_single_mask=False).eval()
    names = ['image_embeddings', 'point_coords', 'point_labels', 'mask_input', 'has_mask_input', 'orig_im_size']
    inputs = (torch.randn(1, 256, 64, 64), torch.tensor([[[512.0, 400.0], [0.0, 0.0]]]), torch.tensor([[1.0, -1.0]]),
              torch.zeros(1, 1, 256, 256), torch.zeros(1), torch.tensor([512.0, 512.0]))
    path = work_dir / 'segment_anything_decoder.onnx'
    torch.onnx.export(model, inputs, str(path), dynamo=False, opset_version=17, input_names=names,
                      output_names=['masks', 'iou_predictions', 'low_res_masks'],
                      dynamic_axes={'point_coords': {1: 'num_points'}, 'point_labels': {1: 'num_points'}})
    session = onnx_session(path, threads)
    feed = {name: x.numpy() for name, x in zip(names, inputs)}
    with torch.inference_mode():
        ref = model(*inputs)[0].numpy()
        eager = measure(lambda: model(*inputs), max_reps=reps)
    ort = measure(lambda: session.run(None, feed), max_reps=reps)
    return [row('segment-anything (reference)', 'decoder per prompt (SamOnnxModel)', '1024²', eager, ort,
                relative_error(session.run(None, feed)[0], ref))]


def main():
    parser = argparse.ArgumentParser(description='onnxruntime against PyTorch eager on the CPU')
    parser.add_argument('--out', default='benchmark_results/export.json')
    parser.add_argument('--work-dir', default='work_dirs/benchmark_export', help='exported files, reused')
    parser.add_argument('--threads', type=int, default=torch.get_num_threads(), help='threads of both runtimes')
    parser.add_argument('--reuse', action='store_true', help='time the files of an earlier run (same weights)')
    parser.add_argument('--quick', action='store_true', help='small models and sizes (a smoke test)')
    add_debug_flag(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work_dir = Path(args.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    reps = 3 if args.quick else 20
    torch.manual_seed(0)
    rows = []
    if not args.quick:
        rows += bench_backbone(work_dir, args.threads, [224, 448], reps, args.reuse)
        torch.manual_seed(0)
        rows += bench_sam('RWKV-SAM tiny', 'sam_tiny', build_rwkv_sam('tiny', img_size=1024), work_dir,
                          args.threads, reps, args.reuse)
        rows += bench_sam_reference_decoder(work_dir, args.threads, reps)
    torch.manual_seed(0)
    rows += bench_sam('RWKV-SAM toy (tiny, 4 blocks)', 'sam_toy', build_rwkv_sam('tiny', img_size=128, depth=4),
                      work_dir, args.threads, reps, args.reuse)
    report({'machine': dict(machine_info(), onnxruntime=__import__('onnxruntime').__version__),
            'onnxruntime_vs_eager': rows}, args.out)


if __name__ == '__main__':
    run_tool(main)
