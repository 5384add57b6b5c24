"""Early vision-language fusion: visual tokens cross-attend to the words of the sentence."""

from __future__ import annotations

from torch import Tensor, nn

FUSION_MODES = ("add", "multiply", "none")


class VisionLanguageFusion(nn.Module):
    """Cross-attention from visual tokens (queries) to word features (keys/values).

    mode "add": x <- LayerNorm(x + attn(x)), a residual block that is stable when trained
    from scratch; "multiply": x <- x * attn(x), ReferFormer's gating.

    forward(visual (B, S, C), words (B, L, C), word_padding (B, L) bool True at padding,
            word_pos (L, C) or (B, L, C), visual_pos (B, S, C) or None) -> (B, S, C)
    A clip's T frames may be passed as one sequence of S = T * h * w tokens: every token
    attends to the words independently, so this equals fusing the frames one by one.
    """

    def __init__(self, dim: int, heads: int, mode: str = "add", dropout: float = 0.0):
        super().__init__()
        if mode not in ("add", "multiply"):
            raise ValueError(f"fusion mode must be add or multiply, got {mode!r}")
        self.mode = mode
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(dim) if mode == "add" else nn.Identity()
        self.dropout = nn.Dropout(dropout)

    def forward(self, visual: Tensor, words: Tensor, word_padding: Tensor, word_pos: Tensor,
                visual_pos: Tensor | None = None) -> Tensor:
        query = visual if visual_pos is None else visual + visual_pos
        attended = self.attn(query, words + word_pos, words, key_padding_mask=word_padding,
                             need_weights=False)[0]
        if self.mode == "multiply":
            return visual * attended
        return self.norm(visual + self.dropout(attended))
