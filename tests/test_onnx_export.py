"""ONNX export: the exportable Bi-WKV (``kernels.bi_wkv_export``) against the float64 references, and VRWKV models
exported with dynamic batch and size, run in onnxruntime against PyTorch."""
import subprocess
import sys
from pathlib import Path

import onnxruntime  # the deploy extra, which the test command installs
import pytest
import timm
import torch

from vision_rwkv.kernels.bi_wkv_export import (bi_wkv_2d_export, bi_wkv_export, bi_wkv_official_export,
                                               onnx_exporting)
from vision_rwkv.kernels.reference import (bi_wkv6_reference, bi_wkv_2d_reference, bi_wkv_official_reference,
                                           bi_wkv_scan_reference)
from vision_rwkv.kernels.wkv6_export import bi_wkv6_export

from conftest import rel_err

ROOT = Path(__file__).resolve().parents[1]


def draw(B, H, W, C, w_total=6.0, k_scale=3.0, dtype=torch.float64):
    """w with T·|w| up to about ``w_total`` (the models pass spatial_decay / T), u, k, v."""
    T = H * W
    w = torch.randn(C, dtype=dtype) * w_total / T
    u = torch.randn(C, dtype=dtype) * w_total / T
    k = torch.randn(B, T, C, dtype=dtype) * k_scale
    v = torch.randn(B, T, C, dtype=dtype)
    return w, u, k, v


# float64 throughout: each output is a ratio of two sums of at most 2T positive-weight terms, each computed as a
# product of two exponentials and a cumulative sum, so the rounding error is a few eps·T relative
# (eps = 2.2e-16, T <= 80 here: < 1e-13); 1e-11 leaves a margin of 100.
@pytest.mark.parametrize('H, W', [(1, 1), (1, 7), (3, 5), (8, 8), (5, 16)])
@pytest.mark.parametrize('order', ['row', 'col', 'cross'])
def test_exportable_bi_wkv_matches_reference(H, W, order):
    C = 6
    w, u, k, v = draw(2, H, W, C)
    split = {'row': C, 'col': 0, 'cross': C // 2}[order]
    y = bi_wkv_export(w, u, k, v, (H, W), split)
    assert rel_err(y, bi_wkv_scan_reference(w, u, k, v, (H, W), order)) < 1e-11


@pytest.mark.parametrize('H, W', [(1, 1), (2, 9), (6, 6), (7, 11)])
def test_exportable_bi_wkv_2d_matches_reference(H, W):
    w, u, k, v = draw(2, H, W, 5)
    w = w * H * W / (H + W)  # the model passes spatial_decay / (H + W) in 2D
    # the same bound as above: the s = t term subtracted from the separable sum costs eps·e^{w - u} of the bonus
    assert rel_err(bi_wkv_2d_export(w, u, k, v, (H, W)), bi_wkv_2d_reference(w, u, k, v, (H, W))) < 1e-11


@pytest.mark.parametrize('T', [1, 5, 32, 33, 64, 100, 196, 257])
def test_exportable_official_formula_matches_reference(T):
    w, u, k, v = draw(2, 1, T, 5)
    # the local terms of each segment add terms of either sign; measured below 2e-15 up to T = 1000
    assert rel_err(bi_wkv_official_export(w, u, k, v), bi_wkv_official_reference(w, u, k, v)) < 1e-11


@pytest.mark.parametrize('w_total, k_scale', [(60.0, 8.0), (-60.0, 8.0), (200.0, 30.0)])
def test_exportable_bi_wkv_holds_at_strong_decays(w_total, k_scale):
    """The module's stated range: T·|w| + the spread of k well inside 700 (float64's e^{±709})."""
    H, W, C = 9, 11, 8
    w, u, k, v = draw(1, H, W, C, w_total=w_total, k_scale=k_scale)
    w = w.sign() * w_total / (H * W)  # every channel at the full decay, both signs of w_total
    y = bi_wkv_export(w, u, k, v, (H, W), C)
    assert torch.isfinite(y).all()
    # the error grows with the dynamic range: eps·e^{range}·... does not apply (sums of positive terms); the
    # ratio of sums keeps a few eps·T: 1e-10
    assert rel_err(y, bi_wkv_scan_reference(w, u, k, v, (H, W), 'row')) < 1e-10


def test_exportable_bi_wkv_keeps_the_input_dtype():
    w, u, k, v = draw(2, 4, 5, 6, dtype=torch.float32)
    y = bi_wkv_export(w, u, k, v, (4, 5), 6)
    assert y.dtype == torch.float32
    # computed in float64, rounded once to float32: half an ulp, 6e-8 relative
    assert rel_err(y, bi_wkv_scan_reference(w, u, k, v, (4, 5), 'row')) < 2e-7


# VRWKV6: the chunked arithmetic of the eager path (kernels.wkv6_torch), so its tolerances: float64 1e-12 (sums
# of terms of one sign per pair weight, measured 4e-16 on the eager path), float32 16·eps = 1.9e-6 (measured 1.2e-7).
# Both relative to the output of |r|, |k|, |v|, |u| (every term positive), as in test_bi_wkv6: the terms of one
# output cancel, and at T = 1 the output (r·u·k) v hangs on one 64-term dot product, whose own relative error
# has no bound (measured 3.7e-6 against the output's norm in one float32 draw).
@pytest.mark.parametrize('B, T, H', [(1, 1, 1), (2, 13, 2), (1, 16, 1), (1, 17, 1), (2, 40, 1)])
@pytest.mark.parametrize('dtype, tol', [(torch.float64, 1e-12), (torch.float32, 16 * 1.19e-7)])
def test_exportable_bi_wkv6_matches_reference(B, T, H, dtype, tol):
    C = 64 * H
    r, k, v = (torch.randn(B, T, C, dtype=dtype) for _ in range(3))
    w = torch.randn(B, T, C, dtype=dtype) * 2 - 1  # per-token decays from e^-0.05 to e^-55
    u = torch.randn(H, 64, dtype=dtype)
    y = bi_wkv6_export(r, k, v, w, u)
    assert y.dtype == dtype
    scale = bi_wkv6_reference(r.abs(), k.abs(), v.abs(), w, u.abs())
    assert rel_err(y, bi_wkv6_reference(r, k, v, w, u), scale) < tol


def test_not_exporting_outside_an_export():
    assert not onnx_exporting()


# ---- models in onnxruntime ---------------------------------------------------------------------------------------

def mixed_vrwkv():
    """A VRWKV with the tiny model's recipe at width 32 and one block of each Bi-WKV arithmetic: raster, cross,
    2d and the official formula (5 classes); decays and bonuses drawn wider than the init so the arithmetic
    shows (|spatial_decay| up to about 9)."""
    model = timm.create_model('vrwkv_tiny_patch16_224', embed_dim=32, depth=4, num_classes=5,
                              dynamic_img_size=True).eval()
    for block, mode in zip(model.layers, ('raster', 'cross', '2d', 'raster')):
        block.att.wkv_mode = mode
    model.layers[3].att.set_wkv_formula('official')
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(('spatial_decay', 'spatial_first')):
                p.copy_(torch.randn_like(p) * 3)
    return model


#: sizes checked after exporting at 64x64: the export size and two others, one not square
SIZES = [(64, 64), (80, 48), (128, 96)]


def test_mixed_vrwkv_layers_are_what_they_say():
    """The exported model below runs four different Bi-WKV arithmetics (else its test would check less)."""
    model, k, v = mixed_vrwkv(), torch.randn(1, 20, 32), torch.randn(1, 20, 32)
    first = model.layers[0].att
    with torch.no_grad():
        for block in model.layers:  # the same decay and bonus everywhere: only the arithmetic differs
            block.att.spatial_decay.copy_(first.spatial_decay)
            block.att.spatial_first.copy_(first.spatial_first)
        outs = [block.att.wkv(k, v, (4, 5)) for block in model.layers]
    for i in range(4):
        for j in range(i):
            assert rel_err(outs[i], outs[j]) > 1e-3


# onnxruntime and PyTorch run the same float32 graph except Bi-WKV (float64 in the export, float32 in PyTorch);
# kernels differ in summation order: a few float32 ulps per op, 1e-6 measured. The target is 1e-4.
def test_vrwkv_exports_with_dynamic_batch_and_size(tmp_path):
    from vision_rwkv.deploy import check_onnx, export_onnx
    model = mixed_vrwkv()
    path = export_onnx(model, tmp_path / 'model.onnx', img_size=(64, 64), optimize=False)
    rows = check_onnx(model, path, SIZES, batch=2)
    assert [r['size'] for r in rows] == SIZES
    for row in rows:
        assert row['rel_err'] < 1e-4, row


@pytest.mark.slow
def test_vrwkv6_exports_with_dynamic_batch_and_size(tmp_path):
    """bi_wkv6's states cross the chunks in an ONNX Scan: checked at one chunk (64²: 16 tokens) and at 3 and 16."""
    from vision_rwkv.deploy import check_onnx, export_onnx
    model = timm.create_model('vrwkv6_tiny_patch16_224', embed_dim=64, depth=1, num_classes=5,
                              dynamic_img_size=True).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if 'time_decay' in name:
                p.add_(torch.randn_like(p))  # decays spread wider than the init
    path = export_onnx(model, tmp_path / 'v6.onnx', img_size=(96, 96), optimize=False)
    for row in check_onnx(model, path, [(64, 64), (80, 48), (256, 256)], batch=2):
        assert row['rel_err'] < 1e-4, row


@pytest.mark.slow
def test_features_only_export(tmp_path):
    from vision_rwkv.deploy import check_onnx, export_onnx, onnx_metadata
    model = timm.create_model('vrwkv_tiny_patch16_224', embed_dim=32, depth=2, features_only=True,
                              out_indices=(0, 1), dynamic_img_size=True).eval()
    path = export_onnx(model, tmp_path / 'features.onnx', img_size=(64, 64), optimize=False)
    assert max(r['rel_err'] for r in check_onnx(model, path, [(64, 64), (96, 128)])) < 1e-4
    meta = onnx_metadata(path)
    assert meta['opset'] == 18
    assert list(meta['outputs']) == ['features_0', 'features_1']
    assert meta['inputs']['images'] == ['batch', 3, '16*grid_h', '16*grid_w']


def test_export_refuses_models_it_cannot_export(tmp_path):
    from vision_rwkv.deploy import export_onnx
    from vision_rwkv.errors import ExportError
    v6 = timm.create_model('vrwkv6_tiny_patch16_224', embed_dim=64, depth=1, dynamic_img_size=True)
    with pytest.raises(ExportError, match='more than 16 tokens'):
        export_onnx(v6, tmp_path / 'v6.onnx', img_size=64)  # one chunk of bi_wkv6 would fix the chunk count
    fixed = timm.create_model('vrwkv_tiny_patch16_224', embed_dim=32, depth=1)
    with pytest.raises(ExportError, match='dynamic_img_size=True'):
        export_onnx(fixed, tmp_path / 'fixed.onnx')
    with pytest.raises(ExportError, match='multiples of the patch size'):
        export_onnx(mixed_vrwkv(), tmp_path / 'odd.onnx', img_size=70)
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_torchscript_exporter_is_refused(tmp_path):
    """The TorchScript exporter records the input size as constants: a graph that is wrong at other sizes."""
    with pytest.raises(Exception, match='dynamo=True'):
        torch.onnx.export(mixed_vrwkv(), (torch.randn(1, 3, 64, 64),), str(tmp_path / 'ts.onnx'), dynamo=False)


def test_missing_onnxruntime_names_the_extra(monkeypatch, tmp_path):
    from vision_rwkv.deploy import onnx_session
    from vision_rwkv.errors import ExportError
    monkeypatch.setitem(sys.modules, 'onnxruntime', None)  # import onnxruntime now raises ImportError
    with pytest.raises(ExportError, match=r'onnxruntime is not installed: pip install -e "\.\[deploy\]"'):
        onnx_session(tmp_path / 'model.onnx')


def run_tool(*args):
    return subprocess.run([sys.executable, str(ROOT / 'tools' / 'export_onnx.py'), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)


@pytest.mark.slow
def test_tool_reports_bad_files_in_one_line(tmp_path):
    bogus = tmp_path / 'bogus.onnx'
    bogus.write_bytes(b'not a model at all')
    for path, message in ((bogus, 'is not an ONNX model'), (tmp_path / 'missing.onnx', 'no such ONNX file')):
        out = run_tool('--info', path)
        assert out.returncode == 2, out.stderr
        assert out.stderr.startswith('error: ') and message in out.stderr and 'Traceback' not in out.stderr


@pytest.mark.slow
def test_tool_exports_a_trained_checkpoint_and_checks_it(tmp_path):
    """A model saved the way train.py saves it (the classifier's state dict), exported from its config (with the
    graph optimizer, the default)."""
    from vision_rwkv.engine.classifier import TimmClassifier
    config = ROOT / 'configs' / 'classification' / 'vrwkv_toy_shapes.py'
    from mmengine.config import Config
    cfg = Config.fromfile(str(config))
    classifier = TimmClassifier(model_name=cfg.model.model_name, num_classes=cfg.model.num_classes,
                                model_kwargs=dict(cfg.model.model_kwargs, depth=2))
    torch.save(dict(state_dict=classifier.state_dict()), tmp_path / 'ckpt.pth')
    out = run_tool(config, '--model-kwargs', 'depth=2', '--checkpoint', tmp_path / 'ckpt.pth',
                   '--out', tmp_path / 'toy.onnx', '--check', 32, '48x32')
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [line for line in out.stdout.splitlines() if line.startswith('check ')]
    assert len(lines) == 2 and all('relative error' in line for line in lines)
    session = onnxruntime.InferenceSession(str(tmp_path / 'toy.onnx'), providers=['CPUExecutionProvider'])
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = classifier.model.eval()(x)
    assert rel_err(torch.from_numpy(session.run(None, {'images': x.numpy()})[0]), ref) < 1e-4
