"""Support samples for a few-shot checkpoint (``rvos predict --support VIDEO MASKS TEXT``).

A support sample is an annotated example of the category to segment: a video (file or frame
folder), a folder of masks of the referred object named as the video's frames
(``<frame>.png``, palette or 0/255 grayscale; every non-zero pixel is the object, or only
``object_id`` when given), and its sentence. Only the frames that have a mask file are used,
as the official few-shot protocol annotates support clips sparsely (one frame per support in
the official code).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from rvos.data.palette import read_label_png
from rvos.data.transforms import preprocess_frames, resize_masks
from rvos.data.video_io import iter_video_frames
from rvos.errors import RVOSError

MAX_SUPPORT_FRAMES = 36   # annotated frames read per support sample (evenly spaced beyond)


@dataclass
class SupportSample:
    """One annotated example: ``video`` (file or frame folder), ``masks`` (folder of
    ``<frame>.png``), ``text`` (its sentence), ``object_id`` (None: any non-zero label)."""

    video: Path
    masks: Path
    text: str
    object_id: int | None = None


@dataclass
class SupportClip:
    """A support sample read at the model's input size: frames (T, 3, h, w) normalised,
    masks (T, h, w) bool, the sentence."""

    frames: Tensor
    masks: Tensor
    text: str


def read_support(sample: SupportSample, input_size: tuple[int, int],
                 device: torch.device | str = "cpu") -> SupportClip:
    """The frames of ``sample.video`` that have a mask in ``sample.masks``, with their masks,
    resized to ``input_size``; an RVOSError naming the file for every problem."""
    video, folder = Path(sample.video), Path(sample.masks)
    if not sample.text.strip():
        raise RVOSError("the support sentence is empty", video)
    if not video.exists():
        raise RVOSError("support video not found", video)
    if not folder.is_dir():
        raise RVOSError("support mask folder not found", folder)
    annotated = {p.stem: p for p in folder.glob("*.png")}
    if not annotated:
        raise RVOSError("no mask PNGs (<frame>.png) in the support mask folder", folder)
    frames, masks = [], []
    for name, frame in iter_video_frames(video):
        if name not in annotated:
            continue
        labels = read_label_png(annotated[name])
        if labels.shape != frame.shape[:2]:
            raise RVOSError(f"mask is {labels.shape[1]}x{labels.shape[0]}, its frame "
                            f"{frame.shape[1]}x{frame.shape[0]}", annotated[name])
        frames.append(frame)
        masks.append(labels > 0 if sample.object_id is None else labels == sample.object_id)
    if not frames:
        raise RVOSError(f"no mask is named as a frame of {video.name} (masks must be "
                        f"<frame name>.png; e.g. {next(iter(sorted(annotated)))}.png)", folder)
    if not any(m.any() for m in masks):
        raise RVOSError("the support object is in none of the masks"
                        + ("" if sample.object_id is None else f" (object id {sample.object_id})"),
                        folder)
    if len(frames) > MAX_SUPPORT_FRAMES:
        keep = np.linspace(0, len(frames) - 1, MAX_SUPPORT_FRAMES).round().astype(int)
        frames, masks = [frames[i] for i in keep], [masks[i] for i in keep]
    rgb = preprocess_frames(np.stack(frames), input_size, device)
    small = resize_masks(np.stack(masks).astype(np.uint8), input_size).to(device).bool()
    return SupportClip(rgb, small, sample.text.strip())
