"""The baseline family's objective: BCE + Dice + Focal on its one mask per frame."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from rvos.config import DenseLossConfig
from rvos.data.batch import ClipBatch
from rvos.losses import dice_loss, labelled_frames, no_loss, sigmoid_focal_loss
from rvos.models.outputs import RVOSOutput


class DenseMaskCriterion(nn.Module):
    """The baseline's loss: BCE + Dice + Focal on the single predicted mask per frame.

    Expects ``output.mask_logits`` (B, T, 1, h, w); targets ``batch.masks`` (B, T, H, W)
    are resized (nearest) to h x w when the sizes differ. Only the frames of
    ``batch.labelled`` count. Returns the unweighted named
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
        flat_logits = labelled_frames(logits, batch.labelled)  # (N, h, w), N labelled frames
        flat_targets = labelled_frames(targets, batch.labelled)
        if flat_logits.shape[0] == 0:
            zero = no_loss(logits)
            return {"bce": zero, "dice": zero, "focal": zero}
        return {
            "bce": F.binary_cross_entropy_with_logits(flat_logits, flat_targets),
            "dice": dice_loss(flat_logits, flat_targets),
            "focal": sigmoid_focal_loss(flat_logits, flat_targets, self.focal_alpha,
                                        self.focal_gamma),
        }
