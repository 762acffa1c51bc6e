"""Train a model from an mmengine config (classification now; segmentation and RWKV-SAM configs too).

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp] [--cfg-options k=v ...]
    torchrun --nproc_per_node=N tools/train.py CONFIG --launcher pytorch

Flags and behaviour follow mmsegmentation's tools/train.py. ``--resume`` alone continues from the
newest checkpoint in the work dir; ``--resume CKPT`` from that file.
"""
import argparse
import json
import os.path as osp
import time

from vision_rwkv.engine.checkpoint import atomic_write
from vision_rwkv.cli import run_tool
from vision_rwkv.engine.launch import add_common_args, build_runner, enable_amp, load_config, setup_launcher


def parse_args():
    parser = argparse.ArgumentParser(description='Train a model from an mmengine config')
    parser.add_argument('config', help='config file path')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from CKPT, or (without a value) from the newest checkpoint in the work dir')
    parser.add_argument('--amp', action='store_true', help='automatic mixed precision (CUDA)')
    add_common_args(parser)
    return parser.parse_args()


def main():
    args = parse_args()
    cfg = load_config(args.config, args.cfg_options, args.work_dir)
    setup_launcher(cfg, args.launcher, args.local_rank)
    if args.amp:
        enable_amp(cfg)
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        cfg.resume, cfg.load_from = True, args.resume

    start = time.time()
    runner = build_runner(cfg)
    runner.train()
    report(runner, time.time() - start)


def report(runner, seconds: float) -> None:
    """Print the last validation metrics and wall time; write them to ``work_dir/summary.json``."""
    if runner.rank != 0:
        return
    scalars = runner.message_hub.log_scalars
    metrics = {k[4:]: float(v.current()) for k, v in scalars.items()
               if k.startswith('val/') and k not in ('val/time', 'val/data_time')}
    summary = dict(epoch=runner.epoch, iter=runner.iter, wall_time_s=round(seconds, 1), val=metrics)
    atomic_write(json.dumps(summary, indent=1).encode(), osp.join(runner.work_dir, 'summary.json'))
    shown = '  '.join(f'{k}: {v:.2f}' for k, v in metrics.items())
    print(f'done: epoch {runner.epoch}, iter {runner.iter}, {seconds / 60:.1f} min wall time; '
          f'last validation {shown or "(none)"}; curves: {osp.join(runner.work_dir, "curves.png")}', flush=True)


if __name__ == '__main__':
    run_tool(main)
