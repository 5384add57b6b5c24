"""The few-shot family end to end on the synthetic few-shot split: rvos train
(model.kind=fewshot: segmenter on the fold's base categories, episodic scorer + affinity)
-> checkpoint -> rvos evaluate (novel categories, per-fold J, F, J&F at several shots)
-> --resume; and the errors a user meets."""

import json
from pathlib import Path

import numpy as np
import pytest

from rvos.cli import main
from rvos.config import load_config
from rvos.data.fewshot import EpisodeSampler, fold_split, referring_samples
from rvos.data.mini_refvos import open_fewshot_layout
from rvos.data.synthetic import SynthConfig, generate_fewshot_benchmark
from rvos.engine.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

TINY = ["model.grounding.backbone_weights=none", "model.grounding.backbone_dtype=float32",
        "data.input_size=[48,48]", "model.grounding.dim=32", "model.grounding.seg_dim=16",
        "model.grounding.refine_dim=8", "model.fewshot.key_dim=16",
        "train.grounding.seg_steps=4", "train.grounding.seg_batch_frames=4",
        "train.grounding.scorer_steps=6", "train.grounding.scorer_batch=8", "train.log_every=1",
        "data.fewshot.shots=2", "data.fewshot.fold=2"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fewshot") / "data"
    generate_fewshot_benchmark(root, SynthConfig(num_frames=6, height=48, width=48, seed=4),
                               videos_per_category=3, progress=False, workers=1)
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory, synth) -> Path:
    out = tmp_path_factory.mktemp("cma") / "run"
    assert main(["train", "cma_synth", f"data.root={synth}", *TINY,
                 "--out", str(out), "--quiet"]) == 0
    return out


def test_training_sees_only_the_base_categories(run, synth):
    from rvos.engine.fewshot_trainer import FewShotTrainer

    cfg = load_config("cma_synth", [f"data.root={synth}", *TINY])
    trainer = FewShotTrainer(cfg, run, progress=False)
    base, novel = fold_split(trainer.layout.folds, 2)
    assert novel == ["square", "cross"]
    assert {s.category for s in trainer.samples} == set(base)
    cache = trainer.open_cache()
    rows = trainer.segmenter_rows(cache)
    videos = {v for v, span in cache.videos.items()
              if span.start <= rows.max() and np.isin(np.arange(span.start, span.start + span.count), rows).any()}
    categories = json.loads((synth / "synth_info.json").read_text())["fewshot"]["video_categories"]
    assert {categories[v] for v in videos} == set(base)
    assert len(rows) == sum(cache.videos[v].count for v in videos)
    meta = load_checkpoint(run / "checkpoints" / "last").meta
    assert meta["done"] == ["segmenter", "scorer"] and meta["presentations"] == 6 * 8
    rows = (run / "metrics.csv").read_text().splitlines()
    shots = {float(r.split(",")[4]) for r in rows[1:] if r.split(",")[3] == "shots"}
    assert shots <= {1.0, 2.0} and shots


def test_evaluate_scores_the_novel_categories_at_each_shot(run, synth, tmp_path):
    out = tmp_path / "eval"
    assert main(["evaluate", "--checkpoint", str(run / "checkpoints" / "last"), "--shots", "1", "2",
                 "--out", str(out), "--quiet"]) == 0
    results = json.loads((out / "metrics.json").read_text())["results"]
    assert [(r["fold"], r["shots"]) for r in results] == [(2, 1), (2, 2)]
    layout = open_fewshot_layout("synth", synth)
    samples = referring_samples(layout)
    for r in results:
        assert set(r["by_category"]) == {"square", "cross"}
        expected = EpisodeSampler(samples, ["square", "cross"], r["shots"]).evaluation_episodes(0)
        overall = r["overall"]
        assert overall["queries"] == len(expected)
        assert overall["JF"] == pytest.approx((overall["J"] + overall["F"]) / 2)
        assert 0 <= overall["J"] <= 1 and 0 <= overall["F"] <= 1
    assert "square" in (out / "results.txt").read_text()


def test_resume_of_a_finished_run_redoes_no_stage(run, synth, capsys):
    steps = load_checkpoint(run / "checkpoints" / "last").meta["step"]
    assert main(["train", "cma_synth", f"data.root={synth}", *TINY,
                 "--out", str(run), "--resume", "--quiet"]) == 0
    assert "resumed after the stages ['segmenter', 'scorer']" in capsys.readouterr().out
    assert load_checkpoint(run / "checkpoints" / "last").meta["step"] == steps


@pytest.mark.parametrize("override,message", [
    ("data.fewshot.fold=5", "fold must lie in 1..4"),
    ("data.fewshot.shots=3", "needs 4"),
    ("data.fewshot.dataset=mini-ytvos", "not one of the 48 Mini-Ref-YouTube-VOS categories"),
])
def test_bad_few_shot_settings_stop_with_one_line(synth, tmp_path, capsys, override, message):
    code = main(["train", "cma_synth", f"data.root={synth}", *TINY, override,
                 "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err


def test_diagnostic_supports_score_the_same_queries(run, synth, tmp_path):
    """--support other gives each category the next category's support; none withholds it:
    the same queries are scored either way."""
    counts = {}
    for support in ("same", "other", "none"):
        out = tmp_path / support
        assert main(["evaluate", "--checkpoint", str(run / "checkpoints" / "last"), "--shots", "2",
                     "--support", support, "--out", str(out), "--quiet"]) == 0
        result = json.loads((out / "metrics.json").read_text())["results"][0]
        assert result["support"] == support
        counts[support] = result["overall"]["queries"]
    assert len(set(counts.values())) == 1
