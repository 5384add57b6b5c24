"""Multi-scale deformable attention (Deformable DETR, Zhu et al. 2021) in pure PyTorch.

Nothing here is compiled: bilinear sampling is ``F.grid_sample`` (the default path), and a
direct implementation of the same formula, :func:`ms_deform_attn_direct`, is kept for
tests and benchmarks.

Notation used in every docstring:
    N  batch (frames, for the per-frame transformers of rvos)
    Lq number of queries,  S = sum_l H_l * W_l flattened value tokens over the L levels
    M  attention heads,    D channels per head,   L levels,   P sampling points

The formula, per query q and head m:

    out[q, m] = sum_l sum_p A[q, m, l, p] * bilinear(V_l[m], loc[q, m, l, p])

with ``loc`` normalised to [0, 1] over each level's map ((0, 0) the top-left corner of the
top-left pixel, (1, 1) the bottom-right corner of the bottom-right one, i.e. pixel centres
at (i + 0.5) / W), and zeros outside the map.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SpatialShapes = list[tuple[int, int]]
GATHER_BLOCK = 1 << 21    # index entries per block of ms_deform_attn_gather (16 MB of int64)


def _check_shapes(value: Tensor, spatial_shapes: SpatialShapes, sampling_locations: Tensor,
                  attention_weights: Tensor) -> None:
    n, s, m, _ = value.shape
    total = sum(h * w for h, w in spatial_shapes)
    if s != total:
        raise ValueError(f"value has {s} tokens but the spatial shapes {spatial_shapes} "
                         f"hold {total}")
    if sampling_locations.shape[:3] != (n, sampling_locations.shape[1], m) or \
            sampling_locations.shape[3] != len(spatial_shapes) or sampling_locations.shape[-1] != 2:
        raise ValueError(f"sampling_locations must be (N, Lq, M, L, P, 2) = "
                         f"({n}, Lq, {m}, {len(spatial_shapes)}, P, 2), got "
                         f"{tuple(sampling_locations.shape)}")
    if attention_weights.shape != sampling_locations.shape[:-1]:
        raise ValueError(f"attention_weights must be (N, Lq, M, L, P) = "
                         f"{tuple(sampling_locations.shape[:-1])}, got "
                         f"{tuple(attention_weights.shape)}")


def ms_deform_attn(value: Tensor, spatial_shapes: SpatialShapes, sampling_locations: Tensor,
                   attention_weights: Tensor) -> Tensor:
    """Multi-scale deformable attention with ``grid_sample`` (one call per level).

    value: (N, S, M, D) per-head values of all levels, flattened level by level (row-major).
    spatial_shapes: L (H_l, W_l) pairs, finest first, matching the flattening of ``value``.
    sampling_locations: (N, Lq, M, L, P, 2) normalised (x, y) in [0, 1] (see module doc).
    attention_weights: (N, Lq, M, L, P), typically softmax-normalised over (L, P).
    Returns (N, Lq, M * D).
    """
    _check_shapes(value, spatial_shapes, sampling_locations, attention_weights)
    n, _, m, d = value.shape
    _, lq, _, num_levels, p, _ = sampling_locations.shape
    per_level = value.split([h * w for h, w in spatial_shapes], dim=1)
    grids = 2 * sampling_locations - 1  # grid_sample wants [-1, 1]
    # (N, Lq, M, L, P) -> (N*M, 1, Lq, L, P)
    weights = attention_weights.transpose(1, 2).reshape(n * m, 1, lq, num_levels, p)
    out = None
    for level, (h, w) in enumerate(spatial_shapes):
        # (N, H*W, M, D) -> (N*M, D, H, W)
        v = per_level[level].permute(0, 2, 3, 1).reshape(n * m, d, h, w)
        # (N, Lq, M, P, 2) -> (N*M, Lq, P, 2)
        g = grids[:, :, :, level].transpose(1, 2).reshape(n * m, lq, p, 2)
        sampled = F.grid_sample(v, g, mode="bilinear", padding_mode="zeros",
                                align_corners=False)                 # (N*M, D, Lq, P)
        # weight and reduce level by level: only one level's samples are alive at a time
        level_out = (sampled * weights[..., level, :]).sum(-1)        # (N*M, D, Lq)
        out = level_out if out is None else out + level_out
    return out.view(n, m * d, lq).transpose(1, 2).contiguous()


def bilinear_corners(loc: Tensor, height: int, width: int) -> list[tuple[Tensor, Tensor, Tensor]]:
    """The four integer neighbours of normalised locations and their bilinear weights.

    loc: (..., 2) normalised (x, y). Returns four (x_index, y_index, weight) triples of
    shape (...); a neighbour outside the map gets weight 0 (zero padding) and a clamped
    index, so it can be gathered safely.
    """
    x = loc[..., 0] * width - 0.5    # pixel centres at integer coordinates
    y = loc[..., 1] * height - 0.5
    x0, y0 = torch.floor(x), torch.floor(y)
    fx, fy = x - x0, y - y0
    corners = []
    for dx, dy, wgt in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)),
                        (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        xi, yi = x0 + dx, y0 + dy
        inside = (xi >= 0) & (xi <= width - 1) & (yi >= 0) & (yi <= height - 1)
        corners.append((xi.clamp(0, width - 1).long(), yi.clamp(0, height - 1).long(),
                        torch.where(inside, wgt, torch.zeros_like(wgt))))
    return corners


def ms_deform_attn_direct(value: Tensor, spatial_shapes: SpatialShapes,
                          sampling_locations: Tensor, attention_weights: Tensor) -> Tensor:
    """The same quantity as :func:`ms_deform_attn`, computed straight from the formula.

    Loops over levels and points; each sample is the explicit four-neighbour bilinear
    interpolation (:func:`bilinear_corners`), gathered from the value map. Vectorised over
    batch, queries and heads only, so it is slow: a reference, not a fast path.
    Shapes as in :func:`ms_deform_attn`.
    """
    _check_shapes(value, spatial_shapes, sampling_locations, attention_weights)
    n, _, m, d = value.shape
    _, lq, _, num_levels, p, _ = sampling_locations.shape
    out = value.new_zeros(n, lq, m, d)
    start = 0
    heads = torch.arange(m, device=value.device)
    batch = torch.arange(n, device=value.device)
    for level, (h, w) in enumerate(spatial_shapes):
        v = value[:, start:start + h * w]                            # (N, H*W, M, D)
        for point in range(p):
            loc = sampling_locations[:, :, :, level, point]          # (N, Lq, M, 2)
            a = attention_weights[:, :, :, level, point]             # (N, Lq, M)
            for xi, yi, wgt in bilinear_corners(loc, h, w):
                token = yi * w + xi                                  # (N, Lq, M)
                picked = v[batch[:, None, None], token, heads[None, None, :]]  # (N, Lq, M, D)
                out = out + (a * wgt)[..., None] * picked
        start += h * w
    return out.reshape(n, lq, m * d)


def ms_deform_attn_gather(value: Tensor, spatial_shapes: SpatialShapes,
                          sampling_locations: Tensor, attention_weights: Tensor) -> Tensor:
    """The same quantity as :func:`ms_deform_attn`, as one fused weighted gather.

    Every output row (query, head) is a weighted sum of value rows: four bilinear neighbours
    per sampling point, each weighted by (attention weight x bilinear weight), zero outside
    the map. ``F.embedding_bag(mode="sum", per_sample_weights=...)`` computes exactly such
    sums in one kernel, reading each value row as D contiguous floats from (N, S, M, D)
    without any permute; ``grid_sample`` reads the same samples from (N*M, D, H, W) maps, one
    channel plane at a time: about 1.9x faster on CPU at encoder sizes. Gradients reach the
    values, the attention weights and (through the bilinear weights) the locations, as
    ``grid_sample``'s do. Shapes as in :func:`ms_deform_attn`.
    """
    _check_shapes(value, spatial_shapes, sampling_locations, attention_weights)
    n, s, m, d = value.shape
    _, lq, _, num_levels, p, _ = sampling_locations.shape
    dev = value.device
    # per-level sizes broadcast over (N, Lq, M, L, P): all levels at once, no Python loop
    hs = torch.tensor([h for h, _ in spatial_shapes], device=dev).view(1, 1, 1, -1, 1)
    ws = torch.tensor([w for _, w in spatial_shapes], device=dev).view(1, 1, 1, -1, 1)
    starts = torch.tensor([0] + [h * w for h, w in spatial_shapes[:-1]], device=dev).cumsum(0)
    # row of (frame, token 0, head) in the (N*S*M, D) table
    frame_head = (torch.arange(n, device=dev).view(n, 1, 1, 1, 1) * (s * m)
                  + torch.arange(m, device=dev).view(1, 1, m, 1, 1))
    table = value.reshape(n * s * m, d)
    out = value.new_empty(n, lq, m, d)
    # queries in blocks of about GATHER_BLOCK index entries: the index and weight tensors of
    # a block stay small enough to be reused from the heap instead of fresh pages
    block = max(1, GATHER_BLOCK // (n * m * num_levels * p * 4))
    for q0 in range(0, lq, block):
        q1 = min(q0 + block, lq)
        loc = sampling_locations[:, q0:q1]
        x = loc[..., 0] * ws.to(loc.dtype) - 0.5                    # pixel centres at integers
        y = loc[..., 1] * hs.to(loc.dtype) - 0.5
        x0, y0 = x.floor(), y.floor()
        fx, fy = x - x0, y - y0
        x0, y0 = x0.long(), y0.long()
        wx = ((1 - fx) * ((x0 >= 0) & (x0 < ws)), fx * ((x0 >= -1) & (x0 < ws - 1)))
        wy = ((1 - fy) * ((y0 >= 0) & (y0 < hs)), fy * ((y0 >= -1) & (y0 < hs - 1)))
        xi = (torch.minimum(x0.clamp(min=0), ws - 1) * m,
              torch.minimum((x0 + 1).clamp(min=0), ws - 1) * m)
        rows = torch.empty(*x.shape, 4, dtype=torch.long, device=dev)
        weights = []
        a = attention_weights[:, q0:q1]
        for dy in (0, 1):
            yi = torch.minimum((y0 + dy).clamp(min=0), hs - 1)
            row_y = frame_head + (starts.view(1, 1, 1, -1, 1) + yi * ws) * m
            ay = a * wy[dy]
            for dx in (0, 1):
                torch.add(row_y, xi[dx], out=rows[..., 2 * dy + dx])
                weights.append(ay * wx[dx])
        weights = torch.stack(weights, -1).to(value.dtype)           # differentiable
        k = n * (q1 - q0) * m
        out[:, q0:q1] = F.embedding_bag(rows.view(k, -1), table, mode="sum",
                                        per_sample_weights=weights.view(k, -1)
                                        ).view(n, q1 - q0, m, d)
    return out.view(n, lq, m * d)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention layer: each query attends to P learned sampling
    points around its reference point on each of L levels, in each of M heads.

    forward(query (N, Lq, C), reference_points (N, Lq, L, 2 | 4), value (N, S, C),
            spatial_shapes, padding_mask (N, S) bool or None) -> (N, Lq, C)

    Reference points are normalised: (x, y) points, or (cx, cy, w, h) boxes, in which
    case the offsets are scaled by half the box size (Deformable DETR's box refinement).
    ``padding_mask`` zeroes values at padded tokens (True = padding).
    """

    def __init__(self, dim: int = 256, num_levels: int = 4, num_heads: int = 8,
                 num_points: int = 4, use_direct: bool = False, use_gather: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim, self.num_levels, self.num_heads, self.num_points = dim, num_levels, num_heads, num_points
        self.use_direct = use_direct
        self.use_gather = use_gather          # ms_deform_attn_gather (faster at inference)
        self.sampling_offsets = nn.Linear(dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Offsets start at zero weight with biases spreading the points of each head along
        # its own direction (head m points at angle 2*pi*m/M), k pixels out for point k.
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.num_heads, dtype=torch.float32) * (2 * math.pi / self.num_heads)
        directions = torch.stack([angles.cos(), angles.sin()], -1)
        directions = directions / directions.abs().max(-1, keepdim=True).values
        bias = directions[:, None, None, :].repeat(1, self.num_levels, self.num_points, 1)
        bias = bias * torch.arange(1, self.num_points + 1, dtype=torch.float32)[None, None, :, None]
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(bias.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def sampling(self, query: Tensor, reference_points: Tensor,
                 spatial_shapes: SpatialShapes) -> tuple[Tensor, Tensor]:
        """(sampling_locations (N, Lq, M, L, P, 2), attention_weights (N, Lq, M, L, P))."""
        n, lq, _ = query.shape
        m, num_levels, p = self.num_heads, self.num_levels, self.num_points
        offsets = self.sampling_offsets(query).view(n, lq, m, num_levels, p, 2)
        weights = self.attention_weights(query).view(n, lq, m, num_levels * p)
        weights = weights.softmax(-1).view(n, lq, m, num_levels, p)
        if reference_points.shape[-1] == 2:
            # offsets are in pixels of each level
            normaliser = query.new_tensor([[w, h] for h, w in spatial_shapes])   # (L, 2)
            locations = (reference_points[:, :, None, :, None, :]
                         + offsets / normaliser[None, None, None, :, None, :])
        elif reference_points.shape[-1] == 4:
            centre = reference_points[:, :, None, :, None, :2]
            size = reference_points[:, :, None, :, None, 2:]
            locations = centre + offsets / p * size * 0.5
        else:
            raise ValueError("reference_points must end in 2 (x, y) or 4 (cx, cy, w, h), got "
                             f"{tuple(reference_points.shape)}")
        return locations, weights

    def forward(self, query: Tensor, reference_points: Tensor, value: Tensor,
                spatial_shapes: SpatialShapes, padding_mask: Tensor | None = None) -> Tensor:
        n, s, _ = value.shape
        if len(spatial_shapes) != self.num_levels:
            raise ValueError(f"expected {self.num_levels} levels, got {len(spatial_shapes)}")
        v = self.value_proj(value)
        if padding_mask is not None:
            v = v.masked_fill(padding_mask[..., None], 0.0)
        v = v.view(n, s, self.num_heads, self.dim // self.num_heads)
        locations, weights = self.sampling(query, reference_points, spatial_shapes)
        attend = (ms_deform_attn_direct if self.use_direct
                  else ms_deform_attn_gather if self.use_gather else ms_deform_attn)
        out = attend(v, spatial_shapes, locations.to(v.dtype), weights.to(v.dtype))
        return self.output_proj(out)
