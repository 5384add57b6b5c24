"""Segmentation heads."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def conv_gn_relu(in_ch: int, out_ch: int, groups: int = 8) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
                         nn.GroupNorm(groups, out_ch), nn.ReLU(inplace=True))


class UpsamplingMaskHead(nn.Module):
    """Dense mask head: refine the fused stride-8 map with the stride-4 backbone map,
    predict one mask logit per pixel and upsample bilinearly to the input size.

    forward(fused (N, D, H/8, W/8), fine (N, C2, H/4, W/4), out_size (H, W),
            kernel (N, D/2 + 1) or None) -> logits (N, 1, H, W)

    ``kernel``, when given, is a per-sample 1x1 convolution (weights and bias) generated
    from the sentence and added to the static predictor: the logit becomes a similarity
    between each pixel's embedding and the sentence, which grounds words much faster
    than additive fusion alone.
    """

    def __init__(self, dim: int, fine_channels: int):
        super().__init__()
        self.refine_coarse = conv_gn_relu(dim, dim)
        self.lateral_fine = nn.Conv2d(fine_channels, dim, 1)
        self.refine_fine = conv_gn_relu(dim, dim // 2)
        self.predict = nn.Conv2d(dim // 2, 1, 1)
        self.kernel_channels = dim // 2 + 1

    def forward(self, fused: Tensor, fine: Tensor, out_size: tuple[int, int],
                kernel: Tensor | None = None) -> Tensor:
        x = self.refine_coarse(fused)
        x = F.interpolate(x, size=fine.shape[-2:], mode="bilinear", align_corners=False)
        x = self.refine_fine(x + self.lateral_fine(fine))
        logits = self.predict(x)
        if kernel is not None:
            weight, bias = kernel[:, :-1], kernel[:, -1]
            dynamic = torch.einsum("nchw,nc->nhw", x, weight) / weight.shape[1] ** 0.5
            logits = logits + (dynamic + bias[:, None, None]).unsqueeze(1)
        return F.interpolate(logits, size=out_size, mode="bilinear", align_corners=False)
