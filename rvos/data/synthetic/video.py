"""One synthetic video: plan objects (with look-alike pairs), render, find expressions."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from rvos.data.synthetic.config import COLORS, SHAPES, SIZES, SPLITS, SynthConfig
from rvos.data.synthetic.expressions import (CandidateFinder, Expression, choose_expressions,
                                             type_order_by_need)
from rvos.data.synthetic.predicates import SceneView
from rvos.data.synthetic.render import make_background, render_frames
from rvos.data.synthetic.scene import (ObjectPlan, build_scene, plan_object, random_motion_kind,
                                       sample_attributes, sample_diameter)
from rvos.errors import RVOSError

# Look-alike pairs: the motion the referred twin gets -> motions its twin may get instead.
MOTION_CONTRASTS = {
    "right": ("direction_right", ("static", "direction_left", "direction_up", "direction_down")),
    "left": ("direction_left", ("static", "direction_right", "direction_up", "direction_down")),
    "up": ("direction_up", ("static", "direction_down", "direction_left", "direction_right")),
    "down": ("direction_down", ("static", "direction_up", "direction_left", "direction_right")),
    "still": ("static", ("linear", "bounce", "direction_left", "direction_right")),
    "bounce": ("bounce", ("linear", "static")),
}
TEMPORAL_CONTRASTS = {
    "stops": ("stops", ("linear", "static")),
    "starts": ("starts", ("linear", "static")),
    "enters": ("enters", ("static", "linear")),
    "leaves": ("leaves", ("static", "linear")),
}
MAX_ATTEMPTS = 12          # scenes tried per video to cover the wanted expression types
HARD_LIMIT = 200           # scenes tried before giving up on finding any expression


@dataclass
class VideoData:
    scene: dict                 # the scenes.json entry, expressions included
    expressions: list[Expression]
    labels: np.ndarray          # (T, H, W) uint8 object ids
    frames: np.ndarray          # (T, H, W, 3) uint8 RGB


def frame_names(num_frames: int) -> list[str]:
    return [f"{t:05d}" for t in range(num_frames)]


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def plan_objects(rng: np.random.Generator, cfg: SynthConfig, num_objects: int,
                 twin_types: list[str], twin_pairs: list[tuple[str, str]],
                 single_pairs: list[tuple[str, str]], usage: Counter) -> list[ObjectPlan] | None:
    """Look-alike twins first (same shape, colour and size, contrasting motion, one pair per
    entry of ``twin_types``; the motion the split has fewest expressions about, ties at
    random), then single objects with random looks and motions."""
    plans: list[ObjectPlan] = []
    for kind in twin_types:
        table = MOTION_CONTRASTS if kind == "motion" else TEMPORAL_CONTRASTS
        tiebreak = rng.random(len(table))
        need = sorted(zip(table, tiebreak), key=lambda kt: (usage[f"{kind}/{kt[0]}"], kt[1]))
        referred_motion, contrasts = table[need[0][0]]
        color, shape = _pick(rng, twin_pairs)
        size = _pick(rng, list(SIZES))
        d = sample_diameter(rng, size, cfg)
        for motion in (referred_motion, _pick(rng, contrasts)):
            obj = plan_object(rng, cfg, shape, color, size, motion, plans, diameter=d)
            if obj is None:
                return None
            plans.append(obj)
    while len(plans) < num_objects:
        shape, color, size = sample_attributes(rng, plans, single_pairs)
        obj = plan_object(rng, cfg, shape, color, size, random_motion_kind(rng), plans)
        if obj is None:
            return None
        plans.append(obj)
    return plans


def generate_video(cfg: SynthConfig, split: str, index: int, heldout: list[tuple[str, str]],
                   usage: Counter) -> VideoData:
    """Video ``index`` of ``split``; ``usage`` (the split's expressions so far per
    :func:`~rvos.data.synthetic.language.query_kind`) steers it towards what the split
    still lacks."""
    rng = np.random.default_rng([cfg.seed, SPLITS.index(split), index])
    compositional = split == "test_compositional"
    all_pairs = [(c, s) for c in COLORS for s in SHAPES]
    seen_pairs = [p for p in all_pairs if p not in heldout]
    twin_pairs = heldout if compositional else seen_pairs
    order = type_order_by_need(usage, rng)
    wanted = order[:cfg.expressions_per_video]
    n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))   # fixed: keeps counts uniform
    best = None
    for attempt in range(HARD_LIMIT):
        twins = [k for k in wanted if k in ("motion", "temporal")][:max(1, (n - 1) // 2)]
        if attempt >= MAX_ATTEMPTS and attempt % 2:
            twins = []      # look-alike pairs do not fit: settle for other expression types
        if compositional:   # the referred objects must be of held-out pairs
            single_pairs = heldout if rng.random() < 0.5 else all_pairs
        else:
            single_pairs = seen_pairs
        plans = plan_objects(rng, cfg, n, twins, twin_pairs, single_pairs, usage)
        if plans is None:
            continue
        scene, labels, sprites, top_lefts, colors = build_scene(plans, cfg, rng)
        if any(max(o["visible_area"]) == 0 for o in scene["objects"].values()):
            continue        # an object hidden for the whole video
        view = SceneView(scene)
        seen_share = view.seen.mean(axis=1)
        referents = [i for i in range(len(view)) if seen_share[i] >= cfg.min_referent_visible
                     and (not compositional or (view.attrs[i]["color"], view.attrs[i]["shape"]) in heldout)]
        finder = CandidateFinder(view, referents, ("color", "shape") if compositional else (), rng)
        chosen = choose_expressions(finder, order, cfg.expressions_per_video, usage)
        score = (len({e.type for e in chosen} & set(wanted)), len(chosen))
        if chosen and (best is None or score > best[0]):
            best = (score, scene, chosen, labels, sprites, top_lefts, colors)
        if best is not None and (attempt + 1 >= MAX_ATTEMPTS
                                 or best[0] == (len(wanted), cfg.expressions_per_video)):
            break
    if best is None:
        raise RVOSError(f"SynthConfig leaves too little room: no unambiguous expression found "
                        f"for {split} video {index} in {HARD_LIMIT} scenes (larger frames or "
                        f"fewer objects help)")
    _, scene, chosen, labels, sprites, top_lefts, colors = best
    background, bg_info = make_background(rng, cfg.height, cfg.width)
    frames = render_frames(background, labels, sprites, top_lefts, colors, rng)
    scene = {"frames": frame_names(cfg.num_frames), **scene, "background": bg_info,
             "expressions": {str(k): {"exp": e.text, "obj_id": str(e.obj_id), "type": e.type,
                                      "query": e.query} for k, e in enumerate(chosen)}}
    return VideoData(scene, chosen, labels, frames)
