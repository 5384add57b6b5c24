"""The query family from the config: ``build_query_model(cfg)`` and ``build_query_criterion``
(Hungarian matching and weights from ``cfg.loss.query``)."""

from __future__ import annotations

from torch import nn

from rvos.config import Config, QueryLossConfig
from rvos.errors import RVOSError
from rvos.models.query.matcher import ClipMatcher
from rvos.models.backbones import build_backbone
from rvos.models.query.bifit import SENTENCE_POOLS, InterFrameInteraction, VisionToWords
from rvos.models.query.config import QueryModelConfig
from rvos.models.query.criterion import QueryCriterion
from rvos.models.query.fusion import FUSION_MODES, VisionLanguageFusion
from rvos.models.query.mask_head import DynamicMaskHead, MaskFeatureDecoder
from rvos.models.query.model import QueryRVOS
from rvos.models.query.soc import SOC, TextFromVideo, VideoObjectClusters
from rvos.models.query.sgmg import (SGMG_LOSS_NAMES, DetailOptimizer, MultiGranularityHead,
                                   SpectrumFusion, validate_sgmg_config)
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
    if q.bifit.bidirectional and q.fusion == "none":     # BIFIT
        raise bad("bifit.bidirectional", "needs model.query.fusion add or multiply (the other direction)")
    if q.bifit.sentence_pool not in SENTENCE_POOLS:
        raise bad("bifit.sentence_pool", f"must be one of {', '.join(SENTENCE_POOLS)}, got {q.bifit.sentence_pool!r}")
    if q.bifit.inter_frame_layers < 1:
        raise bad("bifit.inter_frame_layers", f"must be >= 1, got {q.bifit.inter_frame_layers}")
    validate_sgmg_config(q)


def build_query_model(cfg: Config, pretrained: bool = True) -> nn.Module:
    """QueryRVOS for ``cfg.model.query`` and ``cfg.model.text``; ``pretrained=False``: a
    text encoder of random weights (no download)."""
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
    soc = build_soc(q, cfg.loss.query)
    # BIFIT: its word attention has no dropout in the official model; it gates like ``fusion``
    bifit_words = VisionToWords(q.dim, q.heads, q.fusion, q.bifit.sentence_pool) \
        if q.bifit.bidirectional else None
    bifit_inter_frame = InterFrameInteraction(q.dim, q.heads, q.ffn_dim, q.dropout,
                                              q.bifit.inter_frame_layers, q.bifit.inter_frame_gate) \
        if q.bifit.inter_frame else None
    # --- SgMg (Miao et al., ICCV 2023): spectral filters around the fusion; the dynamic heads
    # segment the encoder memory into P x P patch masks, refined by the detail optimizer
    sg = q.sgmg
    sgmg_spectrum = SpectrumFusion(q.dim, num_levels, sg.spectrum_sigma) if sg.spectrum_fusion else None
    sgmg_head = None
    if sg.multi_granularity:
        mask_decoder = None
        mask_head = DynamicMaskHead(q.dim, q.dim, q.dynamic_layers, q.dynamic_channels,
                                    q.rel_coords, out_channels=sg.patch_size ** 2)
        sgmg_head = MultiGranularityHead(
            DetailOptimizer(sg.patch_size, backbone.channels[1], backbone.channels[0]), sg.refine)
    model = QueryRVOS(backbone, text, encoder, decoder, mask_decoder, mask_head, dim=q.dim,
                      num_queries=q.num_queries, feature_strides=tuple(q.feature_strides),
                      fusion=fusion, freeze_backbone=q.freeze_backbone,
                      frozen_backbone_bn=q.frozen_backbone_bn, text_dropout=q.dropout, soc=soc,
                      bifit_words=bifit_words, bifit_inter_frame=bifit_inter_frame,
                      sgmg_spectrum=sgmg_spectrum, sgmg_head=sgmg_head)
    return model


def build_soc(q: QueryModelConfig, loss: QueryLossConfig) -> SOC | None:
    """SOC's modules from ``model.query.soc`` (None when its clusters are off)."""
    s = q.soc
    if not s.clusters:
        for key, on in (("model.query.soc.vision_text", s.vision_text),
                        ("loss.query.contrast", loss.contrast > 0)):
            if on:
                raise RVOSError(f"invalid config: {key} needs model.query.soc.clusters: true "
                                "(it works on the video-level object embeddings)")
        return None
    clusters = VideoObjectClusters(q.dim, q.heads, q.num_queries, s.enc_layers, s.dec_layers,
                                   s.ffn_dim, q.dropout)
    text_level = max(i for i, stride in enumerate(q.feature_strides) if stride <= 32)
    return SOC(clusters, TextFromVideo(q.dim, q.heads) if s.vision_text else None, text_level)


def build_query_criterion(loss: QueryLossConfig, dec_layers: int,
                          coarse_masks: bool = False) -> QueryCriterion:
    """The query family's criterion: Hungarian matching with ``loss.cost_*``, the named
    losses weighted by ``loss``, every decoder layer supervised when ``loss.aux``;
    ``coarse_masks``: the model has SgMg's head, whose coarse masks are weighted by
    ``loss.sgmg_coarse_*`` (where not 0)."""
    matcher = ClipMatcher(loss.cost_cls, loss.cost_bbox, loss.cost_giou, loss.cost_mask,
                          loss.cost_dice, loss.focal_alpha, loss.focal_gamma)
    weights = {"class": loss.cls, "bbox": loss.bbox, "giou": loss.giou, "mask": loss.mask,
               "dice": loss.dice}
    if loss.contrast > 0:   # SOC: only when on, so that models without it are not asked for it
        weights["contrast"] = loss.contrast
    if coarse_masks:        # SgMg
        weights.update({k: getattr(loss, k) for k in SGMG_LOSS_NAMES if getattr(loss, k)})
    return QueryCriterion(matcher, weights, num_aux=dec_layers - 1 if loss.aux else 0,
                          focal_alpha=loss.focal_alpha, focal_gamma=loss.focal_gamma)
