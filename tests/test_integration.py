"""End to end on a tiny synthetic benchmark: train -> checkpoint -> stop mid-epoch ->
resume -> same weights as an uninterrupted run -> evaluate -> predict (CLI)."""

import json
from pathlib import Path

import pytest
import torch

from rvos.cli import main
from rvos.data.synthetic import SynthConfig, generate_benchmark
from rvos.engine.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

TINY = ["data.input_size=[48,48]", "data.num_frames=2", "model.baseline.dim=32",
        "model.baseline.heads=2", "model.baseline.fusion_layers=1", "optim.batch_size=2",
        "optim.accumulate_steps=2", "train.epochs=2", "train.max_steps_per_epoch=3",
        "train.eval_every=1", "train.log_every=1", "data.max_val_samples=3", "eval.window=3"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "data"
    generate_benchmark(root, SynthConfig(train_videos=6, valid_videos=2, test_videos=2,
                                         compositional_videos=2, num_frames=5, height=48,
                                         width=48, seed=3), progress=False)
    return root


def train(run: Path, synth: Path, *extra: str) -> int:
    return main(["train", "baseline_synth", f"data.root={synth}", *TINY,
                 "--out", str(run), "--quiet", *extra])


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, synth) -> Path:
    run = tmp_path_factory.mktemp("full") / "run"
    assert train(run, synth) == 0
    return run


def test_training_writes_checkpoints_metrics_and_curves(full_run):
    ck = full_run / "checkpoints"
    assert sorted(p.name for p in ck.iterdir()) == ["best.safetensors", "last.safetensors"]
    assert load_checkpoint(ck / "last", with_training_state=True).training_state is not None
    meta = load_checkpoint(ck / "last").meta
    assert meta["step"] == 6 and meta["epoch"] == 2            # 2 epochs x 3 optimizer steps
    rows = (full_run / "metrics.csv").read_text().splitlines()
    assert rows[0] == "step,epoch,split,name,value"
    names = {r.split(",")[3] for r in rows[1:]}
    assert {"bce", "dice", "focal", "total", "grad_norm", "lr", "JF"} <= names
    assert (full_run / "curves.png").stat().st_size > 1000
    assert (full_run / "config.yaml").is_file()
    assert any((full_run / "tensorboard").iterdir())


def test_stop_mid_epoch_and_resume_gives_the_same_weights(tmp_path, synth, full_run):
    run = tmp_path / "run"
    assert train(run, synth, "--stop-after-steps", "4") == 0    # stops in epoch 2, step 1 of 3
    meta = load_checkpoint(run / "checkpoints" / "last").meta
    assert (meta["step"], meta["epoch"], meta["micro_step"]) == (4, 1, 2)
    assert train(run, synth, "--resume") == 0
    resumed = load_checkpoint(run / "checkpoints" / "last").weights
    straight = load_checkpoint(full_run / "checkpoints" / "last").weights
    assert resumed.keys() == straight.keys()
    for k in straight:                                          # bit-identical
        assert torch.equal(resumed[k], straight[k]), k
    steps = [int(r.split(",")[0]) for r in (run / "metrics.csv").read_text().splitlines()[1:]
             if r.split(",")[2] == "train" and r.split(",")[3] == "total"]
    assert steps == sorted(steps) and len(steps) == len(set(steps)) == 6


def test_a_spent_time_budget_validates_the_final_weights(tmp_path, synth):
    """When train.time_budget_s ends the run, the weights trained since the last validation
    are validated too, so "best" can be them (validation is every 2 epochs here: the run
    stops in epoch 1, before any scheduled validation)."""
    run = tmp_path / "run"
    assert main(["train", "baseline_synth", f"data.root={synth}", *TINY,
                 "train.time_budget_s=1e-9", "train.eval_every=2", "--out", str(run), "--quiet"]) == 0
    meta = load_checkpoint(run / "checkpoints" / "last").meta
    assert meta["step"] == 1 and len(meta["history"]) == 1
    assert meta["history"][0]["step"] == 1 and meta["history"][0]["epoch"] == pytest.approx(2 / 6)
    best = load_checkpoint(run / "checkpoints" / "best").meta
    assert best["step"] == 1
    val_rows = [r for r in (run / "metrics.csv").read_text().splitlines()[1:] if r.split(",")[2] == "val"]
    assert {r.split(",")[3] for r in val_rows} == {"J", "F", "JF", "object_accuracy"}


def test_refuses_to_overwrite_a_run_without_flag(tmp_path, synth, full_run, capsys):
    assert train(full_run, synth) == 2
    assert "already holds results" in capsys.readouterr().err


def test_evaluate_writes_metrics_per_expression_type(tmp_path, full_run, synth):
    out = tmp_path / "eval"
    assert main(["evaluate", "--checkpoint", str(full_run / "checkpoints" / "best.safetensors"),
                 "--split", "test", "test_compositional", "--out", str(out), "--quiet",
                 "--save-masks"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"test", "test_compositional"}
    for split in metrics.values():
        assert 0.0 <= split["overall"]["JF"] <= 1.0
        assert split["by_type"]
    csv_rows = (out / "per_expression.csv").read_text().splitlines()
    assert csv_rows[0].startswith("split,video,exp_id,exp_type")
    pngs = list((out / "predictions" / "test" / "Annotations").rglob("*.png"))
    assert pngs


def test_predict_on_an_mp4_writes_masks_and_overlays(tmp_path, full_run, synth):
    from rvos.data.video_io import VideoWriter, iter_video_frames

    frames_dir = next((synth / "test" / "JPEGImages").iterdir())
    mp4 = tmp_path / "clip.mp4"
    with VideoWriter(mp4, 5.0) as w:
        for _, f in iter_video_frames(frames_dir):
            w.write(f)
    out = tmp_path / "pred"
    args = ["predict", "--checkpoint", str(full_run / "checkpoints" / "last.safetensors"),
            "--video", str(mp4), "--text", "the red circle", "--text", "the leftmost square",
            "--out", str(out), "--quiet", "--window", "2"]
    assert main(args) == 0
    summary = json.loads((out / "expressions.json").read_text())
    assert summary["frames"] == 5
    for k in ("0", "1"):
        masks = sorted((out / "masks" / k).glob("*.png"))
        assert len(masks) == 5
    assert (out / "overlay.mp4").stat().st_size > 0 and (out / "overlay.gif").stat().st_size > 0
    assert main(args) == 2                                   # existing results are protected
    assert main(args + ["--overwrite"]) == 0
