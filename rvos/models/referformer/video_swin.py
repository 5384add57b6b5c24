"""Video Swin Transformer backbone, numerically as ReferFormer's ``models/video_swin_transformer.py``
(its ``VideoSwinTransformerBackbone`` behind ``Backbone``/``Joiner``).

What the official wrapper computes, and this module reproduces:

* the frames ``(B*T, 3, H, W)`` are regrouped into clips ``(B, T, ...)`` of ``num_frames``
  consecutive frames (clip-major: frame t of clip b at ``b*T + t``);
* a (1, 4, 4) 3-D patch embedding with LayerNorm (so time is never downsampled);
* four stages of 3-D (shifted-)window attention with window (8, 7, 7), shrunk per axis to the
  input extent when the extent is not larger than the window (that axis then is not shifted);
  windows therefore mix up to 8 frames of the same clip;
* the stage outputs are taken *before* patch merging and passed on **without any norm** (the
  wrapper drops Swin-3D's final norm and adds no per-output norms), and the last stage's patch
  merging is discarded;
* every output is folded back to per-frame maps ``(B*T, C, H_i, W_i)``; nothing is averaged
  over time.

The ``state_dict`` keys equal the official ones with the prefix ``backbone.0.body.`` stripped:
``patch_embed.{proj,norm}.*``, ``layers.{i}.blocks.{j}.*`` (with persistent
``attn.relative_position_index`` buffers), ``downsamples.{0,1,2}.{reduction,norm}.*``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from rvos.models.referformer.swin import (PatchMerging, StageGeometry, SwinBlock, resolve_variant,
                                          stage_labels)

__all__ = ["VideoSwinSettings", "VARIANTS", "VideoSwinBackbone", "fit_window"]


@dataclass(frozen=True)
class VideoSwinSettings(StageGeometry):
    """One Video-Swin configuration of ReferFormer's ``configs`` dict.

    ``official_name`` is ReferFormer's ``--backbone`` value.  Dropout and drop-path rates are not
    kept: at inference they are identities.
    """

    official_name: str
    embed_dim: int
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    patch_size: tuple[int, int, int] = (1, 4, 4)
    window_size: tuple[int, int, int] = (8, 7, 7)
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    patch_norm: bool = True

    @property
    def spatial_patch(self) -> int:
        return self.patch_size[-1]


VARIANTS: dict[str, VideoSwinSettings] = {
    "video_swin_t": VideoSwinSettings("video_swin_t_p4w7", 96, (2, 2, 6, 2), (3, 6, 12, 24)),
    "video_swin_s": VideoSwinSettings("video_swin_s_p4w7", 96, (2, 2, 18, 2), (3, 6, 12, 24)),
    "video_swin_b": VideoSwinSettings("video_swin_b_p4w7", 128, (2, 2, 18, 2), (4, 8, 16, 32)),
}


def fit_window(sizes: tuple[int, ...], window: tuple[int, ...],
               shift: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Window and shift actually used for a grid of ``sizes`` (official ``get_window_size``):
    an axis no longer than its window uses its whole extent as the window, unshifted."""
    use_window, use_shift = list(window), list(shift)
    for axis, size in enumerate(sizes):
        if size <= window[axis]:
            use_window[axis] = size
            use_shift[axis] = 0
    return tuple(use_window), tuple(use_shift)


class PatchEmbed3d(nn.Module):
    """(B, 3, T, H, W) -> (B, T', H', W', C): Conv3d with kernel = stride = patch, after
    zero-padding W, H, T at the end to patch multiples; then the optional LayerNorm ``norm``."""

    def __init__(self, patch: tuple[int, int, int], dim: int, norm: bool):
        super().__init__()
        self.patch = tuple(patch)
        self.proj = nn.Conv3d(3, dim, kernel_size=self.patch, stride=self.patch)
        self.norm = nn.LayerNorm(dim) if norm else None

    def forward(self, x: Tensor) -> Tensor:
        d, h, w = x.shape[-3:]
        pd, ph, pw = self.patch
        if w % pw:
            x = F.pad(x, (0, pw - w % pw))
        if h % ph:
            x = F.pad(x, (0, 0, 0, ph - h % ph))
        if d % pd:
            x = F.pad(x, (0, 0, 0, 0, 0, pd - d % pd))
        x = self.proj(x).permute(0, 2, 3, 4, 1)
        return self.norm(x) if self.norm is not None else x


class VideoSwinStage(nn.Module):
    """``depth`` 3-D window blocks, odd ones shifted by window // 2 (no downsampling here: the
    official wrapper moved the patch merging into ``downsamples``)."""

    def __init__(self, dim: int, depth: int, num_heads: int, window: tuple[int, int, int],
                 mlp_ratio: float, qkv_bias: bool):
        super().__init__()
        self.window = tuple(window)
        self.shift = tuple(w // 2 for w in self.window)
        self.blocks = nn.ModuleList(
            SwinBlock(dim, num_heads, self.window, mlp_ratio, qkv_bias) for _ in range(depth))

    def forward(self, x: Tensor, window_chunk: int | None = None) -> Tensor:
        """x (B, T, H, W, C) -> same shape."""
        sizes = tuple(x.shape[1:4])
        window, shift = fit_window(sizes, self.window, self.shift)
        padded = tuple(-(-s // w) * w for s, w in zip(sizes, window))
        labels = stage_labels(padded, window, shift, x.device)
        for i, block in enumerate(self.blocks):
            x = block(x, window, shift if i % 2 else (0, 0, 0), labels, window_chunk)
        return x


class VideoSwinBackbone(nn.Module):
    """ReferFormer's Video Swin backbone (per-frame outputs of clip-level attention).

    ``variant``: ``video_swin_t``/``video_swin_s``/``video_swin_b`` or the official names
    (``video_swin_t_p4w7``, ...).  ``window_chunk``: windows attended per chunk (None: automatic,
    bounded by ``ATTENTION_ELEMENT_BUDGET`` logits).
    """

    def __init__(self, variant: str, window_chunk: int | None = None):
        super().__init__()
        cfg: VideoSwinSettings = resolve_variant(variant, VARIANTS, "Video Swin")
        self.settings = cfg
        self.window_chunk = window_chunk
        self.strides: list[int] = cfg.strides
        self.num_channels: list[int] = cfg.num_channels
        self.patch_embed = PatchEmbed3d(cfg.patch_size, cfg.embed_dim, cfg.patch_norm)
        n = len(cfg.depths)
        self.layers = nn.ModuleList(
            VideoSwinStage(self.num_channels[i], cfg.depths[i], cfg.num_heads[i],
                           cfg.window_size, cfg.mlp_ratio, cfg.qkv_bias)
            for i in range(n))
        self.downsamples = nn.ModuleList(PatchMerging(self.num_channels[i]) for i in range(n - 1))

    def forward(self, frames: Tensor, num_frames: int) -> list[Tensor]:
        """frames (B*T, 3, H, W), normalised, clip-major, T = num_frames -> 4 maps, finest first,
        (B*T, C_i, ceil(H/s_i), ceil(W/s_i)) with s_i = 4, 8, 16, 32 (each halving rounds up);
        the raw stage outputs (no norm)."""
        total, channels, h, w = frames.shape
        if num_frames <= 0 or total % num_frames:
            raise ValueError(f"{total} frames do not split into clips of {num_frames}")
        clips = total // num_frames
        x = frames.view(clips, num_frames, channels, h, w).transpose(1, 2)  # (B, 3, T, H, W)
        x = self.patch_embed(x)  # (B, T, H/4, W/4, C)
        outs: list[Tensor] = []
        for i, stage in enumerate(self.layers):
            x = stage(x, self.window_chunk)
            b, t, hi, wi, ci = x.shape
            outs.append(x.permute(0, 1, 4, 2, 3).reshape(b * t, ci, hi, wi))
            if i < len(self.downsamples):
                x = self.downsamples[i](x)
        return outs
