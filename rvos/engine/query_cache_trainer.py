"""Training the query family on cached frozen-backbone features (``train.feature_cache``).

With ``model.query.freeze_backbone`` the backbone's maps of a frame never change, so the
backbone runs once over every training frame (and its mirror image when
``data.hflip_prob > 0``) into the memory-mapped cache of ``rvos.models.feature_cache``, and
each step runs only what follows the backbone (``QueryRVOS.forward_maps``). A step takes
``train.cache.clips_per_step`` clips of ``data.num_frames`` frames (every k-th frame, k in
[1, data.max_frame_stride]) from distinct training videos and presents each clip with its
video's sentences together (all of them, or ``train.cache.sentences_per_clip`` drawn at
random): the clip's maps are repeated per sentence by ``index_select``. A flipped clip
reads the mirrored maps and labels and swaps the sentences' left/right words.

Steps: ``train.epochs`` x (training videos / clips_per_step, at most
``train.max_steps_per_epoch``). The learning rate warms up over
``train.cache.warmup_steps`` and then follows one cosine from optim.lr to optim.min_lr over
the progress max(step / steps, time / budget) (``train.time_budget_s`` counts from the
start, cache included), so it reaches its end whichever limit ends the run. Validation
every ``train.eval_every`` epochs and at the end keeps ``best``; ``last`` is written at
every epoch end and at any stop.

Exact resumption: the clips of step s of epoch e depend only on (seed, e, s), and
checkpoints hold the optimizer, every RNG state and the schedule's progress; with no time
budget a resumed run reaches the weights of an uninterrupted one (on the same machine). A
time budget makes the schedule depend on the clock: a resumed budgeted run continues the
cosine from its saved progress over the time left in the new budget.
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from rvos.config import Config, feature_cache_problem, save_config, validate_config
from rvos.data.batch import ClipBatch, ClipMeta, masks_to_boxes_cxcywh
from rvos.data.transforms import swap_left_right
from rvos.data.ytvos import RefYTVOSLayout, sample_clip_indices
from rvos.engine.checkpoint import (checkpoint_file, load_checkpoint, load_weights_into,
                                    save_checkpoint)
from rvos.engine import distributed
from rvos.engine.trainer import (MetricsLogger, StopOnSignal, TrainingStopped,
                                 initial_weights, open_training_split, plot_run_curves,
                                 rng_states, seed_everything, set_rng_states, validation_figures,
                                 validation_summary)
from rvos.errors import RVOSError
from rvos.inference import resolve_device
from rvos.losses import weighted_total
from rvos.models.build import build_criterion, build_model
from rvos.models.feature_cache import FeatureCache, open_or_build
from rvos.precision import autocast_dtype


@dataclass
class CachedExpression:
    """A training sentence and the object ids it refers to (their union is the target)."""

    exp_id: str
    text: str
    obj_ids: list[int]
    exp_type: str = ""


@dataclass
class ClipDraw:
    """One clip of a step: cache ``rows`` (T,) of ``video``, mirrored or not, and the
    sentences presented with it."""

    video: str
    rows: np.ndarray
    flip: bool
    sentences: list[CachedExpression]


@dataclass
class CacheTrainState:
    """Where training stands; saved with every checkpoint."""

    epoch: int = 0                 # current epoch (0-based)
    micro_step: int = 0            # steps of the current epoch already taken
    global_step: int = 0
    best_jf: float = -math.inf
    progress: float = 0.0          # of the learning-rate schedule, in [0, 1]
    finished: bool = False         # the schedule ran to its end
    presentations: int = 0         # sentence-clip pairs trained on
    history: list[dict] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


def training_expressions(layout: RefYTVOSLayout, cache: FeatureCache) -> dict[str, list[CachedExpression]]:
    """Per cached training video, its sentences that refer to at least one object."""
    out = {}
    for video, record in layout.videos.items():
        if video not in cache.videos:
            continue
        exprs = [CachedExpression(e.exp_id, e.text, list(e.obj_ids), e.exp_type)
                 for e in record.expressions.values() if e.obj_ids]
        if exprs:
            out[video] = exprs
    return out


def assemble_step(cache: FeatureCache, draws: list[ClipDraw],
                  device: torch.device) -> tuple[list[Tensor], list[str], ClipBatch]:
    """The inputs of ``forward_maps`` and the targets of one step.

    Returns maps [(B*T, C_i, h_i, w_i)] float32 (rows b*T .. b*T+T-1: sentence b's clip,
    repeated per sentence by index_select), B texts (left/right swapped on mirrored clips)
    and a :class:`ClipBatch` whose masks (B, T, H, W) are the union of each sentence's
    objects at the cache's input size, with their boxes and valid flags. The batch's
    ``frames`` is a zero-strided (B, T, 3, H, W) view of one zero: the criterion never
    reads pixels, and nothing is copied.
    """
    per_clip_maps, frame_index, texts, masks, meta = [], [], [], [], []
    t = len(draws[0].rows)
    for k, d in enumerate(draws):
        per_clip_maps.append(cache.features(d.rows, d.flip))
        lab = torch.from_numpy(np.ascontiguousarray(cache.labels[d.rows]))     # (T, H, W)
        lab = lab.flip(-1) if d.flip else lab
        span = cache.videos[d.video]
        names = [span.frames[int(r) - span.start] for r in d.rows]
        for e in d.sentences:
            frame_index.append(torch.arange(k * t, (k + 1) * t))
            texts.append(swap_left_right(e.text) if d.flip else e.text)
            ids = torch.tensor(e.obj_ids, dtype=lab.dtype)
            masks.append(torch.isin(lab, ids).float())
            meta.append(ClipMeta(video=d.video, exp_id=e.exp_id, frame_names=names,
                                 orig_size=tuple(lab.shape[-2:]), obj_ids=list(e.obj_ids),
                                 exp_type=e.exp_type, flipped=d.flip))
    index = torch.cat(frame_index).to(device)
    maps = [torch.cat(level).to(device).index_select(0, index) for level in zip(*per_clip_maps)]
    target = torch.stack(masks)                                                  # (B, T, H, W)
    boxes, valid = masks_to_boxes_cxcywh(target)
    b, _, h, w = target.shape
    frames = torch.zeros(1, 1, 1, 1, 1).expand(b, t, 3, h, w)
    batch = ClipBatch(frames=frames, masks=target, valid=valid, boxes=boxes.float(), texts=texts,
                      meta=meta).to(device)
    return maps, texts, batch


class QueryCacheTrainer(StopOnSignal):
    """Trains a ``model.kind: query`` config with ``train.feature_cache`` into ``run_dir``.

    Files as the Trainer's (config.yaml, metrics.csv, tensorboard/, curves.png,
    checkpoints/{last,best}.safetensors), plus feature_cache/ unless
    ``train.cache.cache_dir`` names another folder. ``pretrained=False``: as the Trainer's
    (for a :meth:`resume`, which must then come before :meth:`fit`: the cache is keyed by
    the backbone's weights).
    """

    def __init__(self, cfg: Config, run_dir: str | Path | None = None, progress: bool = True,
                 pretrained: bool = True):
        validate_config(cfg)
        why = feature_cache_problem(cfg)
        if why:
            raise RVOSError(f"invalid config: train.feature_cache: {why}")
        distributed.refuse("train.feature_cache (the query family on cached features) trains")
        self.cfg = cfg
        self.run_dir = Path(run_dir or cfg.train.out_dir)
        self.progress = progress
        self.device = resolve_device(cfg.train.device)
        seed_everything(cfg.train.seed)
        self.model, self.criterion = build_model(cfg, pretrained), build_criterion(cfg)
        self.model.to(self.device)
        self.layout = open_training_split(cfg)
        c = cfg.train.cache
        self.cache_root = Path(c.cache_dir) if c.cache_dir else self.run_dir / "feature_cache"
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.optim.lr,
                                           weight_decay=cfg.optim.weight_decay)
        self.state = CacheTrainState()
        self.init_record: dict | None = None      # the --init-from source, kept in every checkpoint

    # ------------------------------------------------------------------ checkpoints
    def save(self, name: str, extra_meta: dict | None = None) -> Path:
        s = self.state
        meta = {"epoch": s.epoch, "micro_step": s.micro_step, "step": s.global_step,
                "best_jf": s.best_jf, "history": s.history, "timings": s.timings,
                "presentations": s.presentations, **(extra_meta or {})}
        if self.init_record is not None:
            meta["init_from"] = self.init_record
        training = {"optimizer": self.optimizer.state_dict(), **rng_states(),
                    "epoch": s.epoch, "micro_step": s.micro_step, "global_step": s.global_step,
                    "best_jf": s.best_jf, "progress": s.progress, "finished": s.finished,
                    "presentations": s.presentations}
        return save_checkpoint(self.run_dir / "checkpoints" / name, self.model, self.cfg, meta,
                               training)

    def init_from(self, path: str | Path) -> None:
        """Start this new run from the weights of checkpoint ``path`` (its optimizer, step
        and RNG states start fresh); call before :meth:`fit`, as the feature cache is keyed
        by the backbone's weights."""
        if self.state.global_step:
            raise RVOSError("--init-from applies to a new run, not one that has taken steps", path)
        self.init_record = initial_weights(self.model, path, self.cfg)

    def resume(self, path: str | Path | None = None) -> None:
        """Restore weights and the full training state (default: checkpoints/last)."""
        path = checkpoint_file(path or self.run_dir / "checkpoints" / "last")
        ckpt = load_checkpoint(path, with_training_state=True)
        load_weights_into(self.model, ckpt, path, expected=self.cfg)
        ts = ckpt.training_state
        if "progress" not in ts:
            raise RVOSError("this checkpoint was not written by a train.feature_cache run", path)
        self.optimizer.load_state_dict(ts["optimizer"])
        set_rng_states(ts)
        self.state = CacheTrainState(
            epoch=int(ts["epoch"]), micro_step=int(ts["micro_step"]),
            global_step=int(ts["global_step"]), best_jf=float(ts["best_jf"]),
            progress=float(ts["progress"]), finished=bool(ts["finished"]),
            presentations=int(ts["presentations"]), history=list(ckpt.meta.get("history", [])),
            timings=dict(ckpt.meta.get("timings", {})))
        self.init_record = ckpt.meta.get("init_from")

    # ------------------------------------------------------------------ data
    def open_cache(self) -> FeatureCache:
        q = self.cfg.model.query
        return open_or_build(self.cache_root, self.layout, self.model.backbone, q.backbone,
                             tuple(self.cfg.data.input_size), flip=self.cfg.data.hflip_prob > 0,
                             progress=self.progress)

    def steps_per_epoch(self, videos: int) -> int:
        steps = math.ceil(videos / self.cfg.train.cache.clips_per_step)
        cap = self.cfg.train.max_steps_per_epoch
        return min(steps, cap) if cap > 0 else steps

    def draw_step(self, cache: FeatureCache, exprs: dict[str, list[CachedExpression]],
                  epoch: int, step: int) -> list[ClipDraw]:
        """The clips of step ``step`` of ``epoch`` (a function of (seed, epoch, step) only)."""
        cfg, c = self.cfg, self.cfg.train.cache
        videos = sorted(exprs)
        order = np.random.default_rng([cfg.train.seed, epoch]).permutation(len(videos))
        k = min(c.clips_per_step, len(videos))
        picks = np.take(order, np.arange(step * k, (step + 1) * k), mode="wrap")
        rng = np.random.default_rng([cfg.train.seed, epoch, step, 1])
        draws = []
        for i in picks:
            video = videos[int(i)]
            span = cache.videos[video]
            idx = sample_clip_indices(span.count, cfg.data.num_frames, cfg.data.max_frame_stride, rng)
            flip = cache.flip_maps is not None and bool(rng.random() < cfg.data.hflip_prob)
            sentences = exprs[video]
            if 0 < c.sentences_per_clip < len(sentences):
                chosen = np.sort(rng.choice(len(sentences), c.sentences_per_clip, replace=False))
                sentences = [sentences[j] for j in chosen]
            draws.append(ClipDraw(video, span.start + np.asarray(idx), flip, sentences))
        return draws

    @torch.no_grad()
    def encode_sentences(self, exprs: dict[str, list[CachedExpression]], chunk: int = 256) -> None:
        """Run the frozen text encoder once over every training sentence and its mirrored
        form (it memoises them), so steps never wait for it."""
        if not self.cfg.model.text.freeze:
            return
        texts = {e.text for es in exprs.values() for e in es}
        if self.cfg.data.hflip_prob > 0:
            texts |= {swap_left_right(t) for t in texts}
        # ties by text, not by the set's (per-process) hash order: which sentences share a
        # padded chunk then never changes, so a run repeats in another process
        ordered = sorted(texts, key=lambda text: (len(text), text))
        for i in range(0, len(ordered), chunk):
            self.model.text_encoder(ordered[i:i + chunk], self.device)

    # ------------------------------------------------------------------ the run
    def _learning_rate(self) -> float:
        o, s = self.cfg.optim, self.state
        warm = self.cfg.train.cache.warmup_steps
        factor = min(1.0, (s.global_step + 1) / warm) if warm else 1.0
        cosine = 0.5 * (1 + math.cos(math.pi * min(s.progress, 1.0)))
        return (o.min_lr + (o.lr - o.min_lr) * cosine) * factor

    def fit(self, stop_after_steps: int = 0) -> CacheTrainState:
        """Build or open the cache, train until the schedule ends (or a stop: SIGINT/SIGTERM,
        ``stop_after_steps`` steps in this call), validate, save ``last``. Raises
        :class:`TrainingStopped` (after the checkpoint) when a signal stopped the run."""
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.run_dir / "config.yaml")
        logger = MetricsLogger(self.run_dir)
        logger.truncate_after(self.state.global_step)
        previous = {s: signal.signal(s, self._request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        started = time.monotonic()
        try:
            cache = self.open_cache()
            self.state.timings["cache_s"] = time.monotonic() - started
            exprs = training_expressions(self.layout, cache)
            if not exprs:
                raise RVOSError("no training expression refers to an object",
                                self.layout.meta_expressions_path)
            if cfg.train.time_budget_s <= 0:
                # up front for bit-identical resumes; under a time budget the encoder's
                # memo fills as sentences come (it would spend minutes of a short budget)
                self.encode_sentences(exprs)
            budget = cfg.train.time_budget_s
            time_left = budget - (time.monotonic() - started) if budget > 0 else 0.0
            if budget > 0 and time_left <= 0:
                raise RVOSError(f"train.time_budget_s={budget:g} leaves no time to train (the "
                                f"feature cache took {self.state.timings['cache_s']:.0f} s); raise it")
            self._train(cache, exprs, logger, time_left, stop_after_steps)
            if self.state.finished and cfg.train.eval_every:
                self._validate_and_keep_best(logger)
            self.save("last")
            if self.stop_signal is not None and not self.state.finished:
                raise TrainingStopped(self.stop_signal, self.run_dir, self.state.global_step,
                                      checkpointed=True)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            logger.close()
            plot_run_curves(self.run_dir)
        return self.state

    def _train(self, cache: FeatureCache, exprs: dict[str, list[CachedExpression]],
               logger: MetricsLogger, time_left: float, stop_after_steps: int) -> None:
        cfg, s = self.cfg, self.state
        per_epoch = self.steps_per_epoch(len(exprs))
        total = cfg.train.epochs * per_epoch
        t = cfg.data.num_frames
        start_progress, started = s.progress, time.monotonic()
        clip = cfg.optim.clip_grad_norm if cfg.optim.clip_grad_norm > 0 else math.inf
        # bfloat16 (no loss scaling) only where the device computes it natively
        amp = cfg.optim.amp and autocast_dtype(self.device) == torch.bfloat16
        self.model.train()
        bar = tqdm(total=total, initial=s.global_step, disable=not self.progress, unit="step",
                   desc="query (cached features)")
        steps_this_call, presented, running = 0, 0, {}
        while not s.finished:
            draws = self.draw_step(cache, exprs, s.epoch, s.micro_step)
            maps, texts, batch = assemble_step(cache, draws, self.device)
            for group in self.optimizer.param_groups:
                group["lr"] = self._learning_rate()
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=amp):
                output = self.model.forward_maps(maps, texts, t)
                losses = self.criterion(output, batch)
                total_loss = weighted_total(losses, self.criterion.weights)
            if not torch.isfinite(total_loss):
                raise RVOSError(f"loss became {total_loss.item()} at step {s.global_step} "
                                "(lower optim.lr or check the data)", self.run_dir)
            self.optimizer.zero_grad(set_to_none=True)
            total_loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(self.params, clip)
            self.optimizer.step()
            s.global_step += 1
            s.micro_step += 1
            s.presentations += len(texts)
            steps_this_call += 1
            presented += len(texts)
            elapsed = time.monotonic() - started
            by_time = (start_progress + (1 - start_progress) * elapsed / time_left) if time_left > 0 else 0.0
            s.progress = min(1.0, max(s.global_step / total, by_time))
            s.finished = s.progress >= 1.0
            for k, v in {**losses, "total": total_loss}.items():
                running[k] = running.get(k, 0.0) + float(v.detach())
            running["_n"] = running.get("_n", 0) + 1
            bar.update(1)
            epoch_end = s.micro_step >= per_epoch
            if s.global_step % cfg.train.log_every == 0 or s.finished or epoch_end:
                n = running.pop("_n")
                rate = presented / max(elapsed, 1e-9)
                bar.set_postfix(loss=f"{running['total'] / n:.3f}", sent_s=f"{rate:.0f}")
                logger.log(s.global_step, s.epoch + s.micro_step / per_epoch, "train",
                           {**{k: v / n for k, v in running.items()}, "grad_norm": float(norm),
                            "lr": self.optimizer.param_groups[0]["lr"],
                            "presentations_per_s": rate})
                running = {}
            if epoch_end:
                s.epoch, s.micro_step = s.epoch + 1, 0
                if not s.finished:
                    if cfg.train.eval_every and s.epoch % cfg.train.eval_every == 0:
                        self._validate_and_keep_best(logger)
                    self.save("last")
            if self._stop_requested or (stop_after_steps and steps_this_call >= stop_after_steps):
                break
        bar.close()
        train_s = time.monotonic() - started
        s.timings["train_s"] = s.timings.get("train_s", 0.0) + train_s
        s.timings["presentations_per_s"] = presented / max(train_s, 1e-9)

    # ------------------------------------------------------------------ validation
    def validate(self) -> dict | None:
        return validation_summary(self.model, self.cfg, self.device, self.progress)

    def _validate_and_keep_best(self, logger: MetricsLogger) -> None:
        summary = self.validate()
        if summary is None:
            return
        overall, s = summary["overall"], self.state
        logger.log(s.global_step, s.epoch, "val", validation_figures(summary))
        s.history.append({"epoch": s.epoch, "step": s.global_step, **overall})
        if overall["JF"] > s.best_jf:
            s.best_jf = overall["JF"]
            self.save("best", {"val": summary})
