"""Hostile and damaged inputs: ids used as paths, missing files, truncated videos, long
sentences. Every case ends in a one-line RVOSError naming the file (exit status 2 from the
CLI) or a warning naming the file or sentence; nothing is read or written outside its root."""

import json
import pickle
import warnings
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from rvos.cli import main
from rvos.config import load_config
from rvos.data.palette import write_label_png
from rvos.data.video_io import IncompleteVideoWarning, iter_video_frames, probe_video
from rvos.data.ytvos import RefYTVOSLayout
from rvos.errors import RVOSError
from rvos.paths import check_component, component_problem, safe_join, safe_zip_entry

H, W = 16, 16
FRAMES = ["00000", "00001", "00002"]
HOSTILE = ["../../x", "/etc", "", "a\0b", "a/b", "a\\b", "..", "."]


# ----------------------------------------------------------------------------- helpers

def run_cli(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*")}


def write_layout(root: Path, split: str = "valid", videos: dict | None = None,
                 files: dict[str, list[str]] | None = None) -> Path:
    """A tiny Ref-YouTube-VOS split: ``videos`` is the meta_expressions ``videos`` dict
    (default: one video v1 with one expression); ``files`` {video: frames} the frames and
    masks written (default: those of every safe video id)."""
    if videos is None:
        videos = {"v1": {"frames": FRAMES, "expressions": {"0": {"exp": "the square", "obj_id": "1"}}}}
    if files is None:
        files = {v: e["frames"] for v, e in videos.items() if component_problem(v) is None}
    for video, frames in files.items():
        for i, frame in enumerate(frames):
            (root / split / "JPEGImages" / video).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((H, W, 3), 30 * i, np.uint8)).save(
                root / split / "JPEGImages" / video / f"{frame}.jpg")
            labels = np.zeros((H, W), np.uint8)
            labels[4:10, 4:10] = 1
            write_label_png(root / split / "Annotations" / video / f"{frame}.png", labels)
    meta = root / "meta_expressions" / split / "meta_expressions.json"
    meta.parent.mkdir(parents=True, exist_ok=True)
    meta.write_text(json.dumps({"videos": videos}))
    return meta


def one_video(video="v1", exp_id="0", frames=None) -> dict:
    return {video: {"frames": frames or FRAMES,
                    "expressions": {exp_id: {"exp": "the square", "obj_id": "1"}}}}


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A real (untrained) tiny baseline checkpoint."""
    from rvos.engine.checkpoint import save_checkpoint
    from rvos.models.build import build_model

    cfg = load_config(None, ["model.baseline.dim=32", "model.baseline.heads=2",
                             "data.input_size=[32,32]"])
    model = build_model(cfg)
    return save_checkpoint(tmp_path_factory.mktemp("ck") / "model", model, cfg, {"step": 0})


# ----------------------------------------------------------------------------- path checks

@pytest.mark.parametrize("name", HOSTILE + [None, 3])
def test_a_bad_name_is_refused_naming_its_file(name):
    with pytest.raises(RVOSError, match="one file or folder name") as e:
        check_component(name, "video id", "data/meta.json")
    assert "data/meta.json" in str(e.value) and "\n" not in str(e.value)


def test_safe_names_pass_and_joins_stay_inside(tmp_path):
    for name in ("00000", "v1", "-0rOt0p-HJw", "frame 1.jpg", "a..b", ".hidden", "été"):
        assert check_component(name, "name") == name
    assert safe_join(tmp_path, "a", "b.png") == tmp_path / "a" / "b.png"
    assert safe_zip_entry("Annotations", "v", "0", "00000.png") == "Annotations/v/0/00000.png"
    for bad in (("..", "x"), ("a", "../../b"), ("/etc",)):
        with pytest.raises(RVOSError):
            safe_join(tmp_path, *bad)
        with pytest.raises(RVOSError):
            safe_zip_entry("Annotations", *bad)


# ----------------------------------------------------------------------------- layout readers

@pytest.mark.parametrize("where", ["video", "expression", "frame"])
@pytest.mark.parametrize("bad", ["../../x", "/abs", "", "a\0b", "a/b"])
def test_hostile_ids_in_meta_expressions_are_refused_at_load(tmp_path, where, bad):
    videos = {"video": lambda: one_video(video=bad),
              "expression": lambda: one_video(exp_id=bad),
              "frame": lambda: one_video(frames=["00000", bad])}[where]()
    meta = write_layout(tmp_path, videos=videos, files={"v1": ["00000"]})
    with pytest.raises(RVOSError, match=where) as e:
        RefYTVOSLayout(tmp_path, "valid")
    assert str(meta) in str(e.value)
    # The metrics' reader (Ref-YouTube-VOS, MeViS, Ref-DAVIS) refuses it too.
    from rvos.metrics.davis_protocols import load_meta_expressions

    with pytest.raises(RVOSError, match=where) as e:
        load_meta_expressions(meta)
    assert str(meta) in str(e.value)


def test_a_hostile_split_name_is_refused(tmp_path):
    write_layout(tmp_path)
    with pytest.raises(RVOSError, match="split name"):
        RefYTVOSLayout(tmp_path, "../valid")


def test_davis_conversion_refuses_hostile_video_names(tmp_path):
    from rvos.data.davis import DAVIS_TEXT_FILES, convert_davis_to_ytvos, read_davis_text_annotations

    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / DAVIS_TEXT_FILES[0]).write_text('bear 1 "a bear"\n../../../escaped 1 "a bird"\n')
    with pytest.raises(RVOSError, match="line 2: video name") as e:
        read_davis_text_annotations(texts / DAVIS_TEXT_FILES[0])
    assert DAVIS_TEXT_FILES[0] in str(e.value)
    # An image set naming a path is refused before anything is written.
    davis = tmp_path / "davis"
    (davis / "JPEGImages" / "480p" / "bear").mkdir(parents=True)
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(davis / "JPEGImages" / "480p" / "bear" / "00000.jpg")
    (davis / "ImageSets" / "2017").mkdir(parents=True)
    (davis / "ImageSets" / "2017" / "val.txt").write_text("bear\n../../escaped\n")
    meta = write_layout(tmp_path / "expr", videos=one_video(video="bear", frames=["00000"]), files={})
    out = tmp_path / "out"
    with pytest.raises(RVOSError, match="video name") as e:
        convert_davis_to_ytvos(davis, meta, out, annotations="")
    assert "val.txt" in str(e.value) and not out.exists()


def test_refcoco_file_name_leaving_the_image_folder_is_refused(tmp_path):
    from rvos.data.refcoco import ReferringImageDataset

    (tmp_path / "images" / "train2014").mkdir(parents=True)
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / "secret.jpg")
    coco = {"images": [{"id": 1, "file_name": "../../secret.jpg", "height": H, "width": W}],
            "annotations": [{"id": 10, "image_id": 1, "category_id": 1, "iscrowd": 0,
                             "bbox": [1, 1, 4, 4], "segmentation": [[1, 1, 5, 1, 5, 5, 1, 5]]}],
            "categories": [{"id": 1, "name": "thing"}]}
    (tmp_path / "refcoco").mkdir()
    (tmp_path / "refcoco" / "instances.json").write_text(json.dumps(coco))
    refs = [{"ref_id": 0, "ann_id": 10, "image_id": 1, "split": "train",
             "sentences": [{"sent": "the thing"}]}]
    (tmp_path / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    with pytest.raises(RVOSError, match="file_name") as e:
        ReferringImageDataset(tmp_path, "refcoco", "train", (16, 16))
    assert "instances.json" in str(e.value)


# ----------------------------------------------------------------------------- evaluate, zip

def test_evaluate_save_masks_with_a_hostile_expression_id_writes_nothing_outside_out(
        tmp_path, capsys, tiny_checkpoint):
    data, out = tmp_path / "data", tmp_path / "out"
    meta = write_layout(data, videos=one_video(exp_id="../../../../../escaped"))
    before = files_under(tmp_path)
    code, _, err = run_cli(["evaluate", "--checkpoint", tiny_checkpoint, "--data", data,
                            "--split", "valid", "--save-masks", "--out", out, "--quiet",
                            "--device", "cpu"], capsys)
    assert code == 2 and str(meta) in err and "expression id" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "escaped").exists()
    assert {p for p in files_under(tmp_path) - before if out not in p.parents and p != out} == set()


def test_mask_writer_refuses_ids_that_leave_the_folder(tmp_path):
    from rvos.metrics.ref_ytvos import write_expression_masks

    masks = np.ones((1, H, W), bool)
    for video, exp_id, frame in (("v", "../../x", "0"), ("../v", "0", "0"), ("v", "0", "../../f")):
        with pytest.raises(RVOSError):
            write_expression_masks(tmp_path / "out" / "Annotations", video, exp_id, [frame], masks,
                                   source="meta_expressions.json")
    assert files_under(tmp_path) == set()


def test_ref_ytvos_submission_with_a_hostile_video_id(tmp_path, capsys):
    """Before: read <pred>/v/0/00000.png outside Annotations and zipped it as ../v/..."""
    pred = tmp_path / "pred"
    outside = pred / "v" / "0"
    outside.mkdir(parents=True)
    (pred / "Annotations").mkdir()
    Image.fromarray(np.zeros((H, W), np.uint8), mode="L").save(outside / "00000.png")
    meta = tmp_path / "meta_expressions.json"
    meta.write_text(json.dumps({"videos": one_video(video="../v", frames=["00000"])}))
    code, _, err = run_cli(["evaluate", "--benchmark", "ref-ytvos", "--pred", pred, "--gt", meta,
                            "--out", tmp_path / "eval"], capsys)
    assert code == 2 and str(meta) in err and "video id" in err
    assert not list(tmp_path.rglob("*.zip"))


@pytest.mark.parametrize("benchmark", ["mevis", "ref-davis"])
def test_mevis_and_ref_davis_refuse_hostile_ids(tmp_path, capsys, benchmark):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir(), pred.mkdir()
    meta = gt / "meta_expressions.json"
    meta.write_text(json.dumps({"videos": one_video(exp_id="../../../x")}))
    (gt / "mask_dict.json").write_text("{}")
    (gt / "v1").mkdir()
    write_label_png(gt / "v1" / "00000.png", np.zeros((H, W), np.uint8))
    code, _, err = run_cli(["evaluate", "--benchmark", benchmark, "--pred", pred, "--gt", gt,
                            "--meta", meta, "--out", tmp_path / "eval"], capsys)
    assert code == 2 and str(meta) in err and "expression id" in err


def test_davis_sequence_list_naming_a_path_is_refused(tmp_path, capsys):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    (gt / "bear").mkdir(parents=True)
    pred.mkdir()
    seqs = tmp_path / "val.txt"
    seqs.write_text("../../etc\n")
    code, _, err = run_cli(["evaluate", "--benchmark", "davis-semi", "--pred", pred, "--gt", gt,
                            "--sequences", seqs, "--out", tmp_path / "eval"], capsys)
    assert code == 2 and str(seqs) in err and "sequence name" in err


# ----------------------------------------------------------------------------- datasets up front

def _train_cfg(root: Path, *extra: str):
    return load_config("baseline_synth",
                       [f"data.root={root}", "data.num_frames=2", "data.input_size=[16,16]",
                        "optim.batch_size=1", *extra])


def test_a_missing_mask_is_found_before_training_starts(tmp_path):
    from rvos.data.build import build_train_dataset

    videos = {f"v{i}": one_video(f"v{i}")[f"v{i}"] for i in range(1, 4)}
    write_layout(tmp_path, "train", videos=videos)
    missing = tmp_path / "train" / "Annotations" / "v3" / "00002.png"
    missing.unlink()
    (tmp_path / "train" / "JPEGImages" / "v2" / "00001.jpg").write_bytes(b"")  # empty file
    with pytest.raises(RVOSError, match="2 of the files") as e:
        build_train_dataset(_train_cfg(tmp_path, "data.train_split=train"))
    assert "v2/00001.jpg: empty file" in str(e.value)
    (tmp_path / "train" / "JPEGImages" / "v2" / "00001.jpg").unlink()
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / "train" / "JPEGImages" / "v2" / "00001.jpg")
    with pytest.raises(RVOSError, match="file not found") as e:
        build_train_dataset(_train_cfg(tmp_path, "data.train_split=train"))
    assert str(missing) in str(e.value)


def test_a_missing_validation_frame_is_found_before_training_starts(tmp_path):
    from rvos.data.build import verify_validation_split

    write_layout(tmp_path, "valid")
    missing = tmp_path / "valid" / "JPEGImages" / "v1" / "00001.jpg"
    missing.unlink()
    with pytest.raises(RVOSError, match="file not found") as e:
        verify_validation_split(_train_cfg(tmp_path, "data.val_split=valid"))
    assert str(missing) in str(e.value)
    verify_validation_split(_train_cfg(tmp_path, "data.val_split=valid", "train.eval_every=0"))


def test_train_cli_stops_at_start_on_a_missing_mask(tmp_path, capsys):
    write_layout(tmp_path, "train", videos={f"v{i}": one_video(f"v{i}")[f"v{i}"] for i in (1, 2)})
    missing = tmp_path / "train" / "Annotations" / "v2" / "00001.png"
    missing.unlink()
    code, _, err = run_cli(["train", "baseline_synth", f"data.root={tmp_path}",
                            "data.train_split=train", "--out", tmp_path / "run"], capsys)
    assert code == 2 and str(missing) in err
    assert not list(tmp_path.rglob("*.safetensors"))


# ----------------------------------------------------------------------------- videos

def _frames(n: int = 24) -> list[np.ndarray]:
    ys, xs = np.mgrid[0:48, 0:64]
    out = []
    for i in range(n):
        f = np.zeros((48, 64, 3), np.uint8)
        f[..., 0] = (xs * 4 + 7 * i) % 256
        f[..., 1] = (ys * 5) % 256
        f[8:24, i:i + 16] = 250
        out.append(f)
    return out


def _write_video(path: Path, fmt: str, options: dict | None = None) -> Path:
    """An H.264 video whose container states its length (MP4 with the index first, or
    Matroska with a duration), as a camera or a download would have it."""
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(path), "w", format=fmt, options=options or {}) as container:
        stream = container.add_stream(codec, rate=Fraction(24))
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for frame in _frames():
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.mark.parametrize("fmt,options", [("mp4", {"movflags": "faststart"}), ("matroska", None)])
def test_a_truncated_video_warns_naming_the_file(tmp_path, fmt, options):
    full = _write_video(tmp_path / f"full.{fmt}", fmt, options)
    with warnings.catch_warnings():
        warnings.simplefilter("error", IncompleteVideoWarning)
        assert len(list(iter_video_frames(full))) == 24          # a complete file: no warning
    cut = tmp_path / f"cut.{fmt}"
    data = full.read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.7)])
    with pytest.warns(IncompleteVideoWarning, match="truncated or damaged") as record:
        decoded = len(list(iter_video_frames(cut)))
    assert 0 < decoded < 24
    message = str(record[0].message)
    assert str(cut) in message and f"decoded {decoded} frames" in message
    # Reading only the start (a window, a preview) is not a truncation.
    with warnings.catch_warnings():
        warnings.simplefilter("error", IncompleteVideoWarning)
        assert len(list(iter_video_frames(cut, stop=2))) == 2


def test_predict_on_a_truncated_video_warns(tmp_path, capsys, tiny_checkpoint):
    full = _write_video(tmp_path / "full.mp4", "mp4", {"movflags": "faststart"})
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(full.read_bytes()[: int(full.stat().st_size * 0.7)])
    assert probe_video(cut).num_frames == 24
    with pytest.warns(IncompleteVideoWarning, match="cut.mp4"):
        code, out, _ = run_cli(["predict", "--checkpoint", tiny_checkpoint, "--video", cut,
                                "--text", "the square", "--out", tmp_path / "o", "--no-gif",
                                "--quiet", "--device", "cpu"], capsys)
    assert code == 0
    frames = json.loads((tmp_path / "o" / "expressions.json").read_text())["frames"]
    assert 0 < frames < 24


def test_an_unreadable_frame_in_a_frame_folder_is_an_error(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (96, 96, 3), np.uint8)).save(folder / f"{i:05d}.jpg")
    broken = folder / "00002.jpg"
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])  # header intact
    assert probe_video(folder).num_frames == 4   # headers only: the damage is found when read
    with pytest.raises(RVOSError, match="cannot read image") as e:
        list(iter_video_frames(folder))
    assert str(broken) in str(e.value)


# ----------------------------------------------------------------------------- sentences

def test_a_long_sentence_is_truncated_with_a_warning_naming_it(text_encoder):
    from rvos.models.text import SentenceTruncatedWarning

    long = "the " + " ".join(["very"] * 40) + " big red ball rolling to the left"
    with warnings.catch_warnings():
        warnings.simplefilter("error", SentenceTruncatedWarning)
        text_encoder(["a short one", "the cat"])                 # short sentences: no warning
    with pytest.warns(SentenceTruncatedWarning, match=r"sentence of \d+ tokens truncated") as record:
        feats = text_encoder([long, "a short one"])
    assert "the very very" in str(record[0].message) and str(text_encoder.max_length) in str(record[0].message)
    assert feats.words.shape[1] == text_encoder.max_length
    with warnings.catch_warnings():
        warnings.simplefilter("error", SentenceTruncatedWarning)
        text_encoder([long])                                     # reported once per sentence
