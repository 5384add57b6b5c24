"""``build_model(cfg)``: every rvos model, assembled explicitly from its config."""

from __future__ import annotations

import dataclasses

from torch import nn

from rvos.config import Config
from rvos.errors import RVOSError
from rvos.losses import DenseMaskCriterion

MODEL_KINDS = ("baseline", "query", "grounding")


def without_pretrained_init(cfg: Config) -> Config:
    """``cfg`` with every ``backbone_weights`` set to none: the model is built with random
    initial weights, reading no weights file and downloading nothing (for a model whose
    weights then come from a checkpoint)."""
    model = cfg.model
    model = dataclasses.replace(
        model,
        baseline=dataclasses.replace(model.baseline, backbone_weights="none"),
        query=dataclasses.replace(model.query, backbone_weights="none"),
        grounding=dataclasses.replace(model.grounding, backbone_weights="none"))
    return dataclasses.replace(cfg, model=model)


def build_model(cfg: Config, pretrained: bool = True) -> tuple[nn.Module, nn.Module]:
    """Return (model, criterion) for ``cfg.model.kind``. The grounding model trains in
    stages with objectives of its own (``rvos.models.grounding.objective``): its criterion
    is None. ``pretrained=False`` skips the backbone's initial weights (file or torchvision
    name), for models whose weights are loaded from a checkpoint next; for the query family
    the text encoder then has random weights too, built from its architecture without any
    download (``rvos.models.text``), for a checkpoint or a speed benchmark."""
    if not pretrained:
        cfg = without_pretrained_init(cfg)
    kind = cfg.model.kind
    if kind == "baseline":
        from rvos.models.baseline import build_baseline

        return build_baseline(cfg.model.baseline, cfg.model.text), DenseMaskCriterion(cfg.loss.baseline)
    if kind == "query":
        from rvos.models.query.build import build_query_model

        return build_query_model(cfg, pretrained)
    if kind == "grounding":
        from rvos.models.grounding.build import build_grounding_model

        return build_grounding_model(cfg), None
    raise RVOSError(f"unknown model.kind {kind!r}; choose one of {', '.join(MODEL_KINDS)}")
