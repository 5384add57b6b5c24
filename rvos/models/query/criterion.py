"""Loss of the query-based models: match one query per clip, then score it.

Named losses (unweighted), for the final decoder layer and ``<name>_<i>`` for aux layer i:

    class  sigmoid focal loss of every query's score in every frame; the target is 1 for
           the matched query in frames where the object is visible, 0 elsewhere; summed
           over queries, averaged over frames (DETR-family normalisation)
    bbox   L1 of the matched query's box, averaged over visible frames
    giou   1 - GIoU of the matched query's box, averaged over visible frames
    mask   per-pixel sigmoid focal loss of the matched query's masks (upsampled to the
           target size) in every frame (an absent object's target is empty)
    dice   1 - Dice of the same, per frame, averaged over frames
    contrast  (SOC, only when weighted) video-level contrastive loss: each sentence's text
           embedding against every video-level object embedding of the batch; the positive
           is its matched query's, the negatives the other queries of its clip and all
           queries of the other sentences (see :func:`video_text_contrast`)

SgMg's coarse masks (``output.extras["sgmg_coarse_logits"]``, when present) add
``sgmg_coarse_mask`` and ``sgmg_coarse_dice``: the same two losses of the matched query's
coarse masks (see rvos/models/query/sgmg.py).

Frames without ground truth (``batch.labelled`` False: A2D-Sentences labels one frame of
each clip) are left out of every loss and of the matching costs: their scores, boxes and
masks are not pushed towards the object nor towards the background.

``weights`` maps every name to its config weight (aux layers reuse the final weights).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rvos.data.batch import ClipBatch
from rvos.losses import dice_loss, labelled_frames, no_loss, sigmoid_focal_loss
from rvos.models.query.matcher import ClipMatcher
from rvos.models.outputs import RVOSOutput
from rvos.models.query.box_ops import cxcywh_to_xyxy, elementwise_generalized_iou
from rvos.models.query.sgmg import SGMG_LOSS_NAMES, coarse_mask_losses

LOSS_NAMES = ("class", "bbox", "giou", "mask", "dice")
METHOD_LOSS_NAMES = ("contrast",) + SGMG_LOSS_NAMES   # returned only when weighted: SOC, SgMg


class QueryCriterion(nn.Module):
    """forward(output: RVOSOutput, batch: ClipBatch) -> dict of named losses (see module doc).

    ``output.mask_logits`` (B, T, Q, h, w), ``scores`` (B, T, Q), ``boxes`` (B, T, Q, 4),
    ``aux`` the earlier decoder layers; targets from ``batch`` (one object per clip).
    """

    def __init__(self, matcher: ClipMatcher, weights: dict[str, float], num_aux: int = 0,
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0):
        super().__init__()
        unknown = set(weights) - set(LOSS_NAMES + METHOD_LOSS_NAMES)
        if unknown:
            raise ValueError(f"unknown loss names {sorted(unknown)}; "
                             f"known: {LOSS_NAMES + METHOD_LOSS_NAMES}")
        self.matcher = matcher
        self.num_aux = num_aux
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma
        self.weights = dict(weights)
        for i in range(num_aux):
            self.weights.update({f"{k}_{i}": v for k, v in weights.items()})

    def layer_losses(self, output: RVOSOutput, batch: ClipBatch) -> dict[str, Tensor]:
        """The five losses of one decoder layer's output."""
        b, t, q = output.scores.shape
        matches = self.matcher(output, batch)
        query = torch.stack([rows[0] for rows, _ in matches]).to(output.scores.device)   # (B,)
        labelled = batch.labelled.to(device=output.scores.device, dtype=torch.bool)      # (B, T)
        valid = batch.valid & labelled                                                   # (B, T)
        num_valid = valid.sum().clamp(min=1).float()

        scores = output.scores.float()
        target_cls = torch.zeros_like(scores)
        target_cls[torch.arange(b), :, query] = valid.float()
        if labelled.any():   # summed over Q, averaged over labelled frames
            loss_class = sigmoid_focal_loss(labelled_frames(scores, labelled),
                                            labelled_frames(target_cls, labelled),
                                            self.focal_alpha, self.focal_gamma) * q
        else:
            loss_class = no_loss(scores)

        picked = torch.arange(b, device=scores.device)
        losses = {"class": loss_class}
        if output.boxes is not None:
            boxes = output.boxes[picked, :, query].float()                    # (B, T, 4)
            target_boxes = batch.boxes.float()
            l1 = (boxes - target_boxes).abs().sum(-1)                         # (B, T)
            giou = elementwise_generalized_iou(cxcywh_to_xyxy(boxes), cxcywh_to_xyxy(target_boxes))
            losses["bbox"] = (l1 * valid).sum() / num_valid
            losses["giou"] = ((1 - giou) * valid).sum() / num_valid
        else:
            losses["bbox"] = losses["giou"] = scores.new_zeros(())

        masks = output.mask_logits[picked, :, query].float()                  # (B, T, h, w)
        target_masks = batch.masks.float()
        if masks.shape[-2:] != target_masks.shape[-2:]:
            masks = F.interpolate(masks, size=target_masks.shape[-2:], mode="bilinear",
                                  align_corners=False)
        if labelled.any():
            masks = labelled_frames(masks, labelled)                          # (N, h, w)
            target_masks = labelled_frames(target_masks, labelled)
            losses["mask"] = sigmoid_focal_loss(masks, target_masks, self.focal_alpha,
                                                self.focal_gamma)
            losses["dice"] = dice_loss(masks, target_masks)
        else:
            losses["mask"] = losses["dice"] = no_loss(masks)
        if "contrast" in self.weights:   # SOC
            if "soc_video_embed" not in output.extras:
                raise ValueError("loss.query.contrast needs a model with SOC's video-level "
                                 "object embeddings (model.query.soc.clusters)")
            losses["contrast"] = video_text_contrast(
                output.extras["soc_video_embed"], output.extras["soc_text_embed"], query,
                same_referent(batch))
        if "sgmg_coarse_logits" in output.extras:      # SgMg: the coarse masks are supervised too
            coarse = output.extras["sgmg_coarse_logits"][picked, :, query]
            losses.update(coarse_mask_losses(coarse, batch.masks, self.focal_alpha, self.focal_gamma,
                                             labelled))
        return losses

    def forward(self, output: RVOSOutput, batch: ClipBatch) -> dict[str, Tensor]:
        losses = self.layer_losses(output, batch)
        if len(output.aux) < self.num_aux:
            raise ValueError(f"criterion expects {self.num_aux} aux outputs, got {len(output.aux)}")
        for i, aux in enumerate(output.aux[:self.num_aux]):
            losses.update({f"{k}_{i}": v for k, v in self.layer_losses(aux, batch).items()})
        return losses


def same_referent(batch: ClipBatch) -> Tensor:
    """(B, B) bool: sentences i != j that refer to the same object of the same video
    (known object ids only), whose positives must not be each other's negatives."""
    keys = [(m.video, tuple(m.obj_ids)) if m.obj_ids else None for m in batch.meta]
    b = len(keys)
    same = torch.zeros(b, b, dtype=torch.bool)
    for i in range(b):
        for j in range(b):
            same[i, j] = i != j and keys[i] is not None and keys[i] == keys[j]
    return same.to(batch.valid.device)


def video_text_contrast(video: Tensor, text: Tensor, query: Tensor,
                        same: Tensor | None = None) -> Tensor:
    """SOC's multi-modal contrastive supervision at the video level.

    video (B, Q, C) video-level object embeddings, text (B, C) sentence embeddings, query (B,)
    each sentence's matched query, ``same`` (B, B) bool pairs of sentences with one referent.
    Similarity = dot product / C (the official scaling); for sentence i the candidates are
    all B*Q video embeddings of the batch, the positive is (i, query[i]); cross-entropy,
    averaged over sentences. A matched embedding of another sentence about the same object
    is left out of i's candidates rather than pushed away.
    """
    b, q, c = video.shape
    logits = text.float() @ video.float().reshape(b * q, c).T / c            # (B, B*Q)
    positive = torch.arange(b, device=video.device) * q + query
    if same is not None and same.any():
        excluded = torch.zeros_like(logits, dtype=torch.bool)
        rows, cols = same.nonzero(as_tuple=True)
        excluded[rows, positive[cols]] = True
        logits = logits.masked_fill(excluded, float("-inf"))
    return F.cross_entropy(logits, positive)
