"""Evaluate a checkpoint with an mmengine config (the config's test_dataloader and test_evaluator).

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out metrics.json] [--cfg-options k=v ...]
    torchrun --nproc_per_node=N tools/test.py CONFIG CHECKPOINT --launcher pytorch

Flags and behaviour follow mmsegmentation's tools/test.py.
"""
import argparse
import json

from vision_rwkv.engine.checkpoint import atomic_write
from vision_rwkv.cli import run_tool
from vision_rwkv.engine.launch import add_common_args, build_runner, load_config, setup_launcher
from vision_rwkv.checkpoint import check_checkpoint_file


def parse_args():
    parser = argparse.ArgumentParser(description='Evaluate a checkpoint with an mmengine config')
    parser.add_argument('config', help='config file path')
    parser.add_argument('checkpoint', help='checkpoint file (loaded with weights_only=True)')
    parser.add_argument('--out', help='write the metrics to this JSON file')
    add_common_args(parser)
    return parser.parse_args()


def main():
    args = parse_args()
    check_checkpoint_file(args.checkpoint)  # before the model and data are built
    cfg = load_config(args.config, args.cfg_options, args.work_dir)
    setup_launcher(cfg, args.launcher, args.local_rank)
    cfg.load_from = args.checkpoint
    runner = build_runner(cfg)
    metrics = {k: float(v) for k, v in runner.test().items()}  # numpy scalars (mmseg) -> JSON floats
    if runner.rank == 0:
        print('metrics: ' + '  '.join(f'{k}: {v:.2f}' for k, v in metrics.items()), flush=True)
        if args.out:
            atomic_write(json.dumps(metrics, indent=1).encode(), args.out)


if __name__ == '__main__':
    run_tool(main)
