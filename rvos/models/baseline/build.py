"""The baseline family from the config: ``build_baseline_model(cfg)`` and
``build_baseline_criterion(cfg)`` (weights from ``cfg.loss.baseline``)."""

from __future__ import annotations

import torch

from rvos.config import Config
from rvos.errors import RVOSError
from rvos.models.backbones import build_backbone
from rvos.models.baseline.model import BaselineRVOS
from rvos.models.baseline.objective import DenseMaskCriterion
from rvos.models.text import TextEncoder


def build_baseline_model(cfg: Config) -> BaselineRVOS:
    """Explicit assembly of the baseline from ``cfg.model.baseline`` and ``cfg.model.text``."""
    b, text_cfg = cfg.model.baseline, cfg.model.text
    backbone = build_backbone(b.backbone, b.backbone_weights)
    if getattr(backbone, "is_video", False):
        raise RVOSError(f"the baseline runs an image backbone on every frame; {b.backbone!r} is a "
                        f"video backbone (use it with model.kind=query)")
    return BaselineRVOS(
        backbone=backbone.to(memory_format=torch.channels_last),
        text_encoder=TextEncoder(text_cfg.name, text_cfg.freeze, text_cfg.max_length),
        dim=b.dim, heads=b.heads, fusion_layers=b.fusion_layers,
        temporal_layers=b.temporal_layers, text_kernel=b.text_kernel,
    )


def build_baseline_criterion(cfg: Config) -> DenseMaskCriterion:
    return DenseMaskCriterion(cfg.loss.baseline)
