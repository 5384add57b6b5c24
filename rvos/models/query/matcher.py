"""Hungarian matching of queries to referred objects over a whole clip.

The query-based models predict Q candidates per frame, the same Q queries in every frame
of a clip. A referred object is matched to ONE query for the whole clip: the cost of a
(query, object) pair is its frame costs summed over the clip (divided by the clip length
T, which changes no assignment and keeps the weights independent of T):

    class  focal cost of the query's score, in frames where the object is visible
    bbox   L1 distance of the boxes, in frames where the object is visible
    giou   -GIoU of the boxes, in frames where the object is visible
    mask   per-pixel focal loss of the query's masks against the object's, all frames
    dice   -Dice coefficient of the query's masks over the clip against the object's

Frames without ground truth (``ClipBatch.labelled`` False) add no cost of any kind.

Only the clip's referred object is a target in rvos (M = 1), but the cost matrix and the
assignment are written for M objects so that multi-object data fit unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from rvos.data.batch import ClipBatch
from rvos.models.outputs import RVOSOutput
from rvos.models.query.box_ops import cxcywh_to_xyxy, pairwise_generalized_iou


def hungarian_match(cost: Tensor) -> tuple[Tensor, Tensor]:
    """Minimum-cost one-to-one assignment.

    cost: (Q, M). Returns (query_idx, target_idx), two int64 tensors of length min(Q, M),
    ordered by target index.
    """
    if cost.ndim != 2:
        raise ValueError(f"cost must be (Q, M), got {tuple(cost.shape)}")
    if not torch.isfinite(cost).all():
        raise ValueError("cost matrix holds NaN or inf")
    rows, cols = linear_sum_assignment(cost.detach().cpu().double().numpy())
    order = cols.argsort()
    return (torch.as_tensor(rows[order], dtype=torch.int64),
            torch.as_tensor(cols[order], dtype=torch.int64))


def focal_class_cost(logits: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Focal cost of calling each prediction positive: focal(positive) - focal(negative).

    logits: (...) -> (...); lower for confident positives.
    """
    prob = logits.sigmoid()
    pos = alpha * (1 - prob) ** gamma * -F.logsigmoid(logits)
    neg = (1 - alpha) * prob ** gamma * -F.logsigmoid(-logits)
    return pos - neg


def pairwise_mask_focal_cost(logits: Tensor, targets: Tensor, alpha: float = 0.25,
                             gamma: float = 2.0) -> Tensor:
    """Mean per-pixel focal loss of every (prediction, target) pair.

    logits: (Q, K) pixels of Q predictions; targets: (M, K) in [0, 1]. Returns (Q, M).
    The loss is linear in the target, so it is two matrix products, not Q*M*K memory.
    """
    prob = logits.sigmoid()
    loss_pos = -F.logsigmoid(logits) * (1 - prob) ** gamma      # if target = 1
    loss_neg = -F.logsigmoid(-logits) * prob ** gamma           # if target = 0
    if alpha >= 0:
        loss_pos, loss_neg = alpha * loss_pos, (1 - alpha) * loss_neg
    k = logits.shape[1]
    return (loss_pos @ targets.T + loss_neg @ (1 - targets).T) / k


def pairwise_dice_coefficient(logits: Tensor, targets: Tensor, eps: float = 1.0) -> Tensor:
    """Soft Dice coefficient of every pair: logits (Q, K), targets (M, K) -> (Q, M)."""
    prob = logits.sigmoid()
    inter = prob @ targets.T
    total = prob.sum(1)[:, None] + targets.sum(1)[None, :]
    return (2 * inter + eps) / (total + eps)


@dataclass
class ClipTargets:
    """The objects of one clip: masks (M, T, H, W), valid (M, T) bool, boxes (M, T, 4);
    labelled (T,) bool, the frames with ground truth (None: all)."""

    masks: Tensor
    valid: Tensor
    boxes: Tensor
    labelled: Tensor | None = None


def clip_targets(batch: ClipBatch) -> list[ClipTargets]:
    """One :class:`ClipTargets` with the single referred object (M = 1) per clip."""
    return [ClipTargets(batch.masks[b, None], batch.valid[b, None], batch.boxes[b, None],
                        batch.labelled[b]) for b in range(batch.batch_size)]


class ClipMatcher(nn.Module):
    """Assigns one query to each referred object over the whole clip (see module doc).

    forward(output, batch) -> B pairs (query_idx, target_idx) of int64 tensors, each of
    length 1 here (one referred object per clip).
    """

    def __init__(self, cost_class: float = 2.0, cost_bbox: float = 5.0, cost_giou: float = 2.0,
                 cost_mask: float = 2.0, cost_dice: float = 5.0, focal_alpha: float = 0.25,
                 focal_gamma: float = 2.0):
        super().__init__()
        if not any((cost_class, cost_bbox, cost_giou, cost_mask, cost_dice)):
            raise ValueError("at least one matching cost weight must be non-zero")
        self.cost_class, self.cost_bbox, self.cost_giou = cost_class, cost_bbox, cost_giou
        self.cost_mask, self.cost_dice = cost_mask, cost_dice
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma

    @torch.no_grad()
    def cost_matrix(self, scores: Tensor, boxes: Tensor | None, mask_logits: Tensor,
                    target: ClipTargets) -> Tensor:
        """Clip-level cost of every (query, object) pair.

        scores: (T, Q) logits; boxes: (T, Q, 4) cxcywh or None; mask_logits: (T, Q, h, w);
        target: M objects. Target masks are area-resized to h x w. Returns (Q, M).
        """
        t, q = scores.shape
        labelled = (torch.ones(t, dtype=torch.bool, device=scores.device) if target.labelled is None
                    else target.labelled.to(device=scores.device, dtype=torch.bool))   # (T,)
        valid = (target.valid.to(scores.device) & labelled).to(scores.dtype)   # (M, T)
        m = valid.shape[0]
        cost = scores.new_zeros(q, m)
        if self.cost_class:
            per_frame = focal_class_cost(scores.float(), self.focal_alpha, self.focal_gamma)  # (T, Q)
            cost += self.cost_class * (per_frame.T @ valid.T) / t
        if boxes is not None and (self.cost_bbox or self.cost_giou):
            pred = boxes.float()                                    # (T, Q, 4)
            tgt = target.boxes.float().transpose(0, 1)              # (T, M, 4)
            if self.cost_bbox:
                l1 = torch.cdist(pred, tgt, p=1)                    # (T, Q, M)
                cost += self.cost_bbox * (l1 * valid.T[:, None, :]).sum(0) / t
            if self.cost_giou:
                giou = torch.stack([pairwise_generalized_iou(cxcywh_to_xyxy(pred[i]),
                                                             cxcywh_to_xyxy(tgt[i]))
                                    for i in range(t)])             # (T, Q, M)
                cost += self.cost_giou * (-giou * valid.T[:, None, :]).sum(0) / t
        if (self.cost_mask or self.cost_dice) and labelled.any():
            h, w = mask_logits.shape[-2:]
            tgt_masks = target.masks.float()
            if tgt_masks.shape[-2:] != (h, w):
                tgt_masks = F.interpolate(tgt_masks, size=(h, w), mode="area")
            # the labelled frames only: T' of T
            pred = mask_logits[labelled].float().transpose(0, 1).flatten(1)   # (Q, T'*h*w)
            tgt_flat = tgt_masks[:, labelled].flatten(1)                      # (M, T'*h*w)
            if self.cost_mask:
                cost += self.cost_mask * pairwise_mask_focal_cost(pred, tgt_flat, self.focal_alpha,
                                                                  self.focal_gamma)
            if self.cost_dice:
                cost -= self.cost_dice * pairwise_dice_coefficient(pred, tgt_flat)
        return cost

    @torch.no_grad()
    def forward(self, output: RVOSOutput, batch: ClipBatch) -> list[tuple[Tensor, Tensor]]:
        indices = []
        for b, target in enumerate(clip_targets(batch)):
            boxes = None if output.boxes is None else output.boxes[b]
            cost = self.cost_matrix(output.scores[b], boxes, output.mask_logits[b], target)
            indices.append(hungarian_match(cost))
        return indices
