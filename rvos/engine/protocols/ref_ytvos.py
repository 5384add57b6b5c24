"""The Ref-YouTube-VOS layout (real Ref-YouTube-VOS, our synthetic benchmark, converted
Ref-DAVIS17): a split with annotations is scored per expression (J, F, J&F; see
:mod:`rvos.engine.evaluator`)."""

from __future__ import annotations

from pathlib import Path

from rvos.config import Config
from rvos.data.ytvos import RefYTVOSLayout
from rvos.engine.evaluator import evaluate_layout, format_table, write_results
from rvos.engine.protocols import EvaluationRequest, ProtocolReport
from rvos.inference import Predictor

OUTPUTS = ("metrics.json", "per_expression.csv", "results.txt", "predictions")


def evaluate(request: EvaluationRequest) -> ProtocolReport:
    """metrics.json, per_expression.csv, results.txt (+ predictions/<split>/ with
    ``save_masks``) for every split of ``request``."""
    results = []
    for split in request.splits:
        layout = RefYTVOSLayout(request.root, split)
        masks_out = request.stage / "predictions" / split if request.save_masks else None
        results.append(evaluate_layout(request.predictor, layout, request.threshold,
                                       request.max_samples, masks_out, progress=request.progress))
    paths = write_results(results, request.stage)
    return ProtocolReport(format_table([r.summary() for r in results]),
                          {"metrics": paths["json"], "per expression": paths["csv"]})


def validation_summary(predictor: Predictor, cfg: Config, progress: bool = True) -> dict | None:
    """J, F, J&F on ``cfg.data.val_split`` (at most ``data.max_val_samples`` expressions), or
    None when that split has no annotations."""
    d = cfg.data
    layout = RefYTVOSLayout(Path(d.root), d.val_split)
    if not layout.has_annotations:
        return None
    return evaluate_layout(predictor, layout, cfg.eval.threshold,
                           max_samples=d.max_val_samples, progress=progress).summary()
