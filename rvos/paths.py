"""Paths made from data: ids read from files become single, checked path components.

Dataset files name videos, expressions, objects and frames, and rvos turns those names into
paths (``<root>/JPEGImages/<video>/<frame>.jpg``, ``<out>/Annotations/<video>/<exp_id>/...``,
zip entries). A name such as ``../../x`` or ``/etc`` would then read or write outside the
folder it belongs to, so every such name is checked where it is read
(:func:`check_component`) and again where a path is built from it (:func:`safe_join`).
A bad name is an :class:`RVOSError` naming the file it came from.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath

from rvos.errors import RVOSError

# Characters that end or split a path component (NUL ends a C string; "/" and "\\" separate
# components on POSIX and Windows).
_FORBIDDEN = ("\0", "/", "\\")


def component_problem(name: object) -> str | None:
    """Why ``name`` cannot be one path component, or None when it can."""
    if not isinstance(name, str):
        return f"must be a string, got {type(name).__name__}"
    if not name:
        return "is empty"
    if name in (".", ".."):
        return "is a relative folder reference"
    for char in _FORBIDDEN:
        if char in name:
            return f"contains {char!r}"
    if any(ord(c) < 32 for c in name):
        return "contains a control character"
    return None


def check_component(name: object, what: str, source: str | Path | None = None) -> str:
    """Return ``name`` when it is a safe single path component (not empty, not ``.``/``..``,
    no separator, NUL or control character); else
    raise :class:`RVOSError` naming ``source``, the file the name was read from.

    what: what the name is, for the message (e.g. ``"video id"``).
    """
    problem = component_problem(name)
    if problem is not None:
        raise RVOSError(f"{what} {name!r} {problem}; it must be one file or folder name", source)
    return name


def safe_join(root: str | Path, *names: str, what: str = "name",
              source: str | Path | None = None) -> Path:
    """``root / names[0] / names[1] ...`` after checking each name with
    :func:`check_component` and that the result lies under ``root`` (lexically: links
    inside the data, e.g. linked frames, are allowed to point elsewhere)."""
    for name in names:
        check_component(name, what, source)
    path = Path(root).joinpath(*names)
    base = os.path.normpath(os.path.abspath(root))
    full = os.path.normpath(os.path.abspath(path))
    if os.path.commonpath([base, full]) != base:
        raise RVOSError(f"{what} path {path} leaves its folder {root}", source)
    return path


def safe_zip_entry(*names: str, what: str = "name", source: str | Path | None = None) -> str:
    """A relative zip entry ``a/b/c`` from checked names (no absolute or ``..`` entry)."""
    for name in names:
        check_component(name, what, source)
    entry = PurePosixPath(*names)
    if entry.is_absolute() or ".." in entry.parts:
        raise RVOSError(f"zip entry {entry} leaves the archive root", source)
    return str(entry)


def file_problem(path: Path) -> str | None:
    """Why ``path`` is not a usable data file (missing, not a file, empty), or None."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return "file not found"
    except OSError as e:
        return f"cannot access ({e.strerror or e})"
    if not stat.S_ISREG(st.st_mode):
        return "not a file"
    if st.st_size == 0:
        return "empty file"
    return None
