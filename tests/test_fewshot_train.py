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


def _support_for(synth: Path, category: str, tmp_path: Path, skip: int = 0) -> tuple[Path, Path, str]:
    """(frame folder, a folder with the referred object's masks on two of its frames, the
    sentence) of a synthetic video of ``category``: a support sample as a user supplies it."""
    from rvos.data.palette import read_label_png, write_label_png

    categories = json.loads((synth / "synth_info.json").read_text())["fewshot"]["video_categories"]
    video = [v for v, c in sorted(categories.items()) if c == category][skip]
    meta = json.loads((synth / "meta_expressions" / "train" / "meta_expressions.json").read_text())
    exp = meta["videos"][video]["expressions"]["0"]
    masks = tmp_path / f"masks_{video}"
    for frame in meta["videos"][video]["frames"][1:5:2]:
        labels = read_label_png(synth / "train" / "Annotations" / video / f"{frame}.png")
        write_label_png(masks / f"{frame}.png", (labels == int(exp["obj_id"])).astype(np.uint8))
    return synth / "train" / "JPEGImages" / video, masks, exp["exp"]


def test_predict_with_a_support_set_reads_it(run, synth, tmp_path):
    """rvos predict --support: K annotated examples of a novel category are encoded once and
    reach the track scores; without them the checkpoint still runs, on the sentence alone."""
    import torch
    from PIL import Image

    from rvos.inference import Predictor
    from rvos.support import SupportSample

    query_video = _support_for(synth, "square", tmp_path, skip=2)[0]
    shots = [_support_for(synth, "square", tmp_path, skip=i) for i in (0, 1)]
    out = tmp_path / "pred"
    args = ["predict", "--checkpoint", str(run / "checkpoints" / "last"), "--video", str(query_video),
            "--text", "the square", "--out", str(out), "--no-gif", "--quiet"]
    for video, masks, text in shots:
        args += ["--support", str(video), str(masks), text]
    assert main(args) == 0
    summary = json.loads((out / "expressions.json").read_text())
    assert summary["frames"] == len(list(query_video.glob("*.jpg"))) and (out / "masks" / "0").is_dir()

    predictor = Predictor.from_checkpoint(run / "checkpoints" / "last", "cpu")
    predictor.use_support([SupportSample(v, m, t) for v, m, t in shots])
    assert predictor.support.visible.shape[:2] == (1, 2) and predictor.support.visible.sum() > 0
    # the query video's true objects as tracks (the tiny test segmenter finds none): the
    # support must move their scores
    from rvos.data.palette import read_label_png
    from rvos.models.grounding.model import pad_tracks
    from rvos.models.grounding.tracks import track_set

    names = sorted(p.stem for p in query_video.glob("*.jpg"))
    frames = np.stack([np.asarray(Image.open(query_video / f"{n}.jpg").convert("RGB")) for n in names])
    labels = np.stack([read_label_png(query_video.parent.parent / "Annotations" / query_video.name
                                      / f"{n}.png") for n in names])
    objects = torch.from_numpy(np.stack([labels == i for i in np.unique(labels) if i]))
    model = predictor.model
    clip = predictor._prepare(frames)[0]
    with torch.no_grad():
        batch = pad_tracks([track_set(model.features(clip), clip, objects)])
        words, padding = model.encode_text(["the square"], clip.device)
        alone = model.score(batch, words, padding, None)
        helped = model.score(batch, words, padding, predictor.support)
    assert not torch.allclose(alone, helped)


def test_predict_support_errors_name_the_file(run, synth, tmp_path, capsys):
    from rvos.data.palette import write_label_png

    video, masks, text = _support_for(synth, "square", tmp_path)
    base = ["predict", "--checkpoint", str(run / "checkpoints" / "last"), "--video", str(video),
            "--text", "the square", "--no-gif", "--quiet"]
    stray = tmp_path / "stray"
    write_label_png(stray / "frame_999.png", np.ones((48, 48), np.uint8))
    wrong_size = tmp_path / "wrong_size"
    write_label_png(wrong_size / f"{sorted(p.stem for p in masks.glob('*.png'))[0]}.png",
                    np.ones((20, 30), np.uint8))
    empty = tmp_path / "empty"
    write_label_png(empty / f"{sorted(p.stem for p in masks.glob('*.png'))[0]}.png",
                    np.zeros((48, 48), np.uint8))
    cases = [(stray, "no mask is named as a frame"), (wrong_size, "mask is 30x20"),
             (empty, "in none of the masks"), (tmp_path / "absent", "mask folder not found")]
    for i, (folder, message) in enumerate(cases):
        out = tmp_path / f"out{i}"
        assert main(base + ["--out", str(out), "--support", str(video), str(folder), text]) == 2
        err = capsys.readouterr().err
        assert message in err and str(folder.name) in err and "Traceback" not in err
        assert not out.exists()


def test_support_is_refused_by_a_model_that_reads_none(synth, tmp_path):
    from rvos.errors import RVOSError
    from rvos.inference import Predictor
    from rvos.models.build import build_model
    from rvos.support import SupportSample

    cfg = load_config("fewshot_baseline_synth", [f"data.root={synth}", *TINY])
    predictor = Predictor(build_model(cfg, pretrained=False), (48, 48))
    video, masks, text = _support_for(synth, "square", tmp_path)
    with pytest.raises(RVOSError, match="--support needs a few-shot checkpoint"):
        predictor.use_support([SupportSample(video, masks, text)])
