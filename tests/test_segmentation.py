"""mmsegmentation integration: configs, backbones, the embedded ADE20K-layout set, bad labels, tools."""
import glob
import json
import os
import os.path as osp
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope
from mmengine.structures import PixelData
from PIL import Image

import vision_rwkv.mmseg  # noqa: F401  (registers the backbones, datasets and transforms)
from mmseg.datasets import ADE20KDataset
from mmseg.registry import DATASETS, MODELS, TRANSFORMS
from mmseg.structures import SegDataSample
from vision_rwkv.data import SEG_TOY_CLASSES, make_segmentation_set
from vision_rwkv.data.image_folder import DatasetError
from vision_rwkv_runtime.cli import _one_line
from vision_rwkv.engine.launch import load_config

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
SEG_CONFIGS = sorted(glob.glob(osp.join(ROOT, 'configs', 'segmentation', '*.py')))
TOY_CONFIG = osp.join(ROOT, 'configs', 'segmentation', 'upernet_vrwkv_toy_shapes_ade20k.py')
OFFICIAL = {  # configs/ade20k of the official repository
    'tiny': dict(img_size=224, embed_dims=192, depth=12, lr=1.2e-4, decay=0.95, dpr=0.1, heads=6, ratio=1.0),
    'small': dict(img_size=224, embed_dims=384, depth=12, lr=6e-5, decay=0.85, dpr=0.2, heads=6, ratio=1.0),
    'base': dict(img_size=224, embed_dims=768, depth=12, lr=6e-5, decay=0.8, dpr=0.3, heads=12, ratio=0.5),
    'large': dict(img_size=192, embed_dims=1024, depth=24, lr=6e-5, decay=0.9, dpr=0.4, heads=16, ratio=0.5),
}


def random_batch(n=2, size=(64, 64), classes=8):
    inputs = [torch.randint(0, 256, (3, *size), dtype=torch.uint8) for _ in range(n)]
    labels = [torch.randint(0, classes, (1, *size)) for _ in range(n)]
    labels[0][0, :4] = 255  # some ignored pixels
    samples = [SegDataSample(gt_sem_seg=PixelData(data=y), metainfo=dict(img_shape=size, ori_shape=size,
                                                                        pad_shape=size)) for y in labels]
    return dict(inputs=inputs, data_samples=samples)


@pytest.mark.slow
@pytest.mark.parametrize('path', SEG_CONFIGS, ids=[osp.basename(p) for p in SEG_CONFIGS])
def test_every_segmentation_config_builds_and_steps(path, tmp_path):
    """Each config passes the config checks, builds, and takes one optimizer step at a 64×64 crop."""
    cfg = load_config(path, None, str(tmp_path))
    init_default_scope(cfg.default_scope)
    cfg.model.data_preprocessor.size = (64, 64)
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model)
    model.init_weights()
    optim = build_optim_wrapper(model, cfg.optim_wrapper)
    before = model.backbone.layers[0].att.key.weight.detach().clone()
    log = model.train_step(random_batch(classes=cfg.model.decode_head.num_classes), optim)
    assert torch.isfinite(log['loss'])
    assert not torch.equal(before, model.backbone.layers[0].att.key.weight)
    model.eval()
    with torch.no_grad():
        out = model.test_step(random_batch(n=1, size=(64, 96)))
    assert out[0].pred_sem_seg.data.shape == (1, 64, 96)


@pytest.mark.parametrize('size', sorted(OFFICIAL))
def test_ade20k_configs_follow_the_official_recipe(size):
    path, = glob.glob(osp.join(ROOT, 'configs', 'segmentation', f'upernet_vrwkv_{size}_*_ade20k.py'))
    cfg = load_config(path, None, None)
    ref = OFFICIAL[size]
    backbone = cfg.model.backbone
    assert (backbone.type, backbone.embed_dims, backbone.depth) == ('VRWKV_Adapter', ref['embed_dims'], ref['depth'])
    assert (backbone.drop_path_rate, backbone.deform_num_heads, backbone.deform_ratio) == (
        ref['dpr'], ref['heads'], ref['ratio'])
    assert backbone.interaction_indexes[-1][-1] == ref['depth'] - 1
    assert backbone.init_cfg.type == 'Pretrained' and backbone.img_size == ref['img_size']  # pretraining grid
    assert cfg.model.decode_head.num_classes == cfg.model.auxiliary_head.num_classes == 150
    assert cfg.model.decode_head.in_channels == [ref['embed_dims']] * 4
    assert cfg.model.test_cfg == dict(mode='slide', crop_size=(512, 512), stride=(341, 341))
    optimizer = cfg.optim_wrapper.optimizer
    assert (optimizer.type, optimizer.lr, optimizer.weight_decay) == ('AdamW', ref['lr'], 0.01)
    assert cfg.optim_wrapper.paramwise_cfg.layer_decay_rate == ref['decay']
    assert cfg.train_cfg.max_iters == 160000 and cfg.train_dataloader.batch_size == 2
    warmup, poly = cfg.param_scheduler
    assert (warmup.type, warmup.end, poly.type, poly.power, poly.end) == ('LinearLR', 1500, 'PolyLR', 1.0, 160000)
    crop = [t for t in cfg.train_dataloader.dataset.pipeline if t.type == 'RandomCrop'][0]
    assert crop.crop_size == (512, 512)
    assert cfg.train_dataloader.dataset.type == 'ADE20KDataset'


def test_layer_decay_and_weight_decay_as_official(tmp_path):
    cfg = load_config(osp.join(ROOT, 'configs', 'segmentation', 'upernet_vrwkv_tiny_adapter_512_160k_ade20k.py'),
                      None, str(tmp_path))
    init_default_scope('mmseg')
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model)
    optim = build_optim_wrapper(model, cfg.optim_wrapper)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = {names[id(g['params'][0])]: g for g in optim.optimizer.param_groups}
    lr, rate = 1.2e-4, 0.95
    # official: embeddings depth 0, block i depth i + 1, adapter and heads depth 13 (lr × 1)
    assert groups['backbone.patch_embed.projection.weight']['lr'] == pytest.approx(lr * rate ** 13)
    assert groups['backbone.layers.0.att.key.weight']['lr'] == pytest.approx(lr * rate ** 12)
    assert groups['backbone.layers.11.ffn.value.weight']['lr'] == pytest.approx(lr * rate)
    for name in ('backbone.spm.fc1.weight', 'backbone.interactions.0.injector.gamma', 'decode_head.conv_seg.weight'):
        assert groups[name]['lr'] == pytest.approx(lr)
    for name in ('backbone.pos_embed', 'backbone.layers.3.att.spatial_decay', 'backbone.layers.3.gamma1',
                 'backbone.layers.3.ln1.bias', 'decode_head.conv_seg.bias'):
        assert groups[name]['weight_decay'] == 0.0, name
    assert groups['backbone.layers.3.att.key.weight']['weight_decay'] == 0.01


def test_plain_vrwkv_backbone_outputs_at_out_indices():
    init_default_scope('mmseg')
    backbone = MODELS.build(dict(type='VRWKV', img_size=64, embed_dims=48, depth=4, out_indices=(1, -1)))
    x = torch.randn(2, 3, 64, 96)
    outs = backbone(x)
    assert [tuple(o.shape) for o in outs] == [(2, 48, 4, 6), (2, 48, 4, 6)]
    # the final norm applies to the last block's output only, as in the official backbone
    raw = backbone.forward_intermediates(x, indices=[1, 3], output_fmt='NLC', intermediates_only=True)

    def as_map(tokens):
        return tokens.transpose(1, 2).reshape(2, 48, 4, 6)

    assert torch.allclose(outs[0], as_map(raw[0]), atol=1e-6)
    assert torch.allclose(outs[1], as_map(backbone.ln1(raw[1])), atol=1e-6)
    with pytest.raises(Exception, match='out_indices'):
        MODELS.build(dict(type='VRWKV', img_size=64, embed_dims=48, depth=4, out_indices=(4,)))


def test_backbone_init_cfg_loads_our_classification_checkpoint(tmp_path):
    import timm
    source = timm.create_model('vrwkv_tiny_patch16_224')
    path = tmp_path / 'vrwkv_t.pth'
    torch.save(source.state_dict(), path)
    init_default_scope('mmseg')
    backbone = MODELS.build(dict(type='VRWKV_Adapter', img_size=64, embed_dims=192, depth=12,
                                 norm_cfg=dict(type='BN'), init_cfg=dict(type='Pretrained', checkpoint=str(path))))
    backbone.init_weights()
    assert torch.equal(backbone.layers[7].ffn.key.weight, source.layers[7].ffn.key.weight)
    missing = MODELS.build(dict(type='VRWKV_Adapter', img_size=64, norm_cfg=dict(type='BN'),
                                init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'nope.pth'))))
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        missing.init_weights()


# ---- the embedded set through mmseg's ADE20KDataset ------------------------------------------------------
def embedded_split(root, split='validation', pipeline=None, num_classes=8):
    pipeline = pipeline or [dict(type='LoadImageFromFile'), dict(type='LoadCheckedAnnotations',
                                                                 num_classes=num_classes)]
    return DATASETS.build(dict(
        type='EmbeddedDataset', generate=dict(image_size=64, train_images=4, val_images=3, seed=1),
        dataset=dict(type='ADE20KDataset', data_root=str(root), metainfo=dict(classes=SEG_TOY_CLASSES),
                     data_prefix=dict(img_path=f'images/{split}', seg_map_path=f'annotations/{split}'),
                     pipeline=pipeline)))


def test_toy_config_names_the_generator_classes():
    cfg = load_config(TOY_CONFIG, None, None)
    assert tuple(cfg.classes) == SEG_TOY_CLASSES and cfg.num_classes == len(SEG_TOY_CLASSES)
    assert cfg.model.decode_head.num_classes == cfg.model.auxiliary_head.num_classes == len(SEG_TOY_CLASSES)


def test_embedded_dataset_is_written_then_read_by_ade20kdataset(tmp_path):
    init_default_scope('mmseg')
    dataset = embedded_split(tmp_path / 'ade')
    assert type(dataset).__name__ == 'ADE20KDataset' and len(dataset) == 3
    assert dataset.metainfo['classes'] == SEG_TOY_CLASSES
    sample = dataset[0]
    raw = np.asarray(Image.open(sample['seg_map_path']))
    assert sample['gt_seg_map'].shape == raw.shape == sample['img'].shape[:2]
    assert set(np.unique(sample['gt_seg_map'])) <= set(range(8)) | {255}
    assert ((raw == 0) == (sample['gt_seg_map'] == 255)).all()


def write_pair(root, name, image_hw, label):
    os.makedirs(root / 'images' / 'validation', exist_ok=True)
    os.makedirs(root / 'annotations' / 'validation', exist_ok=True)
    Image.fromarray(np.zeros((*image_hw, 3), np.uint8)).save(root / 'images' / 'validation' / f'{name}.jpg')
    if label is not None:
        Image.fromarray(label).save(root / 'annotations' / 'validation' / f'{name}.png')


@pytest.mark.parametrize('case, message', [
    ('size', 'label map is 32×16 .* is 32×32'),
    ('value', r'labels \[150, 199\] are outside \[0, 8\)'),
    ('missing', 'annotation file missing'),
    ('corrupt', 'cannot read the label map'),
])
def test_bad_label_files_give_errors_naming_the_file(tmp_path, case, message):
    init_default_scope('mmseg')
    label = np.full((32, 32), 3, np.uint8)
    if case == 'size':
        label = label[:16]
    if case == 'value':
        label[4, 4] = 150  # ADE20K 'flag': one of the toy classes
        label[5, 5] = 7  # ADE20K 'bed': not a toy class, ignored (255) by the subset map
        label[6, 6] = 151  # no ADE20K class: 150 after reduce_zero_label
        label[7, 7] = 200
    write_pair(tmp_path, 'bad', (32, 32), None if case == 'missing' else label)
    if case == 'corrupt':
        (tmp_path / 'annotations' / 'validation' / 'bad.png').write_bytes(b'\x89PNG not really')
    load = TRANSFORMS.build(dict(type='LoadCheckedAnnotations', num_classes=8))
    results = dict(img_path=str(tmp_path / 'images/validation/bad.jpg'),
                   seg_map_path=str(tmp_path / 'annotations/validation/bad.png'), reduce_zero_label=True,
                   label_map={i: (SEG_TOY_CLASSES.index(n) if n in SEG_TOY_CLASSES else 255)
                              for i, n in enumerate(ADE20KDataset.METAINFO['classes'])},
                   seg_fields=[], ori_shape=(32, 32))
    with pytest.raises(DatasetError, match=message) as error:
        load(results)
    assert 'bad.png' in str(error.value)


def test_one_line_error_from_a_dataloader_worker():
    message = ('Caught DatasetError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n'
               '  File "x.py", line 1, in f\n'
               'vision_rwkv.data.image_folder.DatasetError: a.png: annotation file missing\n')
    assert _one_line(DatasetError(message)) == 'a.png: annotation file missing'
    assert _one_line(DatasetError('plain')) == 'plain'


# ---- the tools on a tiny run of the toy config -----------------------------------------------------------
TINY_GENERATE = dict(image_size=64, train_images=8, val_images=2, max_shapes=2, seed=3)


def tiny_toy_config(tmp_path, data_root):
    path = tmp_path / 'tiny_toy.py'
    path.write_text(f'''
_base_ = [{TOY_CONFIG!r}]
data_root = {str(data_root)!r}
generate = {TINY_GENERATE!r}
crop_size = (64, 64)
model = dict(data_preprocessor=dict(size=crop_size), backbone=dict(img_size=64))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadCheckedAnnotations', num_classes=8),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(batch_size=2, num_workers=1, dataset=dict(generate=generate, dataset=dict(
    data_root=data_root, pipeline=train_pipeline)))
val_dataloader = dict(batch_size=2, num_workers=1, dataset=dict(generate=generate, dataset=dict(data_root=data_root)))
test_dataloader = val_dataloader
train_cfg = dict(max_iters=4, val_interval=4)
default_hooks = dict(logger=dict(interval=2), checkpoint=dict(interval=4))
''')
    return str(path)


def run(*args, cwd):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_train_test_and_segment_tools(tmp_path):
    data_root = tmp_path / 'data'
    config = tiny_toy_config(tmp_path, data_root)
    work = tmp_path / 'work'
    train = run(osp.join(ROOT, 'tools', 'train.py'), config, '--work-dir', str(work), cwd=tmp_path)
    assert train.returncode == 0, train.stderr[-3000:]
    assert 'mIoU' in train.stdout + train.stderr
    assert (work / 'curves.png').is_file()
    checkpoint = str(work / 'iter_4.pth')
    metrics = tmp_path / 'metrics.json'
    test = run(osp.join(ROOT, 'tools', 'test.py'), config, checkpoint, '--work-dir', str(work), '--out',
               str(metrics), cwd=tmp_path)
    assert test.returncode == 0, test.stderr[-3000:]
    # test.py on the last checkpoint reproduces the last validation of training (same weights, same images);
    # that the model learns is tests/test_learning.py's concern
    result = json.loads(metrics.read_text())
    trained = json.loads((work / 'summary.json').read_text())['val']
    assert set(result) == {'aAcc', 'mIoU', 'mAcc'}
    assert all(result[k] == pytest.approx(trained[k], abs=1e-6) for k in result), (result, trained)

    image = str(data_root / 'images' / 'validation' / 'toy_val_00000.jpg')
    overlay, labels = tmp_path / 'overlay.png', tmp_path / 'labels.png'
    seg = run(osp.join(ROOT, 'tools', 'segment.py'), config, checkpoint, image, '--out', str(overlay),
              '--labels', str(labels), cwd=tmp_path)
    assert seg.returncode == 0, seg.stderr[-3000:]
    written, source = cv2.imread(str(overlay)), cv2.imread(image)
    assert written.shape == source.shape and not np.array_equal(written, source)
    predicted = cv2.imread(str(labels), cv2.IMREAD_UNCHANGED)
    assert predicted.shape == (64, 64) and predicted.max() < 8

    from vision_rwkv.mmseg import segment_image
    same = segment_image(config, checkpoint, image)
    assert np.array_equal(same, predicted)

    bad = run(osp.join(ROOT, 'tools', 'segment.py'), config, checkpoint, str(tmp_path / 'none.jpg'), '--out',
              str(overlay), cwd=tmp_path)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [f'error: image {tmp_path}/none.jpg does not exist']


@pytest.mark.slow
def test_train_stops_with_one_line_when_an_annotation_is_missing(tmp_path):
    data_root = tmp_path / 'data'
    config = tiny_toy_config(tmp_path, data_root)
    make_segmentation_set(data_root, **TINY_GENERATE)
    missing = data_root / 'annotations' / 'training' / 'toy_train_00003.png'
    missing.unlink()
    train = run(osp.join(ROOT, 'tools', 'train.py'), config, '--work-dir', str(tmp_path / 'work'), cwd=tmp_path)
    assert train.returncode == 2
    assert train.stderr.strip().splitlines()[-1] == f'error: {missing}: annotation file missing (image ' \
        f'{data_root}/images/training/toy_train_00003.jpg)'
    assert not glob.glob(str(tmp_path / 'work' / '*.pth'))
