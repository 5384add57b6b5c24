"""Sentences from structured queries, and back.

A *query* is the structured meaning of an expression::

    {"type": "attribute",  "target": NP}
    {"type": "spatial",    "target": NP, "direction": "left" | "right" | "top" | "bottom"}
    {"type": "relational", "target": NP, "relation": "above" | "below" | "left_of" |
                           "right_of", "anchor": NP}
    {"type": "motion",     "target": NP, "motion": "right" | "left" | "up" | "down" |
                           "still" | "bounce"}
    {"type": "temporal",   "target": NP, "event": "stops" | "starts" | "enters" | "leaves"}

where NP is a noun phrase ``{"size"?: ..., "color"?: ..., "shape"?: ...}`` (missing keys
match anything: ``{}`` is "object"). :func:`describe` words a query with one of a few
templates; :func:`parse_expression` reads any such sentence back to its query, so a
sentence can be re-checked against a scene without trusting anything but its text.
"""

from __future__ import annotations

import re
from functools import lru_cache

import numpy as np

from rvos.data.synthetic.config import COLORS, SHAPES, SIZES
from rvos.errors import RVOSError

SIZE_WORDS = {"small": ("small", "little"), "medium": ("medium", "medium-sized"),
              "large": ("large", "big")}
GENERIC_NOUNS = ("object", "shape")

ATTRIBUTE_TEMPLATES = ("the {np}", "{np}", "the {noun} that is {adj}")
SPATIAL_TEMPLATES = {
    "left": ("the leftmost {np}", "the {np} on the far left", "the {np} furthest to the left"),
    "right": ("the rightmost {np}", "the {np} on the far right", "the {np} furthest to the right"),
    "top": ("the {np} at the top", "the topmost {np}", "the highest {np}"),
    "bottom": ("the {np} at the bottom", "the bottommost {np}", "the lowest {np}"),
}
RELATIONAL_TEMPLATES = {
    "above": ("the {np} above {anchor}", "the {np} that is above {anchor}"),
    "below": ("the {np} below {anchor}", "the {np} under {anchor}", "the {np} beneath {anchor}"),
    "left_of": ("the {np} to the left of {anchor}", "the {np} left of {anchor}"),
    "right_of": ("the {np} to the right of {anchor}", "the {np} right of {anchor}"),
}
MOTION_TEMPLATES = {
    "right": ("the {np} moving to the right", "the {np} that moves right", "the {np} going right"),
    "left": ("the {np} moving to the left", "the {np} that moves left", "the {np} going left"),
    "up": ("the {np} moving up", "the {np} that moves upwards", "the {np} going up"),
    "down": ("the {np} moving down", "the {np} that moves downwards", "the {np} going down"),
    "still": ("the {np} that stays still", "the {np} that is not moving", "the motionless {np}"),
    "bounce": ("the bouncing {np}", "the {np} that bounces back", "the {np} that turns back"),
}
TEMPORAL_TEMPLATES = {
    "stops": ("the {np} that stops halfway", "the {np} that stops moving",
              "the {np} that comes to a stop"),
    "starts": ("the {np} that starts moving later", "the {np} that starts moving",
               "the {np} that begins to move"),
    "enters": ("the {np} that enters the frame", "the {np} coming into view",
               "the {np} that comes into the frame"),
    "leaves": ("the {np} that leaves the frame", "the {np} that goes out of view",
               "the {np} that exits the frame"),
}
# the query key holding each type's parameter ("direction", ...), and its templates
PARAM_KEY = {"spatial": "direction", "relational": "relation", "motion": "motion",
              "temporal": "event"}
_TEMPLATES = {"spatial": SPATIAL_TEMPLATES, "relational": RELATIONAL_TEMPLATES,
              "motion": MOTION_TEMPLATES, "temporal": TEMPORAL_TEMPLATES}


def query_kind(query: dict) -> str:
    """"attribute", "spatial/left", "motion/still", ...: the type and its parameter."""
    key = PARAM_KEY.get(query["type"])
    return query["type"] if key is None else f"{query['type']}/{query[key]}"


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _adjectives(np_: dict, rng: np.random.Generator) -> list[str]:
    words = []
    if "size" in np_:
        words.append(_pick(rng, SIZE_WORDS[np_["size"]]))
    if "color" in np_:
        words.append(np_["color"])
    return words


def _noun(np_: dict, rng: np.random.Generator) -> str:
    return np_["shape"] if "shape" in np_ else _pick(rng, GENERIC_NOUNS)


def noun_phrase(np_: dict, rng: np.random.Generator) -> str:
    """"small green triangle", "red object" (no article)."""
    return " ".join(_adjectives(np_, rng) + [_noun(np_, rng)])


def describe(query: dict, rng: np.random.Generator) -> str:
    """A sentence for ``query``, with a template and synonyms drawn from ``rng``."""
    kind = query["type"]
    target = query["target"]
    if kind == "attribute":
        # "the circle that is red", but not "the shape that is medium"
        clause_ok = "shape" in target and len(target) > 1
        templates = [t for t in ATTRIBUTE_TEMPLATES if "{adj}" not in t or clause_ok]
        template = _pick(rng, templates)
        if "{adj}" in template:
            return template.format(noun=_noun(target, rng), adj=" and ".join(_adjectives(target, rng)))
        return template.format(np=noun_phrase(target, rng))
    template = _pick(rng, _TEMPLATES[kind][query[PARAM_KEY[kind]]])
    anchor = "the " + noun_phrase(query["anchor"], rng) if kind == "relational" else ""
    return template.format(np=noun_phrase(target, rng), anchor=anchor)


# ----------------------------------------------------------------------------- parsing

@lru_cache(maxsize=1)
def _vocabulary() -> tuple[dict, dict, dict]:
    sizes = {w: size for size, words in SIZE_WORDS.items() for w in words}
    assert set(SIZE_WORDS) == set(SIZES)
    colors = {c: c for c in COLORS}
    shapes = {s: s for s in SHAPES}
    return sizes, colors, shapes


def _parse_np(text: str) -> dict | None:
    """"small green triangle" -> {"size": "small", "color": "green", "shape": "triangle"}."""
    sizes, colors, shapes = _vocabulary()
    words = text.split()
    if not words:
        return None
    noun, adjectives = words[-1], words[:-1]
    out: dict = {}
    if noun in shapes:
        out["shape"] = shapes[noun]
    elif noun not in GENERIC_NOUNS:
        return None
    return out if _parse_adjectives(adjectives, out) else None


def _parse_adjectives(words: list[str], out: dict) -> bool:
    sizes, colors, _ = _vocabulary()
    for w in words:
        if w in sizes and "size" not in out and "color" not in out:
            out["size"] = sizes[w]
        elif w in colors and "color" not in out:
            out["color"] = colors[w]
        else:
            return False
    return True


def _regex(template: str) -> re.Pattern:
    pattern = re.escape(template)
    for field in ("np", "anchor", "noun", "adj"):
        pattern = pattern.replace(re.escape("{" + field + "}"), f"(?P<{field}>[a-z -]+?)")
    return re.compile(pattern + r"\Z")


@lru_cache(maxsize=1)
def _compiled() -> list[tuple[str, str | None, re.Pattern]]:
    out = [("attribute", None, _regex(t)) for t in ATTRIBUTE_TEMPLATES]
    for kind, table in _TEMPLATES.items():
        for param, templates in table.items():
            out.extend((kind, param, _regex(t)) for t in templates)
    return out


def parse_expression(text: str) -> dict:
    """The query a generated sentence states; :class:`RVOSError` when the sentence is not
    one of the generator's forms or reads in more than one way."""
    clean = " ".join(text.lower().strip().rstrip(".").split())
    found = []
    for kind, param, regex in _compiled():
        m = regex.match(clean)
        if not m:
            continue
        groups = m.groupdict()
        if "noun" in groups:
            target = _parse_np(groups["noun"])
            adjectives = groups["adj"].split(" and ")
            if target is None or len(adjectives) > 2 or not _parse_adjectives(adjectives, target):
                continue
        else:
            target = _parse_np(groups["np"])
            if target is None:
                continue
        query: dict = {"type": kind, "target": target}
        if kind != "attribute":
            query[PARAM_KEY[kind]] = param
        if kind == "relational":
            anchor = groups["anchor"]
            if not anchor.startswith("the "):
                continue
            anchor_np = _parse_np(anchor[4:])
            if anchor_np is None:
                continue
            query["anchor"] = anchor_np
        if query not in found:
            found.append(query)
    if not found:
        raise RVOSError(f"not a synthetic-benchmark expression: {text!r}")
    if len(found) > 1:
        raise RVOSError(f"expression {text!r} reads in {len(found)} ways: {found}")
    return found[0]
