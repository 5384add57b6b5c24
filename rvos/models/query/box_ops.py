"""Box conversions and (generalised) IoU for normalised boxes.

Boxes are (cx, cy, w, h) or (x0, y0, x1, y1) in the last dimension.
"""

from __future__ import annotations

import torch
from torch import Tensor


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """(..., 4) (cx, cy, w, h) -> (..., 4) (x0, y0, x1, y1)."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


def xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """(..., 4) (x0, y0, x1, y1) -> (..., 4) (cx, cy, w, h)."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], -1)


def _area(boxes: Tensor) -> Tensor:
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)


def elementwise_generalized_iou(a: Tensor, b: Tensor, eps: float = 1e-7) -> Tensor:
    """GIoU of corresponding xyxy boxes: a, b (..., 4) -> (...) in [-1, 1]."""
    inter_lt = torch.maximum(a[..., :2], b[..., :2])
    inter_rb = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (inter_rb - inter_lt).clamp(min=0).prod(-1)
    union = _area(a) + _area(b) - inter
    iou = inter / (union + eps)
    hull_lt = torch.minimum(a[..., :2], b[..., :2])
    hull_rb = torch.maximum(a[..., 2:], b[..., 2:])
    hull = (hull_rb - hull_lt).clamp(min=0).prod(-1)
    return iou - (hull - union) / (hull + eps)


def pairwise_generalized_iou(a: Tensor, b: Tensor) -> Tensor:
    """GIoU of every pair: a (N, 4), b (M, 4) xyxy -> (N, M)."""
    return elementwise_generalized_iou(a[:, None, :], b[None, :, :])
