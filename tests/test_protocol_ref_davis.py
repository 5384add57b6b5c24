"""``rvos evaluate --dataset ref-davis``: real DAVIS frames and masks in the official layout,
the four Ref-DAVIS17 text files, one label map per frame per expression set, scored with the
unsupervised DAVIS-2017 task; the four runs and their mean."""

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rvos.cli import main
from rvos.config import load_config
from rvos.data.davis import DAVIS_TEXT_FILES
from rvos.data.palette import read_label_png, write_label_png
from rvos.engine.checkpoint import save_checkpoint
from rvos.engine.protocols import EvaluationRequest
from rvos.engine.protocols.ref_davis import (CLIP_FRAMES, davis_predictor, evaluate, merge_objects,
                                             validation_summary)
from rvos.errors import RVOSError
from rvos.inference import WHOLE_VIDEO, FramePrediction

SEQUENCES = ["blackswan", "car-shadow", "cows"]
N_FRAMES = 3
# a second, fabricated object in car-shadow (rows, cols of a box on the background), with its
# four sentences; annotator 2's files are Latin-1, as the official ones
SECOND_OBJECT = (slice(20, 90), slice(20, 140))
SECOND_SENTENCES = ["the grey wall at the top left", "a wall", "the café wall", "a grey wall"]


def official_layout(root: Path, assets: Path) -> tuple[Path, dict[str, dict[str, int]]]:
    """<root>/DAVIS/{JPEGImages,Annotations_unsupervised}/480p/<seq>, ImageSets/2017/val.txt,
    <root>/davis_text_annotations/ (the four files). Returns root and {seq: {sentence: id}}."""
    real = assets / "davis-real"
    meta = json.loads((real / "meta_expressions.json").read_text())["videos"]
    davis = root / "DAVIS"
    lines: list[list[str]] = [[] for _ in DAVIS_TEXT_FILES]
    referred: dict[str, dict[str, int]] = {}
    for seq in SEQUENCES:
        (davis / "JPEGImages" / "480p" / seq).mkdir(parents=True)
        for frame in meta[seq]["frames"][:N_FRAMES]:
            shutil.copyfile(real / "JPEGImages" / "480p" / seq / f"{frame}.jpg",
                            davis / "JPEGImages" / "480p" / seq / f"{frame}.jpg")
            labels = read_label_png(real / "Annotations" / "480p" / seq / f"{frame}.png")
            if seq == "car-shadow":
                assert not labels[SECOND_OBJECT].any()
                labels[SECOND_OBJECT] = 2
            write_label_png(davis / "Annotations_unsupervised" / "480p" / seq / f"{frame}.png", labels)
        referred[seq] = {}
        for exp_id, exp in meta[seq]["expressions"].items():
            lines[int(exp_id) % 4].append(f'{seq} {exp["obj_id"]} "{exp["exp"]}"')
            referred[seq][exp["exp"]] = int(exp["obj_id"])
        if seq == "car-shadow":
            for a, sentence in enumerate(SECOND_SENTENCES):
                lines[a].append(f'{seq} 2 "{sentence}"')
                referred[seq][sentence] = 2
    (davis / "ImageSets" / "2017").mkdir(parents=True)
    (davis / "ImageSets" / "2017" / "val.txt").write_text("\n".join(SEQUENCES) + "\n")
    texts = root / "davis_text_annotations"
    texts.mkdir()
    for a, (name, file_lines) in enumerate(zip(DAVIS_TEXT_FILES, lines)):
        encoding = "latin-1" if a >= 2 else "utf-8"
        (texts / name).write_bytes(("\n".join(file_lines) + "\n").encode(encoding))
    sentences = [s for seq in referred.values() for s in seq]
    assert len(set(sentences)) == sum(len(set(seq)) for seq in referred.values())  # none shared
    return root, referred


@pytest.fixture
def layout(tmp_path, assets):
    return official_layout(tmp_path / "ref-davis", assets)


def referred_object(seq: str, obj_id: int, gt: np.ndarray) -> np.ndarray:
    return gt == obj_id


def top_left_box(seq: str, obj_id: int, gt: np.ndarray) -> np.ndarray:
    """The wrong object: the box of car-shadow's second object, in every sequence."""
    box = np.zeros(gt.shape, bool)
    box[SECOND_OBJECT] = True
    return box


class ObjectPredictor:
    """Stands in for a model: each sentence's probabilities are ``segment(sequence, referred
    id, ground-truth label map)``, by default the referred object's ground-truth mask."""

    window = 8

    def __init__(self, root: Path, referred: dict[str, dict[str, int]], segment=referred_object):
        self.root, self.referred, self.segment = root, referred, segment
        self.passes: list[tuple[str, int]] = []

    def predict(self, frames, texts):
        seq = next(s for s, by_text in self.referred.items() if texts[0] in by_text)
        self.passes.append((seq, len(texts)))
        for name, frame in frames:
            gt = read_label_png(self.root / "DAVIS" / "Annotations_unsupervised" / "480p" / seq / f"{name}.png")
            probs = np.stack([self.segment(seq, self.referred[seq][t], gt) for t in texts])
            yield FramePrediction(name, frame, probs.astype(np.float32))


def run(root, predictor, stage, **options):
    stage.mkdir()
    return evaluate(EvaluationRequest(predictor, root, ["val"], stage, progress=False,
                                      options=argparse.Namespace(**options)))


def test_ground_truth_scores_one_in_every_set_and_the_mean(layout, tmp_path):
    root, referred = layout
    predictor = ObjectPredictor(root, referred)
    stage = tmp_path / "out"
    report = run(root, predictor, stage)

    # one pass per sequence with its distinct sentences (blackswan repeats one: 3, not 4)
    assert predictor.passes == [("blackswan", 3), ("car-shadow", 8), ("cows", 4)]
    metrics = json.loads((stage / "metrics.json").read_text())
    assert list(metrics["runs"]) == ["anno_0", "anno_1", "anno_2", "anno_3"]
    for run_summary in [*metrics["runs"].values(), metrics["mean_over_runs"]]:
        assert run_summary["J&F-Mean"] == pytest.approx(1.0)
        assert run_summary["J-Mean"] == pytest.approx(1.0) and run_summary["F-Mean"] == pytest.approx(1.0)
    assert metrics["sequences"] == 3 and metrics["sentences"] == 4 * 4
    assert metrics["ground_truth"].endswith("Annotations_unsupervised/480p")
    assert "mean of the 4 runs" in report.table and (stage / "results.txt").is_file()
    rows = (stage / "per_object.csv").read_text().splitlines()
    assert len(rows) == 1 + 4 * 4            # header + 4 runs x 4 objects

    # the DAVIS results layout: palette PNG label maps, ground-truth ids, frame names kept
    for a in range(4):
        for seq in SEQUENCES:
            files = sorted((stage / "predictions" / f"anno_{a}" / seq).glob("*.png"))
            assert [f.stem for f in files] == [f"{i:05d}" for i in range(N_FRAMES)]
            with Image.open(files[0]) as img:
                assert img.mode == "P"
            gt = read_label_png(root / "DAVIS" / "Annotations_unsupervised" / "480p" / seq / "00000.png")
            np.testing.assert_array_equal(read_label_png(files[0]), gt)


def test_segmenting_the_wrong_object_scores_low(layout, tmp_path):
    root, referred = layout
    run(root, ObjectPredictor(root, referred, top_left_box), tmp_path / "out")
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    # only car-shadow's second object (the box itself) is found, in every set
    for summary in [*metrics["runs"].values(), metrics["mean_over_runs"]]:
        assert summary["J-Mean"] == pytest.approx(0.25)
        assert summary["J&F-Mean"] < 0.3


def test_overlapping_objects_merge_as_referformer_does():
    probs = np.array([[[0.9, 0.6, 0.4, 0.7]],        # object with id 3
                      [[0.8, 0.7, 0.45, 0.7]]])      # object with id 5
    labels = merge_objects(probs, [3, 5], threshold=0.5)
    # most confident object wins, below the threshold is background, ties: the first object
    np.testing.assert_array_equal(labels, [[3, 5, 0, 3]])
    assert labels.dtype == np.uint8


def test_whole_video_predictors_get_36_frame_clips():
    class Whole:
        window = WHOLE_VIDEO

    request = EvaluationRequest(Whole(), Path("."), ["val"], Path("."),
                                options=argparse.Namespace(window=None))
    assert davis_predictor(request).window == CLIP_FRAMES and Whole.window == WHOLE_VIDEO
    request.options.window = 100                       # an explicit --window is kept
    assert davis_predictor(request).window == WHOLE_VIDEO
    assert validation_summary(None, None) is None


def test_bad_inputs_name_the_file(layout, tmp_path):
    root, referred = layout
    davis = root / "DAVIS"
    predictor = ObjectPredictor(root, referred)

    with pytest.raises(RVOSError, match="image set") as e:
        evaluate(EvaluationRequest(predictor, root, ["test"], tmp_path, progress=False))
    assert e.value.path == davis / "ImageSets" / "2017" / "test.txt"

    corrupt = davis / "JPEGImages" / "480p" / "cows" / "00001.jpg"
    corrupt.write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(RVOSError, match="cannot read frame") as e:
        run(root, predictor, tmp_path / "o1")
    assert e.value.path == corrupt

    missing = davis / "JPEGImages" / "480p" / "cows" / "00002.jpg"    # shorter than annotated
    missing.unlink()
    with pytest.raises(RVOSError, match="frame not found") as e:
        run(root, predictor, tmp_path / "o2")
    assert e.value.path == missing

    (davis / "ImageSets" / "2017" / "val.txt").write_text("blackswan\nbmx-trees\n")
    (davis / "Annotations_unsupervised" / "480p" / "bmx-trees").mkdir()
    write_label_png(davis / "Annotations_unsupervised" / "480p" / "bmx-trees" / "00000.png",
                    np.zeros((4, 4), np.uint8))
    with pytest.raises(RVOSError, match="bmx-trees .* has no expressions") as e:
        run(root, predictor, tmp_path / "o3")
    assert e.value.path == root / "davis_text_annotations"

    (root / "davis_text_annotations" / DAVIS_TEXT_FILES[3]).unlink()
    with pytest.raises(RVOSError, match="not found") as e:
        run(root, predictor, tmp_path / "o4")
    assert e.value.path == root / "davis_text_annotations" / DAVIS_TEXT_FILES[3]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A real (untrained) tiny baseline checkpoint (as tests/test_cli.py makes one)."""
    from rvos.models.build import build_model

    cfg = load_config(None, ["model.baseline.dim=32", "model.baseline.heads=2",
                             "data.input_size=[32,32]"])
    path = tmp_path_factory.mktemp("ck") / "model"
    return save_checkpoint(path, build_model(cfg), cfg, {"step": 0})


def test_cli_from_a_checkpoint_to_the_four_runs(layout, tmp_path, tiny_checkpoint, capsys):
    root, _ = layout
    out = tmp_path / "eval"
    code = main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--dataset", "ref-davis",
                 "--data", str(root), "--split", "val", "--out", str(out), "--quiet"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "anno_3 (annotator2-full-video)" in printed and "mean of the 4 runs" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["mean_over_runs"]["J&F-Mean"] <= 1.0
    assert metrics["expressions"] == str(root / "davis_text_annotations")
    assert len(list((out / "predictions").glob("anno_*/*/*.png"))) == 4 * 3 * N_FRAMES
