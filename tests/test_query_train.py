"""The query model end to end through the CLI on a tiny synthetic benchmark:
rvos train (model.kind=query) -> checkpoint -> rvos evaluate -> rvos predict; and joint
image + video training with a fake RefCOCO folder."""

import json
from pathlib import Path

import pytest

from rvos.cli import main
from rvos.data.synthetic import SynthConfig, generate_benchmark
from rvos.engine.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

TINY = ["data.input_size=[48,48]", "data.num_frames=2", "model.query.backbone=mobilenet_v2",
        "model.query.backbone_weights=none", "model.query.dim=32", "model.query.heads=4",
        "model.query.enc_layers=1", "model.query.dec_layers=2", "model.query.ffn_dim=64",
        "model.query.num_queries=3", "model.query.mask_dim=8", "optim.batch_size=2",
        "optim.accumulate_steps=1", "train.epochs=1", "train.max_steps_per_epoch=3",
        "train.eval_every=1", "train.log_every=1", "data.max_val_samples=2", "eval.window=3"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "data"
    generate_benchmark(root, SynthConfig(train_videos=4, valid_videos=2, test_videos=2,
                                         compositional_videos=2, num_frames=5, height=48,
                                         width=48, seed=5), progress=False)
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory, synth) -> Path:
    out = tmp_path_factory.mktemp("query") / "run"
    code = main(["train", "query_synth_resnet50", f"data.root={synth}", *TINY,
                 "--out", str(out), "--quiet"])
    assert code == 0
    return out


def test_rvos_train_logs_every_named_loss(run):
    names = {r.split(",")[3] for r in (run / "metrics.csv").read_text().splitlines()[1:]}
    assert {"class", "bbox", "giou", "mask", "dice", "dice_0", "total", "JF"} <= names
    meta = load_checkpoint(run / "checkpoints" / "last").meta
    assert meta["step"] == 3


def test_rvos_evaluate_and_predict_use_the_query_checkpoint(run, synth, tmp_path):
    ckpt = run / "checkpoints" / "last.safetensors"
    out = tmp_path / "eval"
    assert main(["evaluate", "--checkpoint", str(ckpt), "--split", "test", "test_compositional",
                 "--out", str(out), "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"test", "test_compositional"} <= set(metrics)
    assert 0.0 <= metrics["test"]["overall"]["JF"] <= 1.0
    video = next((synth / "test" / "JPEGImages").iterdir())
    pred = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(ckpt), "--video", str(video), "--text",
                 "the red circle", "--text", "the blue square", "--out", str(pred), "--quiet",
                 "--no-gif"]) == 0
    assert any(pred.rglob("*.png"))


def test_joint_image_and_video_training(tmp_path, synth):
    from test_refcoco import make_refcoco

    refcoco = make_refcoco(tmp_path / "refcoco")
    out = tmp_path / "joint"
    code = main(["train", "query_synth_resnet50", f"data.root={synth}", *TINY,
                 f"data.refcoco_root={refcoco}", "data.joint_image_ratio=0.5",
                 "train.eval_every=0", "--out", str(out), "--quiet"])
    assert code == 0
    assert (out / "checkpoints" / "last.safetensors").is_file()
