"""Training objectives of the track-grounding model: the segmenter's dense targets and
losses, and the scorer's cross-entropy over a clip's tracks."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from rvos.losses import dice_loss
from rvos.models.grounding.segmenter import SegmenterOutput, cell_centres


@dataclass
class SegmenterTargets:
    """fg (N, H, W) float; heatmap (N, 1, h, w) Gaussians at object centres (1 at each
    centre's cell); offsets (N, 2, h, w) (dy, dx) pixels from a cell centre to the centre of
    the object covering it; on_object (N, h, w) bool cells covered by an object."""

    fg: Tensor
    heatmap: Tensor
    offsets: Tensor
    on_object: Tensor


def segmenter_targets(labels: Tensor, stride: int = 4, min_area: int = 4) -> SegmenterTargets:
    """labels (N, H, W) integer object ids (0 = background) -> :class:`SegmenterTargets`.

    An object's centre is the centroid of its visible pixels; its Gaussian has a standard
    deviation of max(2, 0.2 * sqrt(area)) pixels. Objects under ``min_area`` pixels are
    foreground but get no centre (too little shows to find them reliably).
    """
    labels = labels.long()
    n, h, w = labels.shape
    h4, w4 = h // stride, w // stride
    grid = cell_centres(h4, w4, stride, labels.device)                   # (2, h4, w4)
    cells = F.interpolate(labels[:, None].float(), size=(h4, w4), mode="nearest")[:, 0].long()
    heat = torch.zeros(n, 1, h4, w4, device=labels.device)
    offsets = torch.zeros(n, 2, h4, w4, device=labels.device)
    ys = torch.arange(h, device=labels.device, dtype=torch.float32)
    xs = torch.arange(w, device=labels.device, dtype=torch.float32)
    for i in range(n):
        for obj in torch.unique(labels[i]).tolist():
            if obj == 0:
                continue
            m = (labels[i] == obj).float()
            area = float(m.sum())
            cy = float((m.sum(1) * ys).sum()) / area
            cx = float((m.sum(0) * xs).sum()) / area
            on = cells[i] == obj
            offsets[i, 0][on] = cy - grid[0][on]
            offsets[i, 1][on] = cx - grid[1][on]
            if area < min_area:
                continue
            sigma = max(2.0, 0.2 * area ** 0.5)
            g = torch.exp(-((grid[0] - cy) ** 2 + (grid[1] - cx) ** 2) / (2 * sigma ** 2))
            r = min(max(int(cy // stride), 0), h4 - 1)
            c = min(max(int(cx // stride), 0), w4 - 1)
            g[r, c] = 1.0
            heat[i, 0] = torch.maximum(heat[i, 0], g)
    return SegmenterTargets((labels > 0).float(), heat, offsets, cells > 0)


def centre_focal_loss(logits: Tensor, target: Tensor, alpha: float = 2.0, beta: float = 4.0) -> Tensor:
    """CenterNet's penalty-reduced focal loss (Zhou et al. 2019), per centre."""
    p = logits.float().sigmoid().clamp(1e-4, 1 - 1e-4)
    pos = target >= 1.0
    pos_loss = -((1 - p) ** alpha * torch.log(p))[pos].sum()
    neg_loss = -((1 - target) ** beta * p ** alpha * torch.log(1 - p))[~pos].sum()
    return (pos_loss + neg_loss) / pos.sum().clamp(min=1)


def segmenter_loss(out: SegmenterOutput, t: SegmenterTargets) -> dict[str, Tensor]:
    """Named losses: fg_bce, fg_dice (per frame), heatmap (focal), offset (L1 / 8 px)."""
    fg = out.fg_logits[:, 0].float()
    has_fg = t.fg.flatten(1).any(1)
    losses = {"fg_bce": F.binary_cross_entropy_with_logits(fg, t.fg),
              "fg_dice": dice_loss(fg[has_fg], t.fg[has_fg]) if has_fg.any() else fg.sum() * 0,
              "heatmap": centre_focal_loss(out.heatmap_logits, t.heatmap)}
    on = t.on_object[:, None].expand_as(t.offsets)
    losses["offset"] = ((out.offsets.float() - t.offsets).abs()[on].sum() / 8 /
                        on.sum().clamp(min=1))
    return losses


SEGMENTER_WEIGHTS = {"fg_bce": 1.0, "fg_dice": 1.0, "heatmap": 1.0, "offset": 1.0}


def grounding_loss(logits: Tensor, referred: Tensor) -> Tensor:
    """Cross-entropy over each sentence's tracks: logits (B, N) (-inf at padding), referred
    (B, N) bool (several: the sentence refers to their union) -> -log P(a referred track),
    averaged over sentences with at least one referred track."""
    log_p = logits.float().log_softmax(-1)
    picked = log_p.masked_fill(~referred, float("-inf")).logsumexp(-1)
    keep = referred.any(-1)
    if not keep.any():
        return logits.masked_fill(~torch.isfinite(logits), 0).sum() * 0
    return -picked[keep].mean()
