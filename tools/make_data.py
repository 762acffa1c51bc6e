"""Write the embedded synthetic data sets (deterministic for a seed; atomic; reused when present).

    python tools/make_data.py classification --out data/shapes_cls [--classes circle,star,...]
        [--train-per-class 1000] [--val-per-class 100] [--image-size 32] [--seed 0]
    python tools/make_data.py segmentation --out data/shapes_ade [--image-size 64]
        [--train-images 1000] [--val-images 100] [--max-shapes 3] [--seed 0]
    python tools/make_data.py coco --out data/shapes_coco [--image-size 64]
        [--train-images 1000] [--val-images 100] [--max-shapes 4] [--seed 0]
    python tools/make_data.py sa1b --out data/shapes_sa1b [--image-size 64] [--images 100]
        [--split val] [--max-shapes 4] [--seed 0]

The classification defaults are those of configs/_base_/datasets/shapes_cls_32.py, so running this
first and then the main job reuses the same files. The segmentation set uses ADE20K's layout and
label ids (read it with mmsegmentation's ADE20KDataset and metainfo=dict(classes=SEG_TOY_CLASSES)).
The coco set is an instance segmentation set in COCO's layout and json format (train/, val/,
annotations/instances_{train,val}.json; polygon and RLE masks; categories = the shape kinds,
COCO_CLASSES); pycocotools reads it, and it needs OpenCV and pycocotools to be written.
The sa1b set holds the same images and instances as the coco set's split in SA-1B's layout
(sa_<id>.jpg + sa_<id>.json, class-agnostic RLE masks).
"""
import argparse

from vision_rwkv.cli import add_debug_flag, run_tool
from vision_rwkv.data import (SHAPE_CLASSES, make_classification_set, make_coco_instance_set, make_sa1b_set,
                              make_segmentation_set)


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
    seg = sub.add_parser('segmentation', help='ADE20K-layout semantic segmentation set: shapes on textures')
    seg.add_argument('--out', default='data/shapes_ade')
    seg.add_argument('--image-size', type=int, default=64)
    seg.add_argument('--train-images', type=int, default=1000)
    seg.add_argument('--val-images', type=int, default=100)
    seg.add_argument('--max-shapes', type=int, default=3)
    seg.add_argument('--seed', type=int, default=0)
    coco = sub.add_parser('coco', help='COCO-format instance segmentation set: shapes on textures')
    coco.add_argument('--out', default='data/shapes_coco')
    coco.add_argument('--image-size', type=int, default=64)
    coco.add_argument('--train-images', type=int, default=1000)
    coco.add_argument('--val-images', type=int, default=100)
    coco.add_argument('--max-shapes', type=int, default=4)
    coco.add_argument('--seed', type=int, default=0)
    sa1b = sub.add_parser('sa1b', help='SA-1B-layout set (per-image JSON, RLE masks) of the coco set\'s images')
    sa1b.add_argument('--out', default='data/shapes_sa1b')
    sa1b.add_argument('--image-size', type=int, default=64)
    sa1b.add_argument('--images', type=int, default=100)
    sa1b.add_argument('--split', default='val', choices=('train', 'val'))
    sa1b.add_argument('--max-shapes', type=int, default=4)
    sa1b.add_argument('--seed', type=int, default=0)
    for command in (cls, seg, coco, sa1b):
        add_debug_flag(command)
    return parser.parse_args()


def write(args):
    """Write the set that ``args.kind`` names and return a one-line description of it."""
    if args.kind == 'classification':
        root = make_classification_set(args.out, classes=tuple(args.classes.split(',')),
                                       train_per_class=args.train_per_class, val_per_class=args.val_per_class,
                                       image_size=args.image_size, seed=args.seed)
        return f'{root}: train/ and val/ in ImageFolder layout, parameters in {root}/generator.json'
    if args.kind == 'coco':
        root = make_coco_instance_set(args.out, image_size=args.image_size, train_images=args.train_images,
                                      val_images=args.val_images, max_shapes=args.max_shapes, seed=args.seed)
        return (f'{root}: train/, val/ and annotations/instances_{{train,val}}.json in COCO layout, '
                f'parameters in {root}/generator.json')
    if args.kind == 'sa1b':
        root = make_sa1b_set(args.out, image_size=args.image_size, num_images=args.images, split=args.split,
                             max_shapes=args.max_shapes, seed=args.seed)
        return f'{root}: sa_<id>.jpg and sa_<id>.json in SA-1B layout, parameters in {root}/generator.json'
    root = make_segmentation_set(args.out, image_size=args.image_size, train_images=args.train_images,
                                 val_images=args.val_images, max_shapes=args.max_shapes, seed=args.seed)
    return f'{root}: images/ and annotations/ in ADE20K layout, parameters in {root}/generator.json'


def main():
    print(write(parse_args()))


if __name__ == '__main__':
    run_tool(main)
