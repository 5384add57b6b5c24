"""One synthetic video: plan objects (with look-alike pairs), render, find expressions."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from rvos.data.synthetic.config import (COLORS, FEWSHOT_STREAM, SHAPES, SIZES, SPLITS,
                                        SynthConfig, fewshot_group)
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
# Few-shot: share of videos whose first single object after others is a colour decoy.
COLOUR_DECOY_SHARE = 1.0
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
                 single_pairs: list[tuple[str, str]], usage: Counter,
                 lead_pairs: list[tuple[str, str]] | None = None,
                 decoy_shape: str | None = None) -> list[ObjectPlan] | None:
    """Look-alike twins first (same shape, colour and size, contrasting motion, one pair per
    entry of ``twin_types``; the motion the split has fewest expressions about, ties at
    random), then single objects with random looks (``(colour, shape)`` from
    ``single_pairs``; the very first object from ``lead_pairs`` if given and there are no
    twins) and motions.

    ``decoy_shape`` (few-shot: the category's group partner): in a share
    :data:`COLOUR_DECOY_SHARE` of the calls, the first single object that follows others
    has this shape and the colour of one of them, so that only the shape word tells the
    two apart."""
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
    want_decoy = decoy_shape is not None and rng.random() < COLOUR_DECOY_SHARE
    while len(plans) < num_objects:
        if want_decoy and plans:
            color = _pick(rng, plans).color
            shape, size = decoy_shape, _pick(rng, list(SIZES))
            want_decoy = False
        else:
            pairs = lead_pairs if lead_pairs and not plans else single_pairs
            shape, color, size = sample_attributes(rng, plans, pairs)
        obj = plan_object(rng, cfg, shape, color, size, random_motion_kind(rng), plans)
        if obj is None:
            return None
        plans.append(obj)
    return plans


def generate_video(cfg: SynthConfig, split: str, index: int, heldout: list[tuple[str, str]],
                   usage: Counter, category: str | None = None) -> VideoData:
    """Video ``index`` of ``split``; ``usage`` (the split's expressions so far per
    :func:`~rvos.data.synthetic.language.query_kind`) steers it towards what the split
    still lacks.

    ``category`` (a shape; few-shot) makes it video ``index`` of that category instead,
    from the random stream (seed, FEWSHOT_STREAM, the category's index in SHAPES, index):
    all its objects have shapes of the category's fold group, at least one has the
    category's shape (the look-alike twins, else the first object), and every expression
    refers to an object of the category and names its shape.
    """
    compositional = split == "test_compositional"
    if category is None:
        rng = np.random.default_rng([cfg.seed, SPLITS.index(split), index])
        shapes, partner = SHAPES, None
    else:
        if compositional or heldout:
            raise RVOSError(f"category={category!r}: few-shot videos hold no colour-shape "
                            f"pairs out (split {split!r}, {len(heldout)} held-out pairs)")
        shapes = fewshot_group(category)        # checks the category first
        partner = next(shape for shape in shapes if shape != category)
        rng = np.random.default_rng([cfg.seed, FEWSHOT_STREAM, SHAPES.index(category), index])
    all_pairs = [(c, s) for c in COLORS for s in shapes]
    seen_pairs = [p for p in all_pairs if p not in heldout]
    # the looks an expression's referent may have; look-alike twins are always of them
    if compositional:
        referent_pairs = heldout
    elif category is not None:
        referent_pairs = [p for p in seen_pairs if p[1] == category]
    else:
        referent_pairs = seen_pairs
    must_name = ("color", "shape") if compositional else ("shape",) if category else ()
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
        plans = plan_objects(rng, cfg, n, twins, referent_pairs, single_pairs, usage,
                             lead_pairs=referent_pairs if category is not None else None,
                             decoy_shape=partner)
        if plans is None:
            continue
        scene, labels, sprites, top_lefts, colors = build_scene(plans, cfg, rng)
        if any(max(o["visible_area"]) == 0 for o in scene["objects"].values()):
            continue        # an object hidden for the whole video
        view = SceneView(scene)
        seen_share = view.seen.mean(axis=1)
        referents = [i for i in range(len(view)) if seen_share[i] >= cfg.min_referent_visible
                     and (view.attrs[i]["color"], view.attrs[i]["shape"]) in referent_pairs]
        finder = CandidateFinder(view, referents, must_name, rng)
        chosen = choose_expressions(finder, order, cfg.expressions_per_video, usage)
        score = (len({e.type for e in chosen} & set(wanted)), len(chosen))
        if chosen and (best is None or score > best[0]):
            best = (score, scene, chosen, labels, sprites, top_lefts, colors)
        if best is not None and (attempt + 1 >= MAX_ATTEMPTS
                                 or best[0] == (len(wanted), cfg.expressions_per_video)):
            break
    if best is None:
        which = f"{split} video {index}" if category is None else f"few-shot {category} video {index}"
        raise RVOSError(f"SynthConfig leaves too little room: no unambiguous expression found "
                        f"for {which} in {HARD_LIMIT} scenes (larger frames or fewer objects "
                        f"help)")
    _, scene, chosen, labels, sprites, top_lefts, colors = best
    background, bg_info = make_background(rng, cfg.height, cfg.width)
    frames = render_frames(background, labels, sprites, top_lefts, colors, rng)
    scene = {"frames": frame_names(cfg.num_frames), **scene, "background": bg_info,
             "expressions": {str(k): {"exp": e.text, "obj_id": str(e.obj_id), "type": e.type,
                                      "query": e.query} for k, e in enumerate(chosen)}}
    return VideoData(scene, chosen, labels, frames)
