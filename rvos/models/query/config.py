"""Schema of the query-based model and its criterion (see rvos/config.py for loading).

Defaults are a small model that trains on CPU; the published-scale settings of the
anchors (ReferFormer / SOC / SgMg) are written out in rvos/configs/query_ytvos_*.yaml.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SOCConfig:
    """SOC (Luo et al., NeurIPS 2023; rvos/models/query/soc.py). All off: the base model."""

    clusters: bool = False            # video-level object clusters added back to every frame's queries
    vision_text: bool = False         # contrastive text embedding from words attending to the clip
    enc_layers: int = 3               # cluster encoder: self-attention over all T*Q frame queries
    dec_layers: int = 3               # cluster decoder: sentence-initialised video queries
    ffn_dim: int = 2048


@dataclass
class BIFITConfig:
    """BIFIT's modules (rvos/models/query/bifit.py), one switch each; all off is the base."""

    # words attend to the clip's visual tokens of every level before the encoder (the other
    # direction is ``fusion``), and their pooled feature becomes the queries' content
    bidirectional: bool = False
    sentence_pool: str = "first"      # first (official: Linear + tanh of word 0) | mean (of the real words)
    # after every decoder layer, the T x Q queries of a clip self-attend (+ FFN)
    inter_frame: bool = False
    inter_frame_layers: int = 1       # --query_enc_layers; the same layers after every decoder layer
    inter_frame_gate: bool = False    # x + tanh(g)(f(x) - x), g = 0 at start (not in the paper)


@dataclass
class SgMgConfig:
    """SgMg's modules (Miao et al., ICCV 2023; rvos/models/query/sgmg.py), each off by
    default so that the default is the unchanged core."""

    # Spectrum-guided cross-modal fusion: a residual spectral filter before and after each
    # level's fusion with the words (needs model.query.fusion add or multiply)
    spectrum_fusion: bool = False
    spectrum_sigma: float = 7.0       # width of the damped band, in frequency bins of the finest level
    # Multi-granularity segment-and-optimize head: the dynamic kernels segment the encoder
    # memory (stride 8) into coarse patch masks, then a detail optimizer refines them with the
    # backbone's stride-8 and stride-4 maps (needs feature_strides to start at 8)
    multi_granularity: bool = False
    patch_size: int = 4               # each stride-8 position predicts a patch x patch mask block
    refine: str = "best"              # at inference, refine the best-scoring query only, or "all"


@dataclass
class QueryModelConfig:
    """Query-based (ReferFormer-style) model settings."""

    # --- visual backbone (rvos.models.backbones.BACKBONES)
    backbone: str = "resnet50"        # resnet18/34/50/101 | swin_t/s/b | video_swin_t/s/b | mobilenet_v2
    backbone_weights: str = "none"    # none | torchvision weights name | file path
    freeze_backbone: bool = False     # no gradients and frozen BatchNorm statistics
    frozen_backbone_bn: bool = False  # BatchNorm statistics and affine frozen, convs trained (DETR's FrozenBatchNorm2d)
    # strides of the transformer's feature levels: any of 4, 8, 16, 32 (backbone maps) and
    # 64 (an extra stride-2 conv on the last map, as Deformable DETR / ReferFormer add)
    feature_strides: tuple[int, ...] = (8, 16, 32)

    # --- transformer
    dim: int = 256
    heads: int = 8
    enc_layers: int = 4
    dec_layers: int = 4
    enc_points: int = 4
    dec_points: int = 4
    ffn_dim: int = 1024
    dropout: float = 0.1
    num_queries: int = 5
    box_refine: bool = True           # iterative box refinement across decoder layers
    # vision-language early fusion of every level with the words: "add" (residual cross-
    # attention, stable from scratch), "multiply" (ReferFormer's gating), or "none"
    fusion: str = "add"
    deform_direct: bool = False       # slow direct deformable attention (for checks only)

    # --- masks
    mask_dim: int = 8                 # channels of the stride-4 mask feature map
    dynamic_layers: int = 3           # dynamic 1x1 convs per query
    dynamic_channels: int = 8
    rel_coords: bool = True           # add coordinates relative to the query's box centre

    # --- methods plugged into the core (each all-off by default)
    soc: SOCConfig = field(default_factory=SOCConfig)
    bifit: BIFITConfig = field(default_factory=BIFITConfig)
    sgmg: SgMgConfig = field(default_factory=SgMgConfig)
