"""tools/gpu_check.py on CPU at tiny shapes (Triton interpreter), so that the GPU check cannot rot.

End to end in a subprocess with the packages the GPU machine lacks blocked at import; with a
deliberately broken kernel (monkeypatched in-process), which must make it exit non-zero with the
failing checks, and only those, marked FAIL; and with no time budget left, where every item must be
reported as skipped.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SEED

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / 'tools' / 'gpu_check.py'
# not installed on the GPU machines (only torch, triton, timm, numpy, scipy, scikit-image are)
BLOCKED = ('mmengine', 'mmseg', 'mmcv', 'segment_anything', 'pycocotools', 'cv2')
SECTIONS = ('kernels', 'model_check', 'bench_ops', 'bench_models', 'bench_sam', 'multi_device')

# Runs the script as __main__ after putting a finder first on sys.meta_path that refuses the blocked
# packages, as an interpreter without them would.
BLOCKING_WRAPPER = '''
import runpy, sys

BLOCKED = {blocked!r}


class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in BLOCKED:
            raise ModuleNotFoundError(f'No module named {{name!r}} (blocked by the test)', name=name)
        return None


sys.meta_path.insert(0, Blocker())
sys.argv = [{script!r}] + sys.argv[1:]
runpy.run_path({script!r}, run_name='__main__')
'''


@pytest.mark.slow
def test_smoke_run_without_optional_packages(tmp_path):
    out = tmp_path / 'out'
    wrapper = BLOCKING_WRAPPER.format(blocked=BLOCKED, script=str(SCRIPT))
    # one thread: tiny ops on a loaded 2-core machine run many times faster without OpenMP contention
    env = {**os.environ, 'PYTHONPATH': str(ROOT), 'TRITON_INTERPRET': '1', 'OMP_NUM_THREADS': '1'}
    result = subprocess.run([sys.executable, '-c', wrapper, '--smoke', '--out', str(out), '--seed', str(SEED)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]

    data = json.loads((out / 'gpu_check.json').read_text())
    assert data['mode'] == 'smoke' and data['summary'] == dict(failures=0, exit_code=0)
    assert data['errors'] == []
    for key in ('gpu', 'torch', 'triton', 'date', 'seed'):
        assert data['machine'][key] not in (None, ''), key
    for section in SECTIONS:
        assert data[section]['status'] == 'done', section
    kernels = data['kernels']['rows']
    assert {r['op'] for r in kernels} >= {'row', 'col', 'cross', '2d'}
    assert {r['quantity'] for r in kernels} >= {'y', 'gw', 'gu', 'gk', 'gv'}
    assert all(r['status'] == 'PASS' for r in kernels + data['model_check']['rows'])
    assert {r['model'] for r in data['model_check']['rows']} == {'vrwkv_tiny_patch16_224', 'vrwkv_small_patch16_224'}
    ops = data['bench_ops']['rows']
    assert ops and all(r['status'] == 'ok' and r['fwd_ms'] > 0 and r['fwd_GBps'] > 0 for r in ops)
    assert all(r['sdpa_fwd_bwd_ms'] > 0 for r in ops if 'sdpa_fwd_bwd_ms' in r)
    models = data['bench_models']['rows']
    assert {(r['model'].split('_')[0], r['mode']) for r in models} == {
        (m, mode) for m in ('vit', 'vrwkv') for mode in ('inference', 'train')}
    assert all(r['status'] == 'ok' and r['images_per_s'] > 0 for r in models)
    sam = data['bench_sam']['rows']
    assert sam and {r['model'] for r in sam} == {'tiny'} and all(r['status'] == 'ok' for r in sam)
    skipped = {(s['section'], s['item']): s['reason'] for s in data['skipped']}
    assert 'segment_anything' in skipped[('bench_sam', 'segment-anything ViT-B (sam_vit_b)')]
    assert ('multi_device', 'kernels on cuda:1') in skipped

    markdown = (out / 'gpu_check.md').read_text()
    for heading in ('Correctness: Triton kernels', 'Correctness: VRWKV', '(a) Bi-WKV vs SDPA', '(b) VRWKV vs ViT',
                    '(c) SAM image encoders', 'Skipped', 'Summary'):
        assert f'## {heading}' in markdown, heading
    assert '| PASS |' in markdown and 'exit code 0' in markdown
    assert '## Summary' in result.stdout and 'exit code 0' in result.stdout


def patch_kernel(monkeypatch, name, replacement):
    """Replace the kernel entry point ``name`` in every loaded module of vision_rwkv.kernels that holds it
    (its own module, and any module that imported the name)."""
    for module in list(sys.modules.values()):
        if getattr(module, '__name__', '').startswith('vision_rwkv.kernels') and hasattr(module, name):
            monkeypatch.setattr(module, name, replacement)


def test_broken_kernel_fails(tmp_path, monkeypatch):
    """The 1D forward off by 5% and the 2D backward's gk off by 5%: exit 1; exactly those checks fail."""
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    import gpu_check
    import vision_rwkv.kernels.bi_wkv_2d_triton as kernels_2d
    import vision_rwkv.kernels.bi_wkv_triton as kernels_1d

    forward_1d, backward_2d = kernels_1d.bi_wkv_triton_forward, kernels_2d.bi_wkv_2d_triton_backward

    def broken_forward_1d(*args, **kwargs):
        y, log_den = forward_1d(*args, **kwargs)
        return y * 1.05, log_den

    def broken_backward_2d(*args, **kwargs):
        gw, gu, gk, gv = backward_2d(*args, **kwargs)
        return gw, gu, gk * 1.05, gv

    patch_kernel(monkeypatch, 'bi_wkv_triton_forward', broken_forward_1d)
    patch_kernel(monkeypatch, 'bi_wkv_2d_triton_backward', broken_backward_2d)
    cases = gpu_check.kernel_cases('smoke')
    monkeypatch.setattr(gpu_check, 'kernel_cases', lambda mode: cases[:4])  # one case per op, fp32
    assert gpu_check.main(['--smoke', '--sections', 'kernels', '--out', str(tmp_path), '--seed', str(SEED)]) == 1

    data = json.loads((tmp_path / 'gpu_check.json').read_text())
    assert data['summary']['exit_code'] == 1 and data['errors'] == []
    names = [case.name for case in cases[:4]]
    status = {(r['op'], r['quantity']): r['status'] for r in data['kernels']['rows'] if r['case'] in names}
    assert len(status) == 4 * 5  # y and four gradients per case
    for op in ('row', 'col', 'cross'):
        assert status[(op, 'y')] == 'FAIL', op
    assert status[('2d', 'y')] == 'PASS' and status[('2d', 'gv')] == 'PASS'
    assert status[('2d', 'gk')] == 'FAIL'
    assert '| FAIL |' in (tmp_path / 'gpu_check.md').read_text()


def test_exhausted_budget_skips_and_says_so(tmp_path, monkeypatch):
    """With no time left every measured item is listed as skipped, nothing fails, exit 0."""
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    import gpu_check

    monkeypatch.setitem(gpu_check.PLANS['smoke'], 'total', 0)
    assert gpu_check.main(['--smoke', '--out', str(tmp_path), '--seed', str(SEED),
                           '--sections', 'kernels,model_check,bench_ops,bench_models']) == 0
    data = json.loads((tmp_path / 'gpu_check.json').read_text())
    assert data['errors'] == [] and data['kernels']['rows'][0]['case'].startswith('reference self-check')
    reasons = {s['section']: s['reason'] for s in data['skipped']}
    assert set(reasons) == {'kernels', 'model_check', 'bench_ops', 'bench_models'}
    assert all(reason.startswith('time budget') for reason in reasons.values())
    skipped_cases = [s['item'] for s in data['skipped'] if s['section'] == 'kernels']
    assert skipped_cases == [case.name for case in gpu_check.kernel_cases('smoke')]
    assert data['bench_ops']['rows'] == [] and data['bench_models']['rows'] == []
