"""Small building blocks of the query-based model: MLP, sine position encodings,
inverse sigmoid."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them: (..., in) -> (..., out)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """logit(x) with x clamped to [eps, 1 - eps]."""
    x = x.clamp(min=eps, max=1 - eps)
    return torch.log(x / (1 - x))


def sine_position_2d(height: int, width: int, dim: int, device: torch.device | None = None,
                     temperature: float = 10000.0) -> Tensor:
    """DETR's normalised sine encoding of pixel positions: (height * width, dim).

    The first dim/2 channels encode y, the rest x; positions are normalised to (0, 2*pi]
    so that every level of a pyramid gets the same range.
    """
    if dim % 4:
        raise ValueError(f"position encoding dim must be a multiple of 4, got {dim}")
    half = dim // 2
    ys = (torch.arange(height, dtype=torch.float32, device=device) + 1) / height * 2 * math.pi
    xs = (torch.arange(width, dtype=torch.float32, device=device) + 1) / width * 2 * math.pi
    freq = temperature ** (2 * (torch.arange(half, dtype=torch.float32, device=device) // 2) / half)

    def encode(v: Tensor) -> Tensor:                       # (n,) -> (n, half)
        a = v[:, None] / freq
        return torch.stack([a[:, 0::2].sin(), a[:, 1::2].cos()], -1).flatten(1)

    pos_y = encode(ys)[:, None, :].expand(height, width, half)
    pos_x = encode(xs)[None, :, :].expand(height, width, half)
    return torch.cat([pos_y, pos_x], -1).reshape(height * width, dim)


def sine_position_1d(length: int, dim: int, device: torch.device | None = None,
                     max_length: int | None = None, temperature: float = 10000.0) -> Tensor:
    """Sine encoding of token positions 1..length: (length, dim).

    Positions are normalised by ``max_length`` (default ``length``) to (0, 2*pi]; pass a
    fixed ``max_length`` so that a token's encoding does not depend on how long the other
    sentences of its batch are.
    """
    if dim % 2:
        raise ValueError(f"position encoding dim must be even, got {dim}")
    scale = max(max_length or length, length)
    pos = (torch.arange(length, dtype=torch.float32, device=device) + 1) / scale * 2 * math.pi
    freq = temperature ** (2 * (torch.arange(dim, dtype=torch.float32, device=device) // 2) / dim)
    a = pos[:, None] / freq
    return torch.stack([a[:, 0::2].sin(), a[:, 1::2].cos()], -1).flatten(1)


class FeatureResizer(nn.Module):
    """Linear projection + LayerNorm + dropout, e.g. text features to the model width."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.1):
        super().__init__()
        self.fc = nn.Linear(in_dim, out_dim)
        self.norm = nn.LayerNorm(out_dim, eps=1e-12)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.norm(self.fc(x)))
