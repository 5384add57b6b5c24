"""BIFIT's own modules (Lan et al., "Bidirectional Correlation-Driven Inter-Frame
Interaction Transformer for Referring Video Object Segmentation", 2023), plugged into
the query core (:class:`rvos.models.query.model.QueryRVOS`).

Facts of the official model (LANMNG/BIFIT, models/referformer.py and
models/deformable_transformer.py at commit 3c88769) that these modules implement:

- Bidirectional vision-language interaction before the multimodal transformer. For every
  feature level in turn, the words attend to the clip's visual tokens of that level (all
  T frames at once, the tokens' 2-D sine positions added to the keys, no padding of the
  words needed since they are the queries) and are gated by the result, ``w <- w * attn``;
  the words carry the update on to the next level. The other direction, tokens attending
  to the words, is ReferFormer's early fusion and uses the encoder's *initial* words, so
  the two directions are independent given the projected levels. One attention is shared
  by all levels. The updated words replace the text encoder's pooled sentence: a
  Linear + tanh of their first token becomes the content of every object query (the
  mask branch keeps reading the encoder's own text features, here the base's sentence).
- Inter-frame interaction in the decoder: after every deformable decoder layer, the
  T x Q queries of a clip pass through a post-norm transformer encoder layer
  (self-attention without positional encoding, then an FFN of the transformer's width);
  ``--query_enc_layers`` (1) such layers, the same ones after every decoder layer. The
  queries of each frame are otherwise decoded on their own.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rvos.models.query.layers import sine_position_2d
from rvos.models.query.transformer import FeedForward

SENTENCE_POOLS = ("first", "mean")
WORD_FUSION_MODES = ("add", "multiply")


class VisionToWords(nn.Module):
    """The vision-to-language half of BIFIT's bidirectional interaction: the words attend
    to the clip's visual tokens, level after level, and the result is pooled to the
    sentence feature that seeds the object queries.

    words(levels [(B*T, C, h_l, w_l)], words (B, L, C), clips=B) -> updated words (B, L, C)
    forward(levels, words (B, L, C), word_padding (B, L) bool True at padding, clips=B)
        -> sentence (B, C)

    mode "multiply": ``w <- w * attn(w, tokens)`` (the official gating); "add":
    ``w <- LayerNorm(w + attn)``, the residual form the core's own fusion offers for
    training from scratch. pool "first": Linear + tanh of the first word (the official
    pooler, the encoder's [CLS]/<s> token); "mean": of the mean of the real words.
    """

    def __init__(self, dim: int, heads: int, mode: str = "multiply", pool: str = "first",
                 dropout: float = 0.0):
        super().__init__()
        if mode not in WORD_FUSION_MODES:
            raise ValueError(f"mode must be one of {WORD_FUSION_MODES}, got {mode!r}")
        if pool not in SENTENCE_POOLS:
            raise ValueError(f"pool must be one of {SENTENCE_POOLS}, got {pool!r}")
        self.dim, self.mode, self.pool = dim, mode, pool
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(dim) if mode == "add" else nn.Identity()
        self.pooler = nn.Linear(dim, dim)

    def words(self, levels: list[Tensor], words: Tensor, clips: int) -> Tensor:
        for level in levels:
            n, c, h, w = level.shape
            frames = n // clips
            tokens = level.flatten(2).transpose(1, 2).reshape(clips, frames * h * w, c)
            pos = sine_position_2d(h, w, self.dim, level.device).to(level.dtype).repeat(frames, 1)
            attended = self.attn(words, tokens + pos, tokens, need_weights=False)[0]
            words = words * attended if self.mode == "multiply" else self.norm(words + attended)
        return words

    def forward(self, levels: list[Tensor], words: Tensor, word_padding: Tensor,
                clips: int) -> Tensor:
        words = self.words(levels, words, clips)
        if self.pool == "first":
            pooled = words[:, 0]
        else:
            keep = (~word_padding).unsqueeze(-1).to(words.dtype)
            pooled = (words * keep).sum(1) / keep.sum(1).clamp(min=1)
        return torch.tanh(self.pooler(pooled))


class QueryInteractionLayer(nn.Module):
    """Self-attention over a clip's queries + FFN, post-norm, no positional encoding.

    forward(x (B, T*Q, C)) -> (B, T*Q, C)
    """

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, ffn_dim, dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(x + self.dropout(self.self_attn(x, x, x, need_weights=False)[0]))
        return self.ffn(x)


class InterFrameInteraction(nn.Module):
    """BIFIT's inter-frame interaction: the object queries of all T frames of a clip
    exchange information between decoder layers.

    forward(queries (B*T, Q, C) rows b*T .. b*T + T-1 are clip b's frames, num_frames=T)
        -> (B*T, Q, C)

    ``gated`` (not in the paper): return ``x + tanh(g) * (f(x) - x)`` with a learned
    scalar ``g`` that starts at 0, so a model fine-tuned from the base starts as the base;
    the official module replaces the queries by ``f(x)``.
    """

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float, num_layers: int = 1,
                 gated: bool = False):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.layers = nn.ModuleList(QueryInteractionLayer(dim, heads, ffn_dim, dropout)
                                    for _ in range(num_layers))
        self.gate = nn.Parameter(torch.zeros(())) if gated else None

    def forward(self, queries: Tensor, num_frames: int) -> Tensor:
        n, q, c = queries.shape
        x = queries.reshape(n // num_frames, num_frames * q, c)
        for layer in self.layers:
            x = layer(x)
        x = x.reshape(n, q, c)
        if self.gate is None:
            return x
        return queries + torch.tanh(self.gate) * (x - queries)
