"""The training loop: AMP, gradient accumulation, clipping, a warm-restart cosine or a step
schedule (rvos.engine.lr_schedules), CSV + TensorBoard logging, atomic checkpoints,
best-by-validation, exact resumption, and initialisation from another run's weights
(``--init-from``: pre-train on RefCOCO, then fine-tune on a video benchmark).

Exact resumption: the clip a dataset returns depends only on (seed, epoch, index), the
order of an epoch only on (seed, epoch), the data loader draws its seeds from a generator of
its own (so starting it mid-epoch does not shift the dropout draws), a frozen text
encoder's memoised features do not depend on which sentences were encoded together, and
checkpoints are written at optimizer-step boundaries with the optimizer, scheduler, scaler
and every RNG state (torch, CUDA, numpy, python). A run stopped at an optimizer step and
resumed therefore reaches bit-identical weights to an uninterrupted run (on the same
machine and device; kernels that are nondeterministic on GPUs aside). A run killed without
a save resumes from the last checkpoint written (the end of an epoch or of a stop).

Several processes (``torchrun``, rvos.engine.distributed): the model is wrapped in
DistributedDataParallel; ``optim.batch_size`` is per process, so a micro-step's global
batch holds batch_size x processes samples: the slice of the epoch order a single process
with that batch size takes, each process taking its consecutive share of it. Every
process's loss is the mean over its own samples and DDP averages the gradients, so the step
is the one a single process takes on the global batch (BatchNorm statistics over the global
batch with ``train.sync_bn``). Rank 0 writes and prints; stops (signals, the time budget)
and failures are agreed between the ranks at every step; checkpoints hold every rank's RNG
states, so a run resumes exactly on the same number of processes.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from rvos.config import Config, save_config, validate_config
from rvos.data.batch import collate_clips
from rvos.data.build import build_train_dataset, verify_validation_split
from rvos.data.ytvos import RefYTVOSLayout
from rvos.engine import distributed
from rvos.engine.checkpoint import (checkpoint_file, load_checkpoint, load_weights_into,
                                    save_checkpoint)
from rvos.engine.lr_schedules import build_scheduler, schedule_of_state
from rvos.errors import RVOSError
from rvos.extras import optional_module
from rvos.inference import Predictor
from rvos.losses import weighted_total
from rvos.models.build import build_criterion, build_model
from rvos.precision import autocast_dtype

_log = logging.getLogger(__name__)   # ``logger`` below is a run's MetricsLogger


class TrainingStopped(KeyboardInterrupt):
    """A run stopped by SIGINT or SIGTERM; ``exit_code`` is 128 + the signal number (130,
    143), as a shell reports a process killed by that signal.

    ``checkpointed``: the first signal stops after the current step and saves ``last``; a
    second one stops at once, losing the steps since the last checkpoint. ``resumable``:
    the run folder holds a ``last`` checkpoint that ``--resume`` continues from.
    """

    def __init__(self, signum: int, run_dir: Path, step: int, checkpointed: bool):
        self.signum, self.exit_code = signum, 128 + signum
        self.run_dir, self.step, self.checkpointed = Path(run_dir), step, checkpointed
        self.resumable = any((self.run_dir / "checkpoints").glob("last*"))
        name = signal.Signals(signum).name
        if checkpointed:
            self.message = f"stopped by {name} at step {step}, checkpointed"
        else:
            self.message = (f"stopped at once by a second {name} at step {step}; the steps "
                            "since the last checkpoint are lost")
        super().__init__(self.message)


def announce_stop(signum: int) -> None:
    """Tell the user that the run stops after this step, and how to stop it at once."""
    name = signal.Signals(signum).name
    again = "press Ctrl-C again" if signum == signal.SIGINT else f"send {name} again"
    print(f"\n{name} received: stopping after the current step with a checkpoint; "
          f"{again} to stop at once", file=sys.stderr, flush=True)


@dataclass
class TrainState:
    """Where training stands; saved with every checkpoint."""

    epoch: int = 0                 # current epoch (0-based)
    micro_step: int = 0            # batches of the current epoch already consumed
    global_step: int = 0           # optimizer steps taken
    best_jf: float = -math.inf
    history: list[dict] = field(default_factory=list)   # per-epoch validation summaries


class MetricsLogger:
    """Append-only CSV (step, epoch, split, name, value) plus TensorBoard scalars."""

    def __init__(self, run_dir: Path, tensorboard: bool = True):
        self.csv_path = run_dir / "metrics.csv"
        new = not self.csv_path.exists()
        self._file = self.csv_path.open("a", newline="")
        self._csv = csv.writer(self._file)
        if new:
            self._csv.writerow(["step", "epoch", "split", "name", "value"])
        self._tb = None
        if tensorboard and optional_module("tensorboard", "no tensorboard/ logs") is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(run_dir / "tensorboard"))

    def log(self, step: int, epoch: float, split: str, values: dict[str, float]) -> None:
        for name, value in values.items():
            self._csv.writerow([step, f"{epoch:.4f}", split, name, f"{value:.6g}"])
            if self._tb is not None:
                self._tb.add_scalar(f"{split}/{name}", value, step)
        self._file.flush()

    def truncate_after(self, step: int) -> None:
        """Drop rows logged after ``step`` (they belong to work a resume will redo)."""
        self._file.close()
        rows = list(csv.reader(self.csv_path.open()))
        kept = [rows[0]] + [r for r in rows[1:] if int(r[0]) <= step]
        with self.csv_path.open("w", newline="") as f:
            csv.writer(f).writerows(kept)
        self._file = self.csv_path.open("a", newline="")
        self._csv = csv.writer(self._file)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_states(cuda_devices: list[torch.device] | None = None) -> dict:
    """Every global RNG state (torch, CUDA, numpy, python), in types that
    ``torch.load(weights_only=True)`` reads back. ``cuda_devices``: the GPUs whose states
    to keep (a torchrun process keeps its own GPU's alone); None: every GPU."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    if not torch.cuda.is_available():
        cuda = []
    elif cuda_devices is None:
        cuda = torch.cuda.get_rng_state_all()
    else:
        cuda = [torch.cuda.get_rng_state(d) for d in cuda_devices]
    return {"torch_rng": torch.get_rng_state(),
            "cuda_rng": cuda,
            "numpy_rng": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos),
                          int(has_gauss), float(gauss)],
            "python_rng": [version, list(internal), gauss_next]}


def set_rng_states(states: dict, cuda_devices: list[torch.device] | None = None) -> None:
    """Restore what :func:`rng_states` (of the same ``cuda_devices``) returned (states a
    checkpoint lacks are left as they are: format-1 checkpoints saved the torch states
    only)."""
    torch.set_rng_state(states["torch_rng"])
    if torch.cuda.is_available() and states.get("cuda_rng"):
        if cuda_devices is None:
            torch.cuda.set_rng_state_all(states["cuda_rng"])
        else:
            for device, state in zip(cuda_devices, states["cuda_rng"]):
                torch.cuda.set_rng_state(state, device)
    if "numpy_rng" in states:
        kind, keys, pos, has_gauss, gauss = states["numpy_rng"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "python_rng" in states:
        version, internal, gauss_next = states["python_rng"]
        random.setstate((version, tuple(internal), gauss_next))


def set_tf32(enabled: bool) -> None:
    """TF32 for float32 matmuls and convolutions on CUDA (Ampere and later), or IEEE float32."""
    mode = "tf32" if enabled else "ieee"
    try:
        torch.backends.cuda.matmul.fp32_precision = mode
        torch.backends.cudnn.conv.fp32_precision = mode
    except AttributeError:          # before torch 2.9
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled


def initial_weights(model: nn.Module, path: str | Path, cfg: Config) -> dict:
    """Load the weights (only) of checkpoint ``path`` into ``model`` for a new run of ``cfg``
    (``rvos train --init-from``); RVOSError naming the file when it is missing, unreadable or
    of another architecture (the checkpoints' architecture signatures are compared). Returns
    the record the new run keeps in its checkpoints' metadata under ``init_from``."""
    path = checkpoint_file(path)
    ckpt = load_checkpoint(path)
    load_weights_into(model, ckpt, path, expected=cfg)
    return {"checkpoint": str(path.resolve()), "step": int(ckpt.meta.get("step", 0)),
            "data_format": ckpt.config.data.format, "data_root": ckpt.config.data.root}


def open_training_split(cfg: Config) -> RefYTVOSLayout:
    """The training split of ``cfg.data`` for the frozen-feature trainers, verified (and the
    validation split too, so that a damaged one fails now rather than after training). These
    trainers read the Ref-YouTube-VOS layout only."""
    if cfg.data.format != "ref-ytvos":
        raise RVOSError(f"data.format={cfg.data.format}: this trainer (model.kind="
                        f"{cfg.model.kind}, train.feature_cache={cfg.train.feature_cache}) reads "
                        "the ref-ytvos layout only; train that benchmark with the clip trainer")
    layout = RefYTVOSLayout(Path(cfg.data.root), cfg.data.train_split)
    if not layout.has_annotations:
        raise RVOSError("the training split has no Annotations folder", layout.split_dir)
    layout.verify()
    verify_validation_split(cfg)
    return layout


class StopOnSignal:
    """What the trainers share on SIGINT/SIGTERM (install ``_request_stop`` as the handler;
    the trainer has ``run_dir`` and ``state.global_step``): the first signal asks the run
    to stop after this step (checkpointed), a second stops it at once. Under torchrun a
    second signal within :attr:`SAME_SIGNAL_S` of the first counts as the same one: a Ctrl-C
    reaches every process from the terminal and once more forwarded by torchrun."""

    SAME_SIGNAL_S = 2.0
    _stop_requested: bool = False
    _stop_time: float = 0.0
    stop_signal: int | None = None

    def _request_stop(self, signum, frame) -> None:
        """SIGINT/SIGTERM handler: the first stops after this step (checkpointed), a
        second stops at once."""
        if self._stop_requested:
            if (distributed.world_size() > 1 and
                    time.monotonic() - self._stop_time < self.SAME_SIGNAL_S):
                return
            raise TrainingStopped(signum, self.run_dir, self.state.global_step, checkpointed=False)
        self._stop_requested, self.stop_signal = True, signum
        self._stop_time = time.monotonic()
        if distributed.is_main():
            announce_stop(signum)


class Trainer(StopOnSignal):
    """Trains ``build_model(cfg)`` on ``cfg.data`` into ``run_dir``.

    Files in run_dir: config.yaml (resolved), metrics.csv, tensorboard/, curves.png,
    checkpoints/{last,best}.safetensors (one file each, see rvos.engine.checkpoint).
    ``pretrained=False`` skips the backbone's initial weights: for a :meth:`resume` that
    loads every weight from a checkpoint anyway.

    Launched by torchrun (WORLD_SIZE > 1), it joins the process group
    (:func:`rvos.engine.distributed.setup`) and trains with DistributedDataParallel; only
    rank 0 writes into ``run_dir``.
    """

    def __init__(self, cfg: Config, run_dir: str | Path | None = None, progress: bool = True,
                 pretrained: bool = True):
        self.cfg = validate_config(cfg)
        self.run_dir = Path(run_dir or cfg.train.out_dir)
        self.device = distributed.setup(cfg.train.device)
        self.rank, self.world = distributed.rank(), distributed.world_size()
        self.progress = progress and self.rank == 0
        seed_everything(cfg.train.seed)
        self.model = build_model(cfg, pretrained)
        self.criterion = build_criterion(cfg)
        self.model.to(self.device)
        if self.world > 1 and cfg.train.sync_bn:
            distributed.synchronise_batchnorm(self.model, self.device)
        if self.rank:        # the same initial weights everywhere, dropout draws of its own
            seed_everything((cfg.train.seed + 1_000_003 * self.rank) % 2**32)
        if self.device.type == "cuda":
            set_tf32(cfg.train.tf32)
        self.ddp, self.net = self._wrap(self.model)
        self.dataset = build_train_dataset(cfg)
        verify_validation_split(cfg)  # a damaged validation split fails now, not after an epoch
        if len(self.dataset) < self.global_batch:
            what = (f"one batch of {cfg.optim.batch_size}" if self.world == 1 else
                    f"one global batch of {self.global_batch} (optim.batch_size "
                    f"{cfg.optim.batch_size} x {self.world} processes)")
            raise RVOSError(f"training split has {len(self.dataset)} samples, fewer than {what}",
                            cfg.data.root)
        self.optimizer = self._build_optimizer()
        self.scheduler = build_scheduler(self.optimizer, cfg.optim)
        self.amp_dtype = autocast_dtype(self.device, cfg.optim.amp_dtype)
        self.use_amp = cfg.optim.amp and self.amp_dtype is not None
        # fp16 needs loss scaling; bf16 has float32's range and does not
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=(
            self.use_amp and self.amp_dtype == torch.float16))
        self.state = TrainState()
        self.init_record: dict | None = None      # the --init-from source, kept in every checkpoint

    # ------------------------------------------------------------------ set-up
    def _wrap(self, model: nn.Module) -> tuple[DistributedDataParallel | None, nn.Module]:
        """(the DDP wrapper or None, the module the training step calls): DDP around the
        model on several processes, then ``torch.compile`` with ``train.compile``. The
        checkpoints save ``self.model``, the unwrapped module, under its own names."""
        ddp = None
        net = model
        if self.world > 1:
            ddp = DistributedDataParallel(
                model, device_ids=[self.device] if self.device.type == "cuda" else None,
                find_unused_parameters=self.cfg.train.find_unused_parameters)
            net = ddp
        if self.cfg.train.compile:
            net = torch.compile(net)
        return ddp, net

    def _build_optimizer(self) -> torch.optim.Optimizer:
        o = self.cfg.optim
        backbone, rest = [], []
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                (backbone if name.startswith("backbone.") else rest).append(p)
        groups = [{"params": rest, "lr": o.lr}]
        if backbone:
            groups.append({"params": backbone, "lr": o.lr * o.backbone_lr_mult})
        return torch.optim.AdamW(groups, lr=o.lr, weight_decay=o.weight_decay)

    @property
    def global_batch(self) -> int:
        """Samples of one micro-step over every process: optim.batch_size x processes."""
        return self.cfg.optim.batch_size * self.world

    @property
    def micro_steps_per_epoch(self) -> int:
        o, t = self.cfg.optim, self.cfg.train
        steps = len(self.dataset) // self.global_batch // o.accumulate_steps
        if t.max_steps_per_epoch > 0:
            steps = min(steps, t.max_steps_per_epoch)
        return max(steps, 1) * o.accumulate_steps

    def epoch_order(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.cfg.train.seed * 100003 + epoch)
        return torch.randperm(len(self.dataset), generator=g).tolist()

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """This process's batch of every micro-step of ``epoch``: micro-step i's global
        batch is ``order[i*G:(i+1)*G]`` (G = :attr:`global_batch`, the batch a single
        process with batch size G takes), of which process r takes the r-th slice of
        optim.batch_size."""
        b, g = self.cfg.optim.batch_size, self.global_batch
        order = self.epoch_order(epoch)
        start = self.rank * b
        return [order[i * g + start:i * g + start + b] for i in range(self.micro_steps_per_epoch)]

    # ------------------------------------------------------------------ checkpoints
    def _rng_states(self) -> dict:
        """This process's RNG states (its own GPU's alone under torchrun)."""
        if self.world == 1:
            return rng_states()
        return rng_states([self.device] if self.device.type == "cuda" else [])

    def _training_state(self) -> dict:
        """Every rank calls it (the RNG states of all are gathered)."""
        s = self.state
        states = self._rng_states()
        extra = {"rank_rng": distributed.gather_objects(states)} if self.world > 1 else {}
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), **states, **extra,
                "world_size": self.world,
                "epoch": s.epoch, "micro_step": s.micro_step, "global_step": s.global_step,
                "best_jf": s.best_jf}

    def save(self, name: str, extra_meta: dict | None = None) -> Path | None:
        """Write checkpoint ``name``: called by every rank, written by rank 0 (which returns
        the path; the others None)."""
        s = self.state
        meta = {"epoch": s.epoch, "micro_step": s.micro_step, "step": s.global_step,
                "best_jf": s.best_jf, "history": s.history, "world_size": self.world,
                **(extra_meta or {})}
        if self.init_record is not None:
            meta["init_from"] = self.init_record
        training_state = self._training_state()
        return distributed.main_only(save_checkpoint, self.run_dir / "checkpoints" / name,
                                     self.model, self.cfg, meta, training_state)

    def init_from(self, path: str | Path) -> None:
        """Start this (new) run from the weights of checkpoint ``path``: its optimizer,
        scheduler, step and RNG states are not read (they start fresh, as in any new run)."""
        if self.state.global_step:
            raise RVOSError("--init-from applies to a new run, not one that has taken steps", path)
        self.init_record = initial_weights(self.model, path, self.cfg)

    def resume(self, path: str | Path | None = None) -> None:
        """Restore weights and the full training state (default: checkpoints/last). Every
        process reads the checkpoint; a run resumes on the number of processes it ran on."""
        path = checkpoint_file(path or self.run_dir / "checkpoints" / "last")
        ckpt = load_checkpoint(path, with_training_state=True)
        ts = ckpt.training_state
        ran_on = int(ts.get("world_size", 1))
        if ran_on != self.world:
            raise RVOSError(f"the run was trained on {ran_on} process(es), this is {self.world}: "
                            f"resume it on {ran_on} (torchrun --nproc-per-node; the global batch "
                            "and the data order depend on it), or start a new run from its "
                            "weights with --init-from", path)
        load_weights_into(self.model, ckpt, path, expected=self.cfg)
        schedule = schedule_of_state(ts["scheduler"])
        if schedule != self.cfg.optim.schedule:
            raise RVOSError(f"the run was trained with optim.schedule={schedule}, the config says "
                            f"{self.cfg.optim.schedule}; resume with the run's own schedule", path)
        self.optimizer.load_state_dict(ts["optimizer"])
        self.scheduler.load_state_dict(ts["scheduler"])
        self.scaler.load_state_dict(ts["scaler"])
        if self.world == 1:
            set_rng_states(ts)
        else:
            set_rng_states(ts["rank_rng"][self.rank],
                           [self.device] if self.device.type == "cuda" else [])
        self.state = TrainState(epoch=int(ts["epoch"]), micro_step=int(ts["micro_step"]),
                                global_step=int(ts["global_step"]), best_jf=float(ts["best_jf"]),
                                history=list(ckpt.meta.get("history", [])))
        self.init_record = ckpt.meta.get("init_from")

    # ------------------------------------------------------------------ loop
    def validate(self) -> dict | None:
        """J&F on the validation split (None when it has no annotations or eval is off);
        under torchrun sharded over the ranks where the protocol allows, else computed by
        rank 0; every rank gets the summary."""
        return validation_summary(self.model, self.cfg, self.device, self.progress)

    def _validate_and_keep_best(self, logger: MetricsLogger | None, epoch: float) -> None:
        """Validate, log J/F/J&F, and save ``best`` when J&F improves (every rank calls it)."""
        summary = self.validate()
        if summary is None:
            return
        jf = summary["overall"]["JF"]
        if logger is not None:
            logger.log(self.state.global_step, epoch, "val", validation_figures(summary))
        self.state.history.append({"epoch": epoch, "step": self.state.global_step, **summary["overall"]})
        if jf > self.state.best_jf:
            self.state.best_jf = jf
            self.save("best", {"val": summary})

    def _agreed_stop(self, stop_after: bool, out_of_time: bool) -> tuple[bool, bool]:
        """(stop now, because of the time budget), the same on every rank: a signal or the
        budget seen by any rank stops them all at this step."""
        signum = float(self.stop_signal or 0) if self._stop_requested else 0.0
        signum, out_of_time, stop_after = distributed.agree_max(
            [signum, float(out_of_time), float(stop_after)])
        if signum and self.stop_signal is None:
            self.stop_signal = int(signum)
        return bool(signum or out_of_time or stop_after), bool(out_of_time)

    def _check_finite(self, total: torch.Tensor) -> None:
        """RVOSError on every rank when the loss of any is not finite."""
        bad = distributed.agree_max([0.0 if torch.isfinite(total) else 1.0])[0]
        if bad:
            where = f"loss became {total.item()}" if not torch.isfinite(total) else \
                "the loss of another process became non-finite"
            raise RVOSError(f"{where} at step {self.state.global_step} (lower optim.lr or check "
                            "the data)", self.run_dir)

    def fit(self, stop_after_steps: int = 0) -> TrainState:
        """Train until cfg.train.epochs are done (or a stop: SIGINT/SIGTERM, the time budget,
        ``stop_after_steps`` optimizer steps in this call), checkpointing as it goes.

        Returns the state when the epochs are done or the budget or ``stop_after_steps``
        stopped the run; raises :class:`TrainingStopped` (after the checkpoint) when a
        signal did."""
        cfg, o = self.cfg, self.cfg.optim
        main = self.rank == 0
        logger = None
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir / "config.yaml")
            logger = MetricsLogger(self.run_dir)
            logger.truncate_after(self.state.global_step)
        previous = {s: signal.signal(s, self._request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        started, steps_this_call = time.monotonic(), 0
        per_epoch = self.micro_steps_per_epoch
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.model.train()
        try:
            while self.state.epoch < cfg.train.epochs:
                epoch = self.state.epoch
                if hasattr(self.dataset, "set_epoch"):
                    self.dataset.set_epoch(epoch)
                batches = self.epoch_batches(epoch)
                # the loader's own generator: its worker seeds would otherwise be drawn from
                # the global torch RNG, at a point a mid-epoch resume cannot reproduce
                seeds = torch.Generator().manual_seed(cfg.train.seed * 100003 + epoch)
                loader = DataLoader(self.dataset, batch_sampler=batches[self.state.micro_step:],
                                    collate_fn=collate_clips, num_workers=cfg.data.num_workers,
                                    generator=seeds)
                bar = tqdm(total=per_epoch, initial=self.state.micro_step, disable=not self.progress,
                           desc=f"epoch {epoch + 1}/{cfg.train.epochs}", unit="batch")
                running: dict[str, float] = {}
                for batch in loader:
                    batch = batch.to(self.device)
                    # DDP averages the gradients only at the micro-step that ends an accumulation
                    accumulating = (self.state.micro_step + 1) % o.accumulate_steps != 0
                    with self._no_sync(accumulating):
                        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.use_amp):
                            output = self._forward(batch)
                            losses = self.criterion(output, batch)
                            total = weighted_total(losses, self.criterion.weights)
                        self._check_finite(total)
                        self.scaler.scale(total / o.accumulate_steps).backward()
                    for k, v in {**losses, "total": total}.items():
                        running[k] = running.get(k, 0.0) + float(v.detach()) / o.accumulate_steps
                    self.state.micro_step += 1
                    bar.update(1)
                    if accumulating:
                        continue
                    self.scaler.unscale_(self.optimizer)
                    norm = torch.nn.utils.clip_grad_norm_(
                        params, o.clip_grad_norm if o.clip_grad_norm > 0 else math.inf)
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                    self.optimizer.zero_grad(set_to_none=True)
                    self.state.global_step += 1
                    steps_this_call += 1
                    self.scheduler.step(epoch + self.state.micro_step / per_epoch)
                    if self.state.global_step % cfg.train.log_every == 0:
                        running = distributed.mean_over_ranks(running)   # the global batch's
                        if logger is not None:
                            logger.log(self.state.global_step, epoch + self.state.micro_step / per_epoch,
                                       "train", {**running, "grad_norm": float(norm),
                                                 "lr": self.optimizer.param_groups[0]["lr"]})
                    bar.set_postfix(loss=f"{running['total']:.3f}", gnorm=f"{float(norm):.2f}")
                    running = {}
                    stop, out_of_time = self._agreed_stop(
                        bool(stop_after_steps and steps_this_call >= stop_after_steps),
                        cfg.train.time_budget_s > 0 and
                        time.monotonic() - started > cfg.train.time_budget_s)
                    if stop:
                        bar.close()
                        if out_of_time and cfg.train.eval_every:
                            # the budget ends the run: let the weights trained since the last
                            # validation compete for "best" (an interrupted run just stops)
                            self._validate_and_keep_best(logger, epoch + self.state.micro_step / per_epoch)
                        self.save("last")
                        if self.stop_signal is not None:
                            raise TrainingStopped(self.stop_signal, self.run_dir,
                                                  self.state.global_step, checkpointed=True)
                        return self.state
                bar.close()
                self.state.epoch, self.state.micro_step = epoch + 1, 0
                if cfg.train.eval_every and (epoch + 1) % cfg.train.eval_every == 0:
                    self._validate_and_keep_best(logger, epoch + 1)
                self.save("last")
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            if logger is not None:
                logger.close()
                self._plot()
        return self.state

    def _forward(self, batch) -> object:
        """The model's output for ``batch`` (through DDP / compile); DDP's complaint about
        parameters left without a gradient becomes a one-line error naming the switch."""
        try:
            return self.net(batch.frames, batch.texts)
        except RuntimeError as e:
            if self.ddp is not None and "find_unused_parameters" in str(e):
                raise RVOSError("some trainable parameters got no gradient in the last step "
                                "(a part of the model the loss does not use): set "
                                "train.find_unused_parameters=true", self.run_dir) from None
            raise

    def _no_sync(self, accumulating: bool):
        """DDP's ``no_sync`` during the micro-steps that accumulate (no gradient all-reduce
        until the last of them); nothing in one process."""
        if self.ddp is not None and accumulating:
            return self.ddp.no_sync()
        return contextlib.nullcontext()

    def _plot(self) -> None:
        plot_run_curves(self.run_dir)


def validation_summary(model: nn.Module, cfg: Config, device: torch.device,
                       progress: bool = True) -> dict | None:
    """The figures of ``model`` on ``cfg.data.val_split`` (at most ``data.max_val_samples``
    samples) by the protocol of ``cfg.data.format`` (rvos.engine.protocols), or None when
    that split cannot be scored; ``summary["overall"]["JF"]`` is the figure best checkpoints
    are chosen by. The model is left in training mode. Under torchrun every rank calls it
    and gets the summary: the ranks share the samples where the protocol is ``SHARDED``
    (ref-ytvos), else rank 0 scores them all."""
    from rvos.engine.protocols import protocol_module

    predictor = Predictor(model, cfg.data.input_size, cfg.eval.window, device, amp=cfg.eval.amp)
    protocol = protocol_module(cfg.data.format)
    if not distributed.is_distributed():
        summary = protocol.validation_summary(predictor, cfg, progress)
    elif getattr(protocol, "SHARDED", False):    # each rank its share, merged
        summary = protocol.validation_summary(predictor, cfg, progress, shard=distributed.shard())
    else:                                        # rank 0 alone, the others wait for it
        summary = distributed.run_on_main(protocol.validation_summary, predictor, cfg, progress)
    model.train()
    return summary


def validation_figures(summary: dict) -> dict[str, float]:
    """The figures of a validation summary to log: every number of ``summary["overall"]``
    but the sample count (J, F, JF, object accuracy, or a benchmark's own figures)."""
    return {k: float(v) for k, v in summary["overall"].items()
            if k != "count" and isinstance(v, (int, float))}


def plot_run_curves(run_dir: Path) -> None:
    """``curves.png`` from ``metrics.csv`` (none without matplotlib, the plots extra); a
    failure is a warning, never a lost run."""
    if optional_module("matplotlib", "no curves.png") is None:
        return
    try:
        from rvos.viz import plot_training_curves

        plot_training_curves(run_dir / "metrics.csv", run_dir / "curves.png")
    except Exception as e:  # a plot must never cost a finished training run
        _log.warning(f"could not plot training curves: {e}")
