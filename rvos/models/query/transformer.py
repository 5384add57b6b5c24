"""Deformable transformer encoder and decoder (Deformable DETR), per frame.

Shapes: N = frames (B * T), S = flattened tokens of all levels, Q = queries, C = width,
L = levels. Every frame is encoded and decoded on its own; the Q queries start the same
in every frame of a clip, which is what links "query q" across the clip.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rvos.models.deform_attn import MSDeformAttn, SpatialShapes
from rvos.models.query.layers import MLP, inverse_sigmoid


class FeedForward(nn.Module):
    """x <- LayerNorm(x + W2 dropout(relu(W1 x)))."""

    def __init__(self, dim: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x + self.dropout2(self.linear2(self.dropout1(F.relu(self.linear1(x))))))


class DeformableEncoderLayer(nn.Module):
    """Deformable self-attention over all levels + FFN (post-norm).

    forward(src (N, S, C), pos (N or 1, S, C), reference_points (S, L, 2), spatial_shapes)
    -> (N, S, C)
    """

    def __init__(self, dim: int, ffn_dim: int, dropout: float, num_levels: int, heads: int,
                 points: int, direct: bool = False):
        super().__init__()
        self.self_attn = MSDeformAttn(dim, num_levels, heads, points, use_direct=direct)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, ffn_dim, dropout)

    def forward(self, src: Tensor, pos: Tensor, reference_points: Tensor,
                spatial_shapes: SpatialShapes) -> Tensor:
        ref = reference_points[None].expand(src.shape[0], -1, -1, -1)
        attended = self.self_attn(src + pos, ref, src, spatial_shapes)
        return self.ffn(self.norm(src + self.dropout(attended)))


class DeformableEncoder(nn.Module):
    """A stack of :class:`DeformableEncoderLayer`; each token's reference point is its
    own pixel centre, seen on every level."""

    def __init__(self, layers: list[DeformableEncoderLayer]):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    @staticmethod
    def reference_points(spatial_shapes: SpatialShapes, device: torch.device) -> Tensor:
        """(S, L, 2) normalised (x, y) pixel centres of every token, repeated per level."""
        points = []
        for h, w in spatial_shapes:
            ys = (torch.arange(h, dtype=torch.float32, device=device) + 0.5) / h
            xs = (torch.arange(w, dtype=torch.float32, device=device) + 0.5) / w
            grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
            points.append(torch.stack([grid_x.flatten(), grid_y.flatten()], -1))
        return torch.cat(points)[:, None, :].expand(-1, len(spatial_shapes), -1)

    def forward(self, src: Tensor, pos: Tensor, spatial_shapes: SpatialShapes) -> Tensor:
        """src (N, S, C), pos (N or 1, S, C) -> memory (N, S, C)."""
        ref = self.reference_points(spatial_shapes, src.device)
        for layer in self.layers:
            src = layer(src, pos, ref, spatial_shapes)
        return src


class DeformableDecoderLayer(nn.Module):
    """Query self-attention, deformable cross-attention to the memory, FFN (post-norm).

    forward(tgt (N, Q, C), query_pos (N, Q, C), reference (N, Q, 2 | 4), memory (N, S, C),
            spatial_shapes) -> (N, Q, C)
    """

    def __init__(self, dim: int, ffn_dim: int, dropout: float, num_levels: int, heads: int,
                 points: int, direct: bool = False):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn = MSDeformAttn(dim, num_levels, heads, points, use_direct=direct)
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, ffn_dim, dropout)

    def forward(self, tgt: Tensor, query_pos: Tensor, reference: Tensor, memory: Tensor,
                spatial_shapes: SpatialShapes) -> Tensor:
        q = k = tgt + query_pos
        tgt = self.norm1(tgt + self.dropout1(self.self_attn(q, k, tgt, need_weights=False)[0]))
        ref = reference[:, :, None, :].expand(-1, -1, len(spatial_shapes), -1)
        attended = self.cross_attn(tgt + query_pos, ref, memory, spatial_shapes)
        return self.ffn(self.norm2(tgt + self.dropout2(attended)))


class DeformableDecoder(nn.Module):
    """Decoder layers with per-layer class and box heads and (optionally) iterative box
    refinement: each layer predicts a box relative to its input reference, and the next
    layer samples around that (detached) box.

    forward(tgt (N, Q, C), query_pos (N, Q, C), reference (N, Q, 2) normalised points,
            memory (N, S, C), spatial_shapes) -> (hs (D, N, Q, C), scores (D, N, Q) logits,
            boxes (D, N, Q, 4) normalised cxcywh) for the D layers.
    ``between_layers`` (N, Q, C) -> (N, Q, C), if given, runs on every layer's output
    before its heads (e.g. BIFIT's inter-frame interaction).
    """

    def __init__(self, layers: list[DeformableDecoderLayer], dim: int, box_refine: bool = True):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.box_refine = box_refine
        heads = len(layers) if box_refine else 1     # without refinement one head is shared
        self.class_heads = nn.ModuleList(nn.Linear(dim, 1) for _ in range(heads))
        self.box_heads = nn.ModuleList(MLP(dim, dim, 4, 3) for _ in range(heads))
        prior = -torch.log(torch.tensor((1 - 0.01) / 0.01))   # initial score 0.01
        for head in self.class_heads:
            nn.init.constant_(head.bias, float(prior))
        for head in self.box_heads:
            nn.init.zeros_(head.layers[-1].weight)
            nn.init.zeros_(head.layers[-1].bias)
            with torch.no_grad():
                head.layers[-1].bias[2:] = -2.0              # initial boxes ~12% of the frame

    def forward(self, tgt: Tensor, query_pos: Tensor, reference: Tensor, memory: Tensor,
                spatial_shapes: SpatialShapes, between_layers: Callable[[Tensor], Tensor] | None = None
                ) -> tuple[Tensor, Tensor, Tensor]:
        hs, scores, boxes = [], [], []
        out = tgt
        for i, layer in enumerate(self.layers):
            out = layer(out, query_pos, reference, memory, spatial_shapes)
            if between_layers is not None:
                out = between_layers(out)
            score, box = self.predict(i, out, reference)
            hs.append(out)
            scores.append(score)
            boxes.append(box)
            if self.box_refine:
                reference = box.detach()
        return torch.stack(hs), torch.stack(scores), torch.stack(boxes)

    def predict(self, layer: int, out: Tensor, reference: Tensor) -> tuple[Tensor, Tensor]:
        """Layer ``layer``'s class and box heads on its output ``out`` (N, Q, C), the box
        relative to the ``reference`` (N, Q, 2 | 4) that layer sampled around -> score
        (N, Q) logits, box (N, Q, 4) normalised cxcywh."""
        head = layer if self.box_refine else 0
        delta = self.box_heads[head](out)
        if reference.shape[-1] == 4:
            box = (delta + inverse_sigmoid(reference)).sigmoid()
        else:
            box = torch.cat([delta[..., :2] + inverse_sigmoid(reference), delta[..., 2:]], -1).sigmoid()
        return self.class_heads[head](out)[..., 0], box
