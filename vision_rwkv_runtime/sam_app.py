"""A local web page to prompt RWKV-SAM with clicks and boxes (``tools/sam_app.py``), without torch.

    server = make_server(SamSession(predictor, everything), port=7860)   # binds to 127.0.0.1
    server.serve_forever()

``predictor`` is any object with segment-anything's ``set_image`` / ``predict`` (``RWKVSamPredictor``,
``OnnxSamPredictor``): ``set_image`` runs once per image (the encoder), each prompt runs ``predict`` only
(the decoder). ``everything(image) -> [(mask, score), ...]`` segments a whole image, or is None.

Endpoints (JSON replies; an error is ``{"error": "<one line>"}`` with its HTTP status):

    GET  /                    the page (``static/sam_app.html``; the only file served)
    GET  /api/info            {samples, max_upload_bytes, max_side, everything}
    POST /api/image           body: an image file -> {image_id, width, height, png, notice}
    POST /api/image?sample=N  a sample image (``SAMPLES``), same reply
    POST /api/predict         {image_id, points: [[x, y, label], ...], box: [x0, y0, x1, y1] | null}
                              -> {masks: [{png, score}, ...]} best first, PNGs at the image's size
    POST /api/everything      {image_id} -> {png, count, scores}

Safety: requests name files only through the fixed ``STATIC`` table, uploads stay in memory, bodies over
``max_upload_bytes`` get 413 before they are read, images over ``max_side`` are downscaled (with a notice)
and over ``MAX_PIXELS`` refused, and a server bound to a loopback address answers only requests whose Host
is a loopback name (no DNS rebinding). Bad input is a 4xx with one line; other errors are a 500 whose
traceback goes to the server's log only. The server keeps serving either way.
"""
import base64
import io
import itertools
import json
import sys
import threading
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Callable, Dict, List, Optional, Sequence, Tuple
from urllib.parse import parse_qs, urlsplit

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputError, UserError
from .image import to_rgb_uint8

__all__ = ['MAX_PIXELS', 'SAMPLES', 'HttpError', 'SamSession', 'decode_image', 'make_server', 'serve',
           'shapes_image']

#: the files a request can get: URL path -> (file in ``static/``, content type); nothing else is served
STATIC = {'/': ('sam_app.html', 'text/html; charset=utf-8')}
#: images with more pixels are refused before they are decoded (a decompression bomb stays a header)
MAX_PIXELS = 64_000_000
#: overlay colours (RGB); the best mask of a prompt takes the first
COLOURS = ((30, 144, 255), (255, 56, 56), (56, 200, 56), (255, 178, 29), (207, 210, 49), (146, 204, 23),
           (61, 219, 134), (26, 147, 52), (255, 157, 151), (72, 249, 10))
LOOPBACK_NAMES = ('127.0.0.1', 'localhost')
#: the generated sample: a (H, W) dark textured image with one bright disc (centre x, y and radius in pixels)
SHAPES_SIZE, SHAPES_DISC, SHAPES_SQUARE = (256, 384), (130, 128, 80), (250, 40, 340, 130)
DISC_COLOUR, SQUARE_COLOUR = (250, 200, 40), (40, 190, 230)

EverythingFn = Callable[[np.ndarray], List[Tuple[np.ndarray, float]]]


class HttpError(UserError):
    """A request the server refuses, with the HTTP status to answer."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def shapes_image() -> np.ndarray:
    """(256, 384, 3) uint8: a bright disc (``SHAPES_DISC``) and a square (``SHAPES_SQUARE``) on dark stripes."""
    h, w = SHAPES_SIZE
    yy, xx = np.mgrid[0:h, 0:w]
    image = np.empty((h, w, 3), np.uint8)
    image[:] = np.where(((xx + yy) // 24 % 2)[..., None] == 1, (70, 60, 80), (40, 45, 50))
    cx, cy, r = SHAPES_DISC
    image[(xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] = DISC_COLOUR
    x0, y0, x1, y1 = SHAPES_SQUARE
    image[y0:y1, x0:x1] = SQUARE_COLOUR
    return image


def _skimage_sample(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        try:
            import skimage.data
        except ImportError:
            raise InputError(f'the sample photo {name!r} comes from scikit-image: pip install scikit-image') from None
        return getattr(skimage.data, name)()
    return load


#: sample name -> a function returning the image
SAMPLES: Dict[str, Callable[[], np.ndarray]] = {
    'shapes': shapes_image, **{name: _skimage_sample(name) for name in ('astronaut', 'coffee', 'chelsea', 'camera')}}


def decode_image(data: bytes, max_side: int) -> Tuple[np.ndarray, Optional[str]]:
    """An image file's bytes -> (H, W, 3) uint8 RGB with longest side at most ``max_side``, and the notice
    saying it was downscaled (None if not). Orientation tags are applied; 16-bit images are scaled to 8 bits."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > MAX_PIXELS:
                raise InputError(f'the image is {img.width}×{img.height} pixels, over the '
                                 f'{MAX_PIXELS // 1_000_000} megapixel limit: downscale it first')
            img.draft('RGB', (max_side, max_side))  # JPEG: decode at a reduced scale when it is large
            img = ImageOps.exif_transpose(img)
            pixels = np.asarray(img) if img.mode in ('L', 'RGB', 'RGBA', 'I;16') else np.asarray(img.convert('RGB'))
    except Image.DecompressionBombError:  # Pillow's own limit, above ours: refused while reading the header
        raise InputError(f'the image is over the {MAX_PIXELS // 1_000_000} megapixel limit: downscale it first') from None
    except UnidentifiedImageError:
        raise InputError('the file is not an image this server can read (PNG, JPEG, WebP, BMP, TIFF, GIF)') from None
    except (OSError, SyntaxError, ValueError) as e:  # truncated or corrupt data, raised while decoding
        raise InputError(f'the image is corrupt or truncated ({e})') from None
    return _downscale(to_rgb_uint8(pixels), max_side)


def _downscale(image: np.ndarray, max_side: int) -> Tuple[np.ndarray, Optional[str]]:
    """(H, W, 3) -> the same, longest side at most ``max_side`` (Lanczos), and a notice if it was resized."""
    h, w = image.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return image, None
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = np.asarray(Image.fromarray(image).resize(size, Image.LANCZOS))
    return small, f'the image is {w}×{h}: downscaled to {size[0]}×{size[1]} (longest side {max_side} px)'


def _png_data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format='PNG', compress_level=1)
    return 'data:image/png;base64,' + base64.b64encode(buffer.getvalue()).decode('ascii')


def labels_png(labels: np.ndarray, colours: Sequence[Tuple[int, int, int]]) -> str:
    """(H, W) uint8 labels (0 transparent, i > 0 drawn in ``colours[i - 1]``) -> a palette PNG data URL."""
    image = Image.fromarray(labels, mode='L').convert('P')
    image.putpalette([0, 0, 0, *itertools.chain.from_iterable(colours)])
    image.info['transparency'] = 0
    return _png_data_url(image)


def _colour(i: int) -> Tuple[int, int, int]:
    return COLOURS[i % len(COLOURS)]


class SamSession:
    """The server's state: one predictor, the current image and its features (one lock: one model call at once).

    Args:
        predictor: has ``set_image(image)`` and ``predict(point_coords, point_labels, box, multimask_output)``.
        everything: segments a whole (H, W, 3) image into ``[(mask, score), ...]``; None where it cannot run
            (``everything_unavailable`` is then the message a request gets).
        max_side: longer images are downscaled to this longest side.
    """

    def __init__(self, predictor, everything: Optional[EverythingFn] = None, max_side: int = 2048,
                 everything_unavailable: str = 'segment everything is not available with this model'):
        self.predictor = predictor
        self.everything_fn = everything
        self.everything_unavailable = everything_unavailable
        self.max_side = max_side
        self.lock = threading.Lock()
        self.image: Optional[np.ndarray] = None
        self.image_id: Optional[str] = None
        self._ids = itertools.count(1)

    def info(self) -> dict:
        return dict(samples=list(SAMPLES), max_side=self.max_side, everything=self.everything_fn is not None)

    def open_sample(self, name: str) -> dict:
        if name not in SAMPLES:
            raise InputError(f'unknown sample {name!r}; known: {", ".join(SAMPLES)}')
        return self.open_image(*_downscale(to_rgb_uint8(SAMPLES[name]()), self.max_side))

    def open_upload(self, data: bytes) -> dict:
        if not data:
            raise InputError('the upload is empty: choose an image file')
        return self.open_image(*decode_image(data, self.max_side))

    def open_image(self, image: np.ndarray, notice: Optional[str] = None) -> dict:
        """Compute the features of an (H, W, 3) uint8 image (the encoder, once) and make it the current image.

        Returns {image_id, width, height, png (the image as a data URL), notice}."""
        with self.lock:
            self.image, self.image_id = None, None
            self.predictor.set_image(image)
            self.image, self.image_id = image, str(next(self._ids))
        return dict(image_id=self.image_id, width=image.shape[1], height=image.shape[0],
                    png=_png_data_url(Image.fromarray(image)), notice=notice)

    def predict(self, request: dict) -> dict:
        """Masks of ``request``'s prompts on the current image, best score first: {masks: [{png, score}]}.

        One point without a box asks for three masks (segment-anything's answer to an ambiguous click)."""
        points, box = request.get('points') or [], request.get('box')
        if not points and box is None:
            raise InputError('no prompt: click a point or drag a box')
        try:
            coords = np.array([p[:2] for p in points], dtype=float).reshape(-1, 2) if points else None
            labels = np.array([p[2] for p in points], dtype=int) if points else None
            box = None if box is None else np.array(box, dtype=float)
        except (TypeError, ValueError, IndexError, KeyError):
            raise InputError(f'points must be [x, y, label] triples and box [x0, y0, x1, y1], '
                             f'got points {points!r}, box {box!r}') from None
        with self.lock:
            self._require_image(request)
            masks, scores, _ = self.predictor.predict(point_coords=coords, point_labels=labels, box=box,
                                                      multimask_output=len(points) == 1 and box is None)
        order = np.argsort(-scores, kind='stable')
        return dict(masks=[dict(png=labels_png(masks[i].astype(np.uint8), [_colour(0)]), score=float(scores[i]))
                           for i in order])

    def everything(self, request: dict) -> dict:
        """All masks of the current image in one overlay: {png, count, scores} (at most 255 masks, best first)."""
        if self.everything_fn is None:
            raise InputError(self.everything_unavailable)
        with self.lock:
            self._require_image(request)
            found = sorted(self.everything_fn(self.image), key=lambda item: -item[1])[:255]
        labels = np.zeros(self.image.shape[:2], np.uint8)
        for i, (mask, _) in sorted(enumerate(found), key=lambda item: -int(item[1][0].sum())):
            labels[mask] = i + 1  # larger masks first, so that smaller ones stay visible on top
        return dict(png=labels_png(labels, [_colour(i) for i in range(len(found))]), count=len(found),
                    scores=[float(score) for _, score in found])

    def _require_image(self, request: dict) -> None:
        if self.image_id is None:
            raise InputError('no image: open an image first')
        if request.get('image_id') != self.image_id:
            raise HttpError(HTTPStatus.CONFLICT, 'the image changed (opened in another tab?): open it again')


class SamRequestHandler(BaseHTTPRequestHandler):
    """The endpoints of the module docstring over ``self.server.session`` (a ``SamSession``)."""

    server_version = 'RWKVSamApp'
    timeout = 60  # seconds a client may stall mid-request before its connection is closed

    def do_GET(self) -> None:
        self._answer(self._get)

    def do_POST(self) -> None:
        self._answer(self._post)

    def _get(self) -> Tuple[int, str, bytes]:
        path = urlsplit(self.path).path
        if path == '/api/info':
            return _json(dict(self.server.session.info(), max_upload_bytes=self.server.max_upload_bytes))
        if path not in STATIC:
            raise HttpError(HTTPStatus.NOT_FOUND, f'no such page: {path}')
        name, content_type = STATIC[path]
        return HTTPStatus.OK, content_type, resources.files(__package__).joinpath('static', name).read_bytes()

    def _post(self) -> Tuple[int, str, bytes]:
        url = urlsplit(self.path)
        session = self.server.session
        if url.path not in ('/api/image', '/api/predict', '/api/everything'):
            raise HttpError(HTTPStatus.NOT_FOUND, f'no such endpoint: {url.path}')
        body = self._body()
        if url.path == '/api/image':
            sample = parse_qs(url.query).get('sample')
            return _json(session.open_sample(sample[0]) if sample else session.open_upload(body))
        request = _json_object(body)
        return _json(session.predict(request) if url.path == '/api/predict' else session.everything(request))

    def _body(self) -> bytes:
        """The request body, refused (411, 413) without reading it when its length is missing or over the cap."""
        length = self.headers.get('Content-Length')
        if length is None or not length.isdigit():
            raise HttpError(HTTPStatus.LENGTH_REQUIRED, 'the request needs a Content-Length header')
        limit = self.server.max_upload_bytes
        if int(length) > limit:
            raise HttpError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                            f'the upload is {int(length) / 2 ** 20:.1f} MB, over the {limit / 2 ** 20:g} MB limit '
                            '(sam_app.py --max-upload-mb)')
        try:
            body = self.rfile.read(int(length))
        except TimeoutError:
            raise HttpError(HTTPStatus.REQUEST_TIMEOUT, f'the upload stalled for {self.timeout} s') from None
        if len(body) < int(length):
            raise InputError(f'the upload was cut short ({len(body)} of {length} bytes)')
        return body

    def _answer(self, route: Callable[[], Tuple[int, str, bytes]]) -> None:
        """Run ``route`` and send its reply, or the JSON error; every connection closes after one reply (HTTP/1.0),
        so an unread body is never taken for the next request."""
        try:
            self._check_host()
            status, content_type, body = route()
        except HttpError as e:
            status, content_type, body = _json(dict(error=str(e)), e.status)
        except UserError as e:
            status, content_type, body = _json(dict(error=str(e)), HTTPStatus.BAD_REQUEST)
        except Exception as e:  # a bug: the traceback goes to the log, the page gets one line
            traceback.print_exc(file=sys.stderr)
            status, content_type, body = _json(dict(error=f'internal error ({type(e).__name__}: {e}); '
                                                    'the traceback is in the server log'),
                                               HTTPStatus.INTERNAL_SERVER_ERROR)
        self.send_response(status)
        self.send_header('Content-Type', content_type)
        self.send_header('Content-Length', str(len(body)))
        self.send_header('Cache-Control', 'no-store')
        self.send_header('X-Content-Type-Options', 'nosniff')
        self.send_header('Content-Security-Policy', "default-src 'self'; img-src 'self' data:; "
                         "script-src 'unsafe-inline'; style-src 'unsafe-inline'; frame-ancestors 'none'")
        self.end_headers()
        self.wfile.write(body)

    def _check_host(self) -> None:
        """A server on a loopback address answers only requests addressed to a loopback name: a web page whose
        host name was rebound to 127.0.0.1 (DNS rebinding) sends its own Host and gets 403."""
        if self.server.server_address[0] not in LOOPBACK_NAMES:
            return
        host = urlsplit(f'//{self.headers.get("Host", "")}').hostname
        if host not in LOOPBACK_NAMES:
            raise HttpError(HTTPStatus.FORBIDDEN, f'this server answers requests to 127.0.0.1 or localhost, not {host}')


def _json(data: dict, status: int = HTTPStatus.OK) -> Tuple[int, str, bytes]:
    return status, 'application/json', json.dumps(data).encode()


def _json_object(body: bytes) -> dict:
    try:
        request = json.loads(body)
    except ValueError:
        raise InputError('the request body is not JSON') from None
    if not isinstance(request, dict):
        raise InputError('the request body must be a JSON object')
    return request


def make_server(session: SamSession, host: str = '127.0.0.1', port: int = 7860,
                max_upload_bytes: int = 20 * 2 ** 20) -> ThreadingHTTPServer:
    """A threaded HTTP server of ``session`` bound to ``host``:``port`` (0: a free port), not yet serving."""
    try:
        server = ThreadingHTTPServer((host, port), SamRequestHandler)
    except OSError as e:
        raise UserError(f'cannot serve on {host}:{port} ({e.strerror or e}): pick another --port or --host') from None
    server.session = session
    server.max_upload_bytes = max_upload_bytes
    return server


def serve(server: ThreadingHTTPServer) -> None:
    """Serve until Ctrl-C, after printing the page's address."""
    host, port = server.server_address[:2]
    print(f'RWKV-SAM app: http://{host}:{port}/ (Ctrl-C to stop)', flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
