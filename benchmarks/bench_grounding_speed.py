"""Speed of the track-grounding regime against the baseline's: sentence-clip presentations
per training second, feature-cache build time and size, and inference frames/s at 360x640.

    python benchmarks/bench_grounding_speed.py --run demo_output/run
        [--out benchmarks/results/grounding_speed.json] [--frames 48] [--sentences 1 4]

``--run``: a finished grounding run folder (its ``checkpoints/last.safetensors`` holds the stage
timings and its ``feature_cache/`` the cache); inference is timed with its checkpoint on a
synthetic 360x640 clip (random frames, so the number of objects found is whatever the
model makes of noise: a fair load for the segmenter, linking and scoring). The baseline
figure is measured here: one optimizer step of the demo's baseline (ResNet-18, 128x128,
4-frame clips, one sentence per clip) in a fresh subprocess.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def folder_size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def baseline_presentations_per_s() -> dict:
    """The demo baseline's training speed: clips/s at batch 1, one sentence per clip."""
    from rvos.bench import measure_in_subprocess

    r = measure_in_subprocess(kind="training", backbone="resnet18", device_name="cpu",
                              size=(128, 128), num_frames=4, repeats=5)
    return {"presentations_per_s": r["clips_per_s"], "peak_memory_mb": r["peak_memory_mb"]}


def inference_fps(checkpoint: Path, frames: int, sentences: int) -> dict:
    from rvos.inference import Predictor

    predictor = Predictor.from_checkpoint(checkpoint, "cpu", window=frames)
    rng = np.random.default_rng(0)
    clip = [(f"{i:05d}", rng.integers(0, 256, (360, 640, 3), dtype=np.uint8)) for i in range(frames)]
    texts = ["the red circle", "the leftmost object", "the square above the blue star",
             "the object that stops halfway"][:sentences]
    list(predictor.predict(clip[:4], texts))                     # warm-up
    start = time.perf_counter()
    out = list(predictor.predict(clip, texts))
    elapsed = time.perf_counter() - start
    return {"frames": len(out), "sentences": sentences, "seconds": elapsed,
            "frames_per_s": len(out) / elapsed}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True, help="a finished grounding run folder")
    ap.add_argument("--frames", type=int, default=48, help="frames of the 360x640 clip")
    ap.add_argument("--sentences", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/grounding_speed.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    run = Path(args.run)
    meta_path = run / "checkpoints" / "last.safetensors"
    if not meta_path.is_file():
        raise SystemExit(f"{meta_path}: not found (pass a finished grounding run folder)")
    from rvos.engine.checkpoint import load_checkpoint

    meta = load_checkpoint(meta_path).meta
    timings = meta.get("timings", {})
    caches = [p for p in (run / "feature_cache").glob("*") if (p / "manifest.json").is_file()]
    frames_cached = sum(json.loads((p / "manifest.json").read_text())["arrays"]["frames"]["shape"][0]
                        for p in caches)
    train_s = sum(timings.get(k, 0.0) for k in ("cache_s", "segmenter_s", "track_bank_s",
                                                 "text_s", "scorer_s"))
    result = {
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
                    "torch": torch.__version__},
        "grounding": {
            "scorer_presentations_per_s": timings.get("presentations_per_s"),
            "presentations": meta.get("presentations"),
            "presentations_per_training_s": meta.get("presentations", 0) / max(train_s, 1e-9),
            "training_s": train_s, "timings": timings,
            "cache": {"frames": frames_cached, "build_s": timings.get("cache_s"),
                      "size_mb": sum(folder_size_mb(p) for p in caches)},
        },
        "baseline": baseline_presentations_per_s(),
        "inference_360x640": [inference_fps(run / "checkpoints" / "last.safetensors", args.frames, k)
                              for k in args.sentences],
    }
    g, b = result["grounding"], result["baseline"]
    result["speedup_presentations_per_s"] = {
        "scorer_stage": (g["scorer_presentations_per_s"] or 0) / b["presentations_per_s"],
        "whole_training": g["presentations_per_training_s"] / b["presentations_per_s"]}
    print(f"baseline: {b['presentations_per_s']:.2f} presentations/s")
    print(f"grounding: scorer stage {g['scorer_presentations_per_s']:.0f} presentations/s; "
          f"{g['presentations_per_training_s']:.0f} per second of the whole training "
          f"({g['presentations']} in {train_s:.0f} s, cache included)")
    print(f"feature cache: {frames_cached} frames in {g['cache']['build_s']:.0f} s, "
          f"{g['cache']['size_mb']:.0f} MB")
    for r in result["inference_360x640"]:
        print(f"inference 360x640, {r['sentences']} sentence(s): {r['frames_per_s']:.1f} frames/s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
