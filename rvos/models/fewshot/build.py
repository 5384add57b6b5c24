"""``build_fewshot_model(cfg)``: the few-shot track-grounding model from the config."""

from __future__ import annotations

from rvos.config import Config
from rvos.models.fewshot.affinity import CrossModalAffinity
from rvos.models.fewshot.model import FewShotGroundingModel
from rvos.models.grounding.build import build_grounding_model
from rvos.models.grounding.tracks import appearance_dim


def build_fewshot_model(cfg: Config) -> FewShotGroundingModel:
    base = build_grounding_model(cfg)
    f = cfg.model.fewshot
    affinity = None
    if f.affinity:
        affinity = CrossModalAffinity(appearance_dim(list(base.backbone.channels)), base.text.dim,
                                      cfg.model.grounding.dim, f.key_dim, f.heads,
                                      f.self_affinity, f.dropout, f.shape_dim)
    return FewShotGroundingModel(base.backbone, base.text, base.segmenter, base.scorer, affinity,
                                 cfg.model.grounding)
