"""Loss primitives shared by the model families (each family's criterion lives in its folder).

All per-pixel losses take logits and targets of the same shape (N, ...) and average over
N and pixels; ``dice_loss`` is computed per mask over its pixels, then averaged. Frames
without ground truth (``ClipBatch.labelled`` False) are dropped before a loss sees them
(:func:`labelled_frames`), so they add neither an "object" nor a "background" target.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def labelled_frames(x: Tensor, labelled: Tensor) -> Tensor:
    """The frames of ``x`` (B, T, ...) where ``labelled`` (B, T) bool is True, as (N, ...)
    in (b, t) order: ``x.flatten(0, 1)`` when every frame is labelled."""
    return x[labelled.to(device=x.device, dtype=torch.bool)]


def no_loss(x: Tensor) -> Tensor:
    """A zero loss still attached to ``x``'s graph (a batch without any labelled frame)."""
    return x.sum() * 0.0


def dice_loss(logits: Tensor, targets: Tensor, eps: float = 1.0) -> Tensor:
    """1 - soft Dice per mask, averaged. logits, targets: (N, *pixels)."""
    probs = logits.sigmoid().flatten(1)
    targets = targets.flatten(1).to(probs.dtype)
    inter = (probs * targets).sum(1)
    total = probs.sum(1) + targets.sum(1)
    return (1 - (2 * inter + eps) / (total + eps)).mean()


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25,
                       gamma: float = 2.0) -> Tensor:
    """Focal loss (Lin et al. 2017) averaged over every element. alpha < 0 disables
    the class balancing term."""
    targets = targets.to(logits.dtype)
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.mean()


def weighted_total(losses: dict[str, Tensor], weights: dict[str, float]) -> Tensor:
    """sum(weights[k] * losses[k]) over the weighted names (unweighted ones are logged only)."""
    missing = [k for k in weights if k not in losses]
    if missing:
        raise KeyError(f"criterion returned no loss named {missing}")
    return sum(weights[k] * losses[k] for k in weights if weights[k] != 0)
