"""A2D-Sentences: the official layout read as MTTR reads it, training clips whose unlabelled
frames carry no supervision, and the evaluation protocol from a model to the official
figures (rvos evaluate --dataset a2d)."""

import csv
import json

import h5py
import numpy as np
import pytest
import torch

from rvos.cli import main
from rvos.config import load_config
from rvos.data.a2d import A2DLayout, A2DSample, build_train_dataset, verify_validation_split, window_indices
from rvos.data.batch import ClipBatch, ClipMeta, collate_clips, masks_to_boxes_cxcywh
from rvos.data.video_io import VideoWriter
from rvos.engine.protocols import EvaluationRequest
from rvos.errors import RVOSError
from rvos.models.outputs import RVOSOutput

H, W = 24, 32          # frame size (even, so that the MP4 keeps it)


def gray(i: int) -> int:
    """Frame i of every fabricated video is uniformly this grey: decoded frames tell their index."""
    return 10 + 20 * i


def box(y0, y1, x0, x1):
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


# video -> (frame count, subset); vidM is a test video listed in a2d_missed_videos.txt
VIDEOS = {"vidA": (10, 1), "vidB": (6, 1), "vidC": (8, 0), "vidM": (5, 1)}
# video -> {1-based frame: {instance id: (H, W) mask}}: the .h5 files
ANNOTATIONS = {
    "vidA": {3: {0: box(0, 8, 0, 10), 1: box(10, 20, 16, 30)},
             9: {0: box(2, 9, 1, 12), 1: box(12, 22, 14, 28)}},
    "vidB": {1: {2: box(0, 12, 0, 16), 5: box(12, 24, 16, 32)},
             6: {2: box(4, 10, 4, 12), 5: box(14, 20, 20, 30)}},
    "vidC": {2: {3: box(0, 5, 0, 5)},                 # instance 1 absent: no sample there
             4: {1: box(5, 15, 5, 20)}},              # one instance: reMask stored 2-D
}
SENTENCES = [("vidA", "0", "The man,  on the LEFT"), ("vidA", "1", "a dog running"),
             ("vidB", "2", "red car"), ("vidB", "5", "blue car"),
             ("vidC", "1", "a man jumping"), ("vidC", "1 (copy)", "a man jumping"),
             ("vidM", "0", "hidden")]
TEST_SAMPLES = [("vidA", 0, 3), ("vidA", 0, 9), ("vidA", 1, 3), ("vidA", 1, 9),
                ("vidB", 2, 1), ("vidB", 2, 6), ("vidB", 5, 1), ("vidB", 5, 6)]


def write_h5(path, instances: dict[int, np.ndarray]):
    """As the release stores a frame: ids as float64, masks transposed (N, W, H) uint8, a
    single instance's mask as (W, H)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = np.array(list(instances), dtype=np.float64)
    masks = np.stack([m.T for m in instances.values()]).astype(np.uint8)
    boxes = np.zeros((4, len(ids)))
    with h5py.File(path, "w") as f:
        f.create_dataset("instance", data=ids)
        f.create_dataset("reMask", data=masks[0] if len(ids) == 1 else masks)
        f.create_dataset("reBBox", data=boxes)


def write_video(path, n):
    path.parent.mkdir(parents=True, exist_ok=True)
    with VideoWriter(path, fps=24) as w:
        for i in range(n):
            w.write(np.full((H, W, 3), gray(i), np.uint8))


def make_a2d(root):
    release = root / "Release"
    release.mkdir(parents=True)
    with open(release / "videoset.csv", "w", newline="") as f:
        for video, (n, subset) in VIDEOS.items():
            csv.writer(f).writerow([video, 11, 0.0, 1.5, H, W, n, 2, subset])
    for video, (n, _) in VIDEOS.items():
        write_video(release / "clips320H" / f"{video}.mp4", n)
    text = root / "text_annotations"
    text.mkdir()
    with open(text / "a2d_annotation.txt", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["video_id", "instance_id", "query"])
        writer.writerows(SENTENCES)
    (text / "a2d_missed_videos.txt").write_text("vidM\n")
    for video, frames in ANNOTATIONS.items():
        for frame, instances in frames.items():
            write_h5(text / "a2d_annotation_with_instances" / video / f"{frame:05d}.h5", instances)
    return root


@pytest.fixture
def a2d(tmp_path):
    return make_a2d(tmp_path / "a2d_sentences")


# ------------------------------------------------------------------------------- reading


def test_samples_are_mttrs_in_order_with_their_image_ids(a2d):
    layout = A2DLayout(a2d)
    test = layout.samples("test")
    assert [(s.video, s.instance_id, s.frame) for s in test] == TEST_SAMPLES
    assert test[0].text == "the man, on the left"            # lower-cased, spaces collapsed
    assert test[0].image_id == "v_vidA_f_3_i_0" and test[0].frame_index == 2
    # train: instance 1 of vidC is annotated in frame 4 only; "1 (copy)" skipped as MTTR does
    assert layout.samples("train") == [A2DSample("vidC", 1, 4, "a man jumping")]
    with pytest.raises(RVOSError, match="videoset.csv.*not 'valid'"):
        layout.samples("valid")


def test_masks_come_back_upright_for_one_and_several_instances(a2d):
    layout = A2DLayout(a2d)
    for video, frames in ANNOTATIONS.items():
        for frame, instances in frames.items():
            for instance, mask in instances.items():
                got = layout.read_mask(A2DSample(video, instance, frame, "x"))
                assert got.shape == (H, W) and got.dtype == bool
                np.testing.assert_array_equal(got, mask)


def test_window_is_mttrs_with_edges_repeated():
    assert window_indices(5, 5, 10) == [3, 4, 5, 6, 7]
    assert window_indices(5, 4, 10) == [3, 4, 5, 6]          # centre at position 4 // 2
    assert window_indices(0, 4, 10) == [0, 0, 0, 1]
    assert window_indices(9, 5, 10) == [7, 8, 9, 9, 9]
    assert window_indices(0, 3, 1) == [0, 0, 0]


def test_clips_decode_the_window_frames(a2d):
    layout = A2DLayout(a2d)
    clips = layout.read_clips("vidB", [0, 5], 4)              # frames 1 and 6 of 6
    assert clips[0].indices == [0, 0, 0, 1] and clips[5].indices == [3, 4, 5, 5]
    for clip in clips.values():
        assert clip.frames.shape == (4, H, W, 3)
        levels = clip.frames.reshape(4, -1).mean(1)
        np.testing.assert_allclose(levels, [gray(i) for i in clip.indices], atol=3)


# ------------------------------------------------------------------------------ training


def tiny_cfg(root, *extra):
    return load_config(None, ["data.format=a2d", f"data.root={root}", "data.train_split=train",
                              "data.val_split=test", "data.num_frames=3", "data.input_size=[16,16]",
                              "data.hflip_prob=0", *extra])


def test_training_clip_labels_the_annotated_frame_only(a2d):
    ds = build_train_dataset(tiny_cfg(a2d))
    assert len(ds) == 1
    s = ds[0]
    assert s.frames.shape == (3, 3, 16, 16) and s.masks.shape == (3, 16, 16)
    assert s.labelled.tolist() == [False, True, False]
    assert s.valid.tolist() == [False, True, False]
    assert s.masks[1].sum() > 0 and s.masks[0].sum() == 0 and s.masks[2].sum() == 0
    assert s.meta.frame_names == ["00003", "00004", "00005"] and s.meta.obj_ids == [1]
    assert s.text == "a man jumping"
    batch = collate_clips([s, s])
    assert batch.labelled.shape == (2, 3) and batch.labelled[:, 1].all()


def test_validation_split_is_checked_only_when_validating(a2d):
    (a2d / "Release" / "clips320H" / "vidB.mp4").unlink()
    verify_validation_split(tiny_cfg(a2d, "train.eval_every=0"))
    with pytest.raises(RVOSError, match="vidB.mp4"):
        verify_validation_split(tiny_cfg(a2d))


def test_a_batch_without_labelled_flags_labels_every_frame():
    meta = ClipMeta("v", "0", ["00000"], (4, 4))
    batch = ClipBatch(torch.zeros(1, 1, 3, 4, 4), torch.zeros(1, 1, 4, 4),
                      torch.zeros(1, 1, dtype=torch.bool), torch.zeros(1, 1, 4), ["x"], [meta])
    assert batch.labelled.tolist() == [[True]]


def _labelled_batch(t=3, size=16):
    masks = torch.zeros(1, t, size, size)
    masks[0, 1, 4:12, 4:12] = 1                      # the annotated frame
    boxes, valid = masks_to_boxes_cxcywh(masks)
    labelled = torch.tensor([[False, True, False]])
    meta = ClipMeta("v", "0", [f"{i:05d}" for i in range(t)], (size, size))
    return ClipBatch(torch.zeros(1, t, 3, size, size), masks, valid, boxes, ["x"], [meta], labelled)


@pytest.mark.parametrize("kind", ["baseline", "query"])
def test_unlabelled_frames_do_not_change_the_loss(kind):
    """Whatever the model predicts at a frame without ground truth, the loss is the same;
    at the labelled frame it is not."""
    from rvos.models.build import build_criterion

    cfg = load_config(None, [f"model.kind={kind}"])
    criterion = build_criterion(cfg)
    batch = _labelled_batch()
    g = torch.Generator().manual_seed(0)
    q = 1 if kind == "baseline" else 4
    size = 16 if kind == "baseline" else 4
    aux = 0 if kind == "baseline" else criterion.num_aux

    def output(logits, scores, boxes):
        out = RVOSOutput(logits, scores, None if kind == "baseline" else boxes)
        out.aux = [RVOSOutput(logits, scores, out.boxes) for _ in range(aux)]
        return out

    logits = torch.randn(1, 3, q, size, size, generator=g)
    scores = torch.randn(1, 3, q, generator=g)
    boxes = torch.rand(1, 3, q, 4, generator=g) * 0.5 + 0.25
    base = criterion(output(logits, scores, boxes), batch)
    changed = logits.clone(), scores.clone(), boxes.clone()
    for x in changed:
        x[:, [0, 2]] = torch.randn(x[:, [0, 2]].shape, generator=g).abs() * 3   # unlabelled
    other = criterion(output(*changed), batch)
    for name in base:
        assert other[name].item() == pytest.approx(base[name].item(), rel=1e-5, abs=1e-6), name
    moved = logits.clone()
    moved[:, 1] += 3.0                                                          # labelled
    assert criterion(output(moved, scores, boxes), batch)["dice"] != pytest.approx(base["dice"].item())


# ------------------------------------------------------------------------------ evaluation


def gt_of(video, instance, frame):
    return ANNOTATIONS[video][frame][instance]


class OraclePredictor:
    """Predicts, for each sentence, the mask of ``pick(video, instance, frame)`` at the clip's
    centre frame (recognised by its grey level), and nothing at the other frames."""

    def __init__(self, pick, window=3):
        self.window, self.pick = window, pick
        self.by_text = {" ".join(q.lower().split()): (v, int(i)) for v, i, q in SENTENCES
                        if i.isdigit()}
        self.calls = 0

    def predict_window(self, frames, texts):
        self.calls += 1
        t = len(frames)
        center = round((frames[t // 2].mean() - 10) / 20)
        probs = np.full((t, len(texts), H, W), 0.02, np.float32)
        for k, text in enumerate(texts):
            video, instance = self.by_text[text]
            probs[t // 2, k][self.pick(video, instance, center + 1)] = 0.97
        return probs


def run_protocol(root, out, predictor, max_samples=0):
    from rvos.engine.protocols.a2d import evaluate

    out.mkdir()
    return evaluate(EvaluationRequest(predictor, root, ["test"], out, max_samples=max_samples,
                                      progress=False))


def test_oracle_predictions_score_one_and_files_are_mttrs(a2d, tmp_path):
    out = tmp_path / "out"
    predictor = OraclePredictor(gt_of)
    report = run_protocol(a2d, out, predictor)
    figures = json.loads((out / "a2d.json").read_text())
    top1, ap = figures["top1"], figures["map_top1"]
    assert top1["overall_iou"] == 1.0 and top1["mean_iou"] == 1.0
    assert all(top1[f"P@{t}"] == 1.0 for t in (0.5, 0.6, 0.7, 0.8, 0.9))
    assert ap["mAP 0.5:0.95"] == pytest.approx(1.0) and figures["map_all_queries"] == ap
    assert figures["num_samples"] == 8 and "P@0.9" in report.table
    assert predictor.calls == 4              # one pass per annotated frame, its sentences together
    # the ground truth as MTTR's create_gt_in_coco_format.py writes it
    gt = json.loads((out / "a2d_ground_truth_coco.json").read_text())
    assert [i["id"] for i in gt["images"]] == [f"v_{v}_f_{f}_i_{i}" for v, i, f in TEST_SAMPLES]
    assert gt["images"][0] == {"id": "v_vidA_f_3_i_0", "height": H, "width": W}
    assert [a["id"] for a in gt["annotations"]] == list(range(1, 9))
    ann = gt["annotations"][0]
    assert ann["category_id"] == 1 and ann["iscrowd"] == 0 and ann["area"] == 80.0
    assert ann["bbox"] == [0.0, 0.0, 10.0, 8.0] and ann["segmentation"]["size"] == [H, W]
    preds = json.loads((out / "a2d_predictions_coco.json").read_text())
    assert len(preds) == 8 and preds[0]["score"] == pytest.approx(0.97)
    rows = list(csv.DictReader(open(out / "a2d_per_sample.csv")))
    assert rows[0]["image_id"] == "v_vidA_f_3_i_0" and rows[0]["text"] == "the man, on the left"
    assert (out / "results.txt").read_text().startswith("A2D-Sentences test: 8 samples")


def test_the_wrong_instance_scores_zero(a2d, tmp_path):
    def other(video, instance, frame):
        return next(m for i, m in ANNOTATIONS[video][frame].items() if i != instance)

    run_protocol(a2d, tmp_path / "out", OraclePredictor(other), max_samples=5)
    figures = json.loads((tmp_path / "out" / "a2d.json").read_text())
    assert figures["num_samples"] == 5
    assert figures["top1"]["overall_iou"] == 0.0 and figures["top1"]["P@0.5"] == 0.0
    assert figures["map_top1"]["mAP 0.5:0.95"] == 0.0


def test_validation_summary_chooses_by_map(a2d):
    from rvos.engine.protocols.a2d import validation_summary

    summary = validation_summary(OraclePredictor(gt_of), tiny_cfg(a2d, "data.max_val_samples=2"),
                                 progress=False)
    assert summary["split"] == "test" and summary["overall"]["count"] == 2
    assert summary["overall"]["JF"] == summary["overall"]["mAP"] == pytest.approx(1.0)



def test_validation_reads_the_h5_instance_lists_once_per_run(a2d, monkeypatch):
    """Every validation pass lists its samples; the .h5 files are opened the first time only."""
    import rvos.data.a2d as a2d_module
    from rvos.engine.protocols.a2d import validation_summary

    opened = []
    read = a2d_module.read_instance_ids
    monkeypatch.setattr(a2d_module, "read_instance_ids", lambda path: opened.append(path) or read(path))
    cfg = tiny_cfg(a2d, "data.max_val_samples=2")
    first = validation_summary(OraclePredictor(gt_of), cfg, progress=False)
    after_first = len(opened)
    second = validation_summary(OraclePredictor(gt_of), cfg, progress=False)
    assert after_first > 0 and len(opened) == after_first
    assert first["overall"] == second["overall"]


# ------------------------------------------------------------------------------ bad files


def test_damaged_files_name_themselves(a2d):
    h5 = a2d / "text_annotations" / "a2d_annotation_with_instances" / "vidA" / "00009.h5"
    h5.write_bytes(b"not an hdf5 file")
    with pytest.raises(RVOSError, match="00009.h5.*HDF5"):
        A2DLayout(a2d).samples("test")
    h5.unlink()
    with h5py.File(h5, "w") as f:
        f.create_dataset("instance", data=np.array([0.0, 1.0]))
    with pytest.raises(RVOSError, match="00009.h5.*'reMask'"):
        A2DLayout(a2d).read_mask(A2DSample("vidA", 0, 9, "x"))
    h5.unlink()
    with pytest.raises(RVOSError, match="00009.h5.*not found"):
        A2DLayout(a2d).read_mask(A2DSample("vidA", 0, 9, "x"))
    folder = h5.parent
    for f in folder.iterdir():
        f.unlink()
    folder.rmdir()
    with pytest.raises(RVOSError, match="vidA.*no annotation folder"):
        A2DLayout(a2d).samples("test")


def test_short_and_missing_videos_name_themselves(a2d):
    write_video(a2d / "Release" / "clips320H" / "vidA.mp4", 5)     # frame 9 is annotated
    with pytest.raises(RVOSError, match="vidA.mp4.*fewer than 9 frames"):
        A2DLayout(a2d).read_clips("vidA", [2, 8], 3)
    (a2d / "Release" / "clips320H" / "vidB.mp4").unlink()
    with pytest.raises(RVOSError, match="vidB.mp4.*not found"):
        A2DLayout(a2d).read_clips("vidB", [0], 3)


def test_bad_csv_files_name_themselves(a2d):
    videoset = a2d / "Release" / "videoset.csv"
    videoset.write_text(videoset.read_text() + "vidX,1,2\n")
    with pytest.raises(RVOSError, match="videoset.csv.*line 5: 3 columns"):
        A2DLayout(a2d)
    videoset.unlink()
    with pytest.raises(RVOSError, match="videoset.csv.*not found"):
        A2DLayout(a2d)
    make_a2d(a2d.parent / "other")
    sentences = a2d.parent / "other" / "text_annotations" / "a2d_annotation.txt"
    sentences.write_text("video,query\nvidA,x\n")
    with pytest.raises(RVOSError, match="a2d_annotation.txt.*header"):
        A2DLayout(a2d.parent / "other")


# ---------------------------------------------------------------------------- through the CLI


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A real, untrained, tiny baseline checkpoint."""
    from rvos.engine.checkpoint import save_checkpoint
    from rvos.models.build import build_model

    cfg = load_config(None, ["model.baseline.dim=32", "model.baseline.heads=2",
                             "data.input_size=[32,32]"])
    return save_checkpoint(tmp_path_factory.mktemp("ck") / "model", build_model(cfg), cfg, {"step": 0})


def test_evaluate_a_checkpoint_through_the_cli(a2d, tmp_path, tiny_checkpoint, capsys):
    out = tmp_path / "eval"
    code = main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--dataset", "a2d",
                 "--data", str(a2d), "--split", "test", "--window", "3", "--out", str(out),
                 "--max-samples", "3", "--quiet"])
    printed = capsys.readouterr().out
    assert code == 0 and "mAP 0.5:0.95" in printed
    figures = json.loads((out / "a2d.json").read_text())
    assert figures["num_samples"] == 3 and figures["window"] == 3
    assert 0.0 <= figures["top1"]["mean_iou"] <= 1.0
    assert {p.name for p in out.iterdir()} >= {"a2d.json", "a2d_per_sample.csv", "results.txt",
                                               "a2d_ground_truth_coco.json", "a2d_predictions_coco.json"}
    (a2d / "Release" / "clips320H" / "vidA.mp4").write_bytes(b"\0" * 64)
    code = main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--dataset", "a2d",
                 "--data", str(a2d), "--window", "3", "--out", str(tmp_path / "eval2"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "vidA.mp4" in err and "Traceback" not in err


def test_train_a_step_and_validate_through_the_cli(a2d, tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["train", "baseline_synth", "data.format=a2d", f"data.root={a2d}",
                 "data.val_split=test", "data.num_frames=3", "data.input_size=[32,32]",
                 "data.max_val_samples=2", "model.baseline.dim=32", "model.baseline.heads=2",
                 "model.baseline.fusion_layers=1", "optim.batch_size=1", "train.epochs=1",
                 "train.max_steps_per_epoch=1", "train.eval_every=1", "eval.window=3",
                 "--out", str(run), "--quiet"])
    assert code == 0, capsys.readouterr().err
    logged = {r["name"] for r in csv.DictReader(open(run / "metrics.csv")) if r["split"] == "val"}
    assert {"JF", "mAP", "overall_iou", "P@0.9"} <= logged
