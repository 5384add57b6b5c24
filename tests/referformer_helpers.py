"""Shared steps of the released-checkpoint family tests (tests/test_referformer*.py):
fabricated official state dicts, tiny models with no degenerate part, official-layout
checkpoints, a tokenizer and a clip for `rvos convert` / `rvos predict`, and the live
comparison with an official checkout (imported in a child process only)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rvos.cli import main

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
SENTENCE_IDS = [[0, 627, 1275, 512, 15, 5, 314, 9, 5, 2170, 2]]   # benchmarks' SENTENCE_IDS
POSITION_IDS = "text_encoder.embeddings.position_ids"


# ----------------------------------------------------------------------------- state dicts
def zeros_state(shapes: dict[str, list[int]], position_ids: str = POSITION_IDS,
                broadcast: bool = False) -> dict[str, torch.Tensor]:
    """Zeros with the given names and shapes (``broadcast``: one zero expanded, no memory),
    plus the RoBERTa ``position_ids`` buffer older transformers versions saved, under the
    name ``position_ids``."""
    zero = torch.zeros(())
    state = {k: zero.expand(shape) if broadcast else torch.zeros(shape) for k, shape in shapes.items()}
    state[position_ids] = torch.arange(514)[None]
    return state


def meta_state(model_class, cfg) -> dict[str, torch.Tensor]:
    """``model_class(cfg)``'s state dict, built on the meta device (names and shapes only)."""
    with torch.device("meta"):
        return model_class(cfg).state_dict()


def as_not_binary_without_box_refinement(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Edit ``state`` in place into a 65-class model without box refinement (the class head
    widened, the decoder's box-head twins removed); returns it."""
    for k in [k for k in state if k.startswith("class_embed.")]:
        state[k] = torch.zeros((65,) + tuple(state[k].shape[1:]))      # not --binary
    for k in [k for k in state if k.startswith("transformer.decoder.bbox_embed.")]:
        del state[k]                                                   # no box refinement
    return state


def perturb_constants(model: torch.nn.Module, skip_norms: bool = False) -> torch.nn.Module:
    """Add N(0, 0.02) noise to every constant-initialised parameter (zero biases, ...; with
    ``skip_norms``, not to those named ``norm``), so that no part is left degenerate
    (uniform attention, ...); returns the model."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not (skip_norms and "norm" in name) and bool((p == p.flatten()[0]).all()):
                p.add_(torch.randn_like(p) * 0.02)
    return model


def official_layout_state(model: torch.nn.Module, rename=None) -> dict[str, torch.Tensor]:
    """``model``'s weights under the official ReferFormer-layout names: ``backbone.0.``
    for the backbone, the box heads also as the decoder's ``transformer.decoder.bbox_embed``
    twins; ``rename(name)`` maps the other names (default: unchanged)."""
    sd = model.state_dict()

    def official(k: str) -> str:
        if k.startswith("backbone."):
            return "backbone.0." + k[len("backbone."):]
        return rename(k) if rename else k
    state = {official(k): v for k, v in sd.items()}
    state.update({f"transformer.decoder.{k}": v for k, v in sd.items() if k.startswith("bbox_embed.")})
    return state


def write_official_checkpoint(path: Path, model: torch.nn.Module, rename=None) -> None:
    """``model``'s weights under the official names (``official_layout_state``), as the
    official ReferFormer-style training saves them (with epoch and args)."""
    torch.save({"model": official_layout_state(model, rename), "epoch": 5,
                "args": argparse.Namespace(backbone="resnet50")}, path)


# ----------------------------------------------------------------------------- convert / predict
def byte_level_tokenizer(folder: Path) -> Path:
    """A real RoBERTa (byte-level BPE) tokenizer with a tiny vocabulary, trained here: the
    released roberta-base files cannot be downloaded in tests."""
    from tokenizers import ByteLevelBPETokenizer

    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(["a red car on the left", "the dog jumping", "a person riding"] * 4,
                            vocab_size=300, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    folder.mkdir()
    tok.save_model(str(folder))
    return folder


def write_clip(path: Path, frames: int) -> Path:
    """A small MP4 (96x72, 5 frames/s) of ``frames`` frames: a bright bar moving right."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = 96, 72, "yuv420p"
        for i in range(frames):
            img = np.zeros((72, 96, 3), np.uint8)
            img[:, 10 * i:10 * i + 30] = 200
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def convert_then_predict(tmp_path: Path, checkpoint: Path, name: str, frames: int,
                         texts: list[str]) -> Path:
    """`rvos convert` of ``checkpoint`` to ``tmp_path / name`` with a tiny tokenizer, then
    `rvos predict` of a ``frames``-frame clip with each of ``texts``; checks both succeed
    and the first text's masks count ``frames``; returns the prediction folder."""
    tokenizer = byte_level_tokenizer(tmp_path / "tokenizer")
    assert main(["convert", str(checkpoint), "--out", str(tmp_path / name),
                 "--tokenizer", str(tokenizer)]) == 0
    video = write_clip(tmp_path / "clip.mp4", frames)
    out = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(tmp_path / f"{name}.safetensors"), "--video", str(video),
                 *(a for t in texts for a in ("--text", t)), "--out", str(out), "--no-gif", "--quiet"]) == 0
    assert len(list((out / "masks" / "0").glob("*.png"))) == frames
    return out


def predict_both(source: torch.nn.Module, converted: torch.nn.Module, frames: torch.Tensor):
    """The source model (in eval mode) and the converted one on ``frames`` with one short
    sentence: their two predictions."""
    ids, mask = torch.tensor([[0, 5, 7, 2]]), torch.ones(1, 4, dtype=torch.long)
    with torch.no_grad():
        return source.eval().predict(frames, ids, mask), converted.predict(frames, ids, mask)


# ----------------------------------------------------------------------------- live comparison
def official_checkout(variable: str, marker: str) -> str:
    """The folder named by the environment ``variable`` when it holds ``marker`` (a checkout
    of the official code to compare against), else "" (the live tests skip)."""
    folder = os.environ.get(variable, "")
    return folder if folder and (Path(folder) / marker).is_file() else ""


def run_child(code: str, env: dict | None = None) -> None:
    """Run ``code`` in a child Python: the official code's modules stay out of this process."""
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, env=env)


def official_referformer_outputs(tmp_path: Path, checkout: str) -> None:
    """In a child process: the official ReferFormer-layout ResNet-50 model of ``checkout``
    (benchmarks/referformer_parity.py's random weights) saved in its own format to
    ``tmp_path / "official.pth"``, 3 frames of 128x224 to ``frames.pt`` and its
    ``pred_logits`` / ``pred_boxes`` / ``pred_masks`` on them to ``official_out.pt``."""
    run_child(f"""
import sys, torch
sys.argv = [sys.argv[0]]
sys.path.insert(0, {str(BENCHMARKS)!r})
import referformer_parity as rp
from pathlib import Path
build, options = rp.import_official(Path({checkout!r}))
torch.manual_seed(0)
model, _, _ = build(rp.official_options(options, "resnet50"))
model.eval()
ids = torch.tensor([rp.SENTENCE_IDS])
model.tokenizer = rp.FixedTokens(ids)
rp.perturb_constant_parameters(model)
torch.save({{"model": model.state_dict()}}, {str(tmp_path / "official.pth")!r})
frames = rp.make_frames(3, (128, 224))
torch.save(frames, {str(tmp_path / "frames.pt")!r})
with torch.no_grad():
    out = model([frames], ["x"], [{{"size": torch.as_tensor(frames.shape[-2:])}}])
torch.save([out["pred_logits"], out["pred_boxes"], out["pred_masks"]], {str(tmp_path / "official_out.pt")!r})
""")


def converted_model(folder: Path) -> torch.nn.Module:
    """The model of the converted checkpoint ``folder``, as ``Predictor`` loads it."""
    from rvos.inference import Predictor

    return Predictor.from_checkpoint(folder, "cpu").model


def assert_every_key_maps(convert_state, state: dict, expected: dict, dropped: set[str]) -> dict:
    """``convert_state(state, expected)`` gives exactly ``expected``'s keys with their shapes,
    and every key of ``state`` is mapped except the ``dropped`` ones; returns the result."""
    converted = convert_state(state, expected)
    assert set(converted) == set(expected)
    assert all(converted[k].shape == expected[k].shape for k in expected)
    assert dropped <= set(state) and len(converted) == len(state) - len(dropped)
    return converted


def assert_conversion_refuses(convert_state, state: dict, expected: dict, *, extra: tuple[str, str],
                              missing: tuple[str, str], wrong: tuple[str, tuple, str],
                              twin: bool = True) -> None:
    """``convert_state(bad, expected)`` raises an RVOSError matching the given pattern for
    each bad variant of ``state``: ``extra`` (key, pattern) one unknown key added;
    ``missing`` (key, pattern) that key removed; ``wrong`` (key, shape, pattern) that key of
    the wrong shape; with ``twin``, a decoder box-head twin that differs from its head."""
    from rvos.errors import RVOSError

    key, pattern = extra
    with pytest.raises(RVOSError, match=pattern):
        convert_state(dict(state, **{key: torch.zeros(3)}), expected)
    key, pattern = missing
    with pytest.raises(RVOSError, match=pattern):
        convert_state({k: v for k, v in state.items() if k != key}, expected)
    key, shape, pattern = wrong
    with pytest.raises(RVOSError, match=pattern):
        convert_state(dict(state, **{key: torch.zeros(shape)}), expected)
    if twin:
        bad = dict(state, **{"transformer.decoder.bbox_embed.0.layers.0.weight": torch.ones(256, 256)})
        with pytest.raises(RVOSError, match="differs from bbox_embed.0.layers.0.weight"):
            convert_state(bad, expected)
