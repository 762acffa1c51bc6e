"""Equal-budget comparison: RWKV-SAM's encoder and decoder against a ViT encoder and SAM's decoder.

Four models, each trained by ``tools/train.py`` on the toy shapes set with the toy config's recipe
(``configs/sam/rwkv_sam_tiny_toy_shapes.py``: data, prompts, losses, optimiser) for the same wall-clock budget:

    rwkv_ms   the toy RWKV-SAM encoder (conv stages + 4 VRWKV blocks) and the multiscale decoder (the config's fusion)
    rwkv_sam  the same encoder and segment-anything's single-scale MaskDecoder (``fusion='none'``)
    vit_ms    segment-anything's ImageEncoderViT scaled to the same parameters (``ViTSamImageEncoder``) and the
              multiscale decoder, fed by the ViT's simple feature pyramid
    vit_sam   that ViT and SAM's decoder (the ViT without the pyramid)

The budget becomes a number of iterations per model: each model's seconds per training step are measured first
(``--calibration-iters`` steps after two warm-up steps, in this process, on the config's data), and the model then
trains for budget / (s/it) iterations with the config's schedule (linear warm-up, cosine decay) laid over them, and
is validated once at the end (box and centre-point prompts: mIoU and boundary IoU). Every model gets the whole
schedule, and load on the machine during a run does not change what it learns. Run on an otherwise idle machine.

Prints a markdown table and writes JSON (atomically, after each model: ``--resume`` skips finished runs).

Usage: python tools/benchmark_sam_training.py [--budget-min 6] [--sizes 128,256]
           [--models rwkv_ms,rwkv_sam,vit_ms,vit_sam] [--out benchmark_results/sam_training.json]
           [--work-dir work_dirs/sam_training_comparison] [--resume]
"""
import argparse
import json
import os
import os.path as osp
import subprocess
import sys
import time
from typing import Dict, List

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)  # run from a checkout without installing, as the other tools

from vision_rwkv_runtime.cli import add_debug_flag, run_tool  # noqa: E402
from vision_rwkv_runtime.errors import UserError  # noqa: E402
from vision_rwkv_runtime.files import atomic_write  # noqa: E402

TOY_CONFIG = osp.join(ROOT, 'configs', 'sam', 'rwkv_sam_tiny_toy_shapes.py')
#: model name -> overrides of the config's ``model`` (the encoder overrides replace the config's ``encoder``)
MODELS: Dict[str, dict] = {
    'rwkv_ms': dict(),
    'rwkv_sam': dict(fusion='none'),
    'vit_ms': dict(variant='vit', encoder=dict(embed_dim=192, depth=4, num_heads=3, mlp_ratio=2.5)),
    'vit_sam': dict(variant='vit', fusion='none', encoder=dict(embed_dim=192, depth=4, num_heads=3, mlp_ratio=2.5)),
}
METRICS = ('mIoU_box', 'mIoU_point', 'bIoU_box', 'bIoU_point')


def model_config(name: str, img_size: int) -> dict:
    """The config's ``model`` dict with the overrides of ``name`` at ``img_size``."""
    from mmengine.config import Config

    model = Config.fromfile(TOY_CONFIG).model.to_dict()
    overrides = dict(MODELS[name])
    if 'encoder' in overrides:
        model['encoder'] = overrides.pop('encoder')
    return dict(model, img_size=img_size, **overrides)


def seconds_per_step(model_cfg: dict, iters: int) -> float:
    """Median seconds of a training step (forward, losses, backward, clipped AdamW step) of the config's trainer on
    batches of its training set, after two warm-up steps."""
    import torch
    from mmengine.config import Config
    from mmengine.dataset import pseudo_collate
    from mmengine.registry import DATASETS, MODELS as REGISTRY, init_default_scope

    import vision_rwkv.engine.sam  # noqa: F401  (registers the trainer and datasets)

    init_default_scope('mmengine')
    cfg = Config.fromfile(TOY_CONFIG)
    torch.manual_seed(0)
    model = REGISTRY.build(model_cfg)
    dataset_cfg = cfg.train_dataloader.dataset.to_dict()
    dataset = DATASETS.build(dict(dataset_cfg, img_size=model_cfg['img_size']))
    batch_size = cfg.train_dataloader.batch_size
    optimizer = torch.optim.AdamW(model.parameters(), **{k: v for k, v in cfg.optim_wrapper.optimizer.items()
                                                         if k != 'type'})
    times = []
    for step in range(iters + 2):
        batch = pseudo_collate([dataset[(step * batch_size + i) % len(dataset)] for i in range(batch_size)])
        start = time.perf_counter()
        losses = model(**model.data_preprocessor(batch, True), mode='loss')
        optimizer.zero_grad()
        sum(losses.values()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim_wrapper.clip_grad.max_norm)
        optimizer.step()
        times.append(time.perf_counter() - start)
    return sorted(times[2:])[iters // 2]


def parameters(model_cfg: dict) -> Dict[str, float]:
    """Millions of parameters of the image encoder and of the mask decoder."""
    from vision_rwkv.sam.build import build_rwkv_sam_from_cfg

    sam = build_rwkv_sam_from_cfg(model_cfg)
    count = lambda module: round(sum(p.numel() for p in module.parameters()) / 1e6, 3)  # noqa: E731
    return dict(encoder_M=count(sam.image_encoder), decoder_M=count(sam.mask_decoder))


def write_run_config(path: str, model_cfg: dict, iters: int) -> None:
    """A config over the toy one: this model, ``iters`` iterations, the schedule in iterations, one validation."""
    warmup = min(100, max(1, iters // 10))
    text = f"""_base_ = [{TOY_CONFIG!r}]
model = {dict(model_cfg, _delete_=True)!r}
train_dataloader = dict(sampler=dict(_delete_=True, type='InfiniteSampler', shuffle=True),
                        dataset=dict(img_size={model_cfg['img_size']}))
val_dataloader = dict(dataset=dict(img_size={model_cfg['img_size']}))
test_dataloader = val_dataloader
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters={iters}, val_interval={iters})
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end={warmup}),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=0, end={iters}, eta_min=1e-5),
]
default_hooks = dict(logger=dict(interval=25, log_metric_by_epoch=False),
                     checkpoint=dict(by_epoch=False, interval={iters}))
log_processor = dict(by_epoch=False)
"""
    atomic_write(text.encode(), path)


def train(config: str, work_dir: str) -> dict:
    """Run ``tools/train.py`` and return its ``summary.json``."""
    command = [sys.executable, osp.join(ROOT, 'tools', 'train.py'), config, '--work-dir', work_dir]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise UserError(f'training {config} failed (exit {result.returncode}):\n{result.stderr[-3000:]}')
    with open(osp.join(work_dir, 'summary.json')) as f:
        return json.load(f)


def run_one(name: str, img_size: int, budget_s: float, calibration_iters: int, work_dir: str) -> dict:
    model_cfg = model_config(name, img_size)
    s_it = seconds_per_step(model_cfg, calibration_iters)
    iters = max(1, int(budget_s / s_it))
    run_dir = osp.join(work_dir, f'{img_size}', name)
    os.makedirs(run_dir, exist_ok=True)
    config = osp.join(run_dir, 'config.py')
    write_run_config(config, model_cfg, iters)
    summary = train(config, run_dir)
    row = dict(model=name, img_size=img_size, **parameters(model_cfg), s_per_it=round(s_it, 3), iters=iters,
               train_wall_min=round(summary['wall_time_s'] / 60, 2))
    row.update({k: round(summary['val'][k], 3) for k in METRICS})
    return row


def table(rows: List[dict]) -> str:
    keys = list(rows[0])
    lines = ['| ' + ' | '.join(keys) + ' |', '|' + '---|' * len(keys)]
    lines += ['| ' + ' | '.join(str(row[k]) for k in keys) + ' |' for row in rows]
    return '\n'.join(lines)


def parse_args():
    parser = argparse.ArgumentParser(description='RWKV-SAM against a ViT encoder and SAM\'s decoder, equal budget')
    parser.add_argument('--budget-min', type=float, default=6.0, help='training minutes per model (default 6)')
    parser.add_argument('--sizes', default='128,256', help='input sides, comma-separated (default 128,256)')
    parser.add_argument('--models', default=','.join(MODELS), help=f'comma-separated, of {", ".join(MODELS)}')
    parser.add_argument('--calibration-iters', type=int, default=9, help='timed steps per model (default 9)')
    parser.add_argument('--out', default='benchmark_results/sam_training.json', help='JSON output path')
    parser.add_argument('--work-dir', default='work_dirs/sam_training_comparison', help='runs go here')
    parser.add_argument('--resume', action='store_true', help='keep the rows of --out already measured')
    add_debug_flag(parser)
    args = parser.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(',')]
    args.models = args.models.split(',')
    unknown = sorted(set(args.models) - set(MODELS))
    if unknown:
        parser.error(f'unknown models {unknown}; known: {list(MODELS)}')
    if any(s % 16 or s < 64 for s in args.sizes):
        parser.error(f'--sizes must be multiples of 16 of at least 64, got {args.sizes}')
    return args


def main():
    args = parse_args()
    results = dict(budget_min=args.budget_min, config=osp.relpath(TOY_CONFIG, ROOT), rows=[])
    if args.resume and osp.exists(args.out):
        with open(args.out) as f:
            results['rows'] = json.load(f)['rows']
    done = {(row['model'], row['img_size']) for row in results['rows']}
    for size in args.sizes:
        for name in args.models:
            if (name, size) in done:
                continue
            print(f'{name} at {size}: calibrating, then training for {args.budget_min} min', flush=True)
            results['rows'].append(run_one(name, size, args.budget_min * 60, args.calibration_iters, args.work_dir))
            atomic_write(json.dumps(results, indent=2).encode(), args.out)
    print(table(results['rows']))
    print(f'wrote {args.out}')


if __name__ == '__main__':
    run_tool(main)
