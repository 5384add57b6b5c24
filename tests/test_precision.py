"""The GPU speed switches, checked where they can be on a CPU: the autocast dtype chosen per
device, autocast at inference (``--amp``), ``train.compile`` keeping the checkpoints' tensor
names, and the commands that refuse several processes."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from rvos import precision
from rvos.cli import main
from rvos.inference import Predictor
from rvos.models.outputs import RVOSOutput
from rvos.precision import autocast_dtype, backbone_dtype


def test_autocast_is_bf16_where_the_device_has_it_and_fp16_elsewhere(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert autocast_dtype(torch.device("cuda")) == torch.bfloat16      # Ampere and later
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert autocast_dtype(torch.device("cuda")) == torch.float16       # with a GradScaler
    assert autocast_dtype(torch.device("cuda"), "bfloat16") == torch.bfloat16
    assert autocast_dtype(torch.device("cpu"), "float16") == torch.float16


@pytest.mark.parametrize("native", [True, False])
def test_a_cpu_without_native_bf16_runs_float32_unless_bf16_is_asked(monkeypatch, native):
    """On an AVX2-only CPU bfloat16 is emulated, an order of magnitude slower than float32."""
    monkeypatch.setattr(precision, "native_bfloat16", lambda device: native)
    cpu = torch.device("cpu")
    assert autocast_dtype(cpu) == (torch.bfloat16 if native else None)
    assert backbone_dtype("auto", cpu) == ("bfloat16" if native else "float32")
    assert autocast_dtype(cpu, "bfloat16") == torch.bfloat16
    assert backbone_dtype("bfloat16", cpu) == "bfloat16"
    assert backbone_dtype("float32", cpu) == "float32"


def test_the_cpu_check_matches_the_cpu_flags():
    flags = Path("/proc/cpuinfo")
    if not flags.is_file():
        pytest.skip("no /proc/cpuinfo to read the CPU's flags from")
    text = flags.read_text()
    if "avx512_bf16" in text or "amx_bf16" in text:
        assert precision.native_bfloat16(torch.device("cpu"))
    if "avx512" not in text:
        assert not precision.native_bfloat16(torch.device("cpu"))


class _Probe(nn.Module):
    """A stand-in model recording whether it ran under autocast; one query, masks 4x4."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1)
        self.seen: list[bool] = []

    def forward(self, frames, texts, clip_index=None):
        self.seen.append(torch.is_autocast_enabled("cpu"))
        b, t = len(texts), frames.shape[1]
        logits = self.conv(frames.flatten(0, 1))[:, :, :4, :4]            # (T, 1, 4, 4)
        logits = logits.reshape(1, t, 1, 4, 4).expand(b, -1, -1, -1, -1)
        return RVOSOutput(mask_logits=logits, scores=torch.zeros(b, t, 1))


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("amp", [False, True])
def test_the_predictor_runs_the_model_under_autocast_when_asked(monkeypatch, amp, native):
    """--amp autocasts where the CPU computes bfloat16 natively, and runs float32 elsewhere."""
    monkeypatch.setattr(precision, "native_bfloat16", lambda device: native)
    model = _Probe()
    predictor = Predictor(model, (8, 8), window=2, device="cpu", amp=amp)
    frames = [(f"{i:05d}", np.full((6, 6, 3), 40 * i, np.uint8)) for i in range(3)]
    out = list(predictor.predict(frames, ["the red circle"]))
    assert model.seen == [amp and native] * 2                             # 2 windows
    assert all(p.probs.dtype == np.float32 and p.probs.shape == (1, 6, 6) for p in out)


def test_compile_wraps_the_step_but_checkpoints_keep_the_module_names(monkeypatch):
    from rvos.engine.trainer import Trainer

    compiled = []
    monkeypatch.setattr(torch, "compile", lambda m: compiled.append(m) or _Compiled(m))
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    stub = SimpleNamespace(world=1, cfg=SimpleNamespace(train=SimpleNamespace(compile=True)))
    ddp, net = Trainer._wrap(stub, model)
    assert ddp is None and compiled == [model] and isinstance(net, _Compiled)
    assert list(net.state_dict())[0].startswith("_orig_mod.")           # what torch.compile names
    assert list(model.state_dict()) == ["0.weight", "0.bias", "1.weight", "1.bias",
                                        "1.running_mean", "1.running_var",
                                        "1.num_batches_tracked"]    # what save() writes
    stub.cfg.train.compile = False
    assert Trainer._wrap(stub, model) == (None, model)


class _Compiled(nn.Module):
    """What ``torch.compile`` returns, as far as names go: the module under ``_orig_mod``."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self._orig_mod = module

    def forward(self, *args):
        return self._orig_mod(*args)


@pytest.mark.parametrize("command", [
    ["train", "grounding_synth", "--out", "{o}"],
    ["train", "baseline_synth", "train.device=cuda:1", "--out", "{o}"],
    ["predict", "--checkpoint", "x", "--video", "tests", "--text", "a", "--out", "{o}"],
    ["data", "synth", "--out", "{o}"],
])
def test_commands_that_run_in_one_process_refuse_torchrun(command, monkeypatch, capsys, tmp_path):
    for name, value in dict(WORLD_SIZE="2", RANK="0", LOCAL_RANK="0").items():
        monkeypatch.setenv(name, value)
    assert main([a.format(o=tmp_path / "o") for a in command]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and ("one process" in err or "cuda:LOCAL_RANK" in err)
    assert not (tmp_path / "o").exists()
