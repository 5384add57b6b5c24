"""Class-agnostic instance segmentation on frozen multi-scale features.

Every object of a frame is found by a centre heatmap and every foreground pixel is given
to an object by a predicted offset to its centre (the grouping of Panoptic-DeepLab, Cheng
et al. 2020), so the number of objects is free and no query has to learn to specialise.
Foreground is predicted at the full input resolution from the upsampled pyramid and the
RGB frame, which keeps boundaries within a pixel or two of the truth on small objects.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class SegmenterOutput:
    """fg_logits (N, 1, H, W) foreground at the input size; heatmap_logits (N, 1, H/4, W/4)
    object-centre heatmap; offsets (N, 2, H/4, W/4) (dy, dx) in input pixels from a cell
    centre to the centre of its object."""

    fg_logits: Tensor
    heatmap_logits: Tensor
    offsets: Tensor


def _conv(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2), nn.ReLU(inplace=True))


class InstanceSegmenter(nn.Module):
    """maps (finest first: strides 4, 8, 16, ...) + normalised RGB -> :class:`SegmenterOutput`.

    Uses the first three maps (strides 4, 8, 16) in a small top-down pyramid of width
    ``dim``, then a ``refine``-wide full-resolution block on [upsampled pyramid, RGB].
    """

    def __init__(self, in_channels: list[int], dim: int = 64, refine: int = 16):
        super().__init__()
        self.laterals = nn.ModuleList(nn.Conv2d(c, dim, 1) for c in in_channels[:3])
        self.smooth = nn.ModuleList(_conv(dim, dim) for _ in in_channels[:3])
        self.head = _conv(dim, dim)
        self.heatmap = nn.Conv2d(dim, 1, 1)
        self.offset = nn.Conv2d(dim, 2, 1)
        self.to_refine = nn.Conv2d(dim, refine, 1)
        self.refine = nn.Sequential(_conv(refine + 3, refine), _conv(refine, refine),
                                    nn.Conv2d(refine, 1, 1))
        nn.init.constant_(self.heatmap.bias, -2.2)       # prior 0.1: few cells are centres

    def forward(self, maps: list[Tensor], rgb: Tensor) -> SegmenterOutput:
        x = None
        for i in reversed(range(len(self.laterals))):
            lateral = self.laterals[i](maps[i].to(rgb.dtype))
            if x is not None:
                lateral = lateral + F.interpolate(x, size=lateral.shape[-2:], mode="bilinear",
                                                  align_corners=False)
            x = self.smooth[i](lateral)
        x = self.head(x)                                                # (N, dim, H/4, W/4)
        up = F.interpolate(self.to_refine(x), size=rgb.shape[-2:], mode="bilinear",
                           align_corners=False)
        fg = self.refine(torch.cat([up, rgb], 1))
        return SegmenterOutput(fg, self.heatmap(x), self.offset(x) * 8.0)


def cell_centres(h: int, w: int, stride: int, device: torch.device) -> Tensor:
    """(2, h, w) (y, x) in input pixels of the centres of stride-``stride`` cells, as
    bilinear upsampling (align_corners=False) places them."""
    ys = torch.arange(h, device=device, dtype=torch.float32) * stride + (stride - 1) / 2
    xs = torch.arange(w, device=device, dtype=torch.float32) * stride + (stride - 1) / 2
    return torch.stack(torch.meshgrid(ys, xs, indexing="ij"))


@torch.no_grad()
def group_instances(out: SegmenterOutput, threshold: float = 0.25, nms_kernel: int = 3,
                    max_objects: int = 16, min_area: int = 6) -> tuple[Tensor, list[Tensor]]:
    """Per frame, the object each foreground pixel belongs to.

    Returns ``assign`` (N, H, W) long: -1 for background, else the index of the frame's
    object; and per frame the peak score of each of its objects (K_n,). Objects are
    heatmap peaks above ``threshold`` (local maxima in ``nms_kernel`` cells, at most
    ``max_objects``); each foreground pixel joins the peak nearest to where its offset
    points; objects left with fewer than ``min_area`` pixels are dropped and the indices
    renumbered 0..K_n-1.
    """
    n, _, h4, w4 = out.heatmap_logits.shape
    H, W = out.fg_logits.shape[-2:]
    stride = H // h4
    heat = out.heatmap_logits.float().sigmoid()
    peaks = (heat == F.max_pool2d(heat, nms_kernel, 1, nms_kernel // 2)) & (heat > threshold)
    pixel = cell_centres(H, W, 1, heat.device)                          # (2, H, W)
    offsets = F.interpolate(out.offsets.float(), size=(H, W), mode="bilinear", align_corners=False)
    votes = pixel[None] + offsets                                        # (N, 2, H, W)
    centres_grid = cell_centres(h4, w4, stride, heat.device)
    fg = out.fg_logits[:, 0] > 0
    assign = torch.full((n, H, W), -1, dtype=torch.long, device=heat.device)
    scores: list[Tensor] = []
    for i in range(n):
        flat = heat[i, 0].flatten()
        idx = torch.nonzero(peaks[i, 0].flatten(), as_tuple=True)[0]
        idx = idx[flat[idx].argsort(descending=True)][:max_objects]
        if len(idx) == 0 or not fg[i].any():
            scores.append(flat.new_zeros(0))
            continue
        centres = centres_grid.flatten(1)[:, idx]                        # (2, K)
        where = fg[i]
        v = votes[i][:, where]                                           # (2, P)
        nearest = ((v[:, :, None] - centres[:, None, :]) ** 2).sum(0).argmin(1)
        labels = torch.full((H, W), -1, dtype=torch.long, device=heat.device)
        labels[where] = nearest
        areas = torch.bincount(nearest, minlength=len(idx))
        keep = torch.nonzero(areas >= min_area, as_tuple=True)[0]
        remap = torch.full((len(idx) + 1,), -1, dtype=torch.long, device=heat.device)
        remap[keep] = torch.arange(len(keep), device=heat.device)
        assign[i] = remap[labels]                                        # -1 stays -1 (index -1)
        scores.append(flat[idx[keep]])
    return assign, scores
