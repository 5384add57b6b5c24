"""Configuration and vocabulary of the synthetic referring-video benchmark."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rvos.errors import RVOSError

GENERATOR_VERSION = "1.1"   # 1.1: expressions balanced per chunk of videos (parallel generation)

SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross", "hexagon", "heart")

# Saturated, clearly distinct object colours (RGB); backgrounds use muted colours only.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (222, 36, 36),
    "green": (34, 168, 60),
    "blue": (38, 86, 226),
    "yellow": (246, 214, 36),
    "purple": (150, 56, 204),
    "orange": (250, 138, 20),
    "white": (246, 246, 246),
    "black": (20, 20, 20),
}

# Object diameter ranges in pixels at 128 x 128; scaled by min(height, width) / 128.
SIZES: dict[str, tuple[int, int]] = {"small": (10, 14), "medium": (18, 22), "large": (28, 34)}

SPLITS = ("train", "valid", "test", "test_compositional")
EXPRESSION_TYPES = ("attribute", "spatial", "relational", "motion", "temporal")

# Few-shot folds (the CMA rule, ICCV 2023): the categories are the shapes, ids 1-based in
# SHAPES order, and group g (1..4) holds every category k with (k - 1) % 4 == g - 1.
NUM_FEWSHOT_FOLDS = 4
FEWSHOT_FOLDS: tuple[tuple[str, ...], ...] = tuple(
    tuple(shape for k, shape in enumerate(SHAPES, start=1) if (k - 1) % NUM_FEWSHOT_FOLDS == g - 1)
    for g in range(1, NUM_FEWSHOT_FOLDS + 1))
# Random stream id of few-shot videos: distinct from every SPLITS.index value.
FEWSHOT_STREAM = 100


@dataclass
class SynthConfig:
    """How much synthetic data to generate, and how it looks.

    Every video is drawn from its own random stream seeded by (seed, split, index), so the
    same config always gives byte-identical files.
    """

    train_videos: int = 200
    valid_videos: int = 20
    test_videos: int = 40
    compositional_videos: int = 40    # split "test_compositional": held-out colour-shape pairs
    num_frames: int = 12
    height: int = 128
    width: int = 128
    min_objects: int = 2
    max_objects: int = 6
    expressions_per_video: int = 4
    heldout_pairs: int = 8            # colour-shape pairs that only test_compositional shows
    seed: int = 0
    jpeg_quality: int = 90
    min_referent_visible: float = 0.6  # share of frames where a referred object is clearly seen
    spatial_margin: float = 0.06      # spatial relations must hold by this share of width/height

    def videos_per_split(self) -> dict[str, int]:
        return {"train": self.train_videos, "valid": self.valid_videos,
                "test": self.test_videos, "test_compositional": self.compositional_videos}

    @property
    def scale(self) -> float:
        """Resolution factor relative to the 128 x 128 reference."""
        return min(self.height, self.width) / 128.0

    def validate(self) -> None:
        """Raise :class:`RVOSError` naming the first field with an unusable value."""
        def bad(field: str, why: str) -> RVOSError:
            return RVOSError(f"SynthConfig.{field}={getattr(self, field)!r}: {why}")

        for name, n in self.videos_per_split().items():
            if n < 0:
                raise bad(f"{'compositional' if name == 'test_compositional' else name}_videos",
                          "must be >= 0")
        if not 5 <= self.num_frames <= 48:
            raise bad("num_frames", "must lie in [5, 48] (motion events need frames before "
                      "and after them)")
        for name in ("height", "width"):
            if not 32 <= getattr(self, name) <= 1024:
                raise bad(name, "must lie in [32, 1024] (below 128 the objects shrink with it)")
        if max(self.height, self.width) > 2 * min(self.height, self.width):
            raise bad("width", "aspect ratio must be at most 2:1")
        if not 2 <= self.min_objects <= self.max_objects:
            raise bad("min_objects", "need 2 <= min_objects <= max_objects")
        if self.max_objects > 10:
            raise bad("max_objects", "at most 10 objects fit a frame")
        if self.expressions_per_video < 1:
            raise bad("expressions_per_video", "must be >= 1")
        if not 1 <= self.heldout_pairs <= min(len(SHAPES), len(COLORS)):
            raise bad("heldout_pairs", f"must lie in [1, {min(len(SHAPES), len(COLORS))}]")
        if not 1 <= self.jpeg_quality <= 100:
            raise bad("jpeg_quality", "must lie in [1, 100]")
        if not 0.5 <= self.min_referent_visible <= 1.0:
            raise bad("min_referent_visible", "must lie in [0.5, 1] (visible in most frames)")
        if not 0.0 < self.spatial_margin < 0.3:
            raise bad("spatial_margin", "must lie in (0, 0.3)")


def heldout_color_shape_pairs(seed: int, count: int) -> list[tuple[str, str]]:
    """The (colour, shape) pairs reserved for ``test_compositional``, fixed by the seed.

    Each shape and each colour is held out at most once, so every shape and every colour
    still occurs in training with other partners.
    """
    rng = np.random.default_rng([seed, 7919])
    shapes = rng.permutation(len(SHAPES))[:count]
    colors = rng.permutation(len(COLORS))[:count]
    names = list(COLORS)
    return sorted((names[c], SHAPES[s]) for s, c in zip(shapes, colors))


def fewshot_group(category: str) -> tuple[str, ...]:
    """The fold group (of :data:`FEWSHOT_FOLDS`) that the shape ``category`` belongs to."""
    for group in FEWSHOT_FOLDS:
        if category in group:
            return group
    raise RVOSError(f"category={category!r}: not a shape of the synthetic benchmark "
                    f"(one of {', '.join(SHAPES)})")


def fewshot_fold_categories(fold: int) -> tuple[list[str], list[str]]:
    """(base, novel) categories of few-shot fold ``fold`` (1..4): its own group is novel
    (test), the other groups are base (training); both in SHAPES order."""
    if isinstance(fold, bool) or not isinstance(fold, int) or not 1 <= fold <= NUM_FEWSHOT_FOLDS:
        raise RVOSError(f"fold={fold!r}: few-shot folds are 1..{NUM_FEWSHOT_FOLDS}")
    novel = FEWSHOT_FOLDS[fold - 1]
    return [s for s in SHAPES if s not in novel], [s for s in SHAPES if s in novel]
