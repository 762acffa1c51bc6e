"""tools/sam_app.py and its server (``vision_rwkv_runtime.sam_app``): endpoints, bad input, the upload cap, paths
outside the page, host binding; and the page itself in a real headless Chromium (Playwright), where a click on a
shape must show that shape's mask, within the latency target.

The server tests use a random-weight toy model (64 input, one RWKV block): fast, and the masks they check are
compared with the predictor's own. The browser test needs a model that segments from a click: it trains one
(see ``clicked_sam``).
"""
import base64
import contextlib
import http.client
import io
import json
import math
import os
import re
import subprocess
import sys
import threading
import types
import urllib.request
import zlib
from urllib.error import HTTPError

import numpy as np
import pytest
import torch
from PIL import Image

from vision_rwkv.sam import RWKVSamAutomaticMaskGenerator, RWKVSamPredictor, build_rwkv_sam
from vision_rwkv_runtime.sam_app import (DISC_COLOUR, SHAPES_DISC, SHAPES_SQUARE, SamSession,
                                         make_server, shapes_image)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(REPO, 'tools', 'sam_app.py')
TOY = os.path.join(REPO, 'configs', 'sam', 'rwkv_sam_tiny_toy_shapes.py')
CHROMIUM = '/usr/bin/chromium'
UPLOAD_CAP = 2 ** 20
MAX_SIDE = 512


@pytest.fixture(scope='module')
def random_sam():
    torch.manual_seed(0)
    return build_rwkv_sam('tiny', img_size=64, depth=1)


@contextlib.contextmanager
def running(session, **kwargs):
    """The address of ``session`` served on a free port of 127.0.0.1 in a thread, for the with-block."""
    server = make_server(session, port=0, **kwargs)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f'http://127.0.0.1:{server.server_address[1]}'
    finally:
        server.shutdown()
        server.server_close()


def everything_of(sam):
    generator = RWKVSamAutomaticMaskGenerator(sam, points_per_side=4, pred_iou_thresh=0, stability_score_thresh=0)
    return lambda image: [(r['segmentation'], r['predicted_iou']) for r in generator.generate(image)]


@pytest.fixture
def app(random_sam):
    session = SamSession(RWKVSamPredictor(random_sam), everything_of(random_sam), max_side=MAX_SIDE)
    with running(session, max_upload_bytes=UPLOAD_CAP) as url:
        yield types.SimpleNamespace(url=url, session=session)


def call(url, path, data=None, raw=None):
    """(status, JSON reply) of GET ``path``, or of a POST of ``data`` (as JSON) or ``raw`` bytes."""
    body = raw if raw is not None else (json.dumps(data).encode() if data is not None else None)
    request = urllib.request.Request(url + path, data=body, method='POST' if body is not None else 'GET')
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.load(response)
    except HTTPError as e:
        return e.code, json.load(e)


def raw_request(url, method, path, headers=(), body=None):
    """(status, body) of a request sent as written (http.client does not normalise ``..`` or %-escapes); the Host
    header is the server's unless ``headers`` has one."""
    address = url.split('//')[1]
    host, port = address.split(':')
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    headers = dict(headers)
    try:
        connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for name, value in {'Host': address, **headers}.items():
            connection.putheader(name, value)
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def png_bytes(image, **save_kwargs):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=save_kwargs.pop('format', 'PNG'), **save_kwargs)
    return buffer.getvalue()


def decoded(data_url):
    """A PNG data URL -> its pixels: palette indices for the masks (0 transparent), RGB for images."""
    assert data_url.startswith('data:image/png;base64,')
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(',', 1)[1]))))


def open_shapes(url):
    status, image = call(url, '/api/image?sample=shapes', raw=b'')
    assert status == 200, image
    return image


# ---- endpoints ----------------------------------------------------------------------------------------
def test_page_and_info(app):
    status, page = raw_request(app.url, 'GET', '/')
    assert status == 200 and b'<canvas id="overlay"' in page
    status, info = call(app.url, '/api/info')
    assert status == 200 and {'shapes', 'astronaut', 'coffee', 'chelsea'} <= set(info['samples'])
    assert info['max_upload_bytes'] == UPLOAD_CAP and info['max_side'] == MAX_SIDE and info['everything']


def test_prompts_give_the_predictors_masks_at_the_image_size(app, random_sam):
    image = open_shapes(app.url)
    assert (image['width'], image['height'], image['notice']) == (384, 256, None)
    assert np.array_equal(decoded(image['png']), shapes_image())
    reference = RWKVSamPredictor(random_sam)
    reference.set_image(shapes_image())
    prompts = [dict(points=[[130, 128, 1]]), dict(points=[[130, 128, 1], [295, 85, 0]]),
               dict(box=list(SHAPES_SQUARE)), dict(points=[[295, 85, 1]], box=list(SHAPES_SQUARE))]
    for prompt in prompts:
        status, reply = call(app.url, '/api/predict', dict(prompt, image_id=image['image_id']))
        assert status == 200, reply
        points = np.array(prompt['points']) if 'points' in prompt else None
        masks, scores, _ = reference.predict(point_coords=None if points is None else points[:, :2],
                                             point_labels=None if points is None else points[:, 2],
                                             box=prompt.get('box'), multimask_output=len(prompt) == 1 and
                                             points is not None and len(points) == 1)
        order = np.argsort(-scores, kind='stable')
        assert [m['score'] for m in reply['masks']] == pytest.approx(scores[order].tolist(), abs=1e-6)
        for mask, i in zip(reply['masks'], order):
            assert np.array_equal(decoded(mask['png']) > 0, masks[i])


@pytest.mark.parametrize('kind', ['jpeg', 'rgba', 'gray16'])
def test_uploads_of_common_kinds(app, kind):
    photo = np.asarray(Image.fromarray(shapes_image()).resize((200, 120)))
    data = {'jpeg': lambda: png_bytes(photo, format='JPEG', quality=90),
            'rgba': lambda: png_bytes(np.dstack([photo, np.full(photo.shape[:2], 90, np.uint8)])),
            'gray16': lambda: png_bytes(photo[..., 0].astype(np.uint16) * 257)}[kind]()
    status, reply = call(app.url, '/api/image', raw=data)
    assert status == 200, reply
    assert (reply['width'], reply['height']) == (200, 120) and decoded(reply['png']).shape == (120, 200, 3)


def png_header_only(width, height):
    """A PNG whose header declares width × height RGB pixels and which has no pixel data."""
    def chunk(kind, payload):
        return len(payload).to_bytes(4, 'big') + kind + payload + zlib.crc32(kind + payload).to_bytes(4, 'big')
    header = width.to_bytes(4, 'big') + height.to_bytes(4, 'big') + bytes([8, 2, 0, 0, 0])
    return b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) + chunk(b'IEND', b'')


BAD_UPLOADS = {
    'text': (b'name,value\nx,1\n', 'not an image this server can read'),
    'truncated png': (png_bytes(shapes_image())[:3000], 'corrupt or truncated'),
    'no pixel data': (png_header_only(300, 200), 'corrupt or truncated'),
    'too many pixels': (png_header_only(9000, 9000), 'the image is 9000×9000 pixels, over the 64 megapixel limit'),
    'bomb header': (png_header_only(20000, 20000), 'the image is over the 64 megapixel limit'),
    'empty': (b'', 'the upload is empty'),
}


@pytest.mark.parametrize('case', BAD_UPLOADS, ids=list(BAD_UPLOADS))
def test_bad_uploads_get_one_line_and_the_server_keeps_serving(app, case):
    data, message = BAD_UPLOADS[case]
    status, reply = call(app.url, '/api/image', raw=data)
    assert status == 400 and message in reply['error'] and '\n' not in reply['error'], reply
    assert call(app.url, '/api/info')[0] == 200
    assert open_shapes(app.url)['width'] == 384


def test_a_huge_image_is_downscaled_with_a_notice(app):
    wide = np.zeros((300, 2000, 3), np.uint8)
    wide[100:200, 900:1100] = 255
    status, reply = call(app.url, '/api/image', raw=png_bytes(wide))
    assert status == 200, reply
    assert (reply['width'], reply['height']) == (MAX_SIDE, 77)
    assert reply['notice'] == f'the image is 2000×300: downscaled to 512×77 (longest side {MAX_SIDE} px)'


PROMPT_ERRORS = {
    'click outside the image': (dict(points=[[390, 20, 1]]), 'outside the 384×256 image'),
    'negative coordinates': (dict(points=[[-5, 20, 0]]), 'outside the 384×256 image'),
    'no prompt': (dict(points=[]), 'no prompt'),
    'bad label': (dict(points=[[10, 20, 7]]), 'point_labels must be 1'),
    'not numbers': (dict(points=[['a', 20, 1]]), 'points must be [x, y, label]'),
    'reversed box': (dict(box=[300, 10, 100, 90]), 'x1 < x0'),
    'box outside': (dict(box=[500, 300, 600, 400]), 'lies outside'),
}


@pytest.mark.parametrize('case', PROMPT_ERRORS, ids=list(PROMPT_ERRORS))
def test_bad_prompts_get_one_line(app, case):
    prompt, message = PROMPT_ERRORS[case]
    image = open_shapes(app.url)
    status, reply = call(app.url, '/api/predict', dict(prompt, image_id=image['image_id']))
    assert status == 400 and message in reply['error'] and '\n' not in reply['error'], reply
    assert call(app.url, '/api/predict', dict(points=[[10, 10, 1]], image_id=image['image_id']))[0] == 200


def test_requests_without_a_current_image(app):
    assert call(app.url, '/api/predict', dict(points=[[10, 10, 1]]))[1]['error'] == 'no image: open an image first'
    first = open_shapes(app.url)
    open_shapes(app.url)  # another tab opens an image: the first one's prompts no longer fit
    status, reply = call(app.url, '/api/predict', dict(points=[[10, 10, 1]], image_id=first['image_id']))
    assert status == 409 and 'open it again' in reply['error']
    assert call(app.url, '/api/predict', raw=b'{not json')[1]['error'] == 'the request body is not JSON'
    status, reply = call(app.url, '/api/image?sample=lena', raw=b'')
    assert status == 400 and "unknown sample 'lena'" in reply['error']


def test_segment_everything(app, random_sam):
    image = open_shapes(app.url)
    status, reply = call(app.url, '/api/everything', dict(image_id=image['image_id']))
    assert status == 200, reply
    labels = decoded(reply['png'])
    assert labels.shape == (256, 384) and reply['count'] == len(reply['scores']) > 0
    assert 0 < len(np.unique(labels[labels > 0])) <= reply['count']
    assert reply['scores'] == sorted(reply['scores'], reverse=True)
    unavailable = SamSession(RWKVSamPredictor(random_sam), everything_unavailable='needs the PyTorch model')
    with running(unavailable) as url:
        image = open_shapes(url)
        assert call(url, '/api/everything', dict(image_id=image['image_id'])) == (
            400, dict(error='needs the PyTorch model'))


# ---- limits and safety ----------------------------------------------------------------------------------
def test_an_upload_over_the_cap_is_refused_before_it_is_read(app):
    """The request declares 10 GB and sends none of it: a server that read the body would wait for it (timeout)."""
    status, body = raw_request(app.url, 'POST', '/api/image', [('Content-Length', str(10 ** 10))])
    assert status == 413
    assert json.loads(body)['error'] == 'the upload is 9536.7 MB, over the 1 MB limit (sam_app.py --max-upload-mb)'
    status, body = raw_request(app.url, 'POST', '/api/image', [('Transfer-Encoding', 'chunked')], b'0\r\n\r\n')
    assert status == 411
    assert call(app.url, '/api/info')[0] == 200


OUTSIDE_PATHS = ['/../../etc/passwd', '/static/../setup.py', '/%2e%2e/%2e%2e/etc/passwd', '/static/%2e%2e/setup.py',
                 '/..%2f..%2fetc%2fpasswd', '//etc/passwd', '/static/sam_app.html', '/sam_app.html',
                 '/vision_rwkv_runtime/sam_app.py', '/./', '/?file=../setup.py#x', '/api/../setup.py',
                 '/etc/passwd', '/%00']


@pytest.mark.parametrize('path', OUTSIDE_PATHS)
def test_no_path_reads_a_file_outside_the_page(app, path):
    status, body = raw_request(app.url, 'GET', path)
    if path.startswith('/?'):  # the query is not part of the path: the page itself
        assert status == 200 and b'<canvas' in body
        return
    assert status == 404 and b'root:' not in body and b'setup(' not in body, (status, body[:200])
    assert raw_request(app.url, 'POST', path, [('Content-Length', '0')])[0] == 404


def test_binds_to_loopback_by_default_and_refuses_other_host_names(random_sam):
    server = make_server(SamSession(RWKVSamPredictor(random_sam)), port=0)
    try:
        assert server.server_address[0] == '127.0.0.1'
    finally:
        server.server_close()
    with running(SamSession(RWKVSamPredictor(random_sam))) as url:
        port = url.rsplit(':', 1)[1]
        assert raw_request(url, 'GET', '/api/info', [('Host', f'localhost:{port}')])[0] == 200
        status, body = raw_request(url, 'GET', '/api/info', [('Host', f'rebound.example.com:{port}')])
        assert status == 403 and b'not rebound.example.com' in body


# ---- the tool -------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def toy_checkpoint(tmp_path_factory):
    """Random weights of the toy config's architecture, saved as tools/train.py does (state_dict, 'sam.' keys)."""
    from mmengine.config import Config
    model = Config.fromfile(TOY).model
    sam = build_rwkv_sam(model.variant, img_size=model.img_size, **model.encoder)
    path = tmp_path_factory.mktemp('ckpt') / 'toy.pth'
    torch.save({'state_dict': {f'sam.{k}': v for k, v in sam.state_dict().items()}}, path)
    return str(path)


def tool(*args):
    return subprocess.Popen([sys.executable, TOOL, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO)


@pytest.mark.slow
def test_the_tool_serves_on_127_0_0_1(toy_checkpoint):
    process = tool('--checkpoint', toy_checkpoint, '--port', '0', '--max-upload-mb', '0.5')
    try:
        line = process.stdout.readline()
        match = re.fullmatch(r'RWKV-SAM app: (http://127\.0\.0\.1:\d+)/ \(Ctrl-C to stop\)\n', line)
        assert match, (line, process.stderr.read() if process.poll() is not None else '')
        url = match.group(1)
        assert call(url, '/api/info')[1]['max_upload_bytes'] == 2 ** 19
        image = open_shapes(url)
        status, reply = call(url, '/api/predict', dict(points=[[130, 128, 1]], image_id=image['image_id']))
        assert status == 200 and len(reply['masks']) == 3
    finally:
        process.terminate()
        process.communicate(timeout=30)


@pytest.mark.slow
def test_the_tool_names_a_checkpoint_of_another_variant_in_one_line(tmp_path):
    small = build_rwkv_sam('small', img_size=128, depth=1)
    path = tmp_path / 'small.pth'
    torch.save({'state_dict': {f'sam.{k}': v for k, v in small.state_dict().items()}}, path)
    process = tool('--checkpoint', str(path), '--port', '0')
    out, err = process.communicate(timeout=120)
    assert process.returncode == 2, err[-2000:]
    assert len(err.strip().splitlines()) == 1 and f'error: {path}' in err
    assert "'small'" in err and "'tiny'" in err and out == ''


# ---- the page in headless Chromium -----------------------------------------------------------------------
SCENE_SIZE = 64


def training_scene(rng):
    """A (3, h, w) uint8 image (longest side 64, random aspect) of 2-3 bright discs and rectangles on dark
    stripes, and its instances' visible (N, h, w) masks: scenes of the kind of the app's 'shapes' sample."""
    h, w = int(rng.integers(36, SCENE_SIZE + 1)), SCENE_SIZE
    if rng.random() < 0.3:
        h, w = w, h
    yy, xx = np.mgrid[0:h, 0:w]
    stripes = ((xx + yy) / rng.uniform(3, 10)).astype(int) % 2 == 1
    image = np.where(stripes[..., None], rng.uniform(20, 110, 3), rng.uniform(20, 110, 3))
    masks = []
    for _ in range(int(rng.integers(2, 4))):
        if rng.random() < 0.5:
            r = rng.uniform(0.15, 0.35) * min(h, w)
            cx, cy = rng.uniform(0.6 * r, w - 0.6 * r), rng.uniform(0.6 * r, h - 0.6 * r)
            shape = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
        else:
            rw, rh = rng.uniform(0.2, 0.45) * w, rng.uniform(0.2, 0.45) * h
            x0, y0 = rng.uniform(0, w - rw), rng.uniform(0, h - rh)
            shape = (xx >= x0) & (xx < x0 + rw) & (yy >= y0) & (yy < y0 + rh)
        image[shape] = rng.uniform(150, 255, 3)
        masks = [m & ~shape for m in masks] + [shape]
    image = np.clip(image + rng.normal(0, 3, image.shape), 0, 255).astype(np.uint8)
    masks = np.stack([m for m in masks if m.sum() >= 16])
    return torch.as_tensor(image).permute(2, 0, 1).contiguous(), types.SimpleNamespace(masks=torch.as_tensor(masks))


CLICK_STEPS, CLICK_LR = 300, 3e-3


@pytest.fixture(scope='module')
def clicked_sam():
    """The toy architecture at a 64 input with one RWKV block, trained from scratch with single-click prompts on
    ``training_scene``s (the project's ``RWKVSamTrainer`` losses, AdamW, warm-up + cosine): 65 s on one thread of an
    idle core (135 s measured while another job used both cores).

    Not the checkpoint of tests/test_learning.py's RWKV-SAM run: that one learns from boxes only and answers a
    click on the sample's disc with IoU 0.07-0.22 (measured). The 'shapes' sample itself is never trained on."""
    from vision_rwkv.engine.sam import RWKVSamTrainer
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    trainer = RWKVSamTrainer(variant='tiny', img_size=SCENE_SIZE, encoder=dict(depth=1), point_prob=1.0,
                             max_points=1, correction_rounds=0, focal_weight=1.0, max_instances=3)
    optimizer = torch.optim.AdamW(trainer.parameters(), lr=CLICK_LR, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / 20) * 0.5 * (1 + math.cos(math.pi * step / CLICK_STEPS)))
    for _ in range(CLICK_STEPS):
        images, samples = zip(*(training_scene(rng) for _ in range(8)))
        loss = sum(trainer(list(images), list(samples), mode='loss').values())
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainer.parameters(), 1.0)
        optimizer.step()
        schedule.step()
    torch.set_num_threads(threads)
    return trainer.sam.eval()


def browser_or_skip():
    """Playwright's sync API, or a skip when Debian's Chromium is missing outside CI (under CI: a failure)."""
    if not os.path.exists(CHROMIUM):
        message = f'{CHROMIUM} is missing: apt-get install -y chromium chromium-driver (tools/setup_env.sh all)'
        if os.environ.get('CI'):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright
    return sync_playwright


# the flags that work in this container; Playwright gives every launch a fresh temporary profile (user data dir)
CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
                 '--disable-component-update', '--disable-sync']
LATENCY_TARGET_MS = 300
# Measured: the best of the three masks of a click on the disc covers it at IoU 0.90 / 0.86 (seeds 0 / 1 of
# ``clicked_sam``; the test uses 0), the others at most 0.33; a click on the square gives the square at 0.83 / 0.55.
# (250 steps at lr 2e-3 were not enough: 0.40 to 0.92 over 4 runs.) Threshold: the worst run less 0.26. The predicted
# scores do not rank the three masks after so short a training (all 0.24-0.33), so the test checks every mask the
# page offers for the click.
MIN_DISC_IOU = 0.6


def overlay_alpha(page):
    """(H, W) bool: the pixels of the overlay canvas that are drawn (alpha > 0), at the image's resolution."""
    data = page.evaluate('''() => {
        const c = document.getElementById('overlay');
        const alpha = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let bits = '';
        for (let i = 3; i < alpha.length; i += 4) bits += alpha[i] > 0 ? '1' : '0';
        return [c.height, c.width, bits];
    }''')
    return np.array([c == '1' for c in data[2]]).reshape(data[0], data[1])


def screen_point(page, x, y):
    """Screen position of image pixel (x, y) in the displayed (scaled) canvas."""
    box = page.locator('#marks').bounding_box()
    return box['x'] + (x + 0.5) * box['width'] / 384, box['y'] + (y + 0.5) * box['height'] / 256


def wait_drawn(page, count):
    page.wait_for_function(f'window.samApp.drawn >= {count}', timeout=30_000)


@pytest.fixture
def one_thread():
    """The decoder is many tiny operators: two threads on two busy cores made each prompt ~50x slower (measured
    560 ms instead of 7-10 ms per predict while another job ran), as tests/test_learning.py found for training."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_the_page_in_chromium(clicked_sam, one_thread, tmp_path):
    sync_playwright = browser_or_skip()
    session = SamSession(RWKVSamPredictor(clicked_sam), everything_of(clicked_sam))
    with running(session, max_upload_bytes=UPLOAD_CAP) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        # the 384-pixel image is shown smaller; Playwright's wait_for_function evaluates strings, which the page's
        # Content-Security-Policy (no 'unsafe-eval') would refuse
        page = browser.new_page(viewport={'width': 320, 'height': 600}, bypass_csp=True)
        page.goto(url + '/')
        page.wait_for_function('window.samApp.info !== null')
        page.select_option('#sample', 'shapes')
        page.click('#open-sample')
        page.wait_for_function('window.samApp.imageId !== null')
        displayed = page.locator('#marks').bounding_box()['width']
        assert displayed < 384, 'the canvas is not scaled: the click mapping would go untested'

        cx, cy, _ = SHAPES_DISC
        page.mouse.click(*screen_point(page, cx, cy))
        wait_drawn(page, 1)
        latency = page.evaluate('window.samApp.latency')
        clicked = page.evaluate('window.samApp.points')
        assert len(clicked) == 1 and clicked[0][2] == 1
        assert abs(clicked[0][0] - cx) < 1 and abs(clicked[0][1] - cy) < 1, clicked
        # the page shows the best-scored of the click's three masks, and offers the others: each one, when shown,
        # is exactly the predictor's mask of that click at the image's resolution
        reference = RWKVSamPredictor(clicked_sam)
        reference.set_image(shapes_image())
        masks, scores, _ = reference.predict(point_coords=np.array([clicked[0][:2]]), point_labels=np.array([1]))
        buttons = page.locator('#scores button')
        assert buttons.count() == 3
        disc = (shapes_image() == DISC_COLOUR).all(-1)
        ious = []
        for rank, i in enumerate(np.argsort(-scores, kind='stable')):
            assert buttons.nth(rank).inner_text() == f'mask {rank + 1}: score {scores[i]:.3f}'
            if rank:
                buttons.nth(rank).click()
                wait_drawn(page, 1 + rank)
            shown = overlay_alpha(page)
            assert np.array_equal(shown, masks[i])
            ious.append((shown & disc).sum() / (shown | disc).sum())
        print(f'click-to-mask latency in Chromium: {latency:.1f} ms; IoU of the three masks with the clicked disc '
              f'(best score first): {", ".join(f"{iou:.3f}" for iou in ious)}')
        assert max(ious) >= MIN_DISC_IOU
        assert latency <= LATENCY_TARGET_MS

        page.click('#clear')
        page.wait_for_function('window.samApp.points.length === 0')
        assert not overlay_alpha(page).any()
        x0, y0, x1, y1 = SHAPES_SQUARE
        page.mouse.move(*screen_point(page, x0, y0))
        page.mouse.down()
        page.mouse.move(*screen_point(page, x1, y1), steps=5)
        page.mouse.up()
        wait_drawn(page, 4)
        assert np.allclose(page.evaluate('window.samApp.box'), SHAPES_SQUARE, atol=1)
        page.mouse.click(*screen_point(page, 20, 240), button='right')
        wait_drawn(page, 5)
        assert page.evaluate('window.samApp.points') == [[pytest.approx(20, abs=1), pytest.approx(240, abs=1), 0]]

        page.evaluate('window.samApp.addPoint(390, 20, 1)')  # what a click outside the image would send
        page.wait_for_function("document.getElementById('message').className === 'error'")
        assert 'outside the 384×256 image' in page.inner_text('#message')

        page.click('#everything')
        page.wait_for_function("/\\d+ masks/.test(document.getElementById('message').textContent)")
        assert overlay_alpha(page).any()

        (tmp_path / 'notes.txt').write_text('not an image\n')
        page.set_input_files('#file', str(tmp_path / 'notes.txt'))
        page.wait_for_function("document.getElementById('message').textContent.includes('not an image')")
        (tmp_path / 'big.png').write_bytes(b'\x89PNG' + bytes(UPLOAD_CAP + 1))
        page.set_input_files('#file', str(tmp_path / 'big.png'))
        page.wait_for_function("document.getElementById('message').textContent.includes('upload limit')")
        browser.close()
