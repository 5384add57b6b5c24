"""BIFIT's architecture fields beyond ReferFormer's (``ReferFormerConfig.bifit``).

A module of its own, importing nothing of the model, so that the ReferFormer config can hold
it without an import cycle.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class BIFITConfig:
    """The official ``--query_enc_layers`` (opts.py of LANMNG/BIFIT, default 1): how many
    post-norm transformer encoder layers mix the clip's T x Q queries after every deformable
    decoder layer (the same layers after every decoder layer). Only read when
    ``ReferFormerConfig.family`` is ``bifit``."""

    query_enc_layers: int = 1
