"""Prompt RWKV-SAM interactively in the browser: a local page (Python's standard library server, no gradio).

    python tools/sam_app.py [--checkpoint CKPT] [--config CFG] [--host 127.0.0.1] [--port 7860] [--max-upload-mb 20]
    python tools/sam_app.py --onnx ENCODER DECODER [...]

then open the printed address. Open an image (a file, a sample photo or the generated shapes), left click for an
object point, right click for a background point, drag for a box: the masks and their scores appear over the image.
The image embedding is computed once per image; each prompt runs the mask decoder only. "Segment everything" runs
``RWKVSamAutomaticMaskGenerator`` (PyTorch model only).

The model is chosen as in ``tools/sam_demo.py``: ``--config`` (default: the toy config) with ``--checkpoint``,
or the config's last checkpoint, trained first if there is none. ``--onnx`` serves the two files of
``tools/export_onnx.py --decoder-out`` in onnxruntime instead, without importing torch. The server
(``vision_rwkv_runtime.sam_app``) binds to 127.0.0.1 unless ``--host`` says otherwise.
"""
import argparse

from sam_demo import TOY_CONFIG, default_checkpoint, mask_generator, model_from_config
from vision_rwkv_runtime.cli import add_debug_flag, run_tool
from vision_rwkv_runtime.sam_app import SamSession, make_server, serve

ONNX_EVERYTHING = ('segment everything runs the PyTorch model (RWKVSamAutomaticMaskGenerator), not the ONNX '
                   'files: start sam_app.py without --onnx to use it')


def parse_args():
    parser = argparse.ArgumentParser(description='Serve a local page to prompt RWKV-SAM with clicks and boxes')
    parser.add_argument('--checkpoint', help="weights; default: the config's last checkpoint (trained if absent)")
    parser.add_argument('--config', default=TOY_CONFIG, help='training config that defines the model')
    parser.add_argument('--onnx', nargs=2, metavar=('ENCODER', 'DECODER'),
                        help='serve exported files in onnxruntime instead (tools/export_onnx.py --decoder-out)')
    parser.add_argument('--host', default='127.0.0.1',
                        help='address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to the '
                        'network)')
    parser.add_argument('--port', type=int, default=7860, help='port (0: any free port)')
    parser.add_argument('--max-upload-mb', type=float, default=20.0, help='largest image upload accepted')
    parser.add_argument('--threads', type=int,
                        help="torch threads of the PyTorch model (default: torch's); 1 keeps clicks fast on a machine "
                        'whose cores other jobs use')
    parser.add_argument('--iou-thresh', type=float, default=0.5,
                        help='segment everything: keep masks whose predicted IoU is at least this')
    add_debug_flag(parser)
    args = parser.parse_args()
    if args.onnx and args.checkpoint:
        parser.error('--onnx serves the exported files: --checkpoint is for the PyTorch model')
    if args.threads is not None and args.threads < 1:
        parser.error(f'--threads must be at least 1, got {args.threads}')
    if args.max_upload_mb <= 0:
        parser.error(f'--max-upload-mb must be positive, got {args.max_upload_mb}')
    return args


def session_of(args) -> SamSession:
    """The onnxruntime predictor of ``--onnx`` (no segment everything), or the PyTorch model with its generator."""
    if args.onnx:
        from vision_rwkv_runtime import OnnxSamPredictor
        return SamSession(OnnxSamPredictor(*args.onnx), everything_unavailable=ONNX_EVERYTHING)
    import torch

    from vision_rwkv.sam import RWKVSamPredictor
    if args.threads:
        torch.set_num_threads(args.threads)
    sam = model_from_config(args.config, args.checkpoint or default_checkpoint(args.config))
    generator = mask_generator(sam, args.iou_thresh)
    return SamSession(RWKVSamPredictor(sam), lambda image: [(record['segmentation'], record['predicted_iou'])
                                                            for record in generator.generate(image)])


def main():
    args = parse_args()
    server = make_server(session_of(args), args.host, args.port, round(args.max_upload_mb * 2 ** 20))
    serve(server)


if __name__ == '__main__':
    run_tool(main)
