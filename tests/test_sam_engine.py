"""RWKV-SAM on mmengine: the COCO instance data set, the trainer's modes, the metric and the tools."""
import glob
import json
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
import torch
from mmengine.dataset import pseudo_collate
from mmengine.optim import build_optim_wrapper

from vision_rwkv.data import make_coco_instance_set
from vision_rwkv.data.image_folder import DatasetError
from vision_rwkv.engine.sam import PromptedMaskIoU, RWKVSamTrainer
from vision_rwkv.engine.sam_data import CocoInstanceMasks, SA1BMasks
from vision_rwkv.errors import CheckpointError, InputFileError

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOY = osp.join(ROOT, 'configs', 'sam', 'rwkv_sam_tiny_toy_shapes.py')
TINY_SET = dict(image_size=32, train_images=6, val_images=2, max_shapes=3, seed=5)


@pytest.fixture(scope='module')
def coco_root(tmp_path_factory):
    return str(make_coco_instance_set(tmp_path_factory.mktemp('coco') / 'set', **TINY_SET))


def dataset(root, split='train', **kwargs):
    return CocoInstanceMasks(root, f'annotations/instances_{split}.json', split, img_size=64, **kwargs)


def test_dataset_items_match_the_annotations(coco_root):
    from pycocotools.coco import COCO
    data = dataset(coco_root)
    item = data[0]
    coco = COCO(osp.join(coco_root, 'annotations', 'instances_train.json'))
    anns = coco.loadAnns(coco.getAnnIds(imgIds=data.ids[0]))
    assert item['inputs'].shape == (3, 64, 64) and item['inputs'].dtype == torch.uint8
    masks = item['data_samples'].masks
    assert masks.shape == (len(anns), 64, 64) and masks.dtype == torch.bool
    # nearest 2× upsampling of the 32 px annotation masks
    expected = np.stack([coco.annToMask(a).repeat(2, 0).repeat(2, 1) for a in anns]).astype(bool)
    assert np.array_equal(masks.numpy(), expected)
    assert item['data_samples'].original_size == (32, 32)
    jittered = dataset(coco_root, training=True, scale_range=(0.5, 1.5))[0]
    assert max(jittered['inputs'].shape[1:]) <= 64
    assert jittered['data_samples'].masks.shape[1:] == jittered['inputs'].shape[1:]


def test_bad_annotation_files_are_named(coco_root, tmp_path):
    with pytest.raises(DatasetError, match='annotation file missing'):
        CocoInstanceMasks(str(tmp_path), 'none.json', 'train')
    (tmp_path / 'broken.json').write_text('{"images": [')
    with pytest.raises(DatasetError, match='broken.json: not a COCO instances file'):
        CocoInstanceMasks(str(tmp_path), 'broken.json', 'train')
    content = json.loads(open(osp.join(coco_root, 'annotations', 'instances_train.json')).read())
    content['annotations'][0]['segmentation'] = {'size': [5, 5], 'counts': 'zz'}
    (tmp_path / 'bad_rle.json').write_text(json.dumps(content))
    bad = CocoInstanceMasks(coco_root, str(tmp_path / 'bad_rle.json'), 'train', img_size=64)
    first = bad.ids.index(content['annotations'][0]['image_id'])
    with pytest.raises(DatasetError, match='annotation 1 .*decodes to|annotation 1 .*malformed'):
        bad[first]


def test_trainer_loss_and_predict_modes(coco_root):
    torch.manual_seed(0)
    model = RWKVSamTrainer(variant='tiny', img_size=64, encoder=dict(depth=1), max_instances=2, correction_rounds=1)
    optim = build_optim_wrapper(model, dict(optimizer=dict(type='AdamW', lr=1e-3)))
    batch = pseudo_collate([dataset(coco_root, training=True)[i] for i in range(3)])
    before = model.sam.mask_decoder.iou_token.weight.detach().clone()
    log = model.train_step(batch, optim)
    assert set(log) == {'loss', 'loss_focal', 'loss_dice', 'loss_iou'} and torch.isfinite(log['loss'])
    assert not torch.equal(before, model.sam.mask_decoder.iou_token.weight)
    model.eval()
    outputs = model.val_step(pseudo_collate([dataset(coco_root, 'val')[i] for i in range(2)]))
    assert len(outputs) == 2 and set(outputs[0]) == {'box_iou', 'point_iou', 'box_biou', 'point_biou'}
    # one value per instance of each image, each a fraction
    val = dataset(coco_root, 'val')
    for i, out in enumerate(outputs):
        assert all(len(v) == len(val[i]['data_samples'].masks) for v in out.values())
        assert all(((v >= 0) & (v <= 1)).all() for v in out.values())
    metric = PromptedMaskIoU()
    metric.process(None, outputs)
    result = metric.compute_metrics(metric.results)
    assert set(result) == {'mIoU_box', 'mIoU_point', 'bIoU_box', 'bIoU_point'}
    assert all(0.0 <= v <= 1.0 for v in result.values())
    with pytest.raises(ValueError, match='mode'):
        model(batch['inputs'], batch['data_samples'], mode='nope')


@pytest.mark.slow
def test_toy_config_trains_and_tests_through_the_tools(tmp_path):
    config = tmp_path / 'tiny_sam.py'
    config.write_text(f'''
_base_ = [{TOY!r}]
data_root = {str(tmp_path / 'coco')!r}
generate = {TINY_SET!r}
model = dict(img_size=64, encoder=dict(depth=1), max_instances=2)
train_dataloader = dict(batch_size=3, dataset=dict(data_root=data_root, generate=generate, img_size=64))
val_dataloader = dict(batch_size=2, dataset=dict(data_root=data_root, generate=generate, img_size=64))
test_dataloader = val_dataloader
max_epochs = 1
train_cfg = dict(max_epochs=1, val_interval=1)
param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False, begin=0, end=2)]
default_hooks = dict(checkpoint=dict(interval=1), logger=dict(interval=1))
''')
    work = tmp_path / 'work'

    def run(*args):
        return subprocess.run([sys.executable, *args], cwd=tmp_path, capture_output=True, text=True, timeout=600)

    train = run(osp.join(ROOT, 'tools', 'train.py'), str(config), '--work-dir', str(work))
    assert train.returncode == 0, train.stderr[-3000:]
    assert 'mIoU_box' in train.stdout + train.stderr
    metrics = tmp_path / 'metrics.json'
    test = run(osp.join(ROOT, 'tools', 'test.py'), str(config), str(work / 'epoch_1.pth'), '--out', str(metrics))
    assert test.returncode == 0, test.stderr[-3000:]
    # test.py on the last checkpoint reproduces the last validation of training (same weights, same prompts:
    # tight boxes and centre points); that the model learns is tests/test_learning.py's concern
    result = json.loads(metrics.read_text())
    trained = json.loads((work / 'summary.json').read_text())['val']
    assert set(result) == {'mIoU_box', 'mIoU_point', 'bIoU_box', 'bIoU_point'}
    assert all(result[k] == pytest.approx(trained[k], abs=1e-6) for k in result), (result, trained)


def tiny_sam_teacher(checkpoint=None):
    """A one-block segment-anything ViT (1024 input, 64×64 embedding) standing in for vit_b/l/h."""
    from segment_anything.build_sam import _build_sam
    return _build_sam(encoder_embed_dim=32, encoder_depth=1, encoder_num_heads=1, encoder_global_attn_indexes=[],
                      checkpoint=checkpoint)


def test_distillation_from_a_sam_teacher(coco_root, tmp_path, monkeypatch):
    from segment_anything import sam_model_registry
    monkeypatch.setitem(sam_model_registry, 'vit_test', tiny_sam_teacher)
    torch.manual_seed(0)
    reference = tiny_sam_teacher().eval()
    path = tmp_path / 'teacher.pth'
    torch.save(reference.state_dict(), path)
    model = RWKVSamTrainer(variant='tiny', img_size=64, encoder=dict(depth=1), max_instances=2,
                           teacher=dict(model_type='vit_test', checkpoint=str(path)), distill_weight=2.0)
    assert torch.equal(model.teacher.image_encoder.patch_embed.proj.weight,
                       reference.image_encoder.patch_embed.proj.weight)
    assert not any('teacher' in k for k in model.state_dict())
    assert not any('teacher' in n for n, _ in model.named_parameters())
    batch = pseudo_collate([dataset(coco_root, training=True)[i] for i in range(2)])
    losses = model(batch['inputs'], batch['data_samples'], mode='loss')
    with torch.no_grad():
        images = model._images(batch['inputs'])
        target = reference.image_encoder(torch.nn.functional.interpolate(images, (1024, 1024), mode='bilinear'))
        target = torch.nn.functional.interpolate(target, (4, 4), mode='bilinear')
        embedding = model.sam.image_encoder(images).embedding
    assert torch.allclose(losses['loss_distill'], 2 * torch.nn.functional.mse_loss(embedding, target), rtol=1e-4)
    optim = build_optim_wrapper(model, dict(optimizer=dict(type='AdamW', lr=1e-3)))
    log = model.train_step(batch, optim)
    assert 'loss_distill' in log and torch.isfinite(log['loss'])
    assert torch.equal(model.teacher.image_encoder.patch_embed.proj.weight,
                       reference.image_encoder.patch_embed.proj.weight)  # the teacher stays frozen


def test_bad_teachers_are_named(tmp_path, monkeypatch):
    from segment_anything import sam_model_registry
    monkeypatch.setitem(sam_model_registry, 'vit_test', tiny_sam_teacher)
    with pytest.raises(ValueError, match="unknown SAM teacher 'vit_x'"):
        RWKVSamTrainer(variant='tiny', img_size=64, encoder=dict(depth=1), teacher=dict(model_type='vit_x',
                                                                                        checkpoint='x.pth'))
    with pytest.raises(InputFileError, match='missing.pth does not exist'):
        RWKVSamTrainer(variant='tiny', img_size=64, encoder=dict(depth=1),
                       teacher=dict(model_type='vit_test', checkpoint=str(tmp_path / 'missing.pth')))
    other = tmp_path / 'other.pth'
    torch.save({'image_encoder.foo': torch.zeros(1)}, other)
    with pytest.raises(CheckpointError, match='other.pth is not a segment-anything vit_test checkpoint'):
        RWKVSamTrainer(variant='tiny', img_size=64, encoder=dict(depth=1),
                       teacher=dict(model_type='vit_test', checkpoint=str(other)))


@pytest.mark.parametrize('path', sorted(glob.glob(osp.join(ROOT, 'configs', 'sam', '*.py'))), ids=osp.basename)
def test_sam_configs_pass_the_config_check_and_build(path):
    from mmengine.registry import DATASETS, MODELS, OPTIM_WRAPPERS
    from vision_rwkv.engine.launch import load_config
    cfg = load_config(path, None, None)
    model = MODELS.build(dict(cfg.model, img_size=64))
    assert isinstance(model, RWKVSamTrainer) and model.teacher is None
    for loader in (cfg.train_dataloader, cfg.val_dataloader):
        assert DATASETS.get(loader.dataset.type) in (CocoInstanceMasks, SA1BMasks)
    assert OPTIM_WRAPPERS.get(cfg.optim_wrapper.get('type', 'OptimWrapper')) is not None


def test_training_losses_under_bfloat16_autocast(coco_root):
    """The mixed-precision path (AmpOptimWrapper wraps the forward in autocast): finite float32 losses
    close to the float32 ones (CPU autocast here; CUDA uses the same code)."""
    torch.manual_seed(0)
    model = RWKVSamTrainer(variant='tiny', img_size=64, encoder=dict(depth=1), max_instances=2, correction_rounds=1)
    batch = pseudo_collate([dataset(coco_root)[i] for i in range(2)])
    model.generator.manual_seed(1)
    full = model(batch['inputs'], batch['data_samples'], mode='loss')
    model.generator.manual_seed(1)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        mixed = model(batch['inputs'], batch['data_samples'], mode='loss')
    for key, value in mixed.items():
        assert value.dtype == torch.float32 and torch.isfinite(value), key
        assert abs(value.item() - full[key].item()) <= 0.05 * abs(full[key].item()) + 1e-3, key
    mixed['loss_dice'].backward()


@pytest.mark.parametrize('correction_prob, calls', [(0.0, 1), (1.0, 3)])
def test_correction_rounds_follow_their_probability(coco_root, correction_prob, calls):
    model = RWKVSamTrainer(variant='tiny', img_size=64, encoder=dict(depth=1), max_instances=2, correction_rounds=2,
                           correction_prob=correction_prob)
    seen = []
    decode = model.sam.decode_prompts

    def counting(*args, **kwargs):
        seen.append(args[3] is not None or kwargs.get('masks') is not None)  # a mask prompt was fed back
        return decode(*args, **kwargs)

    model.sam.decode_prompts = counting
    batch = pseudo_collate([dataset(coco_root, training=True)[i] for i in range(2)])
    losses = model(batch['inputs'], batch['data_samples'], mode='loss')
    assert len(seen) == calls and seen == [False] + [True] * (calls - 1)
    assert all(torch.isfinite(v) for v in losses.values())


class SameImage(CocoInstanceMasks):
    """Every index is image 0: items differ only by their jitter."""

    def _load(self, index):
        return super()._load(0)


def jitters(data, loader_kwargs):
    loader = torch.utils.data.DataLoader(data, batch_size=1, collate_fn=pseudo_collate, **loader_kwargs)
    return [batch['inputs'][0] for batch in loader]


def test_jitter_differs_across_workers_ranks_and_epochs(coco_root, monkeypatch):
    """One generator per (seed, rank, worker, worker start): a generator made in __init__ was copied into every
    worker and rank, which then drew identical augmentations."""
    data = SameImage(coco_root, 'annotations/instances_train.json', 'train', img_size=64, training=True,
                     scale_range=(0.5, 1.5))
    # Streams are compared, not single items: two draws can coincide (same rounded size, flip and offset; seen
    # once in CI), a whole stream of three or more cannot; the bug made every stream the same.
    two_workers = jitters(data, dict(num_workers=2))  # items 0, 2, 4 from worker 0; 1, 3, 5 from worker 1
    assert not same_stream(two_workers[0::2], two_workers[1::2])
    next_epoch = jitters(data, dict(num_workers=2))  # new workers, new torch seeds
    assert not same_stream(two_workers, next_epoch)
    in_process = jitters(data, dict(num_workers=0))
    assert not same_stream(in_process[:3], in_process[3:])
    other = SameImage(coco_root, 'annotations/instances_train.json', 'train', img_size=64, training=True,
                      scale_range=(0.5, 1.5))
    assert same_stream(jitters(other, dict(num_workers=0)), in_process)  # same seed, same rank: same stream
    monkeypatch.setattr('vision_rwkv.engine.sam_data.get_rank', lambda: 1)
    rank_1 = SameImage(coco_root, 'annotations/instances_train.json', 'train', img_size=64, training=True,
                       scale_range=(0.5, 1.5))
    assert not same_stream(jitters(rank_1, dict(num_workers=0)), in_process)


def same_stream(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def test_prompts_are_a_function_of_the_step_and_rank(coco_root, monkeypatch):
    from mmengine.logging import MessageHub
    hub = MessageHub.get_instance('prompt_seed_test')  # the newest instance is the current one
    model = RWKVSamTrainer(variant='tiny', img_size=64, encoder=dict(depth=1), max_instances=2)
    batch = pseudo_collate([dataset(coco_root)[i] for i in range(2)])

    def losses_at(iteration):
        hub.update_info('iter', iteration)
        with torch.no_grad():
            return {k: v.item() for k, v in model(batch['inputs'], batch['data_samples'], mode='loss').items()}

    first = losses_at(7)
    losses_at(8)
    assert losses_at(7) == first  # step 7 again, after other draws: the same prompts
    assert losses_at(9) != first
    monkeypatch.setattr('vision_rwkv.engine.sam.get_rank', lambda: 1)
    assert losses_at(7) != first


@pytest.mark.slow
def test_resumed_training_draws_the_prompts_of_an_uninterrupted_run(tmp_path):
    """Two epochs straight, and one epoch then a resume to two: the same weights at the end (no jitter, a
    seeded sampler: the prompts are the only other randomness)."""
    def config(name, epochs):
        path = tmp_path / name
        path.write_text(f'''
_base_ = [{TOY!r}]
data_root = {str(tmp_path / 'coco')!r}
generate = {TINY_SET!r}
model = dict(img_size=64, encoder=dict(depth=1), max_instances=2)
train_dataloader = dict(batch_size=3, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root=data_root, generate=generate, img_size=64, training=False))
train_cfg = dict(max_epochs={epochs}, val_interval=10)
param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False, begin=0, end=2)]
default_hooks = dict(checkpoint=dict(interval=1), logger=dict(interval=1))
val_dataloader = None
val_cfg = None
val_evaluator = None
test_dataloader = None
test_cfg = None
test_evaluator = None
''')
        return str(path)

    def train(cfg, work, *extra):
        out = subprocess.run([sys.executable, osp.join(ROOT, 'tools', 'train.py'), cfg, '--work-dir', str(work), *extra],
                             cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]

    train(config('two.py', 2), tmp_path / 'straight')
    train(config('one.py', 1), tmp_path / 'resumed')
    train(config('two.py', 2), tmp_path / 'resumed', '--resume')
    load = lambda work: torch.load(work / 'epoch_2.pth', weights_only=True)['state_dict']
    straight, resumed = load(tmp_path / 'straight'), load(tmp_path / 'resumed')
    assert straight.keys() == resumed.keys()
    for key in straight:  # the same float32 arithmetic in the same order: bitwise equal
        assert torch.equal(straight[key], resumed[key]), key
