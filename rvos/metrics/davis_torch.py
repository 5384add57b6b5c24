"""J and F on torch tensors (CPU or GPU), with exactly the numbers of ``rvos.metrics.davis``.

Useful inside a training/evaluation loop whose masks already live on the GPU. Same rules as
``davis.py`` (official davis2017 ``metrics.py``): the boundary dilation is a convolution of
the one-pixel boundary map with the ``skimage`` disk placed as ``cv2.dilate`` places it
(counts of 0/1 values, exact in float32 and under TF32), all counts are integers, and the
final precision/recall/F arithmetic is float64, so results match the numpy path bit for bit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rvos.metrics.davis import DEFAULT_BOUND_TH, boundary_tolerance, disk_offsets


def _disk_kernel(radius: float, device: torch.device) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """(1, 1, n, n) float kernel and the (left, right, top, bottom) padding that reproduce
    ``dst(y, x) = any src(y + dy, x + dx)`` over the disk's offsets."""
    rows = disk_offsets(radius)
    lo = min(min(dy, lo_) for dy, lo_, _ in rows)
    hi = max(max(dy, hi_) for dy, _, hi_ in rows)
    n = hi - lo + 1
    kernel = torch.zeros((1, 1, n, n), dtype=torch.float32, device=device)
    for dy, dx_lo, dx_hi in rows:
        kernel[0, 0, dy - lo, dx_lo - lo: dx_hi - lo + 1] = 1.0
    return kernel, (-lo, hi, -lo, hi)


def seg2bmap_torch(seg: torch.Tensor) -> torch.Tensor:
    """Official one-pixel boundary map of (..., H, W) bool tensors (see ``davis.seg2bmap``)."""
    east = torch.zeros_like(seg)
    south = torch.zeros_like(seg)
    south_east = torch.zeros_like(seg)
    east[..., :, :-1] = seg[..., :, 1:]
    south[..., :-1, :] = seg[..., 1:, :]
    south_east[..., :-1, :-1] = seg[..., 1:, 1:]
    bmap = (seg ^ east) | (seg ^ south) | (seg ^ south_east)
    bmap[..., -1, :] = seg[..., -1, :] ^ east[..., -1, :]
    bmap[..., :, -1] = seg[..., :, -1] ^ south[..., :, -1]
    bmap[..., -1, -1] = False
    return bmap


def _dilate(bmap: torch.Tensor, kernel: torch.Tensor, pad: tuple[int, int, int, int]) -> torch.Tensor:
    counts = F.conv2d(F.pad(bmap[:, None].float(), pad), kernel)
    return counts[:, 0] > 0.5


def jaccard_and_f_torch(gt: torch.Tensor, pred: torch.Tensor, void: torch.Tensor | None = None,
                        bound_th: float = DEFAULT_BOUND_TH) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame J and F of (T, H, W) masks (non-zero = foreground) -> two (T,) float64
    tensors on the masks' device, equal to ``davis.jaccard_and_f``."""
    if gt.ndim != 3 or pred.shape != gt.shape or (void is not None and void.shape != gt.shape):
        raise ValueError(f"expected (T, H, W) masks of one shape, got {tuple(gt.shape)}, {tuple(pred.shape)}"
                         + ("" if void is None else f", {tuple(void.shape)}"))
    g, p = gt != 0, pred != 0
    keep = None if void is None else void == 0
    inter, union = g & p, g | p
    if keep is not None:
        inter, union = inter & keep, union & keep
    n_inter = inter.sum(dim=(1, 2)).double()
    n_union = union.sum(dim=(1, 2)).double()
    j = torch.where(n_union == 0, torch.ones_like(n_union), n_inter / n_union.clamp(min=1))
    if keep is not None:
        g, p = g & keep, p & keep
    fb, gb = seg2bmap_torch(p), seg2bmap_torch(g)
    kernel, pad = _disk_kernel(boundary_tolerance(gt.shape[1], gt.shape[2], bound_th), gt.device)
    fg_match = (fb & _dilate(gb, kernel, pad)).sum(dim=(1, 2)).double()
    gt_match = (gb & _dilate(fb, kernel, pad)).sum(dim=(1, 2)).double()
    n_fg = fb.sum(dim=(1, 2)).double()
    n_gt = gb.sum(dim=(1, 2)).double()
    one, zero = torch.ones_like(n_fg), torch.zeros_like(n_fg)
    precision = torch.where(n_fg == 0, one, fg_match / n_fg.clamp(min=1))
    precision = torch.where((n_fg > 0) & (n_gt == 0), zero, precision)
    recall = torch.where(n_gt == 0, one, gt_match / n_gt.clamp(min=1))
    recall = torch.where((n_fg == 0) & (n_gt > 0), zero, recall)
    denom = precision + recall
    f = torch.where(denom == 0, zero, 2 * precision * recall / torch.where(denom == 0, one, denom))
    return j, f
