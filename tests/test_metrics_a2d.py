"""A2D-Sentences / JHMDB-Sentences metrics: MTTR's P@K and IoU conventions, COCO mAP over all
queries and over the top-1 prediction."""

import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from rvos.errors import RVOSError
from rvos.metrics.a2d import coco_map, evaluate_a2d, load_coco_gt, mttr_iou, precision_and_iou, top1_predictions


def _rle(mask):
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _box(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def _write_gt(path, masks: dict):
    images, anns = [], []
    for k, (image_id, m) in enumerate(masks.items()):
        images.append({"id": image_id, "height": m.shape[0], "width": m.shape[1]})
        ys, xs = np.nonzero(m)
        anns.append({"id": k + 1, "image_id": image_id, "category_id": 1, "segmentation": _rle(m),
                     "area": float(m.sum()), "iscrowd": 0,
                     "bbox": [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
                              float(ys.max() - ys.min() + 1)]})
    path.write_text(json.dumps({"images": images, "annotations": anns,
                                "categories": [{"id": 1, "name": "dummy"}]}))


def test_iou_is_mttr_float32_with_epsilon():
    inter, union = np.array([1, 5000, 3, 0]), np.array([2, 10000, 5, 0])
    ours = mttr_iou(inter, union)
    official = ((torch.tensor(inter).float() + 1e-6) / (torch.tensor(union).float() + 1e-6)).numpy()
    np.testing.assert_array_equal(ours, official.astype(np.float64))
    assert ours[0] > 0.5  # tiny counts: the epsilon tips 1/2 over 0.5
    assert ours[1] == 0.5  # large counts: the epsilon vanishes in float32, not > 0.5
    assert ours[3] == 1.0  # both empty


def test_precision_at_k_ties_at_thresholds_and_overall_vs_mean_iou(tmp_path):
    h, w = 20, 20
    gt = {"a": _box(h, w, 0, 10, 0, 10),  # 100 px
          "b": _box(h, w, 0, 10, 0, 10),
          "c": _box(h, w, 0, 2, 0, 2)}  # 4 px
    _write_gt(tmp_path / "gt.json", gt)
    preds = [
        {"image_id": "a", "segmentation": _rle(_box(h, w, 0, 10, 0, 5)), "score": 0.9},  # IoU 50/100
        {"image_id": "b", "segmentation": _rle(_box(h, w, 0, 10, 0, 8)), "score": 0.7},  # IoU 0.8 exactly
        {"image_id": "c", "segmentation": _rle(_box(h, w, 0, 2, 0, 2)), "score": 0.5},  # IoU 1
    ]
    coco = load_coco_gt(tmp_path / "gt.json")
    result = precision_and_iou(coco, preds)["metrics"]
    iou = mttr_iou(np.array([50, 80, 4]), np.array([100, 100, 4]))
    assert result["P@0.5"] == pytest.approx(np.mean(iou > 0.5))
    assert result["P@0.8"] == pytest.approx(np.mean(iou > 0.8))
    assert result["P@0.9"] == pytest.approx(1 / 3)
    assert result["overall_iou"] == pytest.approx((50 + 80 + 4) / (100 + 100 + 4))
    assert result["mean_iou"] == pytest.approx(iou.mean())


def test_top1_ties_in_score_take_the_last_prediction():
    preds = [{"image_id": "x", "score": 0.5, "tag": 1}, {"image_id": "y", "score": 0.1, "tag": 2},
             {"image_id": "x", "score": 0.5, "tag": 3}, {"image_id": "x", "score": 0.2, "tag": 4}]
    top = top1_predictions(preds)
    assert [p["tag"] for p in top] == [3, 2]
    assert sorted([p for p in preds if p["image_id"] == "x"], key=lambda p: p["score"])[-1]["tag"] == 3


def test_map_over_all_queries_and_top1_are_reported_separately(tmp_path):
    h, w = 32, 32
    gt = {f"s{i}": _box(h, w, 2 + i, 20 + i, 3, 25) for i in range(4)}
    _write_gt(tmp_path / "gt.json", gt)
    preds = []
    for i, (image_id, m) in enumerate(gt.items()):
        preds.append({"image_id": image_id, "segmentation": _rle(m), "score": 0.6})
        if i % 2 == 0:  # a confident wrong query ranks first for half of the samples
            preds.append({"image_id": image_id, "segmentation": _rle(_box(h, w, 25, 31, 0, 6)), "score": 0.9})
    (tmp_path / "pred.json").write_text(json.dumps(preds))
    report = evaluate_a2d(tmp_path / "gt.json", tmp_path / "pred.json")
    coco = load_coco_gt(tmp_path / "gt.json")
    assert report["map_all_queries"] == coco_map(coco, preds)
    # top-1: two wrong masks ranked before the two right ones -> precision 0.5 up to recall
    # 0.5, i.e. 51 of COCO's 101 recall points, at every IoU threshold
    assert report["map_top1"]["mAP 0.5:0.95"] == pytest.approx(51 * 0.5 / 101)
    assert report["map_all_queries"]["mAP 0.5:0.95"] > report["map_top1"]["mAP 0.5:0.95"]
    assert report["top1"]["P@0.5"] == 0.5
    assert report["num_samples"] == 4 and report["num_predictions"] == 6


def test_perfect_predictions_score_one(tmp_path):
    gt = {"a": _box(40, 40, 5, 30, 5, 30), "b": _box(40, 40, 0, 4, 0, 4)}
    _write_gt(tmp_path / "gt.json", gt)
    (tmp_path / "pred.json").write_text(json.dumps(
        [{"image_id": k, "segmentation": _rle(m), "score": 1.0} for k, m in gt.items()]))
    report = evaluate_a2d(tmp_path / "gt.json", tmp_path / "pred.json")
    assert report["top1"]["P@0.9"] == 1.0 and report["top1"]["mean_iou"] == 1.0
    assert report["map_all_queries"]["mAP 0.5:0.95"] == pytest.approx(1.0)
    assert report["map_all_queries"]["AP 0.5:0.95 L"] == -1.0  # no large objects (COCO's -1)


def test_bad_predictions_are_reported(tmp_path):
    gt = {"a": _box(10, 10, 0, 5, 0, 5), "b": _box(10, 10, 0, 5, 0, 5)}
    _write_gt(tmp_path / "gt.json", gt)
    (tmp_path / "pred.json").write_text(json.dumps([
        {"image_id": "a", "segmentation": _rle(np.zeros((10, 12))), "score": 1.0},
        {"image_id": "zzz", "segmentation": _rle(np.zeros((10, 10))), "score": 1.0}]))
    with pytest.raises(RVOSError) as err:
        evaluate_a2d(tmp_path / "gt.json", tmp_path / "pred.json")
    msg = str(err.value)
    assert "pred.json" in msg and "mask size [10, 12]" in msg and "zzz" in msg and "no prediction" in msg


def test_ground_truth_without_the_fields_cocoeval_needs_is_refused(tmp_path):
    _write_gt(tmp_path / "gt.json", {"a": _box(10, 10, 0, 5, 0, 5)})
    data = json.loads((tmp_path / "gt.json").read_text())
    del data["annotations"][0]["area"]
    (tmp_path / "gt.json").write_text(json.dumps(data))
    with pytest.raises(RVOSError, match=r"gt\.json: annotation 0 has no area"):
        load_coco_gt(tmp_path / "gt.json")
