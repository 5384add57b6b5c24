"""Speed of J&F on 480p sequences: batched (bit-packed) vs straightforward per-frame code.

Three implementations score the same (ground truth, prediction) frames and must give
identical numbers (checked bit for bit):

* ``batched``: ``rvos.metrics.davis.jaccard_and_f`` on (T, H, W) stacks - what the protocols use;
* ``per-frame (rvos)``: ``region_similarity`` + ``boundary_f_measure`` looped over frames
  (numpy, whole-frame disk dilation);
* ``per-frame (official-style)``: the official davis2017 algorithm per frame with
  ``cv2.dilate`` and a skimage-style disk, as ``davis2017/metrics.py`` runs it.

Frames: the real DAVIS 480p clips of ../shared/assets/davis-real when present (else, or with
--synthetic, seeded 854x480 frames of many blobs: boundaries all over the frame); predictions are the ground truth moved by a few pixels and eroded
(F well below 1, the realistic regime). Prints a table and writes JSON (default
benchmarks/results/bench_metrics.json).

    .venv/bin/python benchmarks/bench_metrics.py [--frames 60] [--repeats 3] [--synthetic] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import cv2
import numpy as np

from rvos.metrics.davis import boundary_f_measure, jaccard_and_f, region_similarity

ASSETS = Path(__file__).resolve().parents[1].parent / "shared" / "assets" / "davis-real"


# ----------------------------------------------------------------------------- data


def load_frames(n_frames: int, synthetic: bool = False, seed: int = 0) -> tuple[np.ndarray, str]:
    """(T, 480, 854) bool ground truth: real DAVIS masks spread over the clips, or synthetic."""
    folder = ASSETS / "Annotations" / "480p"
    if folder.is_dir() and not synthetic:
        from rvos.data.palette import read_label_png

        files = sorted(folder.glob("*/*.png"))
        picks = np.linspace(0, len(files) - 1, min(n_frames, len(files))).round().astype(int)
        return np.stack([read_label_png(files[i]) > 0 for i in picks]), f"DAVIS-2016 val 480p ({folder})"
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n_frames):
        noise = gaussian_filter(rng.random((120, 214)), 6)
        small = noise > np.quantile(noise, 0.7)
        frames.append(cv2.resize(small.astype(np.uint8), (854, 480), interpolation=cv2.INTER_NEAREST) > 0)
    return np.stack(frames), "synthetic 854x480 blobs, many objects per frame"


def make_predictions(gt: np.ndarray) -> np.ndarray:
    moved = np.roll(np.roll(gt, 6, axis=2), -4, axis=1)
    kernel = np.ones((5, 5), np.uint8)
    return np.stack([cv2.erode(m.astype(np.uint8), kernel) > 0 for m in moved])


# ----------------------------------------------------------------------------- implementations


def _official_disk(radius: float) -> np.ndarray:
    axis = np.arange(-radius, radius + 1)
    xx, yy = np.meshgrid(axis, axis)
    return (xx**2 + yy**2 <= radius**2).astype(np.uint8)


def _official_bmap(seg: np.ndarray) -> np.ndarray:
    seg = seg.astype(bool)
    east, south, south_east = np.zeros_like(seg), np.zeros_like(seg), np.zeros_like(seg)
    east[:, :-1], south[:-1, :], south_east[:-1, :-1] = seg[:, 1:], seg[1:, :], seg[1:, 1:]
    b = (seg ^ east) | (seg ^ south) | (seg ^ south_east)
    b[-1, :] = seg[-1, :] ^ east[-1, :]
    b[:, -1] = seg[:, -1] ^ south[:, -1]
    b[-1, -1] = False
    return b


def official_style_jf(gt: np.ndarray, pred: np.ndarray, bound_th: float = 0.008) -> tuple[float, float]:
    union = np.count_nonzero(gt | pred)
    j = 1.0 if union == 0 else np.count_nonzero(gt & pred) / union
    kernel = _official_disk(np.ceil(bound_th * np.linalg.norm(gt.shape)))
    fb, gb = _official_bmap(pred), _official_bmap(gt)
    fd = cv2.dilate(fb.astype(np.uint8), kernel)
    gd = cv2.dilate(gb.astype(np.uint8), kernel)
    n_fg, n_gt = np.sum(fb), np.sum(gb)
    if n_fg == 0 and n_gt > 0:
        p, r = 1, 0
    elif n_fg > 0 and n_gt == 0:
        p, r = 0, 1
    elif n_fg == 0 and n_gt == 0:
        p, r = 1, 1
    else:
        p, r = np.sum(fb * gd) / float(n_fg), np.sum(gb * fd) / float(n_gt)
    return j, (0 if p + r == 0 else 2 * p * r / (p + r))


def run_batched(gt, pred):
    return jaccard_and_f(gt, pred)


def run_per_frame_rvos(gt, pred):
    j = np.array([region_similarity(g, p) for g, p in zip(gt, pred)])
    f = np.array([boundary_f_measure(g, p) for g, p in zip(gt, pred)])
    return j, f


def run_per_frame_official(gt, pred):
    out = np.array([official_style_jf(g, p) for g, p in zip(gt, pred)], dtype=np.float64)
    return out[:, 0], out[:, 1]


METHODS = {"batched": run_batched, "per-frame (rvos)": run_per_frame_rvos,
           "per-frame (official-style, cv2)": run_per_frame_official}


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=60, help="480p frames to score")
    parser.add_argument("--synthetic", action="store_true",
                        help="seeded synthetic blobs instead of the real clips (boundaries everywhere)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (best is kept)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "bench_metrics.json"))
    args = parser.parse_args(argv)

    gt, source = load_frames(args.frames, args.synthetic)
    pred = make_predictions(gt)
    n = len(gt)
    results = {name: None for name in METHODS}
    best = {name: float("inf") for name in METHODS}
    for _ in range(args.repeats):  # interleaved rounds: machine load hits all methods alike
        for name, fn in METHODS.items():
            start = time.perf_counter()
            results[name] = fn(gt, pred)
            best[name] = min(best[name], time.perf_counter() - start)

    ref_j, ref_f = results["batched"]
    identical = {name: bool(np.array_equal(j, ref_j) and np.array_equal(f, ref_f))
                 for name, (j, f) in results.items()}
    max_diff = {name: float(max(np.abs(j - ref_j).max(), np.abs(f - ref_f).max()))
                for name, (j, f) in results.items()}
    ms = {name: best[name] / n * 1e3 for name in METHODS}
    report = {
        "frames": n, "frame_size": list(gt.shape[1:]), "source": source, "repeats": args.repeats,
        "ms_per_frame_JF": ms,
        "frames_per_second": {name: 1e3 / v for name, v in ms.items()},
        "speedup_batched_vs": {name: ms[name] / ms["batched"] for name in METHODS if name != "batched"},
        "identical_to_batched": identical, "max_abs_difference": max_diff,
        "mean_J": float(ref_j.mean()), "mean_F": float(ref_f.mean()),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "numpy": np.__version__, "opencv": cv2.__version__},
    }
    print(f"J&F on {n} frames {gt.shape[2]}x{gt.shape[1]} ({source}), best of {args.repeats}:")
    for name in METHODS:
        speed = "" if name == "batched" else f"   batched is {report['speedup_batched_vs'][name]:.1f}x faster"
        print(f"  {name:<34}{ms[name]:8.2f} ms/frame   identical: {identical[name]}{speed}")
    print(f"  mean J {report['mean_J']:.4f}  mean F {report['mean_F']:.4f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"written: {out}")
    return 0 if all(identical.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
