"""JHMDB-Sentences: MTTR's samples file (the real one's entries), frames and puppet masks as
the official files hold them, and the evaluation protocol (rvos evaluate --dataset jhmdb)."""

import csv
import json

import numpy as np
import pytest
import scipy.io
from PIL import Image

from rvos.cli import main
from rvos.config import load_config
from rvos.data.jhmdb import (METADATA_NAME, JHMDBLayout, build_train_dataset, parse_samples_metadata,
                             verify_validation_split)
from rvos.engine.protocols import EvaluationRequest
from rvos.errors import RVOSError

H, W = 24, 32
VIDEOS = 2            # the first two videos of the real metadata file


def gray(i: int) -> int:
    """0-based frame i of every fabricated video is uniformly this grey."""
    return 5 + 6 * i


def puppet(frame: int) -> np.ndarray:
    """(H, W) mask of 1-based ``frame``: a box that moves with the frame, never overlapping
    the box of a frame 10 or more away."""
    m = np.zeros((H, W), np.uint8)
    x = (frame * 3) % (W - 6)
    m[2:20, x:x + 6] = 1
    return m


@pytest.fixture
def real_entries(assets):
    entries = json.loads((assets / "expressions-text" / METADATA_NAME).read_text())
    videos = list(dict.fromkeys(e[0] for e in entries))[:VIDEOS]
    return [e for e in entries if e[0] in videos]


@pytest.fixture
def jhmdb(tmp_path, real_entries):
    """A JHMDB-Sentences root holding the videos of the real metadata's first entries."""
    root = tmp_path / "jhmdb_sentences"
    root.mkdir()
    sentences = {}
    for video, frame_path, _, count, text in real_entries:
        action = frame_path.split("/")[-3]
        sentences[video] = text
        frames = root / "Rename_Images" / action / video
        if frames.is_dir():
            continue
        frames.mkdir(parents=True)
        for i in range(count + 2):          # a few frames past the last mask, as in J-HMDB
            Image.fromarray(np.full((H, W, 3), gray(i), np.uint8)).save(frames / f"{i + 1:05d}.png")
        masks = root / "puppet_mask" / action / video
        masks.mkdir(parents=True)
        part_mask = np.stack([puppet(f) for f in range(1, count + 1)], axis=-1)   # (H, W, T)
        scipy.io.savemat(masks / "puppet_mask.mat", {"part_mask": part_mask})
    with open(root / "jhmdb_annotation.txt", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["video_id", "query"])
        writer.writerows(sentences.items())
    (root / METADATA_NAME).write_text(json.dumps(real_entries))
    return root


def test_the_real_samples_file_parses_as_mttr_reads_it(assets):
    path = assets / "expressions-text" / METADATA_NAME
    samples = parse_samples_metadata(json.loads(path.read_text()), path)
    assert len(samples) == 2784 and len({s.video for s in samples}) == 928
    assert len({s.image_id for s in samples}) == 2784           # MTTR asserts ids are unique
    first = samples[0]
    assert (first.video, first.action, first.frame, first.num_frames) == (
        "100_pullups_pullup_f_nm_np1_fr_med_1", "pullup", 2, 40)
    assert first.image_id == "v_100_pullups_pullup_f_nm_np1_fr_med_1_f_2"
    assert first.text == "man in black pulling up" and first.frame_index == 1
    assert [s.frame for s in samples[:3]] == [2, 8, 18]


def test_masks_and_clips_read_from_the_official_files(jhmdb, real_entries):
    layout = JHMDBLayout(jhmdb)
    assert len(layout.samples) == len(real_entries) == 3 * VIDEOS
    for s in layout.samples:
        np.testing.assert_array_equal(layout.read_mask(s), puppet(s.frame) > 0)
    s = layout.samples[0]                                      # frame 2 of 40
    clips = layout.read_clips(s.video, [s.frame_index, 39], 5)
    assert clips[1].indices == [0, 0, 1, 2, 3] and clips[39].indices == [37, 38, 39, 39, 39]
    assert clips[1].frames.shape == (5, H, W, 3)
    np.testing.assert_array_equal(clips[39].frames[:, 0, 0, 0], [gray(i) for i in (37, 38, 39, 39, 39)])


class OraclePredictor:
    """The puppet mask of ``frame + shift`` at the clip's centre (known by its grey)."""

    def __init__(self, shift=0, window=3):
        self.window, self.shift = window, shift

    def predict_window(self, frames, texts):
        t = len(frames)
        frame = round((frames[t // 2].mean() - 5) / 6) + 1
        probs = np.full((t, len(texts), H, W), 0.01, np.float32)
        probs[t // 2, :] = np.where(puppet(frame + self.shift) > 0, 0.99, 0.01)
        return probs


def evaluate(root, out, predictor):
    from rvos.engine.protocols.jhmdb import evaluate

    out.mkdir()
    return evaluate(EvaluationRequest(predictor, root, ["test"], out, progress=False))


def test_oracle_scores_one_and_a_wrong_mask_zero(jhmdb, tmp_path):
    evaluate(jhmdb, tmp_path / "right", OraclePredictor())
    figures = json.loads((tmp_path / "right" / "jhmdb.json").read_text())
    assert figures["num_samples"] == 3 * VIDEOS
    assert figures["top1"]["overall_iou"] == 1.0 and figures["top1"]["P@0.9"] == 1.0
    assert figures["map_top1"]["mAP 0.5:0.95"] == pytest.approx(1.0)
    gt = json.loads((tmp_path / "right" / "jhmdb_ground_truth_coco.json").read_text())
    assert gt["images"][0] == {"id": "v_100_pullups_pullup_f_nm_np1_fr_med_1_f_2",
                               "height": H, "width": W}
    assert gt["annotations"][0]["area"] == float(puppet(2).sum())
    evaluate(jhmdb, tmp_path / "wrong", OraclePredictor(shift=12))
    figures = json.loads((tmp_path / "wrong" / "jhmdb.json").read_text())
    assert figures["top1"]["overall_iou"] == 0.0 and figures["map_top1"]["mAP 0.5:0.95"] == 0.0


def test_jhmdb_is_evaluation_only(jhmdb):
    cfg = load_config(None, ["data.format=jhmdb", f"data.root={jhmdb}"])
    with pytest.raises(RVOSError, match="evaluation-only"):
        build_train_dataset(cfg)
    verify_validation_split(cfg)
    layout = JHMDBLayout(jhmdb)
    missing = layout.frame_path(layout.samples[0].video, 40)
    missing.unlink()
    with pytest.raises(RVOSError, match="00040.png"):
        verify_validation_split(cfg)


def test_bad_files_name_themselves(jhmdb):
    layout = JHMDBLayout(jhmdb)
    s = layout.samples[0]
    layout.mask_path(s.video).write_bytes(b"MATLAB 5.0 MAT-file, but not really")
    with pytest.raises(RVOSError, match="puppet_mask.mat.*MATLAB"):
        JHMDBLayout(jhmdb).read_mask(s)
    scipy.io.savemat(layout.mask_path(s.video), {"other": np.zeros((2, 2, 2))})
    with pytest.raises(RVOSError, match="puppet_mask.mat.*'part_mask'"):
        JHMDBLayout(jhmdb).read_mask(s)
    layout.mask_path(s.video).unlink()
    with pytest.raises(RVOSError, match="puppet_mask.mat.*not found"):
        JHMDBLayout(jhmdb).read_mask(s)
    layout.frame_path(s.video, 1).unlink()
    with pytest.raises(RVOSError, match="00001.png.*not found"):
        JHMDBLayout(jhmdb).read_clips(s.video, [s.frame_index], 5)
    entries = json.loads((jhmdb / METADATA_NAME).read_text())
    entries[0][1] = entries[0][1].replace("Rename_Images", "Frames")
    (jhmdb / METADATA_NAME).write_text(json.dumps(entries))
    with pytest.raises(RVOSError, match="entry 0.*no Rename_Images"):
        JHMDBLayout(jhmdb)
    (jhmdb / METADATA_NAME).unlink()
    with pytest.raises(RVOSError, match="MTTR"):
        JHMDBLayout(jhmdb)


def test_evaluate_a_checkpoint_through_the_cli(jhmdb, tmp_path, capsys):
    from rvos.engine.checkpoint import save_checkpoint
    from rvos.models.build import build_model

    cfg = load_config(None, ["model.baseline.dim=32", "model.baseline.heads=2",
                             "data.input_size=[32,32]", "data.format=jhmdb"])
    checkpoint = save_checkpoint(tmp_path / "model", build_model(cfg), cfg, {"step": 0})
    out = tmp_path / "eval"
    code = main(["evaluate", "--checkpoint", str(checkpoint), "--data", str(jhmdb),
                 "--window", "3", "--out", str(out), "--quiet"])   # --dataset from data.format
    printed = capsys.readouterr().out
    assert code == 0 and "JHMDB-Sentences test: 6 samples" in printed
    assert json.loads((out / "jhmdb.json").read_text())["num_samples"] == 6
    code = main(["evaluate", "--checkpoint", str(checkpoint), "--data", str(jhmdb), "--split",
                 "valid", "--out", str(tmp_path / "eval2"), "--quiet"])
    assert code == 2 and "one evaluation set" in capsys.readouterr().err
