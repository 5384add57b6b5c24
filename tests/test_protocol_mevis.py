"""``rvos evaluate --dataset mevis``: valid_u scored as the official eval_mevis.py scores it,
valid turned into the zip the MeViS server takes, bad files named in one line."""

import csv
import json
import re
import zipfile

import numpy as np
import pytest
from PIL import Image
from torch import nn

from rvos.cli import main
from rvos.config import load_config
from rvos.data.mevis import MeViSLayout
from rvos.engine.checkpoint import save_checkpoint
from rvos.engine.protocols import mevis as protocol
from rvos.inference import FramePrediction, Predictor
from rvos.metrics.mevis import evaluate_mevis
from test_data_mevis import H, W, edit_json, make_mevis, rle

RIGHT = {"the cat walking right": ["100"], "both cats": ["100", "101"],
         "the cat that comes in late": ["101"], "the cat": ["200"], "the dog that never shows": ["300"]}
WRONG = {"the cat walking right": ["101"], "both cats": ["100"], "the cat that comes in late": ["100"],
         "the cat": [], "the dog that never shows": ["300"]}
VIDEO_OF = {"the cat walking right": "cats", "both cats": "cats", "the cat that comes in late": "cats",
            "the cat": "single", "the dog that never shows": "empty"}


class MaskDictPredictor:
    """Stands in for a model: for each sentence, probabilities 1 on the union of the objects
    ``chosen[sentence]`` (anno_ids of valid_u's mask_dict.json), 0 elsewhere."""

    def __init__(self, layout: MeViSLayout, chosen: dict[str, list[str]]):
        self.layout, self.chosen = layout, chosen

    def predict(self, frames, texts):
        video = VIDEO_OF[texts[0]]
        names = self.layout.videos[video].frames
        for name, frame in frames:
            t, size = names.index(name), frame.shape[:2]
            probs = np.stack([self.layout.referred_masks(video, self.chosen[text], [t], size)[0]
                              for text in texts]).astype(np.float32)
            yield FramePrediction(name=name, frame=frame, probs=probs)


class BoxPredictor:
    """Any sentence: a box in the top-left corner of every frame."""

    def predict(self, frames, texts):
        for name, frame in frames:
            probs = np.zeros((len(texts), *frame.shape[:2]), dtype=np.float32)
            probs[:, :5, :7] = 0.9
            yield FramePrediction(name=name, frame=frame, probs=probs)


@pytest.fixture()
def root(tmp_path):
    data = tmp_path / "mevis"
    make_mevis(data, "valid_u")
    make_mevis(data, "valid", masks=False)
    return data


@pytest.fixture()
def checkpoint(tmp_path):
    """A checkpoint for its config only: the tests put a stand-in Predictor in its place."""
    cfg = load_config(None, ["data.format=mevis"])
    return save_checkpoint(tmp_path / "ck" / "model", nn.Linear(2, 2), cfg, {"step": 0})


def evaluate(argv, capsys, monkeypatch, predictor=None):
    if predictor is not None:
        monkeypatch.setattr(Predictor, "from_checkpoint", classmethod(lambda cls, *a, **k: predictor))
    code = main(["evaluate", *[str(a) for a in argv], "--quiet"])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_ground_truth_scores_one_through_rvos_evaluate(root, checkpoint, tmp_path, capsys, monkeypatch):
    out = tmp_path / "eval"
    fake = MaskDictPredictor(MeViSLayout(root, "valid_u"), RIGHT)
    code, stdout, err = evaluate(["--checkpoint", checkpoint, "--dataset", "mevis", "--data", root,
                                  "--split", "valid_u", "--out", out], capsys, monkeypatch, fake)
    assert code == 0, err
    figures = json.loads((out / "mevis.json").read_text())["valid_u"]
    assert figures["overall"]["JF"] == 1.0 and figures["overall"]["J"] == 1.0
    assert figures["overall"]["count"] == 5 == figures["expressions_in_split"]
    rows = list(csv.DictReader((out / "mevis_per_expression.csv").open()))
    assert [(r["video"], r["exp_id"], r["num_objects"]) for r in rows] == [
        ("cats", "0", "1"), ("cats", "1", "2"), ("cats", "2", "1"), ("empty", "0", "1"), ("single", "0", "1")]
    assert "1.0000" in (out / "results.txt").read_text() and "1.0000" in stdout
    assert not (out / "predictions").exists()       # valid_u masks only with --save-masks


def test_wrong_objects_score_low_exactly_as_the_official_scoring_of_the_saved_masks(
        root, checkpoint, tmp_path, capsys, monkeypatch):
    out = tmp_path / "eval"
    fake = MaskDictPredictor(MeViSLayout(root, "valid_u"), WRONG)
    code, _, err = evaluate(["--checkpoint", checkpoint, "--dataset", "mevis", "--data", root,
                             "--split", "valid_u", "--out", out, "--save-masks"], capsys, monkeypatch, fake)
    assert code == 0, err
    overall = json.loads((out / "mevis.json").read_text())["valid_u"]["overall"]
    assert overall["JF"] < 0.6
    # the saved masks, read back as the official script reads them, give the same figures
    official, rows = evaluate_mevis(root / "valid_u", out / "predictions" / "valid_u")
    assert (official["J&F"], official["J"], official["F"]) == (overall["JF"], overall["J"], overall["F"])
    ours = {(r["video"], r["exp_id"]): (float(r["J"]), float(r["F"]))
            for r in csv.DictReader((out / "mevis_per_expression.csv").open())}
    assert ours == {(r.video, r.exp_id): (r.J, r.F) for r in rows}
    assert ours[("empty", "0")] == (1.0, 1.0) and ours[("single", "0")] == (0.0, 0.0)


def test_valid_gives_the_zip_the_mevis_server_takes(root, checkpoint, tmp_path, capsys, monkeypatch):
    out = tmp_path / "eval"
    code, stdout, err = evaluate(["--checkpoint", checkpoint, "--dataset", "mevis", "--data", root,
                                  "--split", "valid", "--out", out], capsys, monkeypatch, BoxPredictor())
    assert code == 0, err
    report = json.loads((out / "mevis.json").read_text())["valid"]
    assert report["overall"] is None and report["submission"] == "submission.zip"
    meta = json.loads((root / "valid" / "meta_expressions.json").read_text())["videos"]
    expected = {f"{v}/{e}/{f}.png" for v, entry in meta.items() for e in entry["expressions"]
                for f in entry["frames"]}
    with zipfile.ZipFile(out / "submission.zip") as zf:
        # video folders at the root of the archive (the official sample_submission_valid.zip)
        assert set(zf.namelist()) == expected
        with zf.open("empty/0/00002.png") as f:
            png = Image.open(f)
            png.load()
    assert png.mode == "L" and png.size == (28, 20)
    assert set(np.unique(np.asarray(png)).tolist()) == {0, 255}
    assert "submission.zip" in stdout
    # --zip: another name, inside the output folder
    code, _, err = evaluate(["--checkpoint", checkpoint, "--dataset", "mevis", "--data", root,
                             "--split", "valid", "--out", tmp_path / "eval2", "--zip", "mevis_valid.zip"],
                            capsys, monkeypatch, BoxPredictor())
    assert code == 0, err
    assert (tmp_path / "eval2" / "mevis_valid.zip").is_file()
    assert not (tmp_path / "eval2" / "submission.zip").exists()


def test_part_of_valid_gives_masks_but_no_zip(root, checkpoint, tmp_path, capsys, monkeypatch):
    out = tmp_path / "eval"
    code, _, err = evaluate(["--checkpoint", checkpoint, "--dataset", "mevis", "--data", root,
                             "--split", "valid", "--out", out, "--max-samples", "2"],
                            capsys, monkeypatch, BoxPredictor())
    assert code == 0, err
    report = json.loads((out / "mevis.json").read_text())["valid"]
    assert report["submission"] is None and "--max-samples" in report["note"]
    assert sorted(p.name for p in (out / "predictions" / "valid" / "cats").iterdir()) == ["0", "1"]
    assert not (out / "submission.zip").exists()


@pytest.mark.parametrize("damage, named", [
    (lambda root: (root / "valid_u" / "mask_dict.json").unlink(), r"valid_u/mask_dict\.json: mask_dict\.json not found"),
    (lambda root: edit_json(root / "valid_u" / "mask_dict.json", lambda d: d.pop("300")),
     r"valid_u/mask_dict\.json: anno_id 300 .*not in mask_dict"),
    (lambda root: edit_json(root / "valid_u" / "mask_dict.json",
                            lambda d: d["101"].__setitem__(4, rle(np.ones((H, W + 1), bool)))),
     r"valid_u/mask_dict\.json: anno_id 101, frame 00004 of video 'cats': mask size 33x24"),
    (lambda root: (root / "valid_u" / "JPEGImages" / "cats" / "00003.jpg").unlink(),
     r"valid_u/JPEGImages/cats/00003\.jpg: file not found"),
])
def test_bad_files_give_one_line_naming_the_file(root, checkpoint, tmp_path, capsys, monkeypatch,
                                                 damage, named):
    damage(root)
    out = tmp_path / "eval"
    fake = BoxPredictor()
    code, _, err = evaluate(["--checkpoint", checkpoint, "--dataset", "mevis", "--data", root,
                             "--split", "valid_u", "--out", out], capsys, monkeypatch, fake)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert re.search(named, err), err
    assert not out.exists()                         # a failed run leaves nothing


def test_validation_summary(root):
    cfg = load_config(None, [f"data.root={root}", "data.format=mevis", "data.val_split=valid_u"])
    fake = MaskDictPredictor(MeViSLayout(root, "valid_u"), RIGHT)
    summary = protocol.validation_summary(fake, cfg, progress=False)
    assert summary["split"] == "valid_u" and summary["overall"]["JF"] == 1.0
    assert summary["overall"]["count"] == 5
    cfg.data.max_val_samples = 2
    assert protocol.validation_summary(fake, cfg, progress=False)["overall"]["count"] == 2
    cfg.data.val_split = "valid"
    assert protocol.validation_summary(fake, cfg, progress=False) is None


def test_train_then_evaluate_a_real_tiny_model(root, tmp_path, capsys):
    """A real model through the commands once: rvos train reads MeViS train clips and logs
    valid_u J&F each epoch; rvos evaluate scores its checkpoint on valid_u and writes valid's
    masks."""
    make_mevis(root, "train")
    run, out = tmp_path / "run", tmp_path / "eval"
    code = main(["train", "baseline_synth", f"data.root={root}", "data.format=mevis",
                 "data.train_split=train", "data.val_split=valid_u", "data.input_size=[32,32]",
                 "data.num_frames=3", "model.baseline.dim=32", "model.baseline.heads=2",
                 "model.baseline.fusion_layers=1", "optim.batch_size=2", "train.epochs=1",
                 "train.eval_every=1", "--out", str(run), "--quiet"])
    assert code == 0, capsys.readouterr().err
    logged = {row.split(",")[3] for row in (run / "metrics.csv").read_text().splitlines()
              if ",val," in row}
    assert {"JF", "J", "F"} <= logged
    code = main(["evaluate", "--checkpoint", str(run / "checkpoints" / "last"), "--split",
                 "valid_u", "valid", "--out", str(out), "--max-samples", "2", "--save-masks", "--quiet"])
    assert code == 0, capsys.readouterr().err
    results = json.loads((out / "mevis.json").read_text())
    assert 0.0 <= results["valid_u"]["overall"]["JF"] <= 1.0
    assert results["valid_u"]["overall"]["count"] == 2
    for split in ("valid_u", "valid"):
        assert len(list((out / "predictions" / split / "cats" / "1").glob("*.png"))) == 6
