"""Building blocks of the ReferFormer parity model: attention with ``nn.MultiheadAttention``'s
parameters, the official FeatureResizer / inverse sigmoid, and DETR's sine position
encodings for unpadded inputs (the MLP is the query core's, same keys ``layers.i``).

Inference here never pads (one video, or videos of one size), so every padding mask of the
official code is all False; the encodings below are the official formulas for that case.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Attention(nn.Module):
    """Multi-head attention, batch first, state-dict compatible with ``nn.MultiheadAttention``
    (``in_proj_weight`` (3C, C), ``in_proj_bias`` (3C,), ``out_proj``).

    Written out rather than calling ``nn.MultiheadAttention`` so that the product runs through
    ``F.scaled_dot_product_attention``, whose CPU kernel never materialises the (Lq, Lk)
    matrix: the official cross-frame attention over 36 frames needs 2 GB per call for it.

    forward(query (B, Lq, C), key (B, Lk, C), value (B, Lk, C), key_padding (B, Lk) bool,
    True = ignore, or None) -> (B, Lq, C)
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.dim, self.heads = dim, heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, query: Tensor, key: Tensor, value: Tensor,
                key_padding: Tensor | None = None) -> Tensor:
        b, lq, c = query.shape
        lk = key.shape[1]
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        d = c // self.heads
        q = F.linear(query, w_q, b_q).view(b, lq, self.heads, d).transpose(1, 2)
        k = F.linear(key, w_k, b_k).view(b, lk, self.heads, d).transpose(1, 2)
        v = F.linear(value, w_v, b_v).view(b, lk, self.heads, d).transpose(1, 2)
        mask = None
        if key_padding is not None and bool(key_padding.any()):
            mask = ~key_padding[:, None, None, :]                 # True = attend
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(out.transpose(1, 2).reshape(b, lq, c))


FFN_ROWS = 2048   # rows per pass of feed_forward


def feed_forward(x: Tensor, linear1: nn.Linear, linear2: nn.Linear,
                 activation: Callable[[Tensor], Tensor] = torch.relu_) -> Tensor:
    """``linear2(activation(linear1(x)))`` over (..., C) in passes of :data:`FFN_ROWS` rows
    (ReLU in place by default; the Swin MLPs pass GELU).

    Row by row the same products; the passes keep the (rows, 2048) hidden activation at 16 MB,
    which the allocator reuses, where one pass over a clip's 20k tokens would take fresh,
    page-faulting memory of 160 MB on every call (over a quarter of the FFN's time on CPU).
    """
    flat = x.reshape(-1, x.shape[-1])
    out = None
    for r in range(0, flat.shape[0], FFN_ROWS):
        y = linear2(activation(linear1(flat[r:r + FFN_ROWS])))
        if out is None:
            out = y.new_empty(flat.shape[0], y.shape[-1])
        out[r:r + FFN_ROWS] = y
    return out.view(*x.shape[:-1], -1)


class FeatureResizer(nn.Module):
    """Linear then LayerNorm (eps 1e-12): RoBERTa's 768 channels to the model width."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.fc = nn.Linear(in_dim, out_dim)
        self.layer_norm = nn.LayerNorm(out_dim, eps=1e-12)

    def forward(self, x: Tensor) -> Tensor:
        return self.layer_norm(self.fc(x))


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """The official logit: x clamped to [0, 1], numerator and denominator floored at eps."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def refine_boxes(delta: Tensor, reference: Tensor) -> Tensor:
    """Deformable DETR's box refinement: a head's ``delta`` (..., 4) applied to ``reference``
    in inverse-sigmoid space. A (..., 4) reference is refined whole; a (..., 2) one (points,
    before any refinement) gives the centre, and the size comes from ``delta`` alone."""
    if reference.shape[-1] == 4:
        return (delta + inverse_sigmoid(reference)).sigmoid()
    return torch.cat((delta[..., :2] + inverse_sigmoid(reference), delta[..., 2:]), -1).sigmoid()


def _frequencies(num_feats: int, device: torch.device, temperature: float = 10000.0) -> Tensor:
    i = torch.arange(num_feats, dtype=torch.float32, device=device)
    return temperature ** (2 * (i // 2) / num_feats)


def _interleave_sin_cos(a: Tensor) -> Tensor:
    """(..., F) angles -> (..., F): sin of the even channels, cos of the odd, interleaved."""
    return torch.stack((a[..., 0::2].sin(), a[..., 1::2].cos()), dim=-1).flatten(-2)


def sine_position_2d(height: int, width: int, dim: int, device: torch.device) -> Tensor:
    """DETR's normalised 2-D sine encoding (``PositionEmbeddingSine2D(dim // 2,
    normalize=True)``) of an unpadded (height, width) map: (dim, height, width), the y
    half first."""
    eps, scale = 1e-6, 2 * math.pi
    y = torch.arange(1, height + 1, dtype=torch.float32, device=device)
    x = torch.arange(1, width + 1, dtype=torch.float32, device=device)
    y = (y - 0.5) / (y[-1:] + eps) * scale
    x = (x - 0.5) / (x[-1:] + eps) * scale
    freq = _frequencies(dim // 2, device)
    pos_y = _interleave_sin_cos(y[:, None] / freq)                  # (H, dim/2)
    pos_x = _interleave_sin_cos(x[:, None] / freq)                  # (W, dim/2)
    pos = torch.cat((pos_y[:, None, :].expand(height, width, -1),
                     pos_x[None, :, :].expand(height, width, -1)), dim=-1)
    return pos.permute(2, 0, 1).contiguous()


def sine_position_1d(padding: Tensor, dim: int) -> Tensor:
    """``PositionEmbeddingSine1D(dim, normalize=True)`` of token sequences: padding (B, L)
    bool (True = padding) -> (B, L, dim). Positions count real tokens, normalised by the
    sequence's own count."""
    eps, scale = 1e-6, 2 * math.pi
    x = (~padding).cumsum(1, dtype=torch.float32)
    x = x / (x[:, -1:] + eps) * scale
    return _interleave_sin_cos(x[:, :, None] / _frequencies(dim, padding.device))
