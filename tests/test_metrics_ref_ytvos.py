"""Ref-YouTube-VOS submission layout, validation against meta_expressions.json, and zip."""

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rvos.errors import RVOSError
from rvos.metrics.ref_ytvos import validate_submission, write_expression_masks, zip_submission

ASSETS = Path(__file__).resolve().parents[1].parent / "shared" / "assets"
REAL_META = ASSETS / "expressions-text" / "refytvos_valid_meta_expressions.json"


@pytest.fixture()
def real_subset(tmp_path):
    """Three real videos of the valid meta_expressions.json, with tiny masks written."""
    if not REAL_META.is_file():
        pytest.skip(f"real Ref-YouTube-VOS meta not found at {REAL_META}")
    videos = json.loads(REAL_META.read_text())["videos"]
    subset = {v: videos[v] for v in sorted(videos)[:3]}
    meta = tmp_path / "meta_expressions.json"
    meta.write_text(json.dumps({"videos": subset}))
    annotations = tmp_path / "pred" / "Annotations"
    for video, entry in subset.items():
        frames = entry["frames"]
        for exp_id in entry["expressions"]:
            masks = np.zeros((len(frames), 6, 8), np.uint8)
            masks[:, 1:3, 2:5] = 1
            write_expression_masks(annotations, video, exp_id, frames, masks)
    return subset, meta, annotations


def test_complete_submission_is_zipped_with_every_frame(real_subset, tmp_path):
    subset, meta, annotations = real_subset
    assert validate_submission(annotations, subset) == []
    zip_path = zip_submission(annotations, tmp_path / "out" / "submission.zip", meta)
    names = zipfile.ZipFile(zip_path).namelist()
    expected = sum(len(e["expressions"]) * len(e["frames"]) for e in subset.values())
    assert len(names) == expected
    video = next(iter(subset))
    exp_id = next(iter(subset[video]["expressions"]))
    frame = subset[video]["frames"][0]
    assert f"Annotations/{video}/{exp_id}/{frame}.png" in names
    with zipfile.ZipFile(zip_path).open(f"Annotations/{video}/{exp_id}/{frame}.png") as f:
        img = Image.open(f)
        assert img.mode == "L" and set(np.unique(np.array(img))) == {0, 255}


def test_missing_frame_refuses_to_write_the_zip(real_subset, tmp_path):
    subset, meta, annotations = real_subset
    video = next(iter(subset))
    exp_id = next(iter(subset[video]["expressions"]))
    frame = subset[video]["frames"][-1]
    (annotations / video / exp_id / f"{frame}.png").unlink()
    zip_path = tmp_path / "submission.zip"
    with pytest.raises(RVOSError, match=f"{video}/{exp_id}/{frame}.png: frame missing"):
        zip_submission(annotations, zip_path, meta)
    assert not zip_path.exists() and not list(tmp_path.glob(".submission.zip*"))


def test_every_kind_of_problem_is_listed(real_subset):
    subset, _, annotations = real_subset
    videos = list(subset)
    first_exp = next(iter(subset[videos[0]]["expressions"]))
    frame0 = subset[videos[0]]["frames"][0]
    Image.new("RGB", (8, 6)).save(annotations / videos[0] / first_exp / f"{frame0}.png")
    (annotations / videos[1] / "999").mkdir()
    second_exp = next(iter(subset[videos[1]]["expressions"]))
    frame1 = subset[videos[1]]["frames"][1]
    (annotations / videos[1] / second_exp / f"{frame1}.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (annotations / "not-a-video").mkdir()
    problems = validate_submission(annotations, subset, frame_sizes={videos[2]: (6, 9)})
    text = "\n".join(problems)
    assert f"{videos[0]}/{first_exp}/{frame0}.png: mode RGB" in text
    assert f"{videos[1]}/999: expression not in meta_expressions.json" in text
    assert f"{videos[1]}/{second_exp}/{frame1}.png: unreadable PNG" in text
    assert "not-a-video: video not in meta_expressions.json" in text
    n_size = sum(len(subset[videos[2]]["expressions"]) * len(subset[videos[2]]["frames"]) for _ in [0])
    assert sum("expected 9x6" in p for p in problems) == n_size


def test_inconsistent_sizes_within_a_video_without_given_sizes(real_subset):
    subset, _, annotations = real_subset
    video = next(iter(subset))
    exp_id = next(iter(subset[video]["expressions"]))
    frame = subset[video]["frames"][2]
    Image.fromarray(np.zeros((7, 8), np.uint8), mode="L").save(annotations / video / exp_id / f"{frame}.png")
    problems = validate_submission(annotations, subset)
    assert len(problems) == 1 and "differs from other frames" in problems[0]


def test_against_the_full_real_meta_every_absent_video_is_reported(real_subset):
    _, _, annotations = real_subset
    videos = json.loads(REAL_META.read_text())["videos"]
    problems = validate_submission(annotations, videos)
    assert len(problems) == len(videos) - 3
    assert all(p.endswith("video folder missing") for p in problems)


def test_write_expression_masks_checks_frame_count(tmp_path):
    with pytest.raises(ValueError, match="T = 2"):
        write_expression_masks(tmp_path, "v", "0", ["00000", "00005"], np.zeros((3, 4, 4)))
