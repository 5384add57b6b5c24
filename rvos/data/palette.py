"""Palette PNGs: the official way DAVIS and (Ref-)YouTube-VOS store label maps.

A label map is an (H, W) uint8 array of object ids (0 = background, 255 = void in DAVIS);
it is saved as a mode-"P" PNG with the DAVIS colour palette, so that viewers show colours
while readers get the ids back unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from rvos.errors import RVOSError


def davis_palette() -> np.ndarray:
    """The 256-colour DAVIS/PASCAL palette, (256, 3) uint8 (id 1 red, 2 green, 3 yellow...)."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    for i in range(256):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette[i] = (r, g, b)
    return palette


_PALETTE = davis_palette()


def write_label_png(path: str | Path, labels: np.ndarray) -> None:
    """Save an (H, W) integer label map as a palette PNG (atomically: temp file + rename)."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"label map must be (H, W), got shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError("label ids must lie in [0, 255]")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(labels.astype(np.uint8), mode="P")
    img.putpalette(_PALETTE.flatten().tolist())
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    img.save(tmp, format="PNG")
    tmp.replace(path)


def read_label_png(path: str | Path) -> np.ndarray:
    """Read a label map: palette PNGs give their indices; mode-L binary masks (0/255, as
    DAVIS-2016) give 0/1; RGB annotations are refused with a clear error."""
    path = Path(path)
    if not path.is_file():
        raise RVOSError("annotation file not found", path)
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            arr = np.array(img)
    except Exception as e:
        raise RVOSError(f"cannot read annotation PNG ({type(e).__name__}: {e})", path) from None
    if mode == "P":
        return arr.astype(np.uint8)
    if mode in ("L", "1"):
        arr = arr.astype(np.uint8)
        values = np.unique(arr)
        if set(values.tolist()) <= {0, 255} or mode == "1":
            return (arr > 0).astype(np.uint8)
        return arr
    raise RVOSError(f"annotation must be a palette (P) or grayscale (L) PNG, got mode {mode}", path)
