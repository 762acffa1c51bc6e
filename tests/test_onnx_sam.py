"""RWKV-SAM in ONNX: the exported encoder and decoder in onnxruntime against the PyTorch predictor on real photos,
the torch-free runtime and demo, and clear errors for files that do not belong together."""
import os.path as osp
import subprocess
import sys

import cv2
import numpy as np
import onnx
import pytest
import skimage.data
import torch
from mmengine.config import Config

from vision_rwkv.deploy import SamOnnxEncoder, check_sam_onnx, export_sam_onnx, onnx_metadata
from vision_rwkv.errors import ExportError
from vision_rwkv.sam import build_rwkv_sam
from vision_rwkv_runtime import OnnxSamPredictor
from vision_rwkv_runtime.onnx import relative_error

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOY = osp.join(ROOT, 'configs', 'sam', 'rwkv_sam_tiny_toy_shapes.py')
DEMO = osp.join(ROOT, 'tools', 'sam_demo.py')

pytestmark = pytest.mark.slow  # one export of a toy model (about 30 s), then subprocesses


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    """The toy config's architecture with 2 RWKV blocks (img_size 128) and random weights: the model, its config
    and train.py-style checkpoint, and its two ONNX files (without the graph optimizer, a third of the export
    time; the tool's test below runs it)."""
    folder = tmp_path_factory.mktemp('sam_onnx')
    config = folder / 'toy_2_blocks.py'
    config.write_text(f'_base_ = [{TOY!r}]\nmodel = dict(encoder=dict(depth=2))\n')
    cfg = Config.fromfile(str(config)).model
    torch.manual_seed(0)
    sam = build_rwkv_sam(cfg.variant, img_size=cfg.img_size, **cfg.encoder)
    torch.save({'state_dict': {f'sam.{k}': v for k, v in sam.state_dict().items()}}, folder / 'toy.pth')
    encoder, decoder = export_sam_onnx(sam, folder / 'encoder.onnx', folder / 'decoder.onnx', optimize=False)
    return sam, (config, folder / 'toy.pth'), encoder, decoder


def photo(tmp_path, name='coffee'):
    """A scikit-image photo saved as PNG: coffee is 400x600 (padded below by the predictors), astronaut 512x512."""
    path = tmp_path / f'{name}.png'
    cv2.imwrite(str(path), getattr(skimage.data, name)()[..., ::-1])
    return path


# onnxruntime and PyTorch run the same float32 arithmetic in other kernels and summation orders (Bi-WKV in float64
# in the export); measured 1-3e-6 on the mask logits. 1e-4 is the tolerance. Masks may differ only where
# a logit rounds across the threshold: pixels within 1e-4 of 0 relative to the largest logit (none measured).
@pytest.mark.parametrize('name', ['coffee', 'astronaut'])
def test_masks_equal_the_pytorch_predictors(exported, name):
    sam, _, encoder, decoder = exported
    image = getattr(skimage.data, name)()
    rows = check_sam_onnx(sam, encoder, decoder, image)
    assert {(r['prompt'], r['multimask']) for r in rows} == {(p, m) for p in ('point', 'box', 'points')
                                                            for m in (False, True)}
    for r in rows:
        assert r['logits_rel_err'] < 1e-4, r
        assert r['iou_rel_err'] < 1e-4, r
        assert r['mask_mismatch'] == 0 or r['mismatch_max_logit'] < 1e-4, r
    assert rows[0]['mask_pixels'] == image.shape[0] * image.shape[1]


def test_encoder_takes_any_batch_and_resized_size(exported):
    sam, _, encoder_path, _ = exported
    from vision_rwkv_runtime.onnx import onnx_session
    session = onnx_session(encoder_path)
    for shape in [(1, 3, 128, 128), (2, 3, 85, 128), (3, 3, 128, 40)]:
        image = torch.rand(*shape) * 255
        with torch.no_grad():
            refs = SamOnnxEncoder(sam.eval())(image)
        outs = session.run(None, {'image': image.numpy()})
        for out, ref in zip(outs, refs):
            assert out.shape == tuple(ref.shape)
            assert relative_error(out, ref.numpy()) < 1e-4  # float32 rounding, as above


def test_files_carry_their_interface_and_model(exported):
    _, _, encoder, decoder = exported
    enc, dec = onnx_metadata(encoder), onnx_metadata(decoder)
    assert enc['opset'] == dec['opset'] == 18
    assert enc['inputs'] == {'image': ['batch', 3, 'height', 'width']}
    assert enc['outputs'] == {'image_embeddings': ['batch', 256, 8, 8], 'multiscale_features': ['batch', 64, 32, 32]}
    assert list(dec['inputs']) == ['image_embeddings', 'multiscale_features', 'point_coords', 'point_labels',
                                   'mask_input', 'has_mask_input', 'orig_im_size']
    assert dec['inputs']['point_coords'] == [1, 'num_points', 2]
    assert dec['outputs'] == {'masks': [1, 4, 'orig_height', 'orig_width'], 'iou_predictions': [1, 4],
                              'low_res_masks': [1, 4, 32, 32]}
    assert enc['metadata']['vision_rwkv.kind'] == 'rwkv_sam_encoder'
    assert dec['metadata']['vision_rwkv.kind'] == 'rwkv_sam_decoder'
    assert enc['metadata']['vision_rwkv.fingerprint'] == dec['metadata']['vision_rwkv.fingerprint']
    assert enc['metadata']['vision_rwkv.img_size'] == '128'


def test_onnx_predictor_checks_prompts_and_follows_a_mask_prompt(exported):
    _, _, encoder, decoder = exported
    predictor = OnnxSamPredictor(encoder, decoder)
    with pytest.raises(RuntimeError, match='set_image'):
        predictor.predict(point_coords=[[1, 1]], point_labels=[1])
    predictor.set_image(skimage.data.camera())  # grayscale 512x512
    assert predictor.get_image_embedding().shape == (1, 256, 8, 8)
    with pytest.raises(ValueError, match='outside the 512×512 image'):
        predictor.predict(point_coords=[[600, 10]], point_labels=[1])
    masks, scores, low_res = predictor.predict(point_coords=[[200, 200]], point_labels=[1])
    assert masks.shape == (3, 512, 512) and masks.dtype == bool and scores.shape == (3,)
    refined, _, _ = predictor.predict(mask_input=low_res[:1], multimask_output=False)  # a mask alone
    assert refined.shape == (1, 512, 512)
    with pytest.raises(ValueError, match=r'mask_input must be \(1, 32, 32\)'):
        predictor.predict(mask_input=low_res)


def with_metadata(source, target, **changes):
    model = onnx.load(str(source))
    props = {p.key: p.value for p in model.metadata_props}
    props.update(changes)
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(target))
    return target


def test_files_of_different_models_are_refused(exported, tmp_path):
    _, _, encoder, decoder = exported
    other = with_metadata(decoder, tmp_path / 'other.onnx', **{'vision_rwkv.fingerprint': '0123456789abcdef'})
    with pytest.raises(ExportError, match='come from different models'):
        OnnxSamPredictor(encoder, other)
    bigger = with_metadata(decoder, tmp_path / 'bigger.onnx', **{'vision_rwkv.img_size': '1024'})
    with pytest.raises(ExportError, match='img_size 128 and 1024'):
        OnnxSamPredictor(encoder, bigger)
    with pytest.raises(ExportError, match='expected the RWKV-SAM encoder'):
        OnnxSamPredictor(decoder, decoder)
    with pytest.raises(FileNotFoundError, match='no such ONNX file'):
        OnnxSamPredictor(tmp_path / 'missing.onnx', decoder)


def run_without_torch(*args):
    """Run tools/sam_demo.py with ``import torch`` made to fail: the ONNX path must not need it."""
    code = ('import runpy, sys; sys.modules["torch"] = None; sys.argv = sys.argv[1:]; '
            'runpy.run_path(sys.argv[0], run_name="__main__")')
    return subprocess.run([sys.executable, '-c', code, DEMO, *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def test_onnx_demo_runs_without_torch_and_draws_the_same_overlay(exported, tmp_path):
    _, (config, checkpoint), encoder, decoder = exported
    image = photo(tmp_path)
    prompt = ['--point', '300,200', '--point', '80,350,0', '--box', '150,100,450,330']
    onnx_run = run_without_torch('--onnx', encoder, decoder, '--image', image, *prompt, '--out', tmp_path / 'onnx.png')
    assert onnx_run.returncode == 0, onnx_run.stderr[-2000:]
    torch_run = subprocess.run([sys.executable, DEMO, '--config', config, '--checkpoint', checkpoint, '--image', image,
                                *prompt, '--out', tmp_path / 'torch.png'], capture_output=True, text=True, timeout=300)
    assert torch_run.returncode == 0, torch_run.stderr[-2000:]
    assert onnx_run.stdout.splitlines()[0] == torch_run.stdout.splitlines()[0]  # predicted IoU, 3 decimals
    onnx_png, torch_png = cv2.imread(str(tmp_path / 'onnx.png')), cv2.imread(str(tmp_path / 'torch.png'))
    assert onnx_png.shape == (400, 600, 3)
    assert np.array_equal(onnx_png, torch_png)
    assert not np.array_equal(onnx_png, cv2.imread(str(image)))  # something was drawn


def test_onnx_demo_errors_in_one_line(exported, tmp_path):
    _, _, encoder, decoder = exported
    image = photo(tmp_path)
    swapped = run_without_torch('--onnx', decoder, encoder, '--image', image, '--point', '5,5', '--out',
                                tmp_path / 'o.png')
    assert swapped.returncode == 2, swapped.stderr[-2000:]
    assert swapped.stderr.startswith('error: ') and 'expected the RWKV-SAM encoder' in swapped.stderr
    assert 'Traceback' not in swapped.stderr
    outside = run_without_torch('--onnx', encoder, decoder, '--image', image, '--point', '700,5', '--out',
                                tmp_path / 'o.png')
    assert outside.returncode == 2 and 'outside the 600×400 image' in outside.stderr
    auto = run_without_torch('--onnx', encoder, decoder, '--image', image, '--auto', '--out', tmp_path / 'o.png')
    assert auto.returncode == 2 and '--auto and --checkpoint need the PyTorch model' in auto.stderr
    assert not (tmp_path / 'o.png').exists()


def test_missing_onnxruntime_names_the_extra(exported, monkeypatch):
    _, _, encoder, decoder = exported
    monkeypatch.setitem(sys.modules, 'onnxruntime', None)  # import onnxruntime now raises ImportError
    with pytest.raises(ExportError, match=r'onnxruntime is not installed: pip install -e "\.\[deploy\]"'):
        OnnxSamPredictor(encoder, decoder)


def test_tool_exports_a_config_and_checks_it(tmp_path):
    """tools/export_onnx.py on the toy config with a train.py checkpoint (one RWKV block to keep it short)."""
    cfg = Config.fromfile(TOY).model
    torch.manual_seed(1)
    sam = build_rwkv_sam(cfg.variant, img_size=cfg.img_size, **dict(cfg.encoder, depth=1))
    torch.save({'state_dict': {f'sam.{k}': v for k, v in sam.state_dict().items()}}, tmp_path / 'ckpt.pth')
    out = subprocess.run([sys.executable, osp.join(ROOT, 'tools', 'export_onnx.py'), TOY, '--model-kwargs', 'depth=1',
                          '--checkpoint', tmp_path / 'ckpt.pth', '--out', tmp_path / 'enc.onnx', '--decoder-out',
                          tmp_path / 'dec.onnx', '--check-image', photo(tmp_path)], capture_output=True, text=True,
                         cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    checks = [line for line in out.stdout.splitlines() if line.startswith('check ')]
    assert len(checks) == 6 and all('mask logits relative error' in line for line in checks)
    predictor = OnnxSamPredictor(tmp_path / 'enc.onnx', tmp_path / 'dec.onnx')
    predictor.set_image(skimage.data.coffee())
    with torch.no_grad():
        embedding = sam.image_encoder(sam.preprocess(torch.from_numpy(
            predictor.transform.apply_image(skimage.data.coffee())).permute(2, 0, 1).float())[None]).embedding
    assert relative_error(predictor.get_image_embedding(), embedding.numpy()) < 1e-4  # the checkpoint's weights
