"""Score a model on a Ref-YouTube-VOS-layout split that has annotations.

Protocol (the one our synthetic benchmark reports; the official benchmark protocols live in
``rvos.metrics``): for every (video, expression), the model segments every frame of the
video; J (region similarity) and F (boundary F-measure, DAVIS definitions) are averaged over
all frames, J&F = (J + F) / 2 per expression; split figures are means over expressions, per
expression type and overall.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from rvos.data.ytvos import RefYTVOSLayout
from rvos.errors import RVOSError
from rvos.inference import Predictor
from rvos.metrics.davis import jaccard_and_f
from rvos.metrics.ref_ytvos import write_expression_masks
from rvos.outputs_dir import write_file_atomic

if TYPE_CHECKING:
    from rvos.engine.distributed import Shard


@dataclass
class ExpressionScore:
    video: str
    exp_id: str
    exp_type: str
    text: str
    num_frames: int
    J: float
    F: float
    JF: float
    object_hit: float = math.nan


def object_hit(labels: np.ndarray, pred: np.ndarray, referred: list[int],
               present: np.ndarray | None = None) -> float:
    """labels (T, H, W) object ids (0 = background), pred (T, H, W) bool, referred ids ->
    1.0 when the referred object(s) hold more predicted pixels than any other object, 0.0
    when not (an empty prediction included), NaN when no other object is annotated.
    ``present``: ``np.unique(labels)`` when the caller already has it (once per video)."""
    counts = np.bincount(labels[pred].ravel().astype(np.int64), minlength=int(labels.max()) + 1)
    present = np.unique(labels) if present is None else present
    others = [int(o) for o in present if o != 0 and o not in referred]
    if not others:
        return math.nan
    on_referred = sum(int(counts[o]) for o in referred if o < len(counts))
    return float(on_referred > 0 and on_referred > max(int(counts[o]) for o in others))


@dataclass
class EvalResult:
    """Per-expression scores and their aggregates."""

    split: str
    rows: list[ExpressionScore]

    def summary(self) -> dict:
        """{"overall": {J, F, JF, count}, "by_type": {type: {...}}} (unrounded means)."""
        def agg(rows: list[ExpressionScore]) -> dict:
            hits = [r.object_hit for r in rows if not math.isnan(r.object_hit)]
            return {"J": float(np.mean([r.J for r in rows])), "F": float(np.mean([r.F for r in rows])),
                    "JF": float(np.mean([r.JF for r in rows])), "count": len(rows),
                    "object_accuracy": float(np.mean(hits)) if hits else math.nan}

        groups: dict[str, list[ExpressionScore]] = defaultdict(list)
        for r in self.rows:
            groups[r.exp_type or "all"].append(r)
        return {"split": self.split,
                "overall": agg(self.rows) if self.rows else {"J": math.nan, "F": math.nan,
                                                              "JF": math.nan, "count": 0,
                                                              "object_accuracy": math.nan},
                "by_type": {k: agg(v) for k, v in sorted(groups.items())}}

    @property
    def jf(self) -> float:
        return self.summary()["overall"]["JF"]


def format_table(summaries: list[dict]) -> str:
    """A readable table: one row per expression type, one J&F column per split (with J, F
    and the object accuracy, "obj", where it was measured)."""
    types = sorted({t for s in summaries for t in s["by_type"]})
    width = 42
    header = f"{'expression type':<16}" + "".join(f"{s['split']:>{width}}" for s in summaries)
    lines = [header, "-" * len(header)]
    for t in types + ["overall"]:
        cells = []
        for s in summaries:
            d = s["overall"] if t == "overall" else s["by_type"].get(t)
            if d is None:
                cells.append(f"{'-':>{width}}")
                continue
            text = "J&F %.3f (J %.3f F %.3f)" % (d["JF"], d["J"], d["F"])
            if not math.isnan(d.get("object_accuracy", math.nan)):
                text += " obj %.2f" % d["object_accuracy"]
            cells.append(f"{text:>{width}}")
        lines.append(f"{t:<16}" + "".join(cells))
    return "\n".join(lines)


def evaluate_layout(predictor: Predictor, layout: RefYTVOSLayout, threshold: float = 0.5,
                    max_samples: int = 0, masks_out: Path | None = None,
                    progress: bool = True, shard: Shard | None = None) -> EvalResult:
    """Segment every (video, expression) of ``layout`` and score it.

    max_samples > 0 evaluates only the first that many expressions (in sorted order).
    masks_out, when given, receives the masks in the Ref-YouTube-VOS submission layout
    ``Annotations/<video>/<exp_id>/<frame>.png`` (0/255 PNGs, as submitted to the server).
    ``shard`` (under torchrun, every rank calls it): this rank segments every
    ``shard.world``-th video, and the rows of all ranks are gathered, in the order one
    process gives, so every rank returns the single-process result.
    """
    if not layout.has_annotations:
        raise RVOSError(f"split {layout.split!r} has no Annotations folder to score against",
                        layout.root)
    samples = layout.samples()
    if max_samples > 0:
        samples = samples[:max_samples]
    by_video: dict[str, list[str]] = defaultdict(list)
    for video, exp_id in samples:
        by_video[video].append(exp_id)
    videos = list(by_video)
    mine = videos if shard is None else shard.take(videos)

    rows: dict[str, list[ExpressionScore]] = {}
    bar = tqdm(total=sum(len(by_video[v]) for v in mine), desc=f"evaluate {layout.split}",
               unit="exp", disable=not progress, leave=False)
    error = None
    try:
        for video in mine:
            rows[video] = _score_video(predictor, layout, video, by_video[video], threshold,
                                       masks_out)
            bar.update(len(by_video[video]))
    except RVOSError as e:
        if shard is None or shard.world == 1:
            raise
        error = e                   # the other ranks must learn of it, not wait for ever
    finally:
        bar.close()
    if shard is not None and shard.world > 1:
        rows = _merge_shards(rows, error)
    return EvalResult(layout.split, [r for video in videos for r in rows[video]])


def _merge_shards(rows: dict[str, list[ExpressionScore]],
                  error: RVOSError | None) -> dict[str, list[ExpressionScore]]:
    """Every rank's rows (by video), gathered on every rank; an RVOSError met by any rank
    raised on all."""
    from rvos.engine.distributed import ReportedByRankZero, gather_objects

    gathered = gather_objects((rows, None if error is None else str(error)))
    if error is not None:
        raise error
    for rank, (_, message) in enumerate(gathered):
        if message is not None:
            raise ReportedByRankZero(f"rank {rank} failed: {message}")
    return {video: r for part, _ in gathered for video, r in part.items()}


def _score_video(predictor: Predictor, layout: RefYTVOSLayout, video: str, exp_ids: list[str],
                 threshold: float, masks_out: Path | None) -> list[ExpressionScore]:
    """Segment the expressions ``exp_ids`` of ``video`` together (one backbone pass per
    window) and score each."""
    record = layout.videos[video]
    expressions = [record.expressions[e] for e in exp_ids]
    labels = layout.load_label_maps(video, record.frames)               # (T, H, W)
    present = np.unique(labels)
    frames = ((name, layout.load_frames(video, [name])[0]) for name in record.frames)
    pred = np.stack([p.masks(threshold) for p in
                     predictor.predict(frames, [e.text for e in expressions])])  # (T,K,H,W)
    rows = []
    for k, expression in enumerate(expressions):
        gt = layout.referred_mask(labels, expression.obj_ids)
        j, f = jaccard_and_f(gt, pred[:, k])
        rows.append(ExpressionScore(video, expression.exp_id, expression.exp_type,
                                    expression.text, len(record.frames), float(np.mean(j)),
                                    float(np.mean(f)), float((np.mean(j) + np.mean(f)) / 2),
                                    object_hit(labels, pred[:, k], expression.obj_ids, present)))
        if masks_out is not None:
            write_expression_masks(Path(masks_out) / "Annotations", video, expression.exp_id,
                                   record.frames, pred[:, k],
                                   source=layout.meta_expressions_path)
    return rows


def write_results(results: list[EvalResult], out_dir: Path) -> dict[str, Path]:
    """metrics.json (unrounded), per_expression.csv, results.txt (the table), each written
    atomically into ``out_dir``. Callers give a staged folder (:func:`rvos.outputs_dir.staged_output`)
    so that earlier results are replaced only as a whole, and only with --overwrite."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summaries = [r.summary() for r in results]
    paths = {"json": out_dir / "metrics.json", "csv": out_dir / "per_expression.csv",
             "table": out_dir / "results.txt"}
    rows = io.StringIO(newline="")
    writer = csv.DictWriter(rows, fieldnames=["split", *ExpressionScore.__dataclass_fields__])
    writer.writeheader()
    for r in results:
        for row in r.rows:
            writer.writerow({"split": r.split, **asdict(row)})
    write_file_atomic(paths["csv"], rows.getvalue())
    write_file_atomic(paths["table"], format_table(summaries) + "\n")
    # last: metrics.json is what tells that the results are there
    write_file_atomic(paths["json"], json.dumps({s["split"]: s for s in summaries}, indent=1))
    return paths
