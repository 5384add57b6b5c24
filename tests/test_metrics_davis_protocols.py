"""DAVIS-2017 semi-supervised / unsupervised and Ref-DAVIS17 protocols on small synthetic
sequences (checked against a re-statement of the official pipeline) and on the real clips."""

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rvos.data.palette import read_label_png, write_label_png
from rvos.errors import RVOSError
from rvos.metrics.davis import boundary_f_measure, region_similarity, sequence_statistics
from rvos.metrics.davis_protocols import (
    evaluate_davis,
    evaluate_ref_davis,
    read_gt_sequence,
    score_unsupervised,
)

ASSETS = Path(__file__).resolve().parents[1].parent / "shared" / "assets"


def _write_sequence(root: Path, name: str, labels: np.ndarray) -> None:
    for t, frame in enumerate(labels):
        write_label_png(root / name / f"{t:05d}.png", frame)


def _official_pipeline(gt_root: Path, pred_root: Path, task: str) -> dict:
    """The official evaluation restated: objects 1..max(first frame), void -> background,
    semi: drop first and last frame, require the same ids and ignore void; unsup: exclude
    void from J and F, pad and match on mean (J + F) / 2 by brute force; statistics pooled
    over objects."""
    j_stats, f_stats = [], []
    for seq_dir in sorted(p for p in gt_root.iterdir() if p.is_dir()):
        files = sorted(seq_dir.glob("*.png"))
        gt = np.stack([np.array(Image.open(f)) for f in files]).astype(np.int64)
        void = gt == 255
        gt[void] = 0
        n_obj = int(gt[0].max())
        if task == "semi-supervised":
            files, gt, void = files[1:-1], gt[1:-1], np.zeros_like(void[1:-1])
        pred = np.stack([np.array(Image.open(pred_root / seq_dir.name / f.name)) for f in files]).astype(np.int64)
        n_pred = int(pred.max())

        def per_frame(i, k):
            g, p = gt == i, pred == k
            return (np.array([region_similarity(g[t], p[t], void[t]) for t in range(len(g))]),
                    np.array([boundary_f_measure(g[t], p[t], void[t]) for t in range(len(g))]))

        if task == "semi-supervised":
            assert n_pred == n_obj
            pairs = [(i, i) for i in range(1, n_obj + 1)]
        else:
            rows = max(n_pred, n_obj)
            scores = {(k, i): per_frame(i, k) for k in range(1, rows + 1) for i in range(1, n_obj + 1)}
            best, pairs = -1.0, None
            for perm in itertools.permutations(range(1, rows + 1), n_obj):
                total = sum((scores[(k, i + 1)][0].mean() + scores[(k, i + 1)][1].mean()) / 2
                            for i, k in enumerate(perm))
                if total > best + 1e-12:
                    best, pairs = total, [(i + 1, k) for i, k in enumerate(perm)]
        for i, k in pairs:
            j, f = per_frame(i, k)
            j_stats.append(sequence_statistics(j))
            f_stats.append(sequence_statistics(f))
    j_stats, f_stats = np.array(j_stats), np.array(f_stats)
    out = {"J-Mean": j_stats[:, 0].mean(), "J-Recall": j_stats[:, 1].mean(), "J-Decay": j_stats[:, 2].mean(),
           "F-Mean": f_stats[:, 0].mean(), "F-Recall": f_stats[:, 1].mean(), "F-Decay": f_stats[:, 2].mean()}
    out["J&F-Mean"] = (out["J-Mean"] + out["F-Mean"]) / 2
    return out


def _random_sequence(rng, n_frames, n_objects, shape=(24, 32)):
    labels = np.zeros((n_frames, *shape), np.uint8)
    for k in range(1, n_objects + 1):
        y, x = rng.integers(0, shape[0] - 8), rng.integers(0, shape[1] - 8)
        for t in range(n_frames):
            dy, dx = rng.integers(-2, 3, 2)
            yy, xx = np.clip(y + dy, 0, shape[0] - 6), np.clip(x + dx, 0, shape[1] - 6)
            labels[t, yy:yy + rng.integers(3, 9), xx:xx + rng.integers(3, 9)] = k
    return labels


def _perturb(rng, labels, n_ids=None):
    out = labels.copy()
    noise = rng.random(out.shape) < 0.08
    out[noise] = rng.integers(0, (n_ids or labels.max()) + 1, noise.sum())
    return out


@pytest.fixture()
def synthetic(tmp_path):
    rng = np.random.default_rng(7)
    gt_root, pred_root = tmp_path / "gt", tmp_path / "pred"
    for name, n_obj, n_frames in (("alpha", 2, 6), ("beta", 3, 5), ("gamma", 1, 7)):
        gt = _random_sequence(rng, n_frames, n_obj)
        void = rng.random(gt.shape) < 0.02
        gt_with_void = gt.copy()
        gt_with_void[void] = 255
        _write_sequence(gt_root, name, gt_with_void)
        _write_sequence(pred_root, name, _perturb(rng, gt))
    return gt_root, pred_root


@pytest.mark.parametrize("task", ["semi-supervised", "unsupervised"])
def test_matches_restated_official_pipeline(synthetic, task):
    gt_root, pred_root = synthetic
    ours = evaluate_davis(gt_root, pred_root, task).summary()
    ref = _official_pipeline(gt_root, pred_root, task)
    for key, value in ref.items():
        assert ours[key] == pytest.approx(value, abs=1e-12), key


def test_unsupervised_matching_with_permuted_extra_and_missing_ids(tmp_path):
    rng = np.random.default_rng(1)
    gt = _random_sequence(rng, 4, 3)
    _write_sequence(tmp_path / "gt", "s", gt)
    permuted = np.zeros_like(gt)
    for old, new in ((1, 3), (2, 1), (3, 5)):  # id 2 and 4 unused, 5 used
        permuted[gt == old] = new
    permuted[0, :2, :2] = 4  # a small spurious proposal
    _write_sequence(tmp_path / "pred", "s", permuted)
    result = evaluate_davis(tmp_path / "gt", tmp_path / "pred", "unsupervised")
    assert [o.pred_id for o in result.objects] == [3, 1, 5]
    assert result.summary()["J-Mean"] == pytest.approx(1.0)
    # fewer proposals than objects: the missing object is matched to an empty proposal
    only_two = np.where(gt == 3, 0, gt)
    _write_sequence(tmp_path / "pred2", "s", only_two)
    result = evaluate_davis(tmp_path / "gt", tmp_path / "pred2", "unsupervised")
    assert [o.pred_id for o in result.objects] == [1, 2, 0]
    assert result.objects[2].j.max() == 0.0


def test_void_is_excluded_in_the_unsupervised_task_and_ignored_in_the_semi_supervised(tmp_path):
    # 3 frames of 8x8; object 1 is a 4x4 square, 4 of its pixels are void (255) in every frame.
    gt = np.zeros((3, 8, 8), np.uint8)
    gt[:, 2:6, 2:6] = 1
    gt[:, 2:6, 2] = 255
    pred = np.zeros((3, 8, 8), np.uint8)
    pred[:, 2:6, 2:6] = 1  # covers the void column too
    _write_sequence(tmp_path / "gt", "s", gt)
    _write_sequence(tmp_path / "pred", "s", pred)
    unsup = evaluate_davis(tmp_path / "gt", tmp_path / "pred", "unsupervised")
    # void left out of intersection and union: 12 / 12
    assert unsup.objects[0].j.tolist() == [1.0, 1.0, 1.0]
    semi = evaluate_davis(tmp_path / "gt", tmp_path / "pred", "semi-supervised")
    # void counted as background: 12 / 16 on the one scored (middle) frame
    assert semi.objects[0].j.tolist() == [0.75]


def test_unsupervised_is_hungarian_not_greedy():
    rng = np.random.default_rng(5)
    for _ in range(5):
        gt = _random_sequence(rng, 3, 3, shape=(16, 16))
        pred = _perturb(rng, gt, n_ids=4)
        pred[rng.random(pred.shape) < 0.1] = 4
        objs = score_unsupervised("s", gt, pred, 3)
        totals = {}
        for perm in itertools.permutations(range(1, 5), 3):
            totals[perm] = sum(
                (np.mean([region_similarity(gt[t] == i + 1, pred[t] == k) for t in range(3)])
                 + np.mean([boundary_f_measure(gt[t] == i + 1, pred[t] == k) for t in range(3)])) / 2
                for i, k in enumerate(perm))
        chosen = tuple(o.pred_id for o in objs)
        assert totals[chosen] == pytest.approx(max(totals.values()), abs=1e-12)


def test_too_many_proposals_is_refused(tmp_path):
    gt = np.zeros((3, 8, 8), np.uint8)
    gt[:, 2:5, 2:5] = 1
    pred = np.zeros_like(gt)
    pred[0, 0, 0] = 21
    _write_sequence(tmp_path / "gt", "s", gt)
    _write_sequence(tmp_path / "pred", "s", pred)
    with pytest.raises(RVOSError, match="20 proposals"):
        evaluate_davis(tmp_path / "gt", tmp_path / "pred", "unsupervised")


def test_semi_supervised_skips_first_and_last_frame_unsupervised_does_not(tmp_path):
    gt = np.zeros((5, 10, 10), np.uint8)
    gt[:, 3:7, 3:7] = 1
    pred = gt.copy()
    pred[0] = 0
    pred[-1] = 0
    _write_sequence(tmp_path / "gt", "s", gt)
    _write_sequence(tmp_path / "pred", "s", pred)
    semi = evaluate_davis(tmp_path / "gt", tmp_path / "pred", "semi-supervised")
    assert len(semi.objects[0].j) == 3 and semi.summary()["J&F-Mean"] == 1.0
    unsup = evaluate_davis(tmp_path / "gt", tmp_path / "pred", "unsupervised")
    assert unsup.summary()["J-Mean"] == pytest.approx(3 / 5)


def test_void_label_is_background_as_in_the_official_loader(tmp_path):
    gt = np.zeros((3, 10, 10), np.uint8)
    gt[:, 2:5, 2:5] = 1  # 9 object pixels
    gt[:, 6:9, 6:9] = 255  # 9 void pixels
    pred = np.where(gt == 255, 1, gt).astype(np.uint8)  # predicts the void area as the object
    _write_sequence(tmp_path / "gt", "s", gt)
    _write_sequence(tmp_path / "pred", "s", pred)
    result = evaluate_davis(tmp_path / "gt", tmp_path / "pred", "semi-supervised")
    assert result.objects[0].j[0] == pytest.approx(9 / 18)


def test_global_means_pool_objects_not_sequences(tmp_path):
    one = np.zeros((3, 8, 8), np.uint8)
    one[:, 1:4, 1:4] = 1
    three = np.zeros((3, 8, 8), np.uint8)
    three[:, 0:2, 0:2], three[:, 4:6, 0:2], three[:, 0:2, 5:7] = 1, 2, 3
    _write_sequence(tmp_path / "gt", "a", one)
    _write_sequence(tmp_path / "gt", "b", three)
    _write_sequence(tmp_path / "pred", "a", one)
    wrong = np.zeros_like(three)
    wrong[:, 6:8, 6:8] = 3  # objects 1, 2 missed, object 3 elsewhere
    _write_sequence(tmp_path / "pred", "b", wrong)
    result = evaluate_davis(tmp_path / "gt", tmp_path / "pred", "semi-supervised")
    assert result.summary()["J-Mean"] == pytest.approx(1 / 4)  # 4 objects: 1, 0, 0, 0


def test_semi_supervised_errors_name_the_file(tmp_path):
    gt = np.zeros((4, 8, 8), np.uint8)
    gt[:, 2:4, 2:4] = 1
    _write_sequence(tmp_path / "gt", "s", gt)
    pred = gt.copy()
    pred[2, 0, 0] = 2
    _write_sequence(tmp_path / "pred", "s", pred)
    with pytest.raises(RVOSError, match=r"00002\.png.*predicted id 2"):
        evaluate_davis(tmp_path / "gt", tmp_path / "pred", "semi-supervised")
    (tmp_path / "pred" / "s" / "00001.png").unlink()
    with pytest.raises(RVOSError, match=r"00001\.png.*missing"):
        evaluate_davis(tmp_path / "gt", tmp_path / "pred", "semi-supervised")
    write_label_png(tmp_path / "pred" / "s" / "00001.png", np.zeros((8, 9), np.uint8))
    with pytest.raises(RVOSError, match=r"00001\.png.*9x8"):
        evaluate_davis(tmp_path / "gt", tmp_path / "pred", "semi-supervised")


def test_unused_ground_truth_ids_are_scored_as_empty_with_a_warning(tmp_path):
    gt = np.zeros((3, 8, 8), np.uint8)
    gt[:, 1:3, 1:3], gt[:, 5:7, 5:7] = 1, 2
    _write_sequence(tmp_path / "gt", "s", gt)
    _write_sequence(tmp_path / "pred", "s", np.where(gt == 2, 0, gt).astype(np.uint8))
    result = evaluate_davis(tmp_path / "gt", tmp_path / "pred", "semi-supervised")
    assert result.warnings and "ids 2..2" in result.warnings[0]
    assert [o.j.mean() for o in result.objects] == [1.0, 0.0]


# ----------------------------------------------------------------------------- Ref-DAVIS17


def test_ref_davis_runs_are_separate_unsupervised_runs_and_strict_mode(tmp_path):
    gt = np.zeros((4, 12, 12), np.uint8)
    gt[:, 1:5, 1:5], gt[:, 6:11, 6:11] = 1, 2
    _write_sequence(tmp_path / "gt", "v", gt)
    meta = {"videos": {"v": {"frames": [f"{t:05d}" for t in range(4)], "expressions": {
        str(4 * o + a): {"exp": f"object {o} set {a}", "obj_id": str(o + 1)} for o in range(2) for a in range(4)}}}}
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    pred = tmp_path / "pred"
    for o in range(2):
        for a in range(4):
            target = o + 1 if a != 2 else 2 - o  # set 2 swaps the two objects
            masks = (gt == target) if a != 3 else np.zeros_like(gt, bool)  # set 3 finds nothing
            for t in range(4):
                write_label_png(pred / "v" / str(4 * o + a) / f"{t:05d}.png", masks[t].astype(np.uint8))
    result = evaluate_ref_davis(tmp_path / "gt", pred, tmp_path / "meta.json", strict=True)
    summary = result.summary()
    runs = summary["runs"]
    assert runs["anno_0"]["J&F-Mean"] == 1.0 and runs["anno_1"]["J&F-Mean"] == 1.0
    assert runs["anno_2"]["J&F-Mean"] == 1.0  # matching undoes the swap
    assert runs["anno_3"]["J-Mean"] == 0.0
    assert summary["mean_over_runs"]["J-Mean"] == pytest.approx(0.75)
    strict = summary["strict_fixed_ids"]["runs"]
    assert strict["anno_2"]["J-Mean"] == 0.0 and strict["anno_0"]["J-Mean"] == 1.0

    # ReferFormer's anno_<a> label-map layout gives the same numbers
    for a in range(4):
        for t in range(4):
            composed = np.zeros((12, 12), np.uint8)
            for o in (1, 0):  # lowest label written last: it wins overlaps
                composed[read_label_png(pred / "v" / str(4 * o + a) / f"{t:05d}.png") > 0] = o + 1
            write_label_png(tmp_path / "anno" / f"anno_{a}" / "v" / f"{t:05d}.png", composed)
    again = evaluate_ref_davis(tmp_path / "gt", tmp_path / "anno").summary()
    assert again["mean_over_runs"] == summary["mean_over_runs"]


def test_ref_davis_on_real_clip_with_real_expressions(tmp_path):
    root = ASSETS / "davis-real"
    if not root.is_dir():
        pytest.skip(f"real DAVIS assets not found at {root}")
    gt_root = root / "Annotations" / "480p"
    gt, frames, _ = read_gt_sequence(gt_root / "car-shadow")
    meta = json.loads((root / "meta_expressions.json").read_text())
    shifted = np.roll(gt, 10, axis=2)
    for exp_id in meta["videos"]["car-shadow"]["expressions"]:
        masks = gt if int(exp_id) % 4 != 1 else shifted  # set 1 is off by 10 px
        for t, name in enumerate(frames):
            write_label_png(tmp_path / "car-shadow" / exp_id / f"{name}.png", masks[t])
    result = evaluate_ref_davis(gt_root, tmp_path, root / "meta_expressions.json", sequences=["car-shadow"])
    runs = result.summary()["runs"]
    assert runs["anno_0"]["J&F-Mean"] == runs["anno_2"]["J&F-Mean"] == runs["anno_3"]["J&F-Mean"] == 1.0
    assert 0 < runs["anno_1"]["J&F-Mean"] < 1
    expected = (3 + runs["anno_1"]["J&F-Mean"]) / 4
    assert result.summary()["mean_over_runs"]["J&F-Mean"] == pytest.approx(expected, abs=1e-15)


def test_real_davis_sequences_against_themselves(tmp_path):
    gt_root = ASSETS / "davis-real" / "Annotations" / "480p"
    if not gt_root.is_dir():
        pytest.skip(f"real DAVIS assets not found at {gt_root}")
    result = evaluate_davis(gt_root, gt_root, "semi-supervised", sequences=["blackswan", "car-shadow"])
    assert result.summary()["J&F-Mean"] == 1.0
    assert [len(o.j) for o in result.objects] == [48, 38]
