"""``build_model(cfg)`` and ``build_criterion(cfg)``: every rvos model and its training
objective, each assembled from the config by its family's ``build`` module.

Adding a model family: a folder ``rvos/models/<family>/`` with its parts, its objective and a
``build.py``, then one entry in ``_model`` and ``_criterion`` below. The criterion is built
apart from the model: inference and evaluation build the model only.
"""

from __future__ import annotations

import dataclasses

from torch import nn

from rvos.config import Config
from rvos.errors import RVOSError

MODEL_KINDS = ("baseline", "query", "grounding", "fewshot", "referformer")


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


def _kind(cfg: Config) -> str:
    kind = cfg.model.kind
    if kind not in MODEL_KINDS:
        raise RVOSError(f"unknown model.kind {kind!r}; choose one of {', '.join(MODEL_KINDS)}")
    return kind


def build_model(cfg: Config, pretrained: bool = True) -> nn.Module:
    """The model ``cfg.model.kind`` names. ``pretrained=False`` skips the backbone's initial
    weights (file or torchvision name), for models whose weights are loaded from a
    checkpoint next; for the query family the text encoder then has random weights too,
    built from its architecture without any download (``rvos.models.text``), for a
    checkpoint or a speed benchmark."""
    if not pretrained:
        cfg = without_pretrained_init(cfg)
    kind = _kind(cfg)
    if kind == "baseline":
        from rvos.models.baseline.build import build_baseline_model

        return build_baseline_model(cfg)
    if kind == "query":
        from rvos.models.query.build import build_query_model

        return build_query_model(cfg, pretrained)
    if kind == "fewshot":
        from rvos.models.fewshot.build import build_fewshot_model

        return build_fewshot_model(cfg)
    if kind == "referformer":
        from rvos.models.referformer.families import family_module

        return family_module(cfg.model.referformer.family).MODEL(cfg.model.referformer)
    from rvos.models.grounding.build import build_grounding_model

    return build_grounding_model(cfg)


def build_criterion(cfg: Config) -> nn.Module | None:
    """The training objective of ``cfg.model.kind``: a module ``(output, batch) -> named
    losses`` with ``weights`` from ``cfg.loss.<kind>``. None for the grounding
    and few-shot families, which train in stages with objectives of their own
    (``rvos.models.grounding.objective``)."""
    kind = _kind(cfg)
    if kind == "baseline":
        from rvos.models.baseline.build import build_baseline_criterion

        return build_baseline_criterion(cfg)
    if kind == "query":
        from rvos.models.query.build import build_query_criterion

        return build_query_criterion(cfg.loss.query, cfg.model.query.dec_layers,
                                     coarse_masks=cfg.model.query.sgmg.multi_granularity)
    return None
