"""Training and evaluation engine: trainers, evaluator, checkpoints."""

from __future__ import annotations

from pathlib import Path


def make_trainer(cfg, run_dir: str | Path | None = None, progress: bool = True):
    """The trainer for ``cfg.model.kind``: the clip :class:`~rvos.engine.trainer.Trainer`
    (baseline, query), the staged
    :class:`~rvos.engine.grounding_trainer.GroundingTrainer` (grounding), the episodic
    :class:`~rvos.engine.fewshot_trainer.FewShotTrainer` (fewshot) or, for a query
    config with ``train.feature_cache``, the
    :class:`~rvos.engine.query_cache_trainer.QueryCacheTrainer`. All have ``fit()``,
    ``resume()`` and a ``state`` with ``global_step`` and ``epoch``."""
    if cfg.model.kind == "grounding":
        from rvos.engine.grounding_trainer import GroundingTrainer

        return GroundingTrainer(cfg, run_dir, progress)
    if cfg.model.kind == "fewshot":
        from rvos.engine.fewshot_trainer import FewShotTrainer

        return FewShotTrainer(cfg, run_dir, progress)
    if cfg.train.feature_cache:
        from rvos.engine.query_cache_trainer import QueryCacheTrainer

        return QueryCacheTrainer(cfg, run_dir, progress)
    from rvos.engine.trainer import Trainer

    return Trainer(cfg, run_dir, progress)
