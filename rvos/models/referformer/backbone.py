"""ReferFormer's visual backbones: four maps (strides 4, 8, 16, 32), finest first.

ResNet is torchvision's with DETR's frozen BatchNorm (``torchvision.ops.FrozenBatchNorm2d``
computes exactly the official ``FrozenBatchNorm2d``: eps 1e-5 inside the rsqrt), keys
``body.conv1 ... body.layer4`` as the official ``backbone.0.body``. Swin and Video Swin live
in ``swin.py`` and ``video_swin.py`` with the same interface.

Every backbone: ``forward(frames (B*T, 3, H, W), num_frames) -> 4 maps (B*T, C_i, H_i, W_i)``,
``strides``, ``num_channels``, and ``temporal``: whether it mixes the frames of a clip (then
it must see the whole clip at once).
"""

from __future__ import annotations

import torch
import torchvision
from torch import Tensor, nn
from torchvision.ops import FrozenBatchNorm2d

RESNETS = ("resnet50", "resnet101")


class ResNetBody(nn.Module):
    """The stem and the four stages of a torchvision ResNet (no pooling head)."""

    def __init__(self, name: str, dilation: bool):
        super().__init__()
        resnet = getattr(torchvision.models, name)(
            weights=None, norm_layer=FrozenBatchNorm2d,
            replace_stride_with_dilation=[False, False, dilation])
        for part in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            self.add_module(part, getattr(resnet, part))

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        maps = []
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = stage(x)
            maps.append(x)
        return maps


class ResNetBackbone(nn.Module):
    def __init__(self, name: str = "resnet50", dilation: bool = False):
        super().__init__()
        if name not in RESNETS:
            raise ValueError(f"unknown ResNet {name!r}; known: {', '.join(RESNETS)}")
        self.body = ResNetBody(name, dilation)
        self.strides = [4, 8, 16, 16 if dilation else 32]
        self.num_channels = [256, 512, 1024, 2048]
        self.temporal = False             # frame by frame: may run over chunks of frames

    def forward(self, frames: Tensor, num_frames: int) -> list[Tensor]:
        return self.body(frames)

    @torch.no_grad()
    def fold_frozen_batchnorm(self) -> None:
        """Fold every frozen BatchNorm into the convolution before it (inference only: the
        state dict changes). Same function up to float rounding, one pass less over every map."""
        def fold(conv: nn.Conv2d, bn: FrozenBatchNorm2d) -> nn.Conv2d:
            scale = bn.weight * (bn.running_var + bn.eps).rsqrt()
            fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                              conv.padding, conv.dilation, conv.groups, bias=True)
            fused.weight.copy_(conv.weight * scale[:, None, None, None])
            fused.bias.copy_(bn.bias - bn.running_mean * scale)
            return fused.to(conv.weight.device)

        body = self.body
        body.conv1, body.bn1 = fold(body.conv1, body.bn1), nn.Identity()
        for stage in (body.layer1, body.layer2, body.layer3, body.layer4):
            for block in stage:
                for i in (1, 2, 3):
                    conv, bn = getattr(block, f"conv{i}"), getattr(block, f"bn{i}")
                    setattr(block, f"conv{i}", fold(conv, bn))
                    setattr(block, f"bn{i}", nn.Identity())
                if block.downsample is not None:
                    block.downsample = nn.Sequential(fold(block.downsample[0], block.downsample[1]))


class SwinFamilyBackbone(nn.Module):
    """A Swin or Video Swin under ``body`` (the official ``backbone.0.body`` keys)."""

    def __init__(self, body: nn.Module, temporal: bool):
        super().__init__()
        self.body = body
        self.strides, self.num_channels = list(body.strides), list(body.num_channels)
        self.temporal = temporal          # True: mixes the frames of a clip (Video Swin)

    def forward(self, frames: Tensor, num_frames: int) -> list[Tensor]:
        return self.body(frames, num_frames)


def build_backbone(name: str, dilation: bool = False) -> nn.Module:
    """The backbone ``name``: resnet50/101, an image Swin, or a Video Swin."""
    if name in RESNETS:
        return ResNetBackbone(name, dilation)
    if name.startswith("video_swin"):
        from rvos.models.referformer.video_swin import VideoSwinBackbone

        return SwinFamilyBackbone(VideoSwinBackbone(name), temporal=True)
    if name.startswith("swin"):
        from rvos.models.referformer.swin import SwinBackbone

        return SwinFamilyBackbone(SwinBackbone(name), temporal=False)
    raise ValueError(f"unknown ReferFormer backbone {name!r}: resnet50, resnet101, swin_*, video_swin_*")
