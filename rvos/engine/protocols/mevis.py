"""MeViS: ``rvos evaluate --checkpoint C --dataset mevis --data ROOT --split valid_u|valid``.

Every expression of the split is segmented in every frame listed for its video in
``meta_expressions.json`` (the expressions of a video share one pass of the model).

* A split with ``mask_dict.json`` (``valid_u``, the split the MeViS authors give for offline
  evaluation) is scored as the official ``tools/eval_mevis.py`` scores it: per expression,
  J and F are means over all its frames of the per-frame region similarity and boundary
  F-measure against the union of the referred objects' masks (an empty ground truth and an
  empty prediction score 1); the split's J and F are means over expressions and
  J&F = (J + F) / 2. The per-expression scoring is that of :mod:`rvos.metrics.mevis`
  (the masks are scored as they are predicted, frame by frame, so memory does not grow
  with the video; ``rvos evaluate --benchmark mevis`` on the saved masks gives the same
  figures).
* A split without masks (``valid``, scored by the MeViS evaluation server; one per run) gives
  its submission: ``predictions/<split>/<video>/<exp_id>/<frame>.png`` and ``submission.zip``
  (``--zip NAME``: another name inside the output folder), which holds the video folders at
  its root, as the official ``sample_submission_valid.zip`` does (MeViS ``README.md``:
  "directly packages 140 val video folders"). Masks are single-channel PNGs, 0 background
  and 255 object, as LMPM writes them (``lmpm/evaluation/evaluator.py``). The zip is written
  only after every listed frame of every expression was checked to be there
  (:func:`rvos.metrics.ref_ytvos.validate_submission`), and not at all with --max-samples.

Outputs: ``mevis.json`` ({split: figures or submission}), ``mevis_per_expression.csv``,
``results.txt``, ``predictions/`` (always for a split without masks, with ``--save-masks``
otherwise) and the zip.
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from rvos.config import Config
from rvos.data.mevis import MeViSLayout, first_samples
from rvos.engine.protocols import (SUBMISSION_ZIP, EvaluationRequest, ProtocolReport,
                                   submission_zip_name)
from rvos.errors import RVOSError
from rvos.inference import Predictor
from rvos.metrics.consistency import temporal_iou_from_presence
from rvos.metrics.davis import DEFAULT_BOUND_TH, jaccard_and_f
from rvos.metrics.mevis import ExpressionResult, summarize_results
from rvos.metrics.ref_ytvos import write_expression_masks, zip_submission
from rvos.outputs_dir import write_file_atomic

OUTPUTS = ("mevis.json", "mevis_per_expression.csv", "results.txt", "predictions", SUBMISSION_ZIP)
# the official splits released with their masks: without mask_dict.json they are damaged,
# not server splits to write a submission for
SPLITS_WITH_MASKS = ("train", "valid_u")


@dataclass
class SplitPass:
    """What one pass of the model over a split gave: per-expression scores (empty when the
    split has no masks), the sentences, and each video's frame size (H, W)."""

    rows: list[ExpressionResult]
    texts: dict[tuple[str, str], str]
    frame_sizes: dict[str, tuple[int, int]]


def segment_split(predictor: Predictor, layout: MeViSLayout, samples: list[tuple[str, str]],
                  threshold: float = 0.5, pred_dir: Path | None = None, score: bool = True,
                  bound_th: float = DEFAULT_BOUND_TH, progress: bool = True) -> SplitPass:
    """Segment the (video, exp_id) ``samples`` of ``layout``; with ``pred_dir``, write the
    masks as ``<pred_dir>/<video>/<exp_id>/<frame>.png``; with ``score``, score each
    expression against mask_dict.json."""
    by_video: dict[str, list[str]] = defaultdict(list)
    for video, exp_id in samples:
        by_video[video].append(exp_id)
    result = SplitPass([], {}, {})
    bar = tqdm(total=len(samples), desc=f"MeViS {layout.split}", unit="exp",
               disable=not progress, leave=False)
    for video, exp_ids in by_video.items():
        rows, size = _segment_video(predictor, layout, video, exp_ids, threshold, pred_dir,
                                    score, bound_th)
        result.rows.extend(rows)
        result.frame_sizes[video] = size
        for exp_id in exp_ids:
            result.texts[(video, exp_id)] = layout.videos[video].expressions[exp_id].text
        bar.update(len(exp_ids))
    bar.close()
    return result


def _segment_video(predictor: Predictor, layout: MeViSLayout, video: str, exp_ids: list[str],
                   threshold: float, pred_dir: Path | None, score: bool,
                   bound_th: float) -> tuple[list[ExpressionResult], tuple[int, int]]:
    """One video, its K expressions at once, streamed frame by frame: per-frame J, F
    (K, T) and presence flags are kept, never the (K, T, H, W) masks."""
    record = layout.videos[video]
    texts = [record.expressions[e].text for e in exp_ids]
    anno_ids = [layout.anno_ids(video, e) for e in exp_ids] if score else []
    k, n = len(exp_ids), len(record.frames)
    j, f = np.zeros((k, n)), np.zeros((k, n))
    gt_on, pred_on = np.zeros((k, n), dtype=bool), np.zeros((k, n), dtype=bool)
    frames = ((name, layout.load_frames(video, [name])[0]) for name in record.frames)
    size, seen = (0, 0), 0
    for t, prediction in enumerate(predictor.predict(frames, texts)):
        masks = prediction.masks(threshold)                          # (K, H, W) bool
        size = (int(masks.shape[1]), int(masks.shape[2]))
        if pred_dir is not None:
            for exp_id, mask in zip(exp_ids, masks):
                write_expression_masks(pred_dir, video, exp_id, [prediction.name], mask[None],
                                       source=layout.meta_expressions_path)
        if score:
            gt = np.stack([layout.referred_masks(video, ids, [t], size)[0] for ids in anno_ids])
            # frames are independent in J and F: the K expressions of frame t are one batch
            j[:, t], f[:, t] = jaccard_and_f(gt, masks, bound_th=bound_th)
            gt_on[:, t] = gt.reshape(k, -1).any(1)
            pred_on[:, t] = masks.reshape(k, -1).any(1)
        seen = t + 1
    if seen != n:
        raise RuntimeError(f"the predictor gave {seen} frames of video {video!r}, {n} were listed")
    rows = []
    if score:
        for i, exp_id in enumerate(exp_ids):
            tiou, viou = temporal_iou_from_presence(gt_on[i], pred_on[i], j[i])
            rows.append(ExpressionResult(video, exp_id, len(anno_ids[i]), float(j[i].mean()),
                                         float(f[i].mean()), tiou, viou))
    return rows, size


# --------------------------------------------------------------------------- submission

# --------------------------------------------------------------------------- reports

def split_figures(split: str, rows: list[ExpressionResult], in_split: int) -> dict:
    """{"split", "overall": {"JF", "J", "F", "tIoU", "vIoU", "count"}, "expressions_in_split"}."""
    s = summarize_results(rows)
    return {"split": split,
            "overall": {"JF": s["J&F"], "J": s["J"], "F": s["F"], "tIoU": s["tIoU"],
                        "vIoU": s["vIoU"], "count": s["num_expressions"]},
            "expressions_in_split": in_split}


def _score_split(request: EvaluationRequest, layout: MeViSLayout, bound_th: float,
                 csv_rows: list[dict]) -> dict:
    samples = first_samples(layout, request.max_samples)
    layout.verify(samples)
    pred_dir = request.stage / "predictions" / layout.split if request.save_masks else None
    run = segment_split(request.predictor, layout, samples, request.threshold, pred_dir,
                        score=True, bound_th=bound_th, progress=request.progress)
    for row in run.rows:
        fields = {k: v for k, v in asdict(row).items() if k != "missing_video"}  # never, here
        csv_rows.append({"split": layout.split, **fields, "JF": (row.J + row.F) / 2,
                         "text": run.texts[(row.video, row.exp_id)]})
    figures = split_figures(layout.split, run.rows, len(layout.samples()))
    figures["predictions"] = None if pred_dir is None else f"predictions/{layout.split}"
    return figures


def _submit_split(request: EvaluationRequest, layout: MeViSLayout) -> dict:
    samples = first_samples(layout, request.max_samples)
    layout.verify(samples, check_masks=False)
    pred_dir = request.stage / "predictions" / layout.split
    run = segment_split(request.predictor, layout, samples, request.threshold, pred_dir,
                        score=False, progress=request.progress)
    report = {"split": layout.split, "overall": None, "predictions": f"predictions/{layout.split}",
              "expressions": len(samples), "expressions_in_split": len(layout.samples()),
              "videos": len(run.frame_sizes), "submission": None}
    if len(samples) < len(layout.samples()):
        report["note"] = ("no submission zip: --max-samples covers only part of the split, "
                          "which the server would reject")
        return report
    name = submission_zip_name(request)
    zip_submission(pred_dir, request.stage / name, layout.meta_expressions_path, run.frame_sizes,
                   zip_root="")   # the MeViS server takes the video folders at the zip's root
    report["submission"] = name
    report["png_files"] = sum(len(layout.videos[v].frames) for v, _ in samples)
    return report


def format_table(reports: list[dict]) -> str:
    """One line per split: J&F, J, F where scored, the submission otherwise."""
    header = f"{'MeViS split':<14}{'expressions':>14}{'J&F':>9}{'J':>9}{'F':>9}"
    lines = [header, "-" * len(header)]
    for r in reports:
        o = r["overall"]
        count = o["count"] if o else r["expressions"]
        covered = f"{count}/{r['expressions_in_split']}"
        cell = f"{r['split']:<14}{covered:>14}"
        if o:
            lines.append(cell + f"{o['JF']:>9.4f}{o['J']:>9.4f}{o['F']:>9.4f}")
        elif r["submission"]:
            lines.append(cell + f"  submission {r['submission']} (the server scores it)")
        else:
            lines.append(cell + f"  masks in {r['predictions']}; {r.get('note', '')}")
    return "\n".join(lines)


def _write_reports(stage: Path, reports: list[dict], csv_rows: list[dict]) -> dict[str, Path]:
    paths = {"metrics": stage / "mevis.json", "per expression": stage / "mevis_per_expression.csv"}
    text = io.StringIO(newline="")
    fields = ["split", *(f for f in ExpressionResult.__dataclass_fields__ if f != "missing_video"),
              "JF", "text"]
    writer = csv.DictWriter(text, fieldnames=fields)
    writer.writeheader()
    for row in csv_rows:
        writer.writerow({k: repr(v) if isinstance(v, float) else v for k, v in row.items()})
    write_file_atomic(paths["per expression"], text.getvalue())
    write_file_atomic(stage / "results.txt", format_table(reports) + "\n")
    # last: mevis.json tells that the results are complete
    write_file_atomic(paths["metrics"], json.dumps({r["split"]: r for r in reports}, indent=1))
    return paths


def _open_split(root: Path, split: str) -> MeViSLayout:
    """The split's layout, after the checks that need no frame or mask."""
    layout = MeViSLayout(root, split)
    if not layout.samples():
        raise RVOSError("no expressions to evaluate", layout.meta_expressions_path)
    if split in SPLITS_WITH_MASKS and not layout.has_annotations:
        raise RVOSError(f"mask_dict.json not found; the MeViS {split} split comes with it "
                        "(only valid, scored by the server, has none)", layout.mask_dict_path)
    return layout


def evaluate(request: EvaluationRequest) -> ProtocolReport:
    """mevis.json, mevis_per_expression.csv, results.txt and predictions/ (see the module
    docstring) for every split of ``request``."""
    bound_th = getattr(request.options, "bound_th", None) or DEFAULT_BOUND_TH
    reports: list[dict] = []
    csv_rows: list[dict] = []
    layouts = [_open_split(request.root, split) for split in request.splits]
    unscored = [layout.split for layout in layouts if not layout.has_annotations]
    if len(unscored) > 1:
        raise RVOSError(f"splits {', '.join(unscored)} have no mask_dict.json: each gives its own "
                        "submission zip, so run them one at a time", request.root)
    if unscored:
        submission_zip_name(request)                   # a bad --zip fails before any work
    for layout in layouts:
        if layout.has_annotations:
            report = _score_split(request, layout, bound_th, csv_rows)
            report.update(threshold=request.threshold, bound_th=bound_th)
        else:
            report = _submit_split(request, layout)
        reports.append(report)
    paths = _write_reports(request.stage, reports, csv_rows)
    for r in reports:
        if r.get("submission"):
            paths[f"submission {r['split']}"] = request.stage / r["submission"]
        elif r.get("predictions"):
            paths[f"masks {r['split']}"] = request.stage / r["predictions"]
    return ProtocolReport(format_table(reports), paths)


def validation_summary(predictor: Predictor, cfg: Config, progress: bool = True) -> dict | None:
    """J&F, J, F on ``cfg.data.val_split`` (the first ``data.max_val_samples`` expressions), as
    ``rvos evaluate`` computes them, or None when that split has no mask_dict.json."""
    d = cfg.data
    layout = MeViSLayout(d.root, d.val_split)
    if not layout.has_annotations:
        return None
    samples = first_samples(layout, d.max_val_samples)
    layout.verify(samples)
    run = segment_split(predictor, layout, samples, cfg.eval.threshold, progress=progress)
    return split_figures(layout.split, run.rows, len(layout.samples()))
