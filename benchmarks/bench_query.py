"""Inference speed and peak memory of the query-based model on CPU (or a GPU with --device).

    python benchmarks/bench_query.py [--threads 1] [--out benchmarks/results/bench_query.json]

1. Clips: frames/s and peak memory at 360x640 for clip (window) lengths 5 and 36, for the
   published-scale ResNet-50 and Video-Swin-T models (the packaged query_ytvos_* configs, random
   weights and the offline MiniLM text encoder: speed does not depend on the weights; the
   text encoder's cost is paid once per sentence). Each setting runs in a fresh subprocess
   that streams 2 windows through rvos.inference.Predictor and times the second one; peak
   memory is the subprocess's ru_maxrss minus its RSS once the model is built.
2. Long videos: the Predictor streams N frames (generated one at a time) through one model;
   the peak RSS after 100 frames and after all N frames are recorded in the same process.
   Flat memory means the two are equal: windows are processed and released one by one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_predictor(config: str, size: tuple[int, int], window: int, device: str, overrides: list[str]):
    import torch

    from rvos.config import load_config
    from rvos.inference import Predictor
    from rvos.models.build import build_model

    cfg = load_config(REPO / config, ["model.text.name=minilm", "model.query.backbone_weights=none",
                                      *overrides])
    torch.manual_seed(0)
    model = build_model(cfg)
    return Predictor(model, size, window=window, device=device)


def frames(n: int, size: tuple[int, int]):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
    for i in range(n):
        yield f"{i:05d}", np.roll(base, 4 * i, axis=1)


def clip_worker(config: str, window: int, size: tuple[int, int], device: str) -> dict:
    predictor = build_predictor(config, size, window, device, [])
    built_rss = rss_mb()
    stream = predictor.predict(frames(2 * window, size), ["the person riding a bike on the left"])
    start = time.perf_counter()
    for i, _ in enumerate(stream):
        if i == window - 1:               # first window done: warm-up (text encoding, allocator)
            start = time.perf_counter()
    seconds = time.perf_counter() - start
    if device.startswith("cuda"):
        import torch
        gpu_peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        gpu_peak = None
    return {"config": config, "window": window, "size": list(size), "seconds_per_window": seconds,
            "frames_per_second": window / seconds, "peak_mb_above_model": peak_mb() - built_rss,
            "model_rss_mb": built_rss, "gpu_peak_mb": gpu_peak}


def long_worker(config: str, window: int, size: tuple[int, int], num_frames: int, device: str,
                overrides: list[str]) -> dict:
    predictor = build_predictor(config, size, window, device, overrides)
    built_rss = rss_mb()
    checkpoints, start = {}, time.perf_counter()
    for i, _ in enumerate(predictor.predict(frames(num_frames, size), ["the red circle"]), 1):
        if i in (window, 100, num_frames // 2, num_frames):
            checkpoints[i] = {"peak_mb": peak_mb(), "rss_mb": rss_mb(),
                              "seconds": time.perf_counter() - start}
    return {"config": config, "window": window, "size": list(size), "num_frames": num_frames,
            "model_rss_mb": built_rss, "after_frames": checkpoints,
            "peak_growth_100_to_end_mb": checkpoints[num_frames]["peak_mb"] - checkpoints[100]["peak_mb"]}


def run_worker(args: list[str], threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env,
                         cwd=REPO)
    if out.returncode:
        raise RuntimeError(f"worker {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+",
                        default=["query_ytvos_resnet50", "query_ytvos_video_swin_t"])
    parser.add_argument("--size", type=int, nargs=2, default=[360, 640])
    parser.add_argument("--windows", type=int, nargs="+", default=[5, 36])
    parser.add_argument("--long-config", default="query_synth_mobilenetv2")
    parser.add_argument("--long-frames", type=int, default=1000)
    parser.add_argument("--long-window", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per run")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-clips", action="store_true")
    parser.add_argument("--skip-long", action="store_true")
    parser.add_argument("--out", default="benchmarks/results/bench_query.json")
    parser.add_argument("--clip-worker", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--long-worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    size = tuple(args.size)
    if args.clip_worker:
        print(json.dumps(clip_worker(args.clip_worker[0], int(args.clip_worker[1]), size, args.device)))
        return
    if args.long_worker:
        config, window, n = args.long_worker
        overrides = [f"data.input_size=[{size[0]},{size[1]}]"]
        print(json.dumps(long_worker(config, int(window), size, int(n), args.device, overrides)))
        return

    result = {"threads": args.threads, "device": args.device, "size": list(size), "clips": [],
              "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                          "python": platform.python_version(),
                          "torch": __import__("torch").__version__}}
    common = ["--size", str(size[0]), str(size[1]), "--device", args.device]
    if not args.skip_clips:
        for config in args.configs:
            for window in args.windows:
                row = run_worker([*common, "--clip-worker", config, str(window)], args.threads)
                result["clips"].append(row)
                print(f"{Path(config).stem:28s} T={window:3d}  {row['frames_per_second']:6.2f} frames/s  "
                      f"peak +{row['peak_mb_above_model']:7.0f} MB (model {row['model_rss_mb']:.0f} MB)",
                      flush=True)
    if not args.skip_long:
        row = run_worker([*common, "--long-worker", args.long_config, str(args.long_window),
                          str(args.long_frames)], args.threads)
        result["long_video"] = row
        marks = ", ".join(f"{k} frames: peak {v['peak_mb']:.0f} MB" for k, v in row["after_frames"].items())
        print(f"long video ({Path(args.long_config).stem}, window {args.long_window}): {marks}; "
              f"growth after frame 100: {row['peak_growth_100_to_end_mb']:.1f} MB")
    out = REPO / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print("wrote", out)


if __name__ == "__main__":
    main()
