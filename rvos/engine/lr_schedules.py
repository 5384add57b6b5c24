"""Learning-rate schedules of the clip trainer (``optim.schedule``), both stepped after every
optimizer step with the fractional epoch ``epoch + batches done / batches per epoch``:

* ``cosine_restarts``: torch's CosineAnnealingWarmRestarts (``optim.sched_t0``,
  ``sched_t_mult``, ``min_lr``);
* ``step``: :class:`StepDropLR`, ReferFormer's schedule. ReferFormer (``main.py``,
  ``main_pretrain.py``) builds ``MultiStepLR(optimizer, args.lr_drop)`` (gamma 0.1, the torch
  default) and steps it once after each epoch, so epoch e (0-based) trains at
  ``lr * gamma ** (number of milestones <= e)``. Its scripts: RefCOCO/+/g pre-training
  ``--epochs 12 --lr_drop 8 10`` (scripts/dist_pretrain.sh), Ref-YouTube-VOS
  ``--epochs 6 --lr_drop 3 5`` (scripts/dist_train_test_ytvos.sh), opts.py default [6, 8].
"""

from __future__ import annotations

import bisect

import torch

from rvos.config import OptimConfig


class StepDropLR:
    """Multiply every parameter group's initial learning rate by ``gamma`` once per
    milestone reached: at fractional epoch x the rate is ``initial * gamma ** k``, k = the
    number of milestones <= x. Stepped with the fractional epoch after each optimizer step,
    the drop at milestone m applies from the first step of epoch m, as ReferFormer's
    per-epoch MultiStepLR does. The rate is a function of x alone, so a resumed run follows
    the same rates."""

    def __init__(self, optimizer: torch.optim.Optimizer, milestones: tuple[int, ...] | list[int],
                 gamma: float = 0.1):
        if list(milestones) != sorted(set(milestones)):
            raise ValueError(f"milestones must be increasing, got {milestones}")
        self.optimizer = optimizer
        self.milestones = [int(m) for m in milestones]
        self.gamma = float(gamma)
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch = 0.0
        self._apply()

    def factor(self, epoch: float) -> float:
        """gamma ** (number of milestones <= epoch)."""
        return self.gamma ** bisect.bisect_right(self.milestones, epoch)

    def step(self, epoch: float) -> None:
        self.last_epoch = float(epoch)
        self._apply()

    def _apply(self) -> None:
        f = self.factor(self.last_epoch)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * f

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"schedule": "step", "milestones": list(self.milestones), "gamma": self.gamma,
                "base_lrs": list(self.base_lrs), "last_epoch": self.last_epoch}

    def load_state_dict(self, state: dict) -> None:
        """Restore the position and base rates; the milestones and gamma stay the config's
        (a resumed run with other ``lr_drop_*`` settings follows the new ones from here)."""
        if state.get("schedule") != "step":
            raise ValueError("not the state of a step schedule")
        self.base_lrs = [float(b) for b in state["base_lrs"]]
        self.last_epoch = float(state["last_epoch"])
        self._apply()


def build_scheduler(optimizer: torch.optim.Optimizer, o: OptimConfig):
    """The scheduler ``o.schedule`` names (see the module doc)."""
    if o.schedule == "step":
        return StepDropLR(optimizer, o.lr_drop_epochs, o.lr_drop_gamma)
    return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        optimizer, T_0=o.sched_t0, T_mult=o.sched_t_mult, eta_min=o.min_lr)


def schedule_of_state(state: dict) -> str:
    """Which schedule wrote a scheduler ``state_dict`` (checkpoints of earlier releases
    hold CosineAnnealingWarmRestarts states, which carry ``T_0``)."""
    return state.get("schedule", "cosine_restarts" if "T_0" in state else "unknown")
