"""The Predictor: a video (any length) + sentences -> per-frame mask probabilities.

Frames arrive one at a time (from a file, a folder or memory) and are processed in
windows of ``window`` frames (``rvos.data.video_io.iter_frame_windows``), so memory stays
bounded however long the video is. Frames are preprocessed as for training
(``rvos.data.transforms.preprocess_frames``). For each
window and sentence, the query with the highest mean score over the window is taken as the
referred object (Q = 1 for the dense baseline), and its mask logits are upsampled to the
source resolution.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rvos.config import Config
from rvos.data.transforms import preprocess_frames, preprocess_short_side
from rvos.data.video_io import iter_frame_windows
from rvos.errors import RVOSError
from rvos.models.outputs import RVOSOutput
from rvos.precision import autocast_dtype


WHOLE_VIDEO = 1 << 30    # a window no video reaches: the whole video is one clip


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RVOSError(f"device {name!r} asked for, but CUDA is not available here")
    return device


def select_referred(output: RVOSOutput) -> Tensor:
    """Mask logits of the referred query per clip: (B, T, h, w).

    The referred query is the one with the highest mean sigmoid score over the clip.
    """
    mean_score = output.scores.float().sigmoid().mean(1)            # (B, Q)
    best = mean_score.argmax(-1)                                     # (B,)
    index = best[:, None, None, None, None].expand(-1, output.mask_logits.shape[1], 1,
                                                   *output.mask_logits.shape[-2:])
    return output.mask_logits.gather(2, index)[:, :, 0]


def capped_short_side(height: int, width: int, short_side: int, max_size: int) -> int:
    """The shorter side to resize to so that the longer one stays within ``max_size`` (0: no
    cap), as DETR's ``resize(..., size, max_size)`` picks it (SOC's ``RandomResize([360],
    max_size=640)``): ``round(max_size * short / long)`` when ``short_side`` would overshoot."""
    short, long = min(height, width), max(height, width)
    if max_size and long / short * short_side > max_size:
        return int(round(max_size * short / long))
    return short_side


@dataclass
class FramePrediction:
    """One frame's result: probs (K, H, W) float32 in [0, 1], one map per sentence."""

    name: str
    frame: np.ndarray
    probs: np.ndarray

    def masks(self, threshold: float = 0.5) -> np.ndarray:
        """(K, H, W) bool."""
        return self.probs > threshold


class Predictor:
    """Runs a trained model over whole videos in windows of ``window`` frames.

    Frames are resized to ``input_size`` (H, W), or, with ``short_side``, keeping their
    aspect ratio to that shorter side (ReferFormer's recipe, for converted checkpoints).
    ``amp``: the model runs under autocast where the device computes a reduced precision
    natively (:func:`rvos.precision.autocast_dtype`; in float32 on other CPUs); the masks
    are upsampled and thresholded in float32 either way.
    """

    def __init__(self, model: nn.Module, input_size: tuple[int, int], window: int = 8,
                 device: torch.device | str = "cpu", short_side: int = 0, amp: bool = False,
                 max_size: int = 0):
        if window < 1:
            raise ValueError("window must be >= 1")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.input_size = tuple(input_size)
        self.window = window
        self.short_side = short_side
        self.max_size = max_size          # with short_side: the longer side's cap (0: none)
        self.amp_dtype = autocast_dtype(self.device)
        self.amp = amp and self.amp_dtype is not None
        self.support = None       # a few-shot checkpoint's support set (use_support)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto",
                        window: int | None = None, amp: bool = False) -> "Predictor":
        """Build the model a checkpoint describes and load its weights. The checkpoint is
        self-contained: the backbone weights it was initialised from are not read again
        (nor downloaded)."""
        from rvos.engine.checkpoint import load_checkpoint, load_weights_into
        from rvos.models.build import build_model

        checkpoint = load_checkpoint(path)
        cfg: Config = checkpoint.config
        model = build_model(cfg, pretrained=False)
        load_weights_into(model, checkpoint, path)
        if cfg.model.kind == "referformer":    # a converted release: the official recipe
            recipe = cfg.model.referformer.inference
            model.load_tokenizer()              # a missing tokenizer fails before any work
            model.prepare_for_inference()
            return cls(model, cfg.data.input_size, window or recipe.clip_frames or WHOLE_VIDEO,
                       resolve_device(device), short_side=recipe.short_side, amp=amp,
                       max_size=recipe.max_size)
        return cls(model, cfg.data.input_size, window or cfg.eval.window, resolve_device(device),
                   amp=amp)

    def use_support(self, samples: list) -> None:
        """Segment with a few-shot checkpoint's support set: ``samples`` are
        :class:`rvos.support.SupportSample` s (annotated examples of the category), read at the
        model's input size and encoded once. Refused for a model that reads no support."""
        from rvos.support import read_support

        if getattr(self.model, "affinity", None) is None:
            raise RVOSError("--support needs a few-shot checkpoint with the cross-modal affinity "
                            "module (model.kind: fewshot, model.fewshot.affinity: true)")
        clips = [read_support(s, self.input_size, self.device) for s in samples]
        with torch.inference_mode():
            self.support = self.model.encode_support([c.frames for c in clips],
                                                     [c.masks for c in clips],
                                                     [c.text for c in clips])

    def _prepare(self, frames: np.ndarray | list[np.ndarray]) -> Tensor:
        """frames: (T, H, W, 3) uint8 -> (1, T, 3, h, w) normalised at the input size."""
        frames = np.stack(frames) if isinstance(frames, list) else frames
        if self.short_side:
            side = capped_short_side(frames.shape[1], frames.shape[2], self.short_side, self.max_size)
            return preprocess_short_side(frames, side, self.device).unsqueeze(0)
        return preprocess_frames(frames, self.input_size, self.device).unsqueeze(0)

    @torch.inference_mode()
    def predict_window(self, frames: np.ndarray | list[np.ndarray], texts: list[str]) -> np.ndarray:
        """T frames (T, H, W, 3) uint8 (an array or a list) + K sentences -> probs
        (T, K, H, W) float32."""
        h, w = frames[0].shape[:2]
        clip = self._prepare(frames)                                  # one backbone pass
        same_clip = torch.zeros(len(texts), dtype=torch.long, device=self.device)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            output = (self.model(clip, texts, same_clip) if self.support is None
                      else self.model(clip, texts, same_clip, support=self.support))
            logits = select_referred(output)                              # (K, T, h', w')
        logits = F.interpolate(logits.float(), size=(h, w), mode="bilinear", align_corners=False)
        return logits.sigmoid().transpose(0, 1).cpu().numpy()

    def predict(self, frames: Iterable[tuple[str, np.ndarray]],
                texts: list[str]) -> Iterator[FramePrediction]:
        """Stream (name, frame (H, W, 3) uint8) pairs -> one :class:`FramePrediction` each."""
        texts = [t.strip() for t in texts]
        if not texts or any(not t for t in texts):
            raise RVOSError("every sentence must be non-empty")
        # consecutive windows of ``window`` frames, the last one shorter
        for window in iter_frame_windows(_same_size(frames), self.window, fill_last=False):
            probs = self.predict_window(window.frames, texts)
            for name, frame, p in zip(window.names, window.frames, probs):
                yield FramePrediction(name=name, frame=frame, probs=p)


def _same_size(frames: Iterable[tuple[str, np.ndarray]]) -> Iterator[tuple[str, np.ndarray]]:
    """The frames, or an RVOSError at the first one whose size differs from the first's."""
    first = None
    for name, frame in frames:
        if first is None:
            first = frame.shape
        elif frame.shape != first:
            raise RVOSError(f"frame {name} has size {frame.shape[:2]}, earlier frames {first[:2]}")
        yield name, frame
