"""Few-shot referring video segmentation data: categories, folds and episodes.

A few-shot dataset is a pool of referring samples (a video, a sentence, its object) whose
objects have semantic categories. Its categories are split into folds ("groups"): in fold
``g`` the categories of group ``g`` are *novel* (evaluated only, each from a support set of
K annotated samples) and all others are *base* (training). This is the protocol of the CMA
paper (Li et al., ICCV 2023) and its Mini-Ref-YouTube-VOS split: 48 categories in 4 groups
of 12, category ``k`` (1-based) in group ``(k - 1) % 4 + 1``.

An :class:`Episode` is one query sample and K support samples of the query's category, from
other videos. Training episodes are drawn from base categories (class first, then query,
then supports, as the official sampler does); evaluation episodes cover every sample of
each novel category once, against a support set drawn once per category and draw (the
official test fixes one support per class), so a draw is a complete pass over the fold.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from rvos.data.ytvos import RefYTVOSLayout
from rvos.errors import RVOSError

# The four category groups of Mini-Ref-YouTube-VOS, as the official CMA code splits them
# (hengliusky/Few_shot_RVOS, datasets/categories.py: group g holds the categories whose
# 1-based id k has (k - 1) % 4 == g - 1).
MINI_YTVOS_FOLDS: tuple[tuple[str, ...], ...] = (
    ("hat", "raccoon", "crocodile", "hedgehog", "elephant", "shark", "cat", "bear", "fox",
     "sedan", "rabbit", "parrot"),
    ("plant", "squirrel", "penguin", "lion", "mouse", "giraffe", "dolphin", "zebra", "turtle",
     "sheep", "duck", "lizard"),
    ("hand", "bus", "motorbike", "earless_seal", "snail", "tiger", "cow", "airplane", "deer",
     "fish", "snake", "giant_panda"),
    ("horse", "boat", "truck", "whale", "camel", "frog", "dog", "leopard", "train", "bird",
     "monkey", "person"),
)
# Mini-Ref-SAIL-VOS: three categories, all novel (evaluated with a Mini-Ref-YouTube-VOS
# fold's model).
MINI_SAILVOS_CATEGORIES: tuple[str, ...] = ("dog", "car", "person")


def folds_by_rule(categories: list[str] | tuple[str, ...], num_folds: int) -> tuple[tuple[str, ...], ...]:
    """Categories in id order (1-based) -> ``num_folds`` groups by the official rule:
    category k goes to group (k - 1) % num_folds + 1."""
    if num_folds < 1:
        raise RVOSError(f"number of folds must be >= 1, got {num_folds}")
    return tuple(tuple(c for k, c in enumerate(categories) if k % num_folds == g)
                 for g in range(num_folds))


def fold_split(folds: tuple[tuple[str, ...], ...], fold: int) -> tuple[list[str], list[str]]:
    """(base, novel) categories of fold ``fold`` (1-based): novel = group ``fold``, base = the
    other groups."""
    if not 1 <= fold <= len(folds):
        raise RVOSError(f"fold must lie in 1..{len(folds)}, got {fold}")
    novel = list(folds[fold - 1])
    base = [c for g, group in enumerate(folds) if g != fold - 1 for c in group]
    return base, novel


def mask_category(text: str, category: str, generic: str = "object") -> str:
    """``text`` with the category's name (whole words, a plural "s" included, any case;
    underscores in the name read as spaces) replaced by ``generic``: "the red hexagon on the
    left" -> "the red object on the left". Episodic training uses it so that a query's
    category must come from the support, as a novel category's (unseen) name must at test."""
    name = r"\s+".join(map(re.escape, category.replace("_", " ").split()))
    if not name:
        return text
    return re.sub(rf"\b{name}(s?)\b", lambda m: generic + m.group(1), text, flags=re.IGNORECASE)


@dataclass(frozen=True)
class ReferringSample:
    """One sentence of a video and the object(s) it refers to, with their category."""

    video: str
    exp_id: str
    text: str
    obj_ids: tuple[int, ...]
    category: str


@dataclass(frozen=True)
class Episode:
    """A query sample and its K support samples (same category, other videos)."""

    query: ReferringSample
    support: tuple[ReferringSample, ...]


def referring_samples(layout: RefYTVOSLayout) -> list[ReferringSample]:
    """Every annotated expression of ``layout`` with the category of its (first) object from
    the layout's object file (``layout.objects_path``: meta.json, or train.json in
    Mini-Ref-YouTube-VOS); RVOSError naming that file when an object has no category."""
    out = []
    meta = getattr(layout, "objects_path", layout.split_dir / "meta.json")
    for video, record in layout.videos.items():
        objects = layout.objects.get(video, {})
        for exp in record.expressions.values():
            if not exp.obj_ids:
                continue
            category = objects.get(exp.obj_ids[0], {}).get("category")
            if not isinstance(category, str) or not category:
                if meta is None:
                    raise RVOSError("not found; few-shot episodes group samples by the categories "
                                    "of their objects", layout.split_dir / "meta.json")
                raise RVOSError(f"video {video!r} object {exp.obj_ids[0]}: no category (few-shot "
                                "episodes group samples by category)", meta)
            out.append(ReferringSample(video, exp.exp_id, exp.text, tuple(exp.obj_ids), category))
    return out


def _expression_order(sample: ReferringSample) -> tuple:
    """Samples of one video in expression-id order (numeric ids by value, as layouts list
    them)."""
    exp_id = sample.exp_id
    id_key = (0, int(exp_id), "") if exp_id.isdigit() else (1, 0, exp_id)
    return (id_key, sample.obj_ids, sample.text, sample.category)


class EpisodeSampler:
    """Episodes of ``shots`` support samples over the given categories of ``samples``.

    Support samples come from ``shots`` distinct videos other than the query's; a category
    with fewer than ``shots + 1`` videos cannot make an episode (RVOSError naming it).
    """

    def __init__(self, samples: list[ReferringSample], categories: list[str], shots: int):
        if shots < 1:
            raise RVOSError(f"shots must be >= 1, got {shots}")
        self.shots = shots
        self.categories = list(categories)
        by_category: dict[str, dict[str, list[ReferringSample]]] = defaultdict(lambda: defaultdict(list))
        for s in samples:
            if s.category in self.categories:
                by_category[s.category][s.video].append(s)
        for c in self.categories:
            n = len(by_category.get(c, {}))
            if n < shots + 1:
                raise RVOSError(f"category {c!r} has {n} annotated video(s); a {shots}-shot "
                                f"episode needs {shots + 1} (one query and {shots} supports)")
        # videos sorted by name and their samples by expression id: episodes depend on the
        # seed only, not on the order the samples were read in
        self.videos = {c: {v: sorted(by_category[c][v], key=_expression_order)
                           for v in sorted(by_category[c])}
                       for c in self.categories}

    def _support(self, category: str, exclude: str, rng: np.random.Generator) -> tuple[ReferringSample, ...]:
        videos = [v for v in self.videos[category] if v != exclude]
        picks = rng.choice(len(videos), self.shots, replace=False)
        out = []
        for i in picks:
            samples = self.videos[category][videos[i]]
            out.append(samples[int(rng.integers(len(samples)))])
        return tuple(out)

    def training_episode(self, rng: np.random.Generator) -> Episode:
        """A category uniformly at random, a query sample of it, supports from other videos."""
        category = self.categories[int(rng.integers(len(self.categories)))]
        videos = list(self.videos[category])
        video = videos[int(rng.integers(len(videos)))]
        samples = self.videos[category][video]
        query = samples[int(rng.integers(len(samples)))]
        return Episode(query, self._support(category, video, rng))

    def evaluation_episodes(self, seed: int, draw: int = 0) -> list[Episode]:
        """Draw ``draw`` of the evaluation: per category a support set drawn once (from
        (seed, draw, category index)), and every sample of the category's other videos as a
        query against it."""
        episodes = []
        for k, category in enumerate(self.categories):
            rng = np.random.default_rng([seed, draw, k])
            support = self._support(category, "", rng)
            used = {s.video for s in support}
            for video, samples in self.videos[category].items():
                if video not in used:
                    episodes += [Episode(q, support) for q in samples]
        return episodes
