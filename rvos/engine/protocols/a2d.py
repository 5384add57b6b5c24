"""A2D-Sentences: ``rvos evaluate --dataset a2d --data <a2d_sentences root> --split test``.

The test split's samples (:mod:`rvos.data.a2d`) are segmented and scored as in
:mod:`rvos.engine.protocols.annotated_frames` (MTTR's protocol): P@0.5..0.9, overall IoU,
mean IoU and COCO mAP 0.5:0.95 of one mask per sample.
"""

from __future__ import annotations

from rvos.config import Config
from rvos.data.a2d import A2DLayout, training_layout, validation_samples
from rvos.engine.protocols import EvaluationRequest, ProtocolReport
from rvos.engine.protocols.annotated_frames import (evaluate_samples, output_names,
                                                    samples_validation_summary)
from rvos.errors import RVOSError
from rvos.inference import Predictor

OUTPUTS = output_names("a2d")


def evaluate(request: EvaluationRequest) -> ProtocolReport:
    """a2d.json, a2d_per_sample.csv, a2d_ground_truth_coco.json, a2d_predictions_coco.json
    and results.txt for the one split of ``request`` (test, or train)."""
    if len(request.splits) != 1:
        raise RVOSError(f"A2D-Sentences is evaluated one split at a time, got {request.splits}")
    split = request.splits[0]
    layout = A2DLayout(request.root)
    samples = layout.samples(split, progress=request.progress)
    return evaluate_samples(request, "a2d", "A2D-Sentences", split, layout, samples,
                            layout.sentences_path)


def validation_summary(predictor: Predictor, cfg: Config, progress: bool = True) -> dict:
    """mAP (chosen by), P@K, IoUs on the first ``data.max_val_samples`` samples of
    ``data.val_split``."""
    layout = training_layout(cfg.data.root)
    return samples_validation_summary(predictor, layout, validation_samples(cfg, layout),
                                      cfg.data.val_split, cfg.eval.threshold,
                                      layout.sentences_path, progress)
