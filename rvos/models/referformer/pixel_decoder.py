"""ReferFormer's cross-modal FPN (the official ``CrossModalFPNDecoder`` and
``VisionLanguageBlock``), split so that it runs over chunks of frames.

Each of the four levels (strides 32, 16, 8 from the encoder memory, stride 4 from the
backbone) goes through a block: self-attention over all T frames of the clip on a map
subsampled by ``sr_ratio`` (8, 4, 2, 1 from fine to coarse), cross-attention to the words,
an FFN; then the FPN's top-down sum and a 3x3 conv. Only the self-attention mixes frames, and
it reads only the subsampled lateral maps, which do not depend on the coarser levels. So the
work splits into three steps:

1. per chunk of frames, :meth:`CrossModalFPN.lateral` and :meth:`attention_inputs` (small);
2. once for the whole clip, :meth:`attend` over all frames of each level;
3. per chunk, :meth:`decode`: everything else, down to the mask features.

Parameter names follow the official module (``adapter_k``, ``layer_k``, ``cross_attn_k``,
``mask_features``; k = 1 for stride 4 .. 4 for stride 32) so converted weights load as they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rvos.models.referformer.layers import Attention, feed_forward

SR_RATIOS = (8, 4, 2, 1)   # self-attention subsampling, stride 4 level first
TOKENS_PER_PASS = 16384    # per-pixel work in passes of about this many tokens (memory)


class NormConv(nn.Conv2d):
    """Conv2d, GroupNorm(8), optional ReLU; keys ``weight`` (``bias``), ``norm.*``."""

    def __init__(self, cin: int, cout: int, kernel: int, relu: bool, bias: bool = False):
        super().__init__(cin, cout, kernel, padding=kernel // 2, bias=bias)
        self.norm = nn.GroupNorm(8, cout)
        self.relu = relu

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(super().forward(x))
        return F.relu(x) if self.relu else x


class CrossModalBlock(nn.Module):
    """One level's vision-language block (post-norm), in the three steps of the module doc.

    Maps are (N, C, h, w) with N = B * T frames, clip-major; words (B, L, C) with their
    encoding ``word_pos`` (B, L, C) and padding (B, L) bool.
    """

    def __init__(self, dim: int, heads: int, ffn_dim: int, sr_ratio: int):
        super().__init__()
        self.sr_ratio = sr_ratio
        self.self_attn = Attention(dim, heads)
        self.multihead_attn = Attention(dim, heads)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def _subsample(self, x: Tensor) -> Tensor:
        if self.sr_ratio == 1:
            return x
        h, w = x.shape[-2:]
        return F.interpolate(x, size=(int(h / self.sr_ratio), int(w / self.sr_ratio)), mode="nearest")

    def attention_inputs(self, lateral: Tensor, pos: Tensor) -> tuple[Tensor, Tensor]:
        """lateral (N, C, h, w), pos (C, h, w) -> (queries-and-keys, values), each
        (N, C, h', w') on the subsampled map."""
        return self._subsample(lateral + pos), self._subsample(lateral)

    def attend(self, qk: Tensor, v: Tensor, clips: int) -> Tensor:
        """Self-attention among all frames of each clip: qk, v (B*T, C, h', w') ->
        (B*T, C, h', w')."""
        n, c, h, w = v.shape
        t = n // clips

        def tokens(x: Tensor) -> Tensor:            # (B*T, C, h', w') -> (B, T*h'*w', C)
            return x.view(clips, t, c, h * w).permute(0, 1, 3, 2).reshape(clips, t * h * w, c)

        qk_tokens = tokens(qk)
        out = self.self_attn(qk_tokens, qk_tokens, tokens(v))
        return out.view(clips, t, h * w, c).permute(0, 1, 3, 2).reshape(n, c, h, w)

    def finish(self, lateral: Tensor, attended: Tensor, pos: Tensor, words: Tensor,
               word_pos: Tensor, word_padding: Tensor, clip_of_frame: Tensor) -> Tensor:
        """The rest of the block for a chunk of frames: lateral (N, C, h, w), attended
        (N, C, h', w') from :meth:`attend`, pos (C, h, w); ``clip_of_frame`` (N,) long picks
        each frame's sentence. -> (N, C, h, w)."""
        n, c, h, w = lateral.shape
        frames = max(1, TOKENS_PER_PASS // (h * w))
        out = torch.empty_like(lateral)
        pos = pos.flatten(1).t()
        for s in range(0, n, frames):
            rows = slice(s, min(s + frames, n))
            up = attended[rows]
            if self.sr_ratio > 1:
                up = F.interpolate(up, size=(h, w), mode="bilinear", align_corners=False)
            x = self.norm1((lateral[rows] + up).flatten(2).transpose(1, 2))      # (n', hw, C)
            text = clip_of_frame[rows]
            x = self.norm2(x + self.multihead_attn(x + pos, (words + word_pos)[text], words[text],
                                                   word_padding[text]))
            x = self.norm3(x + feed_forward(x, self.linear1, self.linear2))
            out[rows] = x.transpose(1, 2).reshape(-1, c, h, w)
        return out


class CrossModalFPN(nn.Module):
    """The four-level cross-modal FPN; see the module doc for the three steps.

    ``in_channels``: channels of the stride-4 backbone map, then of the three memory levels
    (the model width). Levels are indexed finest first (0 = stride 4) everywhere.
    """

    def __init__(self, in_channels: list[int], dim: int, mask_dim: int, ffn_dim: int,
                 heads: int = 8):
        super().__init__()
        for k, cin in enumerate(in_channels, start=1):
            self.add_module(f"adapter_{k}", NormConv(cin, dim, 1, relu=False))
            self.add_module(f"layer_{k}", NormConv(dim, dim, 3, relu=True))
            self.add_module(f"cross_attn_{k}", CrossModalBlock(dim, heads, ffn_dim, SR_RATIOS[k - 1]))
        self.mask_features = nn.Conv2d(dim, mask_dim, 3, padding=1)
        self.levels = len(in_channels)

    def block(self, level: int) -> CrossModalBlock:
        return getattr(self, f"cross_attn_{level + 1}")

    def lateral(self, level: int, x: Tensor) -> Tensor:
        """The level's 1x1 lateral conv + GroupNorm: (N, C_in, h, w) -> (N, C, h, w)."""
        return getattr(self, f"adapter_{level + 1}")(x)

    def attention_inputs(self, level: int, lateral: Tensor, pos: Tensor) -> tuple[Tensor, Tensor]:
        return self.block(level).attention_inputs(lateral, pos)

    def attend(self, level: int, qk: Tensor, v: Tensor, clips: int) -> Tensor:
        return self.block(level).attend(qk, v, clips)

    def decode(self, laterals: list[Tensor], attended: list[Tensor], pos: list[Tensor],
               words: Tensor, word_pos: Tensor, word_padding: Tensor,
               clip_of_frame: Tensor) -> Tensor:
        """Top-down pass for a chunk of N frames, lists finest first -> mask features
        (N, mask_dim, H/4, W/4)."""
        y = None
        for level in reversed(range(self.levels)):
            x = self.block(level).finish(laterals[level], attended[level], pos[level], words,
                                         word_pos, word_padding, clip_of_frame)
            if y is not None:
                x = x + F.interpolate(y, size=x.shape[-2:], mode="nearest")
            y = getattr(self, f"layer_{level + 1}")(x)
        return self.mask_features(y)


def dynamic_mask_logits(features: Tensor, params: Tensor, centres: Tensor, channels: int,
                        layers: int, rel_coord: bool, stride: int = 4) -> Tensor:
    """ReferFormer's dynamic mask head: each query's generated 1x1 convolutions on the mask
    features (with its relative coordinates appended).

    features (N, C, h, w) mask features of N frames; params (N, Q, P) each query's generated
    weights and biases, laid out as the official ``parse_dynamic_params`` reads them (all
    weights, layer by layer, output channel major, then all biases); centres (N, Q, 2) the
    query's reference point (x, y) in input pixels. Returns (N, Q, h, w) logits.

    Computed as the official code does, as grouped convolutions over the features repeated
    per query, but one frame at a time (the official repeats them for the whole clip at
    once). The relative coordinates are in pixels (hundreds), so the first layer sums large
    terms that cancel: only the official order of summation reproduces its rounding, about
    1e-4 on logits of magnitude 30, which a matmul formulation would not.
    """
    n, c, h, w = features.shape
    q = params.shape[1]
    cin = c + 2 if rel_coord else c
    sizes = [channels * cin] + [channels * channels] * (layers - 2) + [channels]
    biases = [channels] * (layers - 1) + [1]
    parts = params.split(sizes + biases, dim=-1)
    weights, bias = parts[:layers], parts[layers:]
    xs = torch.arange(w, dtype=torch.float32, device=features.device) * stride + stride // 2
    ys = torch.arange(h, dtype=torch.float32, device=features.device) * stride + stride // 2
    out = features.new_empty(n, q, h, w)
    for i in range(n):
        x = features[i][None].expand(q, c, h, w)
        if rel_coord:
            rel = torch.stack((centres[i, :, 0, None, None] - xs.expand(h, w),
                               centres[i, :, 1, None, None] - ys[:, None].expand(h, w)), 1)
            x = torch.cat((x, rel.to(x.dtype)), 1)                          # (Q, C + 2, h, w)
        x = x.reshape(1, q * cin, h, w)
        for layer in range(layers):
            out_channels = channels if layer < layers - 1 else 1
            x = F.conv2d(x, weights[layer][i].reshape(q * out_channels, -1, 1, 1),
                         bias[layer][i].reshape(-1), groups=q)
            if layer < layers - 1:
                x = F.relu(x)
        out[i] = x.view(q, h, w)
    return out
