"""The few-shot benchmark: each config trained on every fold's base categories with every
seed on one shared few-shot synthetic split, scored on the fold's novel categories at each
shot count; the per-fold table and the margin of each config over the first (the
reference, e.g. the support-ignoring baseline).

Layout of ``<out>``: ``fewshot/data`` (the split), ``fewshot/feature_cache`` (one frozen
feature cache every run reads, built before the first run so no budget pays for it),
``fewshot/<config stem>/fold<f>/seed<k>/`` (each run with its ``summary.json``),
``fewshot.json`` (written after every run; ``complete`` tells whether all ran).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from rvos.errors import RVOSError

logger = logging.getLogger(__name__)

FEWSHOT_VIDEOS_PER_CATEGORY = 40
METRICS = ("JF", "J", "F", "object_accuracy")


def _stats(values: list[float]) -> dict:
    v = np.asarray(values, dtype=float)
    return {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()),
            "max": float(v.max()), "n": len(v)}


def aggregate_fewshot(runs: list[dict]) -> dict:
    """runs (each {config, fold, seed, results: [{shots, overall: {...}}]}) ->
    {config: {shots: {"folds": {fold: {metric: stats over seeds}},
    "mean_over_folds": {metric: stats over seeds of the mean over folds}}}}; the mean over
    folds is taken per seed, over the folds that seed has."""
    table: dict = {}
    for r in runs:
        for res in r["results"]:
            cell = table.setdefault(r["config"], {}).setdefault(str(res["shots"]), {})
            cell.setdefault(r["fold"], {}).setdefault(r["seed"], res["overall"])
    out: dict = {}
    for config, by_shots in table.items():
        for shots, by_fold in by_shots.items():
            seeds = sorted({s for per_seed in by_fold.values() for s in per_seed})
            folds = {str(f): {m: _stats([per_seed[s][m] for s in sorted(per_seed)]) for m in METRICS}
                     for f, per_seed in sorted(by_fold.items())}
            means = {m: _stats([float(np.mean([by_fold[f][s][m] for f in by_fold if s in by_fold[f]]))
                                for s in seeds]) for m in METRICS}
            out.setdefault(config, {})[shots] = {"folds": folds, "mean_over_folds": means,
                                                 "seeds": seeds}
    return out


def margins(aggregate: dict, reference: str) -> dict:
    """Per config other than ``reference`` and shot count: its mean-over-folds J&F minus the
    reference's, per seed both have (stats over seeds), and whether it exceeds the seed
    spread (the larger of the two configs' max - min)."""
    out = {}
    ref = aggregate.get(reference, {})
    for config, by_shots in aggregate.items():
        if config == reference:
            continue
        for shots, cell in by_shots.items():
            if shots not in ref:
                continue
            a, b = cell["mean_over_folds"]["JF"], ref[shots]["mean_over_folds"]["JF"]
            spread = max(a["max"] - a["min"], b["max"] - b["min"])
            out.setdefault(config, {})[shots] = {"JF_margin": a["mean"] - b["mean"],
                                                 "seed_spread": spread,
                                                 "beyond_spread": a["mean"] - b["mean"] > spread}
    return out


def format_fewshot_aggregate(aggregate: dict, reference: str | None = None) -> str:
    """Rows: config x shots; columns: each fold's J&F and the mean over folds (mean ± std
    over seeds), then object accuracy and the margin over the reference."""
    folds = sorted({f for by_shots in aggregate.values() for cell in by_shots.values()
                    for f in cell["folds"]}, key=int)
    head = f"{'config':<30}{'shots':>6}" + "".join(f"{'fold ' + f:>15}" for f in folds)
    head += f"{'mean J&F':>15}{'mean J':>8}{'mean F':>8}{'obj':>7}"
    if reference:
        head += f"{'vs ' + reference[:14]:>20}"
    lines = [head, "-" * len(head)]
    gaps = margins(aggregate, reference) if reference else {}
    for config, by_shots in aggregate.items():
        for shots, cell in sorted(by_shots.items(), key=lambda kv: int(kv[0])):
            row = f"{config:<30}{shots:>6}"
            for f in folds:
                s = cell["folds"].get(f, {}).get("JF")
                row += f"{'-':>15}" if s is None else f"{s['mean']:>9.3f}±{s['std']:.3f}"
            m = cell["mean_over_folds"]
            row += (f"{m['JF']['mean']:>9.3f}±{m['JF']['std']:.3f}{m['J']['mean']:>8.3f}"
                    f"{m['F']['mean']:>8.3f}{m['object_accuracy']['mean']:>7.2f}")
            gap = gaps.get(config, {}).get(shots)
            if gap is not None:
                row += f"{gap['JF_margin']:>+14.3f} ({'>' if gap['beyond_spread'] else '<='} spread)"
            lines.append(row)
    return "\n".join(lines)


def fewshot_benchmark(out: Path, configs: list[Path], folds: list[int], seeds: list[int],
                      shots: list[int], budget_s: float | None = None,
                      videos_per_category: int = FEWSHOT_VIDEOS_PER_CATEGORY,
                      device: str = "auto", progress: bool = False, overwrite: bool = False) -> dict:
    """Train every config on every fold with every seed (within the configs' own step
    counts, or ``train.time_budget_s=budget_s`` when given: the step-bounded default keeps a
    fold's runs on bit-identical segmenters) and score it at every shot count; returns (and
    writes to ``<out>/fewshot.json``) budget_s, folds, seeds, shots, configs, data, machine,
    runs, aggregate (:func:`aggregate_fewshot`), margins over the first config, total_s,
    complete."""
    from rvos.bench import check_bench_configs, machine_info
    from rvos.outputs_dir import InPlaceOutput, results_folder, write_file_atomic

    configs = check_bench_configs(configs)
    for name, values in (("--seeds", seeds), ("--folds", folds), ("--shots", shots)):
        if not values or len(set(values)) != len(values):
            raise RVOSError(f"{name} must be distinct values, got {values}")
    if budget_s is not None and budget_s <= 0:
        raise RVOSError(f"the training budget must be positive, got {budget_s} s")
    out = Path(out)
    root = out / "fewshot"
    json_path = out / "fewshot.json"
    bound = ("the configs' step counts" if budget_s is None else f"{budget_s:.0f} s training each")
    logger.info(f"few-shot benchmark: {len(configs)} config(s) x {len(folds)} fold(s) x "
                f"{len(seeds)} seed(s), {bound}")
    results_folder(out, ["fewshot", "fewshot.json"], overwrite, "bench")
    output = InPlaceOutput(root, "bench fewshot", overwrite=overwrite,
                           started_when="*/fold*/seed*/summary.json", companions=("fewshot.json",))
    with output:
        result = _runs(root, json_path, configs, folds, seeds, shots, budget_s,
                       videos_per_category, device, progress, output, machine_info(device))
        result["complete"] = True
        write_file_atomic(json_path, json.dumps(result, indent=1))
    return result


def _runs(root: Path, json_path: Path, configs: list[Path], folds: list[int], seeds: list[int],
          shots: list[int], budget_s: float | None, videos_per_category: int, device: str,
          progress: bool, output, machine: dict) -> dict:
    from rvos.config import load_config
    from rvos.data.synthetic import SynthConfig, generate_fewshot_benchmark
    from rvos.engine.fewshot_evaluator import VideoMemo, evaluate_fold
    from rvos.engine.fewshot_trainer import FewShotTrainer
    from rvos.outputs_dir import write_file_atomic

    start = time.monotonic()
    data = root / "data"
    generate_fewshot_benchmark(data, SynthConfig(), videos_per_category, progress=progress)
    cache = root / "feature_cache"
    common = ([f"data.root={data}", f"train.grounding.cache_dir={cache}"]
              + ([] if budget_s is None else [f"train.time_budget_s={budget_s}"])
              + ([] if device == "auto" else [f"train.device={device}"]))
    result = {"budget_s": budget_s, "folds": folds, "seeds": seeds, "shots": shots,
              "configs": {c.stem: str(c) for c in configs},
              "data": {"videos_per_category": videos_per_category, "data_s": time.monotonic() - start},
              "machine": machine, "runs": [], "aggregate": {}, "margins": {}, "total_s": 0.0,
              "complete": False, "json": str(json_path)}
    t = time.monotonic()
    for config in configs:          # one cache for all: built before any budget runs
        FewShotTrainer(load_config(config, common), root / config.stem, progress).open_cache()
    result["cache_s"] = time.monotonic() - t
    for seed in seeds:
        for fold in folds:
            for config in configs:
                logger.info(f"== {config.stem}, fold {fold}, seed {seed} ==")
                run_dir = root / config.stem / f"fold{fold}" / f"seed{seed}"
                cfg = load_config(config, [*common, f"data.fewshot.fold={fold}", f"train.seed={seed}"])
                t = time.monotonic()
                trainer = FewShotTrainer(cfg, run_dir, progress)
                state = trainer.fit()
                train_s = time.monotonic() - t
                t = time.monotonic()
                memo = VideoMemo(trainer.model.eval(), trainer.layout, cfg.data.input_size,
                                 trainer.device)

                def evaluate(k: int, support: str = "same") -> dict:
                    return evaluate_fold(trainer.model, trainer.layout, fold, k,
                                         cfg.data.fewshot.eval_draws, cfg.data.fewshot.eval_seed,
                                         cfg.data.input_size, trainer.device, progress, support, memo)

                results = [evaluate(k) for k in shots]
                # does the model read its support? the most shots with another category's
                other = evaluate(max(shots), "other") if trainer.model.affinity is not None else None
                run = {"config": config.stem, "config_path": str(config), "fold": fold,
                       "seed": seed, "train_s": train_s, "eval_s": time.monotonic() - t,
                       "steps": state.global_step, "presentations": state.presentations,
                       "timings": state.timings, "results": results,
                       "other_category_support": other}
                write_file_atomic(run_dir / "summary.json", json.dumps(run, indent=1))
                result["runs"].append(run)
                result["aggregate"] = aggregate_fewshot(result["runs"])
                result["margins"] = margins(result["aggregate"], configs[0].stem)
                result["total_s"] = time.monotonic() - start
                write_file_atomic(json_path, json.dumps(result, indent=1))
                output.started()
                logger.info(" ".join(f"{k}-shot J&F {r['overall']['JF']:.3f}"
                                     for k, r in zip(shots, results)))
    return result
