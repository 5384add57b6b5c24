"""Scoring a few-shot model on a fold's novel categories.

Episodes (:meth:`rvos.data.fewshot.EpisodeSampler.evaluation_episodes`): per novel category
and draw, one support set of K samples from K videos, and every sample of the category's
other videos as a query against it. The model segments every frame of the query video
(its own tracks from its own segmenter); the support enters as the task gives it, the
referred object's masks.

Figures, per fold: J and F as the official CMA evaluation computes them, the mean over all
frames of all queries of the fold (frames pooled, not videos), J&F = (J + F) / 2; beside
them the mean over queries of each query's J&F (the protocol of rvos's other benchmarks),
the object accuracy (the referred object holds the most predicted pixels), and the same per
category and per expression type. Masks are scored at the model's input size
(``data.input_size``; the official evaluation scores at short side 360).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from rvos.data.fewshot import Episode, EpisodeSampler, fold_split, referring_samples
from rvos.data.transforms import preprocess_frames, resize_masks
from rvos.engine.evaluator import object_hit
from rvos.metrics.davis import jaccard_and_f
from rvos.models.fewshot.model import FewShotGroundingModel
from rvos.models.grounding.model import pad_tracks
from rvos.models.grounding.tracks import TrackSet, track_set

EPISODES_PER_BATCH = 64


@dataclass
class QueryScore:
    """One evaluation episode's result: per-frame J and F summed, and their means."""

    video: str
    exp_id: str
    category: str
    exp_type: str
    frames: int
    j_sum: float
    f_sum: float
    object_hit: float

    @property
    def jf(self) -> float:
        return (self.j_sum + self.f_sum) / (2 * self.frames)


def summarize(rows: list[QueryScore]) -> dict:
    """Frame-pooled J, F, J&F (official), the mean per-query J&F, object accuracy, count."""
    if not rows:
        return {"J": math.nan, "F": math.nan, "JF": math.nan, "query_JF": math.nan,
                "object_accuracy": math.nan, "queries": 0, "frames": 0}
    frames = sum(r.frames for r in rows)
    j = sum(r.j_sum for r in rows) / frames
    f = sum(r.f_sum for r in rows) / frames
    hits = [r.object_hit for r in rows if not math.isnan(r.object_hit)]
    return {"J": j, "F": f, "JF": (j + f) / 2, "query_JF": float(np.mean([r.jf for r in rows])),
            "object_accuracy": float(np.mean(hits)) if hits else math.nan,
            "queries": len(rows), "frames": frames}


class VideoMemo:
    """Per video of the layout, at the model's input size: normalised frames (T, 3, h, w),
    object-id labels (T, h, w) uint8 and the frozen maps, and the model's own tracks,
    computed once; one memo serves several evaluations of the same model (shot counts)."""

    def __init__(self, model: FewShotGroundingModel, layout, input_size: tuple[int, int],
                 device: torch.device, max_videos: int = 256):
        self.model, self.layout, self.size, self.device = model, layout, input_size, device
        self.max_videos = max_videos
        self.kept: dict[str, tuple] = {}
        self.kept_tracks: dict[str, TrackSet] = {}

    def __call__(self, video: str) -> tuple:
        if video not in self.kept:
            if len(self.kept) >= self.max_videos:       # bounded memory over long folds
                self.clear()
            frames, labels = self.layout.load_clip(video, self.layout.videos[video].frames)
            rgb = preprocess_frames(frames, self.size, self.device)
            small = resize_masks(labels, self.size).numpy()
            self.kept[video] = (rgb, small, self.model.features(rgb))
        return self.kept[video]

    def tracks(self, video: str) -> TrackSet:
        """The model's tracks of ``video`` (its segmenter, then linking)."""
        if video not in self.kept_tracks:
            rgb, _, maps = self(video)
            self.kept_tracks[video] = self.model.find_tracks(maps, rgb, self.model.segmenter(maps, rgb))
        return self.kept_tracks[video]

    def clear(self) -> None:
        self.kept.clear()
        self.kept_tracks.clear()


@torch.no_grad()
def evaluate_fold(model: FewShotGroundingModel, layout, fold: int, shots: int, draws: int = 1,
                  seed: int = 0, input_size: tuple[int, int] = (128, 128),
                  device: torch.device | str = "cpu", progress: bool = True,
                  support: str = "same", memo: VideoMemo | None = None) -> dict:
    """Score ``model`` on fold ``fold``'s novel categories of ``layout`` with ``shots``-shot
    episodes, ``draws`` support sets per category -> {"fold", "shots", "draws", "support",
    "overall", "by_category", "by_type"} (each a :func:`summarize`).

    ``support``: "same" (the task), or for diagnostics "none" (withheld) or "other" (each
    category's queries get the support set of the fold's next novel category: a model that
    reads its support must lose accuracy). ``memo``: a :class:`VideoMemo` of this model
    and layout kept from an earlier call."""
    if support not in ("same", "none", "other"):
        raise ValueError(f"support must be same, none or other, got {support!r}")
    device = torch.device(device)
    model = model.to(device).eval()
    _, novel = fold_split(layout.folds, fold)
    samples = referring_samples(layout)
    sampler = EpisodeSampler(samples, [c for c in novel if any(s.category == c for s in samples)], shots)
    videos = memo or VideoMemo(model, layout, tuple(input_size), device)
    rows: list[QueryScore] = []
    episodes = []
    for d in range(draws):
        draw = sampler.evaluation_episodes(seed, d)
        episodes += _swap_supports(draw, sampler.categories) if support == "other" else draw
    bar = tqdm(total=len(episodes), desc=f"fold {fold} {shots}-shot", unit="query", disable=not progress)
    for support_set, group in _by_support(episodes):
        sup = None
        if support != "none":
            objects = []
            for s in support_set:
                rgb, labels, maps = videos(s.video)
                mask = torch.from_numpy(np.isin(labels, s.obj_ids)).to(device)
                objects.append(track_set(maps, rgb, mask[None]).without_masks())
            sup = model.support_batch([objects], [[s.text for s in support_set]], device)
        for i in range(0, len(group), EPISODES_PER_BATCH):
            chunk = group[i:i + EPISODES_PER_BATCH]
            sets = [videos.tracks(e.query.video) for e in chunk]
            words, padding = model.encode_text([e.query.text for e in chunk], device)
            batch = pad_tracks(sets)
            logits = model.score(batch, words, padding,
                                 None if sup is None else sup.expand(len(chunk)))
            picks = logits.argmax(-1).tolist()
            for e, s, pick in zip(chunk, sets, picks):
                rows.append(_score(e, s, pick, videos(e.query.video)[1], layout))
            bar.update(len(chunk))
    bar.close()
    by_category, by_type = defaultdict(list), defaultdict(list)
    for r in rows:
        by_category[r.category].append(r)
        by_type[r.exp_type or "all"].append(r)
    return {"fold": fold, "shots": shots, "draws": draws, "support": support,
            "overall": summarize(rows),
            "by_category": {k: summarize(v) for k, v in sorted(by_category.items())},
            "by_type": {k: summarize(v) for k, v in sorted(by_type.items())}}


def _swap_supports(episodes: list[Episode], categories: list[str]) -> list[Episode]:
    """One draw's episodes, each with the support set the draw gave the next category in
    ``categories``."""
    if len(categories) < 2:
        raise ValueError("support='other' needs two novel categories")
    supports: dict[str, tuple] = {}
    for e in episodes:
        supports.setdefault(e.query.category, e.support)
    nxt = {c: categories[(i + 1) % len(categories)] for i, c in enumerate(categories)}
    return [Episode(e.query, supports[nxt[e.query.category]]) for e in episodes]


def _by_support(episodes: list[Episode]) -> list[tuple[tuple, list[Episode]]]:
    """Episodes grouped by their support set, in first-seen order."""
    groups: dict[tuple, list[Episode]] = {}
    for e in episodes:
        groups.setdefault(e.support, []).append(e)
    return list(groups.items())


def _score(episode: Episode, tracks: TrackSet, pick: int, labels: np.ndarray, layout) -> QueryScore:
    q = episode.query
    gt = np.isin(labels, q.obj_ids)
    if len(tracks):
        pred = tracks.masks[pick].cpu().numpy()
    else:
        pred = np.zeros_like(gt)
    j, f = jaccard_and_f(gt, pred)
    exp_type = layout.videos[q.video].expressions[q.exp_id].exp_type
    return QueryScore(q.video, q.exp_id, q.category, exp_type, len(j), float(j.sum()),
                      float(f.sum()), object_hit(labels, pred, list(q.obj_ids)))


def format_fewshot_table(results: list[dict]) -> str:
    """One row per (fold, shots) result and per novel category: J, F, J&F (frame-pooled),
    the mean per-query J&F and the object accuracy."""
    header = (f"{'fold':>4} {'shots':>5} {'category':<14}{'J':>7}{'F':>7}{'J&F':>7}"
              f"{'query J&F':>11}{'obj':>6}{'queries':>9}")
    lines = [header, "-" * len(header)]
    for r in results:
        rows = [("all", r["overall"])] + list(r["by_category"].items())
        for name, d in rows:
            lines.append(f"{r['fold']:>4} {r['shots']:>5} {name:<14}{d['J']:>7.3f}{d['F']:>7.3f}"
                         f"{d['JF']:>7.3f}{d['query_JF']:>11.3f}{d['object_accuracy']:>6.2f}"
                         f"{d['queries']:>9}")
    return "\n".join(lines)
