"""Optional dependencies (``pip install 'rvos[tensorboard]'``, ``'rvos[plots]'``, ``'rvos[all]'``):
what needs them is skipped when they are absent, with one warning per process saying what
is missing and how to install it."""

from __future__ import annotations

import importlib
import logging
from types import ModuleType

logger = logging.getLogger(__name__)

EXTRAS = {"tensorboard": "tensorboard", "matplotlib": "plots"}   # module -> the extra installing it
_warned: set[str] = set()


def optional_module(name: str, skipped: str) -> ModuleType | None:
    """The module ``name`` (a key of ``EXTRAS``), or None when it is not installed; then
    ``skipped`` (e.g. "no curves.png") is logged as a warning, once per process and module."""
    try:
        return importlib.import_module(name)
    except ImportError:
        if name not in _warned:
            _warned.add(name)
            logger.warning(f"{name} is not installed, {skipped} (pip install 'rvos[{EXTRAS[name]}]' "
                           "adds it)")
        return None
