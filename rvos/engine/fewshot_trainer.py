"""Episodic training of the few-shot track-grounding model on one fold's base categories.

The stages are the track-grounding trainer's (:mod:`rvos.engine.grounding_trainer`), on the
few-shot pool (``data.fewshot.dataset`` at ``data.root``), whose frozen features are cached
once for every video of the pool:

1. **Segmenter**: the class-agnostic instance segmenter, on the frames of the *base*
   categories' videos only (a novel category's pixels are never a training target).
2. **Scorer and affinity**: each step draws a batch of episodes from the base categories
   (:class:`~rvos.data.fewshot.EpisodeSampler`: a category, a query sample of it, K support
   samples from other videos of it), K drawn once per step in ``[train.fewshot.min_shots,
   data.fewshot.shots]`` so one model serves 1-shot and K-shot evaluation. Every annotated
   object of the query video is a track; the support is the referred object of each
   support sample (from its masks, as the task gives them; the first object of a
   multi-object sentence). In a share ``train.fewshot.category_word_dropout`` of the
   episodes the query sentence's category name is replaced by "object", so that the category
   must come from the support. A cross-entropy over the query's tracks trains the scorer
   and the cross-modal affinity module together.

There is no validation during training: the novel categories are the test, and the base
categories are all training. ``rvos evaluate`` scores a checkpoint on its fold's novel
categories (:mod:`rvos.engine.fewshot_evaluator`).
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from rvos.data.fewshot import (EpisodeSampler, ReferringSample, fold_split, mask_category,
                               referring_samples)
from rvos.data.mini_refvos import open_fewshot_layout
from rvos.data.transforms import swap_left_right
from rvos.engine.grounding_trainer import GroundingTrainer, MetricsLogger
from rvos.errors import RVOSError
from rvos.models.feature_cache import FeatureCache
from rvos.models.grounding.model import pad_tracks
from rvos.models.grounding.objective import grounding_loss
from rvos.models.grounding.tracks import TrackSet


def one_track(tracks: TrackSet, index: int) -> TrackSet:
    """Track ``index`` of ``tracks`` as a one-track set (tokens only)."""
    return TrackSet(tracks.appearance[index:index + 1], tracks.geometry[index:index + 1],
                    tracks.visible[index:index + 1], tracks.area[index:index + 1])


class FewShotTrainer(GroundingTrainer):
    """Trains a ``model.kind: fewshot`` config on fold ``data.fewshot.fold``'s base
    categories into ``run_dir`` (files as the GroundingTrainer's)."""

    KIND = "fewshot"

    def open_layout(self):
        f = self.cfg.data.fewshot
        layout = open_fewshot_layout(f.dataset, self.cfg.data.root)
        self.base, self.novel = fold_split(layout.folds, f.fold)
        self.samples = [s for s in referring_samples(layout) if s.category in self.base]
        if not self.samples:
            raise RVOSError(f"fold {f.fold} of {f.dataset} has no annotated sample of a base "
                            "category to train on (Mini-Ref-SAIL-VOS is evaluation-only: train "
                            "on mini-ytvos or synth)", layout.root)
        present = sorted({s.category for s in self.samples})
        self.sampler = EpisodeSampler(self.samples, present, f.shots)
        self.base_videos = sorted({s.video for s in self.samples})
        layout.verify()          # the cache reads every video of the pool
        return layout

    def stage_module(self, stage: str) -> nn.Module:
        if stage == "scorer" and self.model.affinity is not None:
            return nn.ModuleDict({"scorer": self.model.scorer, "affinity": self.model.affinity})
        return super().stage_module(stage)

    def segmenter_rows(self, cache: FeatureCache) -> np.ndarray:
        spans = [cache.videos[v] for v in self.base_videos]
        return np.concatenate([np.arange(s.start, s.start + s.count) for s in spans])

    def _validate_and_keep_best(self, logger: MetricsLogger) -> None:
        """No validation: every base sample trains, and the novel categories are the test."""

    def _train_scorer(self, cache: FeatureCache, logger: MetricsLogger, budget_s: float) -> None:
        g, shots = self.cfg.train.grounding, self.cfg.data.fewshot.shots
        min_shots = self.cfg.train.fewshot.min_shots
        module = self.stage_module("scorer")
        self._begin_stage("scorer", module)
        t = time.monotonic()
        self.model.eval()
        banks = {False: self.track_bank(cache, False, self.base_videos)}
        if g.flip:
            banks[True] = self.track_bank(cache, True, self.base_videos)
        self.state.timings["track_bank_s"] = time.monotonic() - t
        referred = {s: self._referred(s, banks[False]) for s in self.samples}
        objects = {s: one_track(banks[False][s.video][0], referred[s][0]) for s in self.samples}
        dropout = self.cfg.train.fewshot.category_word_dropout
        masked = {s: mask_category(s.text, s.category) for s in self.samples}
        texts = {s.text for s in self.samples} | (set(masked.values()) if dropout > 0 else set())
        self.encode_sentences(texts | ({swap_left_right(x) for x in texts} if g.flip else set()))
        budget_s = max(1.0, budget_s - (time.monotonic() - t)) if budget_s > 0 else 0.0
        module.train()
        rng = np.random.default_rng([self.cfg.train.seed, 2])
        batch_size = min(g.scorer_batch, len(self.samples))

        def step():
            k = int(rng.integers(min_shots, shots + 1))
            episodes = [self.sampler.training_episode(rng) for _ in range(batch_size)]
            flips = rng.random(batch_size) < 0.5 if g.flip else np.zeros(batch_size, bool)
            hide = rng.random(batch_size) < dropout
            sets, query_texts = [], []
            for e, f, h in zip(episodes, flips, hide):
                sets.append(banks[bool(f)][e.query.video][0])
                text = masked[e.query] if h else e.query.text
                query_texts.append(swap_left_right(text) if f else text)
            batch = pad_tracks(sets)
            target = torch.zeros_like(batch.valid)
            for b, e in enumerate(episodes):
                target[b, referred[e.query]] = True
            support = None          # the baseline ignores it: not built
            if self.model.affinity is not None:
                support = self.model.support_batch(
                    [[objects[s] for s in e.support[:k]] for e in episodes],
                    [[s.text for s in e.support[:k]] for e in episodes], self.device)
            words, padding = self.model.encode_text(query_texts, self.device)
            logits = self.model.score(batch, words, padding, support)
            loss = grounding_loss(logits, target)
            acc = target.gather(1, logits.argmax(-1, keepdim=True)).float().mean()
            self.state.presentations += batch_size
            return loss, {"pick_accuracy": float(acc), "shots": float(k)}

        self._run_stage("scorer", module, g.scorer_lr, g.scorer_steps, budget_s, step, logger)
        self.state.timings["presentations_per_s"] = (
            self.state.presentations / max(self.state.timings.get("scorer_s", 1e-9), 1e-9))

    @staticmethod
    def _referred(sample: ReferringSample, bank) -> list[int]:
        """Indices of the sample's object(s) among its video's tracks."""
        tracks, ids = bank[sample.video]
        found = [k for k, i in enumerate(ids) if i in sample.obj_ids]
        if not found:
            raise RVOSError(f"video {sample.video!r} expression {sample.exp_id!r}: its object "
                            f"{list(sample.obj_ids)} is in no annotated frame")
        return found
