"""The query family trained on cached frozen-backbone features (train.feature_cache): the
cached step computes the loss the full model computes on the same frames; rvos train ->
checkpoint -> rvos evaluate through the CLI; an exact resume; and the switch refused,
in one line, where a cache cannot stand for the backbone."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from rvos.cli import main
from rvos.config import load_config
from rvos.data.synthetic import SynthConfig, generate_benchmark
from rvos.engine import make_trainer
from rvos.engine.checkpoint import load_checkpoint
from rvos.engine.query_cache_trainer import (QueryCacheTrainer, assemble_step,
                                             training_expressions)
from rvos.errors import RVOSError
from rvos.losses import weighted_total
from rvos.models.feature_cache import normalize

pytestmark = pytest.mark.slow

CONFIG = "query_synth_frozen"
TINY = ["data.input_size=[48,48]", "data.num_frames=2", "model.query.backbone_weights=none",
        "model.query.dim=32", "model.query.heads=4", "model.query.enc_layers=1",
        "model.query.dec_layers=2", "model.query.ffn_dim=64", "model.query.num_queries=3",
        "model.query.mask_dim=8", "model.query.dropout=0.0", "train.cache.clips_per_step=2",
        "train.cache.warmup_steps=1", "train.epochs=1", "train.max_steps_per_epoch=3",
        "train.eval_every=1", "train.log_every=1", "data.max_val_samples=2", "eval.window=3",
        "data.hflip_prob=0.5"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "data"
    generate_benchmark(root, SynthConfig(train_videos=4, valid_videos=2, test_videos=2,
                                         compositional_videos=2, num_frames=5, height=48,
                                         width=48, seed=5), progress=False)
    return root


def tiny_cfg(synth: Path, *extra: str):
    return load_config(CONFIG, [f"data.root={synth}", *TINY, *extra])


def test_cached_step_gives_the_loss_of_the_full_model_on_the_same_frames(synth, tmp_path):
    trainer = QueryCacheTrainer(tiny_cfg(synth, "data.hflip_prob=1.0"), tmp_path / "run",
                                progress=False)
    cache = trainer.open_cache()
    exprs = training_expressions(trainer.layout, cache)
    draws = trainer.draw_step(cache, exprs, epoch=0, step=0)
    assert all(d.flip for d in draws) and len({d.video for d in draws}) == 2
    maps, texts, batch = assemble_step(cache, draws, torch.device("cpu"))
    assert len(texts) == sum(len(d.sentences) for d in draws) == batch.masks.shape[0]

    # targets: each sentence's referred objects in the mirrored label maps of its frames
    b = 0
    for d in draws:
        span = cache.videos[d.video]
        names = [span.frames[int(r) - span.start] for r in d.rows]
        labels = trainer.layout.load_label_maps(d.video, names)[..., ::-1]    # 48x48: no resize
        for e in d.sentences:
            expected = trainer.layout.referred_mask(labels, e.obj_ids)
            assert np.array_equal(batch.masks[b].numpy() > 0.5, expected)
            b += 1

    model, criterion = trainer.model.eval(), trainer.criterion
    t = trainer.cfg.data.num_frames
    with torch.no_grad():
        cached = weighted_total(criterion(model.forward_maps(maps, texts, t), batch),
                                criterion.weights)
        clips = []
        for d in draws:
            x = torch.from_numpy(np.ascontiguousarray(cache.frames[d.rows]))
            x = normalize(x.permute(0, 3, 1, 2).float() / 255).flip(-1)
            clips += [x] * len(d.sentences)
        full = weighted_total(criterion(model(torch.stack(clips), texts), batch), criterion.weights)
    # the cache stores float16 maps
    assert float(cached) == pytest.approx(float(full), rel=2e-2)


def test_rvos_train_checkpoints_and_evaluates_a_cached_run(synth, tmp_path):
    out = tmp_path / "run"
    assert main(["train", CONFIG, f"data.root={synth}", *TINY, "--out", str(out), "--quiet"]) == 0
    rows = [r.split(",") for r in (out / "metrics.csv").read_text().splitlines()[1:]]
    names = {r[3] for r in rows}
    assert {"class", "dice", "dice_0", "total", "presentations_per_s", "JF"} <= names
    meta = load_checkpoint(out / "checkpoints" / "last").meta
    assert meta["step"] == 2 and meta["presentations"] > 2     # 4 videos, 2 clips a step
    assert (out / "checkpoints" / "best.safetensors").is_file()
    assert any((out / "feature_cache").iterdir())
    ev = tmp_path / "eval"
    assert main(["evaluate", "--checkpoint", str(out / "checkpoints" / "best.safetensors"),
                 "--split", "test", "--out", str(ev), "--quiet"]) == 0
    assert 0.0 <= json.loads((ev / "metrics.json").read_text())["test"]["overall"]["JF"] <= 1.0


def test_a_stopped_run_resumes_to_the_weights_of_an_uninterrupted_one(synth, tmp_path):
    cache_dir = f"train.cache.cache_dir={tmp_path / 'cache'}"
    steps = ["train.max_steps_per_epoch=2", "train.epochs=2", "train.eval_every=0", cache_dir]
    whole = make_trainer(tiny_cfg(synth, *steps), tmp_path / "whole", progress=False)
    assert isinstance(whole, QueryCacheTrainer)     # the demo's and the bench's dispatch
    whole.fit()
    part = QueryCacheTrainer(tiny_cfg(synth, *steps), tmp_path / "part", progress=False)
    assert not part.fit(stop_after_steps=3).finished
    resumed = QueryCacheTrainer(tiny_cfg(synth, *steps), tmp_path / "part", progress=False,
                                pretrained=False)
    resumed.resume()
    assert resumed.fit().finished and resumed.state.global_step == 4
    for (name, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("overrides, says", [
    (["model.query.freeze_backbone=false"], "model.query.freeze_backbone"),
    (["model.query.backbone=video_swin_t"], "image backbone"),
    (["model.kind=baseline"], "model.kind=query"),
])
def test_the_switch_refuses_a_backbone_it_cannot_cache(synth, tmp_path, capsys, overrides, says):
    with pytest.raises(RVOSError, match="train.feature_cache"):
        load_config(CONFIG, overrides)
    code = main(["train", CONFIG, f"data.root={synth}", *overrides, "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "train.feature_cache" in err and says in err
    assert not (tmp_path / "r").exists()
