"""Schema of the ReferFormer parity model (``model.kind: referformer``).

The architecture fields are the official code's command-line options under their own
names (``opts.py`` of wjn922/ReferFormer); ``rvos convert`` reads them off a released
checkpoint's tensors, so a converted checkpoint's config always describes its weights.
The ``inference`` fields change how the computation is scheduled, never what it computes
(except ``bf16``, which trades exactness for speed and is off by default).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rvos.models.referformer.bifit.config import BIFITConfig
from rvos.models.referformer.soc_config import SOCConfig


@dataclass
class ReferFormerTextConfig:
    """The RoBERTa text encoder (a ``transformers`` RobertaModel) and its tokenizer."""

    vocab_size: int = 50265
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_positions: int = 514
    type_vocab_size: int = 1
    layer_norm_eps: float = 1e-5
    # folder with roberta-base's tokenizer files (vocab.json + merges.txt, or tokenizer.json);
    # empty: the Hugging Face cache's roberta-base, read offline. The weights never come from
    # here: they are in the converted checkpoint.
    tokenizer: str = ""


@dataclass
class ReferFormerInferenceConfig:
    """The official Ref-YouTube-VOS inference recipe, and how it is scheduled here (same
    outputs, less time and memory)."""

    short_side: int = 360             # frames resized (PIL bilinear) to this shorter side
    max_size: int = 0                 # ... with the longer side capped at this (0: no cap; SOC: 640)
    clip_frames: int = 0              # frames per clip; 0: the whole video is one clip (official)
    frame_chunk: int = 4              # frames through the per-frame parts at a time (0: all)
    channels_last: bool = True        # ResNet convolutions in NHWC (oneDNN's fast CPU layout)
    fold_frozen_bn: bool = True       # fold the backbone's frozen BatchNorms into its convs
    bf16: bool = False                # bfloat16 autocast (faster on AVX512-BF16 CPUs, not exact)


@dataclass
class ReferFormerConfig:
    """ReferFormer's inference architecture (defaults: the released Ref-YouTube-VOS models,
    run with ``--with_box_refine --binary``)."""

    # which released model this is: referformer, or a method built on its layout
    # (rvos.models.referformer.families)
    family: str = "referformer"
    backbone: str = "resnet50"        # resnet50 | resnet101 | swin_t.. | video_swin_t/s/b
    dilation: bool = False            # ResNet's last stage dilated instead of strided
    num_classes: int = 1              # 1 with --binary; 65 (Ref-YouTube-VOS), 91 (COCO) otherwise
    hidden_dim: int = 256
    nheads: int = 8
    enc_layers: int = 4
    dec_layers: int = 4
    dim_feedforward: int = 2048
    num_queries: int = 5
    num_feature_levels: int = 4
    enc_n_points: int = 4
    dec_n_points: int = 4
    with_box_refine: bool = True
    mask_dim: int = 256
    controller_layers: int = 3
    dynamic_mask_channels: int = 8
    rel_coord: bool = True
    text: ReferFormerTextConfig = field(default_factory=ReferFormerTextConfig)
    inference: ReferFormerInferenceConfig = field(default_factory=ReferFormerInferenceConfig)
    # the derived families' own fields (rvos.models.referformer.families)
    bifit: BIFITConfig = field(default_factory=BIFITConfig)   # family "bifit" only
    soc: SOCConfig = field(default_factory=SOCConfig)         # family "soc" only
