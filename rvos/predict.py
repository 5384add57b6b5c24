"""Segment a user's video (file or frame folder) with one or several sentences.

Writes, into ``out``:
  masks/<k>/<frame>.png   palette PNG (id 1 = the object of sentence k, 0 = background)
  overlay.mp4, overlay.gif  the video with every sentence's mask and the sentences drawn
  expressions.json         sentence index -> text, video info, settings
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from rvos.data.palette import davis_palette, write_label_png
from rvos.data.video_io import VideoWriter, iter_video_frames, probe_video
from rvos.errors import RVOSError
from rvos.inference import FramePrediction, Predictor
from rvos.outputs_dir import staged_output
from rvos.viz import draw_caption, overlay_masks


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
    colors = [tuple(int(c) for c in davis_palette()[k + 1]) for k in range(len(texts))]
    with staged_output(out, overwrite) as stage:
        fps = info.fps or 10.0
        writers = [VideoWriter(stage / "overlay.mp4", fps)]
        if gif:
            writers.append(VideoWriter(stage / "overlay.gif", min(fps, 12.0)))
        areas = np.zeros(len(texts))
        count = 0
        frames = iter_video_frames(video)
        results: Iterator[FramePrediction] = predictor.predict(frames, texts)
        try:
            for writer in writers:
                writer.__enter__()
            for result in tqdm(results, total=info.num_frames, desc="segment", unit="frame",
                               disable=not progress):
                masks = result.masks(threshold)
                for k, mask in enumerate(masks):
                    write_label_png(stage / "masks" / str(k) / f"{result.name}.png",
                                    mask.astype(np.uint8))
                areas += masks.reshape(len(texts), -1).mean(1)
                count += 1
                frame = overlay_masks(result.frame, list(masks), colors)
                frame = draw_caption(frame, list(zip(texts, colors)))
                for writer in writers:
                    writer.write(frame)
        finally:
            for writer in writers:
                writer.__exit__(None, None, None)
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
