"""SOC, BIFIT and SgMg end to end through the same commands as every model: rvos train
(their synthetic configs, on cached frozen features) -> checkpoint -> rvos evaluate ->
rvos predict, each method's own losses logged where it has them."""

import json
from pathlib import Path

import pytest

from rvos.cli import main
from rvos.data.synthetic import SynthConfig, generate_benchmark
from rvos.engine.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

TINY = ["data.input_size=[64,64]", "data.num_frames=2", "model.query.backbone_weights=none",
        "model.query.dim=32", "model.query.heads=4", "model.query.enc_layers=1",
        "model.query.dec_layers=2", "model.query.ffn_dim=64", "model.query.num_queries=3",
        "model.query.mask_dim=8", "train.cache.clips_per_step=2", "train.cache.warmup_steps=1",
        "train.epochs=1", "train.max_steps_per_epoch=2", "train.eval_every=1",
        "train.log_every=1", "data.max_val_samples=2", "eval.window=3"]

# each method's modules, and the named losses it adds (besides the core's five)
METHODS = {
    "soc_synth": (["model.query.soc.enc_layers=1", "model.query.soc.dec_layers=1",
                   "model.query.soc.ffn_dim=64"], {"contrast"}),
    "bifit_synth": ([], set()),
    "sgmg_synth": ([], {"sgmg_coarse_mask", "sgmg_coarse_dice"}),
}


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "data"
    generate_benchmark(root, SynthConfig(train_videos=3, valid_videos=2, test_videos=2,
                                         compositional_videos=1, num_frames=5, height=64,
                                         width=64, seed=7), progress=False)
    return root


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_trains_evaluates_and_predicts_through_the_cli(name, synth, tmp_path):
    extra, own_losses = METHODS[name]
    run = tmp_path / "run"
    assert main(["train", name, f"data.root={synth}", *TINY, *extra,
                 "--out", str(run), "--quiet"]) == 0
    logged = {r.split(",")[3] for r in (run / "metrics.csv").read_text().splitlines()[1:]}
    assert {"class", "mask", "dice", *own_losses} <= logged
    ckpt = load_checkpoint(run / "checkpoints" / "last")
    q = ckpt.config.model.query
    assert (q.soc.clusters, q.bifit.inter_frame, q.sgmg.multi_granularity) == (
        name == "soc_synth", name == "bifit_synth", name == "sgmg_synth")

    out = tmp_path / "eval"
    assert main(["evaluate", "--checkpoint", str(run / "checkpoints" / "last.safetensors"),
                 "--split", "test", "--out", str(out), "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["test"]["overall"]["JF"] <= 1.0

    video = sorted((synth / "test" / "JPEGImages").iterdir())[0]
    pred = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(run / "checkpoints" / "last.safetensors"),
                 "--video", str(video), "--text", "the red circle", "--out", str(pred),
                 "--quiet", "--no-gif"]) == 0
    masks = sorted(pred.rglob("*.png"))
    assert len(masks) == 5          # one mask per frame of the video
