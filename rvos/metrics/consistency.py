"""Temporal consistency of a predicted object sequence.

* MCS (mask consistency score): the share of object sequences whose J exceeds a threshold
  (0.9) on every scored frame - one bad frame is enough to fail a sequence.
* tIoU / vIoU as defined by Long-RVOS (``eval/eval_long_rvos/eval_*.py`` of
  iSEE-Laboratory/Long_RVOS): with G the frames where the ground truth is non-empty and P the
  frames where the prediction is non-empty, tIoU = |G & P| / |G | P| and
  vIoU = (sum of J over G & P) / |G | P|; both are 1 when G | P is empty.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

MCS_THRESHOLD = 0.9


def mask_consistency_score(per_sequence_j: Iterable[np.ndarray], threshold: float = MCS_THRESHOLD) -> float:
    """Share of sequences (each a (T,) array of per-frame J) with J > threshold on every frame;
    NaN frames fail. NaN when there is no sequence."""
    flags = [bool(np.all(np.asarray(j, dtype=np.float64) > threshold)) for j in per_sequence_j]
    return float(np.mean(flags)) if flags else float("nan")


def temporal_iou(gt: np.ndarray, pred: np.ndarray, j: np.ndarray) -> tuple[float, float]:
    """Long-RVOS tIoU and vIoU of one expression.

    Args:
        gt, pred: (T, H, W) masks, non-zero = object.
        j: (T,) per-frame J of the same masks (``region_similarity_batch(gt, pred)``).
    Returns:
        (tIoU, vIoU).
    """
    gt_frames = np.asarray(gt).reshape(len(gt), -1).any(axis=1)
    pred_frames = np.asarray(pred).reshape(len(pred), -1).any(axis=1)
    return temporal_iou_from_presence(gt_frames, pred_frames, j)


def temporal_iou_from_presence(gt_frames: np.ndarray, pred_frames: np.ndarray,
                               j: np.ndarray) -> tuple[float, float]:
    """tIoU and vIoU from (T,) bool presence flags and (T,) per-frame J."""
    both = gt_frames & pred_frames
    union = int(np.count_nonzero(gt_frames | pred_frames))
    if union == 0:
        return 1.0, 1.0
    return float(np.count_nonzero(both) / union), float(np.asarray(j)[both].sum() / union)
