"""Image Swin Transformer backbone, numerically as ReferFormer's ``models/swin_transformer.py``.

ReferFormer runs the image Swin per frame: frames ``(B*T, 3, H, W)`` go through a 4x4 patch
embedding and four stages of (shifted-)window attention blocks, and every stage's output (taken
*before* that stage's patch merging) passes through its own LayerNorm ``norm{i}``.  The four maps,
at strides 4/8/16/32, are handed on finest first.

The module's ``state_dict`` keys equal the official ones with the prefix ``backbone.0.body.``
stripped (``patch_embed.*``, ``layers.{i}.blocks.{j}.*``, ``layers.{i}.downsample.*``,
``norm{i}.*``), including the persistent ``relative_position_index`` buffers, so a stripped
official dict loads with ``strict=True``.

This file also holds the window machinery shared with :mod:`rvos.models.referformer.video_swin`:
window partitioning over any number of spatial(-temporal) axes, the shifted-window region mask and
a window attention that works through the windows in bounded chunks, so peak memory does not grow
with the number of windows (the official code materialises every window's attention matrix and
every window's shift mask at once).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rvos.models.referformer.layers import feed_forward

__all__ = [
    "ATTENTION_ELEMENT_BUDGET",
    "SwinSettings",
    "VARIANTS",
    "SwinBackbone",
    "WindowAttention",
    "SwinBlock",
    "PatchMerging",
    "window_partition",
    "window_reverse",
    "shift_region_labels",
    "resolve_variant",
]

# Upper bound on the attention mask entries (windows x heads x N x N) made at once when
# ``window_chunk`` is left to choose itself: 2**25 float32 values = 128 MiB per chunk.
ATTENTION_ELEMENT_BUDGET = 2 ** 25
# The additive logit the official shift mask puts between tokens of different regions.
SHIFT_MASK_VALUE = -100.0


class StageGeometry:
    """Channels and strides of a Swin's stages: each patch merging halves the size and doubles
    the channels. Needs ``embed_dim``, ``depths`` and ``spatial_patch``."""

    @property
    def num_channels(self) -> list[int]:
        return [self.embed_dim * 2 ** i for i in range(len(self.depths))]

    @property
    def strides(self) -> list[int]:
        return [self.spatial_patch * 2 ** i for i in range(len(self.depths))]


@dataclass(frozen=True)
class SwinSettings(StageGeometry):
    """One image-Swin configuration of ReferFormer's ``configs`` dict.

    ``official_name`` is ReferFormer's ``--backbone`` value for it.  Dropout and drop-path rates
    are not kept: at inference they are identities.
    """

    official_name: str
    embed_dim: int
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    window_size: int = 7
    patch_size: int = 4
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    patch_norm: bool = True

    @property
    def spatial_patch(self) -> int:
        return self.patch_size


VARIANTS: dict[str, SwinSettings] = {
    "swin_t": SwinSettings("swin_t_p4w7", 96, (2, 2, 6, 2), (3, 6, 12, 24)),
    "swin_s": SwinSettings("swin_s_p4w7", 96, (2, 2, 18, 2), (3, 6, 12, 24)),
    "swin_b": SwinSettings("swin_b_p4w7", 128, (2, 2, 18, 2), (4, 8, 16, 32)),
    "swin_l": SwinSettings("swin_l_p4w7", 192, (2, 2, 18, 2), (6, 12, 24, 48)),
}


def resolve_variant(variant: str, variants: dict, kind: str):
    """Settings for ``variant``, given either by its rvos name or the official config name."""
    if variant in variants:
        return variants[variant]
    for settings in variants.values():
        if settings.official_name == variant:
            return settings
    known = sorted(variants) + sorted(s.official_name for s in variants.values())
    raise ValueError(f"unknown {kind} variant {variant!r}; known: {', '.join(known)}")


# --------------------------------------------------------------------------- window machinery


def window_partition(x: Tensor, window: tuple[int, ...]) -> Tensor:
    """Cut a channels-last grid into non-overlapping windows.

    x: (B, P_1, ..., P_k, C) with every P_i a multiple of ``window[i]``.
    Returns (B * nW, N, C), N = prod(window); windows ordered batch-major then row-major over the
    window grid, tokens row-major inside a window.
    """
    batch, *sizes, channels = x.shape
    k = len(window)
    split: list[int] = [batch]
    for size, w in zip(sizes, window):
        split += [size // w, w]
    order = [0] + [1 + 2 * i for i in range(k)] + [2 + 2 * i for i in range(k)] + [2 * k + 1]
    return x.view(*split, channels).permute(order).reshape(-1, math.prod(window), channels)


def window_reverse(windows: Tensor, window: tuple[int, ...], batch: int,
                   sizes: tuple[int, ...]) -> Tensor:
    """Inverse of :func:`window_partition`: (B * nW, N, C) -> (B, P_1, ..., P_k, C)."""
    k = len(window)
    channels = windows.shape[-1]
    grid = [s // w for s, w in zip(sizes, window)]
    x = windows.view(batch, *grid, *window, channels)
    order = [0]
    for i in range(k):
        order += [1 + i, 1 + k + i]
    order.append(2 * k + 1)
    return x.permute(order).reshape(batch, *sizes, channels)


def shift_region_labels(sizes: tuple[int, ...], window: tuple[int, ...],
                        shift: tuple[int, ...], device: torch.device | None = None) -> Tensor:
    """Region id of every token of each shifted window, as the official shift mask defines it.

    After the cyclic shift by ``-shift`` each padded axis of length P splits into regions
    [0, P - w), [P - w, P - s) and [P - s, P); an axis with shift 0 is one region.  Two tokens
    of a window may attend to each other freely iff their region ids agree; otherwise the official
    code adds -100 to their logit.  Padded positions take part like any other token.

    sizes: the padded grid (P_1, ..., P_k); returns (nW, N) int64 region ids.
    """
    labels = torch.zeros(sizes, dtype=torch.int64, device=device)
    for axis, (size, w, s) in enumerate(zip(sizes, window, shift)):
        axis_labels = torch.zeros(size, dtype=torch.int64, device=device)
        if s > 0:
            axis_labels[max(size - w, 0):] = 1
            axis_labels[size - s:] = 2
        view = [1] * len(sizes)
        view[axis] = size
        labels = labels * 3 + axis_labels.view(view)
    return window_partition(labels[None, ..., None], window).squeeze(-1)


def relative_position_index(window: tuple[int, ...]) -> Tensor:
    """(N, N) index into the relative-position bias table for a full window (official layout).

    Entry (i, j) encodes ``coord(i) - coord(j)`` per axis, shifted to start at 0 and combined
    mixed-radix with radices ``2 * window - 1`` (first axis most significant).
    """
    grids = torch.meshgrid(*[torch.arange(w) for w in window], indexing="ij")
    coords = torch.stack([g.flatten() for g in grids])  # (k, N)
    rel = coords[:, :, None] - coords[:, None, :]  # (k, N, N)
    index = torch.zeros(rel.shape[1:], dtype=torch.int64)
    for axis, w in enumerate(window):
        index = index * (2 * w - 1) + (rel[axis] + w - 1)
    return index


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows, with a learned relative-position bias.

    Parameters/buffers (official names): ``relative_position_bias_table``
    (prod(2w - 1), heads), persistent buffer ``relative_position_index`` (N, N), ``qkv``, ``proj``.
    """

    def __init__(self, dim: int, window: tuple[int, ...], num_heads: int, qkv_bias: bool = True):
        super().__init__()
        self.dim = dim
        self.window = tuple(window)
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros(math.prod(2 * w - 1 for w in self.window), num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index(self.window))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def position_bias(self, n: int) -> Tensor:
        """(heads, n, n) bias for windows of n tokens.

        Like the official code this takes the top-left n x n block of the full window's index,
        which is the true relative geometry only when the window was shrunk along its first axis.
        """
        index = self.relative_position_index[:n, :n].reshape(-1)
        return self.relative_position_bias_table[index].view(n, n, -1).permute(2, 0, 1)

    def forward(self, windows: Tensor, region_labels: Tensor | None = None,
                window_chunk: int | None = None) -> Tensor:
        """windows (B * nW, N, C) -> (B * nW, N, C).

        region_labels: (nW, N) shift-region ids (see :func:`shift_region_labels`) or None for no
        mask; window w of the batch uses row ``w % nW``.  window_chunk: windows per chunk (None:
        as many as keep a chunk's logits within :data:`ATTENTION_ELEMENT_BUDGET`).

        Only the windows that straddle shift regions (the last row and column of windows) get
        a mask: inside every other window the official mask is all zeros, and adding zero to
        the logits changes no bit, so those windows are attended with the position bias alone,
        without building a (windows, heads, N, N) mask for them.
        """
        if region_labels is None:
            return self._attend(windows, None, window_chunk)
        rows = torch.arange(windows.shape[0], device=windows.device) % region_labels.shape[0]
        straddles = (region_labels != region_labels[:, :1]).any(-1)[rows]          # (B * nW,)
        if not bool(straddles.any()):
            return self._attend(windows, None, window_chunk)
        masked = straddles.nonzero().flatten()
        plain = (~straddles).nonzero().flatten()
        out = windows.new_empty(windows.shape)
        out[masked] = self._attend(windows[masked], region_labels[rows[masked]], window_chunk)
        if len(plain):
            out[plain] = self._attend(windows[plain], None, window_chunk)
        return out

    def _attend(self, windows: Tensor, labels: Tensor | None, window_chunk: int | None) -> Tensor:
        """windows (b, N, C), labels (b, N) region ids of each window's tokens (None: no
        mask) -> (b, N, C), in chunks of windows."""
        total, n, channels = windows.shape
        heads = self.num_heads
        if window_chunk is None:
            window_chunk = max(1, ATTENTION_ELEMENT_BUDGET // (heads * n * n))
        bias = self.position_bias(n).unsqueeze(0)  # (1, heads, N, N)
        out = windows.new_empty(total, n, channels)
        for start in range(0, total, window_chunk):
            stop = min(start + window_chunk, total)
            qkv = self.qkv(windows[start:stop])
            qkv = qkv.reshape(stop - start, n, 3, heads, channels // heads).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)  # each (b, heads, N, d)
            additive = bias
            if labels is not None:
                chunk_labels = labels[start:stop]  # (b, N)
                apart = chunk_labels[:, None, :] != chunk_labels[:, :, None]
                mask = torch.zeros(apart.shape, dtype=q.dtype, device=q.device)
                mask = mask.masked_fill(apart, SHIFT_MASK_VALUE)
                additive = bias + mask.unsqueeze(1)
            # softmax(q k^T * scale + bias + mask) v, fused: 2.4x faster on CPU than the three
            # steps, within 2e-6 of them (the official order); the scale is head_dim ** -0.5
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=additive.to(q.dtype),
                                               scale=self.scale)
            y = y.transpose(1, 2).reshape(stop - start, n, channels)
            out[start:stop] = self.proj(y)
        return out


class Mlp(nn.Module):
    """Two-layer GELU MLP (``fc1``, ``fc2``) applied token-wise, in row passes
    (:func:`~rvos.models.referformer.layers.feed_forward`)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        """x (..., C) -> (..., C)."""
        return feed_forward(x, self.fc1, self.fc2, F.gelu)


class SwinBlock(nn.Module):
    """One (shifted-)window transformer block over a channels-last grid of any rank.

    Pre-norm residual: ``x + W-MSA(norm1(x))`` then ``x + MLP(norm2(x))``.  The normalised grid is
    zero-padded at the end of every axis to a window multiple *after* ``norm1`` (padded tokens
    take part in attention, unmasked unless the shift mask separates them), cyclically shifted by
    ``-shift``, attended window by window, shifted back and cropped.
    """

    def __init__(self, dim: int, num_heads: int, window: tuple[int, ...], mlp_ratio: float = 4.0,
                 qkv_bias: bool = True):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, num_heads, qkv_bias=qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, window: tuple[int, ...], shift: tuple[int, ...],
                region_labels: Tensor | None, window_chunk: int | None = None) -> Tensor:
        """x (B, S_1, ..., S_k, C) -> same shape.

        window/shift: the window and shift actually used for this input (shift all 0: no shift
        and no mask); region_labels: (nW, N) for the padded grid, used only when shifted.
        """
        batch, *sizes, channels = x.shape
        pads = [(w - s % w) % w for s, w in zip(sizes, window)]
        y = self.norm1(x)
        pad_arg: list[int] = [0, 0]
        for p in reversed(pads):
            pad_arg += [0, p]
        y = F.pad(y, pad_arg)
        padded = tuple(s + p for s, p in zip(sizes, pads))
        axes = tuple(range(1, len(sizes) + 1))
        shifted = any(s > 0 for s in shift)
        if shifted:
            y = torch.roll(y, shifts=tuple(-s for s in shift), dims=axes)
        y = self.attn(window_partition(y, window), region_labels if shifted else None,
                      window_chunk)
        y = window_reverse(y, window, batch, padded)
        if shifted:
            y = torch.roll(y, shifts=tuple(shift), dims=axes)
        if any(pads):
            y = y[(slice(None),) + tuple(slice(0, s) for s in sizes)]
        x = x + y
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """2x2 spatial patch merging over the last two grid axes: (..., H, W, C) -> (..., H', W', 2C).

    Odd H/W are zero-padded at the end first (H' = ceil(H/2)); the four sub-grids are concatenated
    in the order (even,even), (odd,even), (even,odd), (odd,odd) of (row, column), then ``norm``
    (LayerNorm over 4C) and the bias-free ``reduction`` 4C -> 2C.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-3], x.shape[-2]
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[..., 0::2, 0::2, :], x[..., 1::2, 0::2, :],
                       x[..., 0::2, 1::2, :], x[..., 1::2, 1::2, :]], dim=-1)
        return self.reduction(self.norm(x))


def stage_labels(padded: tuple[int, ...], window: tuple[int, ...], shift: tuple[int, ...],
                 device: torch.device) -> Tensor | None:
    """Region labels for a stage's shifted blocks, or None when nothing is shifted."""
    if not any(s > 0 for s in shift):
        return None
    return shift_region_labels(padded, window, shift, device)


# --------------------------------------------------------------------------- image Swin


class PatchEmbed2d(nn.Module):
    """Non-overlapping p x p patch embedding: (N, 3, H, W) -> (N, ceil(H/p), ceil(W/p), C).

    H and W are zero-padded at the bottom/right to multiples of p; ``norm`` is optional.
    """

    def __init__(self, patch: int, dim: int, norm: bool):
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)
        self.norm = nn.LayerNorm(dim) if norm else None

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        p = self.patch
        if w % p:
            x = F.pad(x, (0, p - w % p))
        if h % p:
            x = F.pad(x, (0, 0, 0, p - h % p))
        x = self.proj(x).permute(0, 2, 3, 1)
        return self.norm(x) if self.norm is not None else x


class SwinStage(nn.Module):
    """``depth`` blocks (odd ones shifted by window // 2) and an optional ``downsample``."""

    def __init__(self, dim: int, depth: int, num_heads: int, window: int, mlp_ratio: float,
                 qkv_bias: bool, downsample: bool):
        super().__init__()
        self.window = window
        self.blocks = nn.ModuleList(
            SwinBlock(dim, num_heads, (window, window), mlp_ratio, qkv_bias) for _ in range(depth))
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: Tensor, window_chunk: int | None = None) -> Tensor:
        """x (N, H, W, C) -> (N, H, W, C), the stage output before any downsampling.

        The image Swin never shrinks its window to the input, so tiny maps are padded up to a
        full window (and still shifted and masked).
        """
        win = (self.window, self.window)
        shift = (self.window // 2, self.window // 2)
        padded = tuple(-(-s // self.window) * self.window for s in x.shape[1:3])
        labels = stage_labels(padded, win, shift, x.device)
        for i, block in enumerate(self.blocks):
            x = block(x, win, shift if i % 2 else (0, 0), labels, window_chunk)
        return x


class SwinBackbone(nn.Module):
    """ReferFormer's image Swin backbone, run per frame.

    ``variant``: ``swin_t``/``swin_s``/``swin_b``/``swin_l`` or the official names
    (``swin_t_p4w7``, ...).  ``window_chunk``: windows attended per chunk (None: automatic,
    bounded by :data:`ATTENTION_ELEMENT_BUDGET` logits).
    """

    def __init__(self, variant: str, window_chunk: int | None = None):
        super().__init__()
        cfg: SwinSettings = resolve_variant(variant, VARIANTS, "Swin")
        self.settings = cfg
        self.window_chunk = window_chunk
        self.strides: list[int] = cfg.strides
        self.num_channels: list[int] = cfg.num_channels
        self.patch_embed = PatchEmbed2d(cfg.patch_size, cfg.embed_dim, cfg.patch_norm)
        n = len(cfg.depths)
        self.layers = nn.ModuleList(
            SwinStage(self.num_channels[i], cfg.depths[i], cfg.num_heads[i], cfg.window_size,
                      cfg.mlp_ratio, cfg.qkv_bias, downsample=i < n - 1)
            for i in range(n))
        for i in range(n):
            self.add_module(f"norm{i}", nn.LayerNorm(self.num_channels[i]))

    def forward(self, frames: Tensor, num_frames: int | None = None) -> list[Tensor]:
        """frames (N, 3, H, W), normalised (N = B*T; num_frames is ignored, frames are
        independent) -> 4 maps, finest first, (N, C_i, ceil(H/s_i), ceil(W/s_i)) with
        s_i = 4, 8, 16, 32 (each halving rounds up); each is its stage's output through
        ``norm{i}``."""
        x = self.patch_embed(frames)
        outs: list[Tensor] = []
        for i, stage in enumerate(self.layers):
            x = stage(x, self.window_chunk)
            norm: nn.LayerNorm = getattr(self, f"norm{i}")
            outs.append(norm(x).permute(0, 3, 1, 2).contiguous())
            if stage.downsample is not None:
                x = stage.downsample(x)
        return outs
