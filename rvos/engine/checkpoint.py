"""Checkpoints: safetensors weights + a JSON of the config and metadata, and (for resuming)
a ``.state.pt`` with optimizer, scheduler, scaler and RNG states.

A checkpoint named ``NAME`` in a folder is the files ``NAME.safetensors``, ``NAME.json``
and optionally ``NAME.state.pt``. Every file is written to a temporary name and renamed;
the JSON, renamed last, records the step of the weights, so a checkpoint whose writing was
interrupted is recognised as incomplete instead of being loaded half-old, half-new.
Loading uses ``torch.load(weights_only=True)`` only.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from rvos.config import Config, from_dict, to_dict
from rvos.errors import RVOSError

FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    """A loaded checkpoint: weights, config, metadata and optional training state."""

    weights: dict[str, torch.Tensor]
    config: Config
    meta: dict[str, Any]
    training_state: dict[str, Any] | None


def checkpoint_paths(path: str | Path) -> tuple[Path, Path, Path]:
    """(weights, json, state) paths for a checkpoint given by any of its files or stem."""
    path = Path(path)
    name = path.name
    for suffix in (".safetensors", ".json", ".state.pt"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    stem = path.with_name(name)
    return (stem.with_name(name + ".safetensors"), stem.with_name(name + ".json"),
            stem.with_name(name + ".state.pt"))


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        tmp.replace(path)
    finally:
        if tmp.exists():
            tmp.unlink()


def architecture_signature(cfg: Config) -> dict[str, Any]:
    """The config fields that decide the shapes of the weights."""
    model = to_dict(cfg.model)
    signature = {"kind": cfg.model.kind, "text": model["text"]["name"]}
    signature.update(model[cfg.model.kind] if cfg.model.kind in model else {})
    signature.pop("backbone_weights", None)
    return signature


def save_checkpoint(path: str | Path, model: nn.Module, cfg: Config, meta: dict[str, Any],
                    training_state: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint atomically; returns the weights path."""
    weights_path, json_path, state_path = checkpoint_paths(path)
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    step = int(meta.get("step", 0))
    _atomic(weights_path, lambda p: save_file(state, str(p), metadata={"step": str(step)}))
    if training_state is not None:
        _atomic(state_path, lambda p: torch.save({**training_state, "step": step}, p))
    elif state_path.exists():
        state_path.unlink()
    document = {
        "format_version": FORMAT_VERSION,
        "architecture": architecture_signature(cfg),
        "config": to_dict(cfg),
        "meta": {**meta, "step": step},
        "has_training_state": training_state is not None,
    }
    _atomic(json_path, lambda p: p.write_text(json.dumps(document, indent=1)))
    return weights_path


def load_checkpoint(path: str | Path, with_training_state: bool = False) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`, with clear errors."""
    weights_path, json_path, state_path = checkpoint_paths(path)
    if not weights_path.is_file():
        raise RVOSError("checkpoint weights not found", weights_path)
    if not json_path.is_file():
        raise RVOSError("checkpoint is missing its config/metadata JSON "
                        f"(expected {json_path.name} beside the weights)", json_path)
    try:
        document = json.loads(json_path.read_text())
        config = from_dict(Config, document["config"])
        meta = document["meta"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise RVOSError(f"checkpoint JSON is corrupt or of another format ({e})", json_path) from None
    try:
        weights = load_file(str(weights_path))
        from safetensors import safe_open

        with safe_open(str(weights_path), "pt") as f:
            weights_step = int((f.metadata() or {}).get("step", meta.get("step", 0)))
    except Exception as e:
        raise RVOSError(f"cannot read checkpoint weights ({type(e).__name__}: {e})",
                        weights_path) from None
    if weights_step != int(meta.get("step", 0)):
        raise RVOSError(f"checkpoint is incomplete: weights are from step {weights_step} but "
                        f"the JSON says step {meta.get('step')} (interrupted write?)", weights_path)
    training_state = None
    if with_training_state:
        if not state_path.is_file():
            raise RVOSError("checkpoint has no training state to resume from", state_path)
        try:
            training_state = torch.load(state_path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise RVOSError(f"cannot read training state ({type(e).__name__}: {e})",
                            state_path) from None
        if int(training_state.get("step", -1)) != weights_step:
            raise RVOSError(f"training state is from step {training_state.get('step')}, weights "
                            f"from step {weights_step} (interrupted write?)", state_path)
    return Checkpoint(weights, config, meta, training_state)


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
    model.load_state_dict(checkpoint.weights)
