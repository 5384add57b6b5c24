"""Objects of single frames -> tracks over a clip, and what a track is made of.

A :class:`TrackSet` holds Q tracks over T frames: their masks, a per-frame appearance
vector (frozen features pooled over the mask, plus the mean colour), a per-frame geometry
vector (centre, size, box, visibility) and a visibility flag. Tracks are linked frame to
frame by :func:`link_tracks`: a detection joins the track whose constant-velocity
prediction is nearest (in object diameters) and whose appearance is most alike, under a
gate; a track unseen for up to ``max_gap`` frames (occluded, briefly out of view) can
still be re-linked, and an object entering the frame starts a new track.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor
from torchvision.ops import roi_align

GEOMETRY_DIM = 7   # cx, cy (in [-1, 1]), sqrt(area), box w, box h (in image sizes), log area, visible


@dataclass
class TrackSet:
    """Q tracks over T frames of one clip.

    appearance (Q, T, D) float (zero where not visible); geometry (Q, T, GEOMETRY_DIM) float
    (zero where not visible); visible (Q, T) bool; area (Q, T) pixels; masks (Q, T, H, W)
    bool at the input size, or None where only the tokens are kept (training banks).
    """

    appearance: Tensor
    geometry: Tensor
    visible: Tensor
    area: Tensor
    masks: Tensor | None = None

    def __len__(self) -> int:
        return int(self.visible.shape[0])

    @cached_property
    def mean_appearance(self) -> Tensor:
        """(Q, D): area-weighted mean of the per-frame appearance over visible frames."""
        weight = self.area / self.area.sum(1, keepdim=True).clamp(min=1)
        return (self.appearance * weight[..., None]).sum(1)

    def without_masks(self) -> "TrackSet":
        """The tokens alone (training banks keep thousands of these)."""
        return TrackSet(self.appearance, self.geometry, self.visible, self.area)


SILHOUETTE = 12    # the silhouette descriptor is SILHOUETTE x SILHOUETTE


def appearance_dim(channels: list[int]) -> int:
    """Per-frame appearance size: pooled maps, mean colour, silhouette."""
    return sum(channels) + 3 + SILHOUETTE * SILHOUETTE


def silhouettes(masks: Tensor, size: int = SILHOUETTE) -> Tensor:
    """masks (K, T, H, W) bool -> (K, T, size * size): each mask resampled (roi_align) from
    the square around its box (side = the longer box side, so the aspect ratio shows) to
    size x size; the object's outline, free of its colour and of the background. Zero where
    the mask is empty."""
    k, t, h, w = masks.shape
    m = masks.view(k * t, 1, h, w).float()
    rows, cols = m[:, 0].amax(-1) > 0, m[:, 0].amax(-2) > 0           # (KT, H), (KT, W)

    def span(on: Tensor, n: int) -> tuple[Tensor, Tensor]:
        idx = torch.arange(n, device=masks.device)
        return (torch.where(on, idx, n).amin(-1).float(),
                torch.where(on, idx, -1).amax(-1).float() + 1)

    y0, y1 = span(rows, h)
    x0, x1 = span(cols, w)
    side = torch.maximum(y1 - y0, x1 - x0).clamp(min=1)
    cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
    boxes = torch.stack([torch.arange(k * t, device=masks.device, dtype=torch.float32),
                         cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], 1)
    out = roi_align(m, boxes, (size, size), spatial_scale=1.0, sampling_ratio=2, aligned=True)
    return out.view(k, t, -1) * rows.any(-1).view(k, t, 1)


def pool_objects(maps: list[Tensor], rgb: Tensor, masks: Tensor) -> Tensor:
    """Appearance of objects: maps [(T, C_i, h_i, w_i)] frozen features, rgb (T, 3, H, W)
    normalised frame, masks (K, T, H, W) bool -> (K, T, :func:`appearance_dim`): each map
    averaged over the object's mask (resampled to the map by area), its mean colour, and its
    silhouette (:func:`silhouettes`)."""
    k, t, h, w = masks.shape
    if k == 0:
        return rgb.new_zeros(0, t, sum(m.shape[1] for m in maps) + rgb.shape[1] + SILHOUETTE ** 2)
    weight = masks.float().view(k * t, 1, h, w)
    pooled = []
    for fmap in [rgb, *maps]:                                            # finest first
        size = tuple(fmap.shape[-2:])
        if weight.shape[-2:] != size:
            sh, sw = weight.shape[-2] // size[0], weight.shape[-1] // size[1]
            exact = weight.shape[-2] == sh * size[0] and weight.shape[-1] == sw * size[1]
            # area resampling: a plain average pool (cheap) where the sizes divide
            weight = (F.avg_pool2d(weight, (sh, sw)) if exact
                      else F.adaptive_avg_pool2d(weight, size))
        wv = weight.view(k, t, -1)                                       # (K, T, hw)
        total = torch.einsum("ktp,tcp->ktc", wv, fmap.float().flatten(2))
        pooled.append(total / wv.sum(-1, keepdim=True).clamp(min=1e-6))
    return torch.cat(pooled[1:] + pooled[:1] + [silhouettes(masks)], -1)


def geometry(masks: Tensor) -> Tensor:
    """masks (K, T, H, W) bool -> (K, T, GEOMETRY_DIM): centre (x, y) in [-1, 1], sqrt of the
    area, box width and height (all relative to the larger image side; box relative to
    width/height), log area, visible; zero where the mask is empty."""
    k, t, h, w = masks.shape
    m = masks.float()
    area = m.sum((-2, -1))                                               # (K, T)
    ys = torch.arange(h, dtype=torch.float32, device=masks.device)
    xs = torch.arange(w, dtype=torch.float32, device=masks.device)
    safe = area.clamp(min=1)
    cy = (m.sum(-1) * ys).sum(-1) / safe
    cx = (m.sum(-2) * xs).sum(-1) / safe
    rows, cols = m.amax(-1) > 0, m.amax(-2) > 0                          # (K, T, H), (K, T, W)
    def extent(on: Tensor, n: int) -> Tensor:
        idx = torch.arange(n, device=masks.device)
        hi = torch.where(on, idx, -1).amax(-1)
        lo = torch.where(on, idx, n).amin(-1)
        return (hi - lo + 1).clamp(min=0).float()
    side = float(max(h, w))
    vis = area > 0
    g = torch.stack([2 * (cx + 0.5) / w - 1, 2 * (cy + 0.5) / h - 1, area.sqrt() / side,
                     extent(cols, w) / w, extent(rows, h) / h,
                     torch.log1p(area) / np.log(side * side), vis.float()], -1)
    return g * vis[..., None]


def track_set(maps: list[Tensor], rgb: Tensor, masks: Tensor,
              appearance: Tensor | None = None) -> TrackSet:
    """A :class:`TrackSet` of tracks given by their masks (Q, T, H, W) bool; maps
    [(T, C_i, h_i, w_i)] and rgb (T, 3, H, W) of the clip. ``appearance`` (Q, T, D): the
    per-frame :func:`pool_objects` of these masks where the caller already has it."""
    visible = masks.flatten(2).any(-1)
    if appearance is None:
        appearance = pool_objects(maps, rgb, masks)
    return TrackSet(appearance * visible[..., None], geometry(masks), visible,
                    masks.flatten(2).sum(-1).float(), masks)


@dataclass
class _Track:
    frames: dict[int, int]          # frame -> detection index in that frame
    centre: np.ndarray              # (2,) last seen (y, x)
    velocity: np.ndarray            # (2,) per frame
    appearance: np.ndarray          # (D,) unit vector, running mean
    diameter: float
    last: int


def link_tracks(centres: list[np.ndarray], areas: list[np.ndarray], appearances: list[np.ndarray],
                max_gap: int = 8, max_distance: float = 2.5,
                appearance_weight: float = 2.0) -> list[dict[int, int]]:
    """Link per-frame detections into tracks.

    centres[t] (K_t, 2) (y, x) pixels, areas[t] (K_t,) pixels, appearances[t] (K_t, D) of
    frame t's detections. Returns one dict per track: frame -> detection index. Costs:
    distance to the track's constant-velocity prediction in object diameters, plus
    ``appearance_weight`` x (1 - cosine similarity); pairs farther than ``max_distance``
    diameters (growing with the gap) are never linked.
    """
    tracks: list[_Track] = []
    for t, (c, a, f) in enumerate(zip(centres, areas, appearances)):
        f = f / np.linalg.norm(f, axis=1, keepdims=True).clip(min=1e-6) if len(f) else f
        diam = np.sqrt(np.maximum(a, 1.0) * 4 / np.pi) if len(a) else a
        active = [i for i, tr in enumerate(tracks) if t - tr.last <= max_gap]
        matched: dict[int, int] = {}
        if active and len(c):
            cost = np.full((len(active), len(c)), np.inf)
            for r, i in enumerate(active):
                tr = tracks[i]
                gap = t - tr.last
                predicted = tr.centre + tr.velocity * gap
                scale = np.maximum(np.maximum(tr.diameter, diam), 4.0)
                dist = np.linalg.norm(c - predicted, axis=1) / scale
                app = 1 - f @ tr.appearance
                ok = dist <= max_distance * (1 + 0.25 * (gap - 1))
                cost[r, ok] = dist[ok] + appearance_weight * app[ok]
            finite = np.where(np.isfinite(cost), cost, 1e6)
            rows, cols = linear_sum_assignment(finite)
            for r, k in zip(rows, cols):
                if np.isfinite(cost[r, k]):
                    matched[k] = active[r]
        for k in range(len(c)):
            if k in matched:
                tr = tracks[matched[k]]
                gap = t - tr.last
                step = (c[k] - tr.centre) / gap
                tr.velocity = step if len(tr.frames) == 1 else 0.5 * tr.velocity + 0.5 * step
                tr.centre, tr.last, tr.diameter = c[k].astype(float), t, float(diam[k])
                mixed = 0.7 * tr.appearance + 0.3 * f[k]
                tr.appearance = mixed / max(np.linalg.norm(mixed), 1e-6)
                tr.frames[t] = k
            else:
                tracks.append(_Track({t: k}, c[k].astype(float), np.zeros(2), f[k].copy(),
                                     float(diam[k]), t))
    return [tr.frames for tr in tracks]
