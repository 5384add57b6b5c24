"""``rvos convert``: a released ReferFormer-layout ``.pth`` (ReferFormer, or a method built
on its layout: :mod:`rvos.models.referformer.families`) -> an rvos checkpoint.

The result is one self-contained ``NAME.safetensors`` (weights, the architecture read off the
official tensors, and the official inference recipe) that ``rvos predict --checkpoint``
and :class:`rvos.inference.Predictor` take like any rvos checkpoint.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from rvos.config import Config, validate_config
from rvos.engine.checkpoint import checkpoint_file, save_checkpoint
from rvos.errors import RVOSError
from rvos.models.referformer.config import ReferFormerConfig
from rvos.models.referformer.convert import read_official_checkpoint
from rvos.models.referformer.families import detect_family, family_module


def referformer_config(model: ReferFormerConfig) -> Config:
    """An rvos config around a ReferFormer architecture."""
    base = Config()
    return validate_config(dataclasses.replace(
        base, model=dataclasses.replace(base.model, kind="referformer", referformer=model)))


def convert_checkpoint(official: str | Path, out: str | Path, tokenizer: str = "",
                       overwrite: bool = False) -> Path:
    """Convert ``official`` (.pth) into the rvos checkpoint ``out``; returns its file.
    ``tokenizer``: the folder with roberta-base's tokenizer files, recorded in the config."""
    official = Path(official).expanduser()
    target = checkpoint_file(out)
    if target.exists() and not overwrite:
        raise RVOSError("the checkpoint exists; pass --overwrite to replace it", target)
    if target.resolve() == official.resolve():
        raise RVOSError("the output would overwrite the official checkpoint", target)
    state = read_official_checkpoint(official)
    family = family_module(detect_family(state))
    arch = family.config_from_state(state, official)
    folder = str(Path(tokenizer).expanduser().resolve()) if tokenizer else ""   # cwd-independent
    arch = dataclasses.replace(arch, text=dataclasses.replace(arch.text, tokenizer=folder))
    cfg = referformer_config(arch)
    with torch.device("meta"):        # shapes only: no random initial weights to draw
        model = family.MODEL(arch)
    weights = family.convert_state(state, model.state_dict(), official)
    model.load_state_dict(weights, strict=True, assign=True)
    return save_checkpoint(target, model, cfg, {
        "converted_from": official.name, "step": 0,
        "source": family.SOURCE})
