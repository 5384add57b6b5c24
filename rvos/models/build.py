"""``build_model(cfg)``: every rvos model, assembled explicitly from its config."""

from __future__ import annotations

from torch import nn

from rvos.config import Config
from rvos.errors import RVOSError
from rvos.losses import DenseMaskCriterion

MODEL_KINDS = ("baseline", "query", "grounding")


def build_model(cfg: Config) -> tuple[nn.Module, nn.Module]:
    """Return (model, criterion) for ``cfg.model.kind``. The grounding model trains in
    stages with objectives of its own (``rvos.models.grounding.objective``): its criterion
    is None."""
    kind = cfg.model.kind
    if kind == "baseline":
        from rvos.models.baseline import build_baseline

        return build_baseline(cfg.model.baseline, cfg.model.text), DenseMaskCriterion(cfg.loss)
    if kind == "query":
        from rvos.models.query.build import build_query_model

        return build_query_model(cfg)
    if kind == "grounding":
        from rvos.models.grounding.build import build_grounding_model

        return build_grounding_model(cfg), None
    raise RVOSError(f"unknown model.kind {kind!r}; choose one of {', '.join(MODEL_KINDS)}")
