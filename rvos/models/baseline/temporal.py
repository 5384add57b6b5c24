"""Temporal modules that mix information across the frames of a clip."""

from __future__ import annotations

from torch import Tensor, nn


class Conv3dTemporalBlock(nn.Module):
    """Residual 3x3x3 Conv3d block over (time, height, width).

    forward(x (B, T, D, h, w)) -> (B, T, D, h, w); zero padding in time keeps T.
    """

    def __init__(self, dim: int, groups: int = 8):
        super().__init__()
        self.conv1 = nn.Conv3d(dim, dim, kernel_size=3, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(groups, dim)
        self.conv2 = nn.Conv3d(dim, dim, kernel_size=3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(groups, dim)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        y = x.permute(0, 2, 1, 3, 4)                    # (B, D, T, h, w)
        y = self.act(self.norm1(self.conv1(y)))
        y = self.norm2(self.conv2(y))
        return self.act(x + y.permute(0, 2, 1, 3, 4))
