"""Visual backbones returning multi-scale feature maps.

Every backbone maps frames (N, 3, H, W) to a list of feature maps, finest first, and
exposes ``strides`` and ``channels`` for those maps.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn

from rvos.errors import RVOSError


def load_weights_file(module: nn.Module, path: str | Path, strict: bool = True) -> None:
    """Load a state dict from a ``.safetensors`` or ``.pt``/``.pth`` file into ``module``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise RVOSError("backbone weights file not found", path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file, pickle refused, ...
        raise RVOSError(f"cannot read weights ({type(e).__name__}: {e})", path) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise RVOSError("weights file does not hold a state dict", path)
    result = module.load_state_dict(state, strict=False)
    if strict and (result.missing_keys or result.unexpected_keys):
        raise RVOSError(
            f"weights do not fit this backbone: {len(result.missing_keys)} missing keys "
            f"(e.g. {result.missing_keys[:3]}), {len(result.unexpected_keys)} unexpected "
            f"(e.g. {result.unexpected_keys[:3]})", path)


def torchvision_weights(builder, weights: str):
    """Resolve ``weights`` for a torchvision builder: "none" -> None, or an enum name."""
    if weights in ("", "none", None):
        return None
    enum = torchvision.models.get_model_weights(builder)
    try:
        return enum[weights] if weights != "DEFAULT" else enum.DEFAULT
    except KeyError:
        raise RVOSError(f"unknown torchvision weights {weights!r} for {builder.__name__}; "
                        f"known: {[w.name for w in enum]}, or a file path, or none") from None


def build_torchvision(builder, weights: str) -> nn.Module:
    """Instantiate a torchvision model with weights by name, from a file, or random."""
    if weights not in ("", "none", None) and (Path(weights).suffix in (".pt", ".pth", ".safetensors")
                                              or Path(weights).expanduser().exists()):
        model = builder(weights=None)
        load_weights_file(model, weights, strict=False)
        return model
    tv_weights = torchvision_weights(builder, weights)
    try:
        return builder(weights=tv_weights)
    except Exception as e:  # no network: urllib errors, etc.
        raise RVOSError(
            f"cannot download torchvision weights {weights} for {builder.__name__} "
            f"({type(e).__name__}); download {tv_weights.url} elsewhere and pass its path as "
            f"the backbone weights, or use weights=none") from None


class ResNetBackbone(nn.Module):
    """torchvision ResNet as a multi-scale feature extractor.

    forward: (N, 3, H, W) -> [c2 (N, C2, H/4, W/4), c3 (H/8), c4 (H/16), c5 (H/32)].
    """

    def __init__(self, depth: int = 18, weights: str = "none"):
        super().__init__()
        builders = {18: torchvision.models.resnet18, 34: torchvision.models.resnet34,
                    50: torchvision.models.resnet50, 101: torchvision.models.resnet101}
        if depth not in builders:
            raise RVOSError(f"no ResNet-{depth}; choose one of {sorted(builders)}")
        net = build_torchvision(builders[depth], weights)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        expansion = 4 if depth >= 50 else 1
        self.channels = [64 * expansion, 128 * expansion, 256 * expansion, 512 * expansion]
        self.strides = [4, 8, 16, 32]

    def forward(self, x: Tensor) -> list[Tensor]:
        c2 = self.layer1(self.stem(x))
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c2, c3, c4, c5]


def build_resnet(name: str, weights: str = "none") -> ResNetBackbone:
    """``name`` like "resnet18" / "resnet50"."""
    if not name.startswith("resnet") or not name[6:].isdigit():
        raise RVOSError(f"unknown ResNet backbone {name!r} (resnet18, resnet34, resnet50, resnet101)")
    return ResNetBackbone(int(name[6:]), weights)


# --------------------------------------------------------------------------- query-model backbones

class SwinBackbone(nn.Module):
    """torchvision Swin Transformer (swin_t / swin_s / swin_b) as a multi-scale extractor.

    forward: (N, 3, H, W) -> 4 maps (N, C_i, h_i, w_i) at strides 4, 8, 16, 32 (the patch
    embedding floors H/4, each patch merging rounds up), C = embed * (1, 2, 4, 8); each
    stage output gets its own LayerNorm, as in Swin's detection setup.
    """

    def __init__(self, variant: str = "t", weights: str = "none"):
        super().__init__()
        builders = {"t": torchvision.models.swin_t, "s": torchvision.models.swin_s,
                    "b": torchvision.models.swin_b}
        if variant not in builders:
            raise RVOSError(f"no Swin-{variant.upper()}; choose one of swin_t, swin_s, swin_b")
        net = build_torchvision(builders[variant], weights)
        self.features = net.features          # [embed, stage1, merge, stage2, merge, stage3, merge, stage4]
        embed = net.features[0][0].out_channels
        self.channels = [embed, 2 * embed, 4 * embed, 8 * embed]
        self.strides = [4, 8, 16, 32]
        self.norms = nn.ModuleList(nn.LayerNorm(c) for c in self.channels)
        self._taps = (1, 3, 5, 7)

    def forward(self, x: Tensor) -> list[Tensor]:
        outs = []
        for i, block in enumerate(self.features):
            x = block(x)                                   # channels-last (N, h, w, C)
            if i in self._taps:
                outs.append(self.norms[len(outs)](x).permute(0, 3, 1, 2).contiguous())
        return outs


class VideoSwinBackbone(nn.Module):
    """torchvision Video Swin Transformer (swin3d_t / swin3d_s / swin3d_b), the backbone SOC
    and SgMg use, as a multi-scale extractor that keeps every frame.

    The temporal patch size is 1 instead of 2 (as MTTR/SOC do) so there is one feature map
    per input frame; pretrained (Kinetics) patch-embedding weights are summed over their
    two temporal taps, which keeps the response to a static clip unchanged. Attention
    windows span up to 8 frames, so each frame's features see its neighbours.

    forward: clip (B, T, 3, H, W) -> 4 maps (B*T, C_i, H/4 .. H/32), frames of a clip
    consecutive; C = embed * (1, 2, 4, 8). ``is_video`` tells callers to pass whole clips.
    """

    is_video = True

    def __init__(self, variant: str = "t", weights: str = "none"):
        super().__init__()
        builders = {"t": torchvision.models.video.swin3d_t, "s": torchvision.models.video.swin3d_s,
                    "b": torchvision.models.video.swin3d_b}
        if variant not in builders:
            raise RVOSError(f"no Video-Swin-{variant.upper()}; choose one of video_swin_t, "
                            "video_swin_s, video_swin_b")
        net = build_torchvision(builders[variant], weights)
        old = net.patch_embed.proj
        proj = nn.Conv3d(old.in_channels, old.out_channels, kernel_size=(1, 4, 4), stride=(1, 4, 4))
        with torch.no_grad():
            proj.weight.copy_(old.weight.sum(2, keepdim=True))
            proj.bias.copy_(old.bias)
        net.patch_embed.proj = proj
        net.patch_embed.tuple_patch_size = (1, 4, 4)
        self.patch_embed = net.patch_embed
        self.features = net.features          # [stage1, merge, stage2, merge, stage3, merge, stage4]
        embed = old.out_channels
        self.channels = [embed, 2 * embed, 4 * embed, 8 * embed]
        self.strides = [4, 8, 16, 32]
        self.norms = nn.ModuleList(nn.LayerNorm(c) for c in self.channels)
        self._taps = (0, 2, 4, 6)

    def forward(self, clip: Tensor) -> list[Tensor]:
        if clip.ndim != 5:
            raise ValueError(f"VideoSwinBackbone takes clips (B, T, 3, H, W), got {tuple(clip.shape)}")
        x = self.patch_embed(clip.transpose(1, 2))        # (B, T, h, w, C)
        outs = []
        for i, block in enumerate(self.features):
            x = block(x)
            if i in self._taps:
                y = self.norms[len(outs)](x)              # (B, T, h, w, C)
                outs.append(y.flatten(0, 1).permute(0, 3, 1, 2).contiguous())
        return outs


class MobileNetV2Backbone(nn.Module):
    """torchvision MobileNetV2 (width 1.0) as a light multi-scale extractor.

    forward: (N, 3, H, W) -> [(N, 24, H/4, W/4), (N, 32, H/8), (N, 96, H/16), (N, 320, H/32)]
    (the final 1x1 conv to 1280 channels is dropped). ``weights``: "none", a torchvision
    name (IMAGENET1K_V1/V2), or a file of ``mobilenet_v2().features`` tensors such as the
    offline ``weights/mobilenetv2_imagenet_features.pt`` asset (keys ``features.<i>...``,
    or bare ``<i>...``; a file with other names is mapped 1:1 in order).
    """

    def __init__(self, weights: str = "none"):
        super().__init__()
        is_file = weights not in ("", "none", None) and (
            Path(weights).suffix in (".pt", ".pth", ".safetensors") or Path(weights).expanduser().exists())
        if is_file:
            net = torchvision.models.mobilenet_v2(weights=None)
            load_mobilenet_features(net.features, weights)
        else:
            net = build_torchvision(torchvision.models.mobilenet_v2, weights)
        self.features = net.features[:18]
        self.channels = [24, 32, 96, 320]
        self.strides = [4, 8, 16, 32]
        self._taps = (3, 6, 13, 17)

    def forward(self, x: Tensor) -> list[Tensor]:
        outs = []
        for i, block in enumerate(self.features):
            x = block(x)
            if i in self._taps:
                outs.append(x)
        return outs


def load_mobilenet_features(features: nn.Module, path: str | Path) -> None:
    """Load a file of MobileNetV2 ``features`` tensors (all of them, shapes checked)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise RVOSError("MobileNetV2 weights file not found", path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise RVOSError(f"cannot read weights ({type(e).__name__}: {e})", path) from None
    if not isinstance(state, dict):
        raise RVOSError("weights file does not hold a state dict", path)
    own = features.state_dict()
    if all(k.startswith("features.") for k in state):
        state = {k[len("features."):]: v for k, v in state.items()}
    if set(state) != set(own):
        if len(state) != len(own):
            raise RVOSError(f"weights do not fit MobileNetV2 features: {len(state)} tensors, "
                            f"expected {len(own)}", path)
        state = dict(zip(own, state.values()))         # same tensors, other names: by order
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(own[name].shape):
            raise RVOSError(f"weights do not fit MobileNetV2 features: {name} has shape "
                            f"{tuple(tensor.shape)}, expected {tuple(own[name].shape)}", path)
    features.load_state_dict(state)


BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "swin_t", "swin_s", "swin_b",
             "video_swin_t", "video_swin_s", "video_swin_b", "mobilenet_v2")


def build_backbone(name: str, weights: str = "none") -> nn.Module:
    """Any multi-scale backbone by name (see ``BACKBONES``); every one exposes ``channels``
    and ``strides`` (4, 8, 16, 32) of its four maps; ``weights`` is "none", a torchvision
    weights name, or a file path."""
    if name.startswith("resnet"):
        return build_resnet(name, weights)
    if name in ("swin_t", "swin_s", "swin_b"):
        return SwinBackbone(name[-1], weights)
    if name in ("video_swin_t", "video_swin_s", "video_swin_b"):
        return VideoSwinBackbone(name[-1], weights)
    if name == "mobilenet_v2":
        return MobileNetV2Backbone(weights)
    raise RVOSError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")


def clip_features(backbone: nn.Module, frames: Tensor) -> list[Tensor]:
    """frames (B, T, 3, H, W) -> the backbone's maps, each (B*T, C_i, h_i, w_i), frames of
    a clip consecutive; image backbones see the frames one by one, video backbones
    (``is_video``) the whole clip."""
    if getattr(backbone, "is_video", False):
        return backbone(frames)
    return backbone(frames.flatten(0, 1))
