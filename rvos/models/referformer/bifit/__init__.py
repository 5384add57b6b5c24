"""BIFIT (Lan et al., 2023, "Bidirectional Correlation-Driven Inter-Frame Interaction
Transformer for Referring Video Object Segmentation"; LANMNG/BIFIT) as a family of
:mod:`rvos.models.referformer.families`: its released checkpoints keep ReferFormer's layout
plus a words-to-clip attention, a sentence pooler and inter-frame query encoder layers.

- :mod:`.config`: :class:`BIFITConfig`, the fields ``ReferFormerConfig.bifit`` holds;
- :mod:`.model`: :class:`BIFIT`, the inference model (``MODEL``);
- :mod:`.convert`: ``detect``, ``config_from_state``, ``convert_state``.

The model and the converter are loaded on first use: they import the ReferFormer model,
whose config imports :class:`BIFITConfig` from this package.
"""

from __future__ import annotations

import importlib

from rvos.models.referformer.bifit.config import BIFITConfig

SOURCE = "official BIFIT checkpoint (LANMNG/BIFIT)"

_LAZY = {"MODEL": ("rvos.models.referformer.bifit.model", "BIFIT"),
         "BIFIT": ("rvos.models.referformer.bifit.model", "BIFIT"),
         "detect": ("rvos.models.referformer.bifit.convert", "detect"),
         "config_from_state": ("rvos.models.referformer.bifit.convert", "config_from_state"),
         "convert_state": ("rvos.models.referformer.bifit.convert", "convert_state")}

__all__ = ["BIFITConfig", "SOURCE", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
