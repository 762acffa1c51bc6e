"""Export a VRWKV backbone (dynamic batch, height and width) or RWKV-SAM (encoder and prompt decoder) to ONNX, and
check the export in onnxruntime.

    python tools/export_onnx.py vrwkv_tiny_patch16_224 --out vrwkv_t.onnx [--checkpoint CKPT]
        [--num-classes N] [--features-only] [--img-size 224] [--check 224 320x256 512] [--opset 18]
    python tools/export_onnx.py configs/classification/vrwkv_toy_shapes.py --checkpoint epoch_18.pth
        --out toy.onnx --img-size 32 --check 32 64x48
    python tools/export_onnx.py rwkv_sam_tiny --checkpoint CKPT --out encoder.onnx --decoder-out decoder.onnx
        [--img-size 1024] [--check-image photo.png]
    python tools/export_onnx.py configs/sam/rwkv_sam_tiny_toy_shapes.py --checkpoint epoch_12.pth
        --out encoder.onnx --decoder-out decoder.onnx
    python tools/export_onnx.py --info vrwkv_t.onnx

MODEL is a timm model name (``--checkpoint``: timm, official Vision-RWKV or train.py weights), a
classification config (its model with the checkpoint train.py wrote), ``rwkv_sam_<variant>`` (``tiny``, ``small``,
``base``, ``*_v6``) or an RWKV-SAM config. For backbones, ``--check`` compares onnxruntime's outputs with PyTorch's
float32 ones at each size; for RWKV-SAM the masks of a point, a box and three points on ``--check-image``
(default: scikit-image's astronaut) are compared with ``RWKVSamPredictor``'s. Either fails (exit code 1) above
``--tol`` relative error. Needs the ``deploy`` extra: ``pip install -e ".[deploy]"``. Python:
``vision_rwkv.deploy.export_onnx`` and ``export_sam_onnx``.
"""
import argparse
import ast
import json

from vision_rwkv.cli import add_debug_flag, run_tool
from vision_rwkv.errors import ConfigError, ExportError


def parse_size(text: str):
    """'224' -> (224, 224); '320x256' -> (320, 256) (height x width)."""
    try:
        sizes = [int(s) for s in text.lower().split('x')]
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r}: expected a size such as 224 or 320x256') from None
    if len(sizes) not in (1, 2) or min(sizes) <= 0:
        raise argparse.ArgumentTypeError(f'{text!r}: expected a size such as 224 or 320x256')
    return (sizes[0], sizes[-1])


def parse_model_kwargs(items):
    """['depth=6', 'wkv_mode=cross'] -> {'depth': 6, 'wkv_mode': 'cross'} (values read as Python literals)."""
    kwargs = {}
    for item in items:
        key, sep, value = item.partition('=')
        if not sep or not key:
            raise ConfigError(f'--model-kwargs {item!r}: expected KEY=VALUE')
        try:
            kwargs[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            kwargs[key] = value
    return kwargs


def parse_args():
    parser = argparse.ArgumentParser(description='Export a VRWKV backbone to ONNX and check it in onnxruntime')
    parser.add_argument('model', nargs='?', help='timm model name or classification config file')
    parser.add_argument('--out', help='.onnx file to write (RWKV-SAM: the image encoder)')
    parser.add_argument('--decoder-out', help='RWKV-SAM: the prompt decoder\'s .onnx file')
    parser.add_argument('--check-image', help='RWKV-SAM: the photo of the mask check (default: scikit-image\'s '
                        'astronaut)')
    parser.add_argument('--checkpoint', help='weights to load (read with weights_only=True)')
    parser.add_argument('--num-classes', type=int, help='classifier outputs (timm model names only)')
    parser.add_argument('--model-kwargs', nargs='*', default=[], metavar='KEY=VALUE',
                        help='further model arguments, as timm\'s train.py (e.g. depth=6 wkv_mode=cross)')
    parser.add_argument('--features-only', action='store_true',
                        help='export the feature maps (timm features_only) instead of the classifier')
    parser.add_argument('--img-size', type=parse_size, help='traced input size (default: the model\'s; RWKV-SAM: '
                        'the square input side, default 1024 or the config\'s)')
    parser.add_argument('--check', type=parse_size, nargs='*', default=None,
                        help='sizes to compare with PyTorch in onnxruntime (default: the traced size, 1.5x and 2x it)')
    parser.add_argument('--tol', type=float, default=1e-4, help='largest relative error --check accepts')
    parser.add_argument('--opset', type=int, default=None, help='ONNX opset (default 18)')
    parser.add_argument('--info', metavar='ONNX', help='print the opset, inputs and outputs of an ONNX file')
    add_debug_flag(parser)
    args = parser.parse_args()
    if args.info is None and (args.model is None or args.out is None):
        parser.error('give MODEL and --out (or --info FILE)')
    if args.info is None and is_sam(args.model) != (args.decoder_out is not None):
        parser.error('RWKV-SAM models take --out ENCODER and --decoder-out DECODER; backbones take --out alone')
    return args


def is_sam(model: str) -> bool:
    """Whether MODEL names RWKV-SAM: ``rwkv_sam_<variant>`` or a config of ``RWKVSamTrainer``."""
    if model.endswith('.py'):
        from mmengine.config import Config
        return Config.fromfile(model).model.get('type') == 'RWKVSamTrainer'
    return model.startswith('rwkv_sam_')


def build_model(args):
    """The timm VRWKV model to export, created with dynamic_img_size=True and the weights loaded."""
    from vision_rwkv.engine.classifier import create_timm_model
    kwargs = dict(parse_model_kwargs(args.model_kwargs), dynamic_img_size=True)
    if args.features_only:
        kwargs['features_only'] = True
    if args.model.endswith('.py'):
        return _model_from_config(args, kwargs)
    if args.num_classes is not None:
        kwargs['num_classes'] = args.num_classes
    if args.checkpoint:
        kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=args.checkpoint))
    return create_timm_model(args.model, **kwargs)


def _model_from_config(args, kwargs):
    """The timm model of a TimmClassifier config, with a train.py checkpoint loaded through the classifier."""
    from mmengine.config import Config

    from vision_rwkv.checkpoint import load_checkpoint_file, unwrap_state_dict
    from vision_rwkv.engine.classifier import TimmClassifier
    cfg = Config.fromfile(args.model)
    if cfg.model.get('type') != 'TimmClassifier':
        raise ConfigError(f'{args.model}: export_onnx takes classification configs (model type TimmClassifier), '
                          f'got {cfg.model.get("type")}')
    model_cfg = {k: v for k, v in cfg.model.items() if k in ('model_name', 'num_classes', 'model_kwargs')}
    model_cfg['model_kwargs'] = dict(model_cfg.get('model_kwargs') or {}, **kwargs)
    classifier = TimmClassifier(**model_cfg)
    if args.checkpoint:
        state = unwrap_state_dict(load_checkpoint_file(args.checkpoint), args.checkpoint)
        classifier.load_state_dict(state)
    return classifier.model


def build_sam(args):
    """The RWKV-SAM of ``rwkv_sam_<variant>`` or of a config, with ``--checkpoint`` loaded."""
    from vision_rwkv.sam import build_rwkv_sam_from_cfg
    if args.features_only or args.num_classes is not None:
        raise ExportError('--features-only and --num-classes apply to backbones, not to RWKV-SAM')
    img_size = None
    if args.img_size is not None:
        if args.img_size[0] != args.img_size[1]:
            raise ExportError(f'RWKV-SAM takes square inputs: --img-size {args.img_size[0]}, not '
                              f'{args.img_size[0]}x{args.img_size[1]}')
        img_size = args.img_size[0]
    if args.model.endswith('.py'):
        from mmengine.config import Config
        model = Config.fromfile(args.model).model
    else:
        model = dict(variant=args.model[len('rwkv_sam_'):])
    return build_rwkv_sam_from_cfg(model, args.checkpoint, img_size, **parse_model_kwargs(args.model_kwargs))


def check_image(path):
    """(H, W, 3) uint8 RGB of ``--check-image``, or scikit-image's astronaut."""
    if path is None:
        try:
            from skimage import data
        except ImportError:
            raise ExportError('the RWKV-SAM check needs a photo: pass --check-image or install scikit-image') from None
        return data.astronaut()
    from vision_rwkv_runtime.image import read_image, to_rgb_uint8
    return to_rgb_uint8(read_image(path))


def export_sam(args) -> int:
    from vision_rwkv.deploy import DEFAULT_OPSET, check_sam_onnx, export_sam_onnx, onnx_metadata
    sam = build_sam(args)
    image = check_image(args.check_image)
    paths = export_sam_onnx(sam, args.out, args.decoder_out, opset=args.opset or DEFAULT_OPSET)
    for path in paths:
        print(f'{path}: ' + json.dumps(onnx_metadata(path)), flush=True)
    worst = 0.0
    for row in check_sam_onnx(sam, *paths, image):
        worst = max(worst, row['logits_rel_err'])
        print(f"check {row['prompt']} ({'multimask' if row['multimask'] else 'single mask'}): mask logits relative "
              f"error {row['logits_rel_err']:.2e} (tolerance {args.tol:.0e}), {row['mask_mismatch']} of "
              f"{row['mask_pixels']} mask pixels differ", flush=True)
    return 1 if worst > args.tol else 0


def main():
    args = parse_args()
    from vision_rwkv.deploy import DEFAULT_OPSET, check_onnx, export_onnx, onnx_metadata, patch_embed_of
    if args.info:
        print(json.dumps(onnx_metadata(args.info), indent=1))
        return 0
    if args.decoder_out is not None:
        return export_sam(args)
    if args.features_only and args.num_classes is not None:
        raise ExportError('--features-only exports feature maps: --num-classes does not apply')
    model = build_model(args)
    patch_embed = patch_embed_of(model)
    img_size = args.img_size or tuple(patch_embed.img_size)
    path = export_onnx(model, args.out, img_size=img_size, opset=args.opset or DEFAULT_OPSET)
    print(f'{path}: ' + json.dumps(onnx_metadata(path)), flush=True)
    H, W = img_size
    sizes = args.check if args.check is not None else [(H, W), (H * 3 // 2, W), (2 * H, 2 * W)]
    patch = patch_embed.patch_size[0]
    worst = 0.0
    for row in check_onnx(model, path, [(h // patch * patch, w // patch * patch) for h, w in sizes]):
        worst = max(worst, row['rel_err'])
        print(f"check {row['size'][0]}x{row['size'][1]}: relative error {row['rel_err']:.2e} "
              f"(tolerance {args.tol:.0e})", flush=True)
    return 1 if worst > args.tol else 0


if __name__ == '__main__':
    run_tool(main)
