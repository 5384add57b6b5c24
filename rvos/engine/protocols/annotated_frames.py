"""The protocol A2D-Sentences and JHMDB-Sentences share: one mask per (sentence, annotated
frame), scored in COCO format.

As MTTR evaluates them (``trainer.py`` ``evaluate_a2d_sentences``, with the ground truth of
``datasets/*/create_gt_in_coco_format.py``; ReferFormer's ``engine.py`` and
``datasets/a2d_eval.py`` copy it):

* the model sees the clip of ``window`` frames with the annotated frame at position
  ``window // 2``, indices past the video's ends replaced by its first or last frame;
* the referred object's probabilities at the annotated frame, at the frame's size (resized
  bilinearly to the ground truth's size when that differs), thresholded (``> threshold``),
  are the prediction, run-length encoded;
* the ground truth is a COCO JSON with one image per sample (``id`` the sample's image id,
  ``height``, ``width``) and one annotation each (RLE ``segmentation``, ``area``, ``bbox``
  x, y, w, h, ``category_id`` 1, ``iscrowd`` 0), ids counted from 1;
* :func:`rvos.metrics.a2d.evaluate_a2d` gives P@0.5..0.9, overall and mean IoU, COCO mAP.

The score of a prediction: rvos's Predictor gives ONE object per sentence (the query with
the highest mean score over the clip), so each sample has exactly one prediction, scored
by the mean probability inside its mask (0 for an empty mask). MTTR's mAP is over every
query's mask, each scored by its referred probability ("all queries"); with one prediction
per sample, rvos's mAP is the top-1 mAP (``map_all_queries`` and ``map_top1`` are equal),
which papers reporting top-1 figures compare against. P@K and the IoUs are top-1 figures
in both.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from tqdm import tqdm

from rvos.data.a2d import Clip
from rvos.engine.protocols import EvaluationRequest, ProtocolReport
from rvos.errors import RVOSError
from rvos.inference import WHOLE_VIDEO, Predictor
from rvos.metrics.a2d import PRECISION_THRESHOLDS, coco_gt_from_dict, evaluate_a2d, score_a2d
from rvos.metrics.cli import format_table
from rvos.outputs_dir import write_file_atomic


class FrameSample(Protocol):
    """A (sentence, annotated frame) sample: ``A2DSample``, ``JHMDBSample``."""

    video: str
    text: str

    @property
    def frame_index(self) -> int: ...      # 0-based index of the annotated frame

    @property
    def image_id(self) -> str: ...         # its id in the COCO ground truth


class FrameSource(Protocol):
    """Where the frames and masks of samples come from: ``A2DLayout``, ``JHMDBLayout``."""

    def read_clips(self, video: str, centers: list[int], length: int) -> dict[int, Clip]: ...

    def read_mask(self, sample) -> np.ndarray: ...     # (H, W) bool


# ReferFormer's clip around an annotated frame (``--num_frames`` default 5 in its opts.py,
# which its A2D script keeps)
REFERFORMER_CLIP_FRAMES = 5


def clip_length(predictor: Predictor) -> int:
    """The clip length: the predictor's window (``--window``, or the checkpoint's
    ``eval.window``); a converted ReferFormer checkpoint, which otherwise takes whole
    videos, gets ReferFormer's 5 frames."""
    if predictor.window >= WHOLE_VIDEO:
        return REFERFORMER_CLIP_FRAMES
    return predictor.window


def mask_rle(mask: np.ndarray) -> dict:
    """(H, W) bool -> COCO RLE {"size": [H, W], "counts": str}."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def prediction_score(probs: np.ndarray, mask: np.ndarray) -> float:
    """Mean probability inside the predicted mask (0 for an empty mask)."""
    return float(probs[mask].mean()) if mask.any() else 0.0


def _at_size(probs: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(K, h, w) probabilities resized bilinearly to ``size`` (H, W) when they differ."""
    if tuple(probs.shape[-2:]) == tuple(size):
        return probs
    x = F.interpolate(torch.from_numpy(np.ascontiguousarray(probs))[None], size=tuple(size),
                      mode="bilinear", align_corners=False)
    return x[0].numpy()


def predict_samples(predictor: Predictor, source: FrameSource, samples: Sequence[FrameSample],
                    threshold: float, source_file: Path, progress: bool = True
                    ) -> tuple[dict, list[dict]]:
    """Run the model on every sample. Returns the COCO ground truth (a dict, as MTTR's
    ``create_gt_in_coco_format.py`` writes it) and the COCO results list
    ``[{"image_id", "category_id": 1, "segmentation": RLE, "score"}]``, one per sample, both
    in the order of ``samples``. Each video is decoded once; the sentences of one annotated
    frame share one backbone pass. ``source_file``: where the samples were listed (named by
    the error of a duplicated image id)."""
    length = clip_length(predictor)
    seen = set()
    for s in samples:
        if s.image_id in seen:
            raise RVOSError(f"sample {s.image_id} is listed twice", source_file)
        seen.add(s.image_id)
    by_video: dict[str, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
    for k, s in enumerate(samples):
        by_video[s.video][s.frame_index].append(k)
    images: list[dict | None] = [None] * len(samples)
    annotations: list[dict | None] = [None] * len(samples)
    predictions: list[dict | None] = [None] * len(samples)
    with tqdm(total=len(samples), desc="samples", disable=not progress) as bar:
        for video, frames in by_video.items():
            clips = source.read_clips(video, sorted(frames), length)
            for center, members in frames.items():
                texts = [samples[k].text for k in members]
                probs = predictor.predict_window(clips[center].frames, texts)[length // 2]
                gts = [source.read_mask(samples[k]) for k in members]
                for k, gt, p in zip(members, gts, _at_size(probs, gts[0].shape)):
                    if gt.shape != gts[0].shape:
                        raise RVOSError(f"the masks of frame {center + 1} of video {video} "
                                        "differ in size", source_file)
                    image_id = samples[k].image_id
                    rle = mask_rle(gt)
                    images[k] = {"id": image_id, "height": int(gt.shape[0]), "width": int(gt.shape[1])}
                    annotations[k] = {"id": k + 1, "image_id": image_id, "category_id": 1,
                                      "segmentation": rle, "area": float(mask_utils.area(rle)),
                                      "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                                      "iscrowd": 0}
                    pred = p > threshold
                    predictions[k] = {"image_id": image_id, "category_id": 1,
                                      "segmentation": mask_rle(pred),
                                      "score": prediction_score(p, pred)}
                bar.update(len(members))
    gt = {"categories": [{"id": 1, "name": "dummy_class"}], "images": images,
          "annotations": annotations}
    return gt, predictions


def score_samples(gt: dict, predictions: list[dict]) -> dict:
    """:func:`rvos.metrics.a2d.score_a2d` of in-memory ground truth and predictions."""
    return score_a2d(coco_gt_from_dict(gt), predictions)


def _finite(value):
    """JSON-safe copy: NaN becomes null."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def figures(report: dict) -> dict[str, float]:
    """The headline figures of a report: P@K, overall IoU, mean IoU, mAP, AP50, AP75."""
    m = report["map_top1"]
    return {**report["top1"], "mAP": m["mAP 0.5:0.95"], "AP50": m["AP 0.5"], "AP75": m["AP 0.75"]}


def format_report(name: str, split: str, report: dict, length: int) -> str:
    """results.txt: the figures as a table."""
    title = f"{name} {split}: {report['num_samples']} samples, clips of {length} frames"
    precision = {f"P@{t}": report["top1"][f"P@{t}"] for t in PRECISION_THRESHOLDS}
    ious = {"overall IoU": report["top1"]["overall_iou"], "mean IoU": report["top1"]["mean_iou"]}
    return "\n\n".join([
        format_table(title, [("top-1", {**precision, **ious})]),
        format_table("COCO mAP (useCats=0), one mask per sample", [("top-1", report["map_top1"])]),
    ])


def _csv_text(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else [])
    writer.writeheader()
    for row in rows:
        writer.writerow({k: repr(v) if isinstance(v, float) else v for k, v in row.items()})
    return buffer.getvalue()


def evaluate_samples(request: EvaluationRequest, benchmark: str, name: str, split: str,
                     source: FrameSource, samples: Sequence[FrameSample], source_file: Path
                     ) -> ProtocolReport:
    """Predict, write and score ``samples`` (the first ``request.max_samples`` when set).

    Writes under ``request.stage``: ``<benchmark>_ground_truth_coco.json``,
    ``<benchmark>_predictions_coco.json``, ``<benchmark>.json`` (the figures, unrounded),
    ``<benchmark>_per_sample.csv`` and ``results.txt``."""
    samples = list(samples[:request.max_samples] if request.max_samples else samples)
    if not samples:
        raise RVOSError(f"no {name} samples to evaluate", source_file)
    gt, predictions = predict_samples(request.predictor, source, samples, request.threshold,
                                      source_file, request.progress)
    stage = request.stage
    gt_path = write_file_atomic(stage / f"{benchmark}_ground_truth_coco.json", json.dumps(gt))
    pred_path = write_file_atomic(stage / f"{benchmark}_predictions_coco.json",
                                  json.dumps(predictions))
    report = evaluate_a2d(gt_path, pred_path)      # the files, as `--benchmark` scores them
    rows_by_id = {r["image_id"]: r for r in report.pop("rows")}
    rows = [{"image_id": s.image_id, "video": s.video, "frame": s.frame_index + 1,
             "text": s.text, **{k: v for k, v in rows_by_id[s.image_id].items() if k != "image_id"}}
            for s in samples]
    length = clip_length(request.predictor)
    figures_path = write_file_atomic(stage / f"{benchmark}.json", json.dumps(_finite({
        "benchmark": benchmark, "split": split, "data": str(request.root), "window": length,
        "threshold": request.threshold,
        "score": "mean probability inside the predicted mask; one prediction per sample, so "
                 "map_all_queries = map_top1", **report}), indent=2))
    csv_path = write_file_atomic(stage / f"{benchmark}_per_sample.csv", _csv_text(rows))
    table = format_report(name, split, report, length)
    write_file_atomic(stage / "results.txt", table + "\n")
    return ProtocolReport(table, {"figures": figures_path, "per sample": csv_path,
                                  "ground truth": gt_path, "predictions": pred_path})


def samples_validation_summary(predictor: Predictor, source: FrameSource,
                               samples: Sequence[FrameSample], split: str, threshold: float,
                               source_file: Path, progress: bool = True) -> dict:
    """``{"split", "overall": {"JF": mAP, mAP, AP50, AP75, P@K, overall_iou, mean_iou,
    "count"}}``: best checkpoints are chosen by mAP 0.5:0.95, as MTTR's trainer keeps its
    best A2D-Sentences checkpoint (higher is better)."""
    gt, predictions = predict_samples(predictor, source, samples, threshold, source_file, progress)
    values = figures(score_samples(gt, predictions))
    return {"split": split, "overall": {"JF": values["mAP"], **values, "count": len(samples)}}


def output_names(benchmark: str) -> tuple[str, ...]:
    """The files :func:`evaluate_samples` writes for ``benchmark``."""
    return (f"{benchmark}.json", f"{benchmark}_ground_truth_coco.json",
            f"{benchmark}_predictions_coco.json", f"{benchmark}_per_sample.csv", "results.txt")
