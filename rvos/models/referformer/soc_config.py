"""The SOC family's architecture fields beyond ReferFormer's (:mod:`rvos.models.referformer.soc`),
kept in a module of their own so that :mod:`rvos.models.referformer.config` can hold them
without importing the model."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SOCConfig:
    """SOC's object-cluster module (``VOC`` of the official ``configs/refer_youtube_vos.yaml``);
    unused by the other families. SOC's resize cap is ``inference.max_size``."""

    voc_queries: int = 20             # video queries (VOC num_queries; = the frame queries)
    voc_enc_layers: int = 3           # self-attention layers over the T*Q frame queries
    voc_dec_layers: int = 3           # video-query decoder layers
    voc_ffn: int = 2048
    voc_heads: int = 8                # not in the shapes; the official value
