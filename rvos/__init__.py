"""rvos: a toolkit for Referring Video Object Segmentation (RVOS).

Given a video and a sentence ("the red car on the left"), segment the referred object in
every frame. The command is ``rvos`` (``rvos --help``); from Python::

    import rvos

    predictor = rvos.Predictor.from_checkpoint("demo_output/run/checkpoints/best")
    for result in predictor.predict(rvos.iter_video_frames("clip.mp4"), ["the red circle"]):
        masks = result.masks()            # (sentences, H, W) bool, one frame

``import rvos`` is light (no torch): the names below are imported on first use.

- :class:`Predictor` (``rvos.inference``): a model over whole videos in bounded windows;
  ``Predictor.from_checkpoint(path)``, ``.predict(frames, sentences)`` yields one
  :class:`FramePrediction` (``name``, ``frame``, ``probs``, ``masks()``) per frame.
- :func:`segment_video` (``rvos.predict``): what ``rvos predict`` does: masks as PNGs,
  overlay video, ``expressions.json`` in an output folder.
- :func:`iter_video_frames` (``rvos.data.video_io``): ``(name, (H, W, 3) uint8 RGB)`` pairs
  from a video file or a folder of frames.
- :func:`load_config` (a YAML file or a packaged name such as ``"baseline_synth"``),
  :func:`config_names`, :class:`Config` (``rvos.config``).
- :func:`build_model` (``rvos.models.build``): the model a config describes.
- :func:`load_checkpoint` (``rvos.engine.checkpoint``): weights, config and metadata of a
  checkpoint file.
- :class:`RVOSError`: the error bad input raises (one line naming the file and the problem).
"""

from __future__ import annotations

import importlib
from typing import Any

from rvos.errors import RVOSError

__version__ = "0.1.0"

# public name -> the module that defines it (imported on first access, PEP 562)
_LAZY = {
    "Predictor": "rvos.inference",
    "FramePrediction": "rvos.inference",
    "segment_video": "rvos.predict",
    "iter_video_frames": "rvos.data.video_io",
    "Config": "rvos.config",
    "load_config": "rvos.config",
    "config_names": "rvos.config",
    "build_model": "rvos.models.build",
    "load_checkpoint": "rvos.engine.checkpoint",
}

__all__ = ["RVOSError", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'rvos' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value          # the next access is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
