"""The batch types every model, loss and trainer in rvos exchanges.

A referring sample is one (video clip, sentence) pair with the mask of the one object the
sentence refers to. Shapes use B = batch, T = frames per clip, H x W = network input size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class ClipMeta:
    """Where a sample came from, enough to write predictions in the official layout."""

    video: str
    exp_id: str
    frame_names: list[str]          # T frame stems, e.g. ["00000", "00005", ...]
    orig_size: tuple[int, int]      # (height, width) of the source frames
    obj_ids: list[int] = field(default_factory=list)   # referred object id(s) in the label maps
    exp_type: str = ""              # expression type where the dataset has one (synthetic)
    flipped: bool = False           # the clip was horizontally flipped by augmentation


@dataclass
class ClipBatch:
    """A batch of referring clips.

    frames: (B, T, 3, H, W) float32, ImageNet-normalised RGB.
    masks:  (B, T, H, W) float32 in {0, 1}: the referred object's mask, zeros where absent.
    valid:  (B, T) bool: the referred object is visible in that frame.
    boxes:  (B, T, 4) float32 (cx, cy, w, h) normalised to [0, 1]; zeros where not valid.
    texts:  B sentences (after augmentation, e.g. left/right swapped on a flip).
    meta:   B :class:`ClipMeta`.
    labelled: (B, T) bool: the frame has ground truth (all True unless given). Datasets that
            annotate a few frames (A2D-Sentences: one frame per clip) leave the others
            False; the losses and the matcher then take no supervision from those frames,
            neither "object" nor "background".
    """

    frames: Tensor
    masks: Tensor
    valid: Tensor
    boxes: Tensor
    texts: list[str]
    meta: list[ClipMeta]
    labelled: Tensor | None = None

    def __post_init__(self) -> None:
        if self.labelled is None:
            self.labelled = torch.ones(self.valid.shape, dtype=torch.bool, device=self.valid.device)

    def to(self, device: torch.device | str) -> "ClipBatch":
        return ClipBatch(
            frames=self.frames.to(device, non_blocking=True),
            masks=self.masks.to(device, non_blocking=True),
            valid=self.valid.to(device, non_blocking=True),
            boxes=self.boxes.to(device, non_blocking=True),
            texts=self.texts,
            meta=self.meta,
            labelled=self.labelled.to(device, non_blocking=True),
        )

    @property
    def batch_size(self) -> int:
        return self.frames.shape[0]

    @property
    def num_frames(self) -> int:
        return self.frames.shape[1]


@dataclass
class ClipSample:
    """One referring clip before collation; shapes as in :class:`ClipBatch` without B."""

    frames: Tensor   # (T, 3, H, W)
    masks: Tensor    # (T, H, W)
    valid: Tensor    # (T,)
    boxes: Tensor    # (T, 4)
    text: str
    meta: ClipMeta
    labelled: Tensor | None = None   # (T,) bool; None: every frame labelled

    def __post_init__(self) -> None:
        if self.labelled is None:
            self.labelled = torch.ones(self.valid.shape, dtype=torch.bool)


def collate_clips(samples: list[ClipSample]) -> ClipBatch:
    """Stack samples of equal T, H, W into a :class:`ClipBatch`."""
    if not samples:
        raise ValueError("collate_clips needs at least one sample")
    return ClipBatch(
        frames=torch.stack([s.frames for s in samples]),
        masks=torch.stack([s.masks for s in samples]),
        valid=torch.stack([s.valid for s in samples]),
        boxes=torch.stack([s.boxes for s in samples]),
        texts=[s.text for s in samples],
        meta=[s.meta for s in samples],
        labelled=torch.stack([s.labelled for s in samples]),
    )


def masks_to_boxes_cxcywh(masks: Tensor) -> tuple[Tensor, Tensor]:
    """Tight boxes of binary masks.

    masks: (..., H, W) in {0, 1}. Returns boxes (..., 4) as normalised (cx, cy, w, h) and
    valid (...) bool (mask non-empty); boxes of empty masks are zeros.
    """
    h, w = masks.shape[-2:]
    m = masks > 0.5
    valid = m.flatten(-2).any(-1)
    ys = torch.arange(h, device=masks.device, dtype=torch.float32)
    xs = torch.arange(w, device=masks.device, dtype=torch.float32)
    rows = m.any(-1)  # (..., H)
    cols = m.any(-2)  # (..., W)
    big = 1e9
    y0 = torch.where(rows, ys, torch.full_like(ys, big)).amin(-1)
    y1 = torch.where(rows, ys, torch.full_like(ys, -big)).amax(-1) + 1
    x0 = torch.where(cols, xs, torch.full_like(xs, big)).amin(-1)
    x1 = torch.where(cols, xs, torch.full_like(xs, -big)).amax(-1) + 1
    boxes = torch.stack([(x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h], -1)
    boxes = torch.where(valid[..., None], boxes, torch.zeros_like(boxes))
    return boxes, valid
