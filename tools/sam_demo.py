"""Prompt RWKV-SAM on an image and write an overlay PNG (masks, points and boxes drawn with OpenCV).

    python tools/sam_demo.py --image IMG [--checkpoint CKPT] [--point x,y[,label] ...]
        [--box x0,y0,x1,y1] [--auto] --out out.png [--config CONFIG] [--multimask]
    python tools/sam_demo.py --onnx ENCODER DECODER --image IMG [--point ...] [--box ...] --out out.png

The architecture comes from ``--config`` (default: the toy config). Without ``--checkpoint`` the
config's last checkpoint is used, and trained first with ``tools/train.py`` if there is none
(about 13 minutes on a 2-core CPU), so a newcomer sees real masks. Points are pixel coordinates
with label 1 (foreground, default) or 0 (background); ``--auto`` segments everything.

``--onnx`` runs the two files ``tools/export_onnx.py MODEL --out ENCODER --decoder-out DECODER`` writes in
onnxruntime, through
``vision_rwkv_runtime`` (no torch import on that path): the same masks and the same overlay as the PyTorch model.
"""
import argparse
import os.path as osp
import subprocess
import sys

import cv2
import numpy as np

from vision_rwkv_runtime.cli import add_debug_flag, run_tool
from vision_rwkv_runtime.errors import UserError
from vision_rwkv_runtime.files import atomic_write
from vision_rwkv_runtime.image import read_image, to_rgb_uint8

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOY_CONFIG = osp.join(ROOT, 'configs', 'sam', 'rwkv_sam_tiny_toy_shapes.py')
COLOURS = np.array([(255, 56, 56), (56, 56, 255), (56, 200, 56), (255, 157, 151), (255, 178, 29),
                    (207, 210, 49), (72, 249, 10), (146, 204, 23), (61, 219, 134), (26, 147, 52)], dtype=np.uint8)


def numbers(text: str, count: tuple, name: str) -> list:
    try:
        values = [float(v) for v in text.split(',')]
    except ValueError:
        raise argparse.ArgumentTypeError(f'{name} must be comma-separated numbers, got {text!r}') from None
    if len(values) not in count:
        raise argparse.ArgumentTypeError(f'{name} takes {" or ".join(map(str, count))} numbers, got {text!r}')
    return values


def parse_args():
    parser = argparse.ArgumentParser(description='Prompt RWKV-SAM and write an overlay PNG')
    parser.add_argument('--image', required=True, help='image file (any PIL/OpenCV format)')
    parser.add_argument('--checkpoint', help='weights; default: the config\'s last checkpoint (trained if absent)')
    parser.add_argument('--onnx', nargs=2, metavar=('ENCODER', 'DECODER'),
                        help='run exported files in onnxruntime instead (tools/export_onnx.py '
                        '--decoder-out), without torch')
    parser.add_argument('--config', default=TOY_CONFIG, help='training config that defines the model')
    parser.add_argument('--point', action='append', default=[], type=lambda t: numbers(t, (2, 3), '--point'),
                        help='x,y[,label] (label 1 foreground, 0 background); repeatable')
    parser.add_argument('--box', type=lambda t: numbers(t, (4,), '--box'), help='x0,y0,x1,y1')
    parser.add_argument('--auto', action='store_true', help='segment everything (automatic mask generator)')
    parser.add_argument('--multimask', action='store_true', help='draw all three masks of an ambiguous prompt')
    parser.add_argument('--iou-thresh', type=float, default=0.5,
                        help='--auto: keep masks whose predicted IoU is at least this (segment-anything: 0.88)')
    parser.add_argument('--out', required=True, help='overlay PNG to write')
    add_debug_flag(parser)
    args = parser.parse_args()
    if not args.out.lower().endswith('.png'):
        parser.error(f'--out {args.out} must end in .png')
    if not (args.point or args.box or args.auto):
        parser.error('give a prompt (--point and/or --box) or --auto')
    if args.onnx and (args.auto or args.checkpoint):
        parser.error('--onnx runs the exported files on prompts: --auto and --checkpoint need the PyTorch model')
    return args


def model_from_config(config: str, checkpoint: str):
    from mmengine.config import Config

    from vision_rwkv.sam import build_rwkv_sam_from_cfg
    return build_rwkv_sam_from_cfg(Config.fromfile(config).model, checkpoint)


def default_checkpoint(config: str) -> str:
    """The last checkpoint of ``config``'s default work dir; trains the config first if there is none."""
    work_dir = osp.join(ROOT, 'work_dirs', osp.splitext(osp.basename(config))[0])
    last = osp.join(work_dir, 'last_checkpoint')
    if not osp.isfile(last):
        print(f'no checkpoint in {work_dir}: training {config} first (a few minutes)', flush=True)
        training = subprocess.run([sys.executable, osp.join(ROOT, 'tools', 'train.py'), config,
                                   '--work-dir', work_dir], cwd=ROOT)
        if training.returncode:
            raise UserError(f'training {config} failed (exit code {training.returncode}, its error is above); '
                            'fix it or pass --checkpoint')
    with open(last) as f:
        return f.read().strip()


def draw(image: np.ndarray, masks: list, points: list, box) -> np.ndarray:
    """Masks (filled, 50 %, with contours), points (green / red discs) and the box on a BGR copy."""
    canvas = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    for i, mask in enumerate(masks):
        colour = COLOURS[i % len(COLOURS)][::-1].tolist()
        layer = canvas.copy()
        layer[mask] = colour
        canvas = cv2.addWeighted(canvas, 0.5, layer, 0.5, 0.0)
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(canvas, contours, -1, colour, 1)
    radius = max(2, round(max(image.shape[:2]) / 100))
    for x, y, label in points:
        cv2.circle(canvas, (round(x), round(y)), radius, (0, 200, 0) if label else (0, 0, 255), -1)
        cv2.circle(canvas, (round(x), round(y)), radius, (255, 255, 255), 1)
    if box is not None:
        cv2.rectangle(canvas, (round(box[0]), round(box[1])), (round(box[2]), round(box[3])), (255, 200, 0), 2)
    return canvas


def predictor_of(args):
    """The onnxruntime predictor of ``--onnx``, or the PyTorch one of ``--config`` / ``--checkpoint``."""
    if args.onnx:
        from vision_rwkv_runtime import OnnxSamPredictor
        return OnnxSamPredictor(*args.onnx)
    from vision_rwkv.sam import RWKVSamPredictor
    return RWKVSamPredictor(model_from_config(args.config, args.checkpoint or default_checkpoint(args.config)))


def mask_generator(sam, iou_thresh: float):
    """The demos' automatic mask generator: a 16 × 16 point grid, masks of predicted IoU >= ``iou_thresh``."""
    from vision_rwkv.sam import RWKVSamAutomaticMaskGenerator
    return RWKVSamAutomaticMaskGenerator(sam, points_per_side=16, pred_iou_thresh=iou_thresh,
                                         stability_score_thresh=0.8)


def segment_everything(args, image: np.ndarray) -> list:
    sam = model_from_config(args.config, args.checkpoint or default_checkpoint(args.config))
    records = mask_generator(sam, args.iou_thresh).generate(image)
    print(f'{len(records)} masks; predicted IoU: ' + ' '.join(f'{r["predicted_iou"]:.2f}' for r in records))
    return [r['segmentation'] for r in records]


def segment_prompts(args, image: np.ndarray, points: list) -> list:
    predictor = predictor_of(args)
    predictor.set_image(image)
    coords = np.array([p[:2] for p in points]) if points else None
    labels = np.array([p[2] for p in points]) if points else None
    multimask = args.multimask or (len(points) == 1 and args.box is None)
    masks, scores, _ = predictor.predict(point_coords=coords, point_labels=labels, box=args.box,
                                         multimask_output=multimask)
    if not args.multimask:
        best = int(scores.argmax())
        masks, scores = masks[best:best + 1], scores[best:best + 1]
    print('predicted IoU: ' + ' '.join(f'{s:.3f}' for s in scores))
    return list(masks)


def main():
    args = parse_args()
    image = read_image(args.image)
    points = [(p[0], p[1], int(p[2]) if len(p) == 3 else 1) for p in args.point]
    masks = segment_everything(args, image) if args.auto else segment_prompts(args, image, points)
    ok, png = cv2.imencode('.png', draw(to_rgb_uint8(image), masks, points, args.box))
    if not ok:
        raise ValueError(f'OpenCV could not encode {args.out}')
    atomic_write(png.tobytes(), args.out)
    print(f'{args.out}: {len(masks)} masks on {image.shape[1]}×{image.shape[0]}', flush=True)


if __name__ == '__main__':
    run_tool(main)
