"""MeViS evaluation, as the official ``eval_mevis.py`` (MeViS repository, ``tools/``) scores it.

Ground truth (official layout, e.g. ``valid_u/``): ``meta_expressions.json`` with
``videos[v] = {"frames": [...], "expressions": {exp: {"exp", "obj_id": [...], "anno_id": [...]}}}``
and ``mask_dict.json`` mapping each anno_id to one COCO RLE (or null where the object is
absent) per frame. An expression may refer to several objects: its ground truth is the union
of their masks, and an expression whose objects are all absent from a frame has an empty
ground truth there.

Predictions: ``<pred>/<video>/<exp_id>/<frame>.png``, non-zero = referred object(s).

Per expression: J = mean over all frames of the per-frame J, F likewise (empty ground truth
and empty prediction: J = F = 1); the split's J and F are means over expressions and J&F
their mean. A video folder missing from the predictions scores 0 for all its expressions
(as the official script does); a missing expression folder or frame is an error.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from rvos.errors import RVOSError
from rvos.metrics.consistency import temporal_iou
from rvos.metrics.davis import DEFAULT_BOUND_TH, jaccard_and_f
from rvos.metrics.davis_protocols import load_meta_expressions


@dataclass
class ExpressionResult:
    video: str
    exp_id: str
    num_objects: int
    J: float
    F: float
    tIoU: float  # Long-RVOS temporal IoU (extra, not part of the MeViS protocol)
    vIoU: float  # Long-RVOS spatiotemporal IoU (extra)
    missing_video: bool = False


def load_mask_dict(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise RVOSError("mask_dict.json not found", path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RVOSError(f"not valid JSON ({e})", path) from None
    if not isinstance(data, dict):
        raise RVOSError("expected {anno_id: [RLE or null per frame]}", path)
    return data


def union_ground_truth(mask_dict: dict, anno_ids: list, n_frames: int, shape: tuple[int, int] | None,
                       where: str = "") -> np.ndarray:
    """(T, H, W) bool union of the objects ``anno_ids``; ``shape`` (H, W) is needed when no
    object has any mask (then the first RLE size found is used when shape is None)."""
    gt = None
    for anno_id in anno_ids:
        rles = mask_dict.get(str(anno_id))
        if rles is None:
            raise RVOSError(f"{where}: anno_id {anno_id} not in mask_dict.json")
        if len(rles) != n_frames:
            raise RVOSError(f"{where}: anno_id {anno_id} has {len(rles)} masks for {n_frames} frames")
        for t, rle in enumerate(rles):
            if not rle:
                continue
            size = tuple(rle["size"])
            if gt is None:
                gt = np.zeros((n_frames, *(shape or size)), dtype=bool)
            if size != gt.shape[1:]:
                raise RVOSError(f"{where}: ground-truth mask of anno_id {anno_id} frame {t} is "
                                f"{size} (H, W), predictions are {gt.shape[1:]}")
            gt[t] |= mask_utils.decode(rle).astype(bool)
    if gt is None:
        if shape is None:
            raise RVOSError(f"{where}: no ground-truth mask and no prediction to take the size from")
        gt = np.zeros((n_frames, *shape), dtype=bool)
    return gt


def read_prediction_mask(path: Path) -> np.ndarray:
    """(H, W) bool foreground of one predicted PNG, read as the official script reads it:
    ``cv2.imread(path, cv2.IMREAD_GRAYSCALE) != 0``. A palette PNG is thus judged by the
    grey value of each index's colour (an index whose colour is black is background), an
    RGB PNG by its luma, a 16-bit PNG by its high byte."""
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise RVOSError("cannot read predicted mask (not an image OpenCV can decode)", path)
    return mask != 0


def read_expression_prediction(folder: Path, frames: list[str]) -> np.ndarray:
    """(T, H, W) bool prediction of one expression; errors name the missing/odd file."""
    if not folder.is_dir():
        raise RVOSError("expression folder missing from the predictions", folder)
    masks, shape = [], None
    for name in frames:
        path = folder / f"{name}.png"
        if not path.is_file():
            raise RVOSError("predicted frame missing", path)
        m = read_prediction_mask(path)
        if shape is None:
            shape = m.shape
        elif m.shape != shape:
            raise RVOSError(f"mask size {m.shape} differs from the expression's first frame {shape}", path)
        masks.append(m)
    return np.stack(masks)


def evaluate_mevis(gt_root: str | Path, pred_root: str | Path, meta_path: str | Path | None = None,
                   mask_dict_path: str | Path | None = None,
                   bound_th: float = DEFAULT_BOUND_TH) -> tuple[dict, list[ExpressionResult]]:
    """Score MeViS predictions -> ({"J", "F", "J&F", "tIoU", "vIoU", "num_expressions", ...},
    per-expression results)."""
    gt_root, pred_root = Path(gt_root), Path(pred_root)
    videos = load_meta_expressions(meta_path if meta_path is not None else gt_root / "meta_expressions.json")
    mask_dict = load_mask_dict(mask_dict_path if mask_dict_path is not None else gt_root / "mask_dict.json")
    if not pred_root.is_dir():
        raise RVOSError("prediction folder not found", pred_root)
    rows: list[ExpressionResult] = []
    for video, entry in videos.items():
        frames = [str(f) for f in entry.get("frames", [])]
        for exp_id, exp in entry.get("expressions", {}).items():
            anno_ids = exp.get("anno_id", [])
            if not (pred_root / video).is_dir():
                rows.append(ExpressionResult(video, str(exp_id), len(anno_ids), 0.0, 0.0, 0.0, 0.0, True))
                continue
            pred = read_expression_prediction(pred_root / video / str(exp_id), frames)
            gt = union_ground_truth(mask_dict, anno_ids, len(frames), pred.shape[1:], f"{video}/{exp_id}")
            j, f = jaccard_and_f(gt, pred, bound_th=bound_th)
            tiou, viou = temporal_iou(gt, pred, j)
            rows.append(ExpressionResult(video, str(exp_id), len(anno_ids), float(j.mean()), float(f.mean()),
                                         tiou, viou))
    if not rows:
        raise RVOSError("no expressions in meta_expressions.json", gt_root)
    return summarize_results(rows), rows


def summarize_results(rows: list[ExpressionResult]) -> dict:
    """The split's figures from per-expression results, as the official script averages them:
    J and F are means over expressions, J&F = (J + F) / 2."""
    j_mean = float(np.mean([r.J for r in rows]))
    f_mean = float(np.mean([r.F for r in rows]))
    return {"J&F": (j_mean + f_mean) / 2, "J": j_mean, "F": f_mean,
            "tIoU": float(np.mean([r.tIoU for r in rows])), "vIoU": float(np.mean([r.vIoU for r in rows])),
            "num_expressions": len(rows), "missing_videos": sorted({r.video for r in rows if r.missing_video})}


def rows_as_dicts(rows: list[ExpressionResult]) -> list[dict]:
    return [asdict(r) for r in rows]
