"""The MeViS reader (official layout: JPEGImages, meta_expressions.json, mask_dict.json of COCO
RLEs keyed by anno_id) and its training clips (the union of the referred objects, LMPM's
frame sampling)."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from rvos.config import load_config
from rvos.data.batch import collate_clips
from rvos.data.build import build_train_dataset, verify_validation_split
from rvos.data.mevis import MeViSClipDataset, MeViSLayout, lmpm_clip_indices
from rvos.errors import RVOSError

H, W = 24, 32


def rle(mask: np.ndarray) -> dict:
    """A COCO RLE as it stands in the official mask_dict.json: pycocotools' compressed
    encoding of a Fortran-ordered uint8 mask, ``size`` [H, W], ``counts`` a str (JSON
    cannot hold the bytes pycocotools returns)."""
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in encoded["size"]], "counts": encoded["counts"].decode("ascii")}


def box_masks(n: int, y0: int, x0: int, present, size=(H, W)) -> np.ndarray:
    """(n, H, W) bool: a 6x8 box moving right one pixel per frame, in the frames ``present``."""
    masks = np.zeros((n, *size), dtype=bool)
    for t in present:
        masks[t, y0:y0 + 6, x0 + t:x0 + t + 8] = True
    return masks


def objects_of(n: int) -> dict[str, np.ndarray]:
    """The objects of video "cats" (n frames), by anno_id: 100 in every frame, 101 only from
    frame 3 on."""
    return {"100": box_masks(n, 2, 1, range(n)), "101": box_masks(n, 14, 16, range(3, n))}


def make_mevis(root: Path, split: str = "train", masks: bool = True, n: int = 6) -> dict:
    """A tiny MeViS split in the official layout; returns the objects' masks by anno_id.

    Videos: "cats" (n frames of H x W, three expressions: one object, both, the late one),
    "single" (1 frame: LMPM's loader leaves such videos out of training), "empty" (an object
    never visible, frames of another size). A split without ``masks`` has no
    mask_dict.json and no anno_id, as the official valid split."""
    rng = np.random.default_rng(0)
    objects = objects_of(n)
    videos = {"cats": (n, (H, W)), "single": (1, (H, W)), "empty": (3, (20, 28))}
    for video, (count, size) in videos.items():
        folder = root / split / "JPEGImages" / video
        folder.mkdir(parents=True)
        for t in range(count):
            img = rng.integers(0, 255, size=(*size, 3), dtype=np.uint8)
            Image.fromarray(img).save(folder / f"{t:05d}.jpg", quality=90)
    frames = {v: [f"{t:05d}" for t in range(c)] for v, (c, _) in videos.items()}
    expressions = {
        "cats": {"0": {"exp": "the cat walking right", "obj_id": [0], "anno_id": [100]},
                 "1": {"exp": "both cats", "obj_id": [0, 1], "anno_id": [100, 101]},
                 "2": {"exp": "the cat that comes in late", "obj_id": [1], "anno_id": [101]}},
        "single": {"0": {"exp": "the cat", "obj_id": [0], "anno_id": [200]}},
        "empty": {"0": {"exp": "the dog that never shows", "obj_id": [0], "anno_id": [300]}},
    }
    if not masks:
        for exps in expressions.values():
            for exp in exps.values():
                del exp["obj_id"], exp["anno_id"]
    meta = {"videos": {v: {"frames": frames[v], "expressions": expressions[v]} for v in videos}}
    (root / split / "meta_expressions.json").write_text(json.dumps(meta))
    if masks:
        single = box_masks(1, 2, 2, [0])
        mask_dict = {a: [rle(m) if m.any() else None for m in ms] for a, ms in objects.items()}
        mask_dict["200"] = [rle(single[0])]
        mask_dict["300"] = [None] * 3
        (root / split / "mask_dict.json").write_text(json.dumps(mask_dict))
    return objects


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def mevis_config(root: Path, *overrides: str):
    return load_config(None, [f"data.root={root}", "data.format=mevis", "data.train_split=train",
                              "data.val_split=valid_u", f"data.input_size=[{H},{W}]",
                              "data.num_frames=3", "data.hflip_prob=0", *overrides])


def test_reader_keeps_anno_ids_and_ignores_zero_based_obj_ids(tmp_path):
    make_mevis(tmp_path)
    layout = MeViSLayout(tmp_path, "train")
    assert layout.has_annotations
    exp = layout.videos["cats"].expressions["1"]
    assert exp.anno_ids == ["100", "101"] and exp.obj_ids == []
    assert layout.videos["cats"].frames == [f"{t:05d}" for t in range(6)]
    assert layout.visible_frames(["101"]).tolist() == [False] * 3 + [True] * 3


def test_training_target_is_the_union_of_the_referred_objects(tmp_path):
    objects = make_mevis(tmp_path)
    cfg = mevis_config(tmp_path, "data.num_frames=4")
    dataset = build_train_dataset(cfg)
    assert isinstance(dataset, MeViSClipDataset)
    # LMPM's loader: no 1-frame video, no expression whose objects never show
    assert dataset.items == [("cats", "0"), ("cats", "1"), ("cats", "2")]
    union = objects["100"] | objects["101"]
    for epoch in range(3):
        dataset.set_epoch(epoch)
        sample = dataset[1]
        indices = [int(f) for f in sample.meta.frame_names]
        assert np.array_equal(sample.masks.numpy() > 0.5, union[indices])
        assert sample.valid.tolist() == [True] * 4
        assert sample.meta.obj_ids == [100, 101] and sample.text == "both cats"
        late = dataset[2]
        late_indices = [int(f) for f in late.meta.frame_names]
        assert late.valid.tolist() == [i >= 3 for i in late_indices]   # absent: empty, not valid
        assert np.array_equal(late.masks.numpy() > 0.5, objects["101"][late_indices])
    batch = collate_clips([dataset[0], dataset[1]])
    assert batch.frames.shape == (2, 4, 3, H, W) and batch.masks.shape == (2, 4, H, W)


def test_lmpm_clip_sampling():
    """A random reference frame, the others drawn with replacement within frame_range of it,
    sorted; repeats happen (np.random.choice replaces by default in the official mapper)."""
    rng = np.random.default_rng(1)
    seen, repeats = set(), 0
    for _ in range(400):
        clip = lmpm_clip_indices(30, 6, 8, rng)
        assert len(clip) == 6 and clip == sorted(clip) and 0 <= clip[0] and clip[-1] < 30
        assert clip[-1] - clip[0] <= 16
        assert any(all(abs(i - ref) <= 8 for i in clip) for ref in clip)
        seen.update(clip)
        repeats += len(set(clip)) < 6
    assert seen == set(range(30)) and repeats > 0
    # a 2-frame video: the frame that is not the reference fills the rest of the clip
    assert lmpm_clip_indices(2, 3, 8, np.random.default_rng(0)) in ([0, 0, 1], [0, 1, 1])
    assert len(lmpm_clip_indices(2, 1, 8, np.random.default_rng(0))) == 1
    with pytest.raises(ValueError):
        lmpm_clip_indices(1, 3, 8, rng)


def test_clips_depend_only_on_seed_epoch_and_index(tmp_path):
    make_mevis(tmp_path, n=12)
    cfg = mevis_config(tmp_path, "data.frame_range=2")
    a, b = build_train_dataset(cfg), build_train_dataset(cfg)
    for ds in (a, b):
        ds.set_epoch(4)
    assert a[2].meta.frame_names == b[2].meta.frame_names
    clips = set()
    for epoch in range(20):
        a.set_epoch(epoch)
        clips.add(tuple(a[1].meta.frame_names))
    assert len(clips) > 1
    for clip in clips:
        assert int(clip[-1]) - int(clip[0]) <= 4      # within +-frame_range of the reference


def test_missing_mask_dict_is_a_clear_error(tmp_path):
    make_mevis(tmp_path)
    (tmp_path / "train" / "mask_dict.json").unlink()
    with pytest.raises(RVOSError, match=r"mask_dict\.json"):
        build_train_dataset(mevis_config(tmp_path))


def test_an_anno_id_missing_from_mask_dict_names_the_file_and_the_id(tmp_path):
    make_mevis(tmp_path)
    edit_json(tmp_path / "train" / "mask_dict.json", lambda d: d.pop("101"))
    with pytest.raises(RVOSError, match=r"mask_dict\.json: anno_id 101 .*not in mask_dict"):
        build_train_dataset(mevis_config(tmp_path))


def test_a_mask_list_of_the_wrong_length_is_an_error(tmp_path):
    make_mevis(tmp_path)
    edit_json(tmp_path / "train" / "mask_dict.json", lambda d: d["100"].pop())
    with pytest.raises(RVOSError, match=r"mask_dict\.json: anno_id 100 .*6 masks .*got 5"):
        build_train_dataset(mevis_config(tmp_path))


def test_an_rle_of_the_wrong_size_names_the_file_object_and_frame(tmp_path):
    make_mevis(tmp_path)
    wrong = rle(np.ones((H + 2, W), dtype=bool))
    edit_json(tmp_path / "train" / "mask_dict.json", lambda d: d["100"].__setitem__(2, wrong))
    dataset = MeViSLayout(tmp_path, "train")
    with pytest.raises(RVOSError, match=r"mask_dict\.json: anno_id 100, frame 00002 .*32x26.*32x24"):
        dataset.referred_masks("cats", ["100"], [0, 1, 2], (H, W))


def test_a_missing_frame_fails_before_training(tmp_path):
    make_mevis(tmp_path)
    (tmp_path / "train" / "JPEGImages" / "cats" / "00004.jpg").unlink()
    with pytest.raises(RVOSError, match=r"cats/00004\.jpg"):
        build_train_dataset(mevis_config(tmp_path))


def test_bad_anno_ids_in_meta_expressions(tmp_path):
    make_mevis(tmp_path)
    edit_json(tmp_path / "train" / "meta_expressions.json",
              lambda d: d["videos"]["cats"]["expressions"]["0"].__setitem__("anno_id", ["x"]))
    with pytest.raises(RVOSError, match=r"meta_expressions\.json: video 'cats' expression '0': anno_id"):
        MeViSLayout(tmp_path, "train")


def test_validation_split_checked_only_when_validation_runs(tmp_path):
    make_mevis(tmp_path)
    verify_validation_split(mevis_config(tmp_path, "train.eval_every=0"))   # no valid_u: fine
    with pytest.raises(RVOSError, match=r"valid_u/meta_expressions\.json"):
        verify_validation_split(mevis_config(tmp_path, "train.eval_every=1"))
    make_mevis(tmp_path, "valid_u")
    verify_validation_split(mevis_config(tmp_path, "train.eval_every=1"))
    (tmp_path / "valid_u" / "JPEGImages" / "empty" / "00001.jpg").unlink()
    with pytest.raises(RVOSError, match=r"empty/00001\.jpg"):
        verify_validation_split(mevis_config(tmp_path, "train.eval_every=1"))
    # the first expression only: the damaged video is not read
    verify_validation_split(mevis_config(tmp_path, "train.eval_every=1", "data.max_val_samples=1"))
    make_mevis(tmp_path, "valid", masks=False)
    verify_validation_split(mevis_config(tmp_path, "train.eval_every=1", "data.val_split=valid"))

