"""ReferFormer's deformable transformer (Deformable DETR's, one frame at a time), at parity
with the official ``models/deformable_transformer.py`` for unpadded inputs.

Every frame is its own batch element: the encoder and the decoder never mix frames, which is
what lets the model run them over chunks of frames. Deformable attention samples through
``ms_deform_attn_gather`` (the same sums as the official ``grid_sample`` formulation, faster
on CPU). Parameter names are the official ones
(``encoder.layers.i.self_attn ...``, ``decoder.layers.i.cross_attn ...``, ``level_embed``,
``reference_points``), so a released checkpoint loads without renaming here.

Shapes: N frames, S = sum_l H_l W_l tokens over the L levels, C channels, Q queries.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rvos.models.deform_attn import MSDeformAttn, SpatialShapes
from rvos.models.query.transformer import DeformableEncoder
from rvos.models.referformer.layers import Attention, feed_forward, refine_boxes


class EncoderLayer(nn.Module):
    """Deformable self-attention then FFN, each post-norm."""

    def __init__(self, dim: int, ffn_dim: int, levels: int, heads: int, points: int):
        super().__init__()
        self.self_attn = MSDeformAttn(dim, levels, heads, points, use_gather=True)
        self.norm1 = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, src: Tensor, pos: Tensor, reference: Tensor,
                spatial_shapes: SpatialShapes, padding: Tensor | None = None) -> Tensor:
        """src, pos (N, S, C); reference (N, S, L, 2); padding (N or 1, S) bool, True at
        padded tokens (their values are zeroed), or None -> (N, S, C)."""
        src = self.norm1(src + self.self_attn(src + pos, reference, src, spatial_shapes, padding))
        return self.norm2(src + feed_forward(src, self.linear1, self.linear2))


class Encoder(nn.Module):
    def __init__(self, layers: list[EncoderLayer]):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, src: Tensor, pos: Tensor, spatial_shapes: SpatialShapes) -> Tensor:
        # every token's own pixel centre on every level (valid ratios are 1: nothing is padded)
        reference = DeformableEncoder.reference_points(spatial_shapes, src.device)
        reference = reference[None].expand(src.shape[0], -1, -1, -1)
        for layer in self.layers:
            src = layer(src, pos, reference, spatial_shapes)
        return src


class DecoderLayer(nn.Module):
    """Query self-attention, deformable cross-attention to the memory, FFN; post-norm."""

    def __init__(self, dim: int, ffn_dim: int, levels: int, heads: int, points: int):
        super().__init__()
        self.cross_attn = MSDeformAttn(dim, levels, heads, points, use_gather=True)
        self.norm1 = nn.LayerNorm(dim)
        self.self_attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, tgt: Tensor, query_pos: Tensor, reference: Tensor, memory: Tensor,
                spatial_shapes: SpatialShapes, padding: Tensor | None = None) -> Tensor:
        """tgt, query_pos (N, Q, C); reference (N, Q, L, 2 | 4); memory (N, S, C); padding
        (N or 1, S) bool at the memory's padded tokens, or None."""
        q = tgt + query_pos
        tgt = self.norm2(tgt + self.self_attn(q, q, tgt))
        tgt = self.norm1(tgt + self.cross_attn(tgt + query_pos, reference, memory, spatial_shapes,
                                               padding))
        return self.norm3(tgt + feed_forward(tgt, self.linear1, self.linear2))


class Decoder(nn.Module):
    """Decoder layers with Deformable DETR's iterative box refinement.

    ``bbox_embed``: the model's per-layer box MLPs when boxes are refined, else None. They
    are passed in, not owned: the official code also hangs them on the decoder, a duplicate
    that ``rvos convert`` drops.
    """

    def __init__(self, layers: list[DecoderLayer]):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, tgt: Tensor, query_pos: Tensor, reference: Tensor, memory: Tensor,
                spatial_shapes: SpatialShapes, bbox_embed: nn.ModuleList | None
                ) -> tuple[Tensor, list[Tensor]]:
        """tgt, query_pos (N, Q, C), reference (N, Q, 2) in [0, 1] ->
        (the last layer's output (N, Q, C), the references after every layer, each
        (N, Q, 4) with refinement, else the initial (N, Q, 2))."""
        levels = len(spatial_shapes)
        references = []
        for i, layer in enumerate(self.layers):
            tgt = layer(tgt, query_pos, reference[:, :, None].expand(-1, -1, levels, -1),
                        memory, spatial_shapes)
            if bbox_embed is not None:
                delta = bbox_embed[i](tgt)
                reference = refine_boxes(delta, reference)
            references.append(reference)
        return tgt, references


class DeformableTransformer(nn.Module):
    """Encoder + decoder over the L levels of each frame.

    forward(srcs: L maps (N, C, H_l, W_l), pos: L encodings (C, H_l, W_l), sentence (N, C)
    the decoder's input content, query_embed (Q, C), bbox_embed (see :class:`Decoder`)) ->
    (last decoder output (N, Q, C), initial reference (N, Q, 2), per-layer references,
    memory of the first L-1 levels as maps (N, C, H_l, W_l)).
    """

    def __init__(self, dim: int, heads: int, enc_layers: int, dec_layers: int, ffn_dim: int,
                 levels: int, enc_points: int, dec_points: int):
        super().__init__()
        self.encoder = Encoder([EncoderLayer(dim, ffn_dim, levels, heads, enc_points)
                                for _ in range(enc_layers)])
        self.decoder = Decoder([DecoderLayer(dim, ffn_dim, levels, heads, dec_points)
                                for _ in range(dec_layers)])
        self.level_embed = nn.Parameter(torch.zeros(levels, dim))
        self.reference_points = nn.Linear(dim, 2)

    def encode(self, srcs: list[Tensor], pos: list[Tensor]) -> tuple[Tensor, SpatialShapes]:
        """srcs: L maps (N, C, H_l, W_l), pos: L encodings (C, H_l, W_l) -> (memory (N, S, C),
        the levels' (H_l, W_l))."""
        n = srcs[0].shape[0]
        spatial_shapes = [(s.shape[-2], s.shape[-1]) for s in srcs]
        src = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)          # (N, S, C)
        lvl_pos = torch.cat([p.flatten(1).t() + self.level_embed[i]
                             for i, p in enumerate(pos)], 0)                      # (S, C)
        return self.encoder(src, lvl_pos[None].expand(n, -1, -1), spatial_shapes), spatial_shapes

    def initial_queries(self, sentence: Tensor, query_embed: Tensor
                        ) -> tuple[Tensor, Tensor, Tensor]:
        """sentence (N, C), query_embed (Q, C) -> the decoder's input content (N, Q, C),
        query positions (N, Q, C) and initial reference points (N, Q, 2)."""
        n, q = sentence.shape[0], query_embed.shape[0]
        query_pos = query_embed[None].expand(n, -1, -1)
        reference = self.reference_points(query_pos).sigmoid()                    # (N, Q, 2)
        return sentence[:, None, :].expand(-1, q, -1), query_pos, reference

    @staticmethod
    def memory_maps(memory: Tensor, spatial_shapes: SpatialShapes) -> list[Tensor]:
        """memory (N, S, C) -> its first L-1 levels as maps (N, C, H_l, W_l)."""
        n = memory.shape[0]
        maps, start = [], 0
        for h, w in spatial_shapes[:-1]:
            maps.append(memory[:, start:start + h * w].transpose(1, 2).reshape(n, -1, h, w))
            start += h * w
        return maps

    def forward(self, srcs: list[Tensor], pos: list[Tensor], sentence: Tensor,
                query_embed: Tensor, bbox_embed: nn.ModuleList | None
                ) -> tuple[Tensor, Tensor, list[Tensor], list[Tensor]]:
        memory, spatial_shapes = self.encode(srcs, pos)
        tgt, query_pos, reference = self.initial_queries(sentence, query_embed)
        hs, references = self.decoder(tgt, query_pos, reference, memory, spatial_shapes,
                                      bbox_embed)
        return hs, reference, references, self.memory_maps(memory, spatial_shapes)
