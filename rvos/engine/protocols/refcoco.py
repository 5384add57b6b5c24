"""RefCOCO / RefCOCO+ / RefCOCOg (referring image segmentation): every referring expression
of a split -> the predicted mask at the image's size -> overall IoU, mean IoU, P@0.5..0.9.

The figures, as SgMg (``engine.py: evaluate`` -> ``calculate_precision_at_k_and_iou_metrics``,
MTTR's ``metrics.py``, also ReferFormer's ``datasets/a2d_eval.py``) computes them on the
``instances_<dataset>_val.json`` files, and as the referring-image-segmentation papers report
them (oIoU, mIoU, P@X):

* per expression, I and U are the pixel counts of (prediction AND ground truth) and
  (prediction OR ground truth) at the image's own size; the prediction is the model's mask
  probability ``> threshold`` (0.5), the ground truth the referred annotation's
  segmentation (polygons rasterised as pycocotools ``annToMask`` does);
* IoU = (I + 1e-6) / (U + 1e-6) in float32 (MTTR's ``compute_iou``; 1 when both are empty);
* overall IoU (oIoU) = sum of I / sum of U over the split; mean IoU (mIoU) = mean of the IoUs;
* P@K = share of expressions with IoU > K (strictly, as MTTR; LAVT-style code uses >=).

The model gives one mask per expression (rvos picks the referred query), so SgMg's "the
highest-scoring of the predictions" is that mask. Several expressions of the same image
share one backbone pass.

Outputs: ``refcoco.json`` (every figure unrounded, per dataset/split), ``per_sample.csv``
(one row per expression: ids, text, I, U, IoU), ``results.txt`` (the table, in percent) and,
with ``--save-masks``, ``predictions/<dataset>/<split>/<sample_id>.png`` (0/255 PNGs).
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
from rvos.data.refcoco import DATASETS, ReferringImageDataset, open_validation_split
from rvos.engine.protocols import EvaluationRequest, ProtocolReport
from rvos.errors import RVOSError
from rvos.inference import Predictor
from rvos.metrics.a2d import PRECISION_THRESHOLDS, mttr_iou
from rvos.metrics.ref_ytvos import write_expression_masks
from rvos.outputs_dir import write_file_atomic

OUTPUTS = ("refcoco.json", "per_sample.csv", "results.txt", "predictions")
SENTENCES_PER_PASS = 16     # expressions of one image segmented together (bounds memory)


@dataclass
class SampleScore:
    """One referring expression's counts (pixels at the image's size) and IoU."""

    dataset: str
    split: str
    sample_id: str
    image_id: int
    ann_id: int
    file_name: str
    text: str
    intersection: int
    union: int
    iou: float


@dataclass
class SplitResult:
    dataset: str
    split: str
    layout: str
    rows: list[SampleScore]

    def summary(self) -> dict:
        """{"dataset", "split", "layout", "count", "oIoU", "mIoU", "P@0.5".."P@0.9"}
        (fractions, unrounded)."""
        return {"dataset": self.dataset, "split": self.split, "layout": self.layout,
                **split_figures(np.array([r.intersection for r in self.rows], dtype=np.int64),
                                np.array([r.union for r in self.rows], dtype=np.int64))}


def split_figures(intersection: np.ndarray, union: np.ndarray) -> dict:
    """Figures of a split from per-expression pixel counts I (N,) and U (N,): count, oIoU
    (sum I / sum U), mIoU (mean of MTTR's float32 (I + 1e-6) / (U + 1e-6)), P@K (share of
    IoU > K). NaN for an empty split (oIoU also when no pixel is in any union)."""
    if len(intersection) == 0:
        return {"count": 0, "oIoU": float("nan"), "mIoU": float("nan"),
                **{f"P@{t}": float("nan") for t in PRECISION_THRESHOLDS}}
    iou = mttr_iou(intersection, union)
    total_union = int(union.sum())
    return {"count": int(len(iou)),
            "oIoU": int(intersection.sum()) / total_union if total_union else float("nan"),
            "mIoU": float(np.mean(iou)),
            **{f"P@{t}": float(np.count_nonzero(iou > t) / len(iou)) for t in PRECISION_THRESHOLDS}}


def score_split(predictor: Predictor, dataset: ReferringImageDataset, threshold: float = 0.5,
                masks_out: Path | None = None, progress: bool = True) -> SplitResult:
    """Segment every expression of ``dataset`` (its images at their own size) and count I, U.

    Expressions are grouped by image (one model pass per image and up to
    :data:`SENTENCES_PER_PASS` sentences); rows keep the split's order. ``masks_out``:
    write each predicted mask as ``<masks_out>/<dataset>/<split>/<sample_id>.png``."""
    by_image: dict[str, list[int]] = defaultdict(list)
    for index, expression in enumerate(dataset.expressions):
        by_image[expression.file_name].append(index)
    rows: dict[int, SampleScore] = {}
    source = dataset.files.path
    bar = tqdm(total=len(dataset), desc=f"evaluate {dataset.dataset} {dataset.split}",
               unit="exp", disable=not progress, leave=False)
    for indices in by_image.values():
        image = dataset.load_image(dataset.expressions[indices[0]])          # (H, W, 3)
        h, w = image.shape[:2]
        for start in range(0, len(indices), SENTENCES_PER_PASS):
            chunk = indices[start:start + SENTENCES_PER_PASS]
            expressions = [dataset.expressions[i] for i in chunk]
            probs = predictor.predict_window(image[None], [e.text for e in expressions])  # (1, K, H, W)
            for k, (index, expression) in enumerate(zip(chunk, expressions)):
                pred = probs[0, k] > threshold
                gt = dataset.target_mask(expression, h, w)
                rows[index] = SampleScore(
                    dataset.dataset, dataset.split, expression.sample_id, expression.image_id,
                    expression.ann_id, expression.file_name, expression.text,
                    int(np.count_nonzero(pred & gt)), int(np.count_nonzero(pred | gt)), 0.0)
                if masks_out is not None:
                    write_expression_masks(masks_out, dataset.dataset, dataset.split,
                                           [expression.sample_id], pred[None], source=source)
            bar.update(len(chunk))
    bar.close()
    ordered = [rows[i] for i in range(len(dataset))]
    ious = mttr_iou(np.array([r.intersection for r in ordered]), np.array([r.union for r in ordered]))
    for row, iou in zip(ordered, ious):
        row.iou = float(iou)
    return SplitResult(dataset.dataset, dataset.split, dataset.layout, ordered)


def chosen_datasets(root: Path, requested: str | None) -> list[str]:
    """``requested`` (``--refcoco-dataset``), or every one of refcoco, refcoco+, refcocog
    that has a folder under ``root``."""
    if requested:
        if requested not in DATASETS:
            raise RVOSError(f"unknown referring-image dataset {requested!r}; choose one of "
                            f"{', '.join(DATASETS)}")
        return [requested]
    if not root.is_dir():
        raise RVOSError("referring-image root not found (--data)", root)
    found = [name for name in DATASETS if (root / name).is_dir()]
    if not found:
        raise RVOSError(f"no {', '.join(DATASETS)} folder here: give --data the folder that "
                        "holds them and train2014/", root)
    return found


def format_table(summaries: list[dict]) -> str:
    """One row per dataset/split: expressions, oIoU, mIoU, P@0.5..0.9 in percent."""
    names = ["oIoU", "mIoU", *(f"P@{t}" for t in PRECISION_THRESHOLDS)]
    header = f"{'dataset/split':<20}{'count':>8}" + "".join(f"{n:>8}" for n in names)
    lines = [header + "   (percent)", "-" * len(header)]
    for s in summaries:
        cells = "".join(f"{100 * s[n]:>8.2f}" for n in names)
        lines.append(f"{s['dataset'] + '/' + s['split']:<20}{s['count']:>8}" + cells)
    return "\n".join(lines)


def write_outputs(results: list[SplitResult], stage: Path, threshold: float) -> dict[str, Path]:
    """per_sample.csv, results.txt, then refcoco.json (last: it tells the results are complete)."""
    paths = {"json": stage / "refcoco.json", "csv": stage / "per_sample.csv",
             "table": stage / "results.txt"}
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(SampleScore.__dataclass_fields__))
    writer.writeheader()
    for result in results:
        for row in result.rows:
            writer.writerow(asdict(row))
    write_file_atomic(paths["csv"], text.getvalue())
    summaries = [r.summary() for r in results]
    write_file_atomic(paths["table"], format_table(summaries) + "\n")
    document = {"protocol": "refcoco: oIoU = sum I / sum U, mIoU = mean (I + 1e-6) / (U + 1e-6), "
                            "P@K = share of IoU > K (SgMg / MTTR)",
                "threshold": threshold,
                "results": {f"{s['dataset']}/{s['split']}": s for s in summaries}}
    write_file_atomic(paths["json"], json.dumps(document, indent=1))
    return paths


def evaluate(request: EvaluationRequest) -> ProtocolReport:
    """Every split of ``request`` of the chosen dataset(s) (``--refcoco-dataset``, or each of
    refcoco/refcoco+/refcocog found under ``--data``); the first ``--max-samples``
    expressions of each when given."""
    root = Path(request.root).expanduser()
    datasets = chosen_datasets(root, getattr(request.options, "refcoco_dataset", None))
    results = []
    for name in datasets:
        for split in request.splits:
            dataset = ReferringImageDataset(root, name, split, train=False)
            if 0 < request.max_samples < len(dataset):
                dataset.expressions = dataset.expressions[:request.max_samples]
            dataset.verify()                 # a missing image fails before any model work
            masks_out = request.stage / "predictions" if request.save_masks else None
            results.append(score_split(request.predictor, dataset, request.threshold,
                                       masks_out, request.progress))
    paths = write_outputs(results, request.stage, request.threshold)
    return ProtocolReport(format_table([r.summary() for r in results]),
                          {"metrics": paths["json"], "per sample": paths["csv"]})


def validation_summary(predictor: Predictor, cfg: Config, progress: bool = True) -> dict | None:
    """oIoU, mIoU and P@K on ``data.val_split`` of ``data.refcoco_dataset`` under
    ``data.root`` (its first ``data.max_val_samples`` expressions when > 0).

    ``overall["JF"]`` carries the oIoU: the trainer picks best checkpoints by ``JF``, and
    oIoU is the figure RefCOCO results are compared by (it is not a J&F)."""
    dataset = open_validation_split(cfg)
    figures = score_split(predictor, dataset, cfg.eval.threshold, progress=progress).summary()
    overall = {k: v for k, v in figures.items() if k not in ("dataset", "split", "layout")}
    return {"split": cfg.data.val_split, "overall": {"JF": figures["oIoU"], **overall}}
