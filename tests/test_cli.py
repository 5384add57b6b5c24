"""The rvos command: help texts and bad input (one clear message, exit status 2)."""

import json
import subprocess
import sys

import numpy as np
import pytest
from torch import nn

from rvos.cli import main
from rvos.config import load_config
from rvos.engine.checkpoint import save_checkpoint


def run_cli(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_help_for_every_command():
    for args in ([], ["data"], ["train"], ["evaluate"], ["predict"], ["bench"], ["demo"], ["convert"], ["serve"]):
        proc = subprocess.run([sys.executable, "-m", "rvos.cli", *args, "--help"],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        assert "usage: rvos" in proc.stdout


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A real (untrained) tiny baseline checkpoint."""
    from rvos.models.build import build_model

    cfg = load_config(None, ["model.baseline.dim=32", "model.baseline.heads=2",
                             "data.input_size=[32,32]"])
    model = build_model(cfg)
    path = tmp_path_factory.mktemp("ck") / "model"
    return save_checkpoint(path, model, cfg, {"step": 0})


def frame_folder(path, n=3, size=(24, 32)):
    from PIL import Image

    path.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(np.full((*size, 3), 40 * i, np.uint8)).save(path / f"{i:05d}.jpg")
    return path


def test_predict_missing_checkpoint(tmp_path, capsys):
    video = frame_folder(tmp_path / "v")
    code, _, err = run_cli(["predict", "--checkpoint", str(tmp_path / "none.safetensors"),
                            "--video", str(video), "--text", "a", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "none.safetensors" in err and "not found" in err


def test_predict_unreadable_and_missing_video(tmp_path, capsys, tiny_checkpoint):
    bad = tmp_path / "broken.mp4"
    bad.write_text("this is not a video")
    code, _, err = run_cli(["predict", "--checkpoint", str(tiny_checkpoint), "--video", str(bad),
                            "--text", "the red circle", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "broken.mp4" in err
    assert not (tmp_path / "o").exists()               # nothing half-written
    code, _, err = run_cli(["predict", "--checkpoint", str(tiny_checkpoint), "--video",
                            str(tmp_path / "missing.mp4"), "--text", "x", "--out",
                            str(tmp_path / "o")], capsys)
    assert code == 2 and "missing.mp4" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run_cli(["predict", "--checkpoint", str(tiny_checkpoint), "--video", str(empty),
                            "--text", "x", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "empty" in err


def test_predict_empty_sentence(tmp_path, capsys, tiny_checkpoint):
    video = frame_folder(tmp_path / "v")
    code, _, err = run_cli(["predict", "--checkpoint", str(tiny_checkpoint), "--video", str(video),
                            "--text", "   ", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "sentence" in err
    assert not (tmp_path / "o").exists()


def test_predict_on_a_frame_folder_and_existing_output(tmp_path, capsys, tiny_checkpoint, monkeypatch):
    from rvos.models import build

    def no_criterion(cfg):
        raise AssertionError("inference built a criterion")

    monkeypatch.setattr(build, "build_criterion", no_criterion)   # inference builds the model only
    video = frame_folder(tmp_path / "v", n=5)
    out = tmp_path / "o"
    args = ["predict", "--checkpoint", str(tiny_checkpoint), "--video", str(video), "--text",
            "the red circle", "--out", str(out), "--window", "2", "--quiet", "--no-gif"]
    code, stdout, _ = run_cli(args, capsys)
    assert code == 0, stdout
    assert sorted(p.name for p in (out / "masks" / "0").iterdir()) == [f"{i:05d}.png" for i in range(5)]
    from rvos.data.palette import read_label_png

    assert read_label_png(out / "masks" / "0" / "00000.png").shape == (24, 32)
    code, _, err = run_cli(args, capsys)
    assert code == 2 and "already holds results" in err


def test_checkpoint_of_another_architecture_on_resume(tmp_path, capsys):
    cfg = load_config(None, ["model.baseline.backbone=resnet50"])
    run = tmp_path / "run"
    save_checkpoint(run / "checkpoints" / "last", nn.Linear(2, 2), cfg, {"step": 1},
                    {"optimizer": {}, "step": 1})
    root = tmp_path / "data"
    _tiny_layout(root)
    code, _, err = run_cli(["train", "baseline_synth", f"data.root={root}",
                            "data.input_size=[32,32]", "train.eval_every=0",  # no valid split
                            "--out", str(run), "--resume"], capsys)
    assert code == 2 and "another architecture" in err and "last.safetensors" in err


def _tiny_layout(root):
    from rvos.data.palette import write_label_png
    from PIL import Image

    meta = {"videos": {}}
    for v in ("a", "b"):
        (root / "train" / "JPEGImages" / v).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(
                root / "train" / "JPEGImages" / v / f"{i:05d}.jpg")
            lab = np.zeros((32, 32), np.uint8)
            lab[4:10, 4:10] = 1
            write_label_png(root / "train" / "Annotations" / v / f"{i:05d}.png", lab)
        meta["videos"][v] = {"frames": [f"{i:05d}" for i in range(3)],
                             "expressions": {"0": {"exp": "the square", "obj_id": "1"}}}
    (root / "meta_expressions" / "train").mkdir(parents=True)
    (root / "meta_expressions" / "train" / "meta_expressions.json").write_text(json.dumps(meta))


def test_train_with_missing_or_corrupt_meta_expressions(tmp_path, capsys):
    code, _, err = run_cli(["train", "baseline_synth", f"data.root={tmp_path}",
                            "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and "meta_expressions" in err
    root = tmp_path / "data"
    _tiny_layout(root)
    (root / "meta_expressions" / "train" / "meta_expressions.json").write_text("{not json")
    code, _, err = run_cli(["train", "baseline_synth", f"data.root={root}",
                            "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and "meta_expressions.json" in err


def test_train_with_an_unknown_config_key(tmp_path, capsys):
    code, _, err = run_cli(["train", "baseline_synth", "optim.learning_rate=1"], capsys)
    assert code == 2 and "optim.learning_rate" in err


def test_evaluate_needs_a_checkpoint_or_benchmark(capsys):
    code, _, err = run_cli(["evaluate"], capsys)
    assert code == 2 and "--checkpoint" in err


def test_synth_refuses_an_existing_benchmark(tmp_path, capsys):
    out = tmp_path / "s"
    args = ["data", "synth", "--out", str(out), "--videos", "2", "--frames", "5",
            "--size", "32x32", "--quiet"]
    code, stdout, _ = run_cli(args, capsys)
    assert code == 0 and "train" in stdout
    code, _, err = run_cli(args, capsys)
    assert code == 2 and str(out) in err
