"""Pre-train then fine-tune: ``rvos train --init-from`` (weights only, architecture checked,
recorded in the run's checkpoints) and ReferFormer's step learning-rate schedule
(``optim.schedule: step``), stepped per optimizer step and resumed exactly."""

from pathlib import Path

import pytest
import torch

from rvos.cli import main
from rvos.config import load_config
from rvos.data.synthetic import SynthConfig, generate_benchmark
from rvos.engine.checkpoint import load_checkpoint
from rvos.engine.lr_schedules import StepDropLR
from rvos.engine.trainer import Trainer
from rvos.errors import RVOSError
from test_refcoco import make_refexp_coco

TINY = ["data.input_size=[32,32]", "data.num_frames=1", "model.baseline.dim=32",
        "model.baseline.heads=2", "optim.batch_size=2", "optim.accumulate_steps=1",
        "train.epochs=1", "train.max_steps_per_epoch=1", "train.eval_every=0", "train.log_every=1",
        "eval.window=2", "optim.amp=false"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "data"
    generate_benchmark(root, SynthConfig(train_videos=4, valid_videos=1, test_videos=1,
                                         compositional_videos=1, num_frames=5, height=32,
                                         width=32, seed=3), progress=False)
    return root


def config(synth, *extra):
    return load_config("baseline_synth", [f"data.root={synth}", *TINY, *extra])


@pytest.fixture(scope="module")
def source_run(tmp_path_factory, synth) -> Path:
    """A finished 1-step run (seed 1): the checkpoint to start from."""
    run = tmp_path_factory.mktemp("source") / "run"
    Trainer(config(synth, "train.seed=1"), run, progress=False).fit()
    return run / "checkpoints" / "last.safetensors"


def test_init_from_takes_the_weights_and_nothing_else(tmp_path, synth, source_run):
    trainer = Trainer(config(synth), tmp_path / "run", progress=False, pretrained=False)
    rng = torch.get_rng_state()
    trainer.init_from(source_run)
    source = load_checkpoint(source_run, with_training_state=True)
    assert source.meta["step"] == 1 and source.training_state["optimizer"]["state"]
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(value, source.weights[key]), key
    assert trainer.state.global_step == 0 and trainer.state.epoch == 0
    assert not trainer.optimizer.state                          # no Adam moments carried over
    assert trainer.scheduler.last_epoch == 0                     # the schedule starts fresh
    assert torch.equal(torch.get_rng_state(), rng)               # nor the RNG of the other run
    trainer.fit()
    meta = load_checkpoint(tmp_path / "run" / "checkpoints" / "last").meta
    assert meta["step"] == 1                                     # its own steps, not 1 + 1
    assert meta["init_from"] == {"checkpoint": str(source_run.resolve()), "step": 1,
                                 "data_format": "ref-ytvos", "data_root": str(synth)}


def test_init_from_refuses_another_architecture_and_a_missing_file(tmp_path, synth, source_run):
    other = Trainer(config(synth, "model.baseline.dim=64"), tmp_path / "run", progress=False)
    with pytest.raises(RVOSError, match="another architecture") as e:
        other.init_from(source_run)
    assert "last.safetensors" in str(e.value)
    with pytest.raises(RVOSError, match="not found") as e:
        other.init_from(tmp_path / "missing")
    assert "missing.safetensors" in str(e.value)


def test_cli_pretrains_on_refcoco_then_fine_tunes_on_video(tmp_path, synth, capsys):
    refcoco = make_refexp_coco(tmp_path / "coco")
    pre = tmp_path / "pre"
    assert main(["train", "baseline_synth", *TINY, "data.format=refcoco",
                 f"data.root={refcoco}", "data.val_split=val", "train.eval_every=1", "optim.schedule=step", "optim.lr_drop_epochs=[1]",
                 "--out", str(pre), "--quiet"]) == 0
    rows = (pre / "metrics.csv").read_text().splitlines()
    assert any(",val,oIoU," in r for r in rows) and any(",val,JF," in r for r in rows)
    fine = tmp_path / "fine"
    args = ["train", "baseline_synth", f"data.root={synth}", *TINY, "--out", str(fine),
            "--quiet", "--init-from", str(pre / "checkpoints" / "last")]
    assert main(args) == 0
    assert "initialised from the weights of" in capsys.readouterr().out
    meta = load_checkpoint(fine / "checkpoints" / "last").meta
    assert meta["init_from"]["data_format"] == "refcoco" and meta["step"] == 1
    # --resume continues the fine-tuning run with its own state, keeping the record
    assert main(["train", "baseline_synth", f"data.root={synth}", *TINY,
                 "train.epochs=2", "--out", str(fine), "--quiet", "--resume"]) == 0
    meta = load_checkpoint(fine / "checkpoints" / "last").meta
    assert meta["step"] == 2 and meta["init_from"]["data_format"] == "refcoco"
    code = main([*args[:-2], "--resume", "--init-from", str(pre / "checkpoints" / "last")])
    assert code == 2 and "give one of them" in capsys.readouterr().err
    code = main(["train", "baseline_synth", f"data.root={synth}", *TINY,
                 "model.baseline.dim=64", "--out", str(tmp_path / "other"), "--quiet",
                 "--init-from", str(pre / "checkpoints" / "last")])
    err = capsys.readouterr().err
    assert code == 2 and "another architecture" in err and len(err.strip().splitlines()) == 1


def used_learning_rates(trainer):
    """Wrap the optimizer's step to record the learning rate each step is taken with."""
    used, step = [], trainer.optimizer.step

    def recording_step(*a, **kw):
        used.append(trainer.optimizer.param_groups[0]["lr"])
        return step(*a, **kw)

    trainer.optimizer.step = recording_step
    return used


STEP = ["optim.schedule=step", "optim.lr_drop_epochs=[1,2]", "optim.lr_drop_gamma=0.1",
        "optim.lr=1e-3", "train.epochs=3"]


def test_step_schedule_drops_by_gamma_at_each_milestone_and_resumes_exactly(tmp_path, synth):
    full = Trainer(config(synth, *STEP), tmp_path / "full", progress=False)
    used = used_learning_rates(full)
    full.fit()                                                   # one step per epoch
    assert used == pytest.approx([1e-3, 1e-4, 1e-5], rel=1e-9)
    groups = [g["lr"] for g in full.optimizer.param_groups]
    assert groups == pytest.approx([1e-5] * len(groups))        # every group drops together
    Trainer(config(synth, *STEP), tmp_path / "split", progress=False).fit(stop_after_steps=2)
    resumed = Trainer(config(synth, *STEP), tmp_path / "split", progress=False, pretrained=False)
    resumed.resume()
    used = used_learning_rates(resumed)
    resumed.fit()
    assert used == pytest.approx([1e-5], rel=1e-9)
    for key, value in full.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    cosine = Trainer(config(synth, "train.epochs=3"), tmp_path / "split", progress=False)
    with pytest.raises(RVOSError, match="optim.schedule=step"):
        cosine.resume()


def test_step_drop_lr_is_a_function_of_the_fractional_epoch():
    params = [torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.AdamW([{"params": params, "lr": 2.0}])
    schedule = StepDropLR(optimizer, [3, 5], gamma=0.5)
    expected = {0.0: 2.0, 2.99: 2.0, 3.0: 1.0, 4.5: 1.0, 5.0: 0.5, 9.0: 0.5}
    for epoch, lr in expected.items():
        schedule.step(epoch)
        assert schedule.get_last_lr() == [lr]
    state = schedule.state_dict()
    again = StepDropLR(torch.optim.AdamW([{"params": params, "lr": 2.0}]), [3, 5], gamma=0.5)
    again.load_state_dict(state)
    assert again.get_last_lr() == [0.5] and again.last_epoch == 9.0
    with pytest.raises(ValueError):
        StepDropLR(optimizer, [5, 3])


@pytest.mark.parametrize("override, message", [
    ("optim.lr_drop_epochs=[5,3]", "strictly increasing"),
    ("optim.lr_drop_epochs=[0,2]", "strictly increasing"),
    ("optim.lr_drop_gamma=0", "optim.lr_drop_gamma"),
    ("optim.lr_drop_gamma=1.5", "optim.lr_drop_gamma"),
    ("optim.schedule=poly", "cosine_restarts, step"),
])
def test_schedule_settings_are_range_checked(override, message):
    with pytest.raises(RVOSError, match=message):
        load_config(None, [override])


def test_step_schedule_is_refused_where_another_trainer_schedules(tmp_path):
    with pytest.raises(RVOSError, match="clip trainer"):
        load_config(None, ["optim.schedule=step", "model.kind=grounding"])


def test_the_grounding_trainer_starts_from_weights_too(tmp_path, synth):
    from rvos.engine.checkpoint import save_checkpoint
    from rvos.engine.grounding_trainer import GroundingTrainer

    cfg = load_config("grounding_synth", [f"data.root={synth}", "data.input_size=[32,32]"])
    source = GroundingTrainer(cfg, tmp_path / "a", progress=False, pretrained=False)
    with torch.no_grad():
        for p in source.model.parameters():
            p.add_(1.0)
    path = save_checkpoint(tmp_path / "ck" / "grounding", source.model, cfg, {"step": 5})
    trainer = GroundingTrainer(cfg, tmp_path / "b", progress=False, pretrained=False)
    trainer.init_from(path)
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(value, source.model.state_dict()[key]), key
    assert trainer.init_record["step"] == 5 and not trainer.state.done
    trainer.save("last")
    assert load_checkpoint(tmp_path / "b" / "checkpoints" / "last").meta["init_from"]["step"] == 5
