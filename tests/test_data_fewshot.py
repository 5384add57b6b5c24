"""Few-shot readers and episodes on small fabricated copies of the official layouts
(Mini-Ref-YouTube-VOS with meta.json or train.json, both Mini-Ref-SAIL-VOS arrangements,
the few-shot synthetic split)."""

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rvos.data.fewshot import (MINI_SAILVOS_CATEGORIES, MINI_YTVOS_FOLDS, EpisodeSampler,
                               fold_split, folds_by_rule, referring_samples)
from rvos.data.mini_refvos import (FewShotSynthLayout, MiniRefSAILVOS, MiniRefYouTubeVOS,
                                   open_fewshot_layout)
from rvos.data.palette import write_label_png
from rvos.data.ytvos import ReferringClipDataset, RefYTVOSLayout
from rvos.errors import RVOSError

H, W = 24, 32
FRAMES = ["00000", "00005", "00010"]

# {video: {obj_id: category}}: "cat" in 7 videos (enough for 5 shots), a video with objects
# of two categories, and categories of every fold but the third.
YTVOS_OBJECTS: dict[str, dict[int, str]] = {
    **{f"cat{i}": {1: "cat"} for i in range(6)},
    **{f"dog{i}": {1: "dog"} for i in range(3)},
    "mixed": {1: "dog", 2: "cat"},
    "hat0": {1: "hat"}, "hat1": {1: "hat"},
    "plant0": {1: "plant"}, "plant1": {1: "plant"},
}
SHAPES = ["circle", "square", "triangle", "star", "ring", "cross", "diamond", "heart"]


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def _write_image(path: Path, seed: int, fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)


def _label_map(values: list[int]) -> np.ndarray:
    """Object k of ``values`` is the k-th vertical band, with pixel value values[k]."""
    labels = np.zeros((H, W), dtype=np.uint8)
    for k, value in enumerate(values):
        labels[4:20, 2 + 8 * k:8 + 8 * k] = value
    return labels


def _expressions(objects: dict[int, str]) -> dict:
    """Two sentences per object, ids "0", "1", ... as in the official files."""
    out, k = {}, 0
    for obj_id, category in objects.items():
        for text in (f"the {category} number {obj_id}", f"a {category} that is moving"):
            out[str(k)] = {"exp": text, "obj_id": str(obj_id)}
            k += 1
    return out


def write_ytvos_arrangement(root: Path, objects: dict[str, dict[int, str]],
                            category_files: tuple[str, ...] = ("meta.json",)) -> Path:
    """The Mini-Ref-YouTube-VOS layout: meta_expressions/train/meta_expressions.json,
    train/{JPEGImages/*.jpg, Annotations/*.png, <category file>}."""
    split = root / "train"
    for v, (video, objs) in enumerate(objects.items()):
        for t, frame in enumerate(FRAMES):
            _write_image(split / "JPEGImages" / video / f"{frame}.jpg", v * 10 + t, "JPEG")
            write_label_png(split / "Annotations" / video / f"{frame}.png", _label_map(list(objs)))
    meta = {"videos": {video: {"objects": {str(o): {"category": c, "frames": FRAMES}
                                           for o, c in objs.items()}}
                       for video, objs in objects.items()}}
    for name in category_files:
        _write_json(split / name, meta)
    _write_json(root / "meta_expressions" / "train" / "meta_expressions.json",
                {"videos": {video: {"frames": FRAMES, "expressions": _expressions(objs)}
                            for video, objs in objects.items()}})
    return root


# {video: (category, id the json gives the object, mask values in frames 2 and 3)}; frame 1
# is empty, so the object is visible in frames 2 and 3 only.
SAILVOS_VIDEOS: dict[str, tuple[str, int, list[int]]] = {
    "sail_dog0": ("dog", 2, [2, 5]), "sail_dog1": ("dog", 1, [1]),
    "sail_car0": ("car", 3, [3]), "sail_car1": ("car", 1, [255]),
    "sail_person0": ("person", 1, [1]), "sail_person1": ("person", 7, [7, 7]),
}


def write_sailvos(root: Path, arrangement: str) -> Path:
    """Mini-Ref-SAIL-VOS as its code reads it ("code": root-level json, Images/*.bmp) or as
    its README describes it ("readme": the Mini-Ref-YouTube-VOS layout with train.json)."""
    if arrangement == "code":
        split, frames_dir, suffix, fmt = root, root / "Images", ".bmp", "BMP"
        category_file, expressions_file = root / "meta.json", root / "meta_expressions.json"
    else:
        split = root / "train"
        frames_dir, suffix, fmt = split / "JPEGImages", ".jpg", "JPEG"
        category_file = split / "train.json"
        expressions_file = root / "meta_expressions" / "train" / "meta_expressions.json"
    for v, (video, (category, obj_id, values)) in enumerate(SAILVOS_VIDEOS.items()):
        for t, frame in enumerate(FRAMES):
            _write_image(frames_dir / video / f"{frame}{suffix}", v * 10 + t, fmt)
            labels = _label_map(values) if t > 0 else np.zeros((H, W), np.uint8)
            write_label_png(split / "Annotations" / video / f"{frame}.png", labels)
    _write_json(category_file, {"videos": {video: {"objects": {str(o): {"category": c}}}
                                           for video, (c, o, _) in SAILVOS_VIDEOS.items()}})
    _write_json(expressions_file, {"videos": {
        video: {"frames": FRAMES, "expressions": _expressions({o: c})}
        for video, (c, o, _) in SAILVOS_VIDEOS.items()}})
    return root


def write_synth(root: Path, fewshot: bool = True) -> Path:
    """The few-shot synthetic split: the Mini-Ref-YouTube-VOS layout with shape categories
    and synth_info.json's "fewshot" entry."""
    objects = {f"video{i:03d}": {1: SHAPES[i % len(SHAPES)], 2: SHAPES[(i + 3) % len(SHAPES)]}
               for i in range(16)}
    write_ytvos_arrangement(root, objects)
    info = {"generator": "rvos.data.synthetic", "splits": {"train": {"videos": 16}}}
    if fewshot:
        info["fewshot"] = {"categories": SHAPES, "folds": [list(g) for g in folds_by_rule(SHAPES, 4)]}
    _write_json(root / "synth_info.json", info)
    return root


@pytest.fixture(scope="module")
def ytvos_root(tmp_path_factory) -> Path:
    return write_ytvos_arrangement(tmp_path_factory.mktemp("mini_ytvos"), YTVOS_OBJECTS)


@pytest.fixture(scope="module")
def ytvos(ytvos_root) -> MiniRefYouTubeVOS:
    return MiniRefYouTubeVOS(ytvos_root)


@pytest.fixture(scope="module")
def sail_roots(tmp_path_factory) -> dict[str, Path]:
    return {a: write_sailvos(tmp_path_factory.mktemp(f"sail_{a}"), a) for a in ("code", "readme")}


def _copy(root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(root, tmp_path / "copy"))


def _one_line(error: pytest.ExceptionInfo) -> str:
    assert isinstance(error.value, RVOSError)
    message = str(error.value)
    assert "\n" not in message and "Traceback" not in message
    return message


# --------------------------------------------------------------------------- Mini-Ref-YouTube-VOS


@pytest.mark.parametrize("category_files", [("meta.json",), ("train.json",)])
def test_mini_ytvos_parses_videos_expressions_categories(tmp_path, category_files):
    root = write_ytvos_arrangement(tmp_path, YTVOS_OBJECTS, category_files)
    layout = MiniRefYouTubeVOS(root)
    assert layout.objects_path == root / "train" / category_files[0]
    assert list(layout.videos) == sorted(YTVOS_OBJECTS)
    assert layout.videos["mixed"].frames == FRAMES
    mixed = layout.videos["mixed"].expressions
    assert [(e.exp_id, e.text, e.obj_ids) for e in mixed.values()] == [
        ("0", "the dog number 1", [1]), ("1", "a dog that is moving", [1]),
        ("2", "the cat number 2", [2]), ("3", "a cat that is moving", [2])]
    assert layout.objects["mixed"][2]["category"] == "cat"
    assert layout.name == "mini-ytvos" and layout.split == "train" and layout.has_annotations
    assert layout.folds == MINI_YTVOS_FOLDS
    assert layout.categories == tuple(c for g in MINI_YTVOS_FOLDS for c in g)
    assert len(set(layout.categories)) == 48
    layout.verify()


def test_meta_json_is_preferred_over_train_json(tmp_path):
    root = write_ytvos_arrangement(tmp_path, {"a": {1: "cat"}, "b": {1: "cat"}},
                                   ("meta.json", "train.json"))
    other = json.loads((root / "train" / "train.json").read_text())
    other["videos"]["a"]["objects"]["1"]["category"] = "dog"
    _write_json(root / "train" / "train.json", other)
    layout = MiniRefYouTubeVOS(root)
    assert layout.objects_path.name == "meta.json"
    assert {s.category for s in referring_samples(layout)} == {"cat"}


def test_mini_ytvos_frames_and_label_maps(ytvos):
    images, labels = ytvos.load_clip("mixed", FRAMES[:2])
    assert images.shape == (2, H, W, 3) and images.dtype == np.uint8
    assert labels.shape == (2, H, W) and labels.dtype == np.uint8
    assert set(np.unique(labels).tolist()) == {0, 1, 2}
    assert (labels[:, 4:20, 2:8] == 1).all() and (labels[:, 4:20, 10:16] == 2).all()
    expected = ytvos.root / "train" / "JPEGImages" / "cat0" / "00005.jpg"
    assert ytvos.frame_path("cat0", "00005") == expected


def test_referring_samples_carry_categories(ytvos):
    samples = referring_samples(ytvos)
    assert len(samples) == 2 * sum(len(objs) for objs in YTVOS_OBJECTS.values())
    for s in samples:
        assert s.category == YTVOS_OBJECTS[s.video][s.obj_ids[0]]
    videos_per_category = {c: len({s.video for s in samples if s.category == c})
                           for c in ("cat", "dog", "hat", "plant")}
    assert videos_per_category == {"cat": 7, "dog": 4, "hat": 2, "plant": 2}


@pytest.mark.parametrize("fold", [1, 2, 3, 4])
def test_folds_base_and_novel_disjoint_and_cover_the_48(fold):
    base, novel = fold_split(MINI_YTVOS_FOLDS, fold)
    assert not set(base) & set(novel)
    assert set(base) | set(novel) == {c for g in MINI_YTVOS_FOLDS for c in g}
    assert len(base) + len(novel) == 48 and len(novel) == 12


# --------------------------------------------------------------------------- episodes


def test_episode_shots_distinct_supports_same_category(ytvos):
    samples = referring_samples(ytvos)
    rng = np.random.default_rng(0)
    for shots, categories in ((1, ["cat", "dog", "hat", "plant"]), (5, ["cat"])):
        sampler = EpisodeSampler(samples, categories, shots)
        episodes = [sampler.training_episode(rng) for _ in range(100)]
        episodes += sampler.evaluation_episodes(seed=0) + sampler.evaluation_episodes(seed=0, draw=1)
        for episode in episodes:
            support_videos = [s.video for s in episode.support]
            assert len(episode.support) == shots
            assert len(set(support_videos)) == shots
            assert episode.query.video not in support_videos
            assert {s.category for s in episode.support} == {episode.query.category}


@pytest.mark.parametrize("fold", [1, 2, 3, 4])
def test_training_never_draws_novel_and_evaluation_covers_novel_once(ytvos, fold):
    samples = referring_samples(ytvos)
    present = {s.category for s in samples}
    base, novel = fold_split(ytvos.folds, fold)
    train = EpisodeSampler(samples, [c for c in base if c in present], shots=1)
    rng = np.random.default_rng(fold)
    drawn = {train.training_episode(rng).query.category for _ in range(300)}
    assert drawn and not drawn & set(novel)
    assert drawn == present - set(novel)       # every base category is drawn
    novel_present = [c for c in novel if c in present]
    if not novel_present:                      # fold 3: none of its categories fabricated
        return
    evaluation = EpisodeSampler(samples, novel_present, shots=1)
    for draw in range(3):
        episodes = evaluation.evaluation_episodes(seed=7, draw=draw)
        supports = {e.query.category: e.support for e in episodes}
        support_videos = {c: {s.video for s in sup} for c, sup in supports.items()}
        expected = Counter(s for s in samples if s.category in novel_present
                           and s.video not in support_videos[s.category])
        assert Counter(e.query for e in episodes) == expected
        assert all(e.support == supports[e.query.category] for e in episodes)


def test_same_seed_same_episodes(ytvos):
    samples = referring_samples(ytvos)
    sampler = EpisodeSampler(samples, ["cat", "dog"], shots=2)
    first = [sampler.training_episode(np.random.default_rng(3)) for _ in range(5)]
    again = [sampler.training_episode(np.random.default_rng(3)) for _ in range(5)]
    assert first == again
    rng_a, rng_b = np.random.default_rng(4), np.random.default_rng(4)
    assert ([sampler.training_episode(rng_a) for _ in range(20)]
            == [sampler.training_episode(rng_b) for _ in range(20)])
    assert sampler.evaluation_episodes(seed=1) == sampler.evaluation_episodes(seed=1)
    assert sampler.evaluation_episodes(seed=1) != sampler.evaluation_episodes(seed=2)


def test_episodes_do_not_depend_on_the_order_samples_are_read_in(ytvos):
    # A fix in rvos.data.fewshot: videos were sorted but the samples of a video kept their
    # reading order, so the same seed gave other episodes from a reordered sample list.
    samples = referring_samples(ytvos)
    shuffled = [samples[i] for i in np.random.default_rng(0).permutation(len(samples))]
    ordered = EpisodeSampler(samples, ["cat", "dog"], shots=2)
    reordered = EpisodeSampler(shuffled, ["cat", "dog"], shots=2)
    assert ordered.evaluation_episodes(seed=1) == reordered.evaluation_episodes(seed=1)
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    assert ([ordered.training_episode(rng_a) for _ in range(30)]
            == [reordered.training_episode(rng_b) for _ in range(30)])


def test_category_with_too_few_videos(ytvos):
    samples = referring_samples(ytvos)
    with pytest.raises(RVOSError) as error:
        EpisodeSampler(samples, ["cat", "hat"], shots=2)
    message = _one_line(error)
    assert "'hat'" in message and "2 annotated video(s)" in message and "needs 3" in message


# --------------------------------------------------------------------------- Mini-Ref-SAIL-VOS


@pytest.mark.parametrize("arrangement", ["code", "readme"])
def test_sailvos_both_arrangements(sail_roots, arrangement):
    root = sail_roots[arrangement]
    layout = MiniRefSAILVOS(root)
    assert layout.arrangement == arrangement and layout.name == "mini-sailvos"
    assert layout.folds == (MINI_SAILVOS_CATEGORIES,) and layout.has_annotations
    assert list(layout.videos) == sorted(SAILVOS_VIDEOS)
    if arrangement == "code":
        assert layout.frame_path("sail_dog0", "00000") == root / "Images" / "sail_dog0" / "00000.bmp"
        assert layout.mask_path("sail_dog0", "00000") == root / "Annotations" / "sail_dog0" / "00000.png"
    else:
        expected = root / "train" / "JPEGImages" / "sail_dog0" / "00000.jpg"
        assert layout.frame_path("sail_dog0", "00000") == expected
    # every expression refers to the binarised object 1, whatever id the json gives
    for record in layout.videos.values():
        assert all(e.obj_ids == [1] for e in record.expressions.values())
    samples = referring_samples(layout)
    expected = {(video, category) for video, (category, _, _) in SAILVOS_VIDEOS.items()}
    assert {(s.video, s.category) for s in samples} == expected
    layout.verify()

    images, labels = layout.load_clip("sail_dog0", FRAMES)
    assert images.shape == (3, H, W, 3) and labels.shape == (3, H, W)
    assert not labels[0].any()
    raw = np.asarray(Image.open(layout.mask_path("sail_dog0", FRAMES[1])))
    assert set(np.unique(raw).tolist()) == {0, 2, 5}          # as written: values 0/2/5
    assert set(np.unique(labels[1]).tolist()) == {0, 1}       # read: 0/1/1
    assert (labels[1] == (raw > 0)).all()
    assert set(np.unique(layout.load_label_maps("sail_car1", FRAMES[1:])).tolist()) == {0, 1}

    # episodes over the three categories, all novel
    sampler = EpisodeSampler(samples, list(layout.folds[0]), shots=1)
    episodes = sampler.evaluation_episodes(seed=0)
    assert len(episodes) == 2 * 3                 # per category: the other video's 2 sentences


def test_sailvos_visibility_follows_the_binarised_masks(sail_roots):
    layout = MiniRefSAILVOS(sail_roots["code"])
    dataset = ReferringClipDataset(layout, num_frames=2, input_size=(H, W))
    # the json names object 2 (raw mask values 2 and 5); it is visible in frames 2 and 3
    assert dataset.visible_frame_indices("sail_dog0", [1]) == [1, 2]
    sample = dataset[0]
    assert sample.masks.any()


def test_sailvos_objects_of_two_categories_in_one_video_refused(tmp_path):
    root = write_sailvos(tmp_path, "code")
    meta = json.loads((root / "meta.json").read_text())
    meta["videos"]["sail_dog0"]["objects"]["5"] = {"category": "car"}
    _write_json(root / "meta.json", meta)
    expressions = json.loads((root / "meta_expressions.json").read_text())
    expressions["videos"]["sail_dog0"]["expressions"]["9"] = {"exp": "the car", "obj_id": "5"}
    _write_json(root / "meta_expressions.json", expressions)
    with pytest.raises(RVOSError) as error:
        MiniRefSAILVOS(root)
    message = _one_line(error)
    assert str(root / "meta.json") in message and "'sail_dog0'" in message and "car, dog" in message


# --------------------------------------------------------------------------- synthetic split, opening


def test_open_fewshot_layout_synth(tmp_path):
    root = write_synth(tmp_path)
    layout = open_fewshot_layout("synth", root)
    assert isinstance(layout, FewShotSynthLayout) and isinstance(layout, RefYTVOSLayout)
    assert layout.name == "synth" and layout.categories == tuple(SHAPES)
    assert layout.folds == folds_by_rule(SHAPES, 4)
    samples = referring_samples(layout)
    assert {s.category for s in samples} == set(SHAPES)
    base, novel = fold_split(layout.folds, 1)
    sampler = EpisodeSampler(samples, base, shots=1)
    assert sampler.training_episode(np.random.default_rng(0)).query.category in base


def test_open_fewshot_layout_each_dataset(ytvos_root, sail_roots):
    assert type(open_fewshot_layout("mini-ytvos", ytvos_root)) is MiniRefYouTubeVOS
    assert type(open_fewshot_layout("mini-sailvos", sail_roots["code"])) is MiniRefSAILVOS


def test_synth_without_fewshot_entry(tmp_path):
    root = write_synth(tmp_path, fewshot=False)
    with pytest.raises(RVOSError) as error:
        open_fewshot_layout("synth", root)
    message = _one_line(error)
    assert str(root / "synth_info.json") in message
    assert "not a few-shot synthetic benchmark; generate it with rvos data synth --few-shot" in message


def test_synth_folds_must_split_the_categories(tmp_path):
    root = write_synth(tmp_path)
    info = json.loads((root / "synth_info.json").read_text())
    info["fewshot"]["folds"][0].append("hexagon")
    _write_json(root / "synth_info.json", info)
    with pytest.raises(RVOSError) as error:
        open_fewshot_layout("synth", root)
    assert "hexagon" in _one_line(error) and "synth_info.json" in str(error.value)


def test_unknown_dataset_and_missing_root(tmp_path):
    with pytest.raises(RVOSError) as error:
        open_fewshot_layout("mini-davis", tmp_path)
    message = _one_line(error)
    assert "'mini-davis'" in message and "mini-ytvos, mini-sailvos, synth" in message
    missing = tmp_path / "nowhere"
    for dataset in ("mini-ytvos", "mini-sailvos", "synth"):
        with pytest.raises(RVOSError) as error:
            open_fewshot_layout(dataset, missing)
        assert str(missing) in _one_line(error) and "root folder not found" in str(error.value)


# --------------------------------------------------------------------------- bad files


def test_unknown_category(tmp_path, ytvos_root):
    root = _copy(ytvos_root, tmp_path)
    meta = json.loads((root / "train" / "meta.json").read_text())
    meta["videos"]["hat1"]["objects"]["1"]["category"] = "unicorn"
    _write_json(root / "train" / "meta.json", meta)
    with pytest.raises(RVOSError) as error:
        MiniRefYouTubeVOS(root)
    message = _one_line(error)
    assert str(root / "train" / "meta.json") in message
    assert "'hat1'" in message and "'unicorn'" in message and "48" in message


def test_unknown_sailvos_category(tmp_path):
    root = write_sailvos(tmp_path, "code")
    meta = json.loads((root / "meta.json").read_text())
    meta["videos"]["sail_car0"]["objects"]["3"]["category"] = "cat"
    _write_json(root / "meta.json", meta)
    with pytest.raises(RVOSError) as error:
        MiniRefSAILVOS(root)
    message = _one_line(error)
    assert "'sail_car0'" in message and "'cat'" in message and "Mini-Ref-SAIL-VOS" in message


def test_referred_object_missing_from_meta_json(tmp_path, ytvos_root):
    root = _copy(ytvos_root, tmp_path)
    meta = json.loads((root / "train" / "meta.json").read_text())
    del meta["videos"]["mixed"]["objects"]["2"]
    _write_json(root / "train" / "meta.json", meta)
    with pytest.raises(RVOSError) as error:
        MiniRefYouTubeVOS(root)
    assert "'mixed' object 2" in _one_line(error) and "not listed" in str(error.value)


def test_missing_category_file_names_both(tmp_path, ytvos_root):
    root = _copy(ytvos_root, tmp_path)
    (root / "train" / "meta.json").unlink()
    with pytest.raises(RVOSError) as error:
        MiniRefYouTubeVOS(root)
    message = _one_line(error)
    assert "meta.json" in message and "train.json" in message and str(root / "train") in message


@pytest.mark.parametrize("target", ["meta.json", "train.json", "meta_expressions.json"])
def test_corrupt_json(tmp_path, target):
    root = write_ytvos_arrangement(tmp_path, {"a": {1: "cat"}},
                                   ("train.json",) if target == "train.json" else ("meta.json",))
    path = (root / "meta_expressions" / "train" / "meta_expressions.json"
            if target == "meta_expressions.json" else root / "train" / target)
    path.write_text('{"videos": {"a": ')
    with pytest.raises(RVOSError) as error:
        MiniRefYouTubeVOS(root)
    message = _one_line(error)
    assert str(path) in message and "invalid JSON" in message


def test_corrupt_synth_info(tmp_path):
    root = write_synth(tmp_path)
    (root / "synth_info.json").write_text("{not json")
    with pytest.raises(RVOSError) as error:
        FewShotSynthLayout(root)
    assert "synth_info.json" in _one_line(error) and "invalid JSON" in str(error.value)


def test_missing_frame_named_by_verify(tmp_path, ytvos_root):
    root = _copy(ytvos_root, tmp_path)
    frame = root / "train" / "JPEGImages" / "dog2" / "00005.jpg"
    frame.unlink()
    layout = MiniRefYouTubeVOS(root)
    with pytest.raises(RVOSError) as error:
        layout.verify()
    message = _one_line(error)
    assert str(frame) in message and "1 of the files" in message


def test_missing_bmp_frame_and_missing_masks_named_by_verify(tmp_path):
    root = write_sailvos(tmp_path, "code")
    frame = root / "Images" / "sail_person1" / "00010.bmp"
    frame.unlink()
    with pytest.raises(RVOSError) as error:
        MiniRefSAILVOS(root).verify()
    assert str(frame) in _one_line(error)
    # the pool is always annotated: without Annotations/ the masks are missing, not skipped
    _write_image(frame, 0, "BMP")
    shutil.rmtree(root / "Annotations")
    with pytest.raises(RVOSError) as error:
        MiniRefSAILVOS(root).verify()
    assert str(root / "Annotations" / "sail_car0" / "00000.png") in _one_line(error)


def test_sailvos_missing_expressions_names_both_arrangements(tmp_path):
    with pytest.raises(RVOSError) as error:
        MiniRefSAILVOS(tmp_path)
    message = _one_line(error)
    assert "meta_expressions.json" in message and "train/JPEGImages" in message


def test_referring_samples_names_the_category_file_it_read(tmp_path):
    # A fix in rvos.data.fewshot: the error named train/meta.json even when the categories
    # came from train.json (or, on Mini-Ref-SAIL-VOS, from <root>/meta.json).
    root = write_ytvos_arrangement(tmp_path / "ytvos", {"a": {1: "cat"}}, ("train.json",))
    layout = MiniRefYouTubeVOS(root)
    del layout.objects["a"][1]["category"]
    with pytest.raises(RVOSError) as error:
        referring_samples(layout)
    assert str(root / "train" / "train.json") in _one_line(error)
    # a plain layout without meta.json: the message says the file is missing
    plain = write_ytvos_arrangement(tmp_path / "plain", {"a": {1: "cat"}})
    (plain / "train" / "meta.json").unlink()
    with pytest.raises(RVOSError) as error:
        referring_samples(RefYTVOSLayout(plain, "train"))
    message = _one_line(error)
    assert str(plain / "train" / "meta.json") in message and "not found" in message
