"""Cross-modal fusion: visual tokens attend to the words of the sentence."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def coordinate_channels(height: int, width: int, device: torch.device) -> Tensor:
    """(2, H, W) normalised x and y coordinates in [-1, 1] (pixel centres)."""
    ys = torch.linspace(-1 + 1 / height, 1 - 1 / height, height, device=device)
    xs = torch.linspace(-1 + 1 / width, 1 - 1 / width, width, device=device)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy])


class CrossModalAttentionLayer(nn.Module):
    """One fusion layer: cross-attention from visual tokens to words, self-attention among
    the visual tokens of a frame (so an object can be compared with the others: "the
    leftmost circle"), then a feed-forward block; pre-norm residuals throughout.

    forward(visual (N, S, D), words (N, L, D), word_padding (N, L) bool) -> (N, S, D)
    with N = B*T frames and S = h*w visual tokens.
    """

    def __init__(self, dim: int, heads: int, ffn_mult: int = 2, dropout: float = 0.0):
        super().__init__()
        self.norm_cross = nn.LayerNorm(dim)
        self.cross = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm_self = nn.LayerNorm(dim)
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm_ffn = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, dim * ffn_mult), nn.GELU(),
                                 nn.Linear(dim * ffn_mult, dim))

    def forward(self, visual: Tensor, words: Tensor, word_padding: Tensor) -> Tensor:
        q = self.norm_cross(visual)
        visual = visual + self.cross(q, words, words, key_padding_mask=word_padding,
                                     need_weights=False)[0]
        q = self.norm_self(visual)
        visual = visual + self.self_attn(q, q, q, need_weights=False)[0]
        return visual + self.ffn(self.norm_ffn(visual))


class SentenceGate(nn.Module):
    """Channel-wise modulation of visual features by the sentence feature (FiLM).

    forward(visual (N, D, h, w), sentence (N, D)) -> (N, D, h, w)
    """

    def __init__(self, dim: int):
        super().__init__()
        self.to_scale_shift = nn.Linear(dim, 2 * dim)

    def forward(self, visual: Tensor, sentence: Tensor) -> Tensor:
        scale, shift = self.to_scale_shift(sentence).chunk(2, dim=-1)
        return visual * (1 + scale[..., None, None]) + shift[..., None, None]
