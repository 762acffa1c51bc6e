"""The equal-budget comparison's models: the ViT image encoder (segment-anything's ``ImageEncoderViT``), the
decoder choices (``fusion``) in the trainer, and ``tools/benchmark_sam_training.py``."""
import importlib.util
import json
import os.path as osp
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from segment_anything.modeling import ImageEncoderViT

from vision_rwkv.data import make_coco_instance_set
from vision_rwkv.engine.sam import RWKVSamTrainer
from vision_rwkv.engine.sam_data import CocoInstanceMasks
from vision_rwkv.sam import build_rwkv_sam
from vision_rwkv.sam.modeling.vit_encoder import ViTSamImageEncoder

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOOL = osp.join(ROOT, 'tools', 'benchmark_sam_training.py')


def load_tool():
    spec = importlib.util.spec_from_file_location('benchmark_sam_training', TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def num_params(module):
    return sum(p.numel() for p in module.parameters())


def test_vit_encoder_embedding_is_image_encoder_vits_and_pyramid_shapes():
    torch.manual_seed(0)
    encoder = ViTSamImageEncoder(img_size=64, embed_dim=64, depth=2, num_heads=2, widths=(8, 16)).eval()
    assert isinstance(encoder.vit, ImageEncoderViT)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = encoder(x)
        expected = encoder.vit(x)  # segment-anything's own forward
    assert torch.equal(features.embedding, expected)
    assert features.stride4.shape == (2, 8, 16, 16) and features.stride8.shape == (2, 16, 8, 8)
    plain = ViTSamImageEncoder(img_size=64, embed_dim=64, depth=2, num_heads=2, pyramid=False)
    assert plain(x).stride4 is None and plain(x).stride8 is None
    with pytest.raises(ValueError, match=r'\(B, 3, 64, 64\)'):
        encoder(torch.randn(1, 3, 48, 64))


@pytest.mark.parametrize('img_size', [128, 256])
def test_comparison_models_have_matched_parameters(img_size):
    """The ViT encoder is within 5% of the toy RWKV-SAM encoder's parameters (both decoders the same modules)."""
    tool = load_tool()
    counts = {name: tool.parameters(tool.model_config(name, img_size)) for name in tool.MODELS}
    rwkv = counts['rwkv_ms']['encoder_M']
    for name in ('vit_ms', 'vit_sam'):
        assert abs(counts[name]['encoder_M'] - rwkv) <= 0.05 * rwkv, (name, counts)
    assert counts['rwkv_sam']['decoder_M'] == counts['vit_sam']['decoder_M'] < counts['rwkv_ms']['decoder_M']
    assert counts['vit_ms']['decoder_M'] == counts['rwkv_ms']['decoder_M']


def test_multiscale_decoder_refuses_features_without_maps():
    sam = build_rwkv_sam('vit', img_size=64, fusion='none', embed_dim=64, depth=1, num_heads=2)
    features = sam.image_encoder(torch.randn(1, 3, 64, 64))
    other = build_rwkv_sam('vit', img_size=64, fusion='add', embed_dim=64, depth=1, num_heads=2)
    with pytest.raises(TypeError, match='no stride-4 / stride-8 maps'):
        other.decode_prompts(features, boxes=torch.tensor([[4., 4., 40., 40.]]))


@pytest.fixture(scope='module')
def coco_root(tmp_path_factory):
    return str(make_coco_instance_set(tmp_path_factory.mktemp('coco') / 'set', image_size=32, train_images=4,
                                      val_images=2, max_shapes=2, seed=3))


@pytest.mark.parametrize('variant, fusion', [('vit', 'add'), ('vit', 'none'), ('tiny', 'none'), ('tiny', 'add')])
def test_trainer_steps_with_every_encoder_and_decoder(coco_root, variant, fusion):
    torch.manual_seed(0)
    encoder = dict(embed_dim=64, depth=1, num_heads=2) if variant == 'vit' else dict(depth=1)
    model = RWKVSamTrainer(variant=variant, fusion=fusion, img_size=64, encoder=encoder, max_instances=2)
    data = CocoInstanceMasks(coco_root, 'annotations/instances_train.json', 'train', img_size=64, training=True)
    batch = pseudo_collate([data[i] for i in range(2)])
    losses = model(batch['inputs'], batch['data_samples'], mode='loss')
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    untrained = {name for name, p in model.sam.named_parameters() if p.grad is None or not p.grad.abs().sum()}
    # the encoder and the fusion (if any) all learn: nothing built that the decoder does not read
    assert not {name for name in untrained if name.startswith('image_encoder.') or '_feat_proj.' in name}
    assert hasattr(model.sam.mask_decoder, 'mix_feat_proj') == (fusion != 'none')
    if variant == 'vit':
        assert model.sam.image_encoder.pyramid == (fusion != 'none')


def test_run_config_is_iteration_based_with_the_toy_recipe(tmp_path):
    tool = load_tool()
    path = str(tmp_path / 'config.py')
    tool.write_run_config(path, tool.model_config('vit_ms', 256), 321)
    cfg = Config.fromfile(path)
    toy = Config.fromfile(tool.TOY_CONFIG)
    assert cfg.model.variant == 'vit' and cfg.model.img_size == 256 and cfg.model.encoder.embed_dim == 192
    assert cfg.model.focal_weight == toy.model.focal_weight and cfg.model.max_instances == toy.model.max_instances
    assert cfg.train_cfg == dict(type='IterBasedTrainLoop', max_iters=321, val_interval=321)
    assert cfg.train_dataloader.sampler.type == 'InfiniteSampler'
    assert cfg.train_dataloader.dataset.img_size == cfg.val_dataloader.dataset.img_size == 256
    assert cfg.optim_wrapper == toy.optim_wrapper
    assert [s.end for s in cfg.param_scheduler] == [32, 321] and not any(s.by_epoch for s in cfg.param_scheduler)


@pytest.mark.slow
def test_comparison_tool_trains_measures_and_resumes(tmp_path):
    """Two tiny budgets end to end (the fastest models, at 64): rows with every metric, then --resume keeps them."""
    out, work = str(tmp_path / 'out.json'), str(tmp_path / 'runs')
    command = [sys.executable, TOOL, '--budget-min', '0.02', '--sizes', '64', '--models', 'vit_sam',
               '--calibration-iters', '1', '--out', out, '--work-dir', work]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.load(open(out))['rows']
    assert [(r['model'], r['img_size']) for r in rows] == [('vit_sam', 64)]
    assert rows[0]['iters'] >= 1 and all(0 <= rows[0][k] <= 1 for k in ('mIoU_box', 'mIoU_point'))
    assert '| vit_sam | 64 |' in result.stdout
    again = subprocess.run(command + ['--resume'], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and json.load(open(out))['rows'] == rows
    assert 'calibrating' not in again.stdout
