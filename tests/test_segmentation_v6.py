"""mmsegmentation with VRWKV6 blocks: the ``VRWKV6`` and ``VRWKV6_Adapter`` backbones, their configs (the VRWKV
recipes with VRWKV6 blocks) and official VRWKV6 classification checkpoints loaded through ``init_cfg``.

The official checkpoints are written by ``tests/official_vrwkv6.py`` (a port of the upstream VRWKV6 classifier,
float64 loop WKV, independent of ``vision_rwkv``) in the released mmcls layout, with weights moved far from
their initialisation (``perturb_v6_``) so that every operator shows in the outputs.
"""
import copy
import glob
import os.path as osp

import pytest
import timm
import torch
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope
from mmengine.structures import PixelData

import vision_rwkv.mmseg  # noqa: F401  (registers the backbones)
from conftest import rel_err
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample
from official_vrwkv6 import build_official_v6_classifier, official_checkpoint, perturb_v6_
from vision_rwkv.engine.launch import load_config
from vision_rwkv.errors import ConfigError
from vision_rwkv.models import BlockV6

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
SEG = osp.join(ROOT, 'configs', 'segmentation')
V6_CONFIGS = sorted(glob.glob(osp.join(SEG, 'upernet_vrwkv6_*.py')))
HEADS = {'tiny': 3, 'small': 6, 'base': 12}
# the keys in which a VRWKV6 ADE20K config differs from its VRWKV sibling (everything else is inherited)
V6_NO_DECAY = {'time_decay': dict(decay_mult=0.0), 'time_decay_w': dict(decay_mult=1.0),
               'time_faaaa': dict(decay_mult=0.0)}
# parity of float32 backbones against the float64 port: rounding is ~1e-6 (see tests/test_vrwkv6.py); a wrong
# block (e.g. one WKV direction, a whole-channel shift) moves the outputs by 1e-2 and more
TOL = 1e-5


@pytest.fixture(autouse=True)
def _mmseg_scope():
    init_default_scope('mmseg')


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: the many small VRWKV6 operations lose much more to OpenMP synchronisation on 2
    shared cores than they gain (results do not depend on the thread count)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_batch(n=2, size=(64, 64), classes=8):
    inputs = [torch.randint(0, 256, (3, *size), dtype=torch.uint8) for _ in range(n)]
    labels = [torch.randint(0, classes, (1, *size)) for _ in range(n)]
    samples = [SegDataSample(gt_sem_seg=PixelData(data=y), metainfo=dict(img_shape=size, ori_shape=size,
                                                                        pad_shape=size)) for y in labels]
    return dict(inputs=inputs, data_samples=samples)


def config_path(size: str, version: str = '6') -> str:
    return osp.join(SEG, f'upernet_vrwkv{version}_{size}_adapter_512_160k_ade20k.py')


def config_dict(path: str) -> dict:
    """The config as a plain dict, with one work dir for all (by default it is named after the file)."""
    return load_config(path, None, 'work_dirs/any').to_dict()


def test_every_vrwkv6_config_is_found():
    names = {osp.basename(p) for p in V6_CONFIGS}
    assert names == {osp.basename(config_path(s)) for s in HEADS} | {'upernet_vrwkv6_toy_shapes_ade20k.py'}


@pytest.mark.parametrize('size', sorted(HEADS))
def test_ade20k_configs_are_the_vrwkv_recipes_with_vrwkv6_blocks(size):
    """Everything but the backbone type, heads, checkpoint and the decay exemptions is the VRWKV recipe."""
    v6, v1 = config_dict(config_path(size)), config_dict(config_path(size, ''))
    backbone = v6['model']['backbone']
    assert backbone['type'] == 'VRWKV6_Adapter' and backbone['num_heads'] == HEADS[size]
    assert backbone['embed_dims'] == 64 * HEADS[size]
    assert backbone['init_cfg'] == dict(type='Pretrained', checkpoint=f'pretrained/vrwkv6_{size[0]}_in1k_224.pth')
    custom = v6['optim_wrapper']['paramwise_cfg']['custom_keys']
    assert {k: custom.pop(k) for k in V6_NO_DECAY} == V6_NO_DECAY
    for key in ('type', 'num_heads', 'init_cfg'):
        backbone.pop(key), v1['model']['backbone'].pop(key, None)
    assert v6 == v1


def small_depth(cfg):
    """Four blocks in four interaction groups: the config's widths and heads at a fraction of the cost."""
    cfg.model.backbone.depth = 4
    cfg.model.backbone.interaction_indexes = [[0, 0], [1, 1], [2, 2], [3, 3]]
    return cfg


@pytest.mark.parametrize('path', V6_CONFIGS, ids=[osp.basename(p) for p in V6_CONFIGS])
def test_vrwkv6_configs_build_and_step(path, tmp_path):
    """Each config (4 blocks, 64×64 crop) builds VRWKV6 blocks and takes one optimizer step that reaches them."""
    cfg = small_depth(load_config(path, None, str(tmp_path)))
    cfg.model.data_preprocessor.size = (64, 64)
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model)
    model.init_weights()
    blocks = model.backbone.layers
    assert all(isinstance(b, BlockV6) for b in blocks)
    assert blocks[0].att.num_heads == cfg.model.backbone.num_heads
    optim = build_optim_wrapper(model, cfg.optim_wrapper)
    watched = {n: p.detach().clone() for n, p in blocks[1].named_parameters()
               if n in ('att.time_decay', 'att.receptance.weight', 'att.time_faaaa', 'ffn.key.weight')}
    # (not time_decay_w1: behind base's 1e-5 layer scale and W2 ~ 1e-4 its gradient can fall below 1e-15, where
    # AdamW's first step, lr * g / (|g| + 1e-8), is lost in float32 rounding of its ~5e-5 values: 1 run in ~9)
    log = model.train_step(random_batch(classes=cfg.model.decode_head.num_classes), optim)
    assert torch.isfinite(log['loss'])
    params = dict(blocks[1].named_parameters())
    assert len(watched) == 4 and [n for n, v in watched.items() if torch.equal(v, params[n])] == []
    model.eval()
    with torch.no_grad():
        out = model.test_step(random_batch(n=1, size=(64, 96)))
    assert out[0].pred_sem_seg.data.shape == (1, 64, 96)


def test_vrwkv6_weight_decay_and_layer_decay(tmp_path):
    """VRWKV6's decay and bonus are exempt from weight decay, its low-rank maps and mixes are not; layer decay
    as the VRWKV recipe (embeddings 0, block i at i + 1, adapter and heads at the top)."""
    cfg = load_config(config_path('tiny'), None, str(tmp_path))
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model)
    optim = build_optim_wrapper(model, cfg.optim_wrapper)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = {names[id(g['params'][0])]: g for g in optim.optimizer.param_groups}
    layer = 'backbone.layers.3.'
    for name in ('att.time_decay', 'att.time_faaaa', 'att.ln_x.weight', 'ln1.bias', 'gamma1'):
        assert groups[layer + name]['weight_decay'] == 0.0, name
    for name in ('att.time_decay_w1', 'att.time_decay_w2', 'att.time_maa_w1', 'att.time_maa_w2', 'att.time_maa_x',
                 'att.time_maa_g', 'att.key.weight', 'att.gate.weight', 'ffn.spatial_mix_k', 'ffn.value.weight'):
        assert groups[layer + name]['weight_decay'] == 0.01, name
    assert groups['backbone.pos_embed']['weight_decay'] == 0.0
    lr, rate = 1.2e-4, 0.95
    assert groups['backbone.patch_embed.projection.weight']['lr'] == pytest.approx(lr * rate ** 13)
    assert groups['backbone.layers.0.att.time_decay']['lr'] == pytest.approx(lr * rate ** 12)
    assert groups['backbone.layers.11.att.time_decay_w1']['lr'] == pytest.approx(lr * rate)
    assert groups['backbone.interactions.0.injector.gamma']['lr'] == pytest.approx(lr)


def test_plain_vrwkv6_backbone_outputs_at_out_indices():
    backbone = MODELS.build(dict(type='VRWKV6', img_size=64, embed_dims=128, num_heads=2, depth=3,
                                 out_indices=(0, -1)))
    assert all(isinstance(b, BlockV6) and b.att.num_heads == 2 for b in backbone.layers)
    x = torch.randn(2, 3, 64, 96)
    outs = backbone(x)
    assert [tuple(o.shape) for o in outs] == [(2, 128, 4, 6), (2, 128, 4, 6)]
    raw = backbone.forward_intermediates(x, indices=[0, 2], output_fmt='NLC', intermediates_only=True)

    def as_map(tokens):
        return tokens.transpose(1, 2).reshape(2, 128, 4, 6)

    # the final norm applies to the last block's output only, as in the official backbone
    assert torch.allclose(outs[0], as_map(raw[0]), atol=1e-6)
    assert torch.allclose(outs[1], as_map(backbone.ln1(raw[1])), atol=1e-6)
    with pytest.raises(ConfigError, match='out_indices'):
        MODELS.build(dict(type='VRWKV6', img_size=64, embed_dims=64, depth=3, out_indices=(3,)))


def test_vrwkv6_adapter_pyramid_and_default_heads():
    backbone = MODELS.build(dict(type='VRWKV6_Adapter', img_size=64, embed_dims=64, depth=4, conv_inplane=16,
                                 deform_num_heads=4, interaction_indexes=[[0, 0], [1, 1], [2, 2], [3, 3]],
                                 norm_cfg=dict(type='BN')))
    assert backbone.layers[0].att.num_heads == 1  # num_heads None: embed_dims / 64
    feats = backbone(torch.randn(2, 3, 64, 96))
    assert [tuple(f.shape) for f in feats] == [(2, 64, 16, 24), (2, 64, 8, 12), (2, 64, 4, 6), (2, 64, 2, 3)]


@pytest.mark.parametrize('kwargs, match', [
    (dict(embed_dims=96), 'heads of 64 channels'),
    (dict(embed_dims=128, num_heads=4), 'heads of 64 channels'),
    (dict(shift_mode='q_shift'), 'q_shift_multihead'),
    (dict(init_mode='local'), "'fancy' initialisation only"),
])
@pytest.mark.parametrize('kind', ['VRWKV6', 'VRWKV6_Adapter'])
def test_vrwkv6_backbones_reject_what_vrwkv6_does_not_have(kind, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        MODELS.build(dict(type=kind, img_size=64, depth=4, **dict(dict(embed_dims=64), **kwargs)))


@pytest.fixture(scope='module')
def official_v6(tmp_path_factory):
    """A perturbed official VRWKV6-T classifier of 4 blocks (its backbone returns every block's output) and its
    checkpoint file in the released mmcls layout (``backbone.*``, ``head.fc.*``)."""
    generator = torch.Generator().manual_seed(0)
    port = build_official_v6_classifier('tiny', depth=4, out_indices=(0, 1, 2, 3))
    perturb_v6_(port, generator)
    path = tmp_path_factory.mktemp('official') / 'vrwkv6_t_in1k_224.pth'
    torch.save(official_checkpoint(port, meta=dict(source='tests/official_vrwkv6.py')), path)
    return port, str(path)


def test_init_cfg_loads_an_official_vrwkv6_checkpoint_into_the_plain_backbone(official_v6):
    """The block outputs match the official backbone's after loading (position embedding resampled per forward
    from the 14×14 pretraining grid, as upstream)."""
    port, path = official_v6
    backbone = MODELS.build(dict(type='VRWKV6', img_size=224, embed_dims=192, num_heads=3, depth=4,
                                 out_indices=(1, 3), init_cfg=dict(type='Pretrained', checkpoint=path)))
    backbone.init_weights()
    backbone.eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ours = backbone(x)
        theirs = port.backbone(x)
    assert len(ours) == 2
    for a, b in zip(ours, (theirs[1], theirs[3])):
        assert a.shape == b.shape == (1, 192, 4, 6)
        assert rel_err(a, b) < TOL


def test_init_cfg_loads_an_official_vrwkv6_checkpoint_into_the_adapter(official_v6):
    port, path = official_v6
    backbone = MODELS.build(dict(
        type='VRWKV6_Adapter', img_size=64, embed_dims=192, num_heads=3, depth=4, init_values=1.0,
        interaction_indexes=[[0, 0], [1, 1], [2, 2], [3, 3]], norm_cfg=dict(type='BN'),
        init_cfg=dict(type='Pretrained', checkpoint=path)))
    initial = copy.deepcopy(backbone.state_dict())
    backbone.init_weights()
    state, official = backbone.state_dict(), port.backbone.state_dict()
    blocks = [k for k in official if k.startswith('layers.')]
    assert blocks and all(torch.equal(state[k], official[k]) for k in blocks)
    # the classifier has no layer scale and the adapter has no final norm: gammas and adapter keep their init
    assert torch.equal(state['layers.2.gamma1'], initial['layers.2.gamma1'])
    assert torch.equal(state['spm.fc1.weight'], initial['spm.fc1.weight'])
    assert 'wkv_formula_id' not in state and 'ln1.weight' not in state
    expected_pos = torch.nn.functional.interpolate(
        official['pos_embed'].reshape(1, 14, 14, 192).permute(0, 3, 1, 2), size=(4, 4), mode='bicubic',
        align_corners=False).permute(0, 2, 3, 1).reshape(1, 16, 192)
    assert torch.allclose(state['pos_embed'], expected_pos, atol=1e-6)


def test_checkpoints_of_the_other_version_are_refused_by_name(tmp_path, official_v6):
    _, v6_path = official_v6
    v1_path = tmp_path / 'vrwkv_t.pth'
    torch.save(timm.create_model('vrwkv_tiny_patch16_224', depth=4).state_dict(), v1_path)
    v6 = MODELS.build(dict(type='VRWKV6', embed_dims=192, depth=4, init_cfg=dict(type='Pretrained',
                                                                                 checkpoint=str(v1_path))))
    with pytest.raises(ConfigError, match=r"VRWKV \(v1\) blocks, this backbone has VRWKV6 blocks .*'VRWKV'"):
        v6.init_weights()
    v1 = MODELS.build(dict(type='VRWKV_Adapter', embed_dims=192, depth=4, norm_cfg=dict(type='BN'),
                           interaction_indexes=[[0, 0], [1, 1], [2, 2], [3, 3]],
                           init_cfg=dict(type='Pretrained', checkpoint=v6_path)))
    with pytest.raises(ConfigError, match=r"VRWKV6 blocks, this backbone has VRWKV \(v1\) blocks .*'VRWKV6'"):
        v1.init_weights()


def test_toy_config_is_the_vrwkv_toy_recipe_at_width_64():
    v6 = config_dict(osp.join(SEG, 'upernet_vrwkv6_toy_shapes_ade20k.py'))
    v1 = config_dict(osp.join(SEG, 'upernet_vrwkv_toy_shapes_ade20k.py'))
    backbone = v6['model']['backbone']
    assert (backbone['type'], backbone['embed_dims'], backbone['num_heads'], backbone['deform_num_heads']) == (
        'VRWKV6_Adapter', 64, 1, 4)
    assert v6['model']['decode_head']['in_channels'] == [64] * 4 and v6['model']['auxiliary_head']['in_channels'] == 64
    for cfg in (v6, v1):
        for key in ('type', 'embed_dims', 'num_heads', 'deform_num_heads'):
            cfg['model']['backbone'].pop(key, None)
        cfg['model']['decode_head'].pop('in_channels')
        cfg['model']['auxiliary_head'].pop('in_channels')
    assert v6 == v1
