"""``rvos evaluate --benchmark`` pieces: argument wiring, written files, clear errors."""

import argparse
import csv
import json

import numpy as np
import pytest

from rvos.data.palette import write_label_png
from rvos.errors import RVOSError
from rvos.metrics.cli import add_benchmark_arguments, main, run_benchmark
from rvos.metrics.davis_protocols import evaluate_davis


def _parser_like_rvos_evaluate():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="eval")  # rvos evaluate already owns --out
    add_benchmark_arguments(parser)
    return parser


@pytest.fixture()
def davis_folders(tmp_path):
    rng = np.random.default_rng(0)
    for seq in ("s1", "s2"):
        gt = np.zeros((5, 12, 14), np.uint8)
        gt[:, 2:7, 2:8] = 1
        gt[:, 8:11, 9:13] = 2
        pred = gt.copy()
        pred[rng.random(pred.shape) < 0.1] = 0
        for t in range(5):
            write_label_png(tmp_path / "gt" / seq / f"{t:05d}.png", gt[t])
            write_label_png(tmp_path / "pred" / seq / f"{t:05d}.png", pred[t])
    return tmp_path


def test_arguments_coexist_with_an_existing_out_option():
    args = _parser_like_rvos_evaluate().parse_args(
        ["--benchmark", "davis-semi", "--pred", "p", "--gt", "g", "--out", "o"])
    assert (args.benchmark, args.pred, args.gt, args.out, args.bound_th) == ("davis-semi", "p", "g", "o", 0.008)
    standalone = argparse.ArgumentParser()
    add_benchmark_arguments(standalone)
    assert standalone.parse_args([]).out == "eval"


def test_davis_run_writes_unrounded_json_and_per_object_csv(davis_folders, capsys):
    root = davis_folders
    args = _parser_like_rvos_evaluate().parse_args(
        ["--benchmark", "davis-semi", "--pred", str(root / "pred"), "--gt", str(root / "gt"),
         "--out", str(root / "out")])
    assert run_benchmark(args) == 0
    report = json.loads((root / "out" / "davis-semi.json").read_text())
    expected = evaluate_davis(root / "gt", root / "pred", "semi-supervised").summary()
    assert report["global"] == expected  # exact floats survive the JSON round trip
    assert 0 < report["global"]["J&F-Mean"] < 1
    with open(root / "out" / "davis-semi_per_object.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["sequence"], r["object_id"]) for r in rows] == [("s1", "1"), ("s1", "2"), ("s2", "1"), ("s2", "2")]
    assert "J&F-Mean" in capsys.readouterr().out


def test_missing_inputs_are_clear_errors(davis_folders, capsys):
    root = davis_folders
    args = _parser_like_rvos_evaluate().parse_args(["--benchmark", "mevis", "--pred", str(root / "pred")])
    with pytest.raises(RVOSError, match="needs --gt"):
        run_benchmark(args)
    (root / "pred" / "s2" / "00002.png").unlink()
    code = main(["--benchmark", "davis-unsup", "--pred", str(root / "pred"), "--gt", str(root / "gt"),
                 "--out", str(root / "out")])
    assert code == 2
    assert "s2/00002.png" in capsys.readouterr().out


def test_ref_ytvos_refusal_lists_problems(tmp_path):
    meta = {"videos": {"v": {"frames": ["00000", "00005"], "expressions": {"0": {"exp": "a"}}}}}
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    write_label_png(tmp_path / "pred" / "Annotations" / "v" / "0" / "00000.png", np.zeros((4, 4), np.uint8))
    args = _parser_like_rvos_evaluate().parse_args(
        ["--benchmark", "ref-ytvos", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "meta.json"),
         "--out", str(tmp_path / "out")])
    with pytest.raises(RVOSError, match=r"v/0/00005\.png: frame missing"):
        run_benchmark(args)
    assert not (tmp_path / "out" / "submission.zip").exists()
    write_label_png(tmp_path / "pred" / "Annotations" / "v" / "0" / "00005.png", np.ones((4, 4), np.uint8))
    assert run_benchmark(args) == 0
    assert (tmp_path / "out" / "submission.zip").is_file()
