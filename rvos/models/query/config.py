"""Schema of the query-based model and its criterion (see rvos/config.py for loading)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class QueryModelConfig:
    """Query-based (ReferFormer-style) model settings."""

    backbone: str = "resnet50"
    backbone_weights: str = "none"
    dim: int = 256
    num_queries: int = 5
