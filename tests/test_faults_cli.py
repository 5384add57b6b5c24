"""Careless and hostile use of the command line: out-of-range settings and arguments, OS
failures, and training runs stopped by SIGINT/SIGTERM.

Every bad value ends in one line naming the key or the option with exit status 2 (nothing
written); an OS failure ends in one line naming the path, exit status 2, no traceback; a
training run stopped by a signal is checkpointed, exits 130 (SIGINT) or 143 (SIGTERM),
says how to resume, and resumes; a second signal stops it at once.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
import typing
from pathlib import Path

import pytest

from rvos.cli import main
from rvos.config import RULES, Config, config_errors
from rvos.errors import RVOSError

REPO = Path(__file__).resolve().parents[1]


def run_cli(args, capsys):
    """(exit status, stdout, stderr) of ``rvos ARGS`` in this process; argparse's own
    refusals (SystemExit) count as exit statuses too."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:
        code = e.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    """A tiny synthetic benchmark: 2 training videos of 5 frames, 32 x 32."""
    from rvos.data.synthetic import SynthConfig, generate_benchmark

    root = tmp_path_factory.mktemp("synth") / "data"
    generate_benchmark(root, SynthConfig(train_videos=2, valid_videos=1, test_videos=1,
                                         compositional_videos=1, num_frames=5, height=32,
                                         width=32, seed=3), progress=False, workers=1)
    return root


def tiny_config(path: Path, root: Path, **train) -> Path:
    """A baseline config that takes well under a second per step on a CPU."""
    extra = "".join(f"  {k}: {v}\n" for k, v in train.items())
    path.write_text(textwrap.dedent(f"""\
        data: {{root: {root}, num_frames: 2, input_size: [32, 32], max_frame_stride: 1}}
        model:
          kind: baseline
          baseline: {{backbone: resnet18, dim: 32, heads: 2, fusion_layers: 1, temporal_layers: 1}}
        optim: {{batch_size: 1, accumulate_steps: 1, amp: false}}
        train:
          device: cpu
          eval_every: 0
          log_every: 1
        """) + extra)
    return path


# ----------------------------------------------------------------------------- config ranges
BAD_OVERRIDES = [
    ("data.input_size=[0,0]", "data.input_size: must be two positive integers, got [0, 0]"),
    ("optim.batch_size=0", "optim.batch_size: must be >= 1"),
    ("data.num_frames=0", "data.num_frames: must be >= 1"),
    ("optim.lr=-1", "optim.lr: must be a finite number > 0"),
    ("optim.lr=.nan", "optim.lr: must be a finite number > 0, got nan"),
    ("optim.lr=inf", "optim.lr: must be a finite number > 0, got inf"),
    ("train.epochs=-3", "train.epochs: must be >= 1, got -3"),
    ("train.epochs=0", "train.epochs: must be >= 1, got 0"),
    ("optim.accumulate_steps=0", "optim.accumulate_steps: must be >= 1"),
    ("optim.clip_grad_norm=-1", "optim.clip_grad_norm: must be a finite number >= 0"),
    ("optim.weight_decay=nan", "optim.weight_decay: must be a finite number >= 0"),
    ("optim.min_lr=1", "optim.min_lr: must not exceed optim.lr"),
    ("train.time_budget_s=-5", "train.time_budget_s: must be a finite number >= 0"),
    ("train.seed=-1", "train.seed: must lie in [0, 4294967295]"),
    ("train.device=gpu", "train.device: must be auto, cpu, cuda or cuda:N"),
    ("eval.window=0", "eval.window: must be >= 1"),
    ("eval.threshold=nan", "eval.threshold: must lie in (0, 1), got nan"),
    ("eval.threshold=1", "eval.threshold: must lie in (0, 1)"),
    ("data.num_workers=-1", "data.num_workers: must be >= 0"),
    ("data.hflip_prob=1.5", "data.hflip_prob: must lie in [0, 1]"),
    ("loss.baseline.dice=-0.5", "loss.baseline.dice: must be a finite number >= 0"),
    ("model.kind=unet", "model.kind: must be one of baseline, query, grounding"),
    ("model.baseline.heads=3", "model.baseline.heads: must divide model.baseline.dim (32)"),
    ("model.query.num_queries=0", "model.query.num_queries: must be >= 1"),
    ("model.query.dropout=1", "model.query.dropout: must lie in [0, 1)"),
    ("model.grounding.center_threshold=0", "model.grounding.center_threshold: must lie in (0, 1)"),
    ("model.grounding.nms_kernel=4", "model.grounding.nms_kernel: must be odd"),
    ("train.grounding.seg_steps=0", "train.grounding.seg_steps: must be >= 1"),
    ("train.grounding.scorer_lr=0", "train.grounding.scorer_lr: must be a finite number > 0"),
    ("train.grounding.seg_budget_share=1", "train.grounding.seg_budget_share: must lie in (0, 1)"),
]


@pytest.mark.parametrize("override, message", BAD_OVERRIDES, ids=[o for o, _ in BAD_OVERRIDES])
def test_an_out_of_range_setting_is_one_line_naming_the_key(override, message, synth, tmp_path,
                                                             capsys):
    config = tiny_config(tmp_path / "tiny.yaml", synth, epochs=1)
    code, _, err = run_cli(["train", config, override, "--out", tmp_path / "run", "--quiet"], capsys)
    assert code == 2, err
    assert f"rvos train: error: {config}: invalid config: {message}" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "run").exists()             # refused before anything is written


def _leaves(cls: type, prefix: str = ""):
    """(dotted key, annotation) of every leaf field of a config dataclass."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key, typ = f"{prefix}{f.name}", hints[f.name]
        if dataclasses.is_dataclass(typ):
            yield from _leaves(typ, key + ".")
        else:
            yield key, typ


def test_every_number_of_the_schema_has_a_range():
    numbers = [key for key, typ in _leaves(Config)
               if typ in (int, float) or typing.get_origin(typ) is tuple]
    missing = [key for key in numbers if key not in RULES]
    assert not missing, f"config numbers without a range rule: {missing}"
    assert set(RULES) <= {key for key, _ in _leaves(Config)}   # no rule for a gone key
    assert config_errors(Config()) == []


# ----------------------------------------------------------------------------- arguments
BAD_ARGUMENTS = [
    (["predict", "--threshold", "nan"], "--threshold: must lie in (0, 1), got 'nan'"),
    (["predict", "--threshold", "1.5"], "--threshold: must lie in (0, 1)"),
    (["predict", "--threshold", "0"], "--threshold: must lie in (0, 1)"),
    (["predict", "--window", "-3"], "--window: must be >= 1"),
    (["predict", "--window", "0"], "--window: must be >= 1"),
    (["predict", "--device", "gpu0"], "--device: must be auto, cpu, cuda or cuda:N"),
    (["evaluate", "--threshold", "nan"], "--threshold: must lie in (0, 1), got 'nan'"),
    (["evaluate", "--max-samples", "-1"], "--max-samples: must be >= 0"),
    (["evaluate", "--window", "0"], "--window: must be >= 1"),
    (["evaluate", "--benchmark", "davis-semi", "--bound-th", "-1"], "--bound-th: must be a positive number"),
    (["data", "synth", "--out", "s", "--workers", "0"], "--workers: must be >= 1"),
    (["data", "synth", "--out", "s", "--videos", "0"], "--videos: must be >= 1"),
    (["data", "synth", "--out", "s", "--frames", "0"], "--frames: must be >= 1"),
    (["data", "synth", "--out", "s", "--size", "0x0"], "--size: height and width must be positive"),
    (["data", "synth", "--out", "s", "--seed", "-1"], "--seed: must be >= 0"),
    (["bench", "--budget-s", "-5"], "--budget-s: must be a positive number of seconds"),
    (["bench", "--budget-s", "inf"], "--budget-s: must be a finite number"),
    (["bench", "--seeds"], "--seeds: expected at least one argument"),
    (["bench", "--seeds", "-1"], "--seeds: must be >= 0"),
    (["demo", "--budget-s", "nan"], "--budget-s: must be a finite number"),
    (["demo", "--budget-s", "0"], "--budget-s: must be a positive number of seconds"),
    (["train", "c.yaml", "--stop-after-steps", "-1"], "--stop-after-steps: must be >= 0"),
]


@pytest.mark.parametrize("args, message", BAD_ARGUMENTS, ids=[" ".join(a) for a, _ in BAD_ARGUMENTS])
def test_an_out_of_range_argument_exits_2_naming_it(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    required = {"predict": ["--checkpoint", "c", "--video", "v", "--text", "t", "--out", "o"],
                "evaluate": ["--checkpoint", "c"]}.get(args[0], [])
    code, _, err = run_cli([*args, *required], capsys)
    assert code == 2
    assert f"error: argument {message}" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []              # nothing written


# ----------------------------------------------------------------------------- OS errors
@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, synth) -> Path:
    """An untrained tiny baseline checkpoint whose data.root is ``synth``."""
    from rvos.config import load_config
    from rvos.engine.checkpoint import save_checkpoint
    from rvos.models.build import build_model

    cfg = load_config(None, ["model.baseline.dim=32", "model.baseline.heads=2",
                             "data.input_size=[32,32]", f"data.root={synth}"])
    model = build_model(cfg)
    return save_checkpoint(tmp_path_factory.mktemp("ck") / "model", model, cfg, {"step": 0})


@pytest.mark.parametrize("command", ["data synth", "evaluate"])
def test_an_out_that_is_a_file_is_one_line(command, tmp_path, capsys, request):
    out = tmp_path / "notes.txt"
    out.write_text("my notes\n")
    if command == "evaluate":
        checkpoint = request.getfixturevalue("tiny_checkpoint")
        args = ["evaluate", "--checkpoint", checkpoint, "--max-samples", "1", "--device", "cpu"]
    else:
        args = ["data", "synth", "--videos", "1", "--frames", "5", "--size", "32x32",
                "--workers", "1"]
    code, _, err = run_cli([*args, "--out", out, "--quiet"], capsys)
    assert code == 2 and str(out) in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert out.read_text() == "my notes\n"             # the user's file is untouched


def _refuse_writes_under(monkeypatch, folder: Path, error: int) -> None:
    """Make creating anything under ``folder`` fail with ``error`` (EACCES/EROFS), as a
    read-only folder does for a non-root user; root bypasses chmod, so it is simulated."""
    real_mkdir, real_open = os.mkdir, os.open

    def refused(path) -> OSError:
        return OSError(error, os.strerror(error), str(path))

    def mkdir(path, *args, **kwargs):
        if Path(path).is_relative_to(folder):
            raise refused(path)
        return real_mkdir(path, *args, **kwargs)

    def open_(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and Path(path).is_relative_to(folder):
            raise refused(path)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(os, "open", open_)


@pytest.mark.parametrize("error", [errno.EACCES, errno.EROFS])
def test_a_read_only_folder_is_one_line(error, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "readonly"
    folder.mkdir()
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):                     # root: chmod does not stop writes
        _refuse_writes_under(monkeypatch, folder, error)
    out = folder / "bench"
    code, _, err = run_cli(["data", "synth", "--out", out, "--videos", "1", "--frames", "5",
                            "--size", "32x32", "--workers", "1", "--quiet"], capsys)
    folder.chmod(0o755)
    assert code == 2, err
    assert "rvos data synth: error:" in err and str(folder) in err
    assert os.strerror(error) in err or "ermission" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert list(folder.iterdir()) == []


def test_disk_full_is_one_line_naming_the_output(synth, tmp_path, capsys, monkeypatch):
    """ENOSPC from a write (which names no file) while training: the run folder is named."""
    import rvos.engine.trainer as trainer

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(trainer, "save_config", full)
    config = tiny_config(tmp_path / "tiny.yaml", synth, epochs=1)
    run = tmp_path / "run"
    code, _, err = run_cli(["train", config, "--out", run, "--quiet"], capsys)
    assert code == 2
    assert err.startswith(f"rvos train: error: {run}: ")
    assert "no space left" in err.lower()
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_rvos_debug_shows_the_traceback_of_an_os_error(tmp_path, monkeypatch):
    folder = tmp_path / "readonly"
    folder.mkdir()
    _refuse_writes_under(monkeypatch, folder, errno.EROFS)
    monkeypatch.setenv("RVOS_DEBUG", "1")
    with pytest.raises((OSError, RVOSError)) as raised:
        main(["data", "synth", "--out", str(folder / "s"), "--videos", "1", "--frames", "5",
              "--size", "32x32", "--workers", "1", "--quiet"])
    error = raised.value     # the OSError itself, or the one-line error made from it
    assert isinstance(error, OSError) or isinstance(error.__cause__ or error.__context__, OSError)


# ----------------------------------------------------------------------------- signals
def _start(args: list, log: Path) -> subprocess.Popen:
    """``rvos ARGS`` in a new process, stderr to ``log``."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "rvos.cli", *map(str, args)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=log.open("w"))


def _wait_for(condition, proc: subprocess.Popen, log: Path, what: str, limit_s: float = 240):
    """Poll until ``condition()``; fail with the log if the process ends or hangs first."""
    deadline = time.monotonic() + limit_s
    while not condition():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"never saw {what}; exit {proc.poll()}; log:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)


def _logged_steps(run: Path) -> int:
    csv = run / "metrics.csv"
    return len(csv.read_text().splitlines()) - 1 if csv.exists() else 0


@pytest.fixture(scope="module", autouse=True)
def training_runs(synth, tmp_path_factory):
    """Two real ``rvos train`` runs, started before the first test of this file so that
    they start up while the other tests run. -> (config, {name: (run, process, log)})"""
    tmp = tmp_path_factory.mktemp("signals")
    config = tiny_config(tmp / "tiny.yaml", synth, epochs=50)
    runs = {}
    for name in ("sigint", "sigterm"):
        log = tmp / f"{name}.log"
        runs[name] = (tmp / name, _start(["train", config, "--out", tmp / name, "--quiet"], log), log)
    yield config, runs
    for _, proc, _ in runs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def stopped_runs(training_runs):
    """The two runs, stopped after their first step by SIGINT and by SIGTERM.
    -> (config, {name: (run, exit status, stderr)})"""
    config, runs = training_runs
    for name, signum in (("sigint", signal.SIGINT), ("sigterm", signal.SIGTERM)):
        run, proc, log = runs[name]
        _wait_for(lambda: _logged_steps(run) >= 1, proc, log, "a first logged step")
        proc.send_signal(signum)
    results = {}
    for name, (run, proc, log) in runs.items():
        try:
            code = proc.wait(timeout=240)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = "hung"
        results[name] = (run, code, log.read_text())
    return config, results


@pytest.mark.parametrize("name, code, signame", [("sigint", 130, "SIGINT"),
                                                  ("sigterm", 143, "SIGTERM")])
def test_a_signal_checkpoints_and_exits_non_zero(stopped_runs, name, code, signame):
    config, results = stopped_runs
    run, exit_code, err = results[name]
    assert exit_code == code, err
    assert f"stopped by {signame} at step" in err and "checkpointed" in err
    assert f"resume with: rvos train {config} --out {run} --resume" in err
    assert "Traceback" not in err
    assert any((run / "checkpoints").glob("last*"))


def test_a_run_stopped_by_sigint_resumes(stopped_runs, capsys):
    config, results = stopped_runs
    run, _, _ = results["sigint"]
    code, out, err = run_cli(["train", config, "--out", run, "--resume", "--stop-after-steps", "1",
                              "--quiet"], capsys)
    assert code == 0, err                                # a --stop-after-steps stop exits 0
    step = int(out.split("resumed from step ")[1].split()[0])
    assert step >= 1
    assert f"stopped (resume with --resume) at step {step + 1}" in out


def test_a_second_sigint_stops_at_once(synth, tmp_path, capsys, monkeypatch):
    """In process: the first training step receives SIGINT, then (handled) a second one; a
    graceful stop would finish the step (a minute of sleep) and checkpoint it."""
    import rvos.engine.trainer as trainer

    real = trainer.weighted_total

    def interrupted_twice(*args):
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(10):                  # short sleeps: the handler runs in between
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1200):
            time.sleep(0.05)
        return real(*args)

    monkeypatch.setattr(trainer, "weighted_total", interrupted_twice)
    config = tiny_config(tmp_path / "tiny.yaml", synth, epochs=1)
    run = tmp_path / "run"
    code, _, err = run_cli(["train", config, "--out", run, "--quiet"], capsys)
    assert code == 130, err
    assert "SIGINT received: stopping after the current step" in err
    assert "stopped at once by a second SIGINT at step 0" in err
    assert "no checkpoint was written yet" in err and "Traceback" not in err
    assert not any((run / "checkpoints").glob("last*"))   # the step in flight was not saved


def test_the_grounding_trainer_stops_on_a_signal_and_resumes(synth, tmp_path, capsys, monkeypatch):
    """In process: the first segmenter step sends SIGINT to this process."""
    import rvos.engine.grounding_trainer as gt

    real = gt.segmenter_loss

    def interrupted(*args):
        os.kill(os.getpid(), signal.SIGINT)
        return real(*args)

    monkeypatch.setattr(gt, "segmenter_loss", interrupted)
    tiny = [f"data.root={synth}", "model.grounding.backbone_weights=none",
            "data.input_size=[32,32]", "model.grounding.dim=32", "model.grounding.seg_dim=16",
            "model.grounding.refine_dim=8", "train.grounding.seg_steps=3",
            "train.grounding.seg_batch_frames=2", "train.grounding.scorer_steps=2",
            "train.grounding.scorer_batch=2", "train.eval_every=0", "train.device=cpu"]
    run = tmp_path / "run"
    args = ["train", "grounding_synth", *tiny, "--out", run, "--quiet"]
    code, _, err = run_cli(args, capsys)
    assert code == 130, err
    assert "stopped by SIGINT at step 1, checkpointed; resume with: rvos train" in err
    assert any((run / "checkpoints").glob("last*"))
    monkeypatch.setattr(gt, "segmenter_loss", real)
    code, out, err = run_cli([*args, "--resume"], capsys)
    assert code == 0, err
    assert "resumed after the stages none" in out and "finished at step" in out


@pytest.mark.parametrize("kind", ["clip", "grounding"])
def test_the_second_signal_raises_at_once_in_both_trainers(kind, tmp_path, capsys):
    from rvos.engine.grounding_trainer import GroundingState, GroundingTrainer
    from rvos.engine.trainer import Trainer, TrainingStopped, TrainState

    cls, state = (Trainer, TrainState()) if kind == "clip" else (GroundingTrainer, GroundingState())
    trainer = cls.__new__(cls)               # the handler needs no model
    trainer.run_dir, trainer.state, trainer._stop_requested, trainer.stop_signal = (
        tmp_path, state, False, None)
    trainer._request_stop(signal.SIGTERM, None)
    assert trainer._stop_requested and trainer.stop_signal == signal.SIGTERM
    assert "SIGTERM again" in capsys.readouterr().err
    with pytest.raises(TrainingStopped) as stop:
        trainer._request_stop(signal.SIGTERM, None)
    assert stop.value.exit_code == 143 and not stop.value.checkpointed
