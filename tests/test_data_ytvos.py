import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rvos.config import DataConfig
from rvos.data.batch import collate_clips
from rvos.data.palette import write_label_png
from rvos.data.ytvos import (ReferringClipDataset, RefYTVOSLayout, evenly_spaced_indices,
                             sample_clip_indices)
from rvos.errors import RVOSError

ASSETS = Path(__file__).resolve().parents[1].parent / "shared" / "assets"
H, W = 32, 48


def _label_map(t: int, visible_2: set[int]) -> np.ndarray:
    """Object 1: a box on the left that moves right; object 2: a box on the right, only in
    the frames of ``visible_2``."""
    labels = np.zeros((H, W), dtype=np.uint8)
    labels[4:14, 2 + t:12 + t] = 1
    if t in visible_2:
        labels[18:28, 34:44] = 2
    return labels


def make_layout(root: Path, split: str = "train", videos: dict | None = None,
                annotations: bool = True, meta_in_split: bool = False) -> Path:
    """A tiny Ref-YouTube-VOS layout: videos {name: (num_frames, frames with object 2)}."""
    videos = videos or {"vid_a": (6, {4, 5}), "vid_b": (3, {0, 1, 2})}
    meta = {"videos": {}}
    rng = np.random.default_rng(0)
    for v, (n, visible_2) in videos.items():
        frames = [f"{5 * i:05d}" for i in range(n)]
        for t, f in enumerate(frames):
            img = rng.integers(0, 255, size=(H, W, 3), dtype=np.uint8)
            (root / split / "JPEGImages" / v).mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(root / split / "JPEGImages" / v / f"{f}.jpg", quality=90)
            if annotations:
                write_label_png(root / split / "Annotations" / v / f"{f}.png", _label_map(t, visible_2))
        meta["videos"][v] = {"frames": frames, "expressions": {
            "0": {"exp": "the box on the left", "obj_id": "1", "type": "spatial"},
            "1": {"exp": "the  box on the right", "obj_id": 2},
            "2": {"exp": "both boxes", "obj_id": [1, 2], "type": "multi"},
        }}
    meta_path = (root / split / "meta_expressions.json" if meta_in_split
                 else root / "meta_expressions" / split / "meta_expressions.json")
    meta_path.parent.mkdir(parents=True, exist_ok=True)
    meta_path.write_text(json.dumps(meta))
    return meta_path


@pytest.fixture
def layout(tmp_path) -> RefYTVOSLayout:
    make_layout(tmp_path)
    return RefYTVOSLayout(tmp_path, "train")


# --------------------------------------------------------------------------- layout

def test_layout_parses_expressions(layout):
    assert list(layout.videos) == ["vid_a", "vid_b"]
    rec = layout.videos["vid_a"]
    assert rec.frames == ["00000", "00005", "00010", "00015", "00020", "00025"]
    assert [e.obj_ids for e in rec.expressions.values()] == [[1], [2], [1, 2]]
    assert rec.expressions["0"].exp_type == "spatial" and rec.expressions["1"].exp_type == ""
    assert rec.expressions["1"].text == "the box on the right"   # whitespace collapsed
    assert layout.samples()[:3] == [("vid_a", "0"), ("vid_a", "1"), ("vid_a", "2")]
    assert len(layout.samples()) == 6 and layout.has_annotations
    layout.verify()


def test_meta_expressions_in_split_folder_and_mevis_anno_id(tmp_path):
    meta_path = make_layout(tmp_path, meta_in_split=True)
    data = json.loads(meta_path.read_text())
    data["videos"]["vid_a"]["expressions"]["2"] = {"exp": "both", "anno_id": ["1", "2"]}
    meta_path.write_text(json.dumps(data))
    layout = RefYTVOSLayout(tmp_path, "train")
    assert layout.meta_expressions_path == meta_path
    assert layout.videos["vid_a"].expressions["2"].obj_ids == [1, 2]


def test_load_frames_masks_and_union(layout):
    frames = layout.videos["vid_a"].frames[3:6]
    images, labels = layout.load_clip("vid_a", frames)
    assert images.shape == (3, H, W, 3) and images.dtype == np.uint8
    assert labels.shape == (3, H, W) and labels.dtype == np.uint8
    assert set(np.unique(labels).tolist()) == {0, 1, 2}
    one = layout.referred_mask(labels, [1])
    two = layout.referred_mask(labels, [2])
    both = layout.referred_mask(labels, [1, 2])
    assert one.dtype == bool and one.shape == (3, H, W)
    assert np.array_equal(both, one | two) and one.any() and not (one & two).any()
    assert not two[0].any() and two[1].any()         # object 2 appears at the 5th frame
    assert not layout.referred_mask(labels, []).any()


def test_real_refytvos_valid_expressions(tmp_path):
    src = ASSETS / "expressions-text" / "refytvos_valid_meta_expressions.json"
    if not src.is_file():
        pytest.skip(f"shared assets not available ({src})")
    dst = tmp_path / "meta_expressions" / "valid" / "meta_expressions.json"
    dst.parent.mkdir(parents=True)
    shutil.copy(src, dst)
    layout = RefYTVOSLayout(tmp_path, "valid")
    assert len(layout.videos) == 507 and len(layout.samples()) == 2096
    assert not layout.has_annotations
    assert all(not e.obj_ids for v in layout.videos.values() for e in v.expressions.values())
    first = layout.videos[next(iter(layout.videos))]
    assert first.frames == sorted(first.frames)


# --------------------------------------------------------------------------- bad input

def _rewrite(meta_path: Path, edit) -> None:
    data = json.loads(meta_path.read_text())
    edit(data)
    meta_path.write_text(json.dumps(data))


def test_missing_meta_expressions(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(RVOSError, match="meta_expressions.json not found") as e:
        RefYTVOSLayout(tmp_path, "train")
    assert "meta_expressions.json" in str(e.value) and str(tmp_path) in str(e.value)


def test_corrupt_json(tmp_path):
    meta_path = make_layout(tmp_path)
    meta_path.write_text('{"videos": {"vid_a": ')
    with pytest.raises(RVOSError, match="invalid JSON") as e:
        RefYTVOSLayout(tmp_path, "train")
    assert str(meta_path) in str(e.value)


def test_empty_sentence_names_video_and_expression(tmp_path):
    meta_path = make_layout(tmp_path)
    _rewrite(meta_path, lambda d: d["videos"]["vid_b"]["expressions"]["1"].update(exp="   "))
    with pytest.raises(RVOSError, match="empty sentence") as e:
        RefYTVOSLayout(tmp_path, "train")
    msg = str(e.value)
    assert str(meta_path) in msg and "vid_b" in msg and "'1'" in msg


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["videos"]["vid_a"].pop("frames"), 'missing key "frames"'),
    (lambda d: d["videos"]["vid_a"]["expressions"]["0"].pop("exp"), 'missing key "exp"'),
    (lambda d: d["videos"]["vid_a"]["expressions"]["0"].update(obj_id="cat"), "obj_id"),
    (lambda d: d.pop("videos"), '"videos"'),
])
def test_malformed_entries(tmp_path, edit, message):
    meta_path = make_layout(tmp_path)
    _rewrite(meta_path, edit)
    with pytest.raises(RVOSError, match=message) as e:
        RefYTVOSLayout(tmp_path, "train")
    assert str(meta_path) in str(e.value)


def test_missing_frame_names_the_file(layout):
    missing = layout.frame_path("vid_a", "00010")
    missing.unlink()
    with pytest.raises(RVOSError, match="frame not found") as e:
        layout.load_frames("vid_a", layout.videos["vid_a"].frames)
    assert str(missing) in str(e.value)
    with pytest.raises(RVOSError, match="missing") as e:
        layout.verify()
    assert str(missing) in str(e.value)


def test_mask_size_mismatch_names_the_mask(layout):
    bad = layout.mask_path("vid_b", "00005")
    write_label_png(bad, np.zeros((H // 2, W), dtype=np.uint8))
    with pytest.raises(RVOSError, match="differs from the frame size") as e:
        layout.load_clip("vid_b", layout.videos["vid_b"].frames)
    assert str(bad) in str(e.value)


def test_frame_size_mismatch_and_unreadable_frame(layout):
    odd = layout.frame_path("vid_b", "00010")
    Image.fromarray(np.zeros((H, W + 2, 3), dtype=np.uint8)).save(odd)
    with pytest.raises(RVOSError, match="frame size") as e:
        layout.load_frames("vid_b", layout.videos["vid_b"].frames)
    assert str(odd) in str(e.value)
    odd.write_bytes(b"not a jpeg")
    with pytest.raises(RVOSError, match="cannot read frame") as e:
        layout.load_frames("vid_b", ["00010"])
    assert str(odd) in str(e.value)


def test_missing_mask_names_the_file(layout):
    gone = layout.mask_path("vid_a", "00000")
    gone.unlink()
    with pytest.raises(RVOSError) as e:
        layout.load_clip("vid_a", ["00000"])
    assert str(gone) in str(e.value)


# --------------------------------------------------------------------------- clip sampling

def test_sample_clip_indices_properties():
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 7, 20):
        for t in (1, 3, 5):
            for anchor in (None, 0, n - 1, n // 2):
                idx = sample_clip_indices(n, t, 3, rng, anchor)
                assert len(idx) == t and 0 <= min(idx) and max(idx) < n
                assert all(b >= a for a, b in zip(idx, idx[1:]))
                if n >= t:
                    assert len(set(idx)) == t
                if anchor is not None:
                    assert anchor in idx
    assert sample_clip_indices(2, 4, 3, rng) == [0, 0, 1, 1]   # short video: repeated, in order
    strides = {tuple(np.diff(sample_clip_indices(30, 3, 4, rng)).tolist()) for _ in range(50)}
    assert strides == {(1, 1), (2, 2), (3, 3), (4, 4)}
    assert evenly_spaced_indices(10, 4) == [0, 3, 6, 9] and evenly_spaced_indices(3, 0) == [0, 1, 2]


# --------------------------------------------------------------------------- dataset

def _dataset(layout, **kw):
    args = dict(num_frames=2, input_size=(16, 24), train=True, max_frame_stride=2,
                hflip_prob=0.5, scale_jitter=0.2, color_jitter=0.2, seed=3)
    args.update(kw)
    return ReferringClipDataset(layout, **args)


def test_item_contents(layout):
    ds = _dataset(layout, hflip_prob=0.0, scale_jitter=0.0, color_jitter=0.0)
    assert len(ds) == 6
    s = ds[2]   # vid_a, "both boxes"
    assert s.frames.shape == (2, 3, 16, 24) and s.frames.dtype == torch.float32
    assert s.masks.shape == (2, 16, 24) and s.masks.dtype == torch.float32
    assert s.valid.shape == (2,) and s.valid.dtype == torch.bool
    assert s.boxes.shape == (2, 4)
    assert set(s.masks.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(s.valid, s.masks.flatten(1).any(1))
    assert torch.all(s.boxes[~s.valid] == 0) and torch.all(s.boxes[s.valid] > 0)
    assert s.text == "both boxes"
    m = s.meta
    assert (m.video, m.exp_id, m.obj_ids, m.exp_type) == ("vid_a", "2", [1, 2], "multi")
    assert m.orig_size == (H, W) and not m.flipped
    assert len(m.frame_names) == 2 and all(f in layout.videos["vid_a"].frames for f in m.frame_names)
    batch = collate_clips([ds[0], ds[1]])
    assert batch.frames.shape == (2, 2, 3, 16, 24)


def test_items_are_reproducible_and_change_with_epoch(layout):
    a, b = _dataset(layout), _dataset(layout)
    for i in range(len(a)):
        x, y = a[i], b[i]
        assert torch.equal(x.frames, y.frames) and torch.equal(x.masks, y.masks)
        assert x.meta == y.meta and x.text == y.text
    names = []
    for epoch in range(6):
        a.set_epoch(epoch)
        names.append(tuple(a[0].meta.frame_names) + (a[0].meta.flipped,))
    assert len(set(names)) > 1


def test_resumed_run_sees_the_same_clips_with_workers(layout):
    """A fresh dataset set to epoch 2 (a resumed run), read through 2 workers, gives the
    clips an uninterrupted run read in the main process at epoch 2."""
    uninterrupted = _dataset(layout)
    for epoch in range(3):
        uninterrupted.set_epoch(epoch)
        expected = [uninterrupted[i] for i in range(len(uninterrupted))]
    resumed = _dataset(layout)
    resumed.set_epoch(2)
    loader = torch.utils.data.DataLoader(resumed, batch_size=2, num_workers=2,
                                         collate_fn=collate_clips,
                                         multiprocessing_context="fork")
    batches = list(loader)
    got = [m for batch in batches for m in batch.meta]
    frames = torch.cat([batch.frames for batch in batches])
    assert got == [s.meta for s in expected]
    assert torch.equal(frames, torch.stack([s.frames for s in expected]))


def test_training_prefers_clips_where_the_object_is_visible(tmp_path):
    # Object 2 shows in 2 of 12 frames: a random 2-frame clip would miss it most of the time.
    make_layout(tmp_path, videos={"vid_a": (12, {7, 8})})
    layout = RefYTVOSLayout(tmp_path, "train")
    ds = _dataset(layout, scale_jitter=0.0)
    index = layout.samples().index(("vid_a", "1"))
    for epoch in range(15):
        ds.set_epoch(epoch)
        s = ds[index]
        assert s.valid.any(), f"epoch {epoch}: clip {s.meta.frame_names} misses the object"


def test_meta_json_frames_are_used_for_visibility(tmp_path):
    make_layout(tmp_path, videos={"vid_a": (12, {7, 8})})
    # meta.json (as in real Ref-YouTube-VOS) lists the object's frames: no mask scan needed.
    (tmp_path / "train" / "meta.json").write_text(json.dumps({"videos": {"vid_a": {"objects": {
        "2": {"category": "box", "frames": ["00035", "00040"]}}}}}))
    layout = RefYTVOSLayout(tmp_path, "train")
    ds = _dataset(layout)
    assert ds.visible_frame_indices("vid_a", [2]) == [7, 8]
    assert ds._ids_per_frame == {}
    # Without meta.json the label maps give the same answer.
    ds2 = _dataset(RefYTVOSLayout(tmp_path, "train"))
    ds2.layout.objects = {}
    assert ds2.visible_frame_indices("vid_a", [2]) == [7, 8]


def test_flip_swaps_the_sentence(layout):
    ds = _dataset(layout, hflip_prob=1.0, scale_jitter=0.0, color_jitter=0.0)
    plain = _dataset(layout, hflip_prob=0.0, scale_jitter=0.0, color_jitter=0.0)
    s, p = ds[0], plain[0]
    assert s.meta.flipped and s.text == "the box on the right"
    assert torch.equal(s.masks, p.masks.flip(-1))


def test_eval_clips_cover_the_video_without_augmentation(layout):
    ds = _dataset(layout, train=False, num_frames=3)
    s = ds[0]
    assert s.meta.frame_names == ["00000", "00010", "00025"] and not s.meta.flipped
    whole = _dataset(layout, train=False, num_frames=0)[0]
    assert whole.meta.frame_names == layout.videos["vid_a"].frames
    with pytest.raises(ValueError):
        _dataset(layout, train=True, num_frames=0)


def test_split_without_annotations(tmp_path):
    make_layout(tmp_path, split="valid", annotations=False)
    layout = RefYTVOSLayout(tmp_path, "valid")
    assert not layout.has_annotations
    s = _dataset(layout, num_frames=3)[1]
    assert s.masks.shape == (3, 16, 24) and not s.masks.any() and not s.valid.any()


def test_max_samples_is_deterministic_and_spread(layout):
    ds = _dataset(layout, max_samples=3)
    assert ds.items == _dataset(layout, max_samples=3).items
    assert len(ds) == 3 and {v for v, _ in ds.items} == {"vid_a", "vid_b"}


def test_from_config(tmp_path):
    make_layout(tmp_path)
    cfg = DataConfig(root=str(tmp_path), num_frames=3, input_size=(16, 16), hflip_prob=1.0,
                     max_train_samples=4, max_val_samples=2)
    train = ReferringClipDataset.from_config(cfg, "train", train=True)
    val = ReferringClipDataset.from_config(cfg, "train", train=False)
    assert len(train) == 4 and len(val) == 2
    assert train[0].frames.shape == (3, 3, 16, 16)
    assert train[0].meta.flipped and not val[0].meta.flipped
