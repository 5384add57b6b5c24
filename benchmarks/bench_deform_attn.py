"""Multi-scale deformable attention alone: time and peak memory of the grid_sample path
(rvos.models.deform_attn.ms_deform_attn) against the direct computation of the same
formula (ms_deform_attn_direct), at realistic sizes, and their largest difference.

    python benchmarks/bench_deform_attn.py [--threads 1] [--out benchmarks/results/bench_deform_attn.json]

Sizes: 4 levels of a 360x640 frame at strides 8/16/32/64 (4,820 tokens), 8 heads of 32
channels, 4 points; queries = 300 (decoder) or every encoder token (encoder). Each
measurement runs in a fresh subprocess so that its peak RSS (ru_maxrss) is its own;
memory is reported as the peak minus the RSS once the inputs exist.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

LEVELS = [(45, 80), (23, 40), (12, 20), (6, 10)]      # 360x640 at strides 8, 16, 32, 64
HEADS, HEAD_DIM, POINTS = 8, 32, 4


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def worker(impl: str, queries: str, frames: int, backward: bool, repeats: int, threads: int) -> dict:
    import torch

    from rvos.models.deform_attn import ms_deform_attn, ms_deform_attn_direct

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    s = sum(h * w for h, w in LEVELS)
    lq = s if queries == "encoder" else 300
    value = torch.randn(frames, s, HEADS, HEAD_DIM, generator=g)
    loc = torch.rand(frames, lq, HEADS, len(LEVELS), POINTS, 2, generator=g)
    weights = torch.rand(frames, lq, HEADS, len(LEVELS), POINTS, generator=g).softmax(-1)
    if backward:
        for t in (value, loc, weights):
            t.requires_grad_(True)
    fn = ms_deform_attn if impl == "grid_sample" else ms_deform_attn_direct
    base_rss = rss_mb()
    base_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        if backward:
            fn(value, LEVELS, loc, weights).square().sum().backward()
        else:
            with torch.no_grad():
                fn(value, LEVELS, loc, weights)
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"impl": impl, "queries": queries, "num_queries": lq, "tokens": s, "frames": frames,
            "backward": backward, "ms": 1000 * min(times), "ms_all": [1000 * t for t in times],
            "peak_mb_above_inputs": max(peak, base_peak) - base_rss}


def max_difference(queries: str, threads: int) -> float:
    import torch

    from rvos.models.deform_attn import ms_deform_attn, ms_deform_attn_direct

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(1)
    s = sum(h * w for h, w in LEVELS)
    lq = s if queries == "encoder" else 300
    value = torch.randn(1, s, HEADS, HEAD_DIM, generator=g)
    loc = torch.rand(1, lq, HEADS, len(LEVELS), POINTS, 2, generator=g) * 1.2 - 0.1
    weights = torch.rand(1, lq, HEADS, len(LEVELS), POINTS, generator=g).softmax(-1)
    with torch.no_grad():
        a = ms_deform_attn(value, LEVELS, loc, weights)
        b = ms_deform_attn_direct(value, LEVELS, loc, weights)
    return float((a - b).abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--frames", type=int, default=1, help="N, frames attended at once")
    parser.add_argument("--out", default="benchmarks/results/bench_deform_attn.json")
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        impl, queries, frames, backward, repeats = args.worker
        print(json.dumps(worker(impl, queries, int(frames), backward == "1", int(repeats), args.threads)))
        return

    rows = []
    for queries in ("decoder", "encoder"):
        for backward in (False, True):
            for impl in ("grid_sample", "direct"):
                cmd = [sys.executable, __file__, "--threads", str(args.threads), "--worker", impl,
                       queries, str(args.frames), "1" if backward else "0", str(args.repeats)]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True)
                row = json.loads(out.stdout.strip().splitlines()[-1])
                rows.append(row)
                print(f"{queries:8s} {'fwd+bwd' if backward else 'forward':8s} {impl:12s} "
                      f"{row['ms']:9.1f} ms  peak +{row['peak_mb_above_inputs']:7.1f} MB", flush=True)
    diffs = {q: max_difference(q, args.threads) for q in ("decoder", "encoder")}
    print("max |grid_sample - direct|:", diffs)
    result = {"levels": LEVELS, "heads": HEADS, "head_dim": HEAD_DIM, "points": POINTS,
              "threads": args.threads, "rows": rows, "max_abs_difference": diffs,
              "machine": {"platform": platform.platform(), "python": platform.python_version(),
                          "torch": __import__("torch").__version__,
                          "cpu_count": __import__("os").cpu_count()}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
