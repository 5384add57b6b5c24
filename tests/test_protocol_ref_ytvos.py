"""``rvos evaluate --dataset ref-ytvos``: an inference-only split (real ``valid``) becomes a
validated submission zip; an annotated split is scored (and, with --save-masks, also written
in the submission layout)."""

import argparse
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rvos.cli import main
from rvos.config import load_config
from rvos.data.palette import write_label_png
from rvos.engine.checkpoint import save_checkpoint
from rvos.engine.protocols import EvaluationRequest
from rvos.engine.protocols.ref_ytvos import evaluate
from rvos.errors import RVOSError
from rvos.inference import FramePrediction

VALID_VIDEOS = ["0062f687f1", "00f88c4f0a"]     # real valid videos (the submission)
TEST_VIDEOS = ["01057faacf", "0620b43a31"]      # listed in valid's file too, as in the real one
SIZES = {"0062f687f1": (12, 20), "00f88c4f0a": (10, 16)}


@pytest.fixture(scope="module")
def real_meta(assets):
    path = assets / "expressions-text" / "refytvos_valid_meta_expressions.json"
    return json.loads(path.read_text())["videos"]


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def fabricate_valid(root: Path, real_meta: dict) -> Path:
    """The competition layout in small: valid's meta_expressions lists valid and test videos,
    test's lists the test videos, valid/JPEGImages holds the valid videos' listed frames."""
    write_json(root / "meta_expressions" / "valid" / "meta_expressions.json",
               {"videos": {v: real_meta[v] for v in VALID_VIDEOS + TEST_VIDEOS}})
    write_json(root / "meta_expressions" / "test" / "meta_expressions.json",
               {"videos": {v: real_meta[v] for v in TEST_VIDEOS}})
    rng = np.random.default_rng(0)
    for video in VALID_VIDEOS:
        folder = root / "valid" / "JPEGImages" / video
        folder.mkdir(parents=True)
        for frame in real_meta[video]["frames"]:
            pixels = rng.integers(0, 255, (*SIZES[video], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{frame}.jpg")
    return root


def pattern_mask(frame: str, k: int, size: tuple[int, int]) -> np.ndarray:
    """The fake model's mask for sentence k on a frame: (H, W) bool."""
    rows, cols = np.indices(size)
    return (rows + 2 * cols + k + int(frame)) % 3 == 0


class PatternPredictor:
    """Stands in for a model: a mask per sentence that depends on the frame and the sentence's
    position; counts the passes over videos."""

    def __init__(self):
        self.calls: list[list[str]] = []

    def predict(self, frames, texts):
        self.calls.append(list(texts))
        for name, frame in frames:
            probs = np.stack([pattern_mask(name, k, frame.shape[:2]) for k in range(len(texts))])
            yield FramePrediction(name=name, frame=frame, probs=probs.astype(np.float32))


def request(root, stage, predictor, split="valid", **options):
    return EvaluationRequest(predictor, root, [split], stage, progress=False,
                             options=argparse.Namespace(**options))


def expected_members(real_meta) -> set[str]:
    return {f"Annotations/{v}/{e}/{f}.png" for v in VALID_VIDEOS
            for e in real_meta[v]["expressions"] for f in real_meta[v]["frames"]}


def test_valid_split_becomes_a_validated_zip_the_server_takes(tmp_path, real_meta):
    root = fabricate_valid(tmp_path / "ref-youtube-vos", real_meta)
    stage = tmp_path / "out"
    stage.mkdir()
    predictor = PatternPredictor()
    report = evaluate(request(root, stage, predictor))

    # one pass per video, all its sentences at once, in expression-id order
    assert predictor.calls == [[real_meta[v]["expressions"][e]["exp"]
                                for e in sorted(real_meta[v]["expressions"], key=int)]
                               for v in VALID_VIDEOS]
    with zipfile.ZipFile(stage / "submission.zip") as zf:
        names = zf.namelist()
        assert len(names) == len(set(names)) and set(names) == expected_members(real_meta)
        for video in VALID_VIDEOS:
            for k, exp_id in enumerate(sorted(real_meta[video]["expressions"], key=int)):
                for frame in real_meta[video]["frames"][:3]:
                    with zf.open(f"Annotations/{video}/{exp_id}/{frame}.png") as f:
                        img = Image.open(f)
                        img.load()
                    assert img.format == "PNG" and img.mode == "L"
                    assert img.size == SIZES[video][::-1]                       # (W, H)
                    pixels = np.asarray(img)
                    assert set(np.unique(pixels)) <= {0, 255}
                    np.testing.assert_array_equal(pixels == 255,
                                                  pattern_mask(frame, k, SIZES[video]))

    summary = json.loads((stage / "submission.json").read_text())
    n_exp = sum(len(real_meta[v]["expressions"]) for v in VALID_VIDEOS)
    assert summary["videos"] == 2 and summary["expressions"] == n_exp
    assert summary["masks_written"] == len(expected_members(real_meta))
    assert summary["left_out_test_videos"] == 2 and summary["complete"]
    assert summary["zip"] == "submission.zip"
    covered = json.loads((stage / summary["meta_expressions"]).read_text())["videos"]
    assert sorted(covered) == VALID_VIDEOS
    assert "2 videos" in report.table and "left out: 2 test videos" in report.table
    assert report.files["submission"] == stage / "submission.zip"


def test_max_samples_writes_masks_but_no_zip(tmp_path, real_meta):
    root = fabricate_valid(tmp_path / "data", real_meta)
    stage = tmp_path / "out"
    stage.mkdir()
    report = evaluate(EvaluationRequest(PatternPredictor(), root, ["valid"], stage, max_samples=3,
                                        progress=False))
    assert not (stage / "submission.zip").exists()
    summary = json.loads((stage / "submission.json").read_text())
    assert summary["expressions"] == 3 and not summary["complete"] and summary["zip"] is None
    assert "no zip" in report.table


def test_bad_inputs_name_the_file(tmp_path, real_meta):
    root = fabricate_valid(tmp_path / "data", real_meta)
    video, frames = VALID_VIDEOS[1], real_meta[VALID_VIDEOS[1]]["frames"]

    resized = root / "valid" / "JPEGImages" / video / f"{frames[2]}.jpg"
    Image.fromarray(np.zeros((10, 17, 3), np.uint8)).save(resized)
    (tmp_path / "o0").mkdir()
    with pytest.raises(RVOSError, match="differs from 16x10") as e:
        evaluate(request(root, tmp_path / "o0", PatternPredictor()))
    assert e.value.path == resized

    corrupt = root / "valid" / "JPEGImages" / video / f"{frames[1]}.jpg"
    corrupt.write_bytes(b"\xff\xd8 not a jpeg")
    (tmp_path / "o1").mkdir()
    with pytest.raises(RVOSError, match="cannot read frame") as e:
        evaluate(request(root, tmp_path / "o1", PatternPredictor()))
    assert e.value.path == corrupt

    shorter = root / "valid" / "JPEGImages" / video / f"{frames[-1]}.jpg"   # fewer frames than listed
    shorter.unlink()
    (tmp_path / "o2").mkdir()
    with pytest.raises(RVOSError, match="file not found") as e:
        evaluate(request(root, tmp_path / "o2", PatternPredictor()))
    assert e.value.path == shorter
    assert not (tmp_path / "o2" / "predictions").exists()       # failed before any inference

    (root / "meta_expressions" / "test" / "meta_expressions.json").unlink()
    (tmp_path / "o3").mkdir()
    with pytest.raises(RVOSError, match="test split's meta_expressions.json") as e:
        evaluate(request(root, tmp_path / "o3", PatternPredictor()))
    assert e.value.path == root / "meta_expressions" / "valid" / "meta_expressions.json"

    with pytest.raises(RVOSError, match="--zip"):
        evaluate(request(root, tmp_path / "o3", PatternPredictor(), zip="../elsewhere.zip"))


def test_annotated_split_is_scored_and_save_masks_writes_the_submission_layout(tmp_path, real_meta):
    root = tmp_path / "data"
    video = VALID_VIDEOS[0]
    frames = real_meta[video]["frames"][:4]
    write_json(root / "meta_expressions" / "train" / "meta_expressions.json", {"videos": {video: {
        "frames": frames, "expressions": {"0": {"exp": "a dog", "obj_id": "1"},
                                          "1": {"exp": "a puppy", "obj_id": "2"}}}}})
    for frame in frames:
        labels = np.zeros((12, 20), np.uint8)
        labels[2:6, 2:8], labels[7:11, 10:18] = 1, 2
        write_label_png(root / "train" / "Annotations" / video / f"{frame}.png", labels)
        (root / "train" / "JPEGImages" / video).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((12, 20, 3), np.uint8)).save(
            root / "train" / "JPEGImages" / video / f"{frame}.jpg")

    class GroundTruth:
        def predict(self, frames_iter, texts):
            for name, frame in frames_iter:
                labels = np.asarray(Image.open(root / "train" / "Annotations" / video / f"{name}.png"))
                probs = np.stack([labels == {"a dog": 1, "a puppy": 2}[t] for t in texts])
                yield FramePrediction(name, frame, probs.astype(np.float32))

    stage = tmp_path / "out"
    stage.mkdir()
    report = evaluate(EvaluationRequest(GroundTruth(), root, ["train"], stage, save_masks=True,
                                        progress=False))
    metrics = json.loads((stage / "metrics.json").read_text())
    assert metrics["train"]["overall"]["JF"] == pytest.approx(1.0)
    assert "J&F 1.000" in report.table
    written = sorted(p.relative_to(stage).as_posix()
                     for p in (stage / "predictions").rglob("*.png"))
    assert written == sorted(f"predictions/train/Annotations/{video}/{e}/{f}.png"
                             for e in ("0", "1") for f in frames)
    assert not (stage / "submission.zip").exists()


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A real (untrained) tiny baseline checkpoint (as tests/test_cli.py makes one)."""
    from rvos.models.build import build_model

    cfg = load_config(None, ["model.baseline.dim=32", "model.baseline.heads=2",
                             "data.input_size=[32,32]"])
    path = tmp_path_factory.mktemp("ck") / "model"
    return save_checkpoint(path, build_model(cfg), cfg, {"step": 0})


def test_cli_from_a_checkpoint_to_the_zip(tmp_path, real_meta, tiny_checkpoint, capsys):
    root = fabricate_valid(tmp_path / "ref-youtube-vos", real_meta)
    out = tmp_path / "eval"
    base = ["evaluate", "--checkpoint", str(tiny_checkpoint), "--dataset", "ref-ytvos",
            "--data", str(root), "--split", "valid", "--quiet"]
    args = base + ["--out", str(out), "--zip", "valid.zip"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "Ref-YouTube-VOS valid submission: 2 videos" in printed
    with zipfile.ZipFile(out / "valid.zip") as zf:
        assert set(zf.namelist()) == expected_members(real_meta)
    assert main(args + ["--overwrite"]) == 0          # its own zip name is its own output

    (root / "valid" / "JPEGImages" / VALID_VIDEOS[0] / "00010.jpg").unlink()
    assert main(base + ["--out", str(tmp_path / "eval2")]) == 2
    err = capsys.readouterr().err
    assert "00010.jpg" in err and "file not found" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "eval2").exists()
