"""The synthetic referring-video benchmark: layout, labels, provable expressions, splits,
determinism and safety of the writer."""

import hashlib
import json
import multiprocessing
import os
import re
import signal
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import binary_erosion

import rvos.data.synthetic.writer as writer
from rvos.data.palette import read_label_png
from rvos.data.synthetic import (COLORS, EXPRESSION_TYPES, GENERATOR_VERSION, SPLITS, SynthConfig,
                                 check_expression, describe, evaluate_query, generate_benchmark,
                                 parse_expression)
from rvos.data.synthetic.render import shape_sprite, sprite_top_left
from rvos.errors import RVOSError
from rvos.outputs_dir import MARKER

SMALL = SynthConfig(train_videos=12, valid_videos=3, test_videos=3, compositional_videos=6,
                    num_frames=10, height=96, width=112, seed=3)
TINY = SynthConfig(train_videos=2, valid_videos=1, test_videos=1, compositional_videos=1,
                   num_frames=8, height=64, width=64, max_objects=4, seed=11)


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "bench"
    generate_benchmark(root, SMALL, progress=False)
    return root


def _load(root: Path, split: str):
    meta = json.loads((root / split / "meta.json").read_text())["videos"]
    exps = json.loads((root / "meta_expressions" / split / "meta_expressions.json").read_text())["videos"]
    scenes = json.loads((root / split / "scenes.json").read_text())["videos"]
    return meta, exps, scenes


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != MARKER}


# --------------------------------------------------------------------------- layout

def test_layout_is_ref_youtube_vos(bench):
    info = json.loads((bench / "synth_info.json").read_text())
    assert info["seed"] == SMALL.seed and info["config"]["num_frames"] == SMALL.num_frames
    assert not bench.with_name(bench.name + ".partial").exists()
    all_ids = []
    for split, count in SMALL.videos_per_split().items():
        meta, exps, scenes = _load(bench, split)
        assert set(meta) == set(exps) == set(scenes) and len(meta) == count
        assert info["splits"][split]["videos"] == count
        assert info["splits"][split]["expressions"] == sum(len(v["expressions"]) for v in exps.values())
        for vid, entry in exps.items():
            assert re.fullmatch(r"synth_\d{6}", vid)
            assert entry["frames"] == [f"{t:05d}" for t in range(SMALL.num_frames)]
            assert entry["expressions"], f"{vid} has no expression"
            for exp_id, e in entry["expressions"].items():
                assert exp_id.isdigit() and isinstance(e["exp"], str) and e["exp"]
                assert e["obj_id"] in meta[vid]["objects"] and e["type"] in EXPRESSION_TYPES
            for obj in meta[vid]["objects"].values():
                assert set(obj) == {"category", "frames"} and obj["frames"]
            for f in entry["frames"]:
                with Image.open(bench / split / "JPEGImages" / vid / f"{f}.jpg") as img:
                    assert img.format == "JPEG" and img.mode == "RGB"
                    assert img.size == (SMALL.width, SMALL.height)
                assert (bench / split / "Annotations" / vid / f"{f}.png").is_file()
        all_ids += list(meta)
    assert len(set(all_ids)) == len(all_ids), "video ids must be unique across splits"


def test_project_loader_reads_it(bench):
    from rvos.data.ytvos import RefYTVOSLayout

    for split in SPLITS:
        layout = RefYTVOSLayout(bench, split)
        layout.verify()
        assert len(layout.samples()) == sum(
            len(v["expressions"]) for v in _load(bench, split)[1].values())


def test_label_maps_match_meta_and_pixels(bench):
    meta, exps, scenes = _load(bench, "train")
    for vid in list(meta)[:6]:
        scene = scenes[vid]
        for t, f in enumerate(exps[vid]["frames"]):
            path = bench / "train" / "Annotations" / vid / f"{f}.png"
            with Image.open(path) as img:
                assert img.mode == "P"
            labels = read_label_png(path)
            frame = np.asarray(Image.open(bench / "train" / "JPEGImages" / vid / f"{f}.jpg"),
                               dtype=np.float32)
            present = set(np.unique(labels).tolist()) - {0}
            assert present <= {int(k) for k in meta[vid]["objects"]}
            for obj_id, obj in meta[vid]["objects"].items():
                count = int((labels == int(obj_id)).sum())
                assert count == scene["objects"][obj_id]["visible_area"][t]
                assert (f in obj["frames"]) == (count > 0)
                if count:   # spatial statements rest on these centroids
                    ys, xs = np.nonzero(labels == int(obj_id))
                    np.testing.assert_allclose(scene["objects"][obj_id]["visible_centroid"][t],
                                               [xs.mean(), ys.mean()], atol=0.01)
                # the image shows the object's colour where the label says (away from the
                # edges, which JPEG chroma subsampling blurs)
                inner = binary_erosion(labels == int(obj_id), iterations=2)
                if inner.sum() >= 10:
                    mean = frame[inner].mean(axis=0)
                    want = np.asarray(COLORS[scene["objects"][obj_id]["color"]], dtype=np.float32)
                    assert np.abs(mean - want).max() < 40, (vid, f, obj_id, mean, want)


# --------------------------------------------------------------------------- expressions

def test_every_expression_is_unique_and_readable_from_its_text(bench):
    seen_types = {split: set() for split in SPLITS}
    for split in SPLITS:
        _, exps, scenes = _load(bench, split)
        for vid, entry in exps.items():
            scene = scenes[vid]
            for exp_id, e in entry["expressions"].items():
                assert check_expression(scene, {"exp": e["exp"]}) == [int(e["obj_id"])], (vid, e)
                query = parse_expression(e["exp"])
                assert query == scene["expressions"][exp_id]["query"] and query["type"] == e["type"]
                status = evaluate_query(scene, query)
                assert all(s == "no" for i, s in status.items() if i != int(e["obj_id"])), (vid, e, status)
                # the referred object is clearly visible in most frames
                obj = scene["objects"][e["obj_id"]]
                seen = np.asarray(obj["visible_area"]) >= 0.3 * obj["area_px"]
                assert seen.mean() >= SMALL.min_referent_visible, (vid, e)
                seen_types[split].add(e["type"])
    assert seen_types["train"] == set(EXPRESSION_TYPES)
    assert seen_types["test_compositional"] == set(EXPRESSION_TYPES)


def test_expression_types_are_balanced(bench):
    info = json.loads((bench / "synth_info.json").read_text())
    per_type = info["splits"]["train"]["expressions_per_type"]
    assert set(per_type) == set(EXPRESSION_TYPES)
    assert min(per_type.values()) >= 0.5 * max(per_type.values()), per_type


def test_motion_and_temporal_expressions_have_a_lookalike_distractor(bench):
    count = 0
    for split in SPLITS:
        _, exps, scenes = _load(bench, split)
        for vid, entry in exps.items():
            objects = scenes[vid]["objects"]
            for e in entry["expressions"].values():
                if e["type"] not in ("motion", "temporal"):
                    continue
                count += 1
                ref = objects[e["obj_id"]]
                status = evaluate_query(scenes[vid], parse_expression(e["exp"]))
                twins = [k for k, o in objects.items() if k != e["obj_id"] and all(
                    o[a] == ref[a] for a in ("shape", "color", "size"))]
                assert twins, f"{vid}: {e['exp']!r} has no look-alike"
                assert all(status[int(k)] == "no" for k in twins)
    assert count > 0


def test_compositional_pairs_never_occur_in_other_splits(bench):
    info = json.loads((bench / "synth_info.json").read_text())
    heldout = {tuple(p) for p in info["heldout_color_shape_pairs"]}
    assert len(heldout) == SMALL.heldout_pairs
    for split in ("train", "valid", "test"):
        for scene in _load(bench, split)[2].values():
            for obj in scene["objects"].values():
                assert (obj["color"], obj["shape"]) not in heldout
    _, exps, scenes = _load(bench, "test_compositional")
    for vid, entry in exps.items():
        for e in entry["expressions"].values():
            obj = scenes[vid]["objects"][e["obj_id"]]
            assert (obj["color"], obj["shape"]) in heldout
            target = parse_expression(e["exp"])["target"]
            assert target.get("color") == obj["color"] and target.get("shape") == obj["shape"]


# --------------------------------------------------------------------------- scenes

def test_occlusion_follows_depth(bench):
    occluded = 0
    for split in ("train", "valid"):
        meta, exps, scenes = _load(bench, split)
        for vid, scene in scenes.items():
            objs = scene["objects"]
            for t, f in enumerate(scene["frames"]):
                labels = read_label_png(bench / split / "Annotations" / vid / f"{f}.png")
                nearest = np.zeros(labels.shape, dtype=np.int64)
                nearest_depth = np.full(labels.shape, np.inf)
                for k, o in objs.items():
                    d = o["diameter_px"]
                    top, left = sprite_top_left(np.asarray(o["center"][t]), d)
                    full = np.zeros((labels.shape[0] + 2 * d, labels.shape[1] + 2 * d), dtype=bool)
                    if -d < top < labels.shape[0] and -d < left < labels.shape[1]:
                        full[top + d:top + 2 * d, left + d:left + 2 * d] = shape_sprite(o["shape"], d)
                    full = full[d:-d, d:-d]
                    assert full.sum() == o["in_frame_area"][t]
                    front = full & (o["depth"] < nearest_depth)
                    nearest[front], nearest_depth[front] = int(k), o["depth"]
                    occluded += int(o["visible_area"][t] < o["in_frame_area"][t])
                np.testing.assert_array_equal(labels, nearest, err_msg=f"{vid} frame {f}")
    assert occluded > 0, "no occlusion anywhere: depth order is never exercised"


def test_objects_enter_and_leave_the_frame(bench):
    patterns = []
    for split in SPLITS:
        for scene in _load(bench, split)[2].values():
            for o in scene["objects"].values():
                patterns.append("".join("I" if a > 0 else "O" for a in o["in_frame_area"]))
    assert any(re.fullmatch("O+I+", p) for p in patterns), "no object enters"
    assert any(re.fullmatch("I+O+", p) for p in patterns), "no object leaves"


def test_motion_kinds_and_backgrounds_vary(bench):
    kinds, backgrounds = set(), set()
    for split in SPLITS:
        for scene in _load(bench, split)[2].values():
            backgrounds.add(scene["background"]["kind"])
            kinds |= {o["motion"]["kind"] for o in scene["objects"].values()}
            assert 2 <= len(scene["objects"]) <= 6
    assert {"static", "linear", "bounce"} <= kinds and kinds & {"stops", "starts"}
    assert len(backgrounds) >= 3


# --------------------------------------------------------------------------- writer

def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a = generate_benchmark(tmp_path / "a", TINY, progress=False)
    generate_benchmark(tmp_path / "b", TINY, progress=False)
    generate_benchmark(tmp_path / "c", replace(TINY, seed=12), progress=False)
    da, db, dc = _digest(tmp_path / "a"), _digest(tmp_path / "b"), _digest(tmp_path / "c")
    assert da == db
    assert sum(da[k] != dc.get(k) for k in da) > len(da) // 2
    assert a["seed"] == TINY.seed


def test_refuses_a_non_empty_out_dir_unless_overwrite(tmp_path):
    out = tmp_path / "bench"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(RVOSError, match="not empty"):
        generate_benchmark(out, TINY, progress=False)
    with pytest.raises(RVOSError, match="rvos did not make it"):   # a folder of the user's
        generate_benchmark(out, TINY, progress=False, overwrite=True)
    assert (out / "keep.txt").read_text() == "user data"
    out = tmp_path / "made_by_rvos"
    generate_benchmark(out, TINY, progress=False)
    generate_benchmark(out, TINY, progress=False, overwrite=True)
    assert (out / "synth_info.json").is_file()
    with pytest.raises(RVOSError, match="already holds a synthetic benchmark"):
        generate_benchmark(out, TINY, progress=False)


@pytest.fixture
def no_hang():
    """Fails the test (instead of hanging it) if it runs over a minute."""
    def timeout(signum, frame):
        raise TimeoutError("generate_benchmark hung")

    if not hasattr(signal, "SIGALRM"):      # Windows
        yield
        return
    previous = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


# the failing generator below is patched in this process; worker processes see it when forked
needs_fork = pytest.mark.skipif(writer._start_method() != "fork",
                                reason="monkeypatches reach the workers only through fork")


@pytest.mark.parametrize("workers", [1, pytest.param(2, marks=needs_fork)])
def test_an_interrupted_run_leaves_no_benchmark(tmp_path, monkeypatch, no_hang, workers):
    real = writer.generate_video

    def failing(cfg, split, index, *args, **kwargs):
        # the third video (valid 0): a fixed video rather than the third call, which with
        # several workers would be counted per process
        if split == "valid":
            raise KeyboardInterrupt
        return real(cfg, split, index, *args, **kwargs)

    monkeypatch.setattr(writer, "generate_video", failing)
    with pytest.raises(KeyboardInterrupt):
        generate_benchmark(tmp_path / "bench", TINY, progress=False, workers=workers)
    assert not (tmp_path / "bench").exists()
    assert not multiprocessing.active_children(), "workers must be gone"
    monkeypatch.setattr(writer, "generate_video", real)
    generate_benchmark(tmp_path / "bench", TINY, progress=False)   # the leftovers are replaced
    assert (tmp_path / "bench" / "synth_info.json").is_file()
    assert not (tmp_path / "bench.partial").exists()


# 40 training videos in chunks of 16: three chunks (16, 16, 8), plus one per other split
CHUNKED = SynthConfig(train_videos=40, valid_videos=3, test_videos=2, compositional_videos=3,
                      num_frames=5, height=64, width=64, max_objects=4, seed=5)


def test_the_files_do_not_depend_on_the_number_of_workers(tmp_path, monkeypatch):
    monkeypatch.setattr(writer, "CHUNK_VIDEOS", 16)
    infos = {w: generate_benchmark(tmp_path / f"w{w}", CHUNKED, progress=False, workers=w)
             for w in (1, 2, 3)}
    digests = {w: _digest(tmp_path / f"w{w}") for w in infos}
    assert digests[1] == digests[2] == digests[3]
    assert infos[1] == infos[2] == infos[3]
    assert infos[1]["balance_chunk_videos"] == 16 and infos[1]["version"] == GENERATOR_VERSION
    for split in SPLITS:   # the JSON files, parsed: same content, videos in order
        for w in (2, 3):
            assert _load(tmp_path / "w1", split) == _load(tmp_path / f"w{w}", split)
        meta = _load(tmp_path / "w2", split)[0]
        assert list(meta) == sorted(meta)
    assert len(_load(tmp_path / "w2", "train")[0]) == 40
    # a chunk balances its expressions on its own: the third chunk (videos 32-39) is the
    # same whether or not the videos before it were generated
    monkeypatch.setattr(writer, "CHUNK_VIDEOS", 8)
    generate_benchmark(tmp_path / "c8", CHUNKED, progress=False, workers=2)
    c8, w1 = _digest(tmp_path / "c8"), digests[1]
    tail = [k for k in w1 if re.search(r"train/(JPEGImages|Annotations)/synth_0000(3[2-9])/", k)]
    assert len(tail) == 8 * 2 * CHUNKED.num_frames
    assert all(c8[k] == w1[k] for k in tail)
    assert sum(c8[k] != w1[k] for k in w1 if k.startswith("train/JPEGImages/")) > 0


@needs_fork
def test_a_failing_worker_raises_and_leaves_no_benchmark(tmp_path, monkeypatch, no_hang):
    monkeypatch.setattr(writer, "CHUNK_VIDEOS", 16)
    real = writer.generate_video

    def failing(cfg, split, index, *args, **kwargs):
        if split == "train" and index == 20:     # in the second chunk
            raise RuntimeError("generator bug in train video 20")
        return real(cfg, split, index, *args, **kwargs)

    monkeypatch.setattr(writer, "generate_video", failing)
    out = tmp_path / "bench"
    with pytest.raises(RuntimeError, match="generator bug in train video 20"):
        generate_benchmark(out, CHUNKED, progress=False, workers=2)
    assert not out.exists() and not list(tmp_path.rglob("synth_info.json"))
    assert not multiprocessing.active_children(), "workers must be gone"

    def dying(cfg, split, index, *args, **kwargs):
        if split == "train" and index == 20:
            os._exit(3)                           # killed: out of memory, say
        return real(cfg, split, index, *args, **kwargs)

    monkeypatch.setattr(writer, "generate_video", dying)
    with pytest.raises(RVOSError, match="died unexpectedly"):
        generate_benchmark(out, CHUNKED, progress=False, workers=2)
    assert not out.exists() and not list(tmp_path.rglob("synth_info.json"))
    assert not multiprocessing.active_children(), "workers must be gone"


def test_workers_argument_and_cli_option(tmp_path, capsys):
    from rvos.cli import main

    with pytest.raises(RVOSError, match="workers"):
        generate_benchmark(tmp_path / "x", TINY, progress=False, workers=0)
    assert not (tmp_path / "x").exists()
    args = ["data", "synth", "--out", str(tmp_path / "cli"), "--videos", "2", "--frames", "5",
            "--size", "64x64", "--quiet"]
    assert main(args + ["--workers", "2"]) == 0
    info = json.loads((tmp_path / "cli" / "synth_info.json").read_text())
    assert info["version"] == GENERATOR_VERSION
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:       # argparse refuses it: exit status 2
        main(args + ["--workers", "0", "--overwrite"])
    assert stop.value.code == 2
    assert "--workers: must be >= 1" in capsys.readouterr().err


def test_bad_config_names_the_field():
    with pytest.raises(RVOSError, match="max_objects"):
        SynthConfig(max_objects=20).validate()
    with pytest.raises(RVOSError, match="num_frames"):
        generate_benchmark("/nonexistent/never", SynthConfig(num_frames=3), progress=False)


# --------------------------------------------------------------------------- predicates

def _scene(objects: list[dict], t_len: int = 6, size: int = 100) -> dict:
    """A hand-made scene: each object {"shape", "color", "center": (T, 2)}, fully visible
    unless "visible" (T,) says otherwise; no rendering involved."""
    out = {}
    for k, o in enumerate(objects, start=1):
        visible = np.asarray(o.get("visible", [1] * t_len), dtype=bool)
        centers = np.asarray(o["center"], dtype=float)
        out[str(k)] = {
            "shape": o["shape"], "color": o["color"], "size": o.get("size", "medium"),
            "area_px": 100, "depth": k - 1, "center": centers.tolist(),
            "in_frame_area": [100 if v else 0 for v in visible],
            "visible_area": [100 if v else 0 for v in visible],
            "visible_centroid": [c.tolist() if v else None for c, v in zip(centers, visible)],
        }
    return {"height": size, "width": size, "num_frames": t_len, "objects": out,
            "thresholds": {"spatial_margin_px": [6.0, 6.0], "moving_speed": 1.0,
                           "still_speed": 0.1, "seen_area_fraction": 0.3}}


def _still(x, y, t_len=6):
    return [[x, y]] * t_len


def _line(x0, y0, vx, vy, t_len=6):
    return [[x0 + vx * t, y0 + vy * t] for t in range(t_len)]


def test_spatial_needs_a_clear_margin():
    scene = _scene([{"shape": "circle", "color": "red", "center": _still(20, 50)},
                    {"shape": "circle", "color": "blue", "center": _still(60, 50)},
                    {"shape": "square", "color": "red", "center": _still(5, 50)}])
    assert check_expression(scene, {"exp": "the leftmost circle"}) == [1]
    assert check_expression(scene, {"exp": "the circle on the far right"}) == [2]
    assert check_expression(scene, {"exp": "the leftmost object"}) == [3]
    close = _scene([{"shape": "circle", "color": "red", "center": _still(50, 50)},
                    {"shape": "circle", "color": "blue", "center": _still(53, 50)}])
    status = evaluate_query(close, parse_expression("the leftmost circle"))
    assert status == {1: "unclear", 2: "unclear"}
    assert check_expression(close, {"exp": "the leftmost circle"}) == []


def test_relational_motion_and_temporal_predicates():
    t = 8
    scene = _scene([
        {"shape": "star", "color": "red", "center": _still(50, 60, t)},                  # anchor
        {"shape": "square", "color": "green", "center": _still(50, 20, t)},              # above it
        {"shape": "square", "color": "green", "center": _still(50, 90, t)},              # below it
        {"shape": "circle", "color": "blue", "center": _line(10, 40, 3, 0.2, t)},        # moves right
        {"shape": "circle", "color": "blue", "center": _still(80, 40, t)},               # still
        {"shape": "heart", "color": "white",
         "center": _line(10, 80, 3, 0, 4)[:4] + [[19, 80]] * 4},                         # stops
        {"shape": "heart", "color": "white", "center": _line(90, 10, 0, 3, t),
         "visible": [0, 0, 1, 1, 1, 1, 1, 1]},                                           # enters
    ], t_len=t)
    for o in scene["objects"].values():   # "enters" means outside the image, not hidden
        o["in_frame_area"] = o["visible_area"]
    assert check_expression(scene, {"exp": "the square above the red star"}) == [2]
    assert check_expression(scene, {"exp": "the square beneath the red star"}) == [3]
    assert check_expression(scene, {"exp": "the blue circle moving to the right"}) == [4]
    assert check_expression(scene, {"exp": "the blue circle that stays still"}) == [5]
    assert check_expression(scene, {"exp": "the white heart that stops halfway"}) == [6]
    assert check_expression(scene, {"exp": "the heart that enters the frame"}) == [7]
    assert check_expression(scene, {"exp": "the heart that leaves the frame"}) == []
    assert check_expression(scene, {"exp": "the bouncing circle"}) == []


def test_sentences_parse_back_to_their_query():
    rng = np.random.default_rng(0)
    queries = [
        {"type": "attribute", "target": {"size": "small", "color": "green", "shape": "triangle"}},
        {"type": "attribute", "target": {"color": "white"}},
        {"type": "spatial", "target": {}, "direction": "top"},
        {"type": "relational", "target": {"shape": "square"}, "relation": "left_of",
         "anchor": {"color": "red", "shape": "star"}},
        {"type": "motion", "target": {"size": "large", "shape": "cross"}, "motion": "bounce"},
        {"type": "temporal", "target": {"color": "black", "shape": "hexagon"}, "event": "leaves"},
    ]
    texts = set()
    for q in queries:
        for _ in range(12):
            text = describe(q, rng)
            texts.add(text)
            assert parse_expression(text) == q, text
    assert len(texts) > 2 * len(queries), "templates should vary the wording"
    with pytest.raises(RVOSError):
        parse_expression("the dog chasing a ball")


def test_a_relation_must_point_the_right_way():
    """Far to the right and only a little lower is not "under": neither yes nor no."""
    scene = _scene([{"shape": "star", "color": "red", "center": _still(30, 40)},
                    {"shape": "square", "color": "green", "center": _still(90, 52)},
                    {"shape": "square", "color": "blue", "center": _still(30, 10)}])
    status = evaluate_query(scene, parse_expression("the square under the red star"))
    assert status == {1: "no", 2: "unclear", 3: "no"}
    assert check_expression(scene, {"exp": "the square to the right of the red star"}) == [2]
