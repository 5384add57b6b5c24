"""The one preprocessing of frames, and clip-consistent augmentation for training.

Training (:class:`ClipTransform`), inference (``rvos.inference.Predictor``) and the feature
cache (``rvos.models.feature_cache``) all resize with :func:`resize_frames` (masks with
:func:`resize_masks`) and normalise with :func:`normalize`, so a frame without augmentation
becomes the same tensor in all three (:func:`preprocess_frames`).

A referring clip is augmented with ONE set of random parameters shared by all its frames
(crop box, flip, colour jitter), so that motion and appearance stay coherent in time. A
horizontal flip also swaps left/right words in the sentence, or the text would describe
the wrong object.
"""

from __future__ import annotations

import re

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Whole words only: "left", "left-most", "leftmost", "leftward(s)"; not "bright" or "lefty".
_LEFT_RIGHT = re.compile(r"\b(left|right)(-?most|wards?)?\b", re.IGNORECASE)


def _match_case(word: str, like: str) -> str:
    if like.isupper():
        return word.upper()
    if like[0].isupper():
        return word[0].upper() + word[1:]
    return word


def swap_left_right(text: str) -> str:
    """Swap left/right words as a horizontal flip does: "the dog to the Left of the car" ->
    "the dog to the Right of the car"; "leftmost" <-> "rightmost", "left-most" <->
    "right-most"; case preserved; words that merely contain them ("bright") untouched."""

    def swap(m: re.Match) -> str:
        side = m.group(1)
        other = "right" if side.lower() == "left" else "left"
        return _match_case(other, side) + (m.group(2) or "")

    return _LEFT_RIGHT.sub(swap, text)


def _mean_std(device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=device).view(3, 1, 1)
    return mean, std


def normalize(x: Tensor) -> Tensor:
    """(..., 3, H, W) float in [0, 1] -> ImageNet-normalised, same shape."""
    mean, std = _mean_std(x.device)
    return (x - mean) / std


def normalize_frames(frames: np.ndarray | Tensor) -> Tensor:
    """uint8 RGB frames (T, H, W, 3) -> ImageNet-normalised float32 tensor (T, 3, H, W)."""
    x = torch.as_tensor(np.asarray(frames)) if not isinstance(frames, Tensor) else frames
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"frames must be (T, H, W, 3), got shape {tuple(x.shape)}")
    return normalize(x.permute(0, 3, 1, 2).float().div_(255.0))


Box = tuple[int, int, int, int]   # (y0, x0, h, w) in source pixels


def _crop(x: Tensor, box: Box | None) -> Tensor:
    if box is None:
        return x
    y0, x0, h, w = box
    return x[..., y0:y0 + h, x0:x0 + w]


def resize_frames(frames: np.ndarray | Tensor, size: tuple[int, int], box: Box | None = None) -> Tensor:
    """THE resize of frames: uint8 RGB (T, H, W, 3) -> uint8 (T, 3, h, w) at ``size`` (h, w),
    optionally of the crop ``box`` (y0, x0, h, w) only.

    Bilinear, antialiased when shrinking, computed on the CPU in uint8 (torch's fixed-point
    kernel: 5x faster than PIL and 20x faster than float resizing of 720p frames, within one
    grey level of the float result); the identity when the (cropped) frames have that size.
    """
    x = frames.cpu() if isinstance(frames, Tensor) else torch.from_numpy(np.ascontiguousarray(frames))
    if x.ndim != 4 or x.shape[-1] != 3 or x.dtype != torch.uint8:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {tuple(x.shape)} {x.dtype}")
    x = _crop(x.permute(0, 3, 1, 2), box)          # channels-last memory: the fast uint8 kernel
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
    return x


def short_side_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(h, w) with the shorter side ``short_side`` and the longer one scaled and truncated,
    as torchvision's ``Resize(short_side)`` computes it."""
    if width <= height:
        return int(short_side * height / width), short_side
    return short_side, int(short_side * width / height)


def preprocess_short_side(frames: np.ndarray, short_side: int,
                          device: torch.device | str | None = None) -> Tensor:
    """ReferFormer's inference transform (``T.Resize(short_side)``, ``ToTensor``,
    ``Normalize`` on PIL images): uint8 RGB (T, H, W, 3) -> normalised (T, 3, h, w).

    Resized with PIL's bilinear filter, not :func:`resize_frames`: the official recipe runs
    PIL, and torch's uint8 kernel can differ from it by a grey level.
    """
    from PIL import Image

    h, w = short_side_size(frames.shape[1], frames.shape[2], short_side)
    if (h, w) != tuple(frames.shape[1:3]):
        frames = np.stack([np.asarray(Image.fromarray(f).resize((w, h), Image.BILINEAR))
                           for f in frames])
    return normalize_frames(frames).to(device)


def resize_masks(masks: np.ndarray | Tensor, size: tuple[int, int], box: Box | None = None) -> Tensor:
    """Masks or label maps (T, H, W) -> uint8 (T, h, w) at ``size``, nearest neighbour at pixel
    centres (as PIL's NEAREST), optionally of the crop ``box`` only."""
    m = masks.cpu() if isinstance(masks, Tensor) else torch.from_numpy(np.ascontiguousarray(masks))
    m = _crop(m.to(torch.uint8), box)
    if tuple(m.shape[-2:]) != tuple(size):
        m = F.interpolate(m[:, None], size=tuple(size), mode="nearest-exact")[:, 0]
    return m


def preprocess_frames(frames: np.ndarray | Tensor, size: tuple[int, int],
                      device: torch.device | str | None = None) -> Tensor:
    """uint8 RGB frames (T, H, W, 3) -> the model's input (T, 3, h, w) float32, normalised:
    what :class:`ClipTransform` gives without augmentation. ``device``: where the float
    tensor is made (the uint8 frames are resized on the CPU, then moved)."""
    x = resize_frames(frames, size).to(device)
    return normalize(x.float().div_(255.0))


def denormalize(frames: Tensor) -> Tensor:
    """ImageNet-normalised (..., 3, H, W) -> RGB float in [0, 1], same shape."""
    mean, std = _mean_std(frames.device)
    return (frames.float() * std + mean).clamp_(0.0, 1.0)


class ClipTransform:
    """Resize (and, for training, augment) a clip with parameters shared by all frames.

    Frames are resized by :func:`resize_frames` straight to ``input_size`` (H, W), masks by
    :func:`resize_masks`; the aspect ratio is not kept, so predictions map back to the
    source size by a plain resize. Training augmentations, each drawn once per clip:

    - ``scale_jitter`` s: crop a box of relative size u in [1 - s, 1] (same aspect as the
      frame) at a random place; crops that would remove the referred object from every
      frame where it is visible are redrawn (a few tries, then the full frame).
    - ``hflip_prob``: horizontal flip; the sentence's left/right words are swapped.
    - ``color_jitter`` c: brightness and contrast factors in [1 - c, 1 + c].
    """

    _CROP_TRIES = 5

    def __init__(self, input_size: tuple[int, int], train: bool = False, hflip_prob: float = 0.0,
                 scale_jitter: float = 0.0, color_jitter: float = 0.0):
        if len(input_size) != 2 or min(input_size) <= 0:
            raise ValueError(f"input_size must be (H, W) > 0, got {input_size}")
        if not 0.0 <= hflip_prob <= 1.0:
            raise ValueError(f"hflip_prob must lie in [0, 1], got {hflip_prob}")
        if not 0.0 <= scale_jitter < 1.0:
            raise ValueError(f"scale_jitter must lie in [0, 1), got {scale_jitter}")
        if not 0.0 <= color_jitter < 1.0:
            raise ValueError(f"color_jitter must lie in [0, 1), got {color_jitter}")
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.train = train
        self.hflip_prob = hflip_prob
        self.scale_jitter = scale_jitter
        self.color_jitter = color_jitter

    def _crop_box(self, masks: np.ndarray, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """(y0, x0, h, w) of the crop, in source pixels."""
        _, H, W = masks.shape
        if not self.train or self.scale_jitter <= 0:
            return 0, 0, H, W
        had_object = bool(masks.any())
        for _ in range(self._CROP_TRIES):
            u = rng.uniform(1.0 - self.scale_jitter, 1.0)
            h, w = max(1, round(H * u)), max(1, round(W * u))
            y0 = int(rng.integers(0, H - h + 1))
            x0 = int(rng.integers(0, W - w + 1))
            if not had_object or masks[:, y0:y0 + h, x0:x0 + w].any():
                return y0, x0, h, w
        return 0, 0, H, W

    def __call__(self, frames: np.ndarray, masks: np.ndarray, text: str,
                 rng: np.random.Generator | None = None) -> tuple[Tensor, Tensor, str, bool]:
        """frames: uint8 (T, H, W, 3) RGB; masks: (T, H, W) bool/{0,1} of the referred object.

        Returns frames (T, 3, h, w) float32 ImageNet-normalised, masks (T, h, w) float32 in
        {0, 1}, the sentence (left/right swapped when flipped) and whether it was flipped,
        with (h, w) = ``input_size``. ``rng`` is needed when training augmentations are on.
        """
        frames = np.asarray(frames)
        masks = np.asarray(masks) > 0
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be (T, H, W, 3), got shape {frames.shape}")
        if masks.shape != frames.shape[:3]:
            raise ValueError(f"masks {masks.shape} do not match frames {frames.shape[:3]}")
        if frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8, got {frames.dtype}")
        augment = self.train and (self.hflip_prob > 0 or self.scale_jitter > 0 or self.color_jitter > 0)
        if augment and rng is None:
            raise ValueError("ClipTransform needs an rng when training augmentations are on")

        H, W = frames.shape[1:3]
        box = self._crop_box(masks, rng) if augment else None
        if box == (0, 0, H, W):
            box = None
        x = resize_frames(frames, self.input_size, box).float()              # (T, 3, h, w) 0-255
        m = resize_masks(masks, self.input_size, box) > 0                    # (T, h, w)

        flipped = bool(augment and self.hflip_prob > 0 and rng.random() < self.hflip_prob)
        if flipped:
            x = x.flip(-1)
            m = m.flip(-1)
            text = swap_left_right(text)

        if augment and self.color_jitter > 0:
            brightness = rng.uniform(1 - self.color_jitter, 1 + self.color_jitter)
            contrast = rng.uniform(1 - self.color_jitter, 1 + self.color_jitter)
            # One clip-wide grey level, so that the frames keep their relative brightness.
            grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).mean()
            x = ((x - grey) * contrast + grey) * brightness

        x = normalize(x.clamp_(0.0, 255.0).div_(255.0))
        return x.contiguous(), m.float().contiguous(), text, flipped
