"""``build_grounding_model(cfg)``: the track-grounding model from the config."""

from __future__ import annotations

from rvos.config import Config
from rvos.errors import RVOSError
from rvos.models.backbones import build_backbone
from rvos.models.grounding.config import TrackGroundingConfig
from rvos.models.grounding.model import TrackGroundingModel
from rvos.models.grounding.scorer import TrackScorer
from rvos.models.grounding.segmenter import InstanceSegmenter
from rvos.models.grounding.tracks import appearance_dim
from rvos.models.text import TextEncoder


def validate_grounding_config(g: TrackGroundingConfig) -> None:
    """RVOSError naming the ``model.grounding`` key that cannot work."""
    def bad(key: str, why: str) -> RVOSError:
        return RVOSError(f"invalid config: model.grounding.{key} {why} (got {getattr(g, key)!r})")

    if g.backbone.startswith("video_swin"):
        raise bad("backbone", "must be an image backbone (features are cached per frame)")
    for key in ("seg_dim", "refine_dim", "max_objects", "dim", "heads", "roles", "nms_kernel"):
        if getattr(g, key) < 1:
            raise bad(key, "must be >= 1")
    if g.backbone_dtype not in ("auto", "float32", "bfloat16"):
        raise bad("backbone_dtype", "must be auto, float32 or bfloat16")
    if g.nms_kernel % 2 == 0:
        raise bad("nms_kernel", "must be odd")
    if g.dim % g.heads:
        raise bad("heads", f"must divide dim ({g.dim})")
    if not 0 < g.center_threshold < 1:
        raise bad("center_threshold", "must lie in (0, 1)")
    for key in ("link_max_gap", "relation_layers", "min_area"):
        if getattr(g, key) < 0:
            raise bad(key, "must be >= 0")
    if not 0 <= g.dropout < 1:
        raise bad("dropout", "must lie in [0, 1)")
    if g.link_max_distance <= 0 or g.link_appearance_weight < 0:
        raise bad("link_max_distance", "and link_appearance_weight must be positive")


def build_grounding_model(cfg: Config) -> TrackGroundingModel:
    g = cfg.model.grounding
    validate_grounding_config(g)
    backbone = build_backbone(g.backbone, g.backbone_weights)
    if list(backbone.strides[:3]) != [4, 8, 16]:
        raise RVOSError(f"invalid config: model.grounding.backbone {g.backbone!r} must give "
                        "maps at strides 4, 8, 16")
    text = TextEncoder(cfg.model.text.name, freeze=True, max_length=cfg.model.text.max_length)
    segmenter = InstanceSegmenter(list(backbone.channels), g.seg_dim, g.refine_dim)
    scorer = TrackScorer(appearance_dim(list(backbone.channels)), text.dim, g.dim, g.heads,
                         g.relation_layers, g.roles, g.dropout)
    return TrackGroundingModel(backbone, text, segmenter, scorer, g)
