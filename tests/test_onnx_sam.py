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

from vision_rwkv.deploy import SamOnnxEncoder, check_sam_onnx, onnx_metadata
from vision_rwkv.errors import ExportError
from vision_rwkv.sam import RWKVSamPredictor, build_rwkv_sam
from vision_rwkv_runtime import OnnxSamPredictor
from vision_rwkv_runtime.onnx import relative_error

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOY = osp.join(ROOT, 'configs', 'sam', 'rwkv_sam_tiny_toy_shapes.py')
DEMO = osp.join(ROOT, 'tools', 'sam_demo.py')

def photo(tmp_path, name='coffee'):
    """A scikit-image photo saved as PNG: coffee is 400x600 (padded below by the predictors), astronaut 512x512."""
    path = tmp_path / f'{name}.png'
    cv2.imwrite(str(path), getattr(skimage.data, name)()[..., ::-1])
    return path


pytestmark = pytest.mark.slow  # one export of a toy model through tools/export_onnx.py (about 25 s), subprocesses


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    """The toy config's architecture with 2 RWKV blocks (img_size 128) and random weights, saved as train.py saves
    it and exported by tools/export_onnx.py from the config: the model, the config and checkpoint, the two ONNX
    files and the tool's output."""
    folder = tmp_path_factory.mktemp('sam_onnx')
    config = folder / 'toy_2_blocks.py'
    config.write_text(f'_base_ = [{TOY!r}]\nmodel = dict(encoder=dict(depth=2))\n')
    cfg = Config.fromfile(str(config)).model
    torch.manual_seed(0)
    sam = build_rwkv_sam(cfg.variant, img_size=cfg.img_size, **cfg.encoder)
    torch.save({'state_dict': {f'sam.{k}': v for k, v in sam.state_dict().items()}}, folder / 'toy.pth')
    encoder, decoder = folder / 'encoder.onnx', folder / 'decoder.onnx'
    tool = subprocess.run([sys.executable, osp.join(ROOT, 'tools', 'export_onnx.py'), config, '--checkpoint',
                           folder / 'toy.pth', '--out', encoder, '--decoder-out', decoder, '--check-image',
                           photo(folder)], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert tool.returncode == 0, tool.stderr[-3000:]
    return sam, (config, folder / 'toy.pth'), encoder, decoder, tool.stdout


# onnxruntime and PyTorch run the same float32 arithmetic in other kernels and summation orders (Bi-WKV in float64
# in the export); measured 1-3e-6 on the mask logits. 1e-4 is the tolerance. Masks may differ only where
# a logit rounds across the threshold: pixels within 1e-4 of 0 relative to the largest logit (none measured).
@pytest.mark.parametrize('name', ['coffee', 'astronaut'])
def test_masks_equal_the_pytorch_predictors(exported, name):
    sam, _, encoder, decoder, _ = exported
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
    sam, _, encoder_path, _, _ = exported
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
    _, _, encoder, decoder, _ = exported
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
    _, _, encoder, decoder, _ = exported
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
    _, _, encoder, decoder, _ = exported
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
    sam, (config, checkpoint), encoder, decoder, _ = exported
    image = photo(tmp_path)
    points, labels, box = [[300, 200], [80, 350]], [1, 0], [150, 100, 450, 330]
    prompt = ['--point', '300,200', '--point', '80,350,0', '--box', '150,100,450,330']
    onnx_run = run_without_torch('--onnx', encoder, decoder, '--image', image, *prompt, '--out', tmp_path / 'onnx.png')
    assert onnx_run.returncode == 0, onnx_run.stderr[-2000:]
    torch_run = subprocess.run([sys.executable, DEMO, '--config', config, '--checkpoint', checkpoint, '--image', image,
                                *prompt, '--out', tmp_path / 'torch.png'], capture_output=True, text=True, timeout=300)
    assert torch_run.returncode == 0, torch_run.stderr[-2000:]
    scores = [[float(v) for v in run.stdout.splitlines()[0].split(':')[1].split()] for run in (onnx_run, torch_run)]
    assert np.allclose(*scores, atol=1.5e-3)  # predicted IoU printed with 3 decimals
    onnx_png, torch_png = cv2.imread(str(tmp_path / 'onnx.png')), cv2.imread(str(tmp_path / 'torch.png'))
    assert onnx_png.shape == (400, 600, 3)
    assert not np.array_equal(onnx_png, cv2.imread(str(image)))  # something was drawn
    # The same overlay, except where a mask logit lies within float32 rounding of the threshold: such a pixel may
    # flip, and with it its fill and the contour pixels around it. 1e-4 of the logits' RMS is 50x the measured
    # relative error of the logits (2e-6). Measured: 0 or 1 differing pixels.
    predictor = RWKVSamPredictor(sam)
    predictor.set_image(skimage.data.coffee())
    logits = predictor.predict(point_coords=np.array(points), point_labels=np.array(labels), box=np.array(box),
                               multimask_output=False, return_logits=True)[0][0]
    on_threshold = np.abs(logits) < 1e-4 * np.sqrt(np.mean(logits ** 2))
    near_threshold = cv2.dilate(on_threshold.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    differ = (onnx_png != torch_png).any(-1)
    assert not (differ & ~near_threshold).any(), f'{differ.sum()} pixels differ, {on_threshold.sum()} on the threshold'


def test_onnx_demo_errors_in_one_line(exported, tmp_path):
    _, _, encoder, decoder, _ = exported
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
    _, _, encoder, decoder, _ = exported
    monkeypatch.setitem(sys.modules, 'onnxruntime', None)  # import onnxruntime now raises ImportError
    with pytest.raises(ExportError, match=r'onnxruntime is not installed: pip install -e "\.\[deploy\]"'):
        OnnxSamPredictor(encoder, decoder)


def test_tool_exports_a_config_and_checks_it(exported):
    """tools/export_onnx.py on a config with a train.py checkpoint (the fixture's export): its six checks, and the
    checkpoint's weights in the files."""
    sam, _, encoder, decoder, stdout = exported
    checks = [line for line in stdout.splitlines() if line.startswith('check ')]
    assert len(checks) == 6 and all('mask logits relative error' in line for line in checks)
    predictor = OnnxSamPredictor(encoder, decoder)
    predictor.set_image(skimage.data.coffee())
    with torch.no_grad():
        embedding = sam.image_encoder(sam.preprocess(torch.from_numpy(
            predictor.transform.apply_image(skimage.data.coffee())).permute(2, 0, 1).float())[None]).embedding
    assert relative_error(predictor.get_image_embedding(), embedding.numpy()) < 1e-4  # float32 rounding, as above
