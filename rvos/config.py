"""Typed configuration: dataclasses are the schema, YAML files set values, the command line
overrides them with ``key=value`` (dotted keys, YAML-parsed values).

    cfg = load_config("baseline_synth", ["optim.lr=1e-3", "data.num_frames=6"])

A config is a YAML file or the name of one shipped in the package (``rvos/configs/``:
``baseline_synth``, ``ablations/soc_without_clusters``; :func:`config_names` lists them).
Unknown keys, values of the wrong type and values out of range (``RULES``: every number of
the schema has one) are errors that name the file and the key, e.g.
``x.yaml: invalid config: data.input_size: must be two positive integers, got [0, 0]``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from rvos.errors import RVOSError
from rvos.models.fewshot.config import (CrossModalAffinityConfig, FewShotDataConfig,
                                        FewShotTrainConfig)
from rvos.models.grounding.config import GroundingTrainConfig, TrackGroundingConfig
from rvos.models.query.config import QueryModelConfig
from rvos.models.referformer.config import ReferFormerConfig
from rvos.models.referformer.families import FAMILIES


@dataclass
class DataConfig:
    """Where the data is and how clips are sampled and augmented."""

    root: str = "data/synth"          # dataset root, in the layout ``format`` names
    format: str = "ref-ytvos"         # ref-ytvos (also synthetic, Ref-DAVIS converted) | a2d |
                                      # jhmdb | mevis | refcoco: the official layout under root
    train_split: str = "train"
    val_split: str = "valid"
    num_frames: int = 4               # T, frames per training clip
    max_frame_stride: int = 2         # training clips take every k-th frame, k in [1, this]
    frame_range: int = 8              # MeViS (LMPM's SAMPLING_FRAME_RANGE): a clip's other frames
                                      # lie within this many frames of its random reference frame
    input_size: tuple[int, int] = (128, 128)   # (H, W) the network sees
    hflip_prob: float = 0.5           # a flip also swaps left/right words in the sentence
    scale_jitter: float = 0.0         # random crop-and-resize with scale in [1 - this, 1]
    color_jitter: float = 0.0         # brightness/contrast jitter amplitude
    num_workers: int = 0
    max_train_samples: int = 0        # 0: every (video, expression) pair of the split
    max_val_samples: int = 0
    # Referring-image pre-training / joint training (RefCOCO-style, one-frame clips)
    refcoco_root: str = ""            # folder with refcoco*/refs(*).p and instances.json + images
    refcoco_dataset: str = "refcoco"  # refcoco | refcoco+ | refcocog
    joint_image_ratio: float = 0.0    # share of training samples drawn from image data
    # few-shot episodes (model.kind: fewshot): the dataset, fold and shots
    fewshot: FewShotDataConfig = field(default_factory=FewShotDataConfig)


@dataclass
class TextConfig:
    """Text encoder: "minilm" (offline default), or a Hugging Face name / local folder."""

    name: str = "minilm"
    freeze: bool = True
    max_length: int = 32


@dataclass
class BaselineConfig:
    """The baseline: ResNet + MHA fusion + Conv3d temporal + upsampling head."""

    backbone: str = "resnet18"        # resnet18 | resnet50 (the seed), or an image backbone such as mobilenet_v2
    backbone_weights: str = "none"    # none | torchvision weights name (IMAGENET1K_V1) | file path
    dim: int = 128                    # fusion width
    heads: int = 4
    fusion_layers: int = 1
    temporal_layers: int = 1          # 3x3x3 Conv3d blocks; 0 disables the temporal module
    text_kernel: bool = True          # sentence-generated 1x1 kernel in the mask head


@dataclass
class ModelConfig:
    kind: str = "baseline"            # baseline | query | grounding | fewshot | referformer
    text: TextConfig = field(default_factory=TextConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    query: QueryModelConfig = field(default_factory=QueryModelConfig)
    grounding: TrackGroundingConfig = field(default_factory=TrackGroundingConfig)
    fewshot: CrossModalAffinityConfig = field(default_factory=CrossModalAffinityConfig)
    referformer: ReferFormerConfig = field(default_factory=ReferFormerConfig)  # released checkpoints


@dataclass
class DenseLossConfig:
    """The baseline's dense-mask loss: weights of BCE, Dice and Focal on its one mask."""

    bce: float = 0.3
    dice: float = 0.6
    focal: float = 0.1
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0


@dataclass
class QueryLossConfig:
    """The query family's objective: loss weights (``cls`` .. ``dice``, ReferFormer's
    2 / 5 / 2 / 2 / 5), Hungarian matching costs (``cost_*``), and the weights of the
    methods' own losses (0 where the method is not in the model)."""

    aux: bool = True                  # every decoder layer is supervised, with these weights
    cls: float = 2.0                  # sigmoid focal loss of the scores
    bbox: float = 5.0                 # L1 of the matched query's boxes
    giou: float = 2.0
    mask: float = 2.0                 # per-pixel sigmoid focal loss
    dice: float = 5.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    cost_cls: float = 2.0
    cost_bbox: float = 5.0
    cost_giou: float = 2.0
    cost_mask: float = 2.0
    cost_dice: float = 5.0
    contrast: float = 0.0             # SOC's video-level text/object contrastive loss (0 = off)
    # SgMg: focal and Dice of the coarse (segment) masks, beside the refined ones (2 and 5 in
    # the official recipe); used where model.query.sgmg.multi_granularity is on
    sgmg_coarse_mask: float = 0.0
    sgmg_coarse_dice: float = 0.0


@dataclass
class LossConfig:
    """The one home of loss weights, one section per model family (the grounding family's
    stages weigh their losses in ``rvos.models.grounding.objective``). Loss weights are not
    part of a model's architecture: a checkpoint loads whatever they are."""

    baseline: DenseLossConfig = field(default_factory=DenseLossConfig)
    query: QueryLossConfig = field(default_factory=QueryLossConfig)


@dataclass
class OptimConfig:
    lr: float = 5e-4
    weight_decay: float = 1e-4
    backbone_lr_mult: float = 1.0
    batch_size: int = 2
    accumulate_steps: int = 4         # optimizer step every this many batches
    clip_grad_norm: float = 1.0       # 0 disables clipping (the norm is logged either way)
    schedule: str = "cosine_restarts"  # cosine_restarts (sched_t0, sched_t_mult, min_lr) | step
                                      # (ReferFormer's MultiStepLR: lr_drop_epochs, lr_drop_gamma)
    sched_t0: int = 5                 # CosineAnnealingWarmRestarts, in epochs
    sched_t_mult: int = 2
    min_lr: float = 1e-6
    lr_drop_epochs: tuple[int, ...] = (6, 8)   # step: x lr_drop_gamma from the start of each
    lr_drop_gamma: float = 0.1                 # of these (0-based) epochs
    amp: bool = True                  # autocast: bf16 on CPUs and on GPUs that support it,
                                      # else fp16 + GradScaler (see amp_dtype)
    amp_dtype: str = "auto"           # auto | bfloat16 | float16 (float16: with a GradScaler)


@dataclass
class CachedTrainConfig:
    """Steps of the query family on cached frozen-backbone features (``train.feature_cache``,
    rvos.engine.query_cache_trainer): each step takes ``clips_per_step`` clips of
    ``data.num_frames`` frames and their videos' sentences together. An epoch is one pass
    over the training videos; optim.batch_size, accumulate_steps and sched_* are not used
    (the learning rate warms up, then follows one cosine to optim.min_lr over the run)."""

    clips_per_step: int = 4
    sentences_per_clip: int = 0       # 0: every sentence of the clip's video, else a random few
    warmup_steps: int = 20
    cache_dir: str = ""               # "": <run folder>/feature_cache


@dataclass
class TrainConfig:
    out_dir: str = "runs/baseline"
    epochs: int = 10
    seed: int = 0
    device: str = "auto"              # auto | cpu | cuda | cuda:N
    log_every: int = 10               # optimizer steps between CSV/TensorBoard rows
    eval_every: int = 1               # epochs between validation passes; 0 disables
    max_steps_per_epoch: int = 0      # 0: a full pass over the training samples
    time_budget_s: float = 0.0        # 0: none; else stop (checkpointed) after this long
    tf32: bool = True                 # CUDA: TF32 matmuls and convolutions (Ampere and later)
    compile: bool = False             # torch.compile the model for training (checkpoints keep
                                      # the module's own tensor names)
    # under torchrun: BatchNorm statistics over the batch of every process (SyncBatchNorm),
    # so N processes x batch b train as one process with batch N*b does
    sync_bn: bool = True
    find_unused_parameters: bool = False   # DDP: for models whose step leaves trainable
                                           # parameters without a gradient
    # query family with a frozen image backbone: train on its cached maps (see ``cache``)
    feature_cache: bool = False
    cache: CachedTrainConfig = field(default_factory=CachedTrainConfig)
    grounding: GroundingTrainConfig = field(default_factory=GroundingTrainConfig)  # its stages
    fewshot: FewShotTrainConfig = field(default_factory=FewShotTrainConfig)  # its episodes


@dataclass
class EvalConfig:
    window: int = 8                   # frames per inference window (bounded memory)
    threshold: float = 0.5            # mask probability threshold
    split: str = "test"
    amp: bool = False                 # validation under autocast (bf16, or fp16 on GPUs without bf16)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# --------------------------------------------------------------------------- range checks
# A rule takes a value and returns None when it is usable, else what it must be.
Rule = Callable[[Any], "str | None"]


def ints(lo: int, hi: int | None = None) -> Rule:
    """An integer in [lo, hi] (no upper bound when hi is None)."""
    def check(v: int) -> str | None:
        if v < lo or (hi is not None and v > hi):
            return f"must be >= {lo}" if hi is None else f"must lie in [{lo}, {hi}]"
        return None
    return check


def reals(lo: float, hi: float = math.inf, lo_open: bool = False, hi_open: bool = False) -> Rule:
    """A finite number in the interval between lo and hi (open ends where asked)."""
    def check(v: float) -> str | None:
        inside = ((v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi))
        if math.isfinite(v) and inside:
            return None
        if hi == math.inf:
            return f"must be a finite number {'>' if lo_open else '>='} {lo:g}"
        return (f"must lie in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}")
    return check


def one_of(*options: str) -> Rule:
    def check(v: str) -> str | None:
        return None if v in options else f"must be one of {', '.join(options)}"
    return check


def positive_pair(v: tuple[int, int]) -> str | None:
    return None if all(x >= 1 for x in v) else "must be two positive integers"


def device_name(v: str) -> str | None:
    if re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v):
        return None
    return "must be auto, cpu, cuda or cuda:N"


def milestones(v: tuple[int, ...]) -> str | None:
    if any(m < 1 for m in v) or list(v) != sorted(set(v)):
        return "must be strictly increasing epochs >= 1 (an empty list: no drop)"
    return None


def strides(v: tuple[int, ...]) -> str | None:
    if not v or any(s not in (4, 8, 16, 32, 64) for s in v) or list(v) != sorted(set(v)):
        return "must be increasing values from 4, 8, 16, 32, 64"
    return None


COUNT, NONNEG = ints(1), ints(0)
# the official layouts ``data.format`` may name (readers: rvos.data.build.FORMAT_READERS)
DATA_FORMATS = ("ref-ytvos", "a2d", "jhmdb", "mevis", "refcoco")
RATE, NONNEG_REAL = reals(0, 1), reals(0)
POSITIVE_REAL, SHARE = reals(0, lo_open=True), reals(0, 1, lo_open=True, hi_open=True)

RULES: dict[str, Rule] = {
    "data.format": one_of(*DATA_FORMATS),
    "data.num_frames": COUNT,
    "data.max_frame_stride": COUNT,
    "data.frame_range": COUNT,
    "data.input_size": positive_pair,
    "data.hflip_prob": RATE,
    "data.scale_jitter": reals(0, 1, hi_open=True),
    "data.color_jitter": reals(0, 1, hi_open=True),
    "data.num_workers": NONNEG,
    "data.max_train_samples": NONNEG,          # 0: all
    "data.max_val_samples": NONNEG,            # 0: all
    "data.refcoco_dataset": one_of("refcoco", "refcoco+", "refcocog"),
    "data.joint_image_ratio": RATE,
    "model.kind": one_of("baseline", "query", "grounding", "fewshot", "referformer"),
    "model.text.max_length": COUNT,
    "model.baseline.dim": COUNT,
    "model.baseline.heads": COUNT,
    "model.baseline.fusion_layers": NONNEG,
    "model.baseline.temporal_layers": NONNEG,
    "model.query.feature_strides": strides,
    "model.query.dim": COUNT,
    "model.query.heads": COUNT,
    "model.query.enc_layers": NONNEG,
    "model.query.dec_layers": COUNT,
    "model.query.enc_points": COUNT,
    "model.query.dec_points": COUNT,
    "model.query.ffn_dim": COUNT,
    "model.query.dropout": reals(0, 1, hi_open=True),
    "model.query.num_queries": COUNT,
    "model.query.fusion": one_of("add", "multiply", "none"),
    "model.query.mask_dim": COUNT,
    "model.query.dynamic_layers": COUNT,
    "model.query.dynamic_channels": COUNT,
    "model.query.soc.enc_layers": NONNEG,
    "model.query.soc.dec_layers": COUNT,
    "model.query.soc.ffn_dim": COUNT,
    "model.query.bifit.sentence_pool": one_of("first", "mean"),
    "model.query.bifit.inter_frame_layers": COUNT,
    "model.query.sgmg.spectrum_sigma": POSITIVE_REAL,
    "model.query.sgmg.patch_size": COUNT,
    "model.query.sgmg.refine": one_of("best", "all"),
    "model.grounding.backbone_dtype": one_of("auto", "float32", "bfloat16"),
    "model.grounding.seg_dim": COUNT,
    "model.grounding.refine_dim": COUNT,
    "model.grounding.center_threshold": SHARE,
    "model.grounding.nms_kernel": COUNT,
    "model.grounding.max_objects": COUNT,
    "model.grounding.min_area": NONNEG,
    "model.grounding.link_max_gap": NONNEG,
    "model.grounding.link_max_distance": POSITIVE_REAL,
    "model.grounding.link_appearance_weight": NONNEG_REAL,
    "model.grounding.dim": COUNT,
    "model.grounding.heads": COUNT,
    "model.grounding.relation_layers": NONNEG,
    "model.grounding.roles": COUNT,
    "model.grounding.dropout": reals(0, 1, hi_open=True),
    "loss.baseline.bce": NONNEG_REAL,
    "loss.baseline.dice": NONNEG_REAL,
    "loss.baseline.focal": NONNEG_REAL,
    "loss.baseline.focal_alpha": RATE,
    "loss.baseline.focal_gamma": NONNEG_REAL,
    "loss.query.focal_alpha": RATE,
    **{f"loss.query.{k}": NONNEG_REAL
       for k in ("cls", "bbox", "giou", "mask", "dice", "focal_gamma",
                 "cost_cls", "cost_bbox", "cost_giou", "cost_mask", "cost_dice",
                 "contrast", "sgmg_coarse_mask", "sgmg_coarse_dice")},
    "optim.lr": POSITIVE_REAL,
    "optim.weight_decay": NONNEG_REAL,
    "optim.backbone_lr_mult": NONNEG_REAL,
    "optim.batch_size": COUNT,
    "optim.accumulate_steps": COUNT,
    "optim.clip_grad_norm": NONNEG_REAL,        # 0: no clipping
    "optim.sched_t0": COUNT,
    "optim.sched_t_mult": COUNT,
    "optim.min_lr": NONNEG_REAL,
    "optim.schedule": one_of("cosine_restarts", "step"),
    "optim.lr_drop_epochs": milestones,
    "optim.lr_drop_gamma": reals(0, 1, lo_open=True),
    "optim.amp_dtype": one_of("auto", "bfloat16", "float16"),
    "train.epochs": COUNT,
    "train.seed": ints(0, 2**32 - 1),          # numpy seeds are 32-bit and non-negative
    "train.device": device_name,
    "train.log_every": COUNT,
    "train.eval_every": NONNEG,                # 0: no validation
    "train.max_steps_per_epoch": NONNEG,       # 0: a full pass
    "train.time_budget_s": NONNEG_REAL,        # 0: no budget
    "train.cache.clips_per_step": COUNT,
    "train.cache.sentences_per_clip": NONNEG,  # 0: all
    "train.cache.warmup_steps": NONNEG,
    "train.grounding.seg_steps": COUNT,
    "train.grounding.seg_batch_frames": COUNT,
    "train.grounding.seg_lr": POSITIVE_REAL,
    "train.grounding.seg_budget_share": SHARE,
    "train.grounding.scorer_steps": COUNT,
    "train.grounding.scorer_batch": COUNT,
    "train.grounding.scorer_lr": POSITIVE_REAL,
    "train.grounding.scorer_tracks": one_of("gt", "predicted"),
    "data.fewshot.dataset": one_of("synth", "mini-ytvos", "mini-sailvos"),
    "data.fewshot.fold": COUNT,
    "data.fewshot.shots": COUNT,
    "data.fewshot.eval_draws": COUNT,
    "data.fewshot.eval_seed": NONNEG,
    "model.fewshot.key_dim": COUNT,
    "model.fewshot.heads": COUNT,
    "model.fewshot.dropout": reals(0, 1, hi_open=True),
    "model.fewshot.shape_dim": NONNEG,
    "model.referformer.family": one_of(*FAMILIES),
    "model.referformer.num_classes": COUNT,
    "model.referformer.hidden_dim": COUNT,
    "model.referformer.nheads": COUNT,
    "model.referformer.enc_layers": NONNEG,
    "model.referformer.dec_layers": COUNT,
    "model.referformer.dim_feedforward": COUNT,
    "model.referformer.num_queries": COUNT,
    "model.referformer.num_feature_levels": ints(4, 4),
    "model.referformer.enc_n_points": COUNT,
    "model.referformer.dec_n_points": COUNT,
    "model.referformer.mask_dim": COUNT,
    "model.referformer.controller_layers": ints(2),
    "model.referformer.dynamic_mask_channels": COUNT,
    "model.referformer.text.vocab_size": COUNT,
    "model.referformer.text.hidden_size": COUNT,
    "model.referformer.text.num_layers": COUNT,
    "model.referformer.text.num_heads": COUNT,
    "model.referformer.text.intermediate_size": COUNT,
    "model.referformer.text.max_positions": COUNT,
    "model.referformer.text.type_vocab_size": COUNT,
    "model.referformer.text.layer_norm_eps": POSITIVE_REAL,
    "model.referformer.bifit.query_enc_layers": NONNEG,
    "model.referformer.inference.frame_chunk": NONNEG,     # 0: all frames at once
    "model.referformer.inference.short_side": COUNT,
    "model.referformer.inference.clip_frames": NONNEG,     # 0: the whole video
    "model.referformer.soc.voc_queries": COUNT,
    "model.referformer.soc.voc_enc_layers": NONNEG,
    "model.referformer.soc.voc_dec_layers": COUNT,
    "model.referformer.soc.voc_ffn": COUNT,
    "model.referformer.soc.voc_heads": COUNT,
    "model.referformer.inference.max_size": NONNEG,        # 0: no cap on the longer side
    "train.fewshot.min_shots": COUNT,
    "train.fewshot.category_word_dropout": RATE,
    "eval.window": COUNT,
    "eval.threshold": SHARE,
}


def _relations(cfg: Config) -> list[tuple[str, Any, str]]:
    """Checks that tie two keys together: (key, value, why) for each that fails."""
    m, bad = cfg.model, []
    for section in ("baseline", "query", "grounding"):
        sub = getattr(m, section)
        if sub.dim % sub.heads:
            bad.append((f"model.{section}.heads", sub.heads, f"must divide model.{section}.dim ({sub.dim})"))
    if m.query.dim % 4:
        bad.append(("model.query.dim", m.query.dim, "must be a multiple of 4"))
    if 64 in m.query.feature_strides and 32 not in m.query.feature_strides:
        bad.append(("model.query.feature_strides", list(m.query.feature_strides),
                    "can only add 64 on top of 32"))
    sg = m.query.sgmg
    if sg.spectrum_fusion and m.query.fusion == "none":
        bad.append(("model.query.sgmg.spectrum_fusion", True, "needs model.query.fusion add or multiply"))
    if sg.multi_granularity and tuple(m.query.feature_strides)[:1] != (8,):
        bad.append(("model.query.sgmg.multi_granularity", True,
                    "needs model.query.feature_strides to start at 8"))
    if m.fewshot.key_dim % m.fewshot.heads:
        bad.append(("model.fewshot.heads", m.fewshot.heads,
                    f"must divide model.fewshot.key_dim ({m.fewshot.key_dim})"))
    if cfg.train.fewshot.min_shots > cfg.data.fewshot.shots:
        bad.append(("train.fewshot.min_shots", cfg.train.fewshot.min_shots,
                    f"must not exceed data.fewshot.shots ({cfg.data.fewshot.shots})"))
    if m.grounding.nms_kernel % 2 == 0:
        bad.append(("model.grounding.nms_kernel", m.grounding.nms_kernel, "must be odd"))
    if m.grounding.backbone.startswith("video_swin"):
        bad.append(("model.grounding.backbone", m.grounding.backbone,
                    "must be an image backbone (features are cached per frame)"))
    if cfg.train.feature_cache:
        why = feature_cache_problem(cfg)
        if why:
            bad.append(("train.feature_cache", True, why))
    if cfg.optim.schedule == "step" and (cfg.train.feature_cache or m.kind in ("grounding", "fewshot")):
        bad.append(("optim.schedule", "step", "applies to the clip trainer (train.feature_cache "
                    "and the grounding/fewshot trainers schedule their own learning rate)"))
    if cfg.optim.min_lr > cfg.optim.lr:
        bad.append(("optim.min_lr", cfg.optim.min_lr, f"must not exceed optim.lr ({cfg.optim.lr:g})"))
    dense = cfg.loss.baseline
    if dense.bce + dense.dice + dense.focal <= 0:
        bad.append(("loss.baseline.bce", dense.bce,
                    "loss.baseline.bce, .dice and .focal must not all be 0"))
    q = cfg.loss.query
    if not any((q.cost_cls, q.cost_bbox, q.cost_giou, q.cost_mask, q.cost_dice)):
        bad.append(("loss.query.cost_cls", q.cost_cls, "the matching costs must not all be 0"))
    return bad


def feature_cache_problem(cfg: Config) -> str | None:
    """Why ``train.feature_cache`` cannot work for ``cfg`` (None when it can): the cache
    holds per-frame maps of a backbone that training never changes."""
    m = cfg.model
    if m.kind != "query":
        return (f"applies to model.kind=query (model.kind={m.kind}"
                + (" always trains on cached features)" if m.kind in ("grounding", "fewshot")
                   else ")"))
    if not m.query.freeze_backbone:
        return "needs model.query.freeze_backbone: true (a trained backbone's maps change)"
    if m.query.backbone.startswith("video_"):
        return (f"needs an image backbone (features are cached per frame), "
                f"not model.query.backbone={m.query.backbone}")
    return None


def _lookup(cfg: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        cfg = getattr(cfg, key)
    return cfg


def _shown(value: Any) -> str:
    return repr(list(value) if isinstance(value, tuple) else value)


def config_errors(cfg: Config) -> list[str]:
    """Every out-of-range value of ``cfg``, as ``key: why, got value`` lines."""
    errors = []
    for key, rule in RULES.items():
        value = _lookup(cfg, key)
        why = rule(value)
        if why:
            errors.append(f"{key}: {why}, got {_shown(value)}")
    if not errors:
        errors = [f"{key}: {why}, got {_shown(value)}" for key, value, why in _relations(cfg)]
    return errors


def validate_config(cfg: Config, path: str | Path | None = None) -> Config:
    """Return ``cfg``, or raise RVOSError naming the first key whose value cannot work."""
    errors = config_errors(cfg)
    if errors:
        raise RVOSError(f"invalid config: {errors[0]}", path)
    return cfg


# --------------------------------------------------------------------------- loading

def _coerce(value: Any, typ: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``typ``; convert lists to tuples etc."""
    origin = typing.get_origin(typ)
    if dataclasses.is_dataclass(typ):
        if not isinstance(value, dict):
            raise TypeError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(typ, value, where)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(typ):
            if option is type(None):
                if value is None:
                    return None
                continue
            try:
                return _coerce(value, option, where)
            except TypeError as e:
                errors.append(str(e))
        raise TypeError(f"{where}: {value!r} fits none of {typ}")
    if origin is tuple:
        args = typing.get_args(typ)
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], where) for v in value)
        if len(value) != len(args):
            raise TypeError(f"{where}: expected {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, where) for v, a in zip(value, args))
    if origin is list:
        (arg,) = typing.get_args(typ)
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, arg, where) for v in value]
    if typ is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{where}: expected an integer, got {value!r}")
        return value
    if typ is bool:
        if not isinstance(value, bool):
            raise TypeError(f"{where}: expected true/false, got {value!r}")
        return value
    if typ is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise TypeError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def from_dict(cls: type, values: dict, where: str = "") -> Any:
    """Build dataclass ``cls`` from a (possibly partial) nested dict, checking every key."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        prefix = f"{where}." if where else ""
        raise TypeError(f"unknown key {prefix}{unknown[0]} (known: {', '.join(sorted(known))})")
    kwargs = {}
    for name, value in values.items():
        kwargs[name] = _coerce(value, hints[name], f"{where}.{name}" if where else name)
    base = cls()
    return dataclasses.replace(base, **kwargs)


def to_dict(cfg: Any) -> dict:
    """Plain nested dict (tuples as lists), ready for YAML or JSON."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise TypeError(f"override {dotted}: {k} is not a section")
    node[keys[-1]] = value


def parse_overrides(overrides: list[str]) -> dict:
    """``["optim.lr=1e-3", "data.input_size=[96,160]"]`` -> nested dict (YAML-parsed values)."""
    tree: dict = {}
    for item in overrides:
        if "=" not in item:
            raise RVOSError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as e:
            raise RVOSError(f"override {item!r}: value is not valid YAML ({e})") from None
        _set_dotted(tree, key.strip(), value)
    return tree


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# Keys of earlier releases -> their place now (configs saved in older checkpoints and run
# folders still load): loss weights moved out of the model into one ``loss`` section.
_MOVED_KEYS = {
    **{f"loss.{k}": f"loss.baseline.{k}" for k in ("bce", "dice", "focal", "focal_alpha", "focal_gamma")},
    "model.query.aux_loss": "loss.query.aux",
    "model.query.focal_alpha": "loss.query.focal_alpha",
    "model.query.focal_gamma": "loss.query.focal_gamma",
    **{f"model.query.loss_{k}": f"loss.query.{'cls' if k == 'class' else k}"
       for k in ("class", "bbox", "giou", "mask", "dice")},
    **{f"model.query.cost_{k}": f"loss.query.cost_{'cls' if k == 'class' else k}"
       for k in ("class", "bbox", "giou", "mask", "dice")},
}


def upgrade_config_dict(values: dict) -> dict:
    """A nested config dict with the keys of earlier releases (``_MOVED_KEYS``) moved to
    their current place; everything else unchanged."""
    out = json.loads(json.dumps(values))
    for old, new in _MOVED_KEYS.items():
        *parents, leaf = old.split(".")
        node = out
        for k in parents:
            node = node.get(k) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node and not isinstance(node[leaf], dict):
            _set_dotted(out, new, node.pop(leaf))
    return out


BASE_KEY = "base"
CONFIG_DIR = Path(__file__).resolve().parent / "configs"   # the configs shipped in the package


def config_names() -> list[str]:
    """The names of the packaged configs (``baseline_synth``, ``ablations/...``), sorted."""
    return sorted(p.relative_to(CONFIG_DIR).with_suffix("").as_posix()
                  for p in CONFIG_DIR.rglob("*.yaml"))


def _packaged(name: str) -> Path:
    """Where the packaged config ``name`` would be: ``baseline_synth``, ``baseline_synth.yaml``
    and the repository path of earlier releases, ``configs/baseline_synth.yaml``, all name
    ``rvos/configs/baseline_synth.yaml``."""
    name = name.replace("\\", "/")
    if name.startswith("configs/"):
        name = name[len("configs/"):]
    return CONFIG_DIR / (name if name.endswith((".yaml", ".yml")) else name + ".yaml")


def resolve_config(path: str | Path, relative_to: Path | None = None) -> Path:
    """The config file ``path`` names: a file (relative to ``relative_to``, a ``base:``'s
    folder, or else to the working directory) or, when there is none, the packaged config
    of that name. Neither: an RVOSError saying where it looked and which names exist."""
    given = Path(path).expanduser()
    candidate = relative_to / given if relative_to is not None else given
    if candidate.is_file():
        return candidate
    looked = [str(candidate)]
    if not given.is_absolute():
        packaged = _packaged(str(path))
        if packaged.is_file():
            return packaged
        looked.append(f"the packaged {packaged.relative_to(CONFIG_DIR.parents[1]).as_posix()}")
    raise RVOSError(f"config not found (looked for {' and '.join(looked)}); a config is a "
                    f"YAML file or one of the packaged names: {', '.join(config_names())}", path)


def read_config_file(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """The values a YAML config file sets, its ``base:`` chain resolved: ``base: FILE``
    (a file relative to this file's folder, or a packaged config's name) loads FILE first
    and this file's values override it, key by key."""
    if path.resolve() in seen:
        raise RVOSError("config bases form a cycle", path)
    values = read_config_file_raw(path)
    base = values.pop(BASE_KEY, None)
    if base is None:
        return values
    if not isinstance(base, str) or not base:
        raise RVOSError(f"{BASE_KEY}: must name a config file, got {base!r}", path)
    parent = read_config_file(_resolve_base(path, base), seen + (path.resolve(),))
    return _merge(upgrade_config_dict(parent), upgrade_config_dict(values))


def _resolve_base(path: Path, base: str) -> Path:
    """The file the ``base:`` of config ``path`` names (an error naming ``path`` if none)."""
    try:
        return resolve_config(base, relative_to=path.parent)
    except RVOSError as e:
        raise RVOSError(f"{BASE_KEY}: {e}", path) from None


def base_chain(path: str | Path) -> list[Path]:
    """The config files ``path`` inherits from, nearest first (its ``base:``, that file's
    ``base:``, ...), resolved; [] for a file without a base."""
    chain: list[Path] = []
    path = resolve_config(path)
    while True:
        values = read_config_file_raw(path)
        base = values.get(BASE_KEY)
        if not isinstance(base, str) or not base:
            return chain
        path = _resolve_base(path, base).resolve()
        if path in chain:
            raise RVOSError("config bases form a cycle", path)
        chain.append(path)


def read_config_file_raw(path: Path) -> dict:
    """The mapping a YAML config file holds, ``base:`` not resolved (RVOSError naming the
    file when it is missing or not a mapping)."""
    if not path.is_file():
        raise RVOSError("config file not found", path)
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise RVOSError(f"not valid YAML: {e}", path) from None
    if not isinstance(values, dict):
        raise RVOSError("a config file must hold a mapping at the top level", path)
    return values


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                cls: type = Config) -> Any:
    """Load a YAML config (or defaults when ``path`` is None), its ``base:`` chain first
    (:func:`read_config_file`), and apply overrides. ``path`` is a file or the name of a
    packaged config (:func:`resolve_config`)."""
    values: dict = {}
    if path is not None:
        path = resolve_config(path)
        values = read_config_file(path)
    values = _merge(values, parse_overrides(overrides or []))
    if cls is Config:
        values = upgrade_config_dict(values)
    try:
        cfg = from_dict(cls, values)
    except TypeError as e:
        raise RVOSError(f"invalid config: {e}", path) from None
    return validate_config(cfg, path) if cls is Config else cfg


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    tmp.replace(path)
