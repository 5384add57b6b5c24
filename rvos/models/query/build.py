"""``build_query_model(cfg)``: the query-based model and its criterion, from the config."""

from __future__ import annotations

from torch import nn

from rvos.config import Config, QueryLossConfig
from rvos.errors import RVOSError
from rvos.matcher import ClipMatcher
from rvos.models.backbones import build_backbone
from rvos.models.query.config import QueryModelConfig
from rvos.models.query.criterion import QueryCriterion
from rvos.models.query.fusion import FUSION_MODES, VisionLanguageFusion
from rvos.models.query.mask_head import DynamicMaskHead, MaskFeatureDecoder
from rvos.models.query.model import QueryRVOS
from rvos.models.query.transformer import (DeformableDecoder, DeformableDecoderLayer,
                                           DeformableEncoder, DeformableEncoderLayer)
from rvos.models.text import TextEncoder


def validate_query_config(q: QueryModelConfig) -> None:
    """RVOSError naming the ``model.query`` key that cannot work."""
    def bad(key: str, why: str) -> RVOSError:
        return RVOSError(f"invalid config: model.query.{key} {why}")

    strides = tuple(q.feature_strides)
    if not strides or any(s not in (4, 8, 16, 32, 64) for s in strides):
        raise bad("feature_strides", f"must be taken from 4, 8, 16, 32, 64, got {list(strides)}")
    if list(strides) != sorted(set(strides)):
        raise bad("feature_strides", f"must be increasing without repeats, got {list(strides)}")
    if 64 in strides and 32 not in strides:
        raise bad("feature_strides", "can only add 64 on top of 32")
    if q.dim <= 0 or q.dim % 4:
        raise bad("dim", f"must be a positive multiple of 4, got {q.dim}")
    if q.heads <= 0 or q.dim % q.heads:
        raise bad("heads", f"must divide dim ({q.dim}), got {q.heads}")
    for key in ("enc_layers", "dec_layers", "enc_points", "dec_points", "ffn_dim", "num_queries",
                "mask_dim", "dynamic_layers", "dynamic_channels"):
        minimum = 0 if key == "enc_layers" else 1
        if getattr(q, key) < minimum:
            raise bad(key, f"must be >= {minimum}, got {getattr(q, key)}")
    if q.fusion not in FUSION_MODES:
        raise bad("fusion", f"must be one of {', '.join(FUSION_MODES)}, got {q.fusion!r}")
    if not 0 <= q.dropout < 1:
        raise bad("dropout", f"must lie in [0, 1), got {q.dropout}")


def build_query_model(cfg: Config, pretrained: bool = True) -> tuple[nn.Module, nn.Module]:
    """(QueryRVOS, QueryCriterion) for ``cfg.model.query`` and ``cfg.model.text``;
    ``pretrained=False``: a text encoder of random weights (no download)."""
    q = cfg.model.query
    validate_query_config(q)
    backbone = build_backbone(q.backbone, q.backbone_weights)
    text = TextEncoder(cfg.model.text.name, cfg.model.text.freeze, cfg.model.text.max_length,
                       pretrained)
    num_levels = len(q.feature_strides)
    encoder = DeformableEncoder([
        DeformableEncoderLayer(q.dim, q.ffn_dim, q.dropout, num_levels, q.heads, q.enc_points,
                               q.deform_direct) for _ in range(q.enc_layers)])
    decoder = DeformableDecoder([
        DeformableDecoderLayer(q.dim, q.ffn_dim, q.dropout, num_levels, q.heads, q.dec_points,
                               q.deform_direct) for _ in range(q.dec_layers)], q.dim, q.box_refine)
    fpn_inputs = sum(1 for s in q.feature_strides if s <= 32) + (0 if 4 in q.feature_strides else 1)
    mask_decoder = MaskFeatureDecoder([q.dim] * fpn_inputs, q.dim, q.mask_dim)
    mask_head = DynamicMaskHead(q.dim, q.mask_dim, q.dynamic_layers, q.dynamic_channels, q.rel_coords)
    fusion = None if q.fusion == "none" else VisionLanguageFusion(q.dim, q.heads, q.fusion, q.dropout)
    model = QueryRVOS(backbone, text, encoder, decoder, mask_decoder, mask_head, dim=q.dim,
                      num_queries=q.num_queries, feature_strides=tuple(q.feature_strides),
                      fusion=fusion, freeze_backbone=q.freeze_backbone,
                      frozen_backbone_bn=q.frozen_backbone_bn, text_dropout=q.dropout)
    criterion = build_query_criterion(cfg.loss.query, q.dec_layers)
    return model, criterion


def build_query_criterion(loss: QueryLossConfig, dec_layers: int) -> QueryCriterion:
    """The query family's criterion: Hungarian matching with ``loss.cost_*``, the named
    losses weighted by ``loss``, every decoder layer supervised when ``loss.aux``."""
    matcher = ClipMatcher(loss.cost_cls, loss.cost_bbox, loss.cost_giou, loss.cost_mask,
                          loss.cost_dice, loss.focal_alpha, loss.focal_gamma)
    weights = {"class": loss.cls, "bbox": loss.bbox, "giou": loss.giou, "mask": loss.mask,
               "dice": loss.dice}
    return QueryCriterion(matcher, weights, num_aux=dec_layers - 1 if loss.aux else 0,
                          focal_alpha=loss.focal_alpha, focal_gamma=loss.focal_gamma)
