"""Deterministic synthetic scenes: geometric shapes on textured backgrounds.

One scene renderer feeds every embedded data set of the toolkit (ImageFolder classification here;
the same scenes carry the per-pixel masks that semantic and instance label formats need).
Every image is drawn from its own generator ``np.random.default_rng((seed, split, class, index))``,
so a data set is identical byte for byte for a given seed and any image can be re-drawn alone.

Shapes are rasterised with PIL at ``SUPERSAMPLE``× resolution and box-filtered down, which gives
anti-aliased edges (an alpha matte) and a binary mask (alpha ≥ 0.5) for labels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPE_CLASSES = ('circle', 'triangle', 'square', 'star', 'cross', 'ring', 'crescent', 'arrow')
BACKGROUND_KINDS = ('noise', 'stripes', 'checkerboard')
SUPERSAMPLE = 4


@dataclass
class ShapeInstance:
    """One shape of a scene: its class index into the scene's class list and its visible mask (H, W)."""
    label: int
    mask: np.ndarray


def _regular_polygon(n: int, phase: float = 0.0) -> np.ndarray:
    angles = phase + 2 * math.pi * np.arange(n) / n
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    outer = _regular_polygon(2 * points, -math.pi / 2)
    outer[1::2] *= inner
    return outer


def _cross(arm: float = 0.33) -> np.ndarray:
    a = arm
    return np.array([(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1),
                     (-a, a), (-1, a), (-1, -a), (-a, -a)], dtype=np.float64)


def _arrow() -> np.ndarray:
    return np.array([(1, 0), (0.1, -0.8), (0.1, -0.3), (-1, -0.3), (-1, 0.3), (0.1, 0.3), (0.1, 0.8)],
                    dtype=np.float64)


_POLYGONS = {
    'triangle': _regular_polygon(3, -math.pi / 2),
    'square': _regular_polygon(4, math.pi / 4),
    'star': _star(),
    'cross': _cross(),
    'arrow': _arrow(),
}


def shape_alpha(kind: str, size: tuple[int, int], center: tuple[float, float], radius: float,
                angle: float) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of one shape, shape (H, W) float32.

    ``center`` is (x, y) in pixels, ``radius`` the circumradius in pixels, ``angle`` in radians.
    """
    if kind not in SHAPE_CLASSES:
        raise ValueError(f'unknown shape {kind!r}; known: {SHAPE_CLASSES}')
    h, w = size
    s = SUPERSAMPLE
    canvas = Image.new('L', (w * s, h * s), 0)
    draw = ImageDraw.Draw(canvas)
    cx, cy, r = center[0] * s, center[1] * s, radius * s

    def disc(dx: float, dy: float, rad: float, fill: int) -> None:
        draw.ellipse([cx + dx - rad, cy + dy - rad, cx + dx + rad, cy + dy + rad], fill=fill)

    if kind == 'circle':
        disc(0, 0, r, 255)
    elif kind == 'ring':
        disc(0, 0, r, 255)
        disc(0, 0, 0.55 * r, 0)
    elif kind == 'crescent':
        disc(0, 0, r, 255)
        disc(0.45 * r * math.cos(angle), 0.45 * r * math.sin(angle), 0.8 * r, 0)
    else:
        rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        pts = _POLYGONS[kind] @ rot.T * r + np.array([cx, cy])
        draw.polygon([tuple(p) for p in pts], fill=255)
    hi = np.asarray(canvas, dtype=np.float32) / 255.0
    return hi.reshape(h, s, w, s).mean(axis=(1, 3))


def _smooth_noise(rng: np.random.Generator, size: tuple[int, int], cells: int) -> np.ndarray:
    """Low-frequency colour noise (H, W, 3) in [0, 255]: a random cells×cells grid, bicubic upsampled."""
    grid = rng.uniform(0, 255, size=(cells, cells, 3)).astype(np.uint8)
    return np.asarray(Image.fromarray(grid).resize((size[1], size[0]), Image.BICUBIC), dtype=np.float32)


def _two_colours(rng: np.random.Generator, spread: float) -> tuple[np.ndarray, np.ndarray]:
    """A random colour and a second one about ``spread`` (per-channel std) away from it."""
    a = rng.uniform(0, 255, 3)
    b = np.clip(a + rng.normal(0, spread, 3), 0, 255)
    return a, b


def render_background(rng: np.random.Generator, size: tuple[int, int], kind: str | None = None,
                      contrast: float = 15.0) -> np.ndarray:
    """A textured background (H, W, 3) float32 in [0, 255]: smooth noise, stripes or a checkerboard.

    ``kind`` is one of ``BACKGROUND_KINDS``; ``None`` draws it from ``rng`` first (one draw more).
    ``contrast`` is the per-channel std of the colour difference of stripes and checkers (low by
    default: for classification the background is clutter; segmentation labels it, so raises it).
    """
    h, w = size
    if kind is None:
        kind = BACKGROUND_KINDS[rng.integers(len(BACKGROUND_KINDS))]
    elif kind not in BACKGROUND_KINDS:
        raise ValueError(f'unknown background {kind!r}; known: {BACKGROUND_KINDS}')
    if kind == 'noise':
        noise = _smooth_noise(rng, size, int(rng.integers(2, 7)))
        img = noise.mean(axis=(0, 1)) + 0.3 * (noise - noise.mean(axis=(0, 1)))
    else:
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        a, b = _two_colours(rng, contrast)
        if kind == 'stripes':
            theta, period = rng.uniform(0, math.pi), rng.uniform(4, 16) * max(h, w) / 64
            t = 0.5 + 0.5 * np.sin(2 * math.pi * (xx * math.cos(theta) + yy * math.sin(theta)) / period)
        else:
            cell = rng.uniform(4, 12) * max(h, w) / 64
            t = ((np.floor(xx / cell) + np.floor(yy / cell)) % 2).astype(np.float32)
        img = a * t[..., None] + b * (1 - t[..., None])
    return img + rng.normal(0, 4, size=(h, w, 3))


def _fill_colour(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """A colour at RGB distance ≥ 120 from ``under`` (the mean colour beneath the shape)."""
    for _ in range(64):
        c = rng.uniform(0, 255, 3)
        if np.linalg.norm(c - under) >= 120:
            return c
    return 255.0 - under


def render_scene(rng: np.random.Generator, size: tuple[int, int], classes: tuple[str, ...],
                 labels: list[int], radius_range: tuple[float, float] = (0.3, 0.45),
                 background: str | None = None, contrast: float = 15.0
                 ) -> tuple[np.ndarray, list[ShapeInstance]]:
    """Draw ``labels`` (indices into ``classes``) as shapes, later ones on top of earlier ones.

    Args:
        rng: the scene's random generator.
        size: (H, W) of the image.
        classes: shape kinds (names from ``SHAPE_CLASSES``) that ``labels`` index.
        labels: the class index of each shape, in drawing order.
        radius_range: circumradius as a fraction of min(H, W).
        background: the texture kind from ``BACKGROUND_KINDS``; ``None`` draws it from ``rng``.
        contrast: texture contrast of the background (see ``render_background``).

    Returns:
        image: (H, W, 3) uint8 RGB.
        instances: one ``ShapeInstance`` per shape with its visible (unoccluded) binary mask;
            shapes hidden entirely by later ones are dropped.
    """
    h, w = size
    img = render_background(rng, size, background, contrast)
    masks: list[np.ndarray] = []
    for label in labels:
        radius = rng.uniform(*radius_range) * min(h, w)
        margin = 0.8 * radius
        center = (rng.uniform(margin, w - margin), rng.uniform(margin, h - margin))
        alpha = shape_alpha(classes[label], size, center, radius, rng.uniform(0, 2 * math.pi))
        inside = alpha >= 0.5
        colour = _fill_colour(rng, img[inside].mean(axis=0) if inside.any() else img.mean(axis=(0, 1)))
        shading = _smooth_noise(rng, size, 3) - 127.5
        fill = np.clip(colour + 0.15 * shading, 0, 255)
        img = alpha[..., None] * fill + (1 - alpha[..., None]) * img
        masks = [m & ~inside for m in masks] + [inside]
    instances = [ShapeInstance(label, m) for label, m in zip(labels, masks) if m.any()]
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), instances
