"""Datasets from a config: the training set (video, image or joint) and evaluation splits."""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from rvos.config import Config
from rvos.data.ytvos import RefYTVOSLayout, ReferringClipDataset


def build_train_dataset(cfg: Config) -> Dataset:
    """Referring clips of ``cfg.data.train_split``; mixed with referring images when
    ``cfg.data.joint_image_ratio`` > 0 (RefCOCO-style data under ``refcoco_root``)."""
    d = cfg.data
    video = ReferringClipDataset(
        RefYTVOSLayout(Path(d.root), d.train_split), num_frames=d.num_frames,
        input_size=d.input_size, train=True, max_frame_stride=d.max_frame_stride,
        hflip_prob=d.hflip_prob, scale_jitter=d.scale_jitter, color_jitter=d.color_jitter,
        max_samples=d.max_train_samples, seed=cfg.train.seed)
    if d.joint_image_ratio <= 0:
        return video
    from rvos.data.joint import JointDataset
    from rvos.data.refcoco import build_image_dataset

    return JointDataset(video, build_image_dataset(d, d.input_size), d.joint_image_ratio,
                        cfg.train.seed)
