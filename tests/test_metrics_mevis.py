"""MeViS protocol (multi-object union ground truth, empty frames, missing videos) and the
temporal-consistency measures (MCS, Long-RVOS tIoU / vIoU)."""

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from rvos.data.palette import write_label_png
from rvos.errors import RVOSError
from rvos.metrics.consistency import mask_consistency_score, temporal_iou
from rvos.metrics.davis import boundary_f_measure, region_similarity
from rvos.metrics.mevis import evaluate_mevis

H, W, T = 12, 16, 4
FRAMES = [f"{t:05d}" for t in range(T)]


def _rle(mask):
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _object(y0, x0, present=(True,) * T):
    masks = np.zeros((T, H, W), bool)
    for t in range(T):
        if present[t]:
            masks[t, y0:y0 + 4, x0 + t:x0 + t + 4] = True
    return masks


@pytest.fixture()
def mevis(tmp_path):
    cat = _object(1, 1)
    dog = _object(6, 8, present=(True, True, False, False))  # leaves the video
    mask_dict = {"10": [_rle(m) if m.any() else None for m in cat],
                 "11": [_rle(m) if m.any() else None for m in dog]}
    meta = {"videos": {
        "v1": {"frames": FRAMES, "expressions": {
            "0": {"exp": "the cat", "obj_id": [0], "anno_id": [10]},
            "1": {"exp": "both animals", "obj_id": [0, 1], "anno_id": [10, 11]},
            "2": {"exp": "the dog", "obj_id": [1], "anno_id": [11]}}},
        "v2": {"frames": FRAMES[:2], "expressions": {"0": {"exp": "nothing here", "obj_id": [], "anno_id": []}}},
    }}
    gt_root = tmp_path / "valid_u"
    gt_root.mkdir()
    (gt_root / "meta_expressions.json").write_text(json.dumps(meta))
    (gt_root / "mask_dict.json").write_text(json.dumps(mask_dict))
    return gt_root, tmp_path / "pred", {"cat": cat, "dog": dog}


def _write_pred(pred_root, video, exp_id, masks):
    for t, m in enumerate(masks):
        write_label_png(pred_root / video / exp_id / f"{FRAMES[t]}.png", m.astype(np.uint8))


def test_union_ground_truth_empty_frames_and_per_expression_means(mevis):
    gt_root, pred_root, obj = mevis
    cat, dog = obj["cat"], obj["dog"]
    _write_pred(pred_root, "v1", "0", cat)
    _write_pred(pred_root, "v1", "1", cat)  # misses the dog of the union
    _write_pred(pred_root, "v1", "2", dog)  # empty where the dog is gone: J = F = 1 there
    _write_pred(pred_root, "v2", "0", np.zeros((2, H, W), bool))
    summary, rows = evaluate_mevis(gt_root, pred_root)
    by_id = {(r.video, r.exp_id): r for r in rows}
    assert by_id[("v1", "0")].J == 1.0 and by_id[("v1", "2")].J == 1.0 and by_id[("v1", "2")].F == 1.0
    assert by_id[("v2", "0")].J == 1.0 and by_id[("v2", "0")].F == 1.0  # all-empty expression
    union = cat | dog
    j_union = np.mean([region_similarity(union[t], cat[t]) for t in range(T)])
    f_union = np.mean([boundary_f_measure(union[t], cat[t]) for t in range(T)])
    assert by_id[("v1", "1")].J == pytest.approx(j_union, abs=1e-15)
    assert by_id[("v1", "1")].F == pytest.approx(f_union, abs=1e-15)
    assert j_union < 1
    assert summary["J"] == pytest.approx((3 + j_union) / 4)
    assert summary["J&F"] == pytest.approx((summary["J"] + summary["F"]) / 2)
    assert summary["num_expressions"] == 4 and summary["missing_videos"] == []


def test_missing_video_scores_zero_missing_frame_is_an_error(mevis):
    gt_root, pred_root, obj = mevis
    for exp_id in ("0", "1", "2"):
        _write_pred(pred_root, "v1", exp_id, obj["cat"])
    summary, rows = evaluate_mevis(gt_root, pred_root)
    assert summary["missing_videos"] == ["v2"]
    assert [r.J for r in rows if r.video == "v2"] == [0.0]
    (pred_root / "v1" / "2" / "00003.png").unlink()
    with pytest.raises(RVOSError, match=r"00003\.png"):
        evaluate_mevis(gt_root, pred_root)


def test_prediction_size_must_match_the_ground_truth(mevis):
    gt_root, pred_root, _ = mevis
    _write_pred(pred_root, "v1", "0", np.zeros((T, H, W + 2), bool))
    with pytest.raises(RVOSError, match=r"v1/0.*\(12, 16\)"):
        evaluate_mevis(gt_root, pred_root)


def test_temporal_iou_long_rvos_definition():
    gt = np.zeros((5, 4, 4), bool)
    gt[0:3, :2, :2] = True  # present in frames 0, 1, 2
    pred = np.zeros_like(gt)
    pred[1:4, :2, :1] = True  # present in 1, 2, 3, half the object
    j = np.array([region_similarity(gt[t], pred[t]) for t in range(5)])
    tiou, viou = temporal_iou(gt, pred, j)
    assert tiou == pytest.approx(2 / 4)  # frames {1, 2} of {0, 1, 2, 3}
    assert viou == pytest.approx((0.5 + 0.5) / 4)
    assert temporal_iou(np.zeros((3, 2, 2)), np.zeros((3, 2, 2)), np.ones(3)) == (1.0, 1.0)


def test_mask_consistency_score():
    seqs = [np.array([0.95, 0.99, 0.91]), np.array([0.95, 0.90, 0.99]), np.array([1.0, np.nan])]
    assert mask_consistency_score(seqs) == pytest.approx(1 / 3)  # 0.90 is not > 0.9; NaN fails
    assert mask_consistency_score(seqs, threshold=0.5) == pytest.approx(2 / 3)
    assert np.isnan(mask_consistency_score([]))


def test_predictions_are_read_as_the_official_grayscale_imread(mevis):
    """The official script reads cv2.imread(..., IMREAD_GRAYSCALE) != 0: the colour of a
    palette index decides, not the index itself."""
    from PIL import Image

    from rvos.metrics.mevis import read_prediction_mask

    gt_root, pred_root, obj = mevis
    mask = obj["cat"][0]
    inverted = pred_root / "inverted.png"
    inverted.parent.mkdir(parents=True)
    img = Image.fromarray(mask.astype(np.uint8), mode="P")
    img.putpalette([255, 255, 255, 0, 0, 0] + [0, 0, 0] * 254)  # index 0 white, index 1 black
    img.save(inverted)
    assert np.array_equal(read_prediction_mask(inverted), ~mask)
    gray = pred_root / "gray.png"
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), mode="L").save(gray)
    assert np.array_equal(read_prediction_mask(gray), mask)
    import cv2

    deep = pred_root / "16bit.png"
    cv2.imwrite(str(deep), np.array([[0, 255, 256, 65535]], np.uint16))
    assert read_prediction_mask(deep).tolist() == [[False, False, True, True]]  # high byte only
    broken = pred_root / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(RVOSError, match="broken.png"):
        read_prediction_mask(broken)
