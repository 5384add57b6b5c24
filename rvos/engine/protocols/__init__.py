"""``rvos evaluate --checkpoint ... --dataset NAME``: from a benchmark's official files to its
official figures, or to the submission its server takes.

One module per benchmark (:data:`PROTOCOLS`); each runs the model over the evaluation split
as that benchmark's papers do and scores the output with ``rvos.metrics``. A module has

* ``OUTPUTS``: the names it may write at the top of the output folder (``--overwrite``
  replaces a folder only when it holds nothing else);
* ``evaluate(request: EvaluationRequest) -> ProtocolReport``: writes every file under
  ``request.stage`` (a staged output folder: earlier results are replaced only as a whole,
  and only with ``--overwrite``) and returns the table to print;
* optionally ``SHARDED = True`` and ``shardable(request) -> bool``: under torchrun the ranks
  share the samples (``request.shard``, and ``shard=`` of ``validation_summary``); other
  protocols run on rank 0 alone;
* ``validation_summary(predictor, cfg, progress) -> dict | None``: the figures training
  validation logs, ``{"split": ..., "overall": {"JF": <the figure best checkpoints are
  chosen by, higher is better>, <other figures>...}}``, None where the split cannot be
  scored.
"""

from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from rvos.errors import RVOSError

if TYPE_CHECKING:                       # the CLI reads PROTOCOLS without importing torch
    from rvos.engine.distributed import Shard
    from rvos.inference import Predictor

PROTOCOLS = {
    "ref-ytvos": "rvos.engine.protocols.ref_ytvos",   # also synthetic and converted sets
    "ref-davis": "rvos.engine.protocols.ref_davis",
    "a2d": "rvos.engine.protocols.a2d",
    "jhmdb": "rvos.engine.protocols.jhmdb",
    "mevis": "rvos.engine.protocols.mevis",
    "refcoco": "rvos.engine.protocols.refcoco",
}


@dataclass
class EvaluationRequest:
    """What ``rvos evaluate --checkpoint`` asks of a protocol.

    ``options`` is the parsed command line, for a protocol's own options (``--zip``,
    ``--expressions``...)."""

    predictor: Predictor
    root: Path                     # the benchmark's official root (--data)
    splits: list[str]
    stage: Path | None             # staged output folder: write everything under it (None:
                                   # a rank > 0 of a sharded evaluation, which writes nothing)
    threshold: float = 0.5
    max_samples: int = 0           # 0: every sample
    save_masks: bool = False
    progress: bool = True
    options: argparse.Namespace = field(default_factory=argparse.Namespace)
    shard: Shard | None = None     # torchrun: this rank's share (protocols with ``shardable``)


@dataclass
class ProtocolReport:
    """The table to print, and the files written (name -> path under the stage)."""

    table: str
    files: dict[str, Path]


SUBMISSION_ZIP = "submission.zip"


def submission_zip_name(request: EvaluationRequest) -> str:
    """``--zip``: the submission zip's file name inside the output folder (nothing is
    written outside it); ``submission.zip`` by default."""
    from rvos.paths import check_component

    name = getattr(request.options, "zip", None) or SUBMISSION_ZIP
    check_component(name, "--zip (a file name inside --out)")
    if not name.endswith(".zip"):
        raise RVOSError(f"--zip {name!r}: give a file name ending in .zip (it is written "
                        "inside the output folder)")
    return name


def protocol_module(name: str) -> ModuleType:
    """The protocol module of benchmark ``name`` (RVOSError naming the choices otherwise)."""
    if name not in PROTOCOLS:
        raise RVOSError(f"unknown dataset {name!r}; choose one of {', '.join(PROTOCOLS)}")
    return importlib.import_module(PROTOCOLS[name])
