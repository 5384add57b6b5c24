"""Schema of the object-centric track-grounding model and of its training stages (see
rvos/config.py for loading)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrackGroundingConfig:
    """Frozen backbone -> class-agnostic object masks -> tracks -> sentence-scored tracks."""

    # --- frozen visual backbone (rvos.models.backbones.BACKBONES, image backbones)
    backbone: str = "mobilenet_v2"
    backbone_weights: str = "none"    # none | torchvision weights name | file path
    backbone_dtype: str = "float32"   # float32 | bfloat16 (autocast; ~2.5x faster on AVX512-BF16
                                      # CPUs) | auto (bfloat16 where native, see rvos.precision)
    # --- class-agnostic instance segmenter (centre heatmap + offsets + full-res foreground)
    seg_dim: int = 64                 # width of the feature pyramid
    refine_dim: int = 16              # width of the full-resolution refinement (RGB + pyramid)
    center_threshold: float = 0.25    # heatmap peak that makes an object
    nms_kernel: int = 3               # peak suppression window, in stride-4 cells
    max_objects: int = 16             # per frame
    min_area: int = 6                 # pixels at the input size; smaller instances are dropped
    # --- track linking across frames
    link_max_gap: int = 8             # frames a lost track may stay unseen and be re-linked
    link_max_distance: float = 2.5    # gate: distance to the predicted position, in diameters
    link_appearance_weight: float = 2.0
    # --- sentence-conditioned track scorer
    dim: int = 128
    heads: int = 4
    relation_layers: int = 2          # rounds of pairwise (track, track) reasoning
    roles: int = 4                    # word-attention read-outs (subject, place, relation, motion)
    dropout: float = 0.0              # on the scorer's appearance input and track states


@dataclass
class GroundingTrainConfig:
    """The two training stages on cached features; each ends at its step count or its share
    of ``train.time_budget_s``, whichever comes first."""

    seg_steps: int = 800
    seg_batch_frames: int = 16
    seg_lr: float = 2e-3
    seg_budget_share: float = 0.45    # of train.time_budget_s (when set)
    scorer_steps: int = 4000
    scorer_batch: int = 64            # expressions per step
    scorer_lr: float = 1e-3
    scorer_tracks: str = "gt"         # gt: tracks from the annotated masks | predicted
    flip: bool = True                 # mirrored tracks (left/right words swapped) in training
    cache_dir: str = ""               # "": <run folder>/feature_cache
