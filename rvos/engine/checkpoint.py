"""Checkpoints: ONE safetensors file holding the weights, the config and metadata, and (for
resuming) the optimizer, scheduler, scaler and RNG states.

A checkpoint named ``NAME`` is the file ``NAME.safetensors``:

- the model's tensors under their state-dict names (any safetensors reader sees them);
- the JSON document (format version, architecture, config, metadata) in the file's
  metadata under ``rvos_checkpoint``;
- optionally the training state as one uint8 tensor ``__rvos_training_state__``: the bytes
  of ``torch.save(state)``, read back with ``torch.load(weights_only=True)``.

Writing is atomic and durable: the whole file goes to a hidden temporary sibling, is
fsynced, renamed over ``NAME.safetensors`` in one ``os.replace`` and the folder is fsynced.
A kill at any moment leaves either the previous checkpoint or the new one, never a mix; a
failed write (disk full, read-only folder) is an :class:`RVOSError` that keeps the previous
checkpoint. Temporaries of killed writes are removed by the next save.

Checkpoints of the earlier three-file format (``NAME.safetensors`` + ``NAME.json`` +
``NAME.state.pt``) are still read.
"""

from __future__ import annotations

import errno
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes
from torch import nn

from rvos.config import Config, from_dict, to_dict, upgrade_config_dict
from rvos.errors import RVOSError

FORMAT_VERSION = 2
SUFFIX = ".safetensors"
DOCUMENT_KEY = "rvos_checkpoint"              # safetensors metadata key of the JSON document
STATE_KEY = "__rvos_training_state__"         # uint8 tensor: torch.save bytes of the state
LEGACY_SUFFIXES = (".json", ".state.pt")      # sidecars of the format-1 (three-file) layout


@dataclass
class Checkpoint:
    """A loaded checkpoint: weights, config, metadata and optional training state."""

    weights: dict[str, torch.Tensor]
    config: Config
    meta: dict[str, Any]
    training_state: dict[str, Any] | None


def checkpoint_file(path: str | Path) -> Path:
    """The file of the checkpoint ``path`` names: ``NAME``, ``NAME.safetensors``, or a
    format-1 sidecar (``NAME.json``, ``NAME.state.pt``) all give ``NAME.safetensors``."""
    path = Path(path).expanduser()
    name = path.name
    for suffix in (SUFFIX, *LEGACY_SUFFIXES):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return path.with_name(name + SUFFIX)


def legacy_sidecars(file: Path) -> tuple[Path, Path]:
    """(json, state) paths of the format-1 layout beside ``NAME.safetensors``."""
    stem = file.name[: -len(SUFFIX)]
    return file.with_name(stem + ".json"), file.with_name(stem + ".state.pt")


def architecture_signature(cfg: Config) -> dict[str, Any]:
    """The config fields that decide the shapes of the weights."""
    model = to_dict(cfg.model)
    signature = {"kind": cfg.model.kind, "text": model["text"]["name"]}
    signature.update(model[cfg.model.kind] if cfg.model.kind in model else {})
    if cfg.model.kind == "fewshot":     # the grounding model it extends
        signature["grounding"] = {k: v for k, v in model["grounding"].items()
                                  if k != "backbone_weights"}
    signature.pop("backbone_weights", None)
    if cfg.model.kind == "referformer":  # how inference is scheduled, and where the tokenizer is
        signature.pop("inference", None)
        signature["text"] = {k: v for k, v in signature["text"].items() if k != "tokenizer"}
    return signature


# --------------------------------------------------------------------------- writing
def _os_reason(e: OSError) -> str:
    if e.errno == errno.ENOSPC:
        return "no space left on the device"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "the folder is not writable"
    return e.strerror or str(e)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:         # another user's live process
        return True
    return True


def remove_stale_temporaries(file: Path) -> None:
    """Remove temporaries of this checkpoint left by killed writes (``.NAME.*.tmp<pid>``
    of a process that no longer runs); another live process's temporaries are kept."""
    if not file.parent.is_dir():
        return
    names = [file.name, *(p.name for p in legacy_sidecars(file))]
    for entry in file.parent.iterdir():
        for name in names:
            prefix = f".{name}.tmp"
            if entry.name.startswith(prefix) and entry.name[len(prefix):].isdigit():
                pid = int(entry.name[len(prefix):])
                if pid == os.getpid() or not _pid_alive(pid):
                    entry.unlink(missing_ok=True)


def fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (no-op where folders cannot be opened)."""
    if os.name == "nt":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(file: Path, data: bytes) -> None:
    """Write ``data`` to ``file`` through a fsynced temporary and one rename; RVOSError
    (the previous ``file`` untouched) when the write fails."""
    tmp = file.with_name(f".{file.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, file)
    except OSError as e:
        raise RVOSError(f"cannot write checkpoint ({_os_reason(e)}); the previous checkpoint "
                        "is kept", file) from None
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
    try:
        fsync_folder(file.parent)
    except OSError as e:
        raise RVOSError(f"checkpoint written but its folder could not be synced "
                        f"({_os_reason(e)})", file.parent) from None


def _state_tensor(training_state: dict[str, Any]) -> torch.Tensor:
    buffer = io.BytesIO()
    torch.save(training_state, buffer)
    return torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)


def save_checkpoint(path: str | Path, model: nn.Module, cfg: Config, meta: dict[str, Any],
                    training_state: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint as one file, atomically; returns its path (``NAME.safetensors``)."""
    file = checkpoint_file(path)
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(file)
    except OSError as e:
        raise RVOSError(f"cannot write checkpoint ({_os_reason(e)})", file.parent) from None
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if STATE_KEY in tensors:
        raise RVOSError(f"the model has a tensor named {STATE_KEY}, a name checkpoints reserve")
    step = int(meta.get("step", 0))
    if training_state is not None:
        tensors[STATE_KEY] = _state_tensor({**training_state, "step": step})
    document = {
        "format_version": FORMAT_VERSION,
        "architecture": architecture_signature(cfg),
        "config": to_dict(cfg),
        "meta": {**meta, "step": step},
        "has_training_state": training_state is not None,
    }
    data = safetensors_bytes(tensors, metadata={DOCUMENT_KEY: json.dumps(document)})
    write_atomically(file, data)
    for sidecar in legacy_sidecars(file):    # a format-1 checkpoint this one replaced
        sidecar.unlink(missing_ok=True)
    return file


# --------------------------------------------------------------------------- reading
def load_checkpoint(path: str | Path, with_training_state: bool = False,
                    require_training_state: bool = True) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` (or a format-1 one), with
    clear errors. ``with_training_state``: read the training state too (an error when the
    checkpoint has none, unless ``require_training_state`` is False: then it is None)."""
    file = checkpoint_file(path)
    if not file.is_file():
        raise RVOSError("checkpoint not found (give NAME or NAME.safetensors)", file)
    try:
        with safe_open(str(file), "pt") as f:
            metadata = f.metadata() or {}
            if DOCUMENT_KEY not in metadata:
                return _load_legacy(file, with_training_state, require_training_state)
            document = _parse_document(metadata[DOCUMENT_KEY], file)
            weights = {k: f.get_tensor(k) for k in f.keys() if k != STATE_KEY}
            blob = f.get_tensor(STATE_KEY) if with_training_state and STATE_KEY in f.keys() else None
    except RVOSError:
        raise
    except Exception as e:   # truncated or foreign file: safetensors raises its own types
        raise RVOSError(f"cannot read checkpoint ({type(e).__name__}: {e})", file) from None
    config, meta = document
    training_state = None
    if with_training_state and (blob is not None or require_training_state):
        if blob is None:
            raise RVOSError("checkpoint has no training state to resume from (it holds "
                            "weights only)", file)
        training_state = _load_state(io.BytesIO(blob.numpy().tobytes()), file)
    return Checkpoint(weights, config, meta, training_state)


def _parse_document(text: str, source: Path) -> tuple[Config, dict[str, Any]]:
    try:
        document = json.loads(text)
        return (from_dict(Config, upgrade_config_dict(document["config"])),
                dict(document["meta"]))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise RVOSError(f"checkpoint metadata is corrupt or of another format ({e})",
                        source) from None


def _load_state(source, name: Path) -> dict[str, Any]:
    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as e:
        raise RVOSError(f"cannot read training state ({type(e).__name__}: {e})", name) from None
    if not isinstance(state, dict):
        raise RVOSError("training state is not a dictionary", name)
    return state


def _load_legacy(weights_path: Path, with_training_state: bool,
                 require_training_state: bool) -> Checkpoint:
    """A format-1 checkpoint: weights file + JSON + optional ``.state.pt`` beside it."""
    json_path, state_path = legacy_sidecars(weights_path)
    if not json_path.is_file():
        raise RVOSError("not an rvos checkpoint: the file holds no rvos metadata and no "
                        f"{json_path.name} lies beside it", weights_path)
    config, meta = _parse_document(_read_text(json_path), json_path)
    try:
        with safe_open(str(weights_path), "pt") as f:
            weights = {k: f.get_tensor(k) for k in f.keys()}
            weights_step = int((f.metadata() or {}).get("step", meta.get("step", 0)))
    except Exception as e:
        raise RVOSError(f"cannot read checkpoint weights ({type(e).__name__}: {e})",
                        weights_path) from None
    if weights_step != int(meta.get("step", 0)):
        raise RVOSError(f"checkpoint is incomplete: weights are from step {weights_step} but "
                        f"the JSON says step {meta.get('step')} (interrupted write?)", weights_path)
    training_state = None
    if with_training_state and (state_path.is_file() or require_training_state):
        if not state_path.is_file():
            raise RVOSError("checkpoint has no training state to resume from", state_path)
        training_state = _load_state(state_path, state_path)
        if int(training_state.get("step", -1)) != weights_step:
            raise RVOSError(f"training state is from step {training_state.get('step')}, weights "
                            f"from step {weights_step} (interrupted write?)", state_path)
    return Checkpoint(weights, config, meta, training_state)


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise RVOSError(f"cannot read checkpoint metadata ({e})", path) from None


def load_weights_into(model: nn.Module, checkpoint: Checkpoint, source: str | Path,
                      expected: Config | None = None) -> None:
    """Load checkpoint weights, refusing a checkpoint of another architecture."""
    if expected is not None:
        have, want = architecture_signature(checkpoint.config), architecture_signature(expected)
        if have != want:
            diff = {k: (have.get(k), want.get(k)) for k in set(have) | set(want)
                    if have.get(k) != want.get(k)}
            raise RVOSError("checkpoint is of another architecture than the config "
                            f"(checkpoint vs config: {diff})", source)
    missing, unexpected = [], []
    own = model.state_dict()
    for key in own:
        if key not in checkpoint.weights:
            missing.append(key)
    for key, value in checkpoint.weights.items():
        if key not in own:
            unexpected.append(key)
        elif own[key].shape != value.shape:
            raise RVOSError(f"checkpoint tensor {key} has shape {tuple(value.shape)}, the model "
                            f"expects {tuple(own[key].shape)} (another architecture?)", source)
    if missing or unexpected:
        raise RVOSError(f"checkpoint does not fit the model: {len(missing)} missing tensors "
                        f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. "
                        f"{unexpected[:3]}) (another architecture?)", source)
    for module in model.modules():      # trained text weights need the real tokenizer
        if getattr(module, "stand_in_tokenizer", False):
            module.ensure_real_tokenizer()
    model.load_state_dict(checkpoint.weights)
