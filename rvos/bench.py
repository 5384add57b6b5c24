"""Benchmarks: baseline inference frames/s and peak memory at 360x640 (ResNet-18/50),
training clips/s, and J&F per expression type after the demo's fixed training budget for
the baseline or any other config (e.g. the query-based core) on the same synthetic data.

Each speed figure is measured in a fresh subprocess so that its peak memory is its own.
Results are printed and written as JSON (``<out>/baseline_speed.json``,
``<out>/quality.json``).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import platform
import resource
import time
from pathlib import Path

import torch

from rvos.config import Config, load_config
from rvos.inference import resolve_device


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _measure(kind: str, backbone: str, device_name: str, size: tuple[int, int],
             num_frames: int, repeats: int, queue) -> None:
    from rvos.data.batch import ClipBatch
    from rvos.losses import weighted_total
    from rvos.models.build import build_model

    torch.manual_seed(0)
    device = resolve_device(device_name)
    cfg = load_config(None, [f"model.baseline.backbone={backbone}", f"data.input_size={list(size)}"])
    model, criterion = build_model(cfg)
    model.to(device)
    frames = torch.randn(1, num_frames, 3, *size, device=device)
    texts = ["the small green triangle on the left"]
    if kind == "inference":
        model.eval()
        with torch.inference_mode():
            model(frames, texts)                       # warm-up
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats(device)
            t = time.perf_counter()
            for _ in range(repeats):
                model(frames, texts)
            if device.type == "cuda":
                torch.cuda.synchronize()
        elapsed = time.perf_counter() - t
        queue.put({"frames_per_s": repeats * num_frames / elapsed,
                   "peak_memory_mb": _peak_memory_mb(device)})
        return
    batch = ClipBatch(frames, (torch.rand(1, num_frames, *size, device=device) > 0.9).float(),
                      torch.ones(1, num_frames, dtype=torch.bool, device=device),
                      torch.zeros(1, num_frames, 4, device=device), texts, [None])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step():
        loss = weighted_total(criterion(model(batch.frames, batch.texts), batch), criterion.weights)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    step()
    t = time.perf_counter()
    for _ in range(repeats):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    queue.put({"clips_per_s": repeats / (time.perf_counter() - t),
               "peak_memory_mb": _peak_memory_mb(device)})


def measure_in_subprocess(**kwargs) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_measure, kwargs={**kwargs, "queue": queue})
    proc.start()
    result = queue.get(timeout=1800)
    proc.join()
    return result


def speed_benchmark(device: str = "auto") -> dict:
    """Inference at 360x640 (8-frame windows) and training at 128x128 (4-frame clips)."""
    results = {"device": str(resolve_device(device)), "cpu": platform.processor() or platform.machine(),
               "threads": torch.get_num_threads(), "torch": torch.__version__,
               "inference_360x640": {}, "training_128x128": {}}
    for backbone in ("resnet18", "resnet50"):
        r = measure_in_subprocess(kind="inference", backbone=backbone, device_name=device,
                                  size=(360, 640), num_frames=8, repeats=2)
        results["inference_360x640"][backbone] = r
        print(f"inference 360x640 {backbone}: {r['frames_per_s']:.2f} frames/s, "
              f"peak memory {r['peak_memory_mb']:.0f} MB")
        r = measure_in_subprocess(kind="training", backbone=backbone, device_name=device,
                                  size=(128, 128), num_frames=4, repeats=5)
        results["training_128x128"][backbone] = r
        print(f"training 128x128 T=4 {backbone}: {r['clips_per_s']:.2f} clips/s, "
              f"peak memory {r['peak_memory_mb']:.0f} MB")
    return results


def quality_benchmark(out: Path, budget_s: float, configs: list[Path] | None = None,
                      progress: bool = False) -> dict:
    """The demo pipeline (fixed seed, data and time budget) for each config on one shared
    synthetic benchmark: J&F per expression type on test and test_compositional.

    Runs go to ``<out>/quality/<config stem>/``; the data to ``<out>/quality/data``.
    """
    import shutil

    from rvos.demo import DEMO_CONFIG, DEMO_SYNTH, generate_demo_data, train_evaluate_predict

    root = out / "quality"
    if root.exists():
        shutil.rmtree(root)
    data_s = generate_demo_data(root / "data", progress)
    runs = {config.stem: train_evaluate_predict(root / config.stem, root / "data", config, budget_s, progress)
            for config in configs or [DEMO_CONFIG]}
    return {"budget_s": budget_s, "data_s": data_s, "synthetic": DEMO_SYNTH,
            "machine": {"cpu": platform.processor() or platform.machine(),
                        "threads": torch.get_num_threads(), "torch": torch.__version__},
            "runs": runs}


def format_quality_table(result: dict) -> str:
    """J&F per expression type: one row per type, one column per (model, split)."""
    columns = [(name, split, summary) for name, run in result["runs"].items()
               for split, summary in run["results"].items()]
    types = sorted({t for _, _, s in columns for t in s["by_type"]})
    labels = [f"{name}/{'comp' if split == 'test_compositional' else split}" for name, split, _ in columns]
    width = max(14, *(len(label) + 2 for label in labels))
    lines = [f"{'J&F':<14}" + "".join(f"{label:>{width}}" for label in labels)]
    lines.append("-" * len(lines[0]))
    for row in [*types, "overall"]:
        cells = []
        for _, _, s in columns:
            value = s["overall"] if row == "overall" else s["by_type"].get(row)
            cells.append(f"{value['JF']:>{width}.3f}" if value else f"{'-':>{width}}")
        lines.append(f"{row:<14}" + "".join(cells))
    steps = ", ".join(f"{name}: {run['steps']} steps in {run['timings']['train_s']:.0f} s"
                      for name, run in result["runs"].items())
    lines.append(f"training budget {result['budget_s']:.0f} s each ({steps})")
    return "\n".join(lines)


def run_baseline_benchmarks(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if "speed" in args.what:
        result = speed_benchmark(args.device)
        (out / "baseline_speed.json").write_text(json.dumps(result, indent=1))
        print(f"wrote {out / 'baseline_speed.json'}")
    if "quality" in args.what:
        configs = [Path(c) for c in args.config] if args.config else None
        result = quality_benchmark(out, args.budget_s, configs, progress=not args.quiet)
        print(format_quality_table(result))
        (out / "quality.json").write_text(json.dumps(result, indent=1))
        print(f"wrote {out / 'quality.json'}")
