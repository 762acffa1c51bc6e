"""mmengine integration pieces in-process: model wrapper, metric, optimizer, configs, checkpoints."""
import glob
import io
import os
import random

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.logging import HistoryBuffer, MessageHub
from mmengine.registry import MODELS, OPTIM_WRAPPERS

import vision_rwkv.engine  # noqa: F401  (registers everything)
from vision_rwkv.engine import Accuracy, ConfigError, PortableCheckpointHook, TimmClassifier, atomic_write
from vision_rwkv.engine.checkpoint import load_local_checkpoint
from vision_rwkv.engine.config_check import check_cfg_options, check_config
from vision_rwkv.engine.launch import load_config
from vision_rwkv.errors import CheckpointError
from vision_rwkv.engine.optim import LayerDecayOptimWrapperConstructor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLS_CONFIGS = sorted(glob.glob(os.path.join(REPO, 'configs', 'classification', '*.py')))
TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2)


def tiny_classifier(**kwargs):
    return TimmClassifier('vrwkv_tiny_patch16_224', num_classes=5, model_kwargs=TINY, **kwargs)


def test_classifier_modes():
    model = tiny_classifier(label_smoothing=0.1)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 5, (4,))
    assert model(x).shape == (4, 5)
    loss = model(x, y, mode='loss')['loss']
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.eval()
    preds = model(x, y, mode='predict')
    assert len(preds) == 4 and preds[0]['pred_score'].shape == (5,)
    assert torch.allclose(preds[0]['pred_score'].sum(), torch.tensor(1.0))
    assert [p['gt_label'] for p in preds] == y.tolist()
    with pytest.raises(ValueError, match='mode'):
        model(x, y, mode='features')


def test_classifier_mixup_uses_soft_targets():
    model = tiny_classifier(label_smoothing=0.1, mixup=dict(mixup_alpha=0.8, cutmix_alpha=1.0))
    assert model.mixup.num_classes == 5 and model.mixup.label_smoothing == 0.1
    model.train()
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 5, (4,))
    assert torch.isfinite(model(x, y, mode='loss')['loss'])
    assert torch.isfinite(model(x[:3], y[:3], mode='loss')['loss'])  # odd batch: plain smoothed CE


def test_classifier_trains_any_timm_model():
    model = TimmClassifier('vit_tiny_patch16_224', num_classes=3,
                           model_kwargs=dict(img_size=32, patch_size=8, depth=1))
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def test_classifier_loads_pretrained_file(tmp_path):
    source = tiny_classifier().model
    path = tmp_path / 'weights.pth'
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in source.state_dict().items()}}, path)  # mmcls layout
    model = tiny_classifier(pretrained=str(path))
    assert torch.equal(model.model.layers[1].att.key.weight, source.layers[1].att.key.weight)
    assert torch.equal(model.model.patch_embed.projection.weight, source.patch_embed.projection.weight)


class NotATensor:
    """A custom Python object: pickled into a checkpoint it needs code to load (refused by weights_only=True)."""


@pytest.mark.parametrize('model_name,kwargs', [('vrwkv_tiny_patch16_224', TINY),
                                               ('vit_tiny_patch16_224', dict(img_size=32, patch_size=8, depth=1))])
def test_classifier_refuses_unsafe_and_truncated_files(tmp_path, model_name, kwargs):
    """Any timm model: the file is read with weights_only=True by us, the error is one clear line."""
    state = TimmClassifier(model_name, num_classes=5, model_kwargs=kwargs).model.state_dict()
    unsafe = tmp_path / 'unsafe.pth'
    torch.save({'state_dict': state, 'meta': NotATensor()}, unsafe)
    with pytest.raises(CheckpointError, match=r'unsafe\.pth holds Python objects.*NotATensor'):
        TimmClassifier(model_name, num_classes=5, model_kwargs=kwargs, pretrained=str(unsafe))
    good = tmp_path / 'good.pth'
    torch.save({'state_dict': state}, good)
    truncated = tmp_path / 'truncated.pth'
    truncated.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=r'truncated\.pth is truncated or corrupt') as excinfo:
        TimmClassifier(model_name, num_classes=5, model_kwargs=kwargs, pretrained=str(truncated))
    assert excinfo.value.__cause__ is None and excinfo.value.__suppress_context__
    model = TimmClassifier(model_name, num_classes=5, model_kwargs=kwargs, pretrained=str(good)).model
    # timm drops a classifier trained for another num_classes (the default config's 1000)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items() if not k.startswith('head.'))
    assert 'state_dict' not in model.pretrained_cfg and model.pretrained_cfg['file'] == str(good)


def test_classifier_names_the_file_of_foreign_weights(tmp_path):
    path = tmp_path / 'vit.pth'
    torch.save(TimmClassifier('vit_tiny_patch16_224', num_classes=5, model_kwargs=dict(
        img_size=32, patch_size=8, depth=1)).model.state_dict(), path)
    with pytest.raises(ConfigError, match=r'pretrained checkpoint .*vit\.pth: checkpoint keys match neither.*'
                                          r"'cls_token'.*missing keys"):
        tiny_classifier(pretrained=str(path))


def test_unknown_model_and_argument_give_clear_errors():
    with pytest.raises(ConfigError, match=r"unknown timm model 'vrwkv_tiy_patch16_224'.*vrwkv_tiny_patch16_224"):
        TimmClassifier('vrwkv_tiy_patch16_224', num_classes=3)
    with pytest.raises(ConfigError, match='does not accept'):
        TimmClassifier('vrwkv_tiny_patch16_224', num_classes=3, model_kwargs=dict(depht=2))


def test_accuracy_metric_top_k():
    metric = Accuracy(topk=(1, 2, 10))
    scores = torch.tensor([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.6, 0.1, 0.3], [0.1, 0.3, 0.6]])
    labels = [0, 2, 1, 2]  # ranks 0, 1, 2, 0
    metric.process(None, [dict(pred_score=s, gt_label=g) for s, g in zip(scores, labels)])
    assert metric.compute_metrics(metric.results) == {'top1': 50.0, 'top2': 75.0, 'top10': 100.0}


def test_layer_decay_scales_lr_by_depth_and_skips_decay_on_norms():
    model = tiny_classifier()
    rate = random.uniform(0.5, 0.95)
    constructor = LayerDecayOptimWrapperConstructor(
        dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05)),
        dict(layer_decay_rate=rate, norm_decay_mult=0.0, bias_decay_mult=0.0))
    groups = constructor(model).optimizer.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    by_name = {names[id(g['params'][0])]: g for g in groups}
    depth = model.layer_ids()
    top = max(depth.values())
    assert depth['model.patch_embed.projection.weight'] == 0 and depth['model.head.weight'] == top == 3
    for name, group in by_name.items():
        assert group['lr'] == pytest.approx(1e-3 * rate ** (top - depth[name]))
    assert by_name['model.layers.1.ln1.weight']['weight_decay'] == 0
    assert by_name['model.layers.1.att.key.weight']['weight_decay'] == 0.05
    assert by_name['model.head.bias']['weight_decay'] == 0


@pytest.mark.parametrize('path', CLS_CONFIGS, ids=os.path.basename)
def test_classification_configs_build(path):
    cfg = load_config(path, None, None)
    model_cfg = dict(cfg.model)
    with torch.device('meta'):
        model = MODELS.build(model_cfg)
    assert isinstance(model, TimmClassifier)
    train = cfg.train_dataloader.dataset
    assert train.type == 'ImageFolder' and train.split == 'train'
    wrapper = cfg.optim_wrapper
    assert OPTIM_WRAPPERS.get(wrapper.get('type', 'OptimWrapper')) is not None


def test_official_recipes_are_mirrored():
    tiny, small, base = (Config.fromfile(os.path.join(REPO, 'configs', 'classification', n)) for n in
                         ('vrwkv_tiny_8xb128_in1k.py', 'vrwkv_small_8xb128_in1k.py', 'vrwkv_base_16xb64_in1k.py'))
    for cfg, batch, dpr in ((tiny, 128, 0.0), (small, 128, 0.3), (base, 64, 0.5)):
        assert cfg.train_dataloader.batch_size == batch and cfg.model.model_kwargs.drop_path_rate == dpr
        assert cfg.train_cfg.max_epochs == 300 and cfg.optim_wrapper.optimizer.lr == 1e-3
        assert cfg.optim_wrapper.optimizer.weight_decay == 0.05 and cfg.model.label_smoothing == 0.1
        assert cfg.train_dataloader.dataset.transform.auto_augment == 'rand-m9-mstd0.5-inc1'
    assert tiny.model.get('mixup') is None and small.model.mixup.cutmix_alpha == 1.0


def test_config_check_names_the_bad_key():
    cfg = Config.fromfile(os.path.join(REPO, 'configs', 'classification', 'vrwkv_toy_shapes.py'))
    import_cfg = cfg.custom_imports
    assert import_cfg.imports == ['vision_rwkv.engine']
    check_config(cfg)
    cfg.optim_wrapper.optimizer.weigth_decay = 0.1
    with pytest.raises(ConfigError,
                       match=r"optim_wrapper.optimizer: AdamW has no argument 'weigth_decay'.*weight_decay"):
        check_config(cfg)
    del cfg.optim_wrapper.optimizer['weigth_decay']
    cfg.train_cfg.max_epoch = 3
    with pytest.raises(ConfigError, match="train_cfg: EpochBasedTrainLoop has no argument 'max_epoch'"):
        check_config(cfg)
    del cfg.train_cfg['max_epoch']
    cfg.custom_hooks.append(dict(type='NoSuchHook'))
    with pytest.raises(ConfigError, match="'NoSuchHook' is not registered"):
        check_config(cfg)


def test_cfg_options_must_name_existing_keys():
    cfg = Config.fromfile(os.path.join(REPO, 'configs', 'classification', 'vrwkv_toy_shapes.py'))
    check_cfg_options(cfg, {'train_cfg.max_epochs': 2, 'custom_hooks.3.momentum': 0.1})
    check_cfg_options(cfg, {'model.mixup': None, 'model.data_preprocessor': None})  # new args of a typed dict
    with pytest.raises(ConfigError, match="unknown config key 'max_epoch'.*max_epochs"):
        check_cfg_options(cfg, {'max_epoch': 2})
    with pytest.raises(ConfigError, match="unknown config key 'train_cfg.epochs.x'"):
        check_cfg_options(cfg, {'train_cfg.epochs.x': 2})


def test_atomic_write_keeps_the_old_file_when_interrupted(tmp_path, monkeypatch):
    target = tmp_path / 'ckpt.pth'
    atomic_write(b'old', target)

    def broken_fsync(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, 'fsync', broken_fsync)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(b'new' * 1000, target)
    assert target.read_bytes() == b'old'
    assert [p.name for p in tmp_path.iterdir()] == ['ckpt.pth']


def test_checkpoints_round_trip_with_weights_only(tmp_path):
    hub = MessageHub.get_instance(f'test_{random.random()}')
    for i in range(5):
        hub.update_scalar('train/loss', 1.0 / (i + 1))
    hub.update_info('eta', np.float64(12.5))
    checkpoint = dict(meta=dict(epoch=1, iter=5, dataset_meta=dict(classes=('a', 'b'))),
                      state_dict=dict(w=torch.randn(3)), message_hub=hub.state_dict())
    hook = PortableCheckpointHook()
    hook.before_save_checkpoint(None, checkpoint)
    path = tmp_path / 'epoch_1.pth'
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    atomic_write(buffer.getvalue(), path)
    loaded = load_local_checkpoint(str(path))
    hook.after_load_checkpoint(None, loaded)
    buffer = loaded['message_hub']['log_scalars']['train/loss']
    assert isinstance(buffer, HistoryBuffer)
    assert buffer.data[0].tolist() == pytest.approx([1.0, 1 / 2, 1 / 3, 1 / 4, 1 / 5])
    assert torch.equal(loaded['state_dict']['w'], checkpoint['state_dict']['w'])
    assert loaded['message_hub']['runtime_info']['eta'] == 12.5


def test_unsafe_or_truncated_checkpoints_are_named(tmp_path):
    unsafe = tmp_path / 'unsafe.pth'
    torch.save(dict(obj=HistoryBuffer([1.0], [1])), unsafe)
    with pytest.raises(RuntimeError, match='unsafe.pth.*weights_only'):
        load_local_checkpoint(str(unsafe))
    truncated = tmp_path / 'truncated.pth'
    torch.save(dict(w=torch.randn(1000)), truncated)
    truncated.write_bytes(truncated.read_bytes()[:500])
    with pytest.raises(RuntimeError, match='truncated.pth is truncated or corrupt'):
        load_local_checkpoint(str(truncated))
    with pytest.raises(FileNotFoundError, match='missing.pth'):
        load_local_checkpoint(str(tmp_path / 'missing.pth'))
