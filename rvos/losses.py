"""Dense mask losses and the baseline's criterion.

All per-pixel losses take logits and targets of the same shape (N, ...) and average over
N and pixels; ``dice_loss`` is computed per mask over its pixels, then averaged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rvos.config import DenseLossConfig
from rvos.data.batch import ClipBatch
from rvos.models.outputs import RVOSOutput


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


class DenseMaskCriterion(nn.Module):
    """The baseline's loss: BCE + Dice + Focal on the single predicted mask per frame.

    Expects ``output.mask_logits`` (B, T, 1, h, w); targets ``batch.masks`` (B, T, H, W)
    are resized (nearest) to h x w when the sizes differ. Returns the unweighted named
    losses; ``weights`` holds the config weights (0.3 BCE + 0.6 Dice + 0.1 Focal).
    """

    def __init__(self, cfg: DenseLossConfig):
        super().__init__()
        self.weights = {"bce": cfg.bce, "dice": cfg.dice, "focal": cfg.focal}
        self.focal_alpha = cfg.focal_alpha
        self.focal_gamma = cfg.focal_gamma

    def forward(self, output: RVOSOutput, batch: ClipBatch) -> dict[str, Tensor]:
        logits = output.mask_logits[:, :, 0].float()          # (B, T, h, w)
        targets = batch.masks.to(logits.dtype)
        if targets.shape[-2:] != logits.shape[-2:]:
            targets = F.interpolate(targets, size=logits.shape[-2:], mode="nearest")
        flat_logits = logits.flatten(0, 1)                     # (B*T, h, w)
        flat_targets = targets.flatten(0, 1)
        return {
            "bce": F.binary_cross_entropy_with_logits(flat_logits, flat_targets),
            "dice": dice_loss(flat_logits, flat_targets),
            "focal": sigmoid_focal_loss(flat_logits, flat_targets, self.focal_alpha,
                                        self.focal_gamma),
        }


def weighted_total(losses: dict[str, Tensor], weights: dict[str, float]) -> Tensor:
    """sum(weights[k] * losses[k]) over the weighted names (unweighted ones are logged only)."""
    missing = [k for k in weights if k not in losses]
    if missing:
        raise KeyError(f"criterion returned no loss named {missing}")
    return sum(weights[k] * losses[k] for k in weights if weights[k] != 0)
