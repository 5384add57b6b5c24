"""Evaluating a query over a scene: which objects does an expression describe?

Each object gets a status: ``"yes"`` (the expression clearly holds for it), ``"no"``
(it clearly does not) or ``"unclear"`` (too close to call: within the spatial margin,
too few frames to judge, ...). The generator keeps an expression only when exactly one
object says "yes" and every other one says "no"; tests re-check that from ``scenes.json``.

Spatial words follow the image axes ("above" = higher in the image); a relation holds
clearly when the offset along its axis exceeds the margin and at least half the offset
across it.

Frames: an object is *seen* in a frame when at least ``seen_area_fraction`` of its area is
visible (after occlusion and the image border); spatial statements use the centroids of
visible pixels, on the frames where the described object is seen (a rival counts as soon
as any of it shows); motion statements use the true centres of the steps where
the object shows at both ends; enter/leave use whether any of it lies inside the image.
"""

from __future__ import annotations

import re

import numpy as np

from rvos.data.synthetic.language import parse_expression

YES, NO, UNCLEAR = "yes", "no", "unclear"


class SceneView:
    """Arrays over a scene dict: N objects (ids ascending), T frames."""

    def __init__(self, scene: dict):
        self.scene = scene
        ids = sorted(scene["objects"], key=int)
        objs = [scene["objects"][i] for i in ids]
        self.ids = [int(i) for i in ids]
        self.attrs = [{"size": o["size"], "color": o["color"], "shape": o["shape"]} for o in objs]
        self.center = np.array([o["center"] for o in objs], dtype=np.float64)          # (N, T, 2)
        self.visible_area = np.array([o["visible_area"] for o in objs], dtype=np.float64)
        self.in_frame = np.array([o["in_frame_area"] for o in objs]) > 0                # (N, T)
        self.area = np.array([o["area_px"] for o in objs], dtype=np.float64)
        centroid = np.full(self.center.shape, np.nan)
        for i, o in enumerate(objs):
            for t, c in enumerate(o["visible_centroid"]):
                if c is not None:
                    centroid[i, t] = c
        self.centroid = centroid
        th = scene["thresholds"]
        self.margin = np.asarray(th["spatial_margin_px"], dtype=np.float64)          # (x, y)
        self.moving_speed = float(th["moving_speed"])
        self.still_speed = float(th["still_speed"])
        self.seen = self.visible_area >= th["seen_area_fraction"] * self.area[:, None]
        self.visible = self.visible_area > 0                                           # (N, T)
        self.step_ok = self.visible[:, :-1] & self.visible[:, 1:]                      # (N, T-1)
        self.velocity = np.diff(self.center, axis=1)                                    # (N, T-1, 2)
        self.speed = np.linalg.norm(self.velocity, axis=-1)

    def __len__(self) -> int:
        return len(self.ids)

    def matches(self, np_: dict) -> np.ndarray:
        """(N,) bool: objects whose attributes agree with every key of the noun phrase."""
        return np.array([all(a[k] == v for k, v in np_.items()) for a in self.attrs], dtype=bool)


# --------------------------------------------------------------------------- per type

_DIRECTIONS = {"left": (0, -1), "right": (0, 1), "top": (1, -1), "bottom": (1, 1)}


def _spatial(view: SceneView, candidates: np.ndarray, direction: str) -> list[str]:
    axis, sign = _DIRECTIONS[direction]
    coord = sign * view.centroid[..., axis]              # (N, T): larger = further that way
    margin = view.margin[axis]
    out = []
    for i in range(len(view)):
        if not candidates[i]:
            out.append(NO)
            continue
        rivals = candidates.copy()
        rivals[i] = False
        # rivals count wherever any of them shows, even a sliver
        rival_shows = view.visible[rivals]               # (R, T)
        frames = view.seen[i] & rival_shows.any(axis=0)
        if not frames.any():
            out.append(UNCLEAR)
            continue
        lead = coord[i][None, :] - coord[rivals]         # (R, T), nan where a rival is hidden
        lead = np.where(rival_shows, lead, np.inf)[:, frames]
        wins = (lead >= margin).all(axis=0)              # clearly the extreme one
        losses = (lead <= -margin).any(axis=0)           # someone is clearly further
        if wins.all() and frames.sum() >= max(1, 0.5 * view.seen[i].sum()):
            out.append(YES)
        elif losses.sum() >= 0.5 * frames.sum():
            out.append(NO)
        else:
            out.append(UNCLEAR)
    return out


_RELATIONS = {"above": (1, -1), "below": (1, 1), "left_of": (0, -1), "right_of": (0, 1)}


def _relational(view: SceneView, candidates: np.ndarray, relation: str,
                anchor_np: dict) -> list[str]:
    anchors = np.flatnonzero(view.matches(anchor_np))
    if len(anchors) != 1:                                # the anchor itself must be unique
        return [UNCLEAR if c else NO for c in candidates]
    a = anchors[0]
    axis, sign = _RELATIONS[relation]
    margin = view.margin[axis]
    out = []
    for i in range(len(view)):
        if not candidates[i] or i == a:
            out.append(NO)
            continue
        frames = view.seen[i] & view.seen[a]
        if not frames.any():
            out.append(NO)                               # never seen together
            continue
        offset = sign * (view.centroid[i, frames, axis] - view.centroid[a, frames, axis])
        across = np.abs(view.centroid[i, frames, 1 - axis] - view.centroid[a, frames, 1 - axis])
        # clearly: beyond the margin, and more that way than sideways (within ~63 degrees)
        holds = (offset >= margin) & (offset >= 0.5 * across)
        if holds.all() and frames.sum() >= max(1, 0.5 * view.seen[i].sum()):
            out.append(YES)
        elif (offset <= -margin).sum() >= 0.5 * frames.sum():
            out.append(NO)
        else:
            out.append(UNCLEAR)
    return out


_MOTION_AXES = {"right": (1.0, 0.0), "left": (-1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}


def _motion(view: SceneView, candidates: np.ndarray, motion: str) -> list[str]:
    out = []
    for i in range(len(view)):
        steps = view.step_ok[i]
        if not candidates[i]:
            out.append(NO)
            continue
        if steps.sum() < 2:
            out.append(UNCLEAR)
            continue
        v, speed = view.velocity[i, steps], view.speed[i, steps]
        moving = speed >= view.moving_speed
        if motion in _MOTION_AXES:
            along = v @ np.asarray(_MOTION_AXES[motion])
            cos = along / np.maximum(speed, 1e-9)
            yes_step = moving & (cos >= 0.85)            # within ~32 degrees of the direction
            no_step = (speed <= view.still_speed) | (moving & (cos <= 0.3)) | (along <= 0)
        elif motion == "still":
            yes_step = speed <= view.still_speed
            no_step = moving
        elif motion == "bounce":
            full_v = view.velocity[i]
            pairs = view.step_ok[i, :-1] & view.step_ok[i, 1:]
            dots = (full_v[:-1] * full_v[1:]).sum(-1)
            norms = view.speed[i, :-1] * view.speed[i, 1:]
            reversal = pairs & (dots <= -0.5 * norms) & (norms > 0)
            turn = pairs & (dots < 0)
            if reversal.any() and moving.all():
                out.append(YES)
            elif not turn.any():
                out.append(NO)
            else:
                out.append(UNCLEAR)
            continue
        else:
            raise ValueError(f"unknown motion {motion!r}")
        if yes_step.all():
            out.append(YES)
        elif no_step.sum() >= 0.5 * len(no_step):
            out.append(NO)
        else:
            out.append(UNCLEAR)
    return out


def _temporal(view: SceneView, candidates: np.ndarray, event: str) -> list[str]:
    out = []
    for i in range(len(view)):
        if not candidates[i]:
            out.append(NO)
            continue
        if event in ("stops", "starts"):
            speed = view.speed[i, view.step_ok[i]]
            pattern = "".join("M" if s >= view.moving_speed else "S" if s <= view.still_speed
                              else "?" for s in speed)
            first, second = ("M", "S") if event == "stops" else ("S", "M")
            if re.fullmatch(f"{first}{{2,}}{second}{{2,}}", pattern):
                out.append(YES)
            elif first not in pattern or second not in pattern[pattern.index(first):]:
                out.append(NO)                           # never switches that way
            else:
                out.append(UNCLEAR)
        elif event in ("enters", "leaves"):
            pattern = "".join("I" if f else "O" for f in view.in_frame[i])
            if event == "leaves":
                pattern = pattern[::-1]
            if re.fullmatch("O+I+", pattern):
                out.append(YES)
            elif pattern[0] == "I":
                out.append(NO)                           # already inside at the start
            else:
                out.append(UNCLEAR)
        else:
            raise ValueError(f"unknown event {event!r}")
    return out


# --------------------------------------------------------------------------- public

def evaluate_query(scene: dict | SceneView, query: dict) -> dict[int, str]:
    """Status ("yes" / "no" / "unclear") of every object id of ``scene`` for ``query``."""
    view = scene if isinstance(scene, SceneView) else SceneView(scene)
    candidates = view.matches(query["target"])
    kind = query["type"]
    if kind == "attribute":
        status = [YES if c else NO for c in candidates]
    elif kind == "spatial":
        status = _spatial(view, candidates, query["direction"])
    elif kind == "relational":
        status = _relational(view, candidates, query["relation"], query["anchor"])
    elif kind == "motion":
        status = _motion(view, candidates, query["motion"])
    elif kind == "temporal":
        status = _temporal(view, candidates, query["event"])
    else:
        raise ValueError(f"unknown expression type {kind!r}")
    return dict(zip(view.ids, status))


def check_expression(scene: dict, expression: dict) -> list[int]:
    """Ids of the objects of ``scene`` (a ``scenes.json`` video entry) that the expression
    describes. ``expression`` is a ``meta_expressions.json`` entry ({"exp": ...}); its
    sentence is parsed back to a query, or its ``"query"`` is used where it has one.
    A well-formed expression gives exactly ``[int(expression["obj_id"])]``."""
    query = expression.get("query") or parse_expression(expression["exp"])
    return [i for i, s in evaluate_query(scene, query).items() if s == YES]
