"""rvos evaluate --dataset refcoco: every expression -> a mask at image size -> overall IoU
(sum I / sum U), mean IoU, P@0.5..0.9 (SgMg / MTTR); the files it writes; training
validation through it."""

import csv
import json
import math
from argparse import Namespace

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from rvos.cli import main
from rvos.config import load_config
from rvos.data.refcoco import ReferringImageDataset
from rvos.engine.checkpoint import save_checkpoint
from rvos.engine.protocols import EvaluationRequest
from rvos.engine.protocols import refcoco as protocol
from rvos.errors import RVOSError
from test_refcoco import make_refcoco, make_refexp_coco


class TextLookupPredictor:
    """A stand-in Predictor: the probability map of each sentence is a fixed (H, W) array."""

    def __init__(self, maps: dict[str, np.ndarray]):
        self.maps = maps
        self.calls = []

    def predict_window(self, frames, texts):
        self.calls.append(list(texts))
        h, w = frames[0].shape[:2]
        out = np.zeros((len(frames), len(texts), h, w), np.float32)
        for k, text in enumerate(texts):
            out[:, k] = self.maps.get(text, 0.0)
        return out


def ground_truth_predictor(dataset: ReferringImageDataset) -> TextLookupPredictor:
    maps = {}
    for e in dataset.expressions:
        h, w = dataset.load_image(e).shape[:2]
        maps[e.text] = dataset.target_mask(e, h, w).astype(np.float32)
    return TextLookupPredictor(maps)


def rle(mask):
    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    r["counts"] = r["counts"].decode()
    return r


def hand_made_split(root):
    """Three expressions on two 40x50 images with RLE ground truths (exact pixel sets)."""
    (root / "train2014").mkdir(parents=True)
    (root / "refcoco").mkdir()
    for i in (1, 2):
        Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(root / "train2014" / f"im{i}.jpg")
    a, b, c = (np.zeros((40, 50), bool) for _ in range(3))
    a[0:10, 0:10] = True          # 100 px
    b[20:30, 20:40] = True        # 200 px
    c[30:40, 0:10] = True         # 100 px
    images, anns = [], []
    for n, (image, text, gt) in enumerate([(1, "first", a), (2, "second", b), (1, "third", c)], 1):
        images.append({"file_name": f"im{image}.jpg", "height": 40, "width": 50,
                       "original_id": image, "id": n, "caption": text, "dataset_name": "refcoco"})
        anns.append({"segmentation": rle(gt), "area": int(gt.sum()), "iscrowd": 0, "bbox": [0, 0, 1, 1],
                     "image_id": n, "category_id": 1, "id": n, "original_id": 100 + n})
    (root / "refcoco" / "instances_refcoco_val.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": []}))
    first = np.zeros((40, 50), np.float32)
    first[0:10, 5:15] = 0.9       # I 50, U 150
    second = b.astype(np.float32) * 0.7   # I 200, U 200
    third = np.full((40, 50), 0.5, np.float32)  # exactly the threshold: not "> 0.5", I 0, U 100
    return TextLookupPredictor({"first": first, "second": second, "third": third})


def request(predictor, root, stage, **kw):
    options = Namespace(refcoco_dataset=kw.pop("dataset", None))
    return EvaluationRequest(predictor, root, kw.pop("splits", ["val"]), stage, progress=False,
                             options=options, **kw)


def test_ground_truth_probabilities_score_one(tmp_path):
    root = make_refexp_coco(tmp_path / "data")
    predictor = ground_truth_predictor(ReferringImageDataset(root, "refcoco", "val", train=False))
    stage = tmp_path / "out"
    stage.mkdir()
    report = protocol.evaluate(request(predictor, root, stage))
    figures = json.loads((stage / "refcoco.json").read_text())["results"]["refcoco/val"]
    assert figures["oIoU"] == 1.0 and figures["mIoU"] == pytest.approx(1.0)
    assert figures["P@0.9"] == 1.0 and figures["count"] == 1
    assert figures["layout"] == "per-expression COCO"
    assert "refcoco/val" in report.table and "100.00" in report.table


def test_hand_computed_overall_and_mean_iou(tmp_path):
    root = tmp_path / "data"
    predictor = hand_made_split(root)
    stage = tmp_path / "out"
    stage.mkdir()
    protocol.evaluate(request(predictor, root, stage))
    s = json.loads((stage / "refcoco.json").read_text())["results"]["refcoco/val"]
    assert s["oIoU"] == 250 / 450                               # (50 + 200 + 0) / (150 + 200 + 100)
    ious = np.float32([50 / 150, 1.0, 1e-6 / 100.000001])
    assert s["mIoU"] == pytest.approx(float(ious.mean()), abs=1e-7)
    assert s["P@0.5"] == pytest.approx(1 / 3) and s["P@0.9"] == pytest.approx(1 / 3)
    assert s["P@0.6"] == pytest.approx(1 / 3) and s["count"] == 3
    # two images: the two sentences of image 1 share one pass; rows keep the file's order
    assert sorted(map(sorted, predictor.calls)) == [["first", "third"], ["second"]]
    rows = list(csv.DictReader((stage / "per_sample.csv").open()))
    assert [(r["sample_id"], r["text"], r["intersection"], r["union"]) for r in rows] == [
        ("1", "first", "50", "150"), ("2", "second", "200", "200"), ("3", "third", "0", "100")]
    assert [r["ann_id"] for r in rows] == ["101", "102", "103"]
    assert float(rows[0]["iou"]) == pytest.approx(1 / 3)
    table = (stage / "results.txt").read_text()
    assert "55.56" in table and "44.44" in table               # oIoU and mIoU in percent


def test_max_samples_save_masks_and_the_refer_layout(tmp_path):
    root = make_refcoco(tmp_path / "data")                       # refs(unc).p + instances.json
    dataset = ReferringImageDataset(root, "refcoco", "train", train=False)
    stage = tmp_path / "out"
    stage.mkdir()
    protocol.evaluate(request(ground_truth_predictor(dataset), root, stage, splits=["train"],
                              max_samples=2, save_masks=True, dataset="refcoco"))
    s = json.loads((stage / "refcoco.json").read_text())["results"]["refcoco/train"]
    assert s["count"] == 2 and s["oIoU"] == 1.0 and s["layout"] == "refer toolkit"
    masks = sorted((stage / "predictions" / "refcoco" / "train").iterdir())
    assert [p.name for p in masks] == ["0_0.png", "0_1.png"]
    saved = np.asarray(Image.open(masks[0]))
    assert saved.shape == (48, 64) and set(np.unique(saved)) == {0, 255}


def test_every_dataset_found_is_scored_and_errors_name_files(tmp_path):
    root = make_refexp_coco(tmp_path / "data", "refcoco")
    make_refexp_coco(tmp_path / "plus", "refcoco+")
    (tmp_path / "plus" / "refcoco+").rename(root / "refcoco+")
    stage = tmp_path / "out"
    stage.mkdir()
    predictor = TextLookupPredictor({})
    report = protocol.evaluate(request(predictor, root, stage))
    results = json.loads((stage / "refcoco.json").read_text())["results"]
    assert sorted(results) == ["refcoco+/val", "refcoco/val"] and results["refcoco/val"]["oIoU"] == 0.0
    assert "refcoco+/val" in report.table
    with pytest.raises(RVOSError, match="no refcoco, refcoco\\+, refcocog folder"):
        protocol.evaluate(request(predictor, tmp_path / "plus", stage))
    with pytest.raises(RVOSError, match="instances_refcoco_testA.json"):
        protocol.evaluate(request(predictor, root, stage, splits=["testA"]))
    (root / "train2014" / "COCO_train2014_000000000002.jpg").unlink()
    with pytest.raises(RVOSError, match="COCO_train2014_000000000002.jpg"):
        protocol.evaluate(request(predictor, root, stage, dataset="refcoco"))


def test_validation_summary_carries_oiou_as_jf(tmp_path):
    root = tmp_path / "data"
    predictor = hand_made_split(root)
    cfg = load_config(None, ["data.format=refcoco", f"data.root={root}", "data.val_split=val",
                             "data.max_val_samples=2"])
    summary = protocol.validation_summary(predictor, cfg, progress=False)
    assert summary["split"] == "val"
    overall = summary["overall"]
    assert overall["JF"] == overall["oIoU"] == 250 / 350 and overall["count"] == 2
    assert {"mIoU", "P@0.5", "P@0.9"} <= set(overall)


def test_empty_split_figures_are_nan():
    figures = protocol.split_figures(np.zeros(0, np.int64), np.zeros(0, np.int64))
    assert figures["count"] == 0 and math.isnan(figures["oIoU"])


def test_cli_evaluates_a_real_checkpoint(tmp_path, capsys):
    from rvos.models.build import build_model

    cfg = load_config(None, ["model.baseline.dim=32", "model.baseline.heads=2",
                             "data.input_size=[32,32]", "data.num_frames=1"])
    ckpt = save_checkpoint(tmp_path / "ck" / "model", build_model(cfg), cfg, {"step": 0})
    root = make_refexp_coco(tmp_path / "data")
    out = tmp_path / "eval"
    code = main(["evaluate", "--checkpoint", str(ckpt), "--dataset", "refcoco", "--data", str(root),
                 "--split", "val", "train", "--out", str(out), "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "refcoco/val" in printed and "refcoco/train" in printed and "oIoU" in printed
    document = json.loads((out / "refcoco.json").read_text())
    assert set(document["results"]) == {"refcoco/val", "refcoco/train"}
    for s in document["results"].values():
        assert 0.0 <= s["oIoU"] <= 1.0 and 0.0 <= s["mIoU"] <= 1.0
    assert len(list(csv.DictReader((out / "per_sample.csv").open()))) == 4
    code = main(["evaluate", "--checkpoint", str(ckpt), "--dataset", "refcoco", "--data",
                 str(tmp_path / "nowhere"), "--split", "val", "--out", str(tmp_path / "e2"), "--quiet"])
    assert code == 2 and "nowhere" in capsys.readouterr().err
