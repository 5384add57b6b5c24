"""The cross-modal affinity module (CMA, Li et al., ICCV 2023) on object tokens.

The paper's module works on the feature maps of a query clip and of a support clip whose
features are masked to the annotated object, each first fused with its own sentence:

1. vision-language fusion: every visual token is multiplied by what it reads, through
   cross-attention, of its own sentence (the query's sentence for the query, each
   support's sentence for that support);
2. Q, K, V projections of the fused tokens (one projection for the query, one for the
   support), key width 128, a single head;
3. self-affinity: the query attends to its own clip, ``Q' = LN(Q + softmax(Q K_q^T / sqrt(c)) V_q)``;
4. cross affinity: the query attends to the masked support,
   ``out = LN(Q' + softmax(Q' K_s^T / sqrt(c)) V_s)`` (softmax over the support tokens, one
   LayerNorm shared by both steps);
5. the result is concatenated with a projection of the query's own features and passed on.

Here the tokens are objects rather than pixels, because the project's CPU-trainable model
reasons over tracks: a query token is one track of the query clip (its appearance pooled
over its masks), and the support tokens are the referred object of each of the K support
samples in each frame where it is seen (masking the support to its object, as the paper
does, leaves exactly these). The module also reads out, per head, the maximum and the mean
of the affinity logits over the support: the attended value is a convex combination of
support values, so *how strongly* a track resembles the support is only in the logits.
Its outputs are an evidence vector per track (added to the scorer's track states) and a
logit per track (added to the scorer's logits).

Shape affinity (``shape_dim > 0``, an rvos addition): on pixels, the paper's masked support
carries the object's outline implicitly; an object token pools it away except in its
silhouette descriptor (the last ``SILHOUETTE**2`` appearance channels), which the
sentence-fused tokens mix with colour. The module then also compares each track's
silhouette with every support silhouette directly, in a learned projection: the maximum and
the mean of those cosine similarities join the affinity statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rvos.models.grounding.tracks import SILHOUETTE

MASKED = -1e4       # finite: an episode row whose support is all padding stays NaN-free


@dataclass
class SupportBatch:
    """K support samples for each of B episodes: the referred object of each sample.

    appearance (B, K, T, D) per-frame appearance tokens (zero where not seen); visible
    (B, K, T) bool (False where the object is not seen, and for padded shots and frames);
    words (B, K, L, text_dim) the support sentences; padding (B, K, L) bool.
    """

    appearance: Tensor
    visible: Tensor
    words: Tensor
    padding: Tensor

    def __len__(self) -> int:
        return int(self.appearance.shape[0])

    def expand(self, batch: int) -> "SupportBatch":
        """One episode's support (B = 1) shared by ``batch`` sentences."""
        if len(self) == batch:
            return self
        if len(self) != 1:
            raise ValueError(f"a support batch of {len(self)} episodes cannot serve {batch} sentences")
        return SupportBatch(*(x.expand(batch, *x.shape[1:]) for x in
                              (self.appearance, self.visible, self.words, self.padding)))


class SentenceFusion(nn.Module):
    """tokens (M, S, c), words (M, L, c), padding (M, L) -> (M, S, c): each token multiplied
    by what it reads of its own sentence through cross-attention."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, tokens: Tensor, words: Tensor, padding: Tensor) -> Tensor:
        read = self.attn(tokens, words, words, key_padding_mask=padding, need_weights=False)[0]
        return tokens * read


def attend(q: Tensor, k: Tensor, v: Tensor, valid: Tensor, heads: int) -> tuple[Tensor, Tensor]:
    """q (B, N, c), k and v (B, S, c), valid (B, S) bool -> (the attended values (B, N, c),
    the scaled affinity logits (B, heads, N, S), invalid keys at ``MASKED``); the softmax runs
    over the keys."""
    b, n, c = q.shape
    s = k.shape[1]
    d = c // heads
    qh = q.view(b, n, heads, d).transpose(1, 2)
    kh = k.view(b, s, heads, d).transpose(1, 2)
    vh = v.view(b, s, heads, d).transpose(1, 2)
    logits = (qh @ kh.transpose(-1, -2)) / d ** 0.5                      # (B, H, N, S)
    logits = logits.masked_fill(~valid[:, None, None, :], MASKED)
    out = (logits.softmax(-1) @ vh).transpose(1, 2).reshape(b, n, c)
    return out, logits


class CrossModalAffinity(nn.Module):
    """Query tracks against the support set -> (evidence (B, N, out_dim), logit (B, N)).

    forward(query_appearance (B, N, D), query_valid (B, N) bool, words (B, L, text_dim),
    padding (B, L) bool, support :class:`SupportBatch`).
    """

    def __init__(self, appearance_dim: int, text_dim: int, out_dim: int, key_dim: int = 128,
                 heads: int = 1, self_affinity: bool = True, dropout: float = 0.1,
                 shape_dim: int = 0):
        super().__init__()
        if key_dim % heads:
            raise ValueError(f"heads ({heads}) must divide key_dim ({key_dim})")
        self.heads = heads
        self.self_affinity = self_affinity
        self.appearance_norm = nn.LayerNorm(appearance_dim)
        self.visual = nn.Linear(appearance_dim, key_dim)
        self.words = nn.Linear(text_dim, key_dim)
        self.fusion = SentenceFusion(key_dim, heads)
        self.query_qkv = nn.Linear(key_dim, 3 * key_dim)
        self.support_kv = nn.Linear(key_dim, 2 * key_dim)
        self.keep = nn.Linear(key_dim, key_dim)       # the query's own features, passed on
        self.norm = nn.LayerNorm(key_dim)             # shared by both affinity steps
        self.dropout = nn.Dropout(dropout)
        # silhouettes projected for the shape affinity (None: off)
        self.shape = nn.Linear(SILHOUETTE * SILHOUETTE, shape_dim) if shape_dim else None
        stats = 2 * heads + (2 if shape_dim else 0)
        self.evidence = nn.Linear(2 * key_dim + stats, out_dim)
        self.logit = nn.Linear(stats, 1)

    def tokens(self, appearance: Tensor, words: Tensor, padding: Tensor) -> Tensor:
        """appearance (M, S, D), words (M, L, text_dim), padding (M, L) -> fused (M, S, c)."""
        return self.fusion(self.visual(self.appearance_norm(appearance)), self.words(words), padding)

    def forward(self, query_appearance: Tensor, query_valid: Tensor, words: Tensor,
                padding: Tensor, support: SupportBatch) -> tuple[Tensor, Tensor]:
        b, n, _ = query_appearance.shape
        support = support.expand(b)
        _, k, t, d = support.appearance.shape
        query = self.tokens(query_appearance, words, padding)                # (B, N, c)
        s_tok = self.tokens(support.appearance.reshape(b * k, t, d),
                            support.words.flatten(0, 1), support.padding.flatten(0, 1))
        s_tok = s_tok.reshape(b, k * t, -1)                                   # (B, K*T, c)
        s_valid = support.visible.reshape(b, k * t)
        q, kq, vq = self.query_qkv(query).chunk(3, -1)
        if self.self_affinity:
            q = self.norm(q + self.dropout(attend(q, kq, vq, query_valid, self.heads)[0]))
        ks, vs = self.support_kv(s_tok).chunk(2, -1)
        attended, logits = attend(q, ks, vs, s_valid, self.heads)
        out = self.norm(q + self.dropout(attended))
        on = s_valid[:, None, None, :].to(logits.dtype)                       # (B, 1, 1, S)
        strongest = logits.amax(-1)                                           # (B, H, N)
        mean = (logits * on).sum(-1) / on.sum(-1).clamp(min=1)
        stats = torch.cat([strongest, mean], 1).transpose(1, 2)               # (B, N, 2H)
        if self.shape is not None:
            stats = torch.cat([stats, self.shape_affinity(query_appearance, support.appearance
                                                          .reshape(b, k * t, d), s_valid)], -1)
        evidence = self.evidence(torch.cat([out, self.keep(query), stats], -1))
        return evidence, self.logit(stats)[..., 0]

    def shape_affinity(self, query_appearance: Tensor, support_appearance: Tensor,
                       support_valid: Tensor) -> Tensor:
        """query (B, N, D), support (B, S, D) appearance, support_valid (B, S) bool -> (B, N, 2):
        the maximum and the mean over the valid support tokens of the cosine similarity of
        the projected silhouettes."""
        sil = SILHOUETTE * SILHOUETTE
        q = F.normalize(self.shape(query_appearance[..., -sil:]), dim=-1)
        s = F.normalize(self.shape(support_appearance[..., -sil:]), dim=-1)
        cos = q @ s.transpose(1, 2)                                           # (B, N, S)
        on = support_valid[:, None, :]
        strongest = cos.masked_fill(~on, -1.0).amax(-1)
        mean = (cos * on).sum(-1) / on.sum(-1).clamp(min=1)
        return torch.stack([strongest, mean], -1)
