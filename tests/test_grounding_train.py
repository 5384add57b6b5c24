"""The track-grounding model end to end: rvos train (model.kind=grounding, stages on cached
features) -> checkpoints -> rvos evaluate -> rvos predict -> --resume; and a tiny set the
model fits with the offline ImageNet backbone."""

import json
from pathlib import Path

import pytest

from rvos.cli import main
from rvos.data.synthetic import SynthConfig, generate_benchmark
from rvos.engine.checkpoint import load_checkpoint
from rvos.data.ytvos import RefYTVOSLayout
from rvos.engine.evaluator import evaluate_layout
from rvos.inference import Predictor

pytestmark = pytest.mark.slow

TINY = ["model.grounding.backbone_weights=none", "model.grounding.backbone_dtype=float32",
        "data.input_size=[48,48]", "model.grounding.dim=32", "model.grounding.seg_dim=16",
        "model.grounding.refine_dim=8", "train.grounding.seg_steps=4",
        "train.grounding.seg_batch_frames=4", "train.grounding.scorer_steps=4",
        "train.grounding.scorer_batch=8", "train.log_every=1", "data.max_val_samples=2"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "data"
    generate_benchmark(root, SynthConfig(train_videos=4, valid_videos=2, test_videos=2,
                                         compositional_videos=2, num_frames=6, height=48,
                                         width=48, seed=5), progress=False, workers=1)
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory, synth) -> Path:
    out = tmp_path_factory.mktemp("grounding") / "run"
    code = main(["train", "grounding_synth", f"data.root={synth}", *TINY,
                 "--out", str(out), "--quiet"])
    assert code == 0
    return out


def test_rvos_train_runs_both_stages_on_a_feature_cache(run):
    rows = (run / "metrics.csv").read_text().splitlines()
    splits = {r.split(",")[2] for r in rows[1:]}
    assert {"segmenter", "scorer", "val"} <= splits
    names = {r.split(",")[3] for r in rows[1:] if r.split(",")[2] == "segmenter"}
    assert {"fg_bce", "fg_dice", "heatmap", "offset", "loss", "lr"} <= names
    caches = [p for p in (run / "feature_cache").iterdir() if p.is_dir()]
    assert len(caches) == 1 and (caches[0] / "manifest.json").is_file()
    meta = load_checkpoint(run / "checkpoints" / "last").meta
    assert meta["done"] == ["segmenter", "scorer"]
    assert meta["presentations"] == 4 * 8 and meta["timings"]["presentations_per_s"] > 0


def test_resume_of_a_finished_run_redoes_no_stage(run, synth, capsys):
    steps = load_checkpoint(run / "checkpoints" / "last").meta["step"]
    code = main(["train", "grounding_synth", f"data.root={synth}", *TINY,
                 "--out", str(run), "--resume", "--quiet"])
    assert code == 0
    assert "resumed after the stages ['segmenter', 'scorer']" in capsys.readouterr().out
    assert load_checkpoint(run / "checkpoints" / "last").meta["step"] == steps


def test_rvos_evaluate_and_predict_use_the_grounding_checkpoint(run, synth, tmp_path):
    ckpt = run / "checkpoints" / "last.safetensors"
    assert main(["evaluate", "--checkpoint", str(ckpt), "--data", str(synth), "--split", "test",
                 "--out", str(tmp_path / "eval"), "--quiet"]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())["test"]
    assert metrics["overall"]["count"] > 0
    video = sorted(p for p in (synth / "test" / "JPEGImages").iterdir())[0]
    assert main(["predict", "--checkpoint", str(ckpt), "--video", str(video), "--text",
                 "the red circle", "--text", "the leftmost object", "--out",
                 str(tmp_path / "pred"), "--quiet", "--no-gif"]) == 0
    assert len(list((tmp_path / "pred" / "masks" / "1").glob("*.png"))) == 6


def test_a_tiny_set_is_fitted(tmp_path, assets):
    """8 training videos, the offline ImageNet MobileNetV2: scored on its own training set
    the model picks the referred object and segments it."""
    root = tmp_path / "data"
    generate_benchmark(root, SynthConfig(train_videos=8, valid_videos=1, test_videos=1,
                                         compositional_videos=1, num_frames=8, seed=2),
                       progress=False, workers=1)
    weights = assets / "weights" / "mobilenetv2_imagenet_features.pt"
    code = main(["train", "grounding_synth", f"data.root={root}",
                 f"model.grounding.backbone_weights={weights}", "train.grounding.seg_steps=150",
                 "train.grounding.scorer_steps=150", "train.grounding.scorer_batch=16",
                 "train.eval_every=0", "--out", str(tmp_path / "run"), "--quiet"])
    assert code == 0
    predictor = Predictor.from_checkpoint(tmp_path / "run" / "checkpoints" / "last.safetensors", "cpu")
    summary = evaluate_layout(predictor, RefYTVOSLayout(root, "train"), progress=False).summary()
    assert summary["overall"]["object_accuracy"] >= 0.8, summary
    assert summary["overall"]["JF"] >= 0.6, summary
