"""The few-shot variant of the synthetic benchmark: Mini-Ref-YouTube-VOS layout, categories
kept to their fold group, expressions about (and naming) the video's category, balance,
determinism, CLI and bad input."""

import hashlib
import json
import re
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

import rvos.data.synthetic.writer as writer
from rvos.data.synthetic import (EXPRESSION_TYPES, FEWSHOT_FOLDS, GENERATOR_VERSION, SHAPES,
                                 SynthConfig, check_expression, fewshot_fold_categories,
                                 generate_fewshot_benchmark, parse_expression)
from rvos.data.synthetic.video import generate_video
from rvos.errors import RVOSError
from rvos.outputs_dir import MARKER

FEW = SynthConfig(num_frames=8, height=96, width=96, seed=4)
PER_CATEGORY = 3


def _generate(out: Path, cfg: SynthConfig = FEW, workers: int = 2, **kwargs) -> dict:
    return generate_fewshot_benchmark(out, cfg, videos_per_category=PER_CATEGORY,
                                      progress=False, workers=workers, **kwargs)


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("fewshot") / "bench"
    return root, _generate(root)


def _load(root: Path):
    meta = json.loads((root / "train" / "meta.json").read_text())["videos"]
    exps = json.loads((root / "meta_expressions" / "train" / "meta_expressions.json").read_text())["videos"]
    scenes = json.loads((root / "train" / "scenes.json").read_text())["videos"]
    return meta, exps, scenes


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != MARKER}


def _group(shape: str) -> tuple[str, ...]:
    return next(g for g in FEWSHOT_FOLDS if shape in g)


# --------------------------------------------------------------------------- folds

def test_folds_follow_the_cma_rule():
    assert FEWSHOT_FOLDS == (("circle", "diamond"), ("square", "cross"),
                             ("triangle", "hexagon"), ("star", "heart"))
    for k, shape in enumerate(SHAPES, start=1):          # category ids are 1-based
        assert shape in FEWSHOT_FOLDS[(k - 1) % 4]
    novel_all = []
    for fold in (1, 2, 3, 4):
        base, novel = fewshot_fold_categories(fold)
        assert not set(base) & set(novel) and sorted(base + novel) == sorted(SHAPES)
        assert tuple(novel) == FEWSHOT_FOLDS[fold - 1] and len(base) == 6
        novel_all += novel
    assert sorted(novel_all) == sorted(SHAPES)            # each category novel in one fold
    for bad in (0, 5, True, "1"):
        with pytest.raises(RVOSError, match="fold"):
            fewshot_fold_categories(bad)


# --------------------------------------------------------------------------- layout

def test_layout_reads_as_mini_ref_youtube_vos(bench):
    from rvos.data.ytvos import RefYTVOSLayout

    root, info = bench
    layout = RefYTVOSLayout(root, "train")
    layout.verify()
    meta, exps, scenes = _load(root)
    assert set(meta) == set(exps) == set(scenes) == set(layout.videos)
    assert len(layout.samples()) == sum(len(v["expressions"]) for v in exps.values())
    assert sorted(p.name for p in root.iterdir() if p.name != MARKER) == [
        "meta_expressions", "synth_info.json", "train"]                  # one split only
    for vid, entry in exps.items():
        assert re.fullmatch(r"fewshot_\d{6}", vid)
        assert entry["frames"] == [f"{t:05d}" for t in range(FEW.num_frames)]
        for e in entry["expressions"].values():
            assert set(e) == {"exp", "obj_id", "type"} and e["type"] in EXPRESSION_TYPES
        for obj_id, obj in meta[vid]["objects"].items():
            assert set(obj) == {"category", "frames"} and obj["frames"]
            assert obj["category"] == scenes[vid]["objects"][obj_id]["shape"]
    assert info["version"] == GENERATOR_VERSION and info["seed"] == FEW.seed
    assert info["config"]["train_videos"] == PER_CATEGORY * len(SHAPES)
    fewshot = info["fewshot"]
    assert fewshot["categories"] == list(SHAPES)
    assert fewshot["folds"] == [list(g) for g in FEWSHOT_FOLDS]
    assert fewshot["videos_per_category"] == PER_CATEGORY
    assert list(fewshot["video_categories"]) == sorted(meta)
    on_disk = json.loads((root / "synth_info.json").read_text())
    assert on_disk == info


def test_objects_keep_to_the_category_group(bench):
    root, info = bench
    _, _, scenes = _load(root)
    categories = info["fewshot"]["video_categories"]
    decoys = 0
    for vid, scene in scenes.items():
        category = categories[vid]
        shapes = [o["shape"] for o in scene["objects"].values()]
        assert set(shapes) <= set(_group(category)), (vid, category, shapes)
        assert category in shapes
        category_colors = {o["color"] for o in scene["objects"].values() if o["shape"] == category}
        decoys += any(o["shape"] != category and o["color"] in category_colors
                      for o in scene["objects"].values())
    assert decoys >= len(scenes) // 5      # the group partner often shares a colour with one


def test_expressions_refer_to_and_name_the_category(bench):
    root, info = bench
    _, exps, scenes = _load(root)
    for vid, entry in exps.items():
        category = info["fewshot"]["video_categories"][vid]
        assert entry["expressions"]
        for e in entry["expressions"].values():
            assert scenes[vid]["objects"][e["obj_id"]]["shape"] == category
            assert category in e["exp"].split()
            assert parse_expression(e["exp"])["target"]["shape"] == category
            assert check_expression(scenes[vid], e) == [int(e["obj_id"])]


def test_categories_are_balanced(bench):
    root, info = bench
    _, exps, _ = _load(root)
    categories = info["fewshot"]["video_categories"]
    counts = {c: sum(1 for v in categories.values() if v == c) for c in SHAPES}
    assert set(counts.values()) == {PER_CATEGORY}
    ids = list(categories)           # each category's videos contiguous, in SHAPES order
    assert [categories[v] for v in ids] == [c for c in SHAPES for _ in range(PER_CATEGORY)]
    for category, summary in info["per_category"].items():
        assert summary["videos"] == PER_CATEGORY
        assert summary["expressions"] == sum(
            len(exps[v]["expressions"]) for v, c in categories.items() if c == category)
    assert info["splits"]["train"]["expressions"] == sum(
        s["expressions"] for s in info["per_category"].values())


# --------------------------------------------------------------------------- writer

def test_same_bytes_for_the_seed_whatever_the_workers(bench, tmp_path, monkeypatch):
    root, info = bench
    one = _generate(tmp_path / "w1", workers=1)
    assert _digest(tmp_path / "w1") == _digest(root) and one == info
    _generate(tmp_path / "s5", replace(FEW, seed=5))
    da, other = _digest(root), _digest(tmp_path / "s5")
    assert sum(da[k] != other.get(k) for k in da) > len(da) // 2
    # several chunks per category (2 + 1 videos): still the same whatever the workers
    monkeypatch.setattr(writer, "CHUNK_VIDEOS", 2)
    chunked = {w: _generate(tmp_path / f"c{w}", workers=w) for w in (1, 2)}
    assert _digest(tmp_path / "c1") == _digest(tmp_path / "c2")
    assert chunked[1] == chunked[2] and chunked[1]["balance_chunk_videos"] == 2


def test_cli_flag_and_refusal(tmp_path, capsys):
    from rvos.cli import main

    out = tmp_path / "cli"
    args = ["data", "synth", "--few-shot", "--out", str(out), "--videos", "2", "--frames", "6",
            "--size", "64x64", "--workers", "2", "--quiet"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert re.search(r"^circle\s+1\s+2\s+\d+\s+attribute", printed, re.M)
    assert "fold 4: novel star, heart" in printed
    info = json.loads((out / "synth_info.json").read_text())
    assert info["fewshot"]["videos_per_category"] == 2 and info["config"]["num_frames"] == 6
    assert main(args) == 2                                  # already holds a benchmark
    assert "already holds a synthetic benchmark" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0
    user = tmp_path / "user"
    user.mkdir()
    (user / "keep.txt").write_text("user data")
    assert main(args[:4] + [str(user)] + args[5:] + ["--overwrite"]) == 2
    assert "rvos did not make it" in capsys.readouterr().err
    assert (user / "keep.txt").read_text() == "user data"


def test_bad_input_names_the_field(tmp_path):
    for bad in (0, -1, 2.5, True):
        with pytest.raises(RVOSError, match="videos_per_category"):
            generate_fewshot_benchmark(tmp_path / "x", FEW, videos_per_category=bad,
                                       progress=False)
    with pytest.raises(RVOSError, match="num_frames"):
        generate_fewshot_benchmark(tmp_path / "x", replace(FEW, num_frames=3), progress=False)
    with pytest.raises(RVOSError, match="workers"):
        _generate(tmp_path / "x", workers=0)
    assert not (tmp_path / "x").exists()
    with pytest.raises(RVOSError, match="category='pentagon'"):
        generate_video(FEW, "train", 0, [], Counter(), category="pentagon")
