"""Fault injection on the output folders of every command (issue "Nothing lost, nothing
escapes"): --overwrite only replaces folders rvos made, kill -9 at chosen points of each
command's output write leaves the previous complete output (or nothing that looks complete)
and the next run works, disk full and bad --out paths are one-line errors (exit 2).

A kill -9 is a forked child of the test process that SIGKILLs itself at the chosen call (no
interpreter start-up, no hook in rvos); training, the demo and the quality benchmark run with
fake trainers/pipelines that write the same kind of files, so that only the output handling
is under test (real training is covered by test_integration.py).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from rvos.cli import main
from rvos.config import CONFIG_DIR

MARKER = ".rvos-output"
CONFIG = CONFIG_DIR / "baseline_synth.yaml"


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A real (untrained) tiny baseline checkpoint at 32x32."""
    from rvos.config import load_config
    from rvos.engine.checkpoint import save_checkpoint
    from rvos.models.build import build_model

    cfg = load_config(None, ["model.baseline.dim=32", "model.baseline.heads=2",
                             "model.baseline.fusion_layers=1", "data.input_size=[32,32]"])
    model = build_model(cfg)
    return save_checkpoint(tmp_path_factory.mktemp("ck") / "model", model, cfg, {"step": 0})


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A tiny synthetic benchmark (one 5-frame 32x32 video per evaluation split)."""
    from rvos.data.synthetic import SynthConfig, generate_benchmark

    root = tmp_path_factory.mktemp("data") / "synth"
    generate_benchmark(root, SynthConfig(train_videos=2, valid_videos=1, test_videos=1,
                                         compositional_videos=1, num_frames=5, height=32,
                                         width=32, seed=3), progress=False, workers=1)
    return root


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    from PIL import Image

    folder = tmp_path_factory.mktemp("video") / "frames"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((24, 32, 3), 60 * i, np.uint8)).save(folder / f"{i:05d}.jpg")
    return folder


_PREDICTORS: dict = {}


@pytest.fixture(autouse=True)
def load_each_model_once(monkeypatch):
    """Predictor.from_checkpoint cached (the model is only read, never changed): the
    commands under test load the same tiny checkpoint many times."""
    from rvos.inference import Predictor

    real = Predictor.from_checkpoint.__func__

    def cached(cls, *args, **kwargs):
        key = repr((args, sorted(kwargs.items())))
        if key not in _PREDICTORS:
            _PREDICTORS[key] = real(cls, *args, **kwargs)
        return _PREDICTORS[key]

    monkeypatch.setattr(Predictor, "from_checkpoint", classmethod(cached))


def run(argv, capsys) -> tuple[int, str]:
    """``rvos argv`` in this process: (exit status, stderr)."""
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def made(tmp_path_factory, ckpt, video, data):
    """Outputs made once by rvos predict / evaluate / data synth; tests get copies."""
    root = tmp_path_factory.mktemp("made")
    for argv in (predict_args(ckpt, video, root / "pred", "old sentence"),
                 evaluate_args(ckpt, data, root / "eval"), synth_args(root / "bench", seed=0)):
        assert main([str(a) for a in argv]) == 0
    return root


def copy_of(made: Path, name: str, parent: Path) -> Path:
    """A copy of the output ``name`` of ``made`` in ``parent`` (marker included)."""
    return Path(shutil.copytree(made / name, parent / name, symlinks=True))


def predict_args(ckpt, video, out, text="the red circle"):
    return ["predict", "--checkpoint", ckpt, "--video", video, "--text", text, "--out", out,
            "--quiet", "--no-gif"]


def evaluate_args(ckpt, data, out):
    return ["evaluate", "--checkpoint", ckpt, "--data", data, "--split", "test", "--out", out,
            "--quiet"]


def synth_args(out, seed=0):
    return ["data", "synth", "--out", out, "--videos", "2", "--frames", "5", "--size", "32x32",
            "--seed", seed, "--workers", "1", "--quiet"]


def train_args(data, out):
    return ["train", CONFIG, f"data.root={data}", "train.epochs=1", "--out", out, "--quiet"]


def leftovers(parent: Path) -> list[str]:
    """Hidden staging / moved-aside folders rvos may leave beside its outputs."""
    return sorted(p.name for p in parent.iterdir() if ".partial-" in p.name or ".old-" in p.name)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != MARKER}


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ----------------------------------------------------------------------------- kill -9
def kill_on_call(owner, name: str, n: int = 1):
    """Make ``owner.name`` SIGKILL this process at its ``n``-th call."""
    real = getattr(owner, name)
    calls = [0]

    def wrapper(*args, **kwargs):
        calls[0] += 1
        if calls[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)

    setattr(owner, name, wrapper)


def killed_run(argv, *patches) -> None:
    """Run ``rvos argv`` in a forked child with ``patches`` (callables applied in the child)
    and check that it died of SIGKILL (the chosen point was reached)."""
    pid = os.fork()
    if pid == 0:                                   # the child: never returns into pytest
        code = 98
        try:
            torch.set_num_threads(1)     # no OpenMP pool after fork (it would hang)
            for patch in patches:
                patch()
            code = 100 + main([str(a) for a in argv])
        except BaseException:
            code = 99
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (
        f"the child was not killed at the chosen point (exit {os.waitstatus_to_exitcode(status)})")


def at(owner, name, n=1):
    return lambda: kill_on_call(owner, name, n)


# ----------------------------------------------------------------------------- --overwrite
def test_overwrite_never_removes_the_working_directory(tmp_path, monkeypatch, capsys, ckpt, video, data):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work)
    for argv in (predict_args(ckpt, video, "."), train_args(data, "."), synth_args("."),
                 evaluate_args(ckpt, data, ".")):
        code, err = run([*argv, "--overwrite"], capsys)
        assert code == 2 and err.count("\n") == 1, err
        assert (work / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in work.iterdir()) == ["notes.txt"]


def test_overwrite_never_removes_a_parent_of_the_working_directory(tmp_path, monkeypatch, capsys,
                                                                  ckpt, video, data):
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / MARKER).write_text("{}")             # even one that looks like ours
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    for argv in (predict_args(ckpt, video, ".."), train_args(data, "..")):
        code, err = run([*argv, "--overwrite"], capsys)
        assert code == 2 and "working directory" in err, err
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("command", ["predict", "evaluate", "synth", "train", "bench", "demo"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_an_out_that_is_a_file_is_a_one_line_error_and_kept(tmp_path, capsys, ckpt, video, data,
                                                          command, overwrite):
    target = tmp_path / "results.txt"
    target.write_text("mine")
    argv = {"predict": predict_args(ckpt, video, target),
            "evaluate": evaluate_args(ckpt, data, target), "synth": synth_args(target),
            "train": train_args(data, target),
            "bench": ["bench", "--what", "speed", "--out", target],
            "demo": ["demo", "--out", target, "--quiet"]}[command]
    code, err = run([*argv, *(["--overwrite"] if overwrite else [])], capsys)
    assert code == 2 and str(target) in err and err.count("\n") == 1, err
    assert target.read_text() == "mine"


def test_overwrite_refuses_a_folder_rvos_did_not_make(tmp_path, capsys, ckpt, video):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"precious")
    for argv in (predict_args(ckpt, video, out), synth_args(out)):
        code, err = run([*argv, "--overwrite"], capsys)
        assert code == 2 and str(out) in err and err.count("\n") == 1, err
    assert sorted(p.name for p in out.iterdir()) == ["holiday.jpg"]


def test_overwrite_does_not_follow_a_symbolic_link(tmp_path, capsys, ckpt, video, made):
    first = copy_of(made, "pred", tmp_path)
    link = tmp_path / "link"
    link.symlink_to(first)
    before = snapshot(first)
    code, err = run([*predict_args(ckpt, video, link, "another"), "--overwrite"], capsys)
    assert code == 2 and "link" in err
    assert link.is_symlink() and snapshot(first) == before


def test_overwrite_replaces_a_folder_rvos_made(tmp_path, capsys, ckpt, video, made):
    out = copy_of(made, "pred", tmp_path)
    assert (out / MARKER).is_file()
    code, err = run(predict_args(ckpt, video, out, "a blue square"), capsys)
    assert code == 2 and "already holds results" in err
    assert run([*predict_args(ckpt, video, out, "a blue square"), "--overwrite"], capsys)[0] == 0
    assert json.loads((out / "expressions.json").read_text())["expressions"]["0"]["text"] == "a blue square"
    assert leftovers(tmp_path) == []


def test_overwrite_replaces_only_an_output_of_the_same_command(tmp_path, capsys, ckpt, video, made):
    run_dir = copy_of(made, "eval", tmp_path)
    before = snapshot(run_dir)
    code, err = run([*predict_args(ckpt, video, run_dir), "--overwrite"], capsys)
    assert code == 2 and "rvos evaluate" in err, err
    assert snapshot(run_dir) == before


def test_overwrite_refuses_an_output_folder_holding_an_input(tmp_path, capsys, ckpt, data, made):
    out = copy_of(made, "eval", tmp_path)
    inside = Path(shutil.copytree(ckpt.parent, out / "ck")) / ckpt.name
    before = snapshot(out)
    code, err = run([*evaluate_args(inside, data, out), "--overwrite"], capsys)
    assert code == 2 and "--checkpoint" in err, err
    assert snapshot(out) == before


def test_evaluate_no_longer_replaces_results_silently(tmp_path, capsys, ckpt, data, made):
    out = copy_of(made, "eval", tmp_path)
    first = snapshot(out)
    code, err = run([*evaluate_args(ckpt, data, out), "--save-masks"], capsys)
    assert code == 2 and "already holds results" in err
    assert snapshot(out) == first
    assert run([*evaluate_args(ckpt, data, out), "--save-masks", "--overwrite"], capsys)[0] == 0
    assert list((out / "predictions").rglob("*.png")) and leftovers(tmp_path) == []


def kill_while_moving_in():
    """SIGKILL at the first os.replace after an os.unlink: staged results are being moved in
    (the old "complete" file is removed first)."""
    real_unlink, real_replace = os.unlink, os.replace
    unlinked = []

    def unlink(*args, **kwargs):
        unlinked.append(args)
        return real_unlink(*args, **kwargs)

    def replace(*args, **kwargs):
        if unlinked:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(*args, **kwargs)

    os.unlink, os.replace = unlink, replace


def test_evaluate_benchmark_results_share_a_folder_and_are_replaced_whole(tmp_path, capsys):
    from rvos.data.palette import write_label_png

    meta = {"videos": {"v": {"frames": ["00000"], "expressions": {"0": {"exp": "a"}}}}}
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    write_label_png(tmp_path / "pred" / "Annotations" / "v" / "0" / "00000.png", np.ones((4, 4), np.uint8))
    for seq in ("s1", "s2"):
        for t in range(3):
            write_label_png(tmp_path / "gt" / seq / f"{t:05d}.png", np.eye(6, dtype=np.uint8))
            write_label_png(tmp_path / "dpred" / seq / f"{t:05d}.png", np.eye(6, dtype=np.uint8))
    out = tmp_path / "scores"
    ytvos = ["evaluate", "--benchmark", "ref-ytvos", "--pred", tmp_path / "pred", "--gt",
             tmp_path / "meta.json", "--out", out]
    davis = ["evaluate", "--benchmark", "davis-semi", "--pred", tmp_path / "dpred", "--gt",
             tmp_path / "gt", "--out", out]
    assert run(ytvos, capsys)[0] == 0 and run(davis, capsys)[0] == 0    # one folder, two benchmarks
    assert {"ref-ytvos.json", "submission.zip", "davis-semi.json", MARKER} <= {p.name for p in out.iterdir()}
    first = snapshot(out)
    code, err = run(ytvos, capsys)
    assert code == 2 and "ref-ytvos.json" in err and snapshot(out) == first
    killed_run([*ytvos, "--overwrite"], kill_while_moving_in)
    assert (out / "davis-semi.json").read_bytes() == first["davis-semi.json"]
    assert not (out / "ref-ytvos.json").exists()          # nothing that looks complete
    assert run([*ytvos, "--overwrite"], capsys)[0] == 0 and leftovers(out) == []
    assert (out / "ref-ytvos.json").is_file() and (out / "davis-semi.json").is_file()
    mine = tmp_path / "mine.zip"
    mine.write_bytes(b"my own submission")
    code, err = run([*ytvos[:-1], tmp_path / "other", "--zip", mine], capsys)
    assert code == 2 and str(mine) in err and mine.read_bytes() == b"my own submission"


FAKE_SPEED = {"run": 0}


def _fake_speed(device="auto"):
    return {"device": device, "inference_360x640": {}, "training_128x128": {},
            "run": FAKE_SPEED["run"]}


def test_bench_speed_results_are_replaced_only_when_asked_and_whole(tmp_path, capsys, monkeypatch):
    import rvos.bench

    monkeypatch.setattr(rvos.bench, "speed_benchmark", _fake_speed)
    out = tmp_path / "results"
    argv = ["bench", "--what", "speed", "--out", out, "--quiet"]
    assert run(argv, capsys)[0] == 0
    old = (out / "baseline_speed.json").read_text()
    code, err = run(argv, capsys)
    assert code == 2 and "baseline_speed.json" in err and "--overwrite" in err
    monkeypatch.setitem(FAKE_SPEED, "run", 1)
    killed_run([*argv, "--overwrite"], at(os, "replace", 1))       # the rename of the new file
    assert (out / "baseline_speed.json").read_text() == old
    stale = out / f".baseline_speed.json.partial-{dead_pid()}"
    stale.write_text("{")
    assert run([*argv, "--overwrite"], capsys)[0] == 0
    assert json.loads((out / "baseline_speed.json").read_text())["run"] == 1
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "baseline_speed.json"]


def test_bench_does_not_remove_earlier_quality_results_unasked(tmp_path, capsys, monkeypatch):
    out = tmp_path / "results"
    (out / "quality").mkdir(parents=True)
    (out / "quality" / "run.txt").write_text("hours of training")
    monkeypatch.setattr("rvos.demo.generate_demo_data", _fake_demo_data)
    monkeypatch.setattr("rvos.demo.train_evaluate_predict", _fake_train_evaluate_predict)
    for extra in ([], ["--overwrite"]):             # not ours: not even with --overwrite
        code, err = run(bench_args(out) + extra, capsys)
        assert code == 2 and err.count("\n") == 1, err
        assert (out / "quality" / "run.txt").read_text() == "hours of training"


def test_synth_leaves_siblings_it_did_not_make(tmp_path, capsys, made):
    out = copy_of(made, "bench", tmp_path)
    for name in ("bench.partial", "bench.old"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "keep.txt").write_text("mine")
    assert run([*synth_args(out, seed=1), "--overwrite"], capsys)[0] == 0
    for name in ("bench.partial", "bench.old"):
        assert (tmp_path / name / "keep.txt").read_text() == "mine"


def test_leftovers_of_dead_writers_are_cleaned_only_when_ours(tmp_path, capsys, ckpt, video):
    out = tmp_path / "pred"
    dead = dead_pid()
    ours, foreign = tmp_path / f".pred.partial-{dead}", tmp_path / f".pred.old-{dead}"
    live = tmp_path / ".pred.partial-1"                  # a live process's (pid 1 runs)
    for folder in (ours, foreign, live):
        folder.mkdir()
        (folder / "masks").mkdir()
    for folder in (ours, live):
        (folder / MARKER).write_text("{}")
    assert run(predict_args(ckpt, video, out), capsys)[0] == 0
    assert not ours.exists()                               # a dead writer's: removed
    assert (foreign / "masks").is_dir() and (live / "masks").is_dir()    # kept
    assert (out / "expressions.json").is_file()


def test_a_read_only_parent_is_a_one_line_error(tmp_path, capsys, monkeypatch, ckpt, video):
    parent = tmp_path / "ro"
    parent.mkdir()
    if os.geteuid() == 0:                    # root writes anyway: refuse in os.mkdir instead
        real = os.mkdir

        def refusing(path, *args, **kwargs):
            if Path(path).parent == parent:
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real(path, *args, **kwargs)

        monkeypatch.setattr(os, "mkdir", refusing)
    else:
        parent.chmod(0o555)
    try:
        code, err = run(predict_args(ckpt, video, parent / "out"), capsys)
    finally:
        parent.chmod(0o755)
    assert code == 2 and str(parent) in err and err.count("\n") == 1, err
    assert list(parent.iterdir()) == []


# ----------------------------------------------------------------------------- kill -9, staged
@pytest.mark.parametrize("point", ["writing", "moving the old aside", "renaming the new in"])
def test_predict_killed_keeps_the_old_output(tmp_path, capsys, ckpt, video, made, point):
    import rvos.predict

    out = copy_of(made, "pred", tmp_path)
    old = snapshot(out)
    patch = {"writing": at(rvos.predict, "write_label_png", 2),
             "moving the old aside": at(os, "rename", 1),
             "renaming the new in": at(os, "rename", 2)}[point]
    killed_run([*predict_args(ckpt, video, out, "new sentence"), "--overwrite"], patch)
    if out.exists():
        assert snapshot(out) == old
    code, err = run(predict_args(ckpt, video, out, "new sentence"), capsys)
    assert code == 2 and "already holds results" in err      # the old output is back, whole
    assert snapshot(out) == old
    assert run([*predict_args(ckpt, video, out, "new sentence"), "--overwrite"], capsys)[0] == 0
    assert json.loads((out / "expressions.json").read_text())["expressions"]["0"]["text"] == "new sentence"
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("point", ["masks", "metrics", "renaming the new in"])
def test_evaluate_killed_keeps_the_old_results(tmp_path, capsys, ckpt, data, made, point):
    import rvos.engine.evaluator as evaluator

    out = copy_of(made, "eval", tmp_path)
    old = snapshot(out)
    patch = {"masks": at(evaluator, "write_expression_masks", 1),
             "metrics": at(evaluator, "write_file_atomic", 3),
             "renaming the new in": at(os, "rename", 2)}[point]
    killed_run([*evaluate_args(ckpt, data, out), "--save-masks", "--overwrite"], patch)
    assert not out.exists() or snapshot(out) == old    # never new masks beside old metrics
    assert run([*evaluate_args(ckpt, data, out), "--save-masks"], capsys)[0] == 2
    assert snapshot(out) == old
    assert run([*evaluate_args(ckpt, data, out), "--save-masks", "--overwrite"], capsys)[0] == 0
    assert list((out / "predictions").rglob("*.png")) and leftovers(tmp_path) == []


@pytest.mark.parametrize("point", ["writing", "renaming the new in"])
def test_synth_killed_keeps_the_old_benchmark(tmp_path, capsys, made, point):
    import rvos.data.synthetic.writer as writer

    out = copy_of(made, "bench", tmp_path)
    old = snapshot(out)
    patch = {"writing": at(writer, "_write_json", 2), "renaming the new in": at(os, "rename", 2)}[point]
    killed_run([*synth_args(out, seed=1), "--overwrite"], patch)
    assert not out.exists() or snapshot(out) == old
    assert run(synth_args(out, seed=1), capsys)[0] == 2
    assert snapshot(out) == old
    assert run([*synth_args(out, seed=1), "--overwrite"], capsys)[0] == 0
    assert snapshot(out) != old and leftovers(tmp_path) == []


# ----------------------------------------------------------------------------- disk full
def enospc_on_call(monkeypatch, owner, name: str, n: int) -> None:
    real = getattr(owner, name)
    calls = [0]

    def wrapper(*args, **kwargs):
        calls[0] += 1
        if calls[0] == n:
            raise OSError(errno.ENOSPC, "No space left on device", str(args[0]) if args else None)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)


def test_disk_full_while_predicting_keeps_the_old_output(tmp_path, capsys, monkeypatch, ckpt,
                                                        video, made):
    import rvos.predict

    out = copy_of(made, "pred", tmp_path)
    old = snapshot(out)
    enospc_on_call(monkeypatch, rvos.predict, "write_label_png", 2)
    code, err = run([*predict_args(ckpt, video, out, "new sentence"), "--overwrite"], capsys)
    assert code == 2 and "no space left" in err and err.count("\n") == 1, err
    assert snapshot(out) == old and leftovers(tmp_path) == []


def test_disk_full_while_evaluating_keeps_the_old_results(tmp_path, capsys, monkeypatch, ckpt,
                                                          data, made):
    import rvos.engine.evaluator as evaluator

    out = copy_of(made, "eval", tmp_path)
    old = snapshot(out)
    enospc_on_call(monkeypatch, evaluator, "write_file_atomic", 3)
    code, err = run([*evaluate_args(ckpt, data, out), "--overwrite"], capsys)
    assert code == 2 and "no space left" in err and err.count("\n") == 1, err
    assert snapshot(out) == old and leftovers(tmp_path) == []


def test_disk_full_while_generating_keeps_the_old_benchmark(tmp_path, capsys, monkeypatch, made):
    import rvos.data.synthetic.writer as writer

    out = copy_of(made, "bench", tmp_path)
    old = snapshot(out)
    enospc_on_call(monkeypatch, writer, "_write_json", 2)
    code, err = run([*synth_args(out, seed=1), "--overwrite"], capsys)
    assert code == 2 and "no space left" in err and err.count("\n") == 1, err
    assert snapshot(out) == old and leftovers(tmp_path) == []


# ----------------------------------------------------------------------------- train (in place)
KILL_AT: dict[str, str] = {}        # fake trainer's kill point, set in a forked child


def _point(name: str) -> None:
    if KILL_AT.get("point") == name:
        os.kill(os.getpid(), signal.SIGKILL)
    if KILL_AT.get("enospc") == name:
        raise OSError(errno.ENOSPC, "No space left on device", name)


class FakeTrainer:
    """Writes what a Trainer writes (config, metrics, a first and a last checkpoint) with
    kill points between; no model."""

    def __init__(self, cfg, run_dir, progress=True, pretrained=True):
        self.run_dir, self.cfg = Path(run_dir), cfg
        self.state = SimpleNamespace(global_step=0, epoch=0, micro_step=0, best_jf=0.0)

    def resume(self, path=None):
        last = self.run_dir / "checkpoints" / "last.safetensors"
        self.state.global_step = int(last.read_text().split()[-1])

    def fit(self, stop_after_steps=0):
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text("new run")
        _point("before the first checkpoint")
        (self.run_dir / "checkpoints").mkdir(exist_ok=True)
        for step in (1, 2):
            (self.run_dir / "checkpoints" / "last.safetensors").write_text(f"new run {step}")
            self.state.global_step = step
            _point(f"after checkpoint {step}")
        self.state.epoch = self.cfg.train.epochs
        return self.state


def _fake_trainer(monkeypatch=None):
    import rvos.engine.trainer

    if monkeypatch is None:
        rvos.engine.trainer.Trainer = FakeTrainer
    else:
        monkeypatch.setattr(rvos.engine.trainer, "Trainer", FakeTrainer)


@pytest.fixture
def old_run(tmp_path, capsys, monkeypatch, data) -> Path:
    """A complete run folder made by rvos train (with the fake trainer)."""
    _fake_trainer(monkeypatch)
    out = tmp_path / "run"
    assert run(train_args(data, out), capsys)[0] == 0
    (out / "checkpoints" / "last.safetensors").write_text("old run 7")
    return out


def test_train_overwrite_killed_before_the_first_checkpoint_brings_the_old_run_back(
        old_run, capsys, data):
    old = snapshot(old_run)

    def kill_point():
        KILL_AT["point"] = "before the first checkpoint"

    killed_run([*train_args(data, old_run), "--overwrite"], _fake_trainer, kill_point)
    code, err = run(train_args(data, old_run), capsys)           # cleans up, then refuses
    assert code == 2 and "already holds results" in err
    assert snapshot(old_run) == old and leftovers(old_run.parent) == []


def test_train_overwrite_killed_after_a_checkpoint_keeps_the_new_resumable_run(old_run, capsys, data):
    def kill_point():
        KILL_AT["point"] = "after checkpoint 1"

    killed_run([*train_args(data, old_run), "--overwrite"], _fake_trainer, kill_point)
    code, err = run(train_args(data, old_run), capsys)
    assert code == 2 and "interrupted" in err and "unfinished" in err, err
    assert (old_run / "checkpoints" / "last.safetensors").read_text() == "new run 1"
    assert leftovers(old_run.parent) == []                       # the old run is gone now
    assert run([*train_args(data, old_run), "--resume"], capsys)[0] == 0
    assert json.loads((old_run / MARKER).read_text())["state"] == "done"


def test_train_disk_full_before_the_first_checkpoint_keeps_the_old_run(old_run, capsys,
                                                                      monkeypatch, data):
    old = snapshot(old_run)
    monkeypatch.setitem(KILL_AT, "enospc", "before the first checkpoint")
    code, err = run([*train_args(data, old_run), "--overwrite"], capsys)
    assert code == 2 and "no space left" in err and err.count("\n") == 1, err
    assert snapshot(old_run) == old and leftovers(old_run.parent) == []


# ----------------------------------------------------------------------------- demo, bench
def _fake_demo_data(root, progress=True, train_videos=0):
    root.mkdir(parents=True)
    (root / "synth_info.json").write_text("{}")
    _point("data written")
    return 0.0


def _fake_train_evaluate_predict(out, data_root, config_path, budget_s, progress=True, overrides=None,
                                 eval_samples=0, weights=None):
    (out / "run").mkdir(parents=True)
    (out / "run" / "config.yaml").write_text("new")
    _point("trained")
    split = {"split": "test", "overall": {"J": 0.5, "F": 0.5, "JF": 0.5, "count": 1,
                                          "object_accuracy": 1.0},
             "by_type": {"spatial": {"J": 0.5, "F": 0.5, "JF": 0.5, "count": 1,
                                     "object_accuracy": 1.0}}}
    return {"model": "fake", "config": str(config_path), "steps": 1, "epochs_done": 1,
            "checkpoint": str(out / "run" / "last"), "training_stages": {},
            "timings": {"train_s": 0.0, "eval_s": 0.0, "predict_s": 0.0},
            "metrics": {"json": "", "csv": ""}, "results": {"test": split}}


def _fake_pipeline(monkeypatch=None):
    import rvos.demo

    for name, fake in (("generate_demo_data", _fake_demo_data),
                       ("train_evaluate_predict", _fake_train_evaluate_predict)):
        if monkeypatch is None:
            setattr(rvos.demo, name, fake)
        else:
            monkeypatch.setattr(rvos.demo, name, fake)


def bench_args(out):
    return ["bench", "--what", "quality", "--config", CONFIG, "--seeds", "0", "1", "--budget-s",
            "1", "--out", out, "--quiet"]


@pytest.mark.parametrize("point", ["data written", "trained"])
def test_demo_killed_brings_the_old_demo_back(tmp_path, capsys, monkeypatch, point):
    _fake_pipeline(monkeypatch)
    out = tmp_path / "demo"
    assert run(["demo", "--out", out, "--quiet"], capsys)[0] == 0
    old = snapshot(out)
    assert "demo_summary.json" in old

    def kill_point():
        KILL_AT["point"] = point

    killed_run(["demo", "--out", out, "--quiet", "--overwrite"], _fake_pipeline, kill_point)
    assert not out.exists() or "demo_summary.json" not in snapshot(out) or snapshot(out) == old
    code, err = run(["demo", "--out", out, "--quiet"], capsys)
    assert code == 2 and "already holds results" in err
    assert snapshot(out) == old and leftovers(tmp_path) == []
    assert run(["demo", "--out", out, "--quiet", "--overwrite"], capsys)[0] == 0


def test_bench_quality_killed_before_its_first_run_brings_the_old_results_back(tmp_path, capsys,
                                                                               monkeypatch):
    _fake_pipeline(monkeypatch)
    out = tmp_path / "results"
    assert run(bench_args(out), capsys)[0] == 0
    old = snapshot(out)
    assert {"quality.json", "quality.png"} <= set(old)

    def kill_point():
        KILL_AT["point"] = "trained"

    killed_run([*bench_args(out), "--overwrite"], _fake_pipeline, kill_point)
    code, err = run(bench_args(out), capsys)
    assert code == 2 and "--overwrite" in err
    assert snapshot(out) == old and leftovers(out) == []
    assert run([*bench_args(out), "--overwrite"], capsys)[0] == 0
    assert json.loads((out / "quality.json").read_text())["complete"] is True
