"""Official-format checkpoints, loaded into our models by every user path, reproduce the official models.

The oracle is ``tests/official_vrwkv.py``, a port of the upstream Vision-RWKV code whose Bi-WKV is the
loop port of the official CUDA kernel (``tests/official_bi_wkv.py``). Each case builds the official
model, moves its weights far from their initialisation (``perturb_``: at init, zero position
embeddings, unit norms, zero injector gates and layer scales of 1e-5 hide whole operators, the WKV
branch first), saves the checkpoint in the official layout and loads that file through one of our
loading paths:

a. timm ``pretrained=True, pretrained_cfg_overlay=dict(file=...)``;
b. ``vision_rwkv.models.checkpoint_filter_fn`` + ``load_state_dict``;
c. mmseg backbones ``init_cfg=dict(type='Pretrained', checkpoint=...)`` + ``init_weights()`` (plain
   ``VRWKV`` from a classification checkpoint, ``VRWKV_Adapter`` from a segmentation checkpoint);
d. a classification config run by mmengine's Runner as ``tools/train.py`` does (``model.pretrained``
   and ``load_from``).

These need the ``wkv_formula`` API: an official checkpoint (no ``_extra_state`` recording a formula)
switches the model to the official kernel's arithmetic (``model.wkv_formula == 'official'``) unless
the user passed ``wkv_formula``. ``test_port_structure_matches_with_eq5`` and its adapter twin need no
API: they run the port with the paper's Eq. 5 (``vision_rwkv.kernels.bi_wkv_reference``) and compare it
with our models in Eq. 5 mode, which checks the port's (and our) names, Q-Shift, norms, position
embedding interpolation, head and pooling independently of the operator.

Tolerance. Everything runs in float32 with batch 1; errors are relative L2 over all logits (or over a
feature map). Two float32 implementations of the same function differ by rounding only: the port in
float32 against the port in float64 differs by 2.7e-7 (T), 5.3e-7 (S), 5.8e-7 (B), 7.5e-7 (L 192),
5.6e-7 (L 384), and our Eq. 5 models against the Eq. 5 port by 2.3e-7 to 6.3e-7 (measured with these
perturbed weights). The paper's Eq. 5 and the official kernel, with the same weights, differ by 1.9e-4
(T), 4.8e-4 (S), 5.7e-4 (B), 1.1e-3 (L 192), 9.6e-5 (L 384) in the logits and by 6e-5 to 3e-4 in the
feature maps (adapter f1, plain backbone). TOL = 1e-5 sits more than 10x above the rounding floor and
6x or more below the operator gap: a model that computes the wrong operator fails, one that only rounds
differently passes (``test_explicit_paper_formula_is_kept`` checks the gap).
"""
import contextlib
from typing import Dict, Tuple

import pytest
import timm
import torch
import torch.nn as nn
from mmengine.registry import DefaultScope
from mmseg.registry import MODELS

import vision_rwkv  # noqa: F401  (registers the timm models)
import vision_rwkv.mmseg  # noqa: F401  (registers the mmseg backbones)
from vision_rwkv.engine.launch import build_runner, load_config
from vision_rwkv.kernels import bi_wkv_reference
from vision_rwkv.models import checkpoint_filter_fn

from conftest import SEED, rel_err
from official_vrwkv import (OFFICIAL_ADAPTER_ARCHS, VRWKV_SpatialMix, build_official_adapter,
                            build_official_classifier, official_checkpoint, perturb_)

TOL = 1e-5  # relative L2, float32 (see the module docstring)
NUM_CLASSES = 1000
IN22K_CLASSES = 21841  # VRWKV-L 192 is released as the ImageNet-22K model (vrwkv_l_in22k_192.pth)
IN1K_ROWS = torch.arange(1000) * 21  # the 1K fine-tune keeps 1000 rows of the 22K head (upstream: map22kto1k)
TINY_OUT_INDICES = [3, 7, 11]  # the tiny port also gives the plain mmseg backbone's outputs (its head reads the last)
ADAPTER_SIZE = 256  # not the adapter's img_size 224: the position embedding is interpolated 14x14 -> 16x16 per forward
TIMM_NAMES = {('tiny', 224): 'vrwkv_tiny_patch16_224', ('small', 224): 'vrwkv_small_patch16_224',
              ('base', 224): 'vrwkv_base_patch16_224', ('large', 192): 'vrwkv_large_patch16_192',
              ('large', 384): 'vrwkv_large_patch16_384'}
README_PARAMS_M = {'tiny': 6.2, 'small': 23.8, 'base': 93.7, 'large': 334.9}  # official README, classification
CLS_CONFIG = 'configs/classification/vrwkv_tiny_8xb128_in1k.py'



@pytest.fixture(autouse=True)
def _mmseg_scope():
    """Registry builds here are mmseg's, whatever default scope an earlier in-process runner left current
    (tests/test_learning.py builds mmengine runners in this process)."""
    with DefaultScope.overwrite_default_scope('mmseg'):
        yield

def eq5_wkv(w, u, k, v):
    """Eq. 5 of the paper, float64 by explicit softmax (the project's reference)."""
    return bi_wkv_reference(w, u, k, v)


@contextlib.contextmanager
def _no_linear_init():
    """Skip nn.Linear's default init while building a port that ``perturb_`` overwrites entirely (saves
    seconds on VRWKV-L)."""
    reset = nn.Linear.reset_parameters
    nn.Linear.reset_parameters = lambda self: None
    try:
        yield
    finally:
        nn.Linear.reset_parameters = reset


@contextlib.contextmanager
def _port_wkv(model: nn.Module, wkv):
    """Run the port's Spatial Mixes with another Bi-WKV function (None: keep the official kernel port)."""
    mixes = [m for m in model.modules() if isinstance(m, VRWKV_SpatialMix)]
    old = [m.wkv for m in mixes]
    for m in mixes:
        m.wkv = wkv or m.wkv
    try:
        yield
    finally:
        for m, fn in zip(mixes, old):
            m.wkv = fn


#: Our models in Eq. 5 mode whatever the checkpoint records (loading an official one would switch them).
PAPER = dict(wkv_formula='paper')


def _assert_official_formula(model: nn.Module) -> None:
    formula = getattr(model, 'wkv_formula', '<no wkv_formula attribute>')
    assert formula == 'official', (
        f'{type(model).__name__}.wkv_formula is {formula!r} after loading an official checkpoint (expected '
        "'official': the checkpoint has no _extra_state recording a formula)")


def _assert_close(actual, expected, what: str) -> None:
    assert actual.shape == expected.shape, f'{what}: shape {tuple(actual.shape)} vs {tuple(expected.shape)}'
    err = rel_err(actual, expected)
    assert err < TOL, f'{what}: relative L2 error {err:.2e} >= {TOL:.0e}'


# ---- the official models, their checkpoint files and outputs ------------------------------------------
class OfficialCase:
    """A perturbed official classifier, its checkpoint file(s) and (cached) outputs per input size.

    VRWKV-L is one port with the 22K head: ``path`` is the 22K checkpoint (run at 192), ``path_in1k`` the same
    weights with 1000 rows of the head (the 1K fine-tune's layout, run at 384; its logits are those rows).
    """

    def __init__(self, arch: str, folder):
        self.arch = arch
        self.gen = torch.Generator().manual_seed(SEED * 8 + ['tiny', 'small', 'base', 'large'].index(arch))
        overrides = dict(out_indices=TINY_OUT_INDICES) if arch == 'tiny' else {}
        classes = IN22K_CLASSES if arch == 'large' else NUM_CLASSES
        with _no_linear_init():
            self.port = build_official_classifier(arch, num_classes=classes, **overrides)
        perturb_(self.port, self.gen)
        checkpoint = official_checkpoint(self.port, meta=dict(source='tests/official_vrwkv.py', arch=arch))
        self.path = folder / f'official_{arch}.pth'
        torch.save(checkpoint, self.path)
        self.paths = [self.path]
        if arch == 'large':
            for key in ('head.2.weight', 'head.2.bias'):
                checkpoint['state_dict'][key] = checkpoint['state_dict'][key][IN1K_ROWS].clone()
            self.path_in1k = folder / 'official_large_in1k.pth'
            torch.save(checkpoint, self.path_in1k)
            self.paths.append(self.path_in1k)
        del checkpoint
        self._images: Dict[int, torch.Tensor] = {}
        self._outputs: Dict[Tuple[int, str], tuple] = {}

    def in1k(self, size: int) -> bool:
        return self.arch == 'large' and size == 384

    def checkpoint(self, size: int) -> str:
        """The released checkpoint run at ``size``: VRWKV-L 384 is the 1K fine-tune, 192 the 22K model."""
        return str(self.path_in1k if self.in1k(size) else self.path)

    def num_classes(self, size: int) -> int:
        return IN22K_CLASSES if self.arch == 'large' and not self.in1k(size) else NUM_CLASSES

    def image(self, size: int) -> torch.Tensor:
        if size not in self._images:
            self._images[size] = torch.randn(1, 3, size, size, generator=self.gen)
        return self._images[size]

    def outputs(self, size: int, formula: str = 'official') -> tuple:
        """(logits, backbone maps) of the port at ``size``: its Bi-WKV is the official kernel or Eq. 5."""
        key = (size, formula)
        if key not in self._outputs:
            with torch.no_grad(), _port_wkv(self.port, eq5_wkv if formula == 'eq5' else None):
                feats = self.port.backbone(self.image(size))  # official order: VRWKV, GAP neck, head
                logits = self.port.head(self.port.neck(feats))
            self._outputs[key] = (logits, feats)
        return self._outputs[key]

    def logits(self, size: int, formula: str = 'official') -> torch.Tensor:
        logits = self.outputs(size, formula)[0]
        return logits[:, IN1K_ROWS] if self.in1k(size) else logits


class OfficialCases(dict):
    """arch -> OfficialCase, built on first use and kept for the module (all four ports take about 1.8 GB;
    pytest's parametrised module fixtures would rebuild them for tests with different parameter lists)."""

    def __init__(self, folder):
        super().__init__()
        self.folder = folder

    def __missing__(self, arch: str) -> OfficialCase:
        self[arch] = OfficialCase(arch, self.folder)
        return self[arch]


@pytest.fixture(scope='module')
def officials(tmp_path_factory):
    cases = OfficialCases(tmp_path_factory.mktemp('official'))
    yield cases
    for case in cases.values():
        for path in case.paths:
            path.unlink()  # VRWKV-L's files are 1.3 GB each


class OfficialAdapterCase:
    """A perturbed official VRWKV_Adapter (tiny, ADE20K config) and its mmseg 0.x checkpoint."""

    def __init__(self, folder):
        self.gen = torch.Generator().manual_seed(SEED * 8 + 5)
        with _no_linear_init():
            self.port = build_official_adapter('tiny')
        perturb_(self.port, self.gen)
        self.image = torch.randn(1, 3, ADAPTER_SIZE, ADAPTER_SIZE, generator=self.gen)
        state = {'backbone.' + k: v.detach().clone() for k, v in self.port.state_dict().items()}
        # the UperNet heads of an ADE20K checkpoint, which a backbone must ignore
        state['decode_head.conv_seg.weight'] = torch.randn(150, 512, 1, 1, generator=self.gen)
        state['decode_head.conv_seg.bias'] = torch.randn(150, generator=self.gen)
        state['auxiliary_head.conv_seg.weight'] = torch.randn(150, 256, 1, 1, generator=self.gen)
        self.path = folder / 'official_adapter_tiny_ade20k.pth'
        torch.save(dict(meta=dict(source='tests/official_vrwkv.py', CLASSES=['wall', 'building']), state_dict=state),
                   self.path)
        self._features = {}

    def features(self, formula: str = 'official'):
        if formula not in self._features:
            with torch.no_grad(), _port_wkv(self.port, eq5_wkv if formula == 'eq5' else None):
                self._features[formula] = self.port(self.image)
        return self._features[formula]


@pytest.fixture(scope='module')
def official_adapter(tmp_path_factory):
    return OfficialAdapterCase(tmp_path_factory.mktemp('official_adapter'))


@pytest.fixture(scope='module', autouse=True)
def _one_thread():
    """One intra-op thread: with the 2 cores shared by other processes, OpenMP synchronisation made the many
    small operations of these forwards 10-100x slower with 2 threads (VRWKV-T 5 s instead of 0.05 s); alone
    on the machine, one thread costs at most 2x on the large matrix products."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _forward(model: nn.Module, image: torch.Tensor):
    with torch.no_grad():
        return model.eval()(image)


CLASSIFIERS = [('tiny', 224), ('small', 224), ('base', 224), ('large', 192), ('large', 384)]


# ---- the port itself ---------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize('arch', ['tiny', 'small', 'base', 'large'])
def test_port_has_official_checkpoint_layout(officials, arch):
    """The port's keys are the released checkpoints' (mmcls T/S/B, InternImage L) and its size the README's."""
    official = officials[arch]
    keys = set(torch.load(official.path, weights_only=True, mmap=True)['state_dict'])
    depth = 24 if official.arch == 'large' else 12
    expected = {'backbone.patch_embed.projection.weight', 'backbone.pos_embed', 'backbone.layers.0.ln0.weight',
                f'backbone.layers.{depth - 1}.ffn.value.weight', 'backbone.ln1.weight',
                'backbone.layers.1.att.spatial_decay', 'backbone.layers.1.att.spatial_mix_r'}
    if official.arch == 'large':
        expected |= {'head.0.weight', 'head.2.bias', 'backbone.layers.0.att.key_norm.weight',
                     'backbone.layers.0.ffn.key_norm.weight'}
        assert official.port.backbone.pos_embed.shape == (1, 144, 1024)  # backbone at 192, also for the 384 model
    else:
        expected |= {'head.fc.weight', 'head.fc.bias'}
        assert not any('key_norm' in k for k in keys)
    assert expected <= keys
    assert any('gamma1' in k for k in keys) == (official.arch != 'tiny')
    assert not any('layers.1.ln0' in k for k in keys)
    count = sum(p.numel() for p in official.port.parameters())
    if official.arch == 'large':  # the README counts the 1K model
        count -= (IN22K_CLASSES - NUM_CLASSES) * (official.port.head[0].out_features + 1)
    assert abs(count / 1e6 - README_PARAMS_M[official.arch]) <= 0.1, count


# ---- without the wkv_formula API: the port's structure, with Eq. 5 on both sides ----------------------
@pytest.mark.slow
@pytest.mark.parametrize('arch, size', [('tiny', 224), ('small', 224), ('large', 192)])
def test_port_structure_matches_with_eq5(officials, arch, size):
    """Port with Eq. 5 == our models with Eq. 5, loaded from the port's checkpoint (timm + filter; tiny also the
    plain mmseg backbone at TINY_OUT_INDICES): names, Q-Shift, norms, layer scale, head and pooling agree."""
    official = officials[arch]
    name = TIMM_NAMES[official.arch, size]
    expected_logits, expected_feats = official.logits(size, 'eq5'), official.outputs(size, 'eq5')[1]
    model = timm.create_model(name, num_classes=official.num_classes(size), **PAPER)
    model.load_state_dict(checkpoint_filter_fn(torch.load(official.checkpoint(size), weights_only=True, mmap=True),
                                               model))
    _assert_close(_forward(model, official.image(size)), expected_logits, f'{name} logits (Eq. 5)')
    del model
    if official.arch == 'tiny':
        backbone = MODELS.build(dict(type='VRWKV', img_size=224, embed_dims=192, depth=12,
                                     out_indices=TINY_OUT_INDICES, **PAPER,
                                     init_cfg=dict(type='Pretrained', checkpoint=str(official.path))))
        backbone.init_weights()
        feats = _forward(backbone, official.image(size))
        assert len(feats) == len(expected_feats) == 3
        for i, (f, e) in enumerate(zip(feats, expected_feats)):
            _assert_close(f, e, f'mmseg VRWKV output {TINY_OUT_INDICES[i]} (Eq. 5)')


def test_adapter_port_structure_matches_with_eq5(official_adapter):
    """Official adapter with Eq. 5 == our mmseg VRWKV_Adapter with Eq. 5, from the official ADE20K checkpoint
    layout: every parameter name matches and the 4 maps agree (spatial prior, deformable attention, ConvFFN,
    per-forward position-embedding interpolation, batch norms)."""
    backbone = MODELS.build(dict(type='VRWKV_Adapter', **OFFICIAL_ADAPTER_ARCHS['tiny'],
                                 **PAPER,
                                 init_cfg=dict(type='Pretrained', checkpoint=str(official_adapter.path))))
    ours_only = {'wkv_formula_id'}  # the Bi-WKV formula our checkpoints record
    assert set(backbone.state_dict()) - ours_only == set(official_adapter.port.state_dict())
    backbone.init_weights()
    feats = _forward(backbone, official_adapter.image)
    expected = official_adapter.features('eq5')
    assert len(feats) == 4
    for i, (f, e) in enumerate(zip(feats, expected)):
        _assert_close(f, e, f'adapter f{i + 1} (Eq. 5)')


# ---- with the wkv_formula API: official checkpoints give the official outputs --------------------------
@pytest.mark.slow
@pytest.mark.parametrize('arch, size', CLASSIFIERS)
def test_timm_pretrained_file_reproduces_official_logits(officials, arch, size):
    official = officials[arch]
    name = TIMM_NAMES[official.arch, size]
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=official.checkpoint(size)),
                              num_classes=official.num_classes(size))
    _assert_official_formula(model)
    _assert_close(_forward(model, official.image(size)), official.logits(size), f'{name} logits')


@pytest.mark.parametrize('arch, size', [('tiny', 224), ('small', 224)])
def test_checkpoint_filter_fn_reproduces_official_logits(officials, arch, size):
    official = officials[arch]
    name = TIMM_NAMES[official.arch, size]
    model = timm.create_model(name, num_classes=official.num_classes(size))
    model.load_state_dict(checkpoint_filter_fn(torch.load(official.checkpoint(size), weights_only=True), model))
    _assert_official_formula(model)
    _assert_close(_forward(model, official.image(size)), official.logits(size), f'{name} logits')


def test_mmseg_vrwkv_init_cfg_reproduces_official_features(officials):
    """Plain mmseg VRWKV initialised from the official classification checkpoint (final norm on the last map)."""
    official = officials['tiny']
    backbone = MODELS.build(dict(type='VRWKV', img_size=224, embed_dims=192, depth=12, out_indices=TINY_OUT_INDICES,
                                 init_cfg=dict(type='Pretrained', checkpoint=str(official.path))))
    backbone.init_weights()
    _assert_official_formula(backbone)
    feats = _forward(backbone, official.image(224))
    for i, (f, e) in enumerate(zip(feats, official.outputs(224)[1])):
        _assert_close(f, e, f'mmseg VRWKV output {TINY_OUT_INDICES[i]}')


def test_mmseg_adapter_init_cfg_reproduces_official_features(official_adapter):
    """mmseg VRWKV_Adapter (official ADE20K tiny arguments, default SyncBN) from an official segmentation checkpoint."""
    backbone = MODELS.build(dict(type='VRWKV_Adapter', **OFFICIAL_ADAPTER_ARCHS['tiny'],
                                 init_cfg=dict(type='Pretrained', checkpoint=str(official_adapter.path))))
    backbone.init_weights()
    _assert_official_formula(backbone)
    feats = _forward(backbone, official_adapter.image)
    for i, (f, e) in enumerate(zip(feats, official_adapter.features())):
        _assert_close(f, e, f'adapter f{i + 1}')


@pytest.mark.parametrize('how', ['pretrained', 'load_from'])
def test_classification_config_reproduces_official_logits(officials, how, tmp_path):
    """The VRWKV-T ImageNet config as tools/train.py runs it: load_config, build_runner, then what Runner.train
    does to the model before the first step (init weights, then load_from / resume). The official checkpoint
    is given as ``model.pretrained`` (TimmClassifier -> timm) or as ``load_from`` (mmengine)."""
    official = officials['tiny']
    options = {'model.pretrained': str(official.path)} if how == 'pretrained' else {'load_from': str(official.path)}
    runner = build_runner(load_config(CLS_CONFIG, options, str(tmp_path / 'work')))
    runner._init_model_weights()
    runner.load_or_resume()
    model = runner.model
    assert torch.equal(model.model.patch_embed.projection.weight,
                       official.port.backbone.patch_embed.projection.weight), \
        f'{how}: the official weights did not reach the model (mmengine loads checkpoints with strict=False)'
    _assert_official_formula(model.model)
    with torch.no_grad():
        logits = model.eval()(official.image(224), mode='tensor')
    _assert_close(logits, official.logits(224), f'{CLS_CONFIG} with {how}')


def test_explicit_paper_formula_is_kept(officials):
    """wkv_formula='paper' wins over the checkpoint; with these weights Eq. 5 is measurably not the official
    operator (gap > 3 TOL), so the parity tests above do detect the operator."""
    official = officials['tiny']
    name = TIMM_NAMES['tiny', 224]
    assert timm.create_model(name, num_classes=NUM_CLASSES).wkv_formula == 'paper'  # no checkpoint: Eq. 5
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(official.path)),
                              num_classes=NUM_CLASSES, wkv_formula='paper')
    assert model.wkv_formula == 'paper'
    logits = _forward(model, official.image(224))
    gap = rel_err(logits, official.logits(224))
    assert gap > 3 * TOL, f'Eq. 5 and the official operator differ by only {gap:.2e} with these weights'
    _assert_close(logits, official.logits(224, 'eq5'), f'{name} with wkv_formula=paper vs the Eq. 5 port')
