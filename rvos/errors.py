"""User-facing errors: one clear message naming the file and what is wrong.

The CLI catches :class:`RVOSError` and prints its message with a non-zero exit instead of a
traceback; library users can catch it too.
"""

from __future__ import annotations

from pathlib import Path


class RVOSError(Exception):
    """An error caused by the user's input (a file, a folder, an argument)."""

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = None if path is None else Path(path)
        super().__init__(f"{self.path}: {message}" if path is not None else message)
