import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rvos.data.davis import (DAVIS_TEXT_FILES, convert_davis_to_ytvos,
                             read_davis_text_annotations)
from rvos.data.palette import read_label_png, write_label_png
from rvos.data.ytvos import ReferringClipDataset, RefYTVOSLayout
from rvos.errors import RVOSError

ASSETS = Path(__file__).resolve().parents[1].parent / "shared" / "assets"
DAVIS_REAL = ASSETS / "davis-real"
H, W = 24, 40


# --------------------------------------------------------------------------- real DAVIS

@pytest.fixture(scope="module")
def real_layout(tmp_path_factory) -> RefYTVOSLayout:
    if not (DAVIS_REAL / "meta_expressions.json").is_file():
        pytest.skip(f"shared assets not available ({DAVIS_REAL})")
    out = tmp_path_factory.mktemp("refdavis")
    return convert_davis_to_ytvos(DAVIS_REAL, DAVIS_REAL / "meta_expressions.json", out,
                                  split="valid", link_frames=True)


def test_real_conversion_layout(real_layout):
    assert sorted(real_layout.videos) == ["blackswan", "car-shadow", "cows"]
    assert len(real_layout.samples()) == 12 and real_layout.has_annotations
    swan = real_layout.videos["blackswan"]
    assert len(swan.frames) == 50 and swan.frames[0] == "00000"
    assert list(swan.expressions) == ["0", "1", "2", "3"]
    assert swan.expressions["0"].text == "a black swan" and swan.expressions["0"].obj_ids == [1]
    real_layout.verify()
    # Masks are palette PNGs of object id 1 exactly where the DAVIS-2016 mask is 255.
    converted = real_layout.mask_path("blackswan", "00020")
    with Image.open(converted) as img:
        assert img.mode == "P"
    original = np.array(Image.open(DAVIS_REAL / "Annotations" / "480p" / "blackswan" / "00020.png"))
    assert np.array_equal(read_label_png(converted), (original > 127).astype(np.uint8))
    meta = json.loads((real_layout.split_dir / "meta.json").read_text())
    assert meta["videos"]["cows"]["objects"]["1"]["frames"] == real_layout.videos["cows"].frames


def test_real_clips(real_layout):
    ds = ReferringClipDataset(real_layout, num_frames=3, input_size=(96, 160), train=True,
                              max_frame_stride=4, scale_jitter=0.2, color_jitter=0.2, seed=1)
    index = real_layout.samples().index(("blackswan", "0"))
    s = ds[index]
    assert s.frames.shape == (3, 3, 96, 160) and s.masks.shape == (3, 96, 160)
    assert s.meta.orig_size == (480, 854) and s.text == "a black swan"
    # The swan is in every frame: non-empty masks, covering a plausible share of the image.
    area = s.masks.mean(dim=(1, 2))
    assert s.valid.all() and torch.all(area > 0.02) and torch.all(area < 0.6)


def test_real_flip_is_consistent(real_layout):
    plain = ReferringClipDataset(real_layout, num_frames=2, input_size=(48, 80), train=True)
    flip = ReferringClipDataset(real_layout, num_frames=2, input_size=(48, 80), train=True,
                                hflip_prob=1.0)
    index = real_layout.samples().index(("car-shadow", "2"))
    p, f = plain[index], flip[index]
    assert f.meta.flipped and f.meta.frame_names == p.meta.frame_names
    assert torch.equal(f.masks, p.masks.flip(-1))
    assert torch.allclose(f.frames, p.frames.flip(-1))
    assert torch.allclose(f.boxes[:, 0], 1 - p.boxes[:, 0]) and torch.equal(f.boxes[:, 1:], p.boxes[:, 1:])


# --------------------------------------------------------------------------- synthetic Ref-DAVIS17

SENTENCES = {  # (video, obj) -> 4 sentences: annot1 first, annot1 full, annot2 first, annot2 full
    ("seq-a", 1): ["the dog on the left", "a dog running", "a brown dog", "the dog running away"],
    ("seq-a", 2): ["a man in a red shirt", "a walking man", "the man on the right", "a man walks"],
    ("motorbike", 1): ["a motorbike", "a motorbike jumping", "a bike", "a bike in the air"],
}


def make_davis(root: Path, text_dir: Path | None = None) -> Path:
    """DAVIS-2017 folders: seq-a (val, objects 1 and 2) and motorbike (train, object 1), and
    the four Ref-DAVIS17 text files (annotator 2's in Latin-1, motorbike misspelt as the
    official files do)."""
    rng = np.random.default_rng(0)
    for video, n in (("seq-a", 4), ("motorbike", 3)):
        for t in range(n):
            frame = rng.integers(0, 255, size=(H, W, 3), dtype=np.uint8)
            (root / "JPEGImages" / "480p" / video).mkdir(parents=True, exist_ok=True)
            Image.fromarray(frame).save(root / "JPEGImages" / "480p" / video / f"{t:05d}.jpg")
            labels = np.zeros((H, W), dtype=np.uint8)
            labels[2:10, 2 + t:12 + t] = 1
            if video == "seq-a":
                labels[12:20, 25:35] = 2
            write_label_png(root / "Annotations" / "480p" / video / f"{t:05d}.png", labels)
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("seq-a\n")
    (root / "ImageSets" / "2017" / "train.txt").write_text("motorbike\n")
    text_dir = text_dir or root / "davis_text_annotations"
    text_dir.mkdir(parents=True, exist_ok=True)
    for a, name in enumerate(DAVIS_TEXT_FILES):
        lines = []
        for (video, obj), sentences in sorted(SENTENCES.items(), key=lambda kv: -kv[0][1]):
            name_in_file = "motor-bike" if video == "motorbike" else video
            text = sentences[a] + (" café" if a == 2 and obj == 2 else "")
            lines.append(f'{name_in_file} {obj} "{text}"')
        encoding = "latin-1" if a >= 2 else "utf-8"
        (text_dir / name).write_bytes(("\n".join(lines) + "\n\n").encode(encoding))
    return root


def test_text_annotations_parse(tmp_path):
    make_davis(tmp_path)
    first = read_davis_text_annotations(tmp_path / "davis_text_annotations" / DAVIS_TEXT_FILES[0])
    assert first == {"seq-a": {1: "the dog on the left", 2: "a man in a red shirt"},
                     "motorbike": {1: "a motorbike"}}
    latin = read_davis_text_annotations(tmp_path / "davis_text_annotations" / DAVIS_TEXT_FILES[2])
    assert latin["seq-a"][2] == "the man on the right café"


def test_convert_text_files_val_and_train(tmp_path):
    davis = make_davis(tmp_path / "DAVIS-root" / "DAVIS")   # the official zip's extra DAVIS/ level
    out = tmp_path / "ref-davis"
    val = convert_davis_to_ytvos(tmp_path / "DAVIS-root", davis / "davis_text_annotations", out)
    assert list(val.videos) == ["seq-a"]
    exps = val.videos["seq-a"].expressions
    assert list(exps) == [str(i) for i in range(8)]
    for obj in (1, 2):
        for a in range(4):   # ReferFormer's ids: 4 * (object rank) + annotator set
            e = exps[str(4 * (obj - 1) + a)]
            assert e.obj_ids == [obj]
            assert e.text.removesuffix(" café") == SENTENCES[("seq-a", obj)][a]
    assert val.videos["seq-a"].frames == ["00000", "00001", "00002", "00003"]

    train = convert_davis_to_ytvos(tmp_path / "DAVIS-root", davis, out, split="train")
    assert list(train.videos) == ["motorbike"]   # name fixed, split from ImageSets/train.txt
    assert (out / "meta_expressions" / "train" / "meta_expressions.json").is_file()

    ds = ReferringClipDataset(val, num_frames=2, input_size=(24, 40), train=True, hflip_prob=1.0)
    for index, (video, exp_id) in enumerate(val.samples()):
        s = ds[index]
        obj = exps[exp_id].obj_ids[0]
        assert s.valid.all()
        # Object 1 sits on the left, object 2 on the right; after the flip they swap sides.
        cx = float(s.boxes[0, 0])
        assert (cx > 0.5) if obj == 1 else (cx < 0.5)
        assert s.text == exps[exp_id].text.replace("left", "right").replace(
            "on the right café", "on the left café")


def test_convert_explicit_videos_without_masks(tmp_path):
    make_davis(tmp_path)
    layout = convert_davis_to_ytvos(tmp_path, tmp_path, tmp_path / "out", split="valid",
                                    annotations="", videos=["seq-a", "motorbike"])
    assert sorted(layout.videos) == ["motorbike", "seq-a"] and not layout.has_annotations
    meta = json.loads((layout.split_dir / "meta.json").read_text())
    assert sorted(meta["videos"]["seq-a"]["objects"]) == ["1", "2"]


def test_bad_text_line_names_file_and_line(tmp_path):
    make_davis(tmp_path)
    bad = tmp_path / "davis_text_annotations" / DAVIS_TEXT_FILES[1]
    bad.write_text('seq-a 1 "a dog"\nseq-a two "a man"\n')
    with pytest.raises(RVOSError, match="line 2") as e:
        convert_davis_to_ytvos(tmp_path, tmp_path, tmp_path / "out")
    assert str(bad) in str(e.value)
    bad.write_text('seq-a 1 ""\n')
    with pytest.raises(RVOSError, match="empty sentence"):
        read_davis_text_annotations(bad)


def test_missing_inputs(tmp_path):
    make_davis(tmp_path)
    (tmp_path / "davis_text_annotations" / DAVIS_TEXT_FILES[3]).unlink()
    with pytest.raises(RVOSError, match="not found") as e:
        convert_davis_to_ytvos(tmp_path, tmp_path, tmp_path / "out")
    assert DAVIS_TEXT_FILES[3] in str(e.value)
    with pytest.raises(RVOSError, match="JPEGImages"):
        convert_davis_to_ytvos(tmp_path / "nowhere", tmp_path, tmp_path / "out")


def test_mask_size_mismatch(tmp_path):
    make_davis(tmp_path)
    bad = tmp_path / "Annotations" / "480p" / "seq-a" / "00002.png"
    write_label_png(bad, np.zeros((H, W + 4), dtype=np.uint8))
    with pytest.raises(RVOSError, match="differs from the frame size") as e:
        convert_davis_to_ytvos(tmp_path, tmp_path, tmp_path / "out")
    assert str(bad) in str(e.value)
