"""Benchmarks: baseline inference frames/s and peak memory at 360x640 (ResNet-18/50),
training clips/s, and the standard quality comparison: each config (the baseline, the
query-based core, any later method) trained once per training seed within the demo's time
budget on one shared synthetic benchmark, J&F and object accuracy per expression type on
test and test_compositional, mean and spread over the seeds.

Query-family speed: inference frames/s and peak memory of published-scale configs
(random weights, no download) at 360x640 for clips of 5 and 36 frames.

Each speed figure is measured in a fresh subprocess so that its peak memory is its own.
Results are printed and written as JSON (``<out>/baseline_speed.json``,
``<out>/query_speed.json``, ``<out>/quality.json``) and, for quality, a bar chart
(``<out>/quality.png``).
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing as mp
import os
import platform
import resource
import time
from pathlib import Path

import numpy as np
import torch

from rvos.config import CONFIG_DIR, base_chain, load_config, resolve_config
from rvos.errors import RVOSError
from rvos.extras import optional_module
from rvos.inference import resolve_device

logger = logging.getLogger(__name__)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _measure(kind: str, backbone: str, device_name: str, size: tuple[int, int],
             num_frames: int, repeats: int, queue) -> None:
    from rvos.data.batch import ClipBatch
    from rvos.losses import weighted_total
    from rvos.models.build import build_criterion, build_model

    torch.manual_seed(0)
    device = resolve_device(device_name)
    cfg = load_config(None, [f"model.baseline.backbone={backbone}", f"data.input_size={list(size)}"])
    model = build_model(cfg)
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
    criterion = build_criterion(cfg)
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
        logger.info(f"inference 360x640 {backbone}: {r['frames_per_s']:.2f} frames/s, "
                    f"peak memory {r['peak_memory_mb']:.0f} MB")
        r = measure_in_subprocess(kind="training", backbone=backbone, device_name=device,
                                  size=(128, 128), num_frames=4, repeats=5)
        results["training_128x128"][backbone] = r
        logger.info(f"training 128x128 T=4 {backbone}: {r['clips_per_s']:.2f} clips/s, "
                    f"peak memory {r['peak_memory_mb']:.0f} MB")
    return results


QUERY_SPEED_SIZE = (360, 640)
QUERY_SPEED_FRAMES = (5, 36)
QUERY_SPEED_SENTENCE = "the person in a red jacket riding a bike on the left"


def published_configs(folder: Path | None = None) -> list[Path]:
    """The published-scale configs: the packaged ``*_ytvos_*.yaml`` and ``*_a2d_*.yaml``
    (a method's config joins by its name), sorted."""
    folder = Path(folder) if folder is not None else CONFIG_DIR
    return sorted({*folder.glob("*_ytvos_*.yaml"), *folder.glob("*_a2d_*.yaml")})


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _measure_query_speed(config: str, overrides: list[str], device_name: str,
                         size: tuple[int, int], num_frames: int, repeats: int, queue) -> None:
    """In a fresh process: build ``config`` with random weights (no download), then time
    ``repeats`` inference passes over one clip (1, num_frames, 3, *size) and one sentence
    after one warm-up pass. The frozen text encoder memoises the sentence in the warm-up,
    so the timed passes are the video path (the text is paid once per sentence)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        from rvos.models.build import build_model

        torch.manual_seed(0)
        device = resolve_device(device_name)
        cfg = load_config(config, list(overrides))
        start = time.perf_counter()
        model = build_model(cfg, pretrained=False)
        build_s = time.perf_counter() - start
        text = getattr(model, "text_encoder", None)
        params = sum(p.numel() for p in model.parameters())
        params_text = sum(p.numel() for p in text.parameters()) if text is not None else 0
        model.to(device).eval()
        model_mb = (torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda"
                    else _rss_mb())
        frames = torch.randn(1, num_frames, 3, *size, device=device)
        with torch.inference_mode():
            out = model(frames, [QUERY_SPEED_SENTENCE])            # warm-up
            shape = list(out.mask_logits.shape)
            del out
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            start, cpu_start = time.perf_counter(), time.process_time()
            for _ in range(repeats):
                model(frames, [QUERY_SPEED_SENTENCE])
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            elapsed, cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
        queue.put({"frames": num_frames, "repeats": repeats,
                   "frames_per_s": repeats * num_frames / elapsed,
                   "seconds_per_clip": elapsed / repeats, "cpu_seconds_per_clip": cpu_s / repeats,
                   "peak_memory_mb": _peak_memory_mb(device), "model_memory_mb": model_mb,
                   "params": params, "params_text": params_text, "build_s": build_s,
                   "mask_logits_shape": shape, "text_tokenizer_stand_in":
                   bool(getattr(text, "stand_in_tokenizer", False))})
    except Exception as e:     # reported in the results, the other settings go on
        queue.put({"frames": num_frames, "repeats": repeats,
                   "error": f"{type(e).__name__}: {e}".splitlines()[0]})


def _run_in_subprocess(target, timeout_s: float = 3600, **kwargs) -> dict:
    """``target(**kwargs, queue=q)`` in a fresh (spawned) process: its result, or
    ``{"error": ...}`` when the process dies (e.g. killed for memory) or runs too long."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, kwargs={**kwargs, "queue": queue})
    proc.start()
    deadline = time.monotonic() + timeout_s
    result = None
    while result is None:
        try:
            result = queue.get(timeout=1.0)
        except Exception:       # queue.Empty
            if not proc.is_alive() and queue.empty():
                result = {"error": f"the measuring process exited with code {proc.exitcode} "
                                   "(out of memory?)"}
            elif time.monotonic() > deadline:
                proc.kill()
                result = {"error": f"no result within {timeout_s:.0f} s"}
    proc.join()
    return result


def format_query_speed(result: dict) -> str:
    """The results of :func:`query_speed_benchmark` as a table: one row per (config, T)."""
    h, w = result["size"]
    lines = [f"query-family inference at {h}x{w}, one sentence, random weights, "
             f"device {result['machine']['device']} ({result['machine']['threads']} threads)"]
    header = (f"{'config':<32}{'T':>4}{'frames/s':>10}{'s/clip':>9}{'cpu s':>8}{'peak MB':>9}"
              f"{'model MB':>10}{'params M':>10}")
    lines += [header, "-" * len(header)]
    for name, runs in result["results"].items():
        for r in runs.values():
            if "error" in r:
                lines.append(f"{name:<32}{r['frames']:>4}  error: {r['error']}")
                continue
            lines.append(f"{name:<32}{r['frames']:>4}{r['frames_per_s']:>10.2f}"
                         f"{r['seconds_per_clip']:>9.2f}{r['cpu_seconds_per_clip']:>8.1f}"
                         f"{r['peak_memory_mb']:>9.0f}"
                         f"{r['model_memory_mb']:>10.0f}{r['params'] / 1e6:>10.1f}")
    for name, entry in result.get("against_base", {}).items():
        for key, ratio in entry.items():
            if key != "base":
                lines.append(f"{name} against {entry['base']}, {key}: "
                             f"{ratio['frames_per_s_ratio']:.2f}x the frames/s, "
                             f"{ratio['cpu_seconds_ratio']:.2f}x the CPU seconds, "
                             f"{ratio['peak_memory_ratio']:.2f}x the peak memory")
    return "\n".join(lines)


def query_speed_benchmark(out: Path, configs: list[Path] | None = None, device: str = "auto",
                          size: tuple[int, int] = QUERY_SPEED_SIZE,
                          frames: list[int] | tuple[int, ...] = QUERY_SPEED_FRAMES,
                          repeats: list[int] | None = None, overrides: list[str] | tuple = (),
                          overwrite: bool = False) -> dict:
    """Inference speed and peak memory of each config (default: :func:`published_configs`)
    at ``size`` (H, W) for each clip length in ``frames``, one sentence, random weights
    (``build_model(cfg, pretrained=False)``, nothing downloaded), ``model.eval()`` under
    ``torch.inference_mode``; each (config, T) in a fresh subprocess (its peak memory is its
    own): one warm-up pass, then ``repeats`` timed passes (one value per clip length, or one
    for all; default 3 for clips of up to 8 frames, 1 for longer ones).

    ``cpu_seconds_per_clip`` (the process's CPU time, all threads) beside the wall-clock
    ``seconds_per_clip`` tells how much a busy machine slowed the clock.

    Peak memory: the process's peak RSS on CPU (model, activations, the interpreter),
    ``torch.cuda.max_memory_allocated`` of the timed passes on CUDA; ``model_memory_mb`` is
    the RSS (CPU) or allocated memory (CUDA) once the model is built.

    Writes ``<out>/query_speed.json`` after every measurement (``complete`` tells) and
    returns what it holds: size, frames, repeats, sentence, overrides, machine
    (:func:`machine_info`), configs ({stem: path}), results ({stem: {"T<n>": {frames,
    repeats, frames_per_s, seconds_per_clip, peak_memory_mb, model_memory_mb, params,
    params_text, build_s, cpu_seconds_per_clip, mask_logits_shape, text_tokenizer_stand_in}
    or {frames, repeats,
    error}}}), total_s, complete, json."""
    from rvos.outputs_dir import os_error, results_folder, write_file_atomic

    configs = [resolve_config(c) for c in (configs or published_configs())]
    if not configs:
        raise RVOSError("no configs to measure (pass --config A.yaml ...)")
    stems = [c.stem for c in configs]
    if len(set(stems)) != len(stems):
        raise RVOSError(f"configs must have distinct file names: {', '.join(map(str, configs))}")
    frames = [int(t) for t in frames]
    if not frames or min(frames) < 1 or len(set(frames)) != len(frames):
        raise RVOSError(f"--frames must be distinct positive clip lengths, got {frames}")
    if repeats is None:
        repeats = [3 if t <= 8 else 1 for t in frames]
    repeats = [int(r) for r in repeats]
    if len(repeats) == 1:
        repeats = repeats * len(frames)
    if len(repeats) != len(frames) or min(repeats) < 1:
        raise RVOSError(f"--repeats takes one positive count, or one per --frames value "
                        f"({len(frames)}), got {repeats}")
    h, w = (int(v) for v in size)
    if h < 1 or w < 1:
        raise RVOSError(f"--size must be positive, got {h}x{w}")
    for config in configs:           # a bad config or override fails now, not in a subprocess
        load_config(config, list(overrides))
    out = results_folder(Path(out), ["query_speed.json"], overwrite, "bench")
    json_path = out / "query_speed.json"
    result = {"size": [h, w], "frames": frames, "repeats": dict(zip(map(str, frames), repeats)),
              "sentence": QUERY_SPEED_SENTENCE, "overrides": list(overrides),
              "machine": machine_info(device), "configs": {c.stem: str(c) for c in configs},
              "results": {}, "total_s": 0.0, "complete": False, "json": str(json_path)}
    start = time.monotonic()
    for config in configs:
        result["results"][config.stem] = {}
        for t, n in zip(frames, repeats):
            logger.info(f"{config.stem}: T={t} at {h}x{w}, {n} timed pass(es) ...")
            r = _run_in_subprocess(_measure_query_speed, config=str(config),
                                   overrides=list(overrides), device_name=device, size=(h, w),
                                   num_frames=t, repeats=n)
            r = {"frames": t, "repeats": n, **r}
            result["results"][config.stem][f"T{t}"] = r
            logger.info(f"  {r['error']}" if "error" in r else
                        f"  {r['frames_per_s']:.2f} frames/s, peak memory {r['peak_memory_mb']:.0f} MB")
            result["total_s"] = time.monotonic() - start
            try:
                write_file_atomic(json_path, json.dumps(result, indent=1))
            except OSError as e:
                raise os_error(e, json_path) from None
    result["against_base"] = against_base(result, configs)
    result["complete"] = True
    try:
        write_file_atomic(json_path, json.dumps(result, indent=1))
    except OSError as e:
        raise os_error(e, json_path) from None
    return result


def against_base(result: dict, configs: list[Path]) -> dict:
    """Each measured config against the nearest config of its ``base:`` chain that was
    measured too (a method against the core it extends, e.g. SgMg against ReferFormer's
    Video-Swin-T settings): ``{config: {"base": stem, "T<n>": {frames_per_s_ratio,
    cpu_seconds_ratio, peak_memory_ratio}}}`` (config / base; a frames/s ratio above 1 is
    faster), for the clip lengths both measured without error."""
    by_path = {Path(c).resolve(): Path(c).stem for c in configs}
    comparisons = {}
    for config in configs:
        base = next((by_path[p] for p in base_chain(config) if p in by_path), None)
        if base is None:
            continue
        entry = {"base": base}
        for key, r in result["results"].get(Path(config).stem, {}).items():
            b = result["results"].get(base, {}).get(key)
            if b is None or "error" in r or "error" in b:
                continue
            entry[key] = {"frames_per_s_ratio": r["frames_per_s"] / b["frames_per_s"],
                          "cpu_seconds_ratio": r["cpu_seconds_per_clip"] / b["cpu_seconds_per_clip"],
                          "peak_memory_ratio": r["peak_memory_mb"] / b["peak_memory_mb"]}
        comparisons[Path(config).stem] = entry
    return comparisons


QUALITY_SPLITS = ("test", "test_compositional")
QUALITY_TYPES = ("attribute", "spatial", "relational", "motion", "temporal")
QUALITY_METRICS = {"JF": "J&F", "object_accuracy": "object accuracy"}
QUALITY_SEEDS = (0, 1)
QUALITY_BUDGET_S = 600.0
_SPLIT_LABELS = {"test": "test", "test_compositional": "compositional test"}


def _order_types(types) -> list[str]:
    """The five expression types in their usual order, any others sorted, then 'overall'."""
    types = set(types) - {"overall"}
    return ([t for t in QUALITY_TYPES if t in types] + sorted(types - set(QUALITY_TYPES))
            + ["overall"])


def _order_splits(splits) -> list[str]:
    splits = set(splits)
    return [s for s in QUALITY_SPLITS if s in splits] + sorted(splits - set(QUALITY_SPLITS))


def _stats(values: list[float], seeds: list[int]) -> dict:
    """{mean, std (population), min, max} over the finite values (NaN when there are none),
    n (how many were finite), values and seeds as given (NaN kept)."""
    finite = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if finite.size:
        stats = {"mean": float(finite.mean()), "std": float(finite.std()),
                 "min": float(finite.min()), "max": float(finite.max())}
    else:
        stats = {key: math.nan for key in ("mean", "std", "min", "max")}
    return {**stats, "n": int(finite.size),
            "values": [math.nan if v is None else float(v) for v in values], "seeds": list(seeds)}


def aggregate_runs(runs: list[dict]) -> dict:
    """Mean and spread over training seeds.

    runs: dicts ``{"config": name, "seed": k, "results": {split: summary}}`` where a summary
    is ``EvalResult.summary()`` (``overall`` and ``by_type[type]`` with ``JF`` and
    ``object_accuracy``). Returns ``{config: {split: {type: {metric: stats}}}}`` with metric
    ``JF`` and ``object_accuracy``, types in the order attribute, spatial, relational, motion,
    temporal (those present), others, ``overall``; stats are ``{mean, std, min, max, n,
    values, seeds}``: population std, min and max over the seeds whose value is finite (a NaN
    object accuracy, e.g. no distractor annotated, is left out; all NaN gives NaN), ``values``
    and ``seeds`` in run order. A type a run lacks counts as missing for that run only.
    Configs and splits keep their first-seen order."""
    grouped: dict[str, dict[str, list[tuple[int, dict]]]] = {}
    for run in runs:
        for split, summary in run["results"].items():
            grouped.setdefault(run["config"], {}).setdefault(split, []).append((run["seed"], summary))
    aggregate: dict[str, dict] = {}
    for config, splits in grouped.items():
        aggregate[config] = {}
        for split, seeded in splits.items():
            types = _order_types(t for _, s in seeded for t in s.get("by_type", {}))
            table = {}
            for t in types:
                entries = [(seed, s["overall"] if t == "overall" else s.get("by_type", {}).get(t))
                           for seed, s in seeded]
                entries = [(seed, e) for seed, e in entries if e is not None]
                table[t] = {metric: _stats([e.get(metric, math.nan) for _, e in entries],
                                           [seed for seed, _ in entries])
                            for metric in QUALITY_METRICS}
            aggregate[config][split] = table
    return aggregate


def _cell(stats: dict | None) -> str:
    if stats is None:
        return "-"
    if not stats["n"]:
        return "n/a"
    return f"{stats['mean']:.3f} ± {stats['std']:.3f}"


def format_quality_aggregate(aggregate: dict) -> str:
    """The aggregate of ``aggregate_runs`` as text: one block per metric (J&F, object
    accuracy), one row per expression type, one "mean ± std" column per (config, split)
    ("-": the type is absent there, "n/a": no finite value)."""
    columns = [(config, split) for config, splits in aggregate.items() for split in _order_splits(splits)]
    types = _order_types(t for c, s in columns for t in aggregate[c][s])
    labels = [f"{c}/{'comp' if s == 'test_compositional' else s}" for c, s in columns]
    width = max([15, *(len(label) + 2 for label in labels)])
    seeds = sorted({seed for c, s in columns for t in aggregate[c][s].values() for seed in t["JF"]["seeds"]})
    lines = []
    for metric, title in QUALITY_METRICS.items():
        if lines:
            lines.append("")
        lines.append(f"{title}, mean ± std over seeds {', '.join(map(str, seeds))}")
        header = f"{'type':<14}" + "".join(f"{label:>{width}}" for label in labels)
        lines += [header, "-" * len(header)]
        for t in types:
            lines.append(f"{t:<14}" + "".join(
                f"{_cell(aggregate[c][s].get(t, {}).get(metric)):>{width}}" for c, s in columns))
    return "\n".join(lines)


def plot_quality(aggregate: dict, png_path: Path, error: str = "minmax", title: str | None = None) -> Path:
    """Grouped bar chart of ``aggregate_runs``'s result written to ``png_path`` (PNG): top row
    J&F, bottom row object accuracy, one panel per split (test, compositional test), one group
    of bars per expression type (and overall), one bar per config at the mean over seeds with
    error bars from min to max (``error="minmax"``) or ± the std (``error="std"``). Types
    without a finite value get no bar. Uses matplotlib's Agg canvas directly (the global
    backend is left alone). Returns ``png_path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if error not in ("minmax", "std"):
        raise ValueError(f"error must be 'minmax' or 'std', not {error!r}")
    png_path = Path(png_path)
    configs = list(aggregate)
    splits = _order_splits(s for c in configs for s in aggregate[c]) or list(QUALITY_SPLITS)
    types = _order_types(t for c in configs for s in aggregate[c].values() for t in s)
    figure = Figure(figsize=(max(6.0, 0.45 * len(types) * max(1, len(configs)) + 2.5) * len(splits),
                             8.0), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(QUALITY_METRICS), len(splits), squeeze=False)
    x = np.arange(len(types))
    width = 0.8 / max(1, len(configs))
    for row, (metric, metric_label) in enumerate(QUALITY_METRICS.items()):
        for col, split in enumerate(splits):
            ax = axes[row][col]
            for k, config in enumerate(configs):
                stats = [aggregate[config].get(split, {}).get(t, {}).get(metric) for t in types]
                offset = (k - (len(configs) - 1) / 2) * width
                keep = [i for i, st in enumerate(stats) if st is not None and st["n"]]
                for i, st in enumerate(stats):
                    if st is not None and not st["n"]:
                        ax.text(x[i] + offset, 0.01, "n/a", rotation=90, fontsize="x-small",
                                ha="center", va="bottom", color="grey")
                if not keep:
                    ax.bar([], [], width, label=config, color=f"C{k % 10}")
                    continue
                mean = np.array([stats[i]["mean"] for i in keep])
                if error == "minmax":
                    yerr = np.array([[stats[i]["mean"] - stats[i]["min"] for i in keep],
                                     [stats[i]["max"] - stats[i]["mean"] for i in keep]])
                else:
                    yerr = np.array([stats[i]["std"] for i in keep])
                ax.bar(x[keep] + offset, mean, width, yerr=yerr,
                       capsize=3, label=config, color=f"C{k % 10}",
                       error_kw={"elinewidth": 1, "ecolor": "black"})
            ax.set_xticks(x, types, rotation=20)
            ax.set_xlim(-0.5, len(types) - 0.5)
            ax.set_ylim(0, 1.05)
            ax.set_ylabel(metric_label)
            ax.set_title(f"{metric_label}, {_SPLIT_LABELS.get(split, split)}")
            ax.grid(axis="y", alpha=0.3)
            if len(types) > 1:
                ax.axvline(len(types) - 1.5, color="grey", linewidth=0.8, linestyle=":")
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncols=min(len(configs), 4) or 1)
    bars = "min..max" if error == "minmax" else "± std"
    figure.suptitle(title or f"mean over training seeds, error bars {bars}")
    png_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = png_path.with_name(f".{png_path.name}.partial-{os.getpid()}")
    figure.savefig(tmp, format="png", dpi=100)
    os.replace(tmp, png_path)
    return png_path


def machine_info(device: str = "auto") -> dict:
    info = {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "device": str(resolve_device(device))}
    if info["device"].startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(resolve_device(device))
    return info


def check_bench_configs(configs: list[str | Path]) -> list[Path]:
    """The configs of a benchmark that trains each (files or packaged names,
    :func:`rvos.config.resolve_config`): existing files with distinct names (run folders are
    named after them); RVOSError otherwise."""
    configs = [resolve_config(c) for c in configs]
    stems = [c.stem for c in configs]
    if len(set(stems)) != len(stems):
        raise RVOSError(f"configs must have distinct file names (run folders are named after "
                        f"them): {', '.join(map(str, configs))}")
    return configs


def quality_benchmark(out: Path, budget_s: float = QUALITY_BUDGET_S, configs: list[Path] | None = None,
                      progress: bool = False, seeds: list[int] | tuple[int, ...] = QUALITY_SEEDS,
                      device: str = "auto", error: str = "minmax", overwrite: bool = False,
                      train_videos: int = 0, eval_samples: int = 0) -> dict:
    """The standard comparison: the demo pipeline (data, time budget) for each config once
    per training seed (``train.seed=k``) on ONE shared synthetic benchmark, scored per
    expression type on test and test_compositional.

    Runs go to ``<out>/quality/<config stem>/seed<k>/`` (each with its ``summary.json``); the
    data to ``<out>/quality/data``. Writes ``<out>/quality.json`` (after every run, so an
    interrupted benchmark keeps what it finished; ``complete`` tells) and, at the end,
    ``<out>/quality.png`` (``plot_quality``). Returns what quality.json holds: budget_s,
    seeds, configs ({stem: path}), data_s, synthetic, machine, runs (every run's summary of
    ``train_evaluate_predict`` with ``config`` = the stem, ``config_path`` and ``seed``),
    aggregate (``aggregate_runs``), total_s, complete, and the paths json and png.

    Every run reads its frozen-backbone features from one cache, ``<out>/quality/feature_cache``
    (keyed by data, backbone and transform, so runs of different backbones keep apart), built
    before the first run: no run's time budget pays for it (``cache_s`` in quality.json).
    ``train_videos`` > 0 generates that many training videos instead of the demo's, and
    ``eval_samples`` > 0 scores only the first that many expressions of each split: for
    quick comparisons of slow models, said in quality.json.

    ``<out>/quality`` is written in place and marked; earlier quality results (the folder,
    quality.json, quality.png) are replaced only with ``overwrite`` and only if rvos made
    them: they are moved aside at the start and removed once the first new run is done
    (restored if the benchmark stops before)."""
    from rvos.demo import DEMO_CONFIG
    from rvos.outputs_dir import InPlaceOutput, results_folder, write_file_atomic

    configs = check_bench_configs(configs or [DEMO_CONFIG])
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise RVOSError(f"--seeds must be distinct training seeds, got {seeds}")
    if budget_s <= 0:
        raise RVOSError(f"the training budget must be positive, got {budget_s} s")
    out = Path(out)
    root = out / "quality"
    json_path, png_path = out / "quality.json", out / "quality.png"
    logger.info(f"quality benchmark: {len(configs)} config(s) x {len(seeds)} seed(s), "
                f"{budget_s:.0f} s training each (about {len(configs) * len(seeds) * budget_s / 60:.0f} "
                "min of training, plus data and evaluation)")
    results_folder(out, ["quality", "quality.json", "quality.png"], overwrite, "bench")
    output = InPlaceOutput(root, "bench quality", overwrite=overwrite,
                           started_when="*/seed*/summary.json",
                           companions=("quality.json", "quality.png"))
    with output:
        result, start = _quality_runs(out, root, configs, seeds, budget_s, progress, device, output,
                                      train_videos, eval_samples)
        result["complete"] = True
        result["total_s"] = time.monotonic() - start
        plots = optional_module("matplotlib", "no quality.png") is not None
        if not plots:
            result["png"] = None
        write_file_atomic(json_path, json.dumps(result, indent=1))
        if plots:
            plot_quality(result["aggregate"], png_path, error,
                         title=f"{len(seeds)} training seed(s) ({', '.join(map(str, seeds))}), "
                               f"{budget_s:.0f} s budget each; error bars "
                               f"{'min..max' if error == 'minmax' else '± std'}")
    return result


def _quality_runs(out: Path, root: Path, configs: list[Path], seeds: list[int], budget_s: float,
                  progress: bool, device: str, output, train_videos: int = 0,
                  eval_samples: int = 0) -> tuple[dict, float]:
    """The data and every (seed, config) run of :func:`quality_benchmark` into ``root``;
    quality.json after every run. Returns the result and its start (time.monotonic)."""
    from rvos.demo import DEMO_SYNTH, generate_demo_data, train_evaluate_predict
    from rvos.outputs_dir import write_file_atomic

    json_path, png_path = out / "quality.json", out / "quality.png"
    start = time.monotonic()
    data_s = generate_demo_data(root / "data", progress, train_videos)
    result = {"budget_s": budget_s, "seeds": seeds,
              "configs": {c.stem: str(c) for c in configs}, "data_s": data_s,
              "synthetic": {**DEMO_SYNTH, **({"train_videos": train_videos} if train_videos else {})},
              "eval_samples": eval_samples, "machine": machine_info(device), "runs": [],
              "aggregate": {}, "total_s": 0.0, "complete": False,
              "json": str(json_path), "png": str(png_path)}
    overrides_device = [] if device == "auto" else [f"train.device={device}"]
    cache = root / "feature_cache"
    shared_cache = [f"train.grounding.cache_dir={cache}", f"train.cache.cache_dir={cache}"]
    t = time.monotonic()
    for config in configs:
        warm_feature_cache(root / "data", config, root / config.stem, progress,
                           [*shared_cache, *overrides_device])
    result["cache_s"] = time.monotonic() - t
    for seed in seeds:
        for config in configs:
            logger.info(f"== {config.stem}, seed {seed} ==")
            run_dir = root / config.stem / f"seed{seed}"
            summary = train_evaluate_predict(run_dir, root / "data", config, budget_s, progress,
                                             [f"train.seed={seed}", *shared_cache, *overrides_device],
                                             eval_samples)
            run = {**summary, "config": config.stem, "config_path": summary["config"], "seed": seed}
            write_file_atomic(run_dir / "summary.json", json.dumps(run, indent=1))
            result["runs"].append(run)
            result["aggregate"] = aggregate_runs(result["runs"])
            result["total_s"] = time.monotonic() - start
            write_file_atomic(json_path, json.dumps(result, indent=1))
            output.started()            # the earlier results are no longer needed
        logger.info(format_quality_table({"budget_s": budget_s, "runs": {
            r["config"]: r for r in result["runs"] if r["seed"] == seed}}))
    return result, start


def warm_feature_cache(data_root: Path, config: Path, run_dir: Path, progress: bool,
                       overrides: list[str]) -> None:
    """Build (or open) the feature cache that ``config``'s trainer reads, where it reads one
    (the frozen-feature trainers); writes nothing but the cache."""
    from rvos.demo import demo_config
    from rvos.engine import make_trainer

    cfg = demo_config(data_root, run_dir, 1.0, config, overrides)
    if cfg.model.kind == "grounding" or cfg.train.feature_cache:
        make_trainer(cfg, run_dir, progress=progress).open_cache()


def format_quality_table(result: dict) -> str:
    """One seed's side-by-side J&F table: one row per type, one column per (model, split).
    ``result``: ``{"budget_s": s, "runs": {name: run}}`` with each run as returned by
    ``train_evaluate_predict`` (results per split, steps, timings)."""
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
    from rvos.outputs_dir import os_error, results_folder, write_file_atomic

    overwrite = bool(getattr(args, "overwrite", False))
    names = (["baseline_speed.json"] if "speed" in args.what else []) + (
        ["quality", "quality.json", "quality.png"] if "quality" in args.what else []) + (
        ["query_speed.json"] if "query_speed" in args.what else []) + (
        ["fewshot", "fewshot.json"] if "fewshot" in args.what else [])
    out = results_folder(Path(args.out), names, overwrite, "bench")
    if "speed" in args.what:
        result = speed_benchmark(args.device)
        try:
            write_file_atomic(out / "baseline_speed.json", json.dumps(result, indent=1))
        except OSError as e:
            raise os_error(e, out / "baseline_speed.json") from None
        print(f"wrote {out / 'baseline_speed.json'}")
    if "query_speed" in args.what:
        result = query_speed_benchmark(
            out, [Path(c) for c in args.config] if args.config else None, args.device,
            getattr(args, "size", None) or QUERY_SPEED_SIZE,
            getattr(args, "frames", None) or QUERY_SPEED_FRAMES, getattr(args, "repeats", None),
            overwrite=overwrite)
        print(format_query_speed(result))
        print(f"wrote {result['json']}")
    if "quality" in args.what:
        configs = [Path(c) for c in args.config] if args.config else None
        result = quality_benchmark(out, args.budget_s or QUALITY_BUDGET_S, configs, progress=not args.quiet,
                                   seeds=args.seeds, device=args.device, error=args.error_bars,
                                   overwrite=overwrite, train_videos=args.train_videos,
                                   eval_samples=args.eval_samples)
        print()
        print(format_quality_aggregate(result["aggregate"]))
        print(f"training budget {result['budget_s']:.0f} s per run; total {result['total_s'] / 60:.1f} min")
        print(f"wrote {result['json']}" + (f" and {result['png']}" if result["png"] else ""))
    if "fewshot" in args.what:
        from rvos.bench_fewshot import (FEWSHOT_VIDEOS_PER_CATEGORY, fewshot_benchmark,
                                        format_fewshot_aggregate)

        configs = check_bench_configs(args.config or ["fewshot_baseline_synth", "cma_synth"])
        result = fewshot_benchmark(out, configs, args.folds, args.seeds, args.shots,
                                   args.budget_s,
                                   args.train_videos or FEWSHOT_VIDEOS_PER_CATEGORY, args.device,
                                   progress=not args.quiet, overwrite=overwrite)
        print()
        print(format_fewshot_aggregate(result["aggregate"], configs[0].stem))
        print(f"total {result['total_s'] / 60:.1f} min")
        print(f"wrote {result['json']}")
