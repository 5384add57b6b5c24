"""Output folders that never look complete when they are not.

Commands write into a hidden sibling ``.<name>.partial-<pid>`` and rename it into place only
when everything is written; an existing folder that already holds results is refused
unless ``overwrite`` is set.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from rvos.errors import RVOSError


def check_fresh_output(out: Path, overwrite: bool) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise RVOSError("output folder already holds results; pass --overwrite to replace "
                        "them or choose another folder", out)


@contextmanager
def staged_output(out: str | Path, overwrite: bool = False):
    """Yield a temporary folder; on success it replaces ``out``, on failure it is removed."""
    out = Path(out)
    check_fresh_output(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    stage.rename(out)
