"""JHMDB-Sentences: ``rvos evaluate --dataset jhmdb --data <jhmdb_sentences root>``.

MTTR's samples (three frames per video, :mod:`rvos.data.jhmdb`) are segmented and scored
as A2D-Sentences is (:mod:`rvos.engine.protocols.annotated_frames`): P@0.5..0.9, overall
IoU, mean IoU and COCO mAP 0.5:0.95 of one mask per sample. The set has no splits; its one
evaluation set is called ``test``, as MTTR calls it.
"""

from __future__ import annotations

from rvos.config import Config
from rvos.data.jhmdb import JHMDBLayout, validation_samples
from rvos.engine.protocols import EvaluationRequest, ProtocolReport
from rvos.engine.protocols.annotated_frames import (evaluate_samples, output_names,
                                                    samples_validation_summary)
from rvos.errors import RVOSError
from rvos.inference import Predictor

OUTPUTS = output_names("jhmdb")


def evaluate(request: EvaluationRequest) -> ProtocolReport:
    """jhmdb.json, jhmdb_per_sample.csv, jhmdb_ground_truth_coco.json,
    jhmdb_predictions_coco.json and results.txt."""
    if request.splits != ["test"]:
        raise RVOSError(f"JHMDB-Sentences has one evaluation set, 'test'; got {request.splits}")
    layout = JHMDBLayout(request.root)
    return evaluate_samples(request, "jhmdb", "JHMDB-Sentences", "test", layout, layout.samples,
                            layout.metadata_path)


def validation_summary(predictor: Predictor, cfg: Config, progress: bool = True) -> dict:
    """mAP (chosen by), P@K, IoUs on the first ``data.max_val_samples`` samples."""
    layout = JHMDBLayout(cfg.data.root)
    return samples_validation_summary(predictor, layout, validation_samples(cfg, layout),
                                      "test", cfg.eval.threshold, layout.metadata_path, progress)
