"""Write the embedded synthetic data sets (deterministic for a seed; atomic; reused when present).

    python tools/make_data.py classification --out data/shapes_cls [--classes circle,star,...]
        [--train-per-class 1000] [--val-per-class 100] [--image-size 32] [--seed 0]

The defaults are those of configs/_base_/datasets/shapes_cls_32.py, so running this first and then
the main job reuses the same files.
"""
import argparse
import sys

from vision_rwkv.data import SHAPE_CLASSES, make_classification_set


def parse_args():
    parser = argparse.ArgumentParser(description='Write the embedded synthetic data sets')
    sub = parser.add_subparsers(dest='kind', required=True)
    cls = sub.add_parser('classification', help='ImageFolder set: one shape per image, class = shape kind')
    cls.add_argument('--out', default='data/shapes_cls')
    cls.add_argument('--classes', default=','.join(SHAPE_CLASSES[:6]),
                     help=f'comma-separated shape kinds from {",".join(SHAPE_CLASSES)}')
    cls.add_argument('--train-per-class', type=int, default=1000)
    cls.add_argument('--val-per-class', type=int, default=100)
    cls.add_argument('--image-size', type=int, default=32)
    cls.add_argument('--seed', type=int, default=0)
    return parser.parse_args()


def main():
    args = parse_args()
    try:
        root = make_classification_set(args.out, classes=tuple(args.classes.split(',')),
                                       train_per_class=args.train_per_class, val_per_class=args.val_per_class,
                                       image_size=args.image_size, seed=args.seed)
    except (ValueError, FileExistsError) as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)
    print(f'{root}: train/ and val/ in ImageFolder layout, parameters in {root}/generator.json')


if __name__ == '__main__':
    main()
