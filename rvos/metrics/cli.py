"""``rvos evaluate --benchmark ...``: score prediction folders with the official protocols.

``add_benchmark_arguments(parser)`` adds the options, ``run_benchmark(args)`` runs one
benchmark, writes ``<out>/<benchmark>.json`` (every number unrounded) and a per-object /
per-expression / per-sample CSV, prints a table and returns the exit code. Bad input raises
RVOSError (the CLI prints its message).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
from pathlib import Path

from rvos.errors import RVOSError
from rvos.metrics.davis import DEFAULT_BOUND_TH

logger = logging.getLogger(__name__)

BENCHMARKS = ("davis-semi", "davis-unsup", "ref-davis", "ref-ytvos", "a2d", "jhmdb", "mevis")


def add_benchmark_arguments(parser: argparse.ArgumentParser) -> None:
    """Add --benchmark, --pred, --gt and the per-benchmark options to ``parser``."""
    group = parser.add_argument_group("benchmark scoring of prediction folders (docs/metrics.md)")
    group.add_argument("--benchmark", choices=BENCHMARKS, default=None,
                       help="official protocol to score --pred against --gt")
    group.add_argument("--pred", help="predictions: folder of PNGs (DAVIS, Ref-DAVIS, Ref-YouTube-VOS, "
                                      "MeViS) or COCO results JSON (A2D, JHMDB)")
    group.add_argument("--gt", help="ground truth: annotation folder (DAVIS, Ref-DAVIS), folder with "
                                    "meta_expressions.json + mask_dict.json (MeViS), COCO JSON (A2D, "
                                    "JHMDB), meta_expressions.json (Ref-YouTube-VOS)")
    group.add_argument("--meta", help="meta_expressions.json (Ref-DAVIS per-expression predictions; "
                                      "MeViS / Ref-YouTube-VOS when not under --gt)")
    group.add_argument("--mask-dict", help="MeViS mask_dict.json (default: <gt>/mask_dict.json)")
    group.add_argument("--sequences", help="DAVIS sequence list, e.g. ImageSets/2017/val.txt "
                                           "(default: every sequence folder of --gt)")
    group.add_argument("--bound-th", type=float, default=DEFAULT_BOUND_TH,
                       help="F tolerance: fraction of the image diagonal (<1) or pixels (>=1)")
    group.add_argument("--strict-ids", action="store_true",
                       help="Ref-DAVIS: also score with fixed ids, no matching (diagnostic)")
    group.add_argument("--zip", help="Ref-YouTube-VOS: submission zip to write (with --benchmark: any path, default <out>/submission.zip; with --checkpoint: a file name inside --out)")
    group.add_argument("--frame-sizes", help='Ref-YouTube-VOS: JSON {video: [H, W]} to check mask sizes')
    if not any("--out" in action.option_strings for action in parser._actions):
        group.add_argument("--out", default="eval", help="folder for the JSON and CSV results")


# ----------------------------------------------------------------------------- output


def _clean(value):
    """JSON-safe copy: NaN/inf become null, numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(_clean(data), indent=2))  # repr floats: unrounded
    tmp.replace(path)
    return path


def write_csv(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(rows[0].keys()) if rows else []
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: repr(v) if isinstance(v, float) else v for k, v in row.items()})
    return path


def format_table(title: str, rows: list[tuple[str, dict[str, float]]]) -> str:
    """Rows of named metric dicts as an aligned table (3 decimals; files keep full precision)."""
    keys = list(dict.fromkeys(k for _, d in rows for k in d))
    width = max([len(name) for name, _ in rows] + [len(title)]) + 2
    header = f"{title:<{width}}" + "".join(f"{k:>15}" for k in keys)
    lines = [header, "-" * len(header)]
    for name, d in rows:
        cells = "".join(f"{d[k]:>15.3f}" if isinstance(d.get(k), (int, float)) and d.get(k) is not None
                        else f"{'-':>15}" for k in keys)
        lines.append(f"{name:<{width}}{cells}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- runners


def _require(args, *names):
    missing = [f"--{n.replace('_', '-')}" for n in names if not getattr(args, n, None)]
    if missing:
        raise RVOSError(f"--benchmark {args.benchmark} needs {' and '.join(missing)}")


def _sequences(args):
    from rvos.metrics.davis_protocols import list_sequences

    return list_sequences(args.gt, args.sequences) if args.sequences else None


def _run_davis(args, out: Path) -> tuple[dict, list[dict], str]:
    from rvos.metrics.consistency import mask_consistency_score
    from rvos.metrics.davis_protocols import evaluate_davis

    task = "semi-supervised" if args.benchmark == "davis-semi" else "unsupervised"
    result = evaluate_davis(args.gt, args.pred, task, _sequences(args), args.bound_th)
    summary = result.summary()
    report = {"benchmark": args.benchmark, "task": task, "global": summary,
              "num_objects": len(result.objects),
              "consistency": {"MCS@0.9": mask_consistency_score(o.j for o in result.objects)},
              "warnings": result.warnings}
    table = format_table(f"DAVIS-2017 {task}", [("global", summary)])
    return report, result.per_object_rows(), table


def _run_ref_davis(args, out: Path) -> tuple[dict, list[dict], str]:
    from rvos.metrics.davis_protocols import EXPRESSION_SET_NAMES, evaluate_ref_davis

    result = evaluate_ref_davis(args.gt, args.pred, args.meta, args.strict_ids, args.bound_th, _sequences(args))
    summary = result.summary()
    rows = []
    for mode, runs in (("unsupervised", result.runs), ("fixed-ids", result.strict_runs)):
        for name, run in runs.items():
            for row in run.per_object_rows():
                rows.append({"mode": mode, "run": name, **row})
    report = {"benchmark": "ref-davis", "expression_sets": dict(zip(summary["runs"], EXPRESSION_SET_NAMES)),
              **summary}
    table_rows = [(f"{name} ({label})", s) for (name, s), label in zip(summary["runs"].items(), EXPRESSION_SET_NAMES)]
    table_rows.append(("mean of the 4 runs", summary["mean_over_runs"]))
    if "strict_fixed_ids" in summary:
        table_rows.append(("strict fixed ids: mean", summary["strict_fixed_ids"]["mean_over_runs"]))
    return report, rows, format_table("Ref-DAVIS17 (unsupervised protocol)", table_rows)


def _run_ref_ytvos(args, out: Path) -> tuple[dict, list[dict], str]:
    from rvos.metrics.davis_protocols import load_meta_expressions
    from rvos.metrics.ref_ytvos import annotations_dir, submission_stats, zip_submission

    meta = args.meta or args.gt
    if not meta:
        raise RVOSError("--benchmark ref-ytvos needs --gt (or --meta) meta_expressions.json")
    _require(args, "pred")
    sizes = None
    if args.frame_sizes:
        path = Path(args.frame_sizes)
        if not path.is_file():
            raise RVOSError("frame-size JSON not found", path)
        try:
            sizes = {v: tuple(hw) for v, hw in json.loads(path.read_text()).items()}
        except (json.JSONDecodeError, TypeError, AttributeError) as e:
            raise RVOSError(f'expected {{video: [H, W]}} ({e})', path) from None
    zip_path = Path(args.zip) if args.zip else out / "submission.zip"
    written = zip_submission(annotations_dir(args.pred), zip_path, meta, sizes)
    stats = submission_stats(load_meta_expressions(meta))
    report = {"benchmark": "ref-ytvos", "zip": str(written), **stats,
              "sizes_checked": sizes is not None}
    table = (f"Ref-YouTube-VOS submission: {stats['videos']} videos, {stats['expressions']} expressions, "
             f"{stats['png_files']} masks checked -> {written}")
    return report, [], table


def _run_a2d(args, out: Path) -> tuple[dict, list[dict], str]:
    from rvos.metrics.a2d import evaluate_a2d

    report = evaluate_a2d(args.gt, args.pred)
    rows = report.pop("rows")
    name = "A2D-Sentences" if args.benchmark == "a2d" else "JHMDB-Sentences"
    table = "\n\n".join([
        format_table(f"{name}: top-1 prediction per sample", [("top-1", report["top1"])]),
        format_table(f"{name}: COCO mAP (useCats=0)", [("all queries", report["map_all_queries"]),
                                                        ("top-1 only", report["map_top1"])]),
    ])
    return {"benchmark": args.benchmark, **report}, rows, table


def _run_mevis(args, out: Path) -> tuple[dict, list[dict], str]:
    from rvos.metrics.mevis import evaluate_mevis, rows_as_dicts

    summary, rows = evaluate_mevis(args.gt, args.pred, args.meta, args.mask_dict, args.bound_th)
    table = format_table("MeViS", [("all expressions", {k: summary[k] for k in ("J&F", "J", "F", "tIoU", "vIoU")})])
    if summary["missing_videos"]:
        table += f"\nvideos without predictions (scored 0): {len(summary['missing_videos'])}"
    return {"benchmark": "mevis", **summary}, rows_as_dicts(rows), table


_RUNNERS = {"davis-semi": _run_davis, "davis-unsup": _run_davis, "ref-davis": _run_ref_davis,
            "ref-ytvos": _run_ref_ytvos, "a2d": _run_a2d, "jhmdb": _run_a2d, "mevis": _run_mevis}
_CSV_NAMES = {"davis-semi": "per_object", "davis-unsup": "per_object", "ref-davis": "per_object",
              "a2d": "per_sample", "jhmdb": "per_sample", "mevis": "per_expression"}


def run_benchmark(args: argparse.Namespace) -> int:
    """Run ``args.benchmark``; write JSON (+ CSV) under ``args.out``; print a table; return 0.

    Raises RVOSError for missing/invalid inputs (missing frames, wrong sizes, wrong ids...).
    """
    if args.benchmark not in _RUNNERS:
        raise RVOSError(f"unknown benchmark {args.benchmark!r}; choose one of {BENCHMARKS}")
    _require(args, "pred") if args.benchmark == "ref-ytvos" else _require(args, "pred", "gt")
    out = Path(getattr(args, "out", None) or "eval")
    report, rows, table = _RUNNERS[args.benchmark](args, out)
    report["inputs"] = {"pred": str(args.pred), "gt": str(args.gt) if args.gt else None,
                        "bound_th": args.bound_th}
    json_path = write_json(out / f"{args.benchmark}.json", report)
    print(table)
    for w in report.get("warnings", []):
        logger.warning(w)
    if args.benchmark in _CSV_NAMES:
        csv_path = write_csv(out / f"{args.benchmark}_{_CSV_NAMES[args.benchmark]}.csv", rows)
        print(f"results: {json_path}  {_CSV_NAMES[args.benchmark].replace('_', '-')}: {csv_path}")
    else:
        print(f"results: {json_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (``python -m rvos.metrics.cli ...``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_benchmark_arguments(parser)
    args = parser.parse_args(argv)
    if not args.benchmark:
        parser.error("--benchmark is required")
    try:
        return run_benchmark(args)
    except RVOSError as e:
        print(f"error: {e}")
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
