"""A2D-Sentences / JHMDB-Sentences evaluation, as MTTR (``metrics.py``, ``trainer.py``) and
ReferFormer (``datasets/a2d_eval.py``, a copy of MTTR's) compute it.

Inputs are COCO-format files: the ground truth with one image per (video, frame, instance)
sample and exactly one annotation each (MTTR's ``create_gt_in_coco_format.py``), and the
predictions as a COCO results list ``[{"image_id", "segmentation": RLE, "score"}, ...]``,
usually several per sample (one per query).

* P@0.5..0.9, overall IoU, mean IoU: on the top-scoring prediction of each sample (ties:
  the last of the tied predictions in file order, as Python's stable sort then ``[-1]``
  picks it). IoU = (I + 1e-6) / (U + 1e-6) in float32, "IoU > threshold" strictly.
  Overall IoU = total I / total U; mean IoU = mean of the per-sample IoUs.
* mAP@0.5:0.95, AP50, AP75, AP S/M/L: pycocotools COCOeval (segm, ``useCats = 0``), once
  over all predictions (MTTR's reported mAP) and once over the top-1 prediction per sample;
  both are reported, labelled.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from rvos.errors import RVOSError

PRECISION_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
AP_LABELS = ("mAP 0.5:0.95", "AP 0.5", "AP 0.75", "AP 0.5:0.95 S", "AP 0.5:0.95 M", "AP 0.5:0.95 L")
IOU_EPS = 1e-6


def load_coco_gt(path: str | Path) -> COCO:
    path = Path(path)
    if not path.is_file():
        raise RVOSError("ground-truth COCO JSON not found", path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RVOSError(f"not valid JSON ({e})", path) from None
    return coco_gt_from_dict(data, path)


def coco_gt_from_dict(data: dict, path: str | Path | None = None) -> COCO:
    """The checked COCO ground truth of a dict in the layout of :func:`load_coco_gt`'s file
    (``path``: where it came from, for the messages)."""
    if not isinstance(data, dict):
        raise RVOSError("not a COCO ground-truth file: expected an object", path)
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise RVOSError(f"not a COCO ground-truth file: no {key!r}", path)
    for kind, entries, needed in (("image", data["images"], ("id", "height", "width")),
                                  ("annotation", data["annotations"], ("id", "image_id", "segmentation", "area"))):
        for i, entry in enumerate(entries):
            missing = [k for k in needed if not isinstance(entry, dict) or k not in entry]
            if missing:
                raise RVOSError(f"{kind} {i} has no {', '.join(missing)} (COCOeval needs them)", path)
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    for image_id, anns in coco.imgToAnns.items():
        if len(anns) != 1:
            raise RVOSError(f"sample {image_id!r} has {len(anns)} annotations; A2D/JHMDB-Sentences "
                            f"ground truth has exactly one per sample", path)
    return coco


def load_predictions(path: str | Path, coco_gt: COCO) -> list[dict]:
    """The results list, checked: known image ids, RLE segmentations of the sample's size, scores."""
    path = Path(path)
    if not path.is_file():
        raise RVOSError("predictions JSON not found", path)
    try:
        preds = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RVOSError(f"not valid JSON ({e})", path) from None
    if isinstance(preds, dict) and "annotations" in preds:
        preds = preds["annotations"]
    if not isinstance(preds, list):
        raise RVOSError("expected a COCO results list [{image_id, segmentation, score}, ...]", path)
    unknown, bad = set(), []
    out = []
    for i, p in enumerate(preds):
        if not isinstance(p, dict) or not {"image_id", "segmentation", "score"} <= p.keys():
            bad.append(f"entry {i}: needs image_id, segmentation and score")
            continue
        img = coco_gt.imgs.get(p["image_id"])
        if img is None:
            unknown.add(p["image_id"])
            continue
        seg = p["segmentation"]
        if not isinstance(seg, dict) or "size" not in seg or "counts" not in seg:
            bad.append(f"entry {i} ({p['image_id']}): segmentation must be an RLE {{size, counts}}")
            continue
        if list(seg["size"]) != [img["height"], img["width"]]:
            bad.append(f"entry {i} ({p['image_id']}): mask size {seg['size']} but the sample is "
                       f"{[img['height'], img['width']]} (H, W)")
            continue
        p = dict(p)
        p.setdefault("category_id", 1)  # categories are not predicted in RVOS (useCats = 0)
        out.append(p)
    if unknown:
        bad.append(f"{len(unknown)} image ids not in the ground truth, e.g. {sorted(map(str, unknown))[:5]}")
    seen = {p["image_id"] for p in out}
    missing = [i for i in coco_gt.imgs if i not in seen]
    if missing:
        bad.append(f"{len(missing)} ground-truth samples have no prediction, e.g. {[str(m) for m in missing[:5]]}")
    if bad:
        raise RVOSError("invalid predictions:\n  " + "\n  ".join(bad[:20]), path)
    return out


def top1_predictions(predictions: list[dict]) -> list[dict]:
    """The highest-scoring prediction of each sample; among equal scores the last in list
    order (what ``sorted(..., key=score)[-1]`` gives). Order of first appearance is kept."""
    best: dict = {}
    order = []
    for p in predictions:
        key = p["image_id"]
        if key not in best:
            order.append(key)
            best[key] = p
        elif p["score"] >= best[key]["score"]:
            best[key] = p
    return [best[k] for k in order]


def mttr_iou(intersection: np.ndarray, union: np.ndarray) -> np.ndarray:
    """(I + 1e-6) / (U + 1e-6) computed in float32 as MTTR's torch code does -> float64 array
    holding the float32 values."""
    inter = torch.as_tensor(np.asarray(intersection, dtype=np.float32))
    uni = torch.as_tensor(np.asarray(union, dtype=np.float32))
    return ((inter + IOU_EPS) / (uni + IOU_EPS)).numpy().astype(np.float64)


def precision_and_iou(coco_gt: COCO, predictions: list[dict]) -> dict:
    """P@K, overall IoU and mean IoU of the top-1 prediction of every ground-truth sample,
    plus per-sample rows."""
    top = {p["image_id"]: p for p in top1_predictions(predictions)}
    ids = list(coco_gt.imgs.keys())
    inter = np.zeros(len(ids), dtype=np.int64)
    union = np.zeros(len(ids), dtype=np.int64)
    for k, image_id in enumerate(ids):
        gt = mask_utils.decode(coco_gt.imgToAnns[image_id][0]["segmentation"]).astype(bool)
        pred = mask_utils.decode(top[image_id]["segmentation"]).astype(bool)
        inter[k] = np.count_nonzero(gt & pred)
        union[k] = np.count_nonzero(gt | pred)
    iou = mttr_iou(inter, union)
    out = {f"P@{t}": float(np.count_nonzero(iou > t) / len(ids)) for t in PRECISION_THRESHOLDS}
    out["overall_iou"] = float(inter.sum() / union.sum()) if union.sum() else float("nan")
    out["mean_iou"] = float(np.mean(iou))
    rows = [{"image_id": str(i), "iou": float(v), "intersection": int(a), "union": int(b),
             "score": float(top[i]["score"])} for i, v, a, b in zip(ids, iou, inter, union)]
    return {"metrics": out, "rows": rows}


def coco_map(coco_gt: COCO, predictions: list[dict]) -> dict[str, float]:
    """COCOeval segm with ``useCats = 0``: stats[:6] under MTTR's labels."""
    results = [dict(p, category_id=p.get("category_id", 1)) for p in copy.deepcopy(predictions)]
    if not results:
        raise RVOSError("no predictions to score")
    with contextlib.redirect_stdout(io.StringIO()):
        coco_pred = coco_gt.loadRes(results)
        evaluator = COCOeval(coco_gt, coco_pred, iouType="segm")
        evaluator.params.useCats = 0
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {label: float(v) for label, v in zip(AP_LABELS, evaluator.stats[:6])}


def evaluate_a2d(gt_path: str | Path, pred_path: str | Path) -> dict:
    """Full A2D/JHMDB-Sentences report: {"top1": P@K and IoUs, "map_all_queries": AP...,
    "map_top1": AP..., "rows": per-sample rows, "num_samples", "num_predictions"}."""
    coco_gt = load_coco_gt(gt_path)
    return score_a2d(coco_gt, load_predictions(pred_path, coco_gt))


def score_a2d(coco_gt: COCO, predictions: list[dict]) -> dict:
    """:func:`evaluate_a2d` of a loaded ground truth and a checked results list."""
    piou = precision_and_iou(coco_gt, predictions)
    return {
        "num_samples": len(coco_gt.imgs),
        "num_predictions": len(predictions),
        "top1": piou["metrics"],
        "map_all_queries": coco_map(coco_gt, predictions),
        "map_top1": coco_map(coco_gt, top1_predictions(predictions)),
        "rows": piou["rows"],
    }
