"""The Predictor: a video (any length) + sentences -> per-frame mask probabilities.

Frames arrive one at a time (from a file, a folder or memory) and are processed in
windows of ``window`` frames, so memory stays bounded however long the video is. For each
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
from rvos.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from rvos.errors import RVOSError
from rvos.models.outputs import RVOSOutput


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
    """Runs a trained model over whole videos in windows of ``window`` frames."""

    def __init__(self, model: nn.Module, input_size: tuple[int, int], window: int = 8,
                 device: torch.device | str = "cpu"):
        if window < 1:
            raise ValueError("window must be >= 1")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.input_size = tuple(input_size)
        self.window = window
        self.mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto",
                        window: int | None = None) -> "Predictor":
        """Build the model a checkpoint describes and load its weights. The checkpoint is
        self-contained: the backbone weights it was initialised from are not read again
        (nor downloaded)."""
        from rvos.engine.checkpoint import load_checkpoint, load_weights_into
        from rvos.models.build import build_model

        checkpoint = load_checkpoint(path)
        cfg: Config = checkpoint.config
        model = build_model(cfg, pretrained=False)
        load_weights_into(model, checkpoint, path)
        return cls(model, cfg.data.input_size, window or cfg.eval.window, resolve_device(device))

    def _prepare(self, frames: list[np.ndarray]) -> Tensor:
        """frames: T x (H, W, 3) uint8 -> (1, T, 3, h, w) normalised at the input size."""
        x = torch.from_numpy(np.stack(frames)).to(self.device).permute(0, 3, 1, 2).float() / 255
        x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False,
                          antialias=True)
        return ((x - self.mean) / self.std).unsqueeze(0)

    @torch.inference_mode()
    def predict_window(self, frames: list[np.ndarray], texts: list[str]) -> np.ndarray:
        """T frames (H, W, 3) uint8 + K sentences -> probs (T, K, H, W) float32."""
        h, w = frames[0].shape[:2]
        clip = self._prepare(frames)                                  # one backbone pass
        same_clip = torch.zeros(len(texts), dtype=torch.long, device=self.device)
        logits = select_referred(self.model(clip, texts, same_clip))  # (K, T, h', w')
        logits = F.interpolate(logits.float(), size=(h, w), mode="bilinear", align_corners=False)
        return logits.sigmoid().transpose(0, 1).cpu().numpy()

    def predict(self, frames: Iterable[tuple[str, np.ndarray]],
                texts: list[str]) -> Iterator[FramePrediction]:
        """Stream (name, frame (H, W, 3) uint8) pairs -> one :class:`FramePrediction` each."""
        texts = [t.strip() for t in texts]
        if not texts or any(not t for t in texts):
            raise RVOSError("every sentence must be non-empty")
        buffer: list[tuple[str, np.ndarray]] = []
        for name, frame in frames:
            if buffer and frame.shape != buffer[0][1].shape:
                raise RVOSError(f"frame {name} has size {frame.shape[:2]}, earlier frames "
                                f"{buffer[0][1].shape[:2]}")
            buffer.append((name, frame))
            if len(buffer) == self.window:
                yield from self._flush(buffer, texts)
                buffer = []
        if buffer:
            yield from self._flush(buffer, texts)

    def _flush(self, buffer, texts) -> Iterator[FramePrediction]:
        probs = self.predict_window([f for _, f in buffer], texts)
        for (name, frame), p in zip(buffer, probs):
            yield FramePrediction(name=name, frame=frame, probs=p)
