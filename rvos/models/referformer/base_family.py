"""Plain ReferFormer (wjn922/ReferFormer) as a family of :mod:`rvos.models.referformer.families`."""

from __future__ import annotations

from torch import Tensor

from rvos.models.referformer.convert import config_from_state, convert_state
from rvos.models.referformer.model import ReferFormer

MODEL = ReferFormer
SOURCE = "official ReferFormer-layout checkpoint (wjn922/ReferFormer)"

__all__ = ["MODEL", "SOURCE", "config_from_state", "convert_state", "detect"]


def detect(state: dict[str, Tensor]) -> bool:
    """The fallback family: claims every state dict no other family claims."""
    return True
