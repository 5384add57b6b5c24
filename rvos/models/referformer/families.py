"""The released model families that keep ReferFormer's checkpoint layout, and where each
one's parts live.

A family is a package (or module) that exports

- ``detect(state) -> bool``: whether an official state dict is of this family (checked in
  the order below, before falling back to plain ReferFormer);
- ``config_from_state(state, source) -> ReferFormerConfig``: the architecture read off the
  tensors, with ``family`` set to the family's name;
- ``convert_state(state, expected, source) -> dict``: official names -> rvos names, checked
  against the model's own state dict (every key mapped, none left over, shapes equal);
- ``MODEL``: the model class, built from a :class:`ReferFormerConfig`, with ReferFormer's
  inference interface (``load_tokenizer``, ``predict``, ``forward``, ``prepare_for_inference``);
- ``SOURCE``: the official repository the family's checkpoints come from (recorded in the
  converted checkpoint).

``rvos convert`` and ``build_model`` go through :func:`family_module` only.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from torch import Tensor

# name -> module; the derived families are detected first, plain ReferFormer last
FAMILIES: dict[str, str] = {
    "referformer": "rvos.models.referformer.base_family",
    "soc": "rvos.models.referformer.soc",
    "bifit": "rvos.models.referformer.bifit",
    "sgmg": "rvos.models.referformer.sgmg",
}
DETECTION_ORDER: tuple[str, ...] = tuple(f for f in FAMILIES if f != "referformer") + ("referformer",)


def family_module(name: str) -> ModuleType:
    """The module of family ``name`` (one of :data:`FAMILIES`)."""
    if name not in FAMILIES:
        raise ValueError(f"unknown released-model family {name!r} (known: {', '.join(FAMILIES)})")
    return importlib.import_module(FAMILIES[name])


def detect_family(state: dict[str, Tensor]) -> str:
    """The family of an official state dict; plain ReferFormer when no other claims it (its
    own checks then say what is missing)."""
    for name in DETECTION_ORDER[:-1]:
        if family_module(name).detect(state):
            return name
    return "referformer"
