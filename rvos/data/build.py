"""Datasets from a config: the training set (video, image or joint) and evaluation splits.

``data.format`` names the official layout under ``data.root``. The Ref-YouTube-VOS layout
(real, synthetic, converted Ref-DAVIS17) is read here; every other format has its reader
module (:data:`FORMAT_READERS`) with the same two functions, ``build_train_dataset(cfg)``
and ``verify_validation_split(cfg)``.

Every file a training run will read is checked to exist (a ``stat`` per file, no decoding)
when the datasets are built, so a damaged dataset stops the run before its first step with
an error naming the file, not when the broken sample happens to be drawn.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from torch.utils.data import Dataset

from rvos.config import Config
from rvos.data.ytvos import RefYTVOSLayout, ReferringClipDataset

# data.format -> the module that reads that official layout
FORMAT_READERS = {
    "a2d": "rvos.data.a2d",
    "jhmdb": "rvos.data.jhmdb",
    "mevis": "rvos.data.mevis",
    "refcoco": "rvos.data.refcoco",
}


def format_reader(cfg: Config) -> ModuleType | None:
    """The reader module of ``cfg.data.format``; None for the Ref-YouTube-VOS layout."""
    name = FORMAT_READERS.get(cfg.data.format)
    return importlib.import_module(name) if name else None


def build_train_dataset(cfg: Config) -> Dataset:
    """Referring clips of ``cfg.data.train_split``; mixed with referring images when
    ``cfg.data.joint_image_ratio`` > 0 (RefCOCO-style data under ``refcoco_root``).

    The frames and masks of every video in use (and every referring image) are checked up
    front; a missing or empty file is an RVOSError naming it."""
    reader = format_reader(cfg)
    d = cfg.data
    if reader is not None:
        video = reader.build_train_dataset(cfg)
    else:
        video = ReferringClipDataset(
            RefYTVOSLayout(Path(d.root), d.train_split), num_frames=d.num_frames,
            input_size=d.input_size, train=True, max_frame_stride=d.max_frame_stride,
            hflip_prob=d.hflip_prob, scale_jitter=d.scale_jitter, color_jitter=d.color_jitter,
            max_samples=d.max_train_samples, seed=cfg.train.seed)
        video.layout.verify(videos=[v for v, _ in video.items])
    if d.joint_image_ratio <= 0:
        return video
    from rvos.data.joint import JointDataset
    from rvos.data.refcoco import build_image_dataset

    images = build_image_dataset(d, d.input_size)
    images.verify()
    return JointDataset(video, images, d.joint_image_ratio, cfg.train.seed)


def verify_validation_split(cfg: Config) -> None:
    """Check up front the files validation will read: the frames and masks of the videos of
    the first ``data.max_val_samples`` expressions (all when 0) of ``data.val_split``.

    Nothing is checked when validation is off (``train.eval_every`` = 0) or the split has no
    annotations (validation is then skipped); a missing split or file is an RVOSError."""
    d = cfg.data
    if not cfg.train.eval_every:
        return
    reader = format_reader(cfg)
    if reader is not None:
        reader.verify_validation_split(cfg)
        return
    layout = RefYTVOSLayout(Path(d.root), d.val_split)
    if not layout.has_annotations:
        return
    samples = layout.samples()
    if d.max_val_samples > 0:
        samples = samples[:d.max_val_samples]
    layout.verify(videos=[v for v, _ in samples])
