"""Released BIFIT checkpoints (LANMNG/BIFIT's ``{"model": state_dict, ...}``) -> rvos.

A BIFIT state dict is ReferFormer's (``rvos.models.referformer.convert``) with

- ``transformer.decoder.decoder_layers.i.*`` where ReferFormer has
  ``transformer.decoder.layers.i.*`` (the same deformable decoder layers);
- ``transformer.decoder.query_encoder_layers.j.*``: the inter-frame layers
  (``self_attn`` as ``nn.MultiheadAttention``, ``linear1``, ``linear2``, ``norm1``, ``norm2``);
- ``text_fusion_module.multihead_attn.*``: the words-to-clip attention;
- ``poolout_module.dense.*``: the sentence pooler.

rvos's BIFIT keeps all these names, so the mapping is ReferFormer's (``backbone.0.`` ->
``backbone.``; the decoder's duplicate box heads and the ``position_ids`` buffer dropped);
every key is accounted for the same way.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from torch import Tensor

from rvos.errors import RVOSError
from rvos.models.referformer import convert as base
from rvos.models.referformer.bifit.config import BIFITConfig
from rvos.models.referformer.config import ReferFormerConfig

DECODER = "transformer.decoder.decoder_layers."
QUERY_ENCODER = "transformer.decoder.query_encoder_layers."
# any of these claims a state dict for BIFIT (ReferFormer, SgMg and SOC have none of them)
MARKERS = (DECODER, QUERY_ENCODER, "text_fusion_module.", "poolout_module.")
REQUIRED = ("text_fusion_module.multihead_attn.in_proj_weight", "poolout_module.dense.weight",
            DECODER + "0.cross_attn.attention_weights.weight")


def detect(state: dict[str, Tensor]) -> bool:
    """Whether ``state`` is BIFIT's: it has any of BIFIT's own modules."""
    return any(key.startswith(MARKERS) for key in state)


def config_from_state(state: dict[str, Tensor], source: Path | None = None) -> ReferFormerConfig:
    """The architecture of a BIFIT state dict: ReferFormer's fields read as ReferFormer's
    converter reads them, plus the number of inter-frame layers."""
    absent = [k for k in REQUIRED if k not in state]
    if absent:
        raise RVOSError(f"not a BIFIT checkpoint: it lacks {', '.join(absent)}", source)
    as_referformer = {("transformer.decoder.layers." + k[len(DECODER):] if k.startswith(DECODER) else k): v
                      for k, v in state.items()}
    cfg = base.config_from_state(as_referformer, source)
    layers = base.count_children(state, QUERY_ENCODER)
    if layers:
        ffn = state.get(QUERY_ENCODER + "0.linear1.weight")
        if ffn is None or ffn.shape[0] != cfg.dim_feedforward:
            got = "none" if ffn is None else ffn.shape[0]
            raise RVOSError(f"the inter-frame layers' FFN width ({got}) is not the transformer's "
                            f"dim_feedforward ({cfg.dim_feedforward}), as the official code builds "
                            f"them", source)
    return dataclasses.replace(cfg, family="bifit", bifit=BIFITConfig(query_enc_layers=layers))


def convert_state(state: dict[str, Tensor], expected: dict[str, Tensor],
                  source: Path | None = None) -> dict[str, Tensor]:
    """Official names -> rvos names (ReferFormer's mapping), checked against the model's own
    state dict ``expected``: every key mapped, none left over, every shape equal."""
    return base.map_official_state(state, expected, source, model_name="BIFIT")
