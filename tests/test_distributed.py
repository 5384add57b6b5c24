"""Training and evaluation on several processes (torch.distributed, gloo on this CPU): two
processes with batch b train the weights one process with batch 2b does, a two-process run
stopped by a signal one rank received resumes exactly, sharded evaluation writes the
single-process figures, and only rank 0 writes files.

One group of two processes (``torch.multiprocessing.spawn``, torchrun's environment
variables) does all the two-process work in a row, to pay the start-up once."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import traceback
from pathlib import Path

import pytest
import torch

from rvos.cli import main
from rvos.config import load_config
from rvos.data.synthetic import SynthConfig, generate_benchmark
from rvos.engine.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

# batch_size is per process: 1 here x 2 processes = the single process's 2
TINY = ["data.input_size=[48,48]", "data.num_frames=2", "model.baseline.dim=32",
        "model.baseline.heads=2", "model.baseline.fusion_layers=1", "optim.accumulate_steps=2",
        "train.epochs=1", "train.max_steps_per_epoch=3", "train.eval_every=0",
        "train.log_every=1", "data.max_val_samples=0", "eval.window=3"]
SGD_LR = 0.05


def sgd_trainer_class():
    """The clip Trainer with SGD (momentum 0.9) for AdamW. AdamW's first steps move every
    weight by about ±lr whatever the gradient's size, so float rounding in a near-zero
    gradient becomes a difference of lr; SGD's step is proportional to the gradient, so
    equal gradients give equal weights within float rounding, and a wrong gradient (a sum
    for a mean, a missing all-reduce) shows."""
    from rvos.engine.trainer import Trainer

    class SGDTrainer(Trainer):
        def _build_optimizer(self):
            params = [p for p in self.model.parameters() if p.requires_grad]
            return torch.optim.SGD(params, lr=SGD_LR, momentum=0.9)

    return SGDTrainer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- the group
def _watch_writes(under: Path, log: list) -> None:
    """Record every file this process opens for writing, creates, renames or removes
    under ``under`` (Python-level; what ranks > 0 must never do)."""
    root = str(under)
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def hook(event, args):
        if event == "open" and args and isinstance(args[0], (str, Path)):
            mode, flags = args[1] or "r", args[2] or 0
            if (any(c in str(mode) for c in "wax+") or flags & write_flags) and \
                    str(args[0]).startswith(root):
                log.append((event, str(args[0])))
        elif event in ("os.mkdir", "os.rename", "os.remove", "os.rmdir", "shutil.rmtree"):
            if any(isinstance(a, (str, Path)) and str(a).startswith(root) for a in args):
                log.append((event, str(args[0])))

    sys.addaudithook(hook)


def _group(rank: int, world: int, port: int, cfg_overrides: list[str], folders: dict) -> None:
    """One rank of the two-process group: (1) an uninterrupted run; (2) a run that rank 1
    stops by SIGTERM in the middle of epoch 1, resumed by new trainers; (3) validation of the
    final weights; (4) ``rvos evaluate`` of the uninterrupted run's checkpoint. Writes what it
    saw to ``reports/rank<r>.json``."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    writes: list = []
    work = Path(folders["work"])
    if rank:
        _watch_writes(work, writes)
    report: dict = {"rank": rank}
    try:
        from rvos.engine import distributed
        from rvos.engine.trainer import TrainingStopped, validation_summary

        Trainer = sgd_trainer_class()
        cfg = load_config("baseline_synth", cfg_overrides)
        straight = Trainer(cfg, folders["straight"], progress=False)
        report["world"] = distributed.world_size()
        report["batches"] = straight.epoch_batches(0)
        straight.fit()

        stopped = Trainer(cfg, folders["stopped"], progress=False)
        if rank == 1:                 # SIGTERM reaches rank 1 alone, in step 1's 2nd batch
            calls, forward = {"n": 0}, stopped.criterion.forward

            def signalled(*a, **k):
                calls["n"] += 1
                if calls["n"] == 2:
                    os.kill(os.getpid(), signal.SIGTERM)
                return forward(*a, **k)

            stopped.criterion.forward = signalled
        try:
            stopped.fit()
            report["stopped"] = None
        except TrainingStopped as e:
            report["stopped"] = [e.signum, e.step, e.checkpointed]
        resumed = Trainer(cfg, folders["stopped"], progress=False, pretrained=False)
        resumed.resume()
        report["resumed_from"] = [resumed.state.global_step, resumed.state.micro_step]
        resumed.fit()

        summary = validation_summary(resumed.model, cfg, resumed.device, progress=False)
        report["validation"] = summary
        report["evaluate"] = main(["evaluate", "--checkpoint", folders["checkpoint"], "--split",
                                   "valid", "--out", folders["eval"], "--quiet"])
        # masks are written by one process: rank 0 alone, the others return at once
        report["evaluate_masks"] = main(["evaluate", "--checkpoint", folders["checkpoint"],
                                         "--split", "valid", "--out", folders["eval_masks"],
                                         "--quiet", "--save-masks"])
    except BaseException:
        report["error"] = traceback.format_exc()
    report["writes"] = writes
    Path(folders["reports"], f"rank{rank}.json").write_text(json.dumps(report))


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "data"
    generate_benchmark(root, SynthConfig(train_videos=6, valid_videos=2, test_videos=2,
                                         compositional_videos=1, num_frames=5, height=48,
                                         width=48, seed=3), progress=False, workers=1)
    return root


@pytest.fixture(scope="module")
def group(tmp_path_factory, synth) -> dict:
    """The two-process group's folders and both ranks' reports."""
    work = tmp_path_factory.mktemp("ddp")
    folders = {name: str(work / name)
               for name in ("straight", "stopped", "eval", "eval_masks", "reports")}
    folders["work"] = str(work)
    folders["checkpoint"] = str(work / "straight" / "checkpoints" / "last")
    Path(folders["reports"]).mkdir()
    overrides = [f"data.root={synth}", *TINY, "optim.batch_size=1"]
    torch.multiprocessing.spawn(_group, args=(2, free_port(), overrides, folders), nprocs=2)
    reports = [json.loads(Path(folders["reports"], f"rank{r}.json").read_text()) for r in (0, 1)]
    for r in reports:
        assert "error" not in r, f"rank {r['rank']}:\n{r['error']}"
    return {"folders": {k: Path(v) for k, v in folders.items()}, "reports": reports,
            "overrides": overrides}


@pytest.fixture(scope="module")
def single(tmp_path_factory, synth) -> dict:
    """One process, batch 2 (the same global batch): its run folder, epoch 1's batches, and
    how far its weights moved from the initial ones."""
    run = tmp_path_factory.mktemp("single") / "run"
    cfg = load_config("baseline_synth", [f"data.root={synth}", *TINY,
                                                       "optim.batch_size=2"])
    trainer = sgd_trainer_class()(cfg, run, progress=False)
    initial = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit()
    moved = max(float((v - initial[k]).abs().max())
                for k, v in trainer.model.state_dict().items() if v.is_floating_point())
    return {"run": run, "batches": trainer.epoch_batches(0), "moved": moved}


# ----------------------------------------------------------------------------- tests
def test_the_ranks_share_each_global_batch_of_the_single_process_order(group, single):
    r0, r1 = group["reports"]
    assert r0["world"] == r1["world"] == 2
    assert [a + b for a, b in zip(r0["batches"], r1["batches"])] == single["batches"]
    assert len(single["batches"]) == 6 and all(len(b) == 2 for b in single["batches"])


def test_two_processes_train_the_weights_of_one_with_the_same_global_batch(group, single):
    """Every tensor (BatchNorm running statistics included) within float rounding after 3
    SGD steps of 2 accumulated micro-steps, while the weights moved far more."""
    two = load_checkpoint(group["folders"]["straight"] / "checkpoints" / "last")
    one = load_checkpoint(single["run"] / "checkpoints" / "last")
    assert two.meta["step"] == one.meta["step"] == 3
    assert two.meta["world_size"] == 2 and one.meta["world_size"] == 1
    assert two.weights.keys() == one.weights.keys()
    assert single["moved"] > 1e-2
    for k, w in one.weights.items():
        torch.testing.assert_close(two.weights[k], w, rtol=1e-4, atol=2e-5, msg=k)
    # the losses logged are those of the global batch (the mean over the ranks)
    losses = [_train_rows(run / "metrics.csv") for run in (group["folders"]["straight"],
                                                           single["run"])]
    assert losses[0].keys() == losses[1].keys()
    for key, value in losses[1].items():
        assert losses[0][key] == pytest.approx(value, rel=1e-4), key


def test_a_signal_one_rank_received_stops_both_and_the_run_resumes_exactly(group):
    for r in group["reports"]:
        assert r["stopped"] == [int(signal.SIGTERM), 1, True]    # both ranks, at step 1
        assert r["resumed_from"] == [1, 2]                        # mid-epoch: 2 of 6 batches
    resumed = load_checkpoint(group["folders"]["stopped"] / "checkpoints" / "last").weights
    straight = load_checkpoint(group["folders"]["straight"] / "checkpoints" / "last").weights
    assert resumed.keys() == straight.keys()
    different = [k for k in straight if not torch.equal(resumed[k], straight[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def test_sharded_evaluation_and_validation_give_the_single_process_figures(group, tmp_path):
    """``rvos evaluate`` under torchrun writes the files one process writes, with the same
    figures; validation during training (of the same weights: the resumed run's equal the
    uninterrupted run's) gives every rank those figures too."""
    assert [r["evaluate"] for r in group["reports"]] == [0, 0]
    out = tmp_path / "eval"
    assert main(["evaluate", "--checkpoint", str(group["folders"]["checkpoint"]), "--split",
                 "valid", "--out", str(out), "--quiet"]) == 0
    sharded = group["folders"]["eval"]
    assert sorted(p.name for p in sharded.iterdir()) == sorted(p.name for p in out.iterdir())
    metrics = json.loads((out / "metrics.json").read_text())
    assert json.loads((sharded / "metrics.json").read_text()) == metrics
    assert metrics["valid"]["overall"]["count"] == 8          # 2 videos x 4 expressions
    assert (sharded / "per_expression.csv").read_text() == (out / "per_expression.csv").read_text()
    r0, r1 = group["reports"]
    assert r0["validation"] == r1["validation"] == metrics["valid"]
    # --save-masks: rank 0 alone, the same figures and the masks
    assert [r["evaluate_masks"] for r in group["reports"]] == [0, 0]
    with_masks = group["folders"]["eval_masks"]
    assert json.loads((with_masks / "metrics.json").read_text()) == metrics
    assert len(list((with_masks / "predictions" / "valid" / "Annotations").rglob("*.png"))) == \
        8 * 5                                             # 8 expressions x 5 frames


def test_only_rank_0_writes(group):
    assert group["reports"][1]["writes"] == []
    run = group["folders"]["straight"]
    assert sorted(p.name for p in run.iterdir()) == [
        "checkpoints", "config.yaml", "curves.png", "metrics.csv", "tensorboard"]
    assert len(list((run / "tensorboard").iterdir())) == 1          # one event file


# ----------------------------------------------------------------------------- helpers
def _train_rows(csv_path: Path) -> dict:
    """{(step, name): value} of the train losses in metrics.csv."""
    rows = [r.split(",") for r in csv_path.read_text().splitlines()[1:]]
    return {(int(r[0]), r[3]): float(r[4]) for r in rows
            if r[2] == "train" and r[3] in ("bce", "dice", "focal", "total")}
