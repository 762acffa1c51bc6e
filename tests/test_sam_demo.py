"""tools/sam_demo.py: overlays on a real photo and on odd image kinds, and clear errors."""
import os.path as osp
import subprocess
import sys

import cv2
import numpy as np
import pytest
import skimage.data
import torch
from mmengine.config import Config

from vision_rwkv.sam import build_rwkv_sam

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEMO = osp.join(ROOT, 'tools', 'sam_demo.py')
TOY = osp.join(ROOT, 'configs', 'sam', 'rwkv_sam_tiny_toy_shapes.py')


pytestmark = pytest.mark.slow  # every test runs the demo in a subprocess (6-18 s each)


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    """Random weights of the toy architecture, saved as tools/train.py does (state_dict, 'sam.' keys)."""
    model = Config.fromfile(TOY).model
    torch.manual_seed(0)
    sam = build_rwkv_sam(model.variant, img_size=model.img_size, **model.encoder)
    path = tmp_path_factory.mktemp('ckpt') / 'toy.pth'
    torch.save({'state_dict': {f'sam.{k}': v for k, v in sam.state_dict().items()}}, path)
    return str(path)


def demo(*args):
    return subprocess.run([sys.executable, DEMO, *args], capture_output=True, text=True, timeout=300)


def test_demo_on_a_real_photo_with_points_box_and_auto(checkpoint, tmp_path):
    photo = tmp_path / 'astronaut.png'
    cv2.imwrite(str(photo), skimage.data.astronaut()[..., ::-1])
    out = tmp_path / 'out.png'
    run = demo('--image', str(photo), '--checkpoint', checkpoint, '--point', '250,150', '--point', '60,400,0',
               '--box', '100,20,350,300', '--out', str(out))
    assert run.returncode == 0, run.stderr[-2000:]
    assert 'predicted IoU' in run.stdout
    overlay = cv2.imread(str(out))
    assert overlay.shape == (512, 512, 3) and not np.array_equal(overlay, cv2.imread(str(photo)))
    auto = demo('--image', str(photo), '--checkpoint', checkpoint, '--auto', '--iou-thresh', '0', '--out', str(out))
    assert auto.returncode == 0, auto.stderr[-2000:]
    assert 'masks' in auto.stdout


@pytest.mark.parametrize('kind', ['gray', 'rgba', 'uint16'])
def test_demo_reads_grayscale_rgba_and_16_bit_images(checkpoint, tmp_path, kind):
    image = skimage.data.camera() if kind == 'gray' else skimage.data.astronaut()
    if kind == 'rgba':
        image = np.dstack([image[..., ::-1], np.full(image.shape[:2], 200, np.uint8)])
    if kind == 'uint16':
        image = image[..., ::-1].astype(np.uint16) * 257
    path = tmp_path / f'{kind}.png'
    cv2.imwrite(str(path), image)
    run = demo('--image', str(path), '--checkpoint', checkpoint, '--point', '100,100', '--out', str(tmp_path / 'o.png'))
    assert run.returncode == 0, run.stderr[-2000:]
    assert cv2.imread(str(tmp_path / 'o.png')).shape[:2] == image.shape[:2]


@pytest.mark.parametrize('args, message', [
    (['--point', '900,10'], 'outside the 512×512 image'),
    (['--box', '300,10,100,90'], 'x1 < x0'),
    (['--point', '1,2,3,4'], '--point takes 2 or 3 numbers'),
    ([], 'give a prompt'),
])
def test_demo_bad_prompts_end_with_one_line(checkpoint, tmp_path, args, message):
    photo = tmp_path / 'astronaut.png'
    cv2.imwrite(str(photo), skimage.data.astronaut()[..., ::-1])
    run = demo('--image', str(photo), '--checkpoint', checkpoint, *args, '--out', str(tmp_path / 'o.png'))
    assert run.returncode == 2 and message in run.stderr
    assert not (tmp_path / 'o.png').exists()


def test_demo_missing_and_corrupt_images(checkpoint, tmp_path):
    run = demo('--image', str(tmp_path / 'none.png'), '--checkpoint', checkpoint, '--auto', '--out',
               str(tmp_path / 'o.png'))
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [f'error: image {tmp_path}/none.png does not exist']
    bad = tmp_path / 'bad.png'
    bad.write_bytes(b'\x89PNG broken')
    run = demo('--image', str(bad), '--checkpoint', checkpoint, '--auto', '--out', str(tmp_path / 'o.png'))
    assert run.returncode == 2 and 'not a readable image' in run.stderr
