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
