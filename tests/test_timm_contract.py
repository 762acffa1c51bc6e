"""timm's model contract: timm's own ``tests/test_models.py`` run on the VRWKV models, and plain tests of
what timm's builder and feature extraction need from them (``device`` / ``dtype`` factory arguments,
``img_size`` / ``in_chans`` on every entrypoint, torch.fx tracing).

timm's test file comes from the sdist of the installed timm version, which ``tools/setup_env.sh`` downloads
into ``.cache/timm-sdist`` (tests never download). ``tests/timm_models_plugin.py`` points it at our models.
"""
import copy
import os
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, List, Optional

import pytest
import timm
import torch
from timm.models import create_feature_extractor
from timm.models._features import FeatureGetterNet
from timm.models._features_fx import FeatureGraphNet

import vision_rwkv  # noqa: F401  (registers the models)
from vision_rwkv.models import VRWKVAdapter

from conftest import SEED

REPO = Path(__file__).resolve().parents[1]
SDIST = REPO / '.cache' / 'timm-sdist' / f'timm-{timm.__version__}.tar.gz'
ALL_MODELS = timm.list_models('vrwkv*')
TINY_MODELS = timm.list_models('vrwkv*_tiny_*')
# The tests of timm's test_models.py that take our models (the plugin leaves out the network and TorchScript
# ones), including test_prune_intermediate_layers_contract, which timm's CI leaves out for its run time.
PER_MODEL_TESTS = ('test_model_forward', 'test_model_backward', 'test_model_default_cfgs_non_std',
                   'test_model_forward_intermediates_features', 'test_model_forward_intermediates',
                   'test_prune_intermediate_layers_contract', 'test_model_forward_fx', 'test_model_backward_fx')
# timm's own size rule, applied as to timm's models: "Fixed input size model > limit." where a test's
# limit (MAX_BWD_SIZE 320, MAX_FFEAT_SIZE 256, MAX_FWD_FX_SIZE 256, ...) is below the fixed input size.
SIZE_SKIP = 'Fixed input size model > limit.'


def timm_tests(folder: Path, sdist: Path = SDIST) -> Path:
    """``folder`` with timm's tests/test_models.py from the sdist of the installed timm; the calling test
    fails (not skips) without the sdist."""
    if not sdist.is_file():
        pytest.fail(f'{sdist} is missing: run tools/setup_env.sh, which downloads the sdist of the installed '
                    f'timm ({timm.__version__}) for this test')
    with tarfile.open(sdist) as tar:
        member = tar.getmember(f'timm-{timm.__version__}/tests/test_models.py')
        (folder / 'test_models.py').write_bytes(tar.extractfile(member).read())
    (folder / 'pytest.ini').write_text('[pytest]\n')  # not our pytest.ini
    return folder


def run_timm_tests(folder: Path, models: List[str], markers: Optional[str] = None) -> Dict[str, str]:
    """Run timm's test_models.py on ``models`` (its tests marked ``markers``, or all) in a subprocess; returns
    the outcome of each test id ('passed', 'failed' or 'skipped: <reason>')."""
    report = folder / 'report.xml'
    env = dict(os.environ, VRWKV_TIMM_MODELS=','.join(models), VRWKV_TEST_SEED=str(SEED),
               PYTHONPATH=os.pathsep.join([str(REPO / 'tests'), str(REPO), os.environ.get('PYTHONPATH', '')]))
    env.pop('GITHUB_ACTIONS', None)  # timm's GitHub-runner filters would drop large models from some tests
    # timm's per-test limits (120-360 s) are set for its CI runners; on a shared 2-core CPU VRWKV-L's pruning
    # contract (24 prunings of a 335M-parameter model) takes 3-7 minutes: timm's TIMEOUT variable raises them
    env.setdefault('TIMEOUT', '1800')
    cmd = [sys.executable, '-m', 'pytest', str(folder / 'test_models.py'), '-p', 'timm_models_plugin',
           '-c', str(folder / 'pytest.ini'), '--rootdir', str(folder), '-p', 'no:cacheprovider',
           '-W', 'ignore::pytest.PytestUnknownMarkWarning', '-q', '-rfEs', f'--junitxml={report}']
    cmd += ['-m', markers] if markers else []
    proc = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True)
    output = proc.stdout[-6000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, f'timm tests failed (exit {proc.returncode}):\n{output}'
    outcomes = {}
    for case in ET.parse(report).iter('testcase'):
        skipped = case.find('skipped')
        failed = case.find('failure') is not None or case.find('error') is not None
        outcomes[case.get('name')] = ('failed' if failed else 'passed' if skipped is None
                                      else f"skipped: {skipped.get('message', '')}")
    return outcomes


def outcomes_by_model(outcomes: Dict[str, str]) -> Dict[tuple, str]:
    """'test_model_forward[1-vrwkv_tiny_patch16_224]' -> ('test_model_forward', 'vrwkv_tiny_patch16_224')."""
    out = {}
    for test_id, outcome in outcomes.items():
        name, params = test_id.rstrip(']').split('[')
        model = next(p for p in params.split('-') if p.startswith('vrwkv'))
        out[name, model.split('.')[0]] = outcome
    return out


def assert_all_ran(outcomes: Dict[str, str], models: List[str], tests) -> None:
    """Every test ran on every model and passed, or was skipped by timm's size rule (fixed size > limit)."""
    results = outcomes_by_model(outcomes)
    missing = [(t, m) for t in tests for m in models if (t, m) not in results]
    assert not missing, f'timm tests that did not run: {missing}'
    bad = {key: r for key, r in results.items() if r != 'passed' and r != f'skipped: {SIZE_SKIP}'}
    assert not bad, bad
    size_skipped = {m for (_, m), r in results.items() if r != 'passed'}
    fixed_sizes = {m: max(timm.get_pretrained_cfg_value(m, 'input_size')[1:]) for m in size_skipped}
    assert all(size > 224 for size in fixed_sizes.values()), fixed_sizes  # only VRWKV-L/384 exceeds a limit


def test_missing_timm_sdist_fails_with_setup_hint(tmp_path):
    with pytest.raises(pytest.fail.Exception, match=r'missing: run tools/setup_env\.sh'):
        timm_tests(tmp_path, sdist=tmp_path / 'timm-0.0.0.tar.gz')


@pytest.mark.slow
def test_timm_config_and_api_tests_on_every_model(tmp_path):
    """timm's config / API test for all 15 models (12 VRWKV, 3 VRWKV6) on the meta device: factory device and
    dtype, classifier reset, pooling, head widths, group_matcher, no_weight_decay, frozen parameters."""
    outcomes = run_timm_tests(timm_tests(tmp_path), ALL_MODELS, 'cfg')
    assert_all_ran(outcomes, ALL_MODELS, ['test_model_default_cfgs_non_std'])


@pytest.mark.timm_models
@pytest.mark.timeout(3600)
def test_timm_model_tests_on_tiny_models(tmp_path):
    """Every per-model test (forward, backward, features, pruning, fx, config) on the tiny models of the three
    wkv modes and VRWKV6 (``--timm-models``: about 1 minute on 2 idle CPU cores, up to 10x that under load)."""
    assert_all_ran(run_timm_tests(timm_tests(tmp_path), TINY_MODELS), TINY_MODELS, PER_MODEL_TESTS)


@pytest.mark.timm_models
@pytest.mark.timeout(3600)  # VRWKV-L alone takes about 10 minutes on 2 CPU cores
@pytest.mark.parametrize('size', ['small', 'base', 'large'])
def test_timm_model_tests_on_larger_models(tmp_path, size):
    """The same on the small, base and large models (about 15 minutes in all on 2 idle CPU cores: ``--timm-models``)."""
    models = timm.list_models(f'vrwkv*_{size}_*')
    assert_all_ran(run_timm_tests(timm_tests(tmp_path), models), models, PER_MODEL_TESTS)


# ---- plain contract tests ----------------------------------------------------------------------
def floating_tensors(model: torch.nn.Module):
    return [(n, t) for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_floating_point()]


@pytest.mark.parametrize('name', ALL_MODELS)
def test_create_model_on_meta_in_bfloat16(name):
    """timm's builder passes device and dtype to the constructor: every tensor is created there."""
    model = timm.create_model(name, device='meta', dtype=torch.bfloat16)
    tensors = [*model.named_parameters(), *model.named_buffers()]
    assert tensors and all(t.device.type == 'meta' for _, t in tensors)
    assert all(t.dtype == torch.bfloat16 for _, t in floating_tensors(model))
    size = model.pretrained_cfg['input_size'][1:]
    out = model(torch.randn(2, 3, *size, device='meta', dtype=torch.bfloat16))
    assert out.shape == (2, model.num_classes) and out.dtype == torch.bfloat16


def test_adapter_on_meta_in_bfloat16():
    model = VRWKVAdapter(device='meta', dtype=torch.bfloat16)
    tensors = [*model.named_parameters(), *model.named_buffers()]
    assert all(t.device.type == 'meta' for _, t in tensors)
    assert all(t.dtype == torch.bfloat16 for _, t in floating_tensors(model))
    assert model.level_embed.dtype == model.spm.fc1.weight.dtype == model.interactions[0].injector.gamma.dtype


def test_create_model_on_cpu_in_bfloat16_matches_float32_cast():
    """dtype=bfloat16 builds the float32 model's values in bfloat16 (the fancy init is computed in float32)."""
    torch.manual_seed(SEED)
    reference = timm.create_model('vrwkv_small_patch16_224', img_size=32, depth=2).to(torch.bfloat16)
    torch.manual_seed(SEED)
    model = timm.create_model('vrwkv_small_patch16_224', img_size=32, depth=2, device='cpu', dtype=torch.bfloat16)
    state, ref_state = model.state_dict(), reference.state_dict()
    mixing = [k for k in state if 'spatial_' in k or 'gamma' in k]
    assert mixing and all(torch.equal(state[k], ref_state[k]) for k in mixing)
    assert all(t.dtype == torch.bfloat16 for _, t in floating_tensors(model))
    assert model(torch.randn(1, 3, 32, 32, dtype=torch.bfloat16)).dtype == torch.bfloat16


@pytest.mark.parametrize('name', ALL_MODELS)
def test_every_entrypoint_honours_img_size_and_in_chans(name):
    model = timm.create_model(name, img_size=(48, 80), in_chans=1, device='meta')
    assert model.in_chans == 1 and model.patch_embed.projection.in_channels == 1
    assert model.patch_embed.grid_size == (3, 5) and model.pos_embed.shape[1] == 15
    assert model.forward_features(torch.randn(1, 1, 48, 80, device='meta')).shape[1] == 15


# ---- torch.fx ----------------------------------------------------------------------------------
FX_TINY = dict(img_size=64, embed_dim=32, depth=3, num_classes=5)


@pytest.mark.parametrize('name,wkv', [('vrwkv_tiny_patch16_224', 'bi_wkv'),
                                      ('vrwkvcross_tiny_patch16_224', 'bi_wkv'),
                                      ('vrwkv2d_tiny_patch16_224', 'bi_wkv_2d')])
def test_fx_graph_keeps_bi_wkv_one_node_and_matches_eager(name, wkv):
    """timm's fx feature extraction (its leaf modules and functions): one node per Bi-WKV call, outputs
    and gradients as in eager mode."""
    model = timm.create_model(name, **FX_TINY).train()
    extractor = create_feature_extractor(model, {'layers.1': 'block1', 'head': 'logits'})
    calls = [n for n in extractor.graph.nodes if n.op == 'call_function']
    assert sum(getattr(n.target, '__name__', '') == wkv for n in calls) == 3  # one node per block
    assert not [n for n in calls if 'vision_rwkv' in str(n.target)]  # its torch.library ops stay inside
    x = torch.randn(2, 3, 64, 64, requires_grad=True)
    out = extractor(x)
    eager_block1 = model.forward_intermediates(x, indices=[1], output_fmt='NLC', intermediates_only=True)[0]
    # the graph runs the same kernels in the same order: equal to float32 rounding (assert_close defaults)
    torch.testing.assert_close(out['block1'], eager_block1)
    torch.testing.assert_close(out['logits'], model(x))
    params = [x, model.layers[0].att.spatial_decay, model.layers[2].ffn.key.weight]
    grads = torch.autograd.grad(out['logits'].square().sum(), params)
    eager = torch.autograd.grad(model(x).square().sum(), params)
    for g, e in zip(grads, eager):
        torch.testing.assert_close(g, e)


def test_fx_features_only():
    """features_only with timm's fx feature class: the blocks' tokens, as the feature getter's maps."""
    model = timm.create_model('vrwkv_tiny_patch16_224', **FX_TINY).eval()
    fx = FeatureGraphNet(model, out_indices=(0, 2))
    getter = FeatureGetterNet(copy.deepcopy(model), out_indices=(0, 2))
    x = torch.randn(2, 3, 64, 64)
    fx_tokens, maps = fx(x), getter(x)
    assert [tuple(t.shape) for t in fx_tokens] == [(2, 16, 32)] * 2
    for tokens, grid in zip(fx_tokens, maps):
        torch.testing.assert_close(tokens, grid.flatten(2).transpose(1, 2))  # same kernels, float32 rounding
