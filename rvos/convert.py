"""``rvos convert``: a released ReferFormer-layout ``.pth`` -> an rvos checkpoint.

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
from rvos.models.referformer.convert import config_from_state, convert_state, read_official_checkpoint


def referformer_config(model: ReferFormerConfig) -> Config:
    """An rvos config around a ReferFormer architecture."""
    base = Config()
    return validate_config(dataclasses.replace(
        base, model=dataclasses.replace(base.model, kind="referformer", referformer=model)))


def convert_checkpoint(official: str | Path, out: str | Path, tokenizer: str = "",
                       overwrite: bool = False) -> Path:
    """Convert ``official`` (.pth) into the rvos checkpoint ``out``; returns its file.
    ``tokenizer``: the folder with roberta-base's tokenizer files, recorded in the config."""
    from rvos.models.referformer.model import ReferFormer

    official = Path(official).expanduser()
    target = checkpoint_file(out)
    if target.exists() and not overwrite:
        raise RVOSError("the checkpoint exists; pass --overwrite to replace it", target)
    if target.resolve() == official.resolve():
        raise RVOSError("the output would overwrite the official checkpoint", target)
    state = read_official_checkpoint(official)
    arch = config_from_state(state, official)
    folder = str(Path(tokenizer).expanduser().resolve()) if tokenizer else ""   # cwd-independent
    arch = dataclasses.replace(arch, text=dataclasses.replace(arch.text, tokenizer=folder))
    cfg = referformer_config(arch)
    with torch.device("meta"):        # shapes only: no random initial weights to draw
        model = ReferFormer(arch)
    weights = convert_state(state, model.state_dict(), official)
    model.load_state_dict(weights, strict=True, assign=True)
    return save_checkpoint(target, model, cfg, {
        "converted_from": official.name, "step": 0,
        "source": "official ReferFormer-layout checkpoint (wjn922/ReferFormer)"})
