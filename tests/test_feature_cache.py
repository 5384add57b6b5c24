"""The frozen-feature cache: contents equal a fresh forward, keys and invalidation, damaged
or interrupted caches rebuilt, unwritable folders reported."""

import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from rvos.data.synthetic import SynthConfig, generate_benchmark
from rvos.data.transforms import preprocess_frames
from rvos.data.ytvos import RefYTVOSLayout
from rvos.errors import RVOSError
from rvos.models import feature_cache as fc
from rvos.models.backbones import build_backbone

SIZE = (48, 48)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "data"
    generate_benchmark(root, SynthConfig(train_videos=3, valid_videos=1, test_videos=1,
                                         compositional_videos=1, num_frames=5, height=48,
                                         width=48, seed=3), progress=False)
    return root


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return build_backbone("mobilenet_v2", "none").eval()


def _open(root, layout, backbone, **kw):
    kw.setdefault("progress", False)
    return fc.open_or_build(root, layout, backbone, "mobilenet_v2", SIZE, **kw)


def _copy_data(data: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    return copy


def test_cached_features_equal_a_fresh_forward(data, backbone, tmp_path):
    layout = RefYTVOSLayout(data, "train")
    cache = _open(tmp_path, layout, backbone, flip=True)
    assert len(cache) == sum(len(r.frames) for r in layout.videos.values())
    video = sorted(layout.videos)[1]
    span = cache.videos[video]
    images, labels = layout.load_clip(video, span.frames)
    x = preprocess_frames(images, SIZE)           # the Predictor's preprocessing
    with torch.no_grad():
        fresh = backbone(x)
        fresh_flip = backbone(x.flip(-1))
    rows = np.arange(span.start, span.start + span.count)
    for cached, want in zip(cache.features(rows), fresh):
        torch.testing.assert_close(cached, want.half().float(), atol=2e-3, rtol=2e-3)
    for cached, want in zip(cache.features(rows, flip=True), fresh_flip):
        torch.testing.assert_close(cached, want.half().float(), atol=2e-3, rtol=2e-3)
    np.testing.assert_array_equal(cache.frames[rows], images)        # 48x48 source: no resize
    np.testing.assert_array_equal(cache.labels[rows], labels)


def test_a_complete_cache_is_reused_not_rebuilt(data, backbone, tmp_path, monkeypatch):
    layout = RefYTVOSLayout(data, "train")
    first = _open(tmp_path, layout, backbone)
    monkeypatch.setattr(fc, "build_cache", lambda *a, **k: pytest.fail("rebuilt a good cache"))
    again = _open(tmp_path, layout, backbone)
    assert again.folder == first.folder


def test_the_key_follows_weights_transform_and_data(data, backbone, tmp_path):
    data = _copy_data(data, tmp_path)
    layout = RefYTVOSLayout(data, "train")
    base = _open(tmp_path / "c", layout, backbone).folder
    other = build_backbone("mobilenet_v2", "none").eval()
    with torch.no_grad():
        other.load_state_dict(backbone.state_dict())
        next(other.parameters()).add_(1e-3)
    assert _open(tmp_path / "c", layout, other).folder != base
    assert fc.open_or_build(tmp_path / "c", layout, backbone, "mobilenet_v2", (32, 32),
                            progress=False).folder != base
    assert _open(tmp_path / "c", layout, backbone, flip=True).folder != base
    assert _open(tmp_path / "c", layout, backbone, dtype="bfloat16").folder != base
    # the data: a frame rewritten (new size or time) gives another key
    video = sorted(layout.videos)[0]
    frame = layout.frame_path(video, layout.videos[video].frames[0])
    frame.write_bytes(frame.read_bytes() + b"\0")
    assert _open(tmp_path / "c", RefYTVOSLayout(data, "train"), backbone).folder != base


@pytest.mark.parametrize("damage", ["truncate", "flip_byte", "no_manifest", "bad_manifest"])
def test_a_damaged_cache_is_rebuilt_with_a_warning(data, backbone, tmp_path, damage):
    layout = RefYTVOSLayout(data, "train")
    cache = _open(tmp_path, layout, backbone)
    good = np.array(cache.maps[1])
    folder = cache.folder
    del cache
    target = folder / "feat_s8.npy"
    if damage == "truncate":
        with open(target, "r+b") as f:
            f.truncate(target.stat().st_size - 100)
    elif damage == "flip_byte":
        raw = bytearray(target.read_bytes())
        raw[-10] ^= 0xFF
        target.write_bytes(bytes(raw))
    elif damage == "no_manifest":
        (folder / fc.MANIFEST).unlink()
    else:
        (folder / fc.MANIFEST).write_text("{not json")
    with pytest.warns(UserWarning, match="feature cache .*rebuilding"):
        rebuilt = _open(tmp_path, layout, backbone)
    np.testing.assert_array_equal(np.array(rebuilt.maps[1]), good)


def test_an_interrupted_build_leaves_nothing_that_looks_complete(data, backbone, tmp_path,
                                                                 monkeypatch):
    layout = RefYTVOSLayout(data, "train")
    calls = {"n": 0}
    real_forward = backbone.forward

    def dying_forward(x):
        calls["n"] += 1
        if calls["n"] > 1:             # the shape probe passes, the first real batch dies
            raise KeyboardInterrupt
        return real_forward(x)

    monkeypatch.setattr(backbone, "forward", dying_forward)
    with pytest.raises(KeyboardInterrupt):
        _open(tmp_path, layout, backbone)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    # a kill -9 leaves a .partial folder of a dead process (any key): removed next time;
    # folders rvos did not name so are left alone
    stale = tmp_path / f"train-{'0' * 24}.partial-999999999"
    stale.mkdir()
    (tmp_path / "mine.partial-999999999").mkdir()
    cache = _open(tmp_path, layout, backbone)
    assert cache.folder.is_dir() and not stale.exists()
    assert (tmp_path / "mine.partial-999999999").is_dir()


def test_a_partial_of_this_key_from_a_dead_build_is_removed(data, backbone, tmp_path):
    layout = RefYTVOSLayout(data, "train")
    folder = _open(tmp_path, layout, backbone).folder
    shutil.rmtree(folder)
    stale = folder.with_name(folder.name + ".partial-999999999")
    stale.mkdir()
    (stale / "feat_s4.npy").write_bytes(b"junk")
    _open(tmp_path, layout, backbone)
    assert not stale.exists() and folder.is_dir()


def test_a_cache_folder_that_cannot_be_written_is_a_clear_error(data, backbone, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(RVOSError, match="cannot create the feature cache folder"):
        _open(blocker / "cache", RefYTVOSLayout(data, "train"), backbone)


def test_manifest_records_every_array_with_its_digest(data, backbone, tmp_path):
    cache = _open(tmp_path, RefYTVOSLayout(data, "train"), backbone, flip=True)
    manifest = json.loads((cache.folder / fc.MANIFEST).read_text())
    names = set(manifest["arrays"])
    assert names == {"feat_s4", "feat_s8", "feat_s16", "feat_s32", "flip_feat_s4", "flip_feat_s8",
                     "flip_feat_s16", "flip_feat_s32", "frames", "labels"}
    for name, info in manifest["arrays"].items():
        assert fc.file_digest(cache.folder / f"{name}.npy") == info["blake2b"]
    assert os.path.basename(cache.folder).startswith("train-")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fc.check_cache(cache.folder, manifest["key"]) is None


def test_a_split_name_with_slashes_stays_inside_the_cache_folder(data, backbone, tmp_path):
    layout = RefYTVOSLayout(data, "train")
    layout.split = "../../train"
    cache = _open(tmp_path / "c", layout, backbone)
    assert cache.folder.parent == tmp_path / "c" and cache.folder.name.startswith(".._.._train-")
