"""Rasterising shapes, textured backgrounds and the per-frame composition (numpy + PIL)."""

from __future__ import annotations

import colorsys
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

_SUPERSAMPLE = 4


def _regular_polygon(n: int, radius: float, start_deg: float) -> list[tuple[float, float]]:
    angles = np.deg2rad(start_deg + 360.0 * np.arange(n) / n)
    return [(radius * np.cos(a), radius * np.sin(a)) for a in angles]


def _star(points: int = 5, inner: float = 0.46) -> list[tuple[float, float]]:
    angles = np.deg2rad(-90.0 + 180.0 * np.arange(2 * points) / points)
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    ys = radii * np.sin(angles)
    shift = (1.0 - ys.max()) / 2  # centre the star's bounding box vertically
    return [(r * np.cos(a), r * np.sin(a) + shift) for r, a in zip(radii, angles)]


def _heart(n: int = 64) -> list[tuple[float, float]]:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    x, y = x / 17.0, (y - (y.max() + y.min()) / 2) / ((y.max() - y.min()) / 2) * 0.94
    return list(zip(x.tolist(), y.tolist()))


_ARM = 0.34
# Outlines in unit coordinates: the shape fits the square [-1, 1]^2, y pointing down.
_POLYGONS: dict[str, list[tuple[float, float]]] = {
    "square": [(-0.84, -0.84), (0.84, -0.84), (0.84, 0.84), (-0.84, 0.84)],
    "triangle": [(0.0, -0.96), (1.0, 0.82), (-1.0, 0.82)],
    "star": _star(),
    "diamond": [(0.0, -1.0), (0.74, 0.0), (0.0, 1.0), (-0.74, 0.0)],
    "cross": [(-_ARM, -1), (_ARM, -1), (_ARM, -_ARM), (1, -_ARM), (1, _ARM), (_ARM, _ARM),
              (_ARM, 1), (-_ARM, 1), (-_ARM, _ARM), (-1, _ARM), (-1, -_ARM), (-_ARM, -_ARM)],
    "hexagon": _regular_polygon(6, 1.0, 0.0),
    "heart": _heart(),
}


@lru_cache(maxsize=None)
def shape_sprite(shape: str, diameter: int) -> np.ndarray:
    """(diameter, diameter) bool mask of ``shape`` filling its box (4x supersampled)."""
    size = diameter * _SUPERSAMPLE
    img = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(img)
    if shape == "circle":
        draw.ellipse([0, 0, size - 1, size - 1], fill=255)
    else:
        half = size / 2.0
        pts = [(half + x * (half - 0.5), half + y * (half - 0.5)) for x, y in _POLYGONS[shape]]
        draw.polygon(pts, fill=255)
    cover = np.asarray(img, dtype=np.float32).reshape(diameter, _SUPERSAMPLE, diameter,
                                                      _SUPERSAMPLE).mean(axis=(1, 3))
    sprite = cover >= 127.5
    sprite.setflags(write=False)
    return sprite


def sprite_top_left(center: np.ndarray, diameter: int) -> tuple[int, int]:
    """Integer (top, left) pixel of a sprite whose centre is ``center`` = (x, y)."""
    return int(np.floor(center[1] - diameter / 2 + 0.5)), int(np.floor(center[0] - diameter / 2 + 0.5))


def clip_window(top: int, left: int, size: int, height: int, width: int):
    """Slices (image_rows, image_cols, sprite_rows, sprite_cols) of the part of a ``size``
    sprite at (top, left) that lies inside the image, or None when none does."""
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + size, height), min(left + size, width)
    if y0 >= y1 or x0 >= x1:
        return None
    return (slice(y0, y1), slice(x0, x1), slice(y0 - top, y1 - top), slice(x0 - left, x1 - left))


# ----------------------------------------------------------------------------- backgrounds

def _muted_pair(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two low-saturation, mid-brightness RGB colours of nearby hue and clearly different
    brightness: texture that never competes with the saturated object colours."""
    h = rng.random()
    v = rng.uniform(0.4, 0.7)
    dv = rng.uniform(0.08, 0.18) * (1 if rng.random() < 0.5 else -1)
    hsv = [(h, rng.uniform(0.05, 0.25), v),
           ((h + rng.uniform(-0.08, 0.08)) % 1.0, rng.uniform(0.05, 0.25), float(np.clip(v + dv, 0.28, 0.82)))]
    return tuple(np.array(colorsys.hsv_to_rgb(*c), dtype=np.float32) * 255.0 for c in hsv)


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """(H, W) float32 value noise in [0, 1], ``cells`` control points along the shorter side."""
    gh = max(2, round(cells * height / min(height, width)))
    gw = max(2, round(cells * width / min(height, width)))
    grid = rng.random((gh, gw)).astype(np.float32)
    img = Image.fromarray(grid, mode="F").resize((width, height), Image.BICUBIC)
    out = np.asarray(img, dtype=np.float32)
    return np.clip((out - out.min()) / max(float(np.ptp(out)), 1e-6), 0.0, 1.0)


def make_background(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, dict]:
    """A textured, muted background, (H, W, 3) float32 in [0, 255], and its description.

    Kinds: a two-colour linear gradient, blotchy value noise, soft stripes at an angle, or a
    checkerboard; all get a little fine-grained noise on top.
    """
    kind = ["gradient", "noise", "stripes", "checks"][int(rng.integers(4))]
    c0, c1 = _muted_pair(rng)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    scale = min(height, width) / 128.0
    info: dict = {"kind": kind, "colors": [np.round(c0).astype(int).tolist(),
                                           np.round(c1).astype(int).tolist()]}
    if kind == "gradient":
        angle = rng.uniform(0, 2 * np.pi)
        proj = xx * np.cos(angle) + yy * np.sin(angle)
        w = (proj - proj.min()) / max(float(np.ptp(proj)), 1e-6)
        w = 0.8 * w + 0.2 * _smooth_noise(rng, height, width, 4)
        info["angle_deg"] = round(float(np.rad2deg(angle)), 1)
    elif kind == "noise":
        cells = int(rng.integers(4, 10))
        w = _smooth_noise(rng, height, width, cells)
        info["cells"] = cells
    elif kind == "stripes":
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(10, 26) * scale
        proj = xx * np.cos(angle) + yy * np.sin(angle)
        w = 0.5 + 0.5 * np.tanh(2.5 * np.sin(2 * np.pi * proj / period))
        info.update(angle_deg=round(float(np.rad2deg(angle)), 1), period_px=round(float(period), 1))
    else:
        cell = rng.uniform(8, 20) * scale
        w = ((np.floor(xx / cell) + np.floor(yy / cell)) % 2).astype(np.float32)
        w = 0.85 * w + 0.15 * _smooth_noise(rng, height, width, 5)
        info["cell_px"] = round(float(cell), 1)
    bg = c0[None, None, :] * (1 - w[..., None]) + c1[None, None, :] * w[..., None]
    bg += rng.normal(0.0, 5.0, size=(height, width, 1)).astype(np.float32)
    return np.clip(bg, 0, 255).astype(np.float32), info


# ----------------------------------------------------------------------------- composition

def render_labels(sprites: list[np.ndarray], top_lefts: np.ndarray, draw_order: list[int],
                  height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Label maps by the painter's algorithm.

    sprites: one (d_i, d_i) bool mask per object (object id = index + 1).
    top_lefts: (N, T, 2) int (top, left) of each sprite per frame.
    draw_order: object indices back to front (the last one is on top).
    Returns labels (T, H, W) uint8 (0 background, i + 1 object i) and in_frame_area (N, T)
    int: pixels of each unoccluded object inside the image.
    """
    n, t_len = top_lefts.shape[:2]
    labels = np.zeros((t_len, height, width), dtype=np.uint8)
    in_frame = np.zeros((n, t_len), dtype=np.int64)
    for t in range(t_len):
        for i in draw_order:
            win = clip_window(int(top_lefts[i, t, 0]), int(top_lefts[i, t, 1]), sprites[i].shape[0],
                              height, width)
            if win is None:
                continue
            ys, xs, sy, sx = win
            part = sprites[i][sy, sx]
            in_frame[i, t] = int(part.sum())
            labels[t, ys, xs][part] = i + 1
    return labels, in_frame


def render_frames(background: np.ndarray, labels: np.ndarray, sprites: list[np.ndarray],
                  top_lefts: np.ndarray, colors: list[tuple[int, int, int]],
                  rng: np.random.Generator) -> np.ndarray:
    """RGB frames (T, H, W, 3) uint8: each object's visible pixels (from ``labels``) in its
    colour with a soft top-to-bottom shading, over the background, plus sensor noise."""
    t_len, height, width = labels.shape
    frames = np.empty((t_len, height, width, 3), dtype=np.uint8)
    for t in range(t_len):
        img = background.copy()
        for i, sprite in enumerate(sprites):
            d = sprite.shape[0]
            top, left = int(top_lefts[i, t, 0]), int(top_lefts[i, t, 1])
            win = clip_window(top, left, d, height, width)
            if win is None:
                continue
            ys, xs, sy, _ = win
            region = labels[t, ys, xs] == i + 1
            if not region.any():
                continue
            rows = np.arange(sy.start, sy.stop, dtype=np.float32)[:, None]
            shade = 1.1 - 0.2 * rows / max(d - 1, 1)            # lit from above
            rgb = np.asarray(colors[i], dtype=np.float32)[None, None, :] * shade[..., None]
            patch = img[ys, xs]
            patch[region] = np.broadcast_to(rgb, (*region.shape, 3))[region]
            img[ys, xs] = patch
        img += rng.normal(0.0, 2.0, size=img.shape).astype(np.float32)
        frames[t] = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    return frames
