"""Training the track-grounding model on cached frozen features: the cache, then two stages.

1. **Feature cache.** The frozen backbone runs once over every training frame (and its
   mirror image when ``train.grounding.flip``); the maps are memory-mapped from disk
   (``rvos.models.feature_cache``).
2. **Segmenter.** Batches of cached frames train the class-agnostic instance segmenter
   (foreground, centre heatmap, offsets) against the annotated object masks.
3. **Scorer.** Every annotated object of a training video becomes a track (tokens pooled
   from the cached maps over its masks; ``scorer_tracks=predicted`` uses the segmenter's
   own tracks instead, matched to the annotations by IoU). Batches of sentences, each with
   all the tracks of its video, train the scorer with a cross-entropy over the tracks. A
   step costs a few milliseconds per sentence, so one run presents each sentence many
   times.

``train.time_budget_s`` counts from the start, cache included: the segmenter gets
``seg_budget_share`` of what the cache leaves, the scorer the rest. Each stage ends at its
step count or its time, whichever comes first, and its cosine learning rate follows that
progress, so it reaches its end either way. After the
scorer, the whole model is validated through the Predictor (``best`` by J&F) and ``last``
is written.

``--resume`` skips the stages a checkpoint records as done and redoes a stage that was
stopped from its beginning: a checkpoint written at a stop holds the weights at the stop
(usable as they are) and, as its training state, the stopped stage's weights and step count
at the stage's start. Each stage draws from generators seeded by (seed, stage), so with
step-bounded stages (``train.time_budget_s: 0``) a resumed run reaches bit-identical
weights to an uninterrupted one. A time budget makes the stage lengths and learning-rate
schedules depend on the clock: such a run resumes at stage level only.
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from rvos.config import RULES, Config, save_config, validate_config
from rvos.data.transforms import normalize, swap_left_right
from rvos.engine.checkpoint import (checkpoint_file, load_checkpoint, load_weights_into,
                                    save_checkpoint)
from rvos.engine import distributed
from rvos.engine.trainer import (MetricsLogger, StopOnSignal, TrainingStopped,
                                 initial_weights, open_training_split, plot_run_curves,
                                 seed_everything, validation_figures, validation_summary)
from rvos.errors import RVOSError
from rvos.inference import resolve_device
from rvos.models.build import build_model
from rvos.models.feature_cache import FeatureCache, open_or_build
from rvos.models.grounding.config import GroundingTrainConfig
from rvos.models.grounding.model import pad_tracks
from rvos.models.grounding.objective import (SEGMENTER_WEIGHTS, grounding_loss, segmenter_loss,
                                             segmenter_targets)
from rvos.models.grounding.tracks import TrackSet, track_set
from rvos.precision import autocast_dtype, backbone_dtype

STAGES = ("segmenter", "scorer")


@dataclass
class GroundingState:
    """Where training stands; saved with every checkpoint."""

    done: list[str] = field(default_factory=list)      # completed stages
    global_step: int = 0                               # optimizer steps over all stages
    best_jf: float = -math.inf
    history: list[dict] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    presentations: int = 0                             # sentence-clip pairs the scorer saw

    @property
    def epoch(self) -> int:
        return len(self.done)


def validate_stages(g: GroundingTrainConfig) -> None:
    """RVOSError naming the ``train.grounding`` key that cannot work (the rules of
    ``rvos.config.RULES``, which ``load_config`` applies to every key)."""
    for key, rule in RULES.items():
        if key.startswith("train.grounding."):
            value = getattr(g, key.rsplit(".", 1)[1])
            why = rule(value)
            if why:
                raise RVOSError(f"invalid config: {key}: {why}, got {value!r}")


@dataclass
class Expression:
    """A training sentence: its video, text and the indices of its referred tracks."""

    video: str
    text: str
    referred: list[int]


class GroundingTrainer(StopOnSignal):
    """Trains a ``model.kind: grounding`` config into ``run_dir`` (files as the Trainer's:
    config.yaml, metrics.csv, tensorboard/, curves.png, checkpoints/{last,best}.*; plus
    feature_cache/ unless ``train.grounding.cache_dir`` names another folder).
    ``pretrained=False``: as the Trainer's (for a :meth:`resume`, which must then come
    before :meth:`fit`, since the cache is keyed by the backbone's weights)."""

    KIND = "grounding"

    def __init__(self, cfg: Config, run_dir: str | Path | None = None, progress: bool = True,
                 pretrained: bool = True):
        if cfg.model.kind != self.KIND:
            raise RVOSError(f"{type(self).__name__} trains model.kind={self.KIND}, "
                            f"not {cfg.model.kind!r}")
        distributed.refuse(f"model.kind {self.KIND} trains")
        validate_config(cfg)
        self.cfg = cfg
        self.run_dir = Path(run_dir or cfg.train.out_dir)
        self.progress = progress
        self.device = resolve_device(cfg.train.device)
        seed_everything(cfg.train.seed)
        self.model = build_model(cfg, pretrained)
        self.model.to(self.device)
        self.layout = self.open_layout()
        g = cfg.train.grounding
        self.cache_root = Path(g.cache_dir) if g.cache_dir else self.run_dir / "feature_cache"
        # optim.amp: the segmenter stage under bfloat16 autocast where the device computes it
        # natively (no loss scaling needed), else in float32
        self.amp_dtype = autocast_dtype(self.device, "auto")
        self.use_amp = cfg.optim.amp and self.amp_dtype == torch.bfloat16
        self.state = GroundingState()
        self._stage_start: dict | None = None     # set while a stage runs or after its stop
        self.init_record: dict | None = None      # the --init-from source, kept in every checkpoint

    def open_layout(self):
        """The training split, verified (every file it lists exists)."""
        return open_training_split(self.cfg)

    def stage_module(self, stage: str) -> torch.nn.Module:
        """The module training stage ``stage`` trains (its weights are what a stop keeps)."""
        return getattr(self.model, stage)

    def segmenter_rows(self, cache: FeatureCache) -> np.ndarray:
        """The cache rows (frames) the segmenter trains on: all of them."""
        return np.arange(len(cache))

    # ------------------------------------------------------------------ checkpoints
    def save(self, name: str, extra_meta: dict | None = None) -> Path:
        """Write checkpoint ``name``; after a stop mid-stage it carries that stage's start
        (``self._stage_start``) as its training state."""
        s = self.state
        meta = {"epoch": s.epoch, "step": s.global_step, "done": s.done, "best_jf": s.best_jf,
                "history": s.history, "timings": s.timings, "presentations": s.presentations,
                **(extra_meta or {})}
        if self.init_record is not None:
            meta["init_from"] = self.init_record
        return save_checkpoint(self.run_dir / "checkpoints" / name, self.model, self.cfg, meta,
                               self._stage_start)

    def init_from(self, path: str | Path) -> None:
        """Start this new run from the weights of checkpoint ``path`` (a run of the same
        architecture); every stage then trains from them. Call before :meth:`fit` (the
        feature cache is keyed by the backbone's weights)."""
        if self.state.done or self.state.global_step:
            raise RVOSError("--init-from applies to a new run, not one that has taken steps", path)
        self.init_record = initial_weights(self.model, path, self.cfg)

    def resume(self, path: str | Path | None = None) -> None:
        """Restore weights and the completed stages (default: checkpoints/last); a stage
        stopped mid-way gets back the weights and step count of its start, so it is redone
        exactly."""
        path = checkpoint_file(path or self.run_dir / "checkpoints" / "last")
        ckpt = load_checkpoint(path, with_training_state=True, require_training_state=False)
        load_weights_into(self.model, ckpt, path, expected=self.cfg)
        m = ckpt.meta
        self.state = GroundingState(done=[s for s in m.get("done", []) if s in STAGES],
                                    global_step=int(m.get("step", 0)),
                                    best_jf=float(m.get("best_jf", -math.inf)),
                                    history=list(m.get("history", [])),
                                    timings=dict(m.get("timings", {})),
                                    presentations=int(m.get("presentations", 0)))
        self.init_record = m.get("init_from")
        start = ckpt.training_state
        if start and start.get("stage") in STAGES and start["stage"] not in self.state.done:
            self.stage_module(start["stage"]).load_state_dict(start["weights"])
            self.state.global_step = int(start["global_step"])
            self.state.presentations = int(start["presentations"])

    # ------------------------------------------------------------------ the run
    def fit(self) -> GroundingState:
        """Run the stages not yet done, validate, save ``last``; raises
        :class:`TrainingStopped` (after the checkpoint) when SIGINT/SIGTERM stopped a stage."""
        cfg, g = self.cfg, self.cfg.train.grounding
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.run_dir / "config.yaml")
        logger = MetricsLogger(self.run_dir)
        logger.truncate_after(self.state.global_step)
        previous = {s: signal.signal(s, self._request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        self.started = time.monotonic()
        try:
            t = time.monotonic()
            cache = self.open_cache()
            self.state.timings["cache_s"] = time.monotonic() - t
            if "segmenter" not in self.state.done and not self._stop_requested:
                self._train_segmenter(cache, logger, self._time_left("segmenter") * g.seg_budget_share)
            if "scorer" not in self.state.done and not self._stop_requested:
                self._train_scorer(cache, logger, self._time_left("scorer"))
            if not self._stop_requested and cfg.train.eval_every:
                self._validate_and_keep_best(logger)
            self.save("last")
            if self.stop_signal is not None and not all(s in self.state.done for s in STAGES):
                raise TrainingStopped(self.stop_signal, self.run_dir, self.state.global_step,
                                      checkpointed=True)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            logger.close()
            self._plot()
        return self.state

    def _time_left(self, stage: str) -> float:
        """Seconds of ``train.time_budget_s`` left for ``stage`` and what follows it (0: no
        budget); RVOSError when none is left."""
        budget = self.cfg.train.time_budget_s
        if budget <= 0:
            return 0.0
        left = budget - (time.monotonic() - self.started)
        if left <= 0:
            raise RVOSError(f"train.time_budget_s={budget} leaves no time for the {stage} stage "
                            f"(the feature cache took {self.state.timings.get('cache_s', 0):.0f} s); "
                            "raise it")
        return left

    def open_cache(self) -> FeatureCache:
        g, model = self.cfg.train.grounding, self.cfg.model.grounding
        return open_or_build(self.cache_root, self.layout, self.model.backbone, model.backbone,
                             tuple(self.cfg.data.input_size), flip=g.flip, progress=self.progress,
                             dtype=backbone_dtype(model.backbone_dtype, self.device))

    # ------------------------------------------------------------------ stages
    def _begin_stage(self, name: str, module: torch.nn.Module) -> None:
        """Remember where stage ``name`` (training ``module``) starts and seed the torch RNG
        by (seed, stage), so the stage can be redone exactly after a stop."""
        self._stage_start = {"stage": name, "global_step": self.state.global_step,
                             "presentations": self.state.presentations,
                             "weights": {k: v.detach().cpu().clone()
                                         for k, v in module.state_dict().items()}}
        torch.manual_seed(self.cfg.train.seed * 1009 + 1 + STAGES.index(name))

    def _run_stage(self, name: str, module: torch.nn.Module, lr: float, steps: int,
                   budget_s: float, step_fn, logger: MetricsLogger) -> int:
        """Optimise the trainable parameters of ``module`` on ``step_fn() -> (loss, logs)``
        until ``steps`` steps or ``budget_s`` seconds (0: no limit), whichever comes first;
        the learning rate follows a cosine over the progress max(step / steps, elapsed /
        budget), so it reaches its end whichever limit ends the stage. Returns the steps
        taken."""
        params = [p for p in module.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=self.cfg.optim.weight_decay)
        started = time.monotonic()
        bar = tqdm(total=steps, desc=name, unit="step", disable=not self.progress)
        clip = self.cfg.optim.clip_grad_norm
        done, progress = 0, 0.0
        while progress < 1 and not self._stop_requested:
            for group in optimizer.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * progress))
            loss, logs = step_fn()
            if not torch.isfinite(loss):
                raise RVOSError(f"{name} loss became {loss.item()} at step {done} (lower the "
                                "learning rate or check the data)", self.run_dir)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else math.inf)
            optimizer.step()
            done += 1
            self.state.global_step += 1
            elapsed = time.monotonic() - started
            progress = max(done / steps, elapsed / budget_s if budget_s > 0 else 0.0)
            bar.update(1)
            if done % self.cfg.train.log_every == 0 or progress >= 1:
                bar.set_postfix(loss=f"{loss.item():.3f}")
                logger.log(self.state.global_step, len(self.state.done) + min(progress, 1.0), name,
                           {**logs, "loss": loss.item(), "grad_norm": float(norm),
                            "lr": optimizer.param_groups[0]["lr"]})
        bar.close()
        self.state.timings[f"{name}_s"] = time.monotonic() - started
        self.state.timings[f"{name}_steps"] = done
        if not self._stop_requested:
            self.state.done.append(name)
            self._stage_start = None
        return done

    def _train_segmenter(self, cache: FeatureCache, logger: MetricsLogger, budget_s: float) -> None:
        g = self.cfg.train.grounding
        self._begin_stage("segmenter", self.stage_module("segmenter"))
        rng = np.random.default_rng([self.cfg.train.seed, 1])
        segmenter = self.model.segmenter.train()
        pool = self.segmenter_rows(cache)
        n = len(pool)

        def step():
            rows = np.sort(pool[rng.choice(n, min(g.seg_batch_frames, n), replace=False)])
            flip = bool(cache.flip_maps is not None and rng.random() < 0.5)
            maps = [m.to(self.device) for m in cache.features(rows, flip)]
            rgb = self._rgb(cache, rows, flip)
            labels = torch.from_numpy(np.ascontiguousarray(cache.labels[rows])).to(self.device)
            if flip:
                labels = labels.flip(-1)
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.use_amp):
                out = segmenter(maps, rgb)
            losses = segmenter_loss(out, segmenter_targets(labels))
            total = sum(SEGMENTER_WEIGHTS[k] * v for k, v in losses.items())
            return total, {k: float(v.detach()) for k, v in losses.items()}

        self._run_stage("segmenter", segmenter, g.seg_lr, g.seg_steps, budget_s, step, logger)
        if "segmenter" in self.state.done:
            self.save("last")

    def _rgb(self, cache: FeatureCache, rows, flip: bool) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(cache.frames[rows])).to(self.device)
        x = normalize(x.permute(0, 3, 1, 2).float() / 255)
        return x.flip(-1) if flip else x

    # ------------------------------------------------------------------ scorer
    @torch.no_grad()
    def track_bank(self, cache: FeatureCache, flip: bool, videos: list[str] | None = None
                   ) -> dict[str, tuple[TrackSet, list[int]]]:
        """Per training video (``videos``, default all the cache holds): its tracks (tokens
        only) and the object id of each track.

        ``scorer_tracks=gt``: one track per annotated object. ``predicted``: the model's own
        tracks; a track takes the id of the annotated object it overlaps with IoU >= 0.5
        over the clip (else id 0, a distractor).
        """
        predicted = self.cfg.train.grounding.scorer_tracks == "predicted"
        bank = {}
        spans = [cache.videos[v] for v in (cache.videos if videos is None else videos)]
        for span in tqdm(spans, desc="tracks" + (" (mirrored)" if flip else ""), unit="video",
                         disable=not self.progress, leave=False):
            rows = np.arange(span.start, span.start + span.count)
            maps = [m.to(self.device) for m in cache.features(rows, flip)]
            rgb = self._rgb(cache, rows, flip)
            labels = torch.from_numpy(np.ascontiguousarray(cache.labels[rows])).to(self.device)
            labels = labels.flip(-1) if flip else labels
            ids = torch.nonzero(torch.bincount(labels.flatten().long(), minlength=256)[1:])[:, 0] + 1
            ids = ids.tolist()
            gt_masks = labels[None] == torch.tensor(ids, device=self.device).view(-1, 1, 1, 1)
            if predicted:
                seg = self.model.segmenter(maps, rgb)
                tracks = self.model.find_tracks(maps, rgb, seg)
                track_ids = _match_ids(tracks.masks, gt_masks, ids)
                bank[span.video] = (tracks.without_masks(), track_ids)
            else:
                bank[span.video] = (track_set(maps, rgb, gt_masks).without_masks(), ids)
        return bank

    def expressions(self, bank) -> list[Expression]:
        out = []
        for video, record in self.layout.videos.items():
            if video not in bank:
                continue
            ids = bank[video][1]
            for e in record.expressions.values():
                referred = [k for k, i in enumerate(ids) if i in e.obj_ids]
                if referred:
                    out.append(Expression(video, e.text, referred))
        return out

    def _train_scorer(self, cache: FeatureCache, logger: MetricsLogger, budget_s: float) -> None:
        g = self.cfg.train.grounding
        self._begin_stage("scorer", self.model.scorer)
        t = time.monotonic()
        self.model.eval()
        banks = {False: self.track_bank(cache, False)}
        if g.flip:
            banks[True] = self.track_bank(cache, True)
        self.state.timings["track_bank_s"] = time.monotonic() - t
        exprs = self.expressions(banks[False])
        if not exprs:
            raise RVOSError("no training expression refers to an annotated object",
                            self.layout.meta_expressions_path)
        t_text = time.monotonic()
        self.encode_sentences({e.text for e in exprs} |
                              ({swap_left_right(e.text) for e in exprs} if g.flip else set()))
        self.state.timings["text_s"] = time.monotonic() - t_text
        budget_s = max(1.0, budget_s - (time.monotonic() - t)) if budget_s > 0 else 0.0
        scorer = self.model.scorer.train()
        rng = np.random.default_rng([self.cfg.train.seed, 2])
        batch_size = min(g.scorer_batch, len(exprs))

        def step():
            picks = rng.choice(len(exprs), batch_size, replace=False)
            flips = rng.random(batch_size) < 0.5 if g.flip else np.zeros(batch_size, bool)
            sets, texts = [], []
            for i, f in zip(picks, flips):
                e = exprs[i]
                sets.append(banks[bool(f)][e.video][0])
                texts.append(swap_left_right(e.text) if f else e.text)
            batch = pad_tracks(sets)
            referred = torch.zeros_like(batch.valid)
            for b, i in enumerate(picks):
                referred[b, exprs[i].referred] = True
            words, padding = self.model.encode_text(texts, self.device)
            logits = scorer(batch, words, padding)
            loss = grounding_loss(logits, referred)
            acc = referred.gather(1, logits.argmax(-1, keepdim=True)).float().mean()
            self.state.presentations += batch_size
            return loss, {"pick_accuracy": float(acc)}

        self._run_stage("scorer", scorer, g.scorer_lr, g.scorer_steps, budget_s, step, logger)
        self.state.timings["presentations_per_s"] = (
            self.state.presentations / max(self.state.timings.get("scorer_s", 1e-9), 1e-9))

    @torch.no_grad()
    def encode_sentences(self, texts: set[str], chunk: int = 256) -> None:
        """Run the frozen text encoder once over every training sentence (it memoises them),
        in length-sorted chunks, so scorer steps never wait for it."""
        # ties by text, not by the set's (per-process) hash order: which sentences share a
        # padded chunk then never changes, so a run repeats in another process
        ordered = sorted(texts, key=lambda text: (len(text), text))
        for i in tqdm(range(0, len(ordered), chunk), desc="sentences", unit="chunk",
                      disable=not self.progress, leave=False):
            self.model.text(ordered[i:i + chunk], self.device)

    # ------------------------------------------------------------------ validation
    def validate(self) -> dict | None:
        return validation_summary(self.model, self.cfg, self.device, self.progress)

    def _validate_and_keep_best(self, logger: MetricsLogger) -> None:
        summary = self.validate()
        if summary is None:
            return
        overall = summary["overall"]
        logger.log(self.state.global_step, self.state.epoch, "val", validation_figures(summary))
        self.state.history.append({"step": self.state.global_step, **overall})
        if overall["JF"] > self.state.best_jf:
            self.state.best_jf = overall["JF"]
            self.save("best", {"val": summary})

    def _plot(self) -> None:
        plot_run_curves(self.run_dir)


def _match_ids(track_masks: torch.Tensor, gt_masks: torch.Tensor, ids: list[int]) -> list[int]:
    """track_masks (Q, T, H, W), gt_masks (K, T, H, W) bool -> per track the id of the object
    it overlaps with clip IoU >= 0.5, else 0."""
    if len(track_masks) == 0 or len(ids) == 0:
        return [0] * len(track_masks)
    a = track_masks.flatten(1).float()
    b = gt_masks.flatten(1).float()
    inter = a @ b.T
    union = a.sum(1, keepdim=True) + b.sum(1)[None] - inter
    iou = inter / union.clamp(min=1)
    best = iou.argmax(1)
    return [ids[int(k)] if float(iou[q, k]) >= 0.5 else 0 for q, k in enumerate(best)]
