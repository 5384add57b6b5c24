"""What every rvos model returns."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class RVOSOutput:
    """Predictions for a batch of clips, Q candidate objects (queries) per frame.

    mask_logits: (B, T, Q, h, w) mask logits at the model's output resolution (upsampled
                 to the input size H x W by the dense baseline; stride 4 for query models).
    scores:      (B, T, Q) logits that the query is the referred object in that frame.
    boxes:       (B, T, Q, 4) normalised (cx, cy, w, h) in [0, 1], or None when the model
                 predicts no boxes (the dense baseline).
    aux:         outputs of intermediate decoder layers (query models), same fields.
    extras:      model-specific tensors some losses need (e.g. contrastive embeddings).
    """

    mask_logits: Tensor
    scores: Tensor
    boxes: Tensor | None = None
    aux: list["RVOSOutput"] = field(default_factory=list)
    extras: dict[str, Tensor] = field(default_factory=dict)
