"""Finding expressions that single out exactly one object, and choosing a balanced set."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from itertools import combinations

import numpy as np

from rvos.data.synthetic.config import EXPRESSION_TYPES
from rvos.data.synthetic.language import (MOTION_TEMPLATES, RELATIONAL_TEMPLATES,
                                          SPATIAL_TEMPLATES, TEMPORAL_TEMPLATES, describe,
                                          query_kind)
from rvos.data.synthetic.predicates import NO, YES, SceneView, evaluate_query

_KEYS = ("size", "color", "shape")
# every subset of the attributes, as the keys a noun phrase names
_SUBSETS = [keys for n in range(4) for keys in combinations(_KEYS, n)]
_MAX_EVALUATIONS = 80   # per expression type and scene: enough to find one if it exists


@dataclass
class Expression:
    obj_id: int
    query: dict
    text: str

    @property
    def type(self) -> str:
        return self.query["type"]


def _np_of(attrs: dict, keys: tuple[str, ...]) -> dict:
    return {k: attrs[k] for k in keys}


def is_unambiguous(view: SceneView, query: dict, obj_id: int) -> bool:
    """Exactly ``obj_id`` satisfies the query, and every other object clearly does not."""
    status = evaluate_query(view, query)
    return status[obj_id] == YES and all(s == NO for i, s in status.items() if i != obj_id)


class CandidateFinder:
    """Proposes queries for one scene and keeps those that are provably unambiguous.

    referents: indices of objects that may be referred to (seen in most frames, and in
    test_compositional of a held-out colour-shape pair). ``must_name``: attribute keys the
    noun phrase must contain (colour and shape in test_compositional).
    """

    def __init__(self, view: SceneView, referents: list[int], must_name: tuple[str, ...],
                 rng: np.random.Generator):
        self.view, self.referents, self.rng = view, referents, rng
        self.subsets = [k for k in _SUBSETS if set(must_name) <= set(k)]
        n = len(view)
        self.match = {(i, keys): view.matches(_np_of(view.attrs[i], keys))
                      for i in range(n) for keys in _SUBSETS}
        t_len = view.seen.shape[1]
        self.mostly_seen = view.seen.sum(axis=1) >= 0.5 * t_len
        self.lookalike = np.array([[i != j and view.attrs[i] == view.attrs[j] for j in range(n)]
                                   for i in range(n)], dtype=bool).reshape(n, n)
        self._cache: dict[str, list[tuple[int, dict]]] = {}

    def _proposals(self, kind: str) -> list[tuple[int, dict]]:
        view, out = self.view, []
        for i in self.referents:
            for keys in self.subsets:
                match = self.match[(i, keys)]
                target = _np_of(view.attrs[i], keys)
                if kind == "attribute":
                    if keys and match.sum() == 1:
                        out.append((i, {"type": kind, "target": target}))
                    continue
                others = match.copy()
                others[i] = False
                if not (others & self.mostly_seen).any():
                    continue   # the words alone would already single it out
                if kind == "spatial":
                    out += [(i, {"type": kind, "target": target, "direction": d})
                            for d in SPATIAL_TEMPLATES]
                elif kind == "relational":
                    for a in range(len(view)):
                        anchor_keys = [k for k in _SUBSETS if k and a != i
                                       and self.match[(a, k)].sum() == 1]
                        if not anchor_keys:
                            continue
                        anchor = _np_of(view.attrs[a], anchor_keys[int(self.rng.integers(len(anchor_keys)))])
                        out += [(i, {"type": kind, "target": target, "relation": r, "anchor": anchor})
                                for r in RELATIONAL_TEMPLATES]
                elif (others & self.lookalike[i] & self.mostly_seen).any():
                    # motion / temporal: a look-alike that only its motion tells apart
                    table, key = ((MOTION_TEMPLATES, "motion") if kind == "motion"
                                  else (TEMPORAL_TEMPLATES, "event"))
                    out += [(i, {"type": kind, "target": target, key: p}) for p in table]
        return out

    def find(self, kind: str, chosen: list[Expression], usage: Counter) -> Expression | None:
        """One unambiguous expression of type ``kind`` that says something new, preferring
        objects no chosen expression refers to yet, then the parameters ("left", "still",
        ...) least used so far (``usage``: expressions per :func:`query_kind`); None if
        there is none."""
        if kind not in self._cache:
            self._cache[kind] = self._proposals(kind)
        proposals = self._cache[kind]
        used_ids = {e.obj_id for e in chosen}
        used_queries = [e.query for e in chosen]
        tiebreak = self.rng.random(len(proposals))
        order = sorted(range(len(proposals)), key=lambda j: (
            self.view.ids[proposals[j][0]] in used_ids, usage[query_kind(proposals[j][1])],
            tiebreak[j]))
        for j in order[:_MAX_EVALUATIONS]:
            i, query = proposals[j]
            obj_id = self.view.ids[i]
            if query in used_queries:
                continue
            if kind == "attribute" or is_unambiguous(self.view, query, obj_id):
                text = describe(query, self.rng)
                if all(text != e.text for e in chosen):
                    return Expression(obj_id, query, text)
        return None


def choose_expressions(finder: CandidateFinder, type_order: list[str], count: int,
                       usage: Counter) -> list[Expression]:
    """Up to ``count`` expressions, one per type in ``type_order`` (most wanted first), then
    more rounds over the types that still have candidates; ``usage`` counts the split's
    expressions so far per :func:`query_kind`, to balance the parameters too."""
    chosen: list[Expression] = []
    exhausted: set[str] = set()
    while len(chosen) < count and len(exhausted) < len(type_order):
        for kind in type_order:
            if len(chosen) >= count:
                break
            if kind in exhausted:
                continue
            found = finder.find(kind, chosen, usage + Counter(query_kind(e.query) for e in chosen))
            if found is not None:
                chosen.append(found)
            else:
                exhausted.add(kind)
    return chosen


def type_order_by_need(usage: Counter, rng: np.random.Generator) -> list[str]:
    """Expression types, least used so far first (ties in random order)."""
    counts = Counter()
    for kind, n in usage.items():
        counts[kind.split("/")[0]] += n
    tiebreak = rng.random(len(EXPRESSION_TYPES))
    return sorted(EXPRESSION_TYPES, key=lambda k: (counts[k], tiebreak[EXPRESSION_TYPES.index(k)]))
