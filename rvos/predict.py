"""Segment a user's video (file or frame folder) with one or several sentences.

Writes, into ``out`` (staged: a hidden sibling renamed into place when complete):
  masks/<k>/<frame>.png   palette PNG (id 1 = the object of sentence k, 0 = background)
  overlay.mp4, overlay.gif  the video with every sentence's mask and the sentences drawn
  expressions.json         sentence index -> text, video info, settings
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
from tqdm import tqdm

from rvos.data.palette import write_label_png
from rvos.data.video_io import iter_video_frames, probe_video
from rvos.errors import RVOSError
from rvos.inference import Predictor
from rvos.outputs_dir import staged_output
from rvos.viz import render_overlay_video, sentence_colors


def segment_video(predictor: Predictor, video: str | Path, texts: list[str], out: str | Path,
                  threshold: float = 0.5, overwrite: bool = False, gif: bool = True,
                  progress: bool = True) -> dict:
    """Run ``predictor`` over ``video`` for ``texts`` and write masks and overlays to ``out``.

    Memory is bounded by the predictor's window, whatever the video length. Returns the
    summary written to expressions.json (paths relative to ``out``).
    """
    texts = [t.strip() for t in texts]
    if not texts or any(not t for t in texts):
        raise RVOSError("--text must be a non-empty sentence (got an empty one)")
    info = probe_video(video)
    fps = info.fps or 10.0
    colors = sentence_colors(len(texts))
    with staged_output(out, overwrite, "predict") as stage:
        areas = np.zeros(len(texts))

        def frames_and_masks():
            """Predict, save each frame's masks as PNGs, and pass (frame, masks) on."""
            predictions = predictor.predict(iter_video_frames(video), texts)
            for result in tqdm(predictions, total=info.num_frames, desc="segment",
                               unit="frame", disable=not progress):
                masks = result.masks(threshold)
                for k, mask in enumerate(masks):
                    write_label_png(stage / "masks" / str(k) / f"{result.name}.png",
                                    mask.astype(np.uint8))
                areas[:] += masks.reshape(len(texts), -1).mean(1)
                yield result.frame, masks

        # tee buffers at most one item here: the renderer takes a frame, then its masks.
        for_frames, for_masks = itertools.tee(frames_and_masks())
        count = render_overlay_video((f for f, _ in for_frames), (m for _, m in for_masks),
                                     texts, stage / "overlay.mp4",
                                     stage / "overlay.gif" if gif else None, fps=fps,
                                     colors=colors, gif_stride=max(1, math.ceil(fps / 12)))
        summary = {
            "video": str(video), "frames": count, "fps": fps,
            "size": [info.height, info.width], "threshold": threshold,
            "window": predictor.window,
            "expressions": {str(k): {"text": t, "masks": f"masks/{k}",
                                     "mean_area_fraction": float(areas[k] / max(count, 1))}
                            for k, t in enumerate(texts)},
            "overlay_mp4": "overlay.mp4", "overlay_gif": "overlay.gif" if gif else None,
        }
        (stage / "expressions.json").write_text(json.dumps(summary, indent=1))
    return summary
