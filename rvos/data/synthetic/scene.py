"""Sampling a scene (objects, trajectories, depth order) and measuring it frame by frame.

A scene is a plain dict, the one written to ``scenes.json``; everything the expression
predicates need is in it, so anyone can re-check every expression from that file alone.
Coordinates are pixels, x to the right and y down; ``depth`` 0 is nearest the camera
(drawn on top).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rvos.data.synthetic.config import COLORS, SIZES, SynthConfig
from rvos.data.synthetic.render import render_labels, shape_sprite, sprite_top_left

# Motion speeds in px/frame at 128 x 128 (scaled with the resolution).
LINEAR_SPEED = (2.0, 4.0)
FAST_SPEED = (3.5, 6.0)          # bouncing, entering and leaving objects
MOVING_SPEED = 1.0               # a step at least this fast counts as moving
STILL_SPEED = 0.1                # a step at most this fast counts as standing still
SEEN_AREA_FRACTION = 0.3         # an object is "seen" in a frame when this share of it shows

_AXES = {"right": 0.0, "down": 90.0, "left": 180.0, "up": 270.0}


@dataclass
class ObjectPlan:
    """One object before rendering."""

    shape: str
    color: str
    size: str
    diameter: int
    motion: dict          # {"kind": ..., parameters}
    centers: np.ndarray   # (T, 2) float (x, y) per frame


def _unit(angle_deg: float) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    return np.array([np.cos(a), np.sin(a)])


def _fit_start(rng, lo: np.ndarray, hi: np.ndarray, displacement: np.ndarray):
    """A start point p0 with p0 + s * displacement in [lo, hi] for all s in [0, 1], or None."""
    start_lo = lo - np.minimum(displacement, 0)
    start_hi = hi - np.maximum(displacement, 0)
    if np.any(start_lo > start_hi):
        return None
    return rng.uniform(start_lo, start_hi)


def _line(rng, lo, hi, t_len, angle_deg, speed):
    """Straight motion staying inside [lo, hi]; the speed shrinks if the frame is too small."""
    direction = _unit(angle_deg)
    for _ in range(8):
        p0 = _fit_start(rng, lo, hi, direction * speed * (t_len - 1))
        if p0 is not None:
            return p0[None, :] + direction[None, :] * speed * np.arange(t_len)[:, None], speed
        speed *= 0.8
    return None


def plan_motion(rng: np.random.Generator, kind: str, radius: float, cfg: SynthConfig):
    """Trajectory (T, 2) and a description for one motion ``kind``, or None if it does not fit.

    Kinds: "static"; "linear" (any angle); "direction_right|left|up|down" (linear within
    12 degrees of that axis); "bounce" (towards a wall, reflected mid-clip); "stops" /
    "starts" (moving then still / still then moving, switching in the middle third);
    "enters" / "leaves" (fully outside the image for the first / last few frames).
    """
    t_len, s = cfg.num_frames, cfg.scale
    lo = np.array([radius, radius])
    hi = np.array([cfg.width - radius, cfg.height - radius])
    if kind == "static":
        p0 = rng.uniform(lo, hi)
        return np.repeat(p0[None, :], t_len, axis=0), {"kind": "static"}
    if kind in ("linear",) or kind.startswith("direction_"):
        angle = (rng.uniform(0, 360) if kind == "linear"
                 else _AXES[kind.split("_")[1]] + rng.uniform(-12, 12))
        fit = _line(rng, lo, hi, t_len, angle, rng.uniform(*LINEAR_SPEED) * s)
        if fit is None or fit[1] < 1.5 * MOVING_SPEED * s:
            return None
        return fit[0], {"kind": "linear", "angle_deg": round(angle, 1), "speed": round(fit[1], 3)}
    if kind in ("stops", "starts"):
        # moving for k steps then still ("stops"), or still then moving ("starts")
        k = int(rng.integers(max(2, t_len // 3), min(t_len - 3, 2 * t_len // 3) + 1))
        moving_steps = k if kind == "stops" else t_len - 1 - k
        angle = rng.uniform(0, 360)
        fit = _line(rng, lo, hi, moving_steps + 1, angle, rng.uniform(*LINEAR_SPEED) * s)
        if fit is None or fit[1] < 1.5 * MOVING_SPEED * s:
            return None
        path = fit[0]
        if kind == "stops":
            centers = np.concatenate([path, np.repeat(path[-1:], t_len - 1 - k, axis=0)])
        else:
            centers = np.concatenate([np.repeat(path[:1], k, axis=0), path])
        return centers, {"kind": kind, "switch_frame": k, "angle_deg": round(angle, 1),
                         "speed": round(fit[1], 3)}
    if kind == "bounce":
        # along a main axis towards a wall, reflected at frame k; small drift across
        axis = int(rng.integers(2))
        sign = 1 if rng.random() < 0.5 else -1
        k = int(rng.integers(max(1, t_len // 3), min(t_len - 2, 2 * t_len // 3) + 1))
        room = (hi[axis] - lo[axis]) / max(k, t_len - 1 - k)
        speed = min(rng.uniform(*FAST_SPEED) * s, room)
        if speed < 2 * MOVING_SPEED * s:
            return None
        wall = hi[axis] if sign > 0 else lo[axis]
        t = np.arange(t_len)
        main = wall - sign * speed * np.abs(t - k)
        drift = rng.uniform(-0.15, 0.15) * speed
        other = 1 - axis
        o0 = _fit_start(rng, lo[other:other + 1], hi[other:other + 1], np.array([drift * (t_len - 1)]))
        if o0 is None:
            return None
        centers = np.zeros((t_len, 2))
        centers[:, axis] = main
        centers[:, other] = o0[0] + drift * t
        return centers, {"kind": "bounce", "bounce_frame": k, "speed": round(speed, 3)}
    if kind in ("enters", "leaves"):
        # built as "enters" (fully outside for the first `out` frames, then inside for good);
        # "leaves" is the same path played backwards
        max_out = max(1, int(np.floor((1 - cfg.min_referent_visible) * t_len)) - 1)
        out = int(rng.integers(1, max_out + 1))
        edge = ["left", "right", "top", "bottom"][int(rng.integers(4))]
        axis = 0 if edge in ("left", "right") else 1
        sign = 1 if edge in ("left", "top") else -1          # inward direction
        extent = cfg.width if axis == 0 else cfg.height
        speed = rng.uniform(*FAST_SPEED) * s
        speed = min(speed, (extent - radius) / max(t_len - 1 - out, 1))
        if speed < 2 * MOVING_SPEED * s:
            return None
        # the centre's distance inside the edge at frame `out`: > -r (partly in), and one
        # step earlier <= -r (fully out)
        inside_at_out = -radius + rng.uniform(min(1.0, 1.5 / speed), 1.0) * speed
        t = np.arange(t_len)
        pos_from_edge = inside_at_out + speed * (t - out)
        main = pos_from_edge if sign > 0 else extent - pos_from_edge
        other = 1 - axis
        drift = rng.uniform(-0.1, 0.1) * speed
        o0 = _fit_start(rng, lo[other:other + 1], hi[other:other + 1], np.array([drift * (t_len - 1)]))
        if o0 is None:
            return None
        centers = np.zeros((t_len, 2))
        centers[:, axis] = main
        centers[:, other] = o0[0] + drift * t
        if kind == "leaves":
            centers = centers[::-1].copy()
        return centers, {"kind": kind, "edge": edge, "frames_outside": out, "speed": round(speed, 3)}
    raise ValueError(f"unknown motion kind {kind!r}")


def sample_diameter(rng: np.random.Generator, size: str, cfg: SynthConfig) -> int:
    lo, hi = SIZES[size]
    return max(4, int(round(rng.uniform(lo, hi) * cfg.scale)))


def sample_attributes(rng: np.random.Generator, existing: list[ObjectPlan],
                      allowed_pairs: list[tuple[str, str]]) -> tuple[str, str, str]:
    """(shape, colour, size) of a new object; often shares one attribute with an earlier
    object, so that expressions need more than one word to single an object out."""
    sizes = list(SIZES)
    size = sizes[int(rng.integers(len(sizes)))]
    mode = rng.random()
    if existing and mode < 0.6:
        ref = existing[int(rng.integers(len(existing)))]
        if mode < 0.25:
            pool = [p for p in allowed_pairs if p[1] == ref.shape and p[0] != ref.color]
        elif mode < 0.5:
            pool = [p for p in allowed_pairs if p[0] == ref.color and p[1] != ref.shape]
        else:
            pool = [p for p in allowed_pairs if p == (ref.color, ref.shape)]
            size = [z for z in sizes if z != ref.size][int(rng.integers(len(sizes) - 1))]
        if pool:
            color, shape = pool[int(rng.integers(len(pool)))]
            return shape, color, size
    color, shape = allowed_pairs[int(rng.integers(len(allowed_pairs)))]
    return shape, color, size


def _overlaps(a: ObjectPlan, b: ObjectPlan) -> bool:
    """Whether two objects overlap heavily at the start or for much of the clip (passing
    in front of each other for a while is welcome; hiding one for good is not)."""
    gaps = np.linalg.norm(a.centers - b.centers, axis=1)
    heavy = gaps < 0.6 * (a.diameter + b.diameter) / 2
    return bool(heavy[0] or heavy.mean() > 1 / 3)


def plan_object(rng, cfg: SynthConfig, shape: str, color: str, size: str, motion_kind: str,
                others: list[ObjectPlan], diameter: int | None = None) -> ObjectPlan | None:
    """An object with the given look and motion, starting away from ``others``."""
    d = diameter or sample_diameter(rng, size, cfg)
    for _ in range(20):
        planned = plan_motion(rng, motion_kind, d / 2.0, cfg)
        if planned is None:
            continue
        obj = ObjectPlan(shape, color, size, d, planned[1], planned[0])
        if not any(_overlaps(obj, o) for o in others):
            return obj
    return None


def random_motion_kind(rng: np.random.Generator) -> str:
    kinds = ("static", "linear", "bounce", "stops", "starts", "enters", "leaves")
    probs = (0.32, 0.34, 0.08, 0.07, 0.07, 0.06, 0.06)
    return kinds[int(rng.choice(len(kinds), p=probs))]


def build_scene(plans: list[ObjectPlan], cfg: SynthConfig, rng: np.random.Generator):
    """Render label maps and measure every object per frame.

    Object ids are 1..N in a shuffled order; depth is a random permutation.
    Returns (scene dict, labels (T, H, W) uint8, sprites, top_lefts (N, T, 2)).
    """
    t_len, height, width = cfg.num_frames, cfg.height, cfg.width
    order = rng.permutation(len(plans))
    plans = [plans[i] for i in order]
    for p in plans:   # render from exactly the centres scenes.json will state
        p.centers = np.round(p.centers, 3)
    depth = rng.permutation(len(plans))
    sprites = [shape_sprite(p.shape, p.diameter) for p in plans]
    top_lefts = np.array([[sprite_top_left(c, p.diameter) for c in p.centers] for p in plans],
                         dtype=np.int64).reshape(len(plans), t_len, 2)
    draw_order = sorted(range(len(plans)), key=lambda i: -depth[i])   # far to near
    labels, in_frame = render_labels(sprites, top_lefts, draw_order, height, width)

    objects = {}
    ids = np.arange(1, len(plans) + 1, dtype=np.uint8)
    flat = labels.reshape(t_len, -1)
    counts = np.stack([np.bincount(flat[t], minlength=len(plans) + 1) for t in range(t_len)])
    yy, xx = np.mgrid[0:height, 0:width]
    for i, plan in enumerate(plans):
        centroid = []
        for t in range(t_len):
            if counts[t, i + 1] == 0:
                centroid.append(None)
                continue
            mask = labels[t] == ids[i]
            centroid.append([round(float(xx[mask].mean()), 2), round(float(yy[mask].mean()), 2)])
        speeds = np.linalg.norm(np.diff(plan.centers, axis=0), axis=1)
        step_speed = np.concatenate([speeds, speeds[-1:]])
        objects[str(i + 1)] = {
            "shape": plan.shape,
            "color": plan.color,
            "size": plan.size,
            "diameter_px": plan.diameter,
            "area_px": int(sprites[i].sum()),
            "depth": int(depth[i]),
            "motion": plan.motion,
            "center": [[round(float(x), 3), round(float(y), 3)] for x, y in plan.centers],
            "in_frame_area": in_frame[i].tolist(),
            "visible_area": counts[:, i + 1].tolist(),
            "visible_centroid": centroid,
            "state": ["moving" if v >= MOVING_SPEED * cfg.scale else
                      "still" if v <= STILL_SPEED * cfg.scale else "slow" for v in step_speed],
        }
    scene = {
        "height": height,
        "width": width,
        "num_frames": t_len,
        "thresholds": {
            "spatial_margin_px": [round(cfg.spatial_margin * width, 3),
                                  round(cfg.spatial_margin * height, 3)],
            "moving_speed": round(MOVING_SPEED * cfg.scale, 4),
            "still_speed": round(STILL_SPEED * cfg.scale, 4),
            "seen_area_fraction": SEEN_AREA_FRACTION,
        },
        "objects": objects,
    }
    return scene, labels, sprites, top_lefts, [COLORS[p.color] for p in plans]

