"""Segment an image with a segmentation config and checkpoint; write a colour overlay PNG (OpenCV).

    python tools/segment.py CONFIG CHECKPOINT IMAGE --out overlay.png [--opacity 0.5] [--device cpu]
        [--labels labels.png]

The overlay blends the data set palette (saved in the checkpoint) over the image; ``--labels``
also writes the class indices as a uint8 PNG. Python: ``vision_rwkv.mmseg.segment_image``.
"""
import argparse

import cv2
import numpy as np

from vision_rwkv.engine.checkpoint import atomic_write
from vision_rwkv.cli import add_debug_flag, run_tool
from vision_rwkv.mmseg import segment_image


def parse_args():
    parser = argparse.ArgumentParser(description='Segment an image and write a colour overlay PNG')
    parser.add_argument('config', help='segmentation config file')
    parser.add_argument('checkpoint', help='checkpoint written by tools/train.py')
    parser.add_argument('image', help='image file')
    parser.add_argument('--out', required=True, help='overlay PNG to write')
    parser.add_argument('--labels', help='also write the class indices to this uint8 PNG')
    parser.add_argument('--opacity', type=float, default=0.5, help='weight of the class colours (0..1)')
    parser.add_argument('--device', default='cpu', help="'cpu' or 'cuda[:N]'")
    add_debug_flag(parser)
    args = parser.parse_args()
    if not 0.0 <= args.opacity <= 1.0:
        parser.error(f'--opacity must be in [0, 1], got {args.opacity}')
    for path in (args.out, args.labels):
        if path is not None and not path.lower().endswith('.png'):
            parser.error(f'{path} must end in .png')
    return args


def main():
    args = parse_args()
    labels = segment_image(args.config, args.checkpoint, args.image, out=args.out, device=args.device,
                           opacity=args.opacity)
    if args.labels:
        atomic_write(cv2.imencode('.png', labels.astype(np.uint8))[1].tobytes(), args.labels)
    classes, counts = np.unique(labels, return_counts=True)
    share = '  '.join(f'{c}: {n / labels.size:.0%}' for c, n in zip(classes.tolist(), counts.tolist()))
    print(f'{args.out}: overlay of {labels.shape[1]}×{labels.shape[0]} labels ({share})', flush=True)


if __name__ == '__main__':
    run_tool(main)
