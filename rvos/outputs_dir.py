"""Output folders: made, marked and replaced so that nothing of the user's is lost.

Every output folder rvos creates holds a marker file, :data:`MARKER` (JSON: the command that
made it, its process, whether it is complete). ``--overwrite`` only ever replaces a folder
with that marker; never a file, a symbolic link, a folder without the marker, the working
directory, the home or repository folder, or a parent of any of them. Without
``--overwrite`` nothing is removed.

Two ways of writing:

* :func:`staged_output` (predict, evaluate, data synth, a demo's parts): everything is
  written into a hidden sibling ``.<name>.partial-<pid>`` and renamed into place when
  complete, so ``<name>`` is always either the previous complete output or the new one.
* :func:`staged_results` (``evaluate --benchmark``, whose ``<benchmark>.json`` files share
  one folder): written into a hidden folder inside it, then moved in file by file, the
  file that says "complete" removed first and put last.
* :class:`InPlaceOutput` (a training run, the demo, the quality benchmark): long runs whose
  partial results (checkpoints) must survive a kill are written in place, in a folder whose
  marker says "writing" until they end. A folder being replaced is first moved aside to
  ``.<name>.old-<pid>``; it is removed once the new run has started properly (its
  ``started_when`` files exist) or completed, and restored otherwise.

Leftovers of killed writes (``.<name>.partial-<pid>`` / ``.<name>.old-<pid>`` of processes
that are gone, holding the marker) are cleaned up, or restored, the next time an output of
that name is written; anything else is left alone.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from rvos.errors import RVOSError

MARKER = ".rvos-output"
COMPANIONS = ".rvos-companions"   # in a moved-aside folder: sibling files that belong to it
REPO_ROOT = Path(__file__).resolve().parents[1]
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>partial|old)-(?P<pid>\d+)$")


# ----------------------------------------------------------------------------- processes
def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (Linux /proc), to tell a reused pid from ours."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(marker: dict) -> bool:
    """Whether the process that wrote ``marker`` still runs (on this machine)."""
    pid = marker.get("pid")
    if not isinstance(pid, int) or marker.get("host") != socket.gethostname():
        return False
    if pid == os.getpid():
        return False          # this process: an earlier, finished attempt of ours
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass                                    # another user's live process
    started = _process_start(pid)
    return started is None or marker.get("pid_start") in (None, started)


def _is_dead_pid(pid: int) -> bool:
    """A leftover's pid (from its name) belongs to no running process."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


# ----------------------------------------------------------------------------- the marker
def read_marker(folder: Path) -> dict | None:
    """The marker of ``folder`` ({} when unreadable), or None when it has none (or is a
    symbolic link, which rvos never treats as its own)."""
    folder = Path(folder)
    marker = folder / MARKER
    if folder.is_symlink() or not folder.is_dir() or marker.is_symlink() or not marker.is_file():
        return None
    try:
        data = json.loads(marker.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def is_marked(folder: Path) -> bool:
    """Whether ``folder`` is a real folder that rvos made (it holds the marker)."""
    return read_marker(folder) is not None


def write_marker(folder: Path, command: str, **fields) -> dict:
    """Write (atomically) the marker of ``folder``: rvos version, command, this process,
    and ``fields`` (e.g. ``state="writing"``). Returns what was written."""
    from rvos import __version__

    previous = read_marker(folder) or {}
    data = {"rvos": __version__, "command": command, "argv": sys.argv[1:],
            "created": previous.get("created") or time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "host": socket.gethostname(), "pid": os.getpid(), "pid_start": _process_start(os.getpid()),
            **fields}
    write_file_atomic(Path(folder) / MARKER, json.dumps(data, indent=1) + "\n")
    return data


def write_file_atomic(path: Path, text: str | bytes) -> Path:
    """Write ``path`` through a temporary sibling renamed over it (fsynced): a kill leaves
    the old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(text.encode() if isinstance(text, str) else text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort: not every system can)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- checks
def _protected(path: Path) -> bool:
    """The working directory, the home and repository folders, or a parent of one."""
    path = Path(os.path.realpath(path))
    for keep in (Path.cwd(), Path.home(), REPO_ROOT):
        keep = Path(os.path.realpath(keep))
        if path == keep or path in keep.parents:
            return True
    return path == Path(path.anchor)


def _holds_files(folder: Path) -> bool:
    return any(folder.iterdir())


def check_output_kind(out: Path) -> None:
    """``out`` must be a folder name: not a link, not a file, not a folder we must keep."""
    if out.is_symlink():
        raise RVOSError("is a symbolic link; rvos writes output only into real folders "
                        "(give the folder it points to)", out)
    if out.exists() and not out.is_dir():
        raise RVOSError("exists and is not a folder; choose a new folder name for the output", out)
    existing = next((p for p in Path(os.path.abspath(out)).parents if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise RVOSError("is a file, not a folder; the output cannot go inside it", existing)
    if _protected(out):
        raise RVOSError("is the working directory, the home or repository folder, or a parent "
                        "of one; give the output a folder of its own", out)


def check_output_folder(out: str | Path, overwrite: bool, command: str | None = None) -> None:
    """Raise RVOSError unless ``out`` may receive a new output: absent or empty, or (with
    ``overwrite``) a complete or abandoned folder rvos made, by the same ``command`` when
    one is given (``rvos predict --overwrite`` never replaces a training run)."""
    out = Path(out)
    check_output_kind(out)
    if not out.is_dir() or not _holds_files(out):
        return
    marker = read_marker(out)
    if marker is None:
        raise RVOSError("already exists and is not empty, and rvos did not make it (it has no "
                        f"{MARKER} marker), so it is never replaced, not even with --overwrite; "
                        "choose another folder", out)
    if marker.get("state") == "writing" and _alive(marker):
        raise RVOSError(f"is being written by another rvos process (pid {marker.get('pid')}); "
                        "wait for it or choose another folder", out)
    if not overwrite:
        if marker.get("state") == "writing":
            resume = " (or --resume to continue it)" if marker.get("command") == "train" else ""
            raise RVOSError(f"holds the unfinished output of an interrupted 'rvos "
                            f"{marker.get('command', '?')}'; pass --overwrite to replace it{resume} "
                            "or choose another folder", out)
        raise RVOSError("already holds results; pass --overwrite to replace them or choose "
                        "another folder", out)
    if command is not None and marker.get("command") != command:
        raise RVOSError(f"holds the output of 'rvos {marker.get('command', '?')}', which 'rvos "
                        f"{command} --overwrite' does not replace; choose another folder", out)


def check_inputs_outside(out: str | Path, inputs: dict[str, str | Path | None]) -> None:
    """Raise RVOSError if an input (``{"--checkpoint": path, ...}``) lies in the folder
    ``out`` that would be replaced: replacing it would remove what is being read."""
    out = Path(os.path.realpath(out))
    for option, path in inputs.items():
        if path is None or str(path) == "":
            continue
        real = Path(os.path.realpath(path))
        if real == out or out in real.parents:
            raise RVOSError(f"{option} {path} lies inside this output folder, which would be "
                            "replaced; choose another output folder", out)


def check_fresh_output(out: str | Path, overwrite: bool, command: str | None = None) -> None:
    """Early check of an output folder before costly work: the leftovers of killed writes
    handled, then :func:`check_output_folder`."""
    check_output_kind(Path(out))
    cleanup_leftovers(out)
    check_output_folder(out, overwrite, command)


# ----------------------------------------------------------------------------- removing
def remove_ours(folder: Path) -> bool:
    """Remove ``folder`` if it is a real folder holding the marker, or empty; returns whether
    it was removed. Anything else is left alone."""
    folder = Path(folder)
    if folder.is_symlink() or not folder.is_dir():
        return False
    if is_marked(folder):
        shutil.rmtree(folder)
        return True
    try:
        folder.rmdir()
        return True
    except OSError:
        return False


def _superseded(folder: Path) -> bool:
    """Whether the in-place output ``folder`` has made the folder it replaces unnecessary:
    it completed, or started properly (its marker's ``started_when`` files exist)."""
    marker = read_marker(folder) or {}
    pattern = marker.get("started_when")
    return (marker.get("state") == "done" or bool(marker.get("started"))
            or bool(pattern and any(folder.glob(pattern))))


def _restore(old: Path, out: Path) -> None:
    """Put the moved-aside ``old`` back at ``out``, with its companion files."""
    companions = old / COMPANIONS
    if companions.is_dir() and not companions.is_symlink():
        for item in companions.iterdir():
            target = out.parent / item.name
            if not target.exists() or (target.is_file() and not target.is_symlink()):
                os.replace(item, target)        # a file of the abandoned new output: replaced
        if not any(companions.iterdir()):
            companions.rmdir()
    os.rename(old, out)
    _fsync_dir(out.parent)


def cleanup_leftovers(out: str | Path) -> None:
    """Handle what killed writes of ``out`` left beside it: remove dead processes'
    ``.<name>.partial-<pid>`` folders (and temporary files of that name); put a dead process's ``.<name>.old-<pid>`` back when
    its replacement never started properly, remove it otherwise. Only folders holding the
    marker (or empty) are touched; leftovers of live processes are left alone."""
    out = Path(os.path.abspath(out))
    parent = out.parent
    if not parent.is_dir() or out.is_symlink():
        return
    try:
        entries = list(parent.iterdir())
    except OSError:
        return
    for entry in sorted(entries):
        match = _LEFTOVER.match(entry.name)
        if not match or match["name"] != out.name or not _is_dead_pid(int(match["pid"])):
            continue
        try:
            if match["kind"] == "partial" and entry.is_file() and not entry.is_symlink():
                entry.unlink()          # the temporary file of a killed write_file_atomic
                continue
            if entry.is_symlink() or not entry.is_dir():
                continue
            _handle_leftover(entry, match["kind"], int(match["pid"]), out)
        except OSError:
            pass            # not ours to fix (permissions, a busy disk): left alone


def _handle_leftover(entry: Path, kind: str, pid: int, out: Path) -> None:
    if kind == "partial":
        remove_ours(entry)
        return
    if not is_marked(entry) and _holds_files(entry):
        return
    if not out.exists() and not out.is_symlink():
        _restore(entry, out)                    # killed between the two renames
        return
    marker = read_marker(out)
    if marker is None or marker.get("pid") != pid:
        return                                  # not the folder that replaced it: keep both
    if _superseded(out):
        remove_ours(entry)                      # the new output completed or started properly
    elif remove_ours(out):
        _restore(entry, out)                    # the new one never got going: the old is back


# ----------------------------------------------------------------------------- errors
def os_error(e: OSError, out: Path, outcome: str | None = None) -> RVOSError:
    """An OSError while writing ``out`` as a one-line RVOSError naming the path; ``outcome``
    says what became of ``out`` (default: not written, its earlier content kept)."""
    where = e.filename if e.filename else out
    reason = e.strerror or str(e)
    if e.errno == errno.ENOSPC:
        reason = "no space left on the device"
    outcome = outcome or f"the output {out} was not written (what it held before is kept)"
    return RVOSError(f"{reason}; {outcome}", where)


def _mkdir_parent(out: Path) -> None:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise RVOSError("is a file, not a folder; the output cannot go inside it",
                        next(p for p in [out.parent, *out.parent.parents] if p.exists())) from None
    except OSError as e:
        raise RVOSError(f"cannot create the output's folder ({e.strerror})", e.filename or out.parent) from None


def _new_folder(path: Path, command: str, **fields) -> None:
    """Create ``path`` (our own hidden name: a leftover of this pid is ours) and mark it."""
    if path.exists() or path.is_symlink():
        if not remove_ours(path):
            raise RVOSError("is in the way and was not made by rvos; remove it", path)
    try:
        path.mkdir()
        write_marker(path, command, **fields)
    except OSError as e:
        remove_ours(path)
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise RVOSError(f"cannot write there ({e.strerror})", path.parent) from None
        raise os_error(e, path) from None


# ----------------------------------------------------------------------------- staged
@contextmanager
def staged_output(out: str | Path, overwrite: bool = False, command: str = "rvos"):
    """Yield a hidden, marked staging folder; when the block ends normally it replaces
    ``out`` by a rename (the previous output, if any, is removed only then), when it raises
    the staging folder is removed and ``out`` is left as it was. An OSError in the block
    (disk full, read-only) becomes a one-line RVOSError."""
    out = Path(out)
    check_output_kind(out)
    cleanup_leftovers(out)
    check_output_folder(out, overwrite, command)
    _mkdir_parent(out)
    stage = out.parent / f".{out.name}.partial-{os.getpid()}"
    _new_folder(stage, command, state="writing")
    try:
        yield stage
        write_marker(stage, command, state="done")
        check_output_folder(out, overwrite, command)     # nothing appeared there meanwhile
        _swap_in(stage, out)
    except OSError as e:
        remove_ours(stage)
        raise os_error(e, out) from None
    except BaseException:
        remove_ours(stage)
        raise


def _swap_in(stage: Path, out: Path) -> None:
    """Rename ``stage`` to ``out``; an existing ``out`` (checked: empty or ours) is moved
    aside first and removed after."""
    if not out.exists() or not _holds_files(out):
        os.rename(stage, out)               # replaces an empty folder atomically
        _fsync_dir(out.parent)
        return
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    remove_ours(old)
    os.rename(out, old)
    try:
        os.rename(stage, out)
    except BaseException:
        os.rename(old, out)
        raise
    _fsync_dir(out.parent)
    remove_ours(old)


# ----------------------------------------------------------------------------- shared folders
def results_folder(out: str | Path, names: list[str], overwrite: bool, command: str) -> Path:
    """A folder that collects several commands' results (``bench``'s, ``evaluate
    --benchmark``'s): check, before anything runs, that the results ``names`` may be written
    into ``out``, and create ``out`` (marked) if it is missing. Existing results are replaced
    only with ``overwrite`` and only in a folder rvos made; nothing is removed otherwise."""
    out = Path(out)
    check_output_kind(out)
    for name in names:
        cleanup_leftovers(out / name)       # e.g. put back what a killed --overwrite moved aside
    existing = [out / n for n in names if (out / n).exists() or (out / n).is_symlink()]
    if existing and not overwrite:
        raise RVOSError("already exists; pass --overwrite to replace these results or choose "
                        "another --out", existing[0])
    if existing and not is_marked(out):
        raise RVOSError(f"holds results that rvos did not write (no {MARKER} marker in the "
                        "folder), so they are never replaced, not even with --overwrite; choose "
                        "another --out", out)
    for path in existing:
        if path.is_symlink() or (path.is_dir() and not is_marked(path)):
            raise RVOSError(f"was not made by rvos (a link, or no {MARKER} marker), so it is "
                            "never replaced; remove it yourself or choose another --out", path)
    if not out.is_dir():
        _mkdir_parent(out)
        try:
            out.mkdir()
            write_marker(out, command, state="done")
        except OSError as e:
            raise RVOSError(f"cannot create the results folder ({e.strerror})", e.filename or out) from None
    return out


@contextmanager
def staged_results(out: str | Path, tag: str, owned, complete: str, overwrite: bool, command: str):
    """Yield a hidden staging folder inside the shared results folder ``out``; when the
    block ends normally its files replace the results of ``out`` whose names ``owned(name)``
    accepts (those it did not rewrite are removed): ``complete``, the file that says the
    results are there, is removed first and moved in last, so a kill leaves either the old
    results or no ``complete`` file. Existing results need ``overwrite`` (see
    :func:`results_folder`); ``tag`` names the staging folder ``.<tag>.partial-<pid>``."""
    out = Path(out)
    existing = sorted(p.name for p in out.iterdir() if owned(p.name)) if out.is_dir() else []
    cleanup_leftovers(out / tag)
    results_folder(out, existing, overwrite, command)
    stage = out / f".{tag}.partial-{os.getpid()}"
    _new_folder(stage, command, state="writing")
    try:
        yield stage
        written = sorted(p.name for p in stage.iterdir() if p.name != MARKER and owned(p.name))
        if complete in existing:
            os.unlink(out / complete)
        for name in [n for n in written if n != complete] + [n for n in written if n == complete]:
            os.replace(stage / name, out / name)
        for name in existing:
            if name not in written and (out / name).is_file():
                os.unlink(out / name)
        _fsync_dir(out)
        remove_ours(stage)
    except OSError as e:
        remove_ours(stage)
        raise os_error(e, out, f"the results in {out} were not replaced") from None
    except BaseException:
        remove_ours(stage)
        raise


# ----------------------------------------------------------------------------- in place
class InPlaceOutput:
    """An output folder written in place: ``with InPlaceOutput(...) as folder: ...``.

    Created (or, with ``overwrite``, the previous one moved aside) and marked "writing" on
    entry; marked "done" when the block ends normally. On an error the folder it replaced
    comes back unless the new one started properly (``started_when``, a glob relative to
    the folder, matches, or :meth:`started` was called); a new folder replacing nothing is
    kept, marked unfinished. ``resume`` continues an existing folder and removes nothing.
    ``companions``: names of sibling files that belong to the output (moved aside and
    restored with it). The checks run in the constructor, before any costly set-up.
    """

    def __init__(self, out: str | Path, command: str, overwrite: bool = False, resume: bool = False,
                 started_when: str | None = None, companions: tuple[str, ...] = ()):
        self.out = Path(out)
        self.command, self.overwrite, self.resume = command, overwrite, resume
        self.started_when, self.companions = started_when, tuple(companions)
        self.old: Path | None = None
        check_output_kind(self.out)
        cleanup_leftovers(self.out)
        if resume:
            marker = read_marker(self.out) or {}
            if marker.get("state") == "writing" and _alive(marker):
                raise RVOSError(f"is being written by another rvos process (pid "
                                f"{marker.get('pid')}); wait for it", self.out)
        else:
            check_output_folder(self.out, overwrite, command)

    def __enter__(self) -> Path:
        out = self.out
        _mkdir_parent(out)
        try:
            if not self.resume:
                self.check_again()
                if out.is_dir() and _holds_files(out):
                    self._move_aside()
            if not out.is_dir():
                out.mkdir()
            write_marker(out, self.command, state="writing", started=False,
                         started_when=self.started_when)
        except OSError as e:
            self._restore_old()
            if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise RVOSError(f"cannot write there ({e.strerror})", e.filename or out) from None
            raise os_error(e, out) from None
        return out

    def check_again(self) -> None:
        """The checks of the constructor, repeated just before writing."""
        check_output_folder(self.out, self.overwrite, self.command)

    def _move_aside(self) -> None:
        old = self.out.parent / f".{self.out.name}.old-{os.getpid()}"
        if not remove_ours(old) and old.exists():
            raise RVOSError("is in the way and was not made by rvos; remove it", old)
        os.rename(self.out, old)
        self.old = old
        for name in self.companions:
            item = self.out.parent / name
            if item.exists() and not item.is_symlink():
                (old / COMPANIONS).mkdir(exist_ok=True)
                os.rename(item, old / COMPANIONS / name)

    def _restore_old(self) -> None:
        if self.old is not None and self.old.exists():
            if self.out.exists() and not remove_ours(self.out):
                return
            _restore(self.old, self.out)
        self.old = None

    def _drop_old(self) -> None:
        if self.old is not None:
            remove_ours(self.old)
            self.old = None

    def started(self) -> None:
        """The new output has started properly: the one it replaces is no longer needed."""
        write_marker(self.out, self.command, state="writing", started=True,
                     started_when=self.started_when)
        self._drop_old()

    def __exit__(self, kind, error, tb) -> bool:
        if kind is None:
            try:
                write_marker(self.out, self.command, state="done", started=True,
                             started_when=self.started_when)
            except OSError as e:
                raise os_error(e, self.out) from None
            self._drop_old()
            return False
        outcome = f"{self.out} is kept, marked unfinished"
        if self.old is not None:
            if _superseded(self.out):
                self._drop_old()
            else:
                self._restore_old()
                outcome = f"{self.out} holds its earlier output again"
        if isinstance(error, OSError):
            raise os_error(error, self.out, outcome) from None
        return False
