"""VRWKV6 models: official checkpoints through timm reproduce the official logits; official sizes and
initialisation; the head-wise Q-Shift; the timm interface; clear errors for bad input.

The oracle is ``tests/official_vrwkv6.py``, a port of the upstream VRWKV6 classifier whose WKV is a loop port
of the official CUDA kernel (float64), independent of ``vision_rwkv.kernels``. Each parity case builds the
official classifier with the official init, moves its weights far from it (``perturb_v6_``: at init the
1e-4 low-rank maps, 1e-5 layer scales and zero position embedding hide the data-dependent mixing and decay
and most of the WKV branch), saves it in the released mmcls layout (``backbone.*``, ``head.fc.*``) and loads
that file with ``timm.create_model(..., pretrained=True, pretrained_cfg_overlay=dict(file=...))`` or through
``checkpoint_filter_fn``.

Sizes. VRWKV6-T runs in full (12 blocks at 224: 196 tokens). S and B run at 224 with 4 and 2 of their 12
blocks (``PARITY_DEPTH``): what they add to T (width, heads, post-norm, layer scale) is in every block, and
the WKV operator behind ``bi_wkv6`` is still the float64 recurrence (about 0.05 s per block here), so the file
stays well under a minute on 2 shared cores.

Tolerance. Everything runs in float32 with batch 1; errors are relative L2 over the logits. Measured with these
perturbed weights at the sizes above (3 seeds): the float32 port against the float64 port 5.4e-7 to 7.4e-7 (T),
2.9e-7 to 3.1e-7 (S), 2.5e-7 to 2.8e-7 (B); our models against the float32 port 3.9e-7 to 4.5e-7 (T), 2.1e-7
(S), 1.7e-7 to 1.9e-7 (B); at full depth S and B stay below 5.1e-7. TOL = 1e-5 is more than 10x above that
rounding floor and far below what a wrong model costs: without the bonus u the T logits move by 2.5e-2, with
one scan direction by 0.38 (``test_perturbed_weights_make_every_wkv_term_count`` checks both gaps), with a
whole-channel instead of a head-wise shift in either mix by 0.3, with the k and v mixes swapped by 0.33.
"""
import contextlib
import math
from typing import Dict

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import create_feature_extractor

import official_vrwkv6
import vision_rwkv  # noqa: F401  (registers the models)
from vision_rwkv.kernels.reference import bi_wkv6_reference
from vision_rwkv.layers import q_shift, q_shift_multihead, shift, spatial_mix_v6
from vision_rwkv.models import VRWKV, BlockV6, checkpoint_filter_fn

from conftest import SEED, rel_err
from official_vrwkv6 import (OFFICIAL_V6_ARCHS, OfficialVRWKV6Classifier, build_official_v6_classifier,
                             official_checkpoint, perturb_v6_)

TOL = 1e-5  # relative L2 in float32 (see the module docstring)
NAMES = {'tiny': 'vrwkv6_tiny_patch16_224', 'small': 'vrwkv6_small_patch16_224', 'base': 'vrwkv6_base_patch16_224'}
OFFICIAL_PARAMS = {'tiny': 7_641_256, 'small': 27_677_032, 'base': 104_898_280}  # the upstream modules, 1000 classes
README_PARAMS_M = {'tiny': 7.6, 'small': 27.7, 'base': 104.9}  # official README table
PARITY_DEPTH = {'tiny': 12, 'small': 4, 'base': 2}
SIZE = 224
# a small VRWKV6 for the interface tests: one head of 64 channels, 16 tokens
SMALL = dict(embed_dim=64, depth=3, img_size=64, num_classes=7)


def small_model(**kwargs) -> VRWKV:
    return timm.create_model('vrwkv6_tiny_patch16_224', **dict(SMALL, **kwargs)).eval()


@contextlib.contextmanager
def _no_linear_init():
    """Skip nn.Linear's default init while building a port whose linears are overwritten (or only counted)."""
    reset = nn.Linear.reset_parameters
    nn.Linear.reset_parameters = lambda self: None
    try:
        yield
    finally:
        nn.Linear.reset_parameters = reset


@pytest.fixture(scope='module', autouse=True)
def _one_thread():
    """One intra-op thread: the WKV recurrences are hundreds of small steps, which lose 10x and more to OpenMP
    synchronisation when the 2 cores are shared (elementwise steps: the thread count does not change results)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---- the official classifiers and their checkpoint files ---------------------------------------------
class V6Case:
    """A perturbed official classifier of ``PARITY_DEPTH`` blocks, its checkpoint file and cached outputs."""

    def __init__(self, arch: str, folder):
        self.arch = arch
        self.depth = PARITY_DEPTH[arch]
        self.gen = torch.Generator().manual_seed(SEED * 4 + list(NAMES).index(arch))
        with _no_linear_init():
            self.port = build_official_v6_classifier(arch, depth=self.depth)
        perturb_v6_(self.port, self.gen)
        self.path = folder / f'vrwkv6_{arch}_official.pth'
        torch.save(official_checkpoint(self.port, meta=dict(source='tests/official_vrwkv6.py', arch=arch)), self.path)
        self._images: Dict[int, torch.Tensor] = {}
        self._logits: Dict[int, torch.Tensor] = {}

    def image(self, size: int = SIZE) -> torch.Tensor:
        if size not in self._images:
            self._images[size] = torch.randn(1, 3, size, size, generator=self.gen)
        return self._images[size]

    def logits(self, size: int = SIZE) -> torch.Tensor:
        """The port's logits (upstream order: VRWKV6 backbone, GAP neck, fc head); at another size the port
        interpolates its 14x14 position embedding in the forward, as upstream."""
        if size not in self._logits:
            with torch.no_grad():
                self._logits[size] = self.port(self.image(size))
        return self._logits[size]

    def timm_model(self, **kwargs) -> VRWKV:
        return timm.create_model(NAMES[self.arch], pretrained=True, pretrained_cfg_overlay=dict(file=str(self.path)),
                                 depth=self.depth, **kwargs).eval()


class V6Cases(dict):
    """arch -> V6Case, built on first use and kept for the module."""

    def __init__(self, folder):
        super().__init__()
        self.folder = folder

    def __missing__(self, arch: str) -> V6Case:
        self[arch] = V6Case(arch, self.folder)
        return self[arch]


@pytest.fixture(scope='module')
def cases(tmp_path_factory):
    return V6Cases(tmp_path_factory.mktemp('official_v6'))


def _forward(model: nn.Module, image: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(image)


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    assert actual.shape == expected.shape, f'{what}: shape {tuple(actual.shape)} vs {tuple(expected.shape)}'
    err = rel_err(actual, expected)
    assert err < TOL, f'{what}: relative L2 error {err:.2e} >= {TOL:.0e}'


# ---- official architecture -----------------------------------------------------------------------
@pytest.mark.parametrize('arch', list(NAMES))
def test_parameter_counts_match_official(arch):
    """Our models with a 1000-class head have exactly the parameters of the upstream modules (counted on the
    port at full depth), which the README rounds to 7.6M / 27.7M / 104.9M."""
    with torch.device('meta'):
        model = timm.create_model(NAMES[arch])
    ours = sum(p.numel() for p in model.parameters())
    with _no_linear_init():
        port = OfficialVRWKV6Classifier(**OFFICIAL_V6_ARCHS[arch])
    official = sum(p.numel() for p in port.parameters())
    assert ours == official == OFFICIAL_PARAMS[arch]
    assert abs(ours / 1e6 - README_PARAMS_M[arch]) < 0.05


def test_state_dict_is_the_official_layout():
    """Every key and shape of the official checkpoint (backbone prefix and mmcls head removed), and nothing
    else: no ``wkv_formula_id`` (VRWKV6 has no formula to record)."""
    with _no_linear_init():
        port = OfficialVRWKV6Classifier(num_classes=7, **dict(OFFICIAL_V6_ARCHS['small'], img_size=64, depth=2,
                                                              key_norm=True))
    expected = {}
    for key, value in port.state_dict().items():
        key = key[len('backbone.'):] if key.startswith('backbone.') else key.replace('head.fc.', 'head.')
        expected[key] = tuple(value.shape)
    model = timm.create_model(NAMES['small'], img_size=64, depth=2, num_classes=7, key_norm=True, device='meta')
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == expected
    assert {'layers.1.att.ln_x.weight', 'layers.0.att.time_faaaa', 'layers.0.att.key_norm.bias', 'layers.1.gamma2',
            'layers.1.ffn.key_norm.weight'} <= ours.keys()
    assert model.wkv_formula is None


def _fancy(C: int, layer: int, depth: int, i: int) -> Dict[str, float]:
    """The upstream 'fancy' formulas (vrwkv6.py, _init_weights) for channel i of layer ``layer``."""
    r01, r10 = layer / (depth - 1), 1 - layer / depth
    ramp, n = i / C, i / (C - 1)
    return dict(time_maa_x=1 - ramp ** r10, time_maa_w=1 - ramp ** r10, time_maa_k=1 - ramp ** r10,
                time_maa_v=1 - (ramp ** r10 + 0.3 * r01), time_maa_r=1 - ramp ** (0.5 * r10),
                time_maa_g=1 - ramp ** (0.5 * r10), time_decay=-6 + 5 * n ** (0.7 + 1.3 * r01),
                time_faaaa=r01 * (1 - n) + ((i + 1) % 3 - 1) * 0.1, ffn_mix=ramp ** r10)


@torch.no_grad()
def test_official_initialisation():
    """Mixing, decay and bonus values of the upstream formulas (at a few channels of the first, a middle and
    the last block), the port's values, and the distributions of the random parameters."""
    C, depth = 192, 3
    model = timm.create_model(NAMES['small'], embed_dim=C, img_size=32, depth=depth)
    with _no_linear_init():
        port = OfficialVRWKV6Classifier(img_size=32, embed_dims=C, num_heads=3, depth=depth)
    for layer in range(depth):
        att, ffn = model.layers[layer].att, model.layers[layer].ffn
        port_att = port.backbone.layers[layer].att
        for i in (0, 1, 2, 95, C - 1):
            expected = _fancy(C, layer, depth, i)
            for name in ('time_maa_x', 'time_maa_w', 'time_maa_k', 'time_maa_v', 'time_maa_r', 'time_maa_g',
                         'time_decay', 'time_faaaa'):
                value = float(getattr(att, name).flatten()[i])
                assert value == pytest.approx(expected[name], abs=1e-6), (layer, i, name)
            assert float(ffn.spatial_mix_k.flatten()[i]) == pytest.approx(expected['ffn_mix'], abs=1e-6)
            assert float(ffn.spatial_mix_r.flatten()[i]) == pytest.approx(expected['ffn_mix'], abs=1e-6)
        for name, param in port_att.named_parameters(recurse=False):
            if not name.endswith(('w1', 'w2')):
                torch.testing.assert_close(getattr(att, name), param, rtol=0, atol=1e-6, msg=name)
        assert att.time_faaaa.shape == (3, 64) and att.time_decay.shape == (1, 1, C)
        bound = 1e-4  # uniform(-1e-4, 1e-4): std 1e-4 / sqrt(3)
        for name in ('time_maa_w1', 'time_maa_w2', 'time_decay_w1', 'time_decay_w2'):
            param = getattr(att, name)
            assert param.shape == getattr(port_att, name).shape
            assert param.abs().max() <= bound and abs(float(param.std()) - bound / math.sqrt(3)) < 0.05 * bound
        assert torch.all(att.ln_x.weight == 1) and torch.all(att.ln_x.bias == 0) and att.ln_x.eps == 1e-5
        assert att.ln_x.num_groups == 3
    # mmcls init_cfg: TruncNormal(Linear, std 0.02, bias 0), Constant(LayerNorm, 1, 0); zero position embedding
    for linear in (model.layers[1].att.gate, model.layers[2].ffn.key, model.head):
        assert abs(float(linear.weight.std()) - 0.02) < 0.001
    assert torch.all(model.head.bias == 0) and model.layers[0].att.key.bias is None
    assert torch.all(model.layers[0].ln0.weight == 1) and torch.all(model.ln1.bias == 0)
    assert torch.count_nonzero(model.pos_embed) == 0
    assert torch.all(model.layers[2].gamma1 == 1e-5) and model.layers[2].post_norm


# ---- the head-wise Q-Shift -----------------------------------------------------------------------------
@pytest.mark.parametrize('B,H,W,C,s', [(2, 5, 7, 128, 1), (1, 4, 4, 64, 2), (2, 14, 14, 192, 1), (1, 3, 2, 64, 0)])
def test_q_shift_multihead_matches_official(B, H, W, C, s):
    x = torch.randn(B, H * W, C)
    out = q_shift_multihead(x, (H, W), s)
    assert torch.equal(out, official_vrwkv6.q_shift_multihead(x, s, patch_resolution=(H, W)))
    if s and C > 64:  # per head, not across all channels
        assert not torch.equal(out, q_shift(x, (H, W), s))


@pytest.mark.parametrize('s', [1, 2])
def test_fused_head_wise_shift_mix_matches_autograd(s):
    """``shift_mix(..., head_size=64)`` (one shift each way, VRWKV6's channel mix) against plain autograd of
    the official shift: the same outputs, gradients to float64 rounding."""
    grid, C = (4, 5), 128
    x = torch.randn(2, 20, C, dtype=torch.float64, requires_grad=True)
    mixes = [torch.rand(1, 1, C, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    out = shift.shift_mix(x, grid, mixes, s, 0.25, head_size=64)
    xx = official_vrwkv6.q_shift_multihead(x, s, patch_resolution=grid)
    ref = [x * m + xx * (1 - m) for m in mixes]
    assert all(rel_err(a, b) < 1e-14 for a, b in zip(out, ref))  # lerp and x*m + xx*(1-m) round differently
    gs = [torch.randn_like(o) for o in out]
    for g, g_ref in zip(torch.autograd.grad(out, [x, *mixes], gs), torch.autograd.grad(ref, [x, *mixes], gs)):
        assert rel_err(g, g_ref) < 1e-13


def test_q_shift_multihead_rejects_bad_layout():
    with pytest.raises(ValueError, match='does not match'):
        q_shift_multihead(torch.randn(1, 12, 64), (3, 5))
    with pytest.raises(ValueError, match='not heads of 64'):
        q_shift_multihead(torch.randn(1, 12, 96), (3, 4))


# ---- parity with the official classifiers ----------------------------------------------------------------
@pytest.mark.parametrize('arch', list(NAMES))
def test_timm_pretrained_file_reproduces_official_logits(cases, arch):
    case = cases[arch]
    model = case.timm_model()
    assert model.wkv_formula is None and isinstance(model.layers[0], BlockV6)
    _assert_close(_forward(model, case.image()), case.logits(), f'{NAMES[arch]} ({case.depth} blocks) logits')


def test_checkpoint_filter_fn_takes_every_official_wrapping(cases):
    """mmcls ``state_dict`` (also with a DDP ``module.`` prefix), a ``model`` entry, or the bare dict: the same
    converted weights, which reproduce the official logits."""
    case = cases['tiny']
    checkpoint = torch.load(case.path, weights_only=True)
    model = timm.create_model(NAMES['tiny'], depth=case.depth).eval()
    converted = checkpoint_filter_fn(checkpoint, model)
    wrapped = [checkpoint['state_dict'], {'model': checkpoint['state_dict']},
               {'state_dict': {'module.' + k: v for k, v in checkpoint['state_dict'].items()}}]
    for other in wrapped:
        other = checkpoint_filter_fn(other, model)
        assert other.keys() == converted.keys() and all(torch.equal(other[k], v) for k, v in converted.items())
    model.load_state_dict(converted)
    _assert_close(_forward(model, case.image()), case.logits(), 'vrwkv6_tiny via checkpoint_filter_fn')


def test_smaller_model_resamples_the_position_embedding(cases):
    """The 224 checkpoint in a 64-pixel model: the filter resamples the 14x14 position embedding once (bicubic),
    as the official model does in every forward at 64 pixels."""
    case = cases['tiny']
    model = case.timm_model(img_size=64)
    assert model.pos_embed.shape == (1, 16, 192)
    _assert_close(_forward(model, case.image(64)), case.logits(64), 'vrwkv6_tiny at 64 from a 224 checkpoint')


def test_finetune_head_and_in_chans_from_official_file(cases):
    """Another num_classes drops the official head (timm); in_chans=1 adapts the patch projection once."""
    case = cases['tiny']
    model = case.timm_model(num_classes=5, in_chans=1, img_size=32)
    expected = timm.models.adapt_input_conv(1, case.port.backbone.patch_embed.projection.weight.detach())
    assert torch.equal(model.patch_embed.projection.weight, expected)
    assert torch.equal(model.layers[3].att.time_maa_w2, case.port.backbone.layers[3].att.time_maa_w2)
    assert _forward(model, torch.randn(2, 1, 32, 32)).shape == (2, 5)


def test_perturbed_weights_make_every_wkv_term_count(cases, monkeypatch):
    """On the T case: decays spread from ~0 to ~1 with exp(w) < 110, and dropping the bonus u or the reverse
    scan from the port's kernel moves the logits far beyond TOL (so the parity tests check the operator)."""
    case = cases['tiny']
    kernel = official_vrwkv6.wkv6_kernel_forward
    log_decays = []

    def recording(B, T, C, H, r, k, v, ew, u):
        log_decays.append(ew)
        return kernel(B, T, C, H, r, k, v, ew, u)

    def without_bonus(B, T, C, H, r, k, v, ew, u):
        return kernel(B, T, C, H, r, k, v, ew, torch.zeros_like(u))

    def forward_scan_only(B, T, C, H, r, k, v, ew, u):  # minus the reverse scan: the flipped forward scan, u = 0
        reverse = kernel(B, T, C, H, *(t.flip(1) for t in (r, k, v, ew)), torch.zeros_like(u)).flip(1)
        return kernel(B, T, C, H, r, k, v, ew, u) - reverse

    image = case.image()
    gaps = {}
    for name, variant in (('recording', recording), ('without_bonus', without_bonus),
                          ('forward_scan_only', forward_scan_only)):
        monkeypatch.setattr(official_vrwkv6, 'wkv6_kernel_forward', variant)
        gaps[name] = rel_err(_forward(case.port, image), case.logits())
    assert gaps['recording'] == 0
    exp_w = torch.cat([-ew.flatten() for ew in log_decays])  # ew = -exp(w)
    decay = torch.exp(-exp_w)
    assert len(log_decays) == case.depth and float(exp_w.max()) < 110
    assert float((decay < 0.01).float().mean()) > 0.05 and float((decay > 0.99).float().mean()) > 0.05
    assert gaps['without_bonus'] > 100 * TOL and gaps['forward_scan_only'] > 100 * TOL, gaps


# ---- timm interface ------------------------------------------------------------------------------------
def test_forward_intermediates_and_pruning():
    model = small_model()
    x = torch.randn(2, 3, 64, 64)
    final, inter = model.forward_intermediates(x)
    assert torch.allclose(final, model.forward_features(x), atol=1e-6)
    assert len(inter) == 3 and inter[0].shape == (2, 64, 4, 4)
    nlc = model.forward_intermediates(x, indices=[0, 2], output_fmt='NLC', intermediates_only=True, norm=True)
    assert [t.shape for t in nlc] == [(2, 16, 64)] * 2 and torch.allclose(nlc[1], final, atol=1e-6)
    early = model.forward_intermediates(x, indices=1, stop_early=True, intermediates_only=True)
    assert torch.allclose(early[0], inter[2])
    assert model.prune_intermediate_layers([1]) == [1] and len(model.layers) == 2
    assert model(x).shape == (2, 16, 64)  # pruned head: tokens


def test_features_only():
    model = timm.create_model(NAMES['tiny'], features_only=True, out_indices=(0, 2), img_size=64, depth=3)
    feats = model(torch.randn(1, 3, 64, 64))
    assert [f.shape for f in feats] == [(1, 192, 4, 4)] * 2
    assert model.feature_info.channels() == [192, 192] and model.feature_info.reduction() == [16, 16]


def test_fx_feature_extraction_keeps_one_wkv_node_per_block():
    model = small_model()
    extractor = create_feature_extractor(model, {'layers.1': 'block1', 'head': 'logits'})
    calls = [n for n in extractor.graph.nodes if n.op == 'call_function']
    assert sum(getattr(n.target, '__name__', '') == 'bi_wkv6' for n in calls) == 3
    x = torch.randn(2, 3, 64, 64)
    out = extractor(x)
    block1 = model.forward_intermediates(x, indices=[1], output_fmt='NLC', intermediates_only=True)[0]
    torch.testing.assert_close(out['block1'], block1)
    torch.testing.assert_close(out['logits'], model(x))


@pytest.mark.parametrize('img_size', [32, 64])  # 16 tokens (one chunk of the PyTorch path) and 64 (four)
def test_parameter_gradients_match_autograd_through_the_reference_recurrence(img_size, monkeypatch):
    """Every parameter's gradient of a perturbed float64 model, with bi_wkv6's explicit chunked backward,
    against autograd through ``bi_wkv6_reference`` (the naive float64 recurrence). Both are exact, so
    the bound is float64 rounding: at most 2.6e-15 measured; 1e-12 leaves a factor 400 for other draws."""
    model = timm.create_model('vrwkv6_tiny_patch16_224', img_size=img_size, patch_size=8, embed_dim=128,
                              depth=3, num_classes=6).double()
    official_vrwkv6.perturb_v6_(model)
    x = torch.randn(2, 3, img_size, img_size, dtype=torch.float64)
    target = torch.randint(0, 6, (2,))

    def gradients():
        model.zero_grad()
        F.cross_entropy(model(x), target).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    chunked = gradients()
    monkeypatch.setattr(spatial_mix_v6, 'bi_wkv6', lambda r, k, v, w, u: bi_wkv6_reference(r, k, v, w, u))
    reference = gradients()
    assert all(torch.count_nonzero(g) for g in reference.values())
    for name, grad in reference.items():
        assert rel_err(chunked[name], grad) < 1e-12, name


def test_grad_checkpointing_gives_same_gradients():
    model = small_model(depth=2).train()
    x = torch.randn(2, 3, 64, 64)
    model(x).square().sum().backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert all(torch.count_nonzero(g) for n, g in ref.items() if 'time_' in n)  # the WKV branch gets gradients
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).square().sum().backward()
    for name, param in model.named_parameters():
        assert rel_err(param.grad, ref[name]) < 1e-6, name


def test_bfloat16_autocast_and_dtype_factory_argument():
    x = torch.randn(2, 3, 64, 64)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = small_model()(x)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    model = small_model(dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert model(x.bfloat16()).dtype == torch.bfloat16


def test_dynamic_img_size_and_padding():
    model = small_model(dynamic_img_size=True)
    assert model(torch.randn(1, 3, 80, 48)).shape == (1, 7)
    with pytest.raises(ValueError, match='not divisible by the patch size'):
        model(torch.randn(1, 3, 70, 48))
    with pytest.raises(ValueError, match='does not match the model'):
        small_model()(torch.randn(1, 3, 80, 64))
    padded = small_model(dynamic_img_size=True, dynamic_img_pad=True)
    assert padded.forward_intermediates(torch.randn(1, 3, 70, 48), intermediates_only=True)[0].shape == (1, 64, 5, 3)


# ---- bad options and checkpoints ----------------------------------------------------------------------------
@pytest.mark.parametrize('kwargs,match', [
    (dict(wkv_mode='cross'), "wkv_mode='cross': VRWKV6 blocks scan the tokens in raster order only"),
    (dict(wkv_formula='official'), "wkv_formula='official': VRWKV6's WKV has one definition"),
    (dict(channel_gamma=0.2), 'a quarter of each head'),
    (dict(init_mode='local'), "'fancy' initialisation only"),
    (dict(shift_pixel=0), 'at least one patch'),
    (dict(embed_dim=96), 'embed_dim must be 64 \\* num_heads, got embed_dim=96'),
    (dict(num_heads=2), 'got embed_dim=64, num_heads=2'),
])
def test_options_vrwkv6_does_not_have_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        small_model(**kwargs)


def test_wkv_formula_api_is_absent():
    model = small_model()
    assert model.wkv_formula is None and 'wkv_formula_id' not in model.state_dict()
    with pytest.raises(ValueError, match='wkv_formula is an option of VRWKV \\(v1\\) models'):
        model.set_wkv_formula('paper')
    with pytest.raises(ValueError, match='VRWKV \\(v1\\) blocks have no heads'):
        timm.create_model('vrwkv_tiny_patch16_224', num_heads=3, device='meta')


def official_layout(model: nn.Module) -> dict:
    """Our model's weights as an mmcls checkpoint."""
    state = {('head.fc.' + k[5:] if k.startswith('head.') else 'backbone.' + k): v
             for k, v in model.state_dict().items() if k != 'wkv_formula_id'}
    return {'meta': {}, 'state_dict': state}


def test_checkpoint_of_the_other_version_is_refused_by_name(tmp_path):
    v6 = small_model(depth=2)
    v1 = timm.create_model('vrwkv_tiny_patch16_224', embed_dim=64, depth=2, img_size=64, num_classes=7)
    with pytest.raises(ValueError, match=r"unexpected keys, e\.g\. \['layers\.0\.att\.spatial_decay'.*"
                                         r"its blocks are VRWKV \(v1\) blocks: load it into a vrwkv_\* model"):
        checkpoint_filter_fn(official_layout(v1), v6)
    with pytest.raises(ValueError, match=r'VRWKV6 blocks: load it into a vrwkv6_\* model'):
        checkpoint_filter_fn(official_layout(v6), v1)
    path = tmp_path / 'vrwkv_v1.pth'
    torch.save(official_layout(v1), path)
    with pytest.raises(ValueError, match=r'vrwkv_v1\.pth: checkpoint keys match neither.*VRWKV \(v1\) blocks'):
        timm.create_model('vrwkv6_tiny_patch16_224', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                          **dict(SMALL, depth=2))


def test_truncated_or_foreign_checkpoint_names_the_keys(tmp_path):
    model = small_model(depth=2)
    state = {k: v for k, v in official_layout(model)['state_dict'].items() if not k.startswith('backbone.layers.1.')}
    with pytest.raises(ValueError, match=r"0 unexpected keys.*missing keys, e\.g\. \['layers\.1\."):
        checkpoint_filter_fn({'state_dict': state}, model)
    path = tmp_path / 'short.pth'
    torch.save({'state_dict': state}, path)
    with pytest.raises(ValueError, match=r"short\.pth: .*missing keys, e\.g\. \['layers\.1\."):
        timm.create_model('vrwkv6_tiny_patch16_224', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                          **dict(SMALL, depth=2, num_classes=5))
    vit = timm.create_model('vit_tiny_patch16_224', img_size=32, depth=1).state_dict()
    with pytest.raises(ValueError, match=r"unexpected keys, e\.g\. \[.*'cls_token'"):
        checkpoint_filter_fn(vit, model)
