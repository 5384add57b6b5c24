"""Checkpoints under faults: a kill -9 at any moment of a save, a full disk, an unwritable
folder, a moved backbone weights file; and ``--resume`` reproducing an uninterrupted run
bit for bit at several stop points (clip trainer) and after a stop mid-stage (grounding)."""

import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from rvos.cli import main
from rvos.config import Config, load_config
from rvos.data.synthetic import SynthConfig, generate_benchmark
from rvos.engine import checkpoint as ckpt_module
from rvos.engine.checkpoint import load_checkpoint, save_checkpoint
from rvos.errors import RVOSError

REPO = Path(__file__).resolve().parents[1]


def small_net(seed: int = 0, width: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Linear(width, 2))


def training_state(net: nn.Module) -> dict:
    """One AdamW step on ``net`` (changing it); returns the optimizer and RNG states."""
    opt = torch.optim.AdamW(net.parameters())
    net(torch.randn(2, 4)).sum().backward()
    opt.step()
    return {"optimizer": opt.state_dict(), "torch_rng": torch.get_rng_state()}


# --------------------------------------------------------------------------- kill -9
# Each point names a call of the save and whether the process dies just before or just
# after it; the child process is forked (one interpreter for all points) and SIGKILLs itself.
KILL_POINTS = [
    ("write", "during"),           # half the file written to the temporary
    ("fsync", "before"),           # file written, not yet synced
    ("fsync", "after"),            # file synced, not yet renamed
    ("replace", "before"),
    ("replace", "after"),          # renamed, folder not yet synced
    ("fsync_folder", "after"),
    ("unlink_sidecar", "before"),  # replacing a format-1 checkpoint: sidecars still there
]

KILL_SCRIPT = textwrap.dedent('''
    import json, os, signal, sys
    from pathlib import Path
    import torch
    from torch import nn
    from rvos.config import Config
    from rvos.engine import checkpoint as C
    sys.path.insert(0, sys.argv[2])
    from test_faults_checkpoint import KILL_POINTS, small_net, training_state

    root = Path(sys.argv[1])
    real_open, real_fsync, real_replace = open, os.fsync, os.replace
    real_fsync_folder, real_unlink = C.fsync_folder, Path.unlink

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    class HalfWriter:
        def __init__(self, f): self.f = f
        def __enter__(self): return self
        def __exit__(self, *a): return self.f.__exit__(*a)
        def write(self, data):
            self.f.write(bytes(data[: len(data) // 2])); self.f.flush(); die()

    def patch(call, when):
        if call == "write":
            C.open = lambda p, mode="r": HalfWriter(real_open(p, mode))
        elif call == "fsync":
            def fsync(fd):
                if when == "before": die()
                real_fsync(fd)
                if when == "after": die()
            C.os.fsync = fsync
        elif call == "replace":
            def replace(a, b):
                if when == "before": die()
                real_replace(a, b)
                die()
            C.os.replace = replace
        elif call == "fsync_folder":
            def fsync_folder(folder):
                real_fsync_folder(folder); die()
            C.fsync_folder = fsync_folder
        elif call == "unlink_sidecar":
            def unlink(self, missing_ok=False):
                if self.name.endswith((".json", ".state.pt")): die()
                real_unlink(self, missing_ok=missing_ok)
            Path.unlink = unlink

    results = {}
    for i, (call, when) in enumerate(KILL_POINTS):
        folder = root / f"{i}-{call}-{when}"
        previous = small_net(1)
        previous_state = training_state(previous)
        if call == "unlink_sidecar":
            from test_checkpoint import save_format1
            folder.mkdir(parents=True)
            save_format1(folder / "last", previous, Config(), 1, previous_state)
        else:
            C.save_checkpoint(folder / "last", previous, Config(), {"step": 1}, previous_state)
        net = small_net(2)
        state = training_state(net)
        pid = os.fork()
        if pid == 0:
            patch(call, when)
            C.save_checkpoint(folder / "last", net, Config(), {"step": 2}, state)
            os._exit(0)                        # the kill point was not reached
        _, status = os.waitpid(pid, 0)
        results[folder.name] = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    print(json.dumps(results))
''')


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_kill_at_any_moment_of_a_save_keeps_a_loadable_resumable_checkpoint(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(tmp_path), str(REPO / "tests")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    killed = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(killed) == len(KILL_POINTS) and all(killed.values()), killed
    for name in killed:
        folder = tmp_path / name
        ck = load_checkpoint(folder / "last", with_training_state=True)
        renamed = name.endswith(("replace-after", "fsync_folder-after", "unlink_sidecar-before"))
        step = 2 if renamed else 1
        assert ck.meta["step"] == step and ck.training_state["step"] == step, name
        expected = small_net(2 if renamed else 1)
        training_state(expected)                      # the same optimizer step as saved
        expected = expected.state_dict()
        assert all(torch.equal(ck.weights[k], v) for k, v in expected.items()), name
        # the next save removes the dead writer's temporary and any format-1 sidecar
        save_checkpoint(folder / "last", small_net(3), Config(), {"step": 3})
        assert sorted(p.name for p in folder.iterdir()) == ["last.safetensors"], name


# --------------------------------------------------------------------------- disk full, read-only
class FailingFile:
    """A file whose write stores a part of the data, then fails with ``error``."""

    def __init__(self, path, mode, error):
        self.f = open(path, mode)
        self.error = error

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self.f.__exit__(*exc)

    def write(self, data):
        self.f.write(bytes(data[:100]))
        raise OSError(self.error, os.strerror(self.error))


@pytest.mark.parametrize("error, message", [(errno.ENOSPC, "no space left on the device"),
                                            (errno.EACCES, "the folder is not writable"),
                                            (errno.EROFS, "the folder is not writable")])
def test_a_failed_write_is_one_clear_error_and_keeps_the_previous_checkpoint(
        tmp_path, monkeypatch, error, message):
    save_checkpoint(tmp_path / "last", small_net(1), Config(), {"step": 1})
    before = (tmp_path / "last.safetensors").read_bytes()
    monkeypatch.setattr(ckpt_module, "open", lambda p, mode: FailingFile(p, mode, error),
                        raising=False)
    with pytest.raises(RVOSError) as e:
        save_checkpoint(tmp_path / "last", small_net(2), Config(), {"step": 2})
    assert message in str(e.value) and "previous checkpoint is kept" in str(e.value)
    assert "\n" not in str(e.value) and "last.safetensors" in str(e.value)
    assert (tmp_path / "last.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.safetensors"]


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 64 KiB tmpfs (a real full disk); skipped where mounting is not allowed."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here: " + done.stderr.decode(errors="replace").strip())
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def test_a_real_full_disk_keeps_the_previous_checkpoint(small_tmpfs):
    save_checkpoint(small_tmpfs / "last", small_net(1), Config(), {"step": 1})
    big = small_net(2, width=4000)                       # ~100 KB of weights: does not fit
    with pytest.raises(RVOSError, match="no space left on the device"):
        save_checkpoint(small_tmpfs / "last", big, Config(), {"step": 2})
    assert load_checkpoint(small_tmpfs / "last").meta["step"] == 1
    assert sorted(p.name for p in small_tmpfs.iterdir()) == ["last.safetensors"]


# --------------------------------------------------------------------------- self-contained
def test_a_checkpoint_never_reads_or_downloads_its_initial_backbone_weights(tmp_path, monkeypatch):
    """The config of the checkpoint names a torchvision weights name; loading it must not
    download anything (the model is built without pretrained init, then loaded)."""
    from rvos.inference import Predictor
    from rvos.models.build import build_model

    def no_download(*args, **kwargs):
        raise AssertionError("a checkpoint load tried to download weights")

    import torchvision.models._api

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", no_download)
    cfg = load_config(None, ["model.baseline.dim=32", "model.baseline.heads=2",
                             "data.input_size=[32,32]"])
    model = build_model(cfg)
    named = load_config(None, ["model.baseline.dim=32", "model.baseline.heads=2",
                               "data.input_size=[32,32]",
                               "model.baseline.backbone_weights=IMAGENET1K_V1"])
    path = save_checkpoint(tmp_path / "best", model, named, {"step": 0})
    loaded = Predictor.from_checkpoint(path, "cpu").model
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


TINY = ["data.input_size=[48,48]", "data.num_frames=2", "model.baseline.dim=32",
        "model.baseline.heads=2", "model.baseline.fusion_layers=1", "optim.batch_size=2",
        "optim.accumulate_steps=2", "train.epochs=2", "train.max_steps_per_epoch=3",
        "train.eval_every=0", "train.log_every=1", "data.max_val_samples=2", "eval.window=3"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "data"
    generate_benchmark(root, SynthConfig(train_videos=6, valid_videos=1, test_videos=1,
                                         compositional_videos=1, num_frames=5, height=48,
                                         width=48, seed=3), progress=False, workers=1)
    return root


@pytest.mark.slow
def test_train_predict_evaluate_and_resume_after_the_backbone_file_is_gone(tmp_path, synth):
    import torchvision

    weights = tmp_path / "init" / "resnet18.pt"
    weights.parent.mkdir()
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    run = tmp_path / "run"
    args = ["train", "baseline_synth", f"data.root={synth}", *TINY,
            "train.max_steps_per_epoch=1", f"model.baseline.backbone_weights={weights}",
            "--out", str(run), "--quiet"]
    assert main([*args, "--stop-after-steps", "1"]) == 0
    shutil.rmtree(weights.parent)                       # the run is moved / the file deleted
    ckpt = str(run / "checkpoints" / "last")            # NAME without suffix works too
    assert main(["evaluate", "--checkpoint", ckpt, "--split", "test", "--out",
                 str(tmp_path / "eval"), "--quiet"]) == 0
    video = sorted((synth / "test" / "JPEGImages").iterdir())[0]
    assert main(["predict", "--checkpoint", ckpt + ".safetensors", "--video", str(video),
                 "--text", "the red circle", "--out", str(tmp_path / "pred"), "--quiet",
                 "--no-gif"]) == 0
    assert len(list((tmp_path / "pred" / "masks" / "0").glob("*.png"))) == 5
    assert main([*args, "--resume"]) == 0
    assert load_checkpoint(run / "checkpoints" / "last").meta["step"] == 2


# --------------------------------------------------------------------------- exact resume
def fit(cfg, run: Path, stop: int = 0, resume: bool = False):
    from rvos.engine.trainer import Trainer

    trainer = Trainer(cfg, run, progress=False, pretrained=not resume)
    if resume:
        trainer.resume()
    trainer.fit(stop_after_steps=stop)
    return trainer


def assert_same_weights(a: Path, b: Path) -> None:
    wa = load_checkpoint(a / "checkpoints" / "last").weights
    wb = load_checkpoint(b / "checkpoints" / "last").weights
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


@pytest.mark.slow
def test_resume_is_bit_identical_at_several_stop_points(tmp_path, synth):
    """2 epochs x 2 optimizer steps of 2 accumulated batches, against one uninterrupted
    run. One run is stopped mid-epoch (step 1), crashes half-way through the accumulation
    of step 2 (it resumes from the checkpoint before), stops at the end of epoch 1 (step 2,
    before that epoch's bookkeeping) and is resumed to the end; the integration test stops
    in the middle of epoch 2."""
    from rvos.engine.trainer import Trainer

    cfg = load_config("baseline_synth",
                      [f"data.root={synth}", *TINY, "train.max_steps_per_epoch=2"])
    straight = tmp_path / "straight"
    fit(cfg, straight)
    run = tmp_path / "run"
    fit(cfg, run, stop=1)

    trainer = Trainer(cfg, run, progress=False, pretrained=False)
    trainer.resume()
    calls = {"n": 0}
    criterion = trainer.criterion.forward

    def crash_on_the_second_batch(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated crash")
        return criterion(*a, **k)

    trainer.criterion.forward = crash_on_the_second_batch
    with pytest.raises(RuntimeError, match="simulated crash"):
        trainer.fit()
    assert load_checkpoint(run / "checkpoints" / "last").meta["step"] == 1

    fit(cfg, run, stop=1, resume=True)
    meta = load_checkpoint(run / "checkpoints" / "last").meta
    assert (meta["step"], meta["epoch"], meta["micro_step"]) == (2, 0, 4)
    fit(cfg, run, resume=True)
    assert_same_weights(straight, run)


GROUNDING = ["model.grounding.backbone_weights=none", "model.grounding.backbone_dtype=float32",
             "data.input_size=[48,48]", "model.grounding.dim=32", "model.grounding.seg_dim=16",
             "model.grounding.refine_dim=8", "model.grounding.dropout=0.2",
             "train.grounding.seg_steps=4", "train.grounding.seg_batch_frames=4",
             "train.grounding.scorer_steps=6", "train.grounding.scorer_batch=8",
             "train.grounding.flip=false", "train.eval_every=0", "train.log_every=1"]


def grounding_run(cfg, folder: Path, stage: str = "", stop_at: int = 0, resume: bool = False):
    """Train (or resume) a grounding run; with ``stop_at`` the run is stopped (as by
    SIGINT/SIGTERM) at the ``stop_at``-th loss of ``stage``."""
    from rvos.engine import grounding_trainer as G

    trainer = G.GroundingTrainer(cfg, folder, progress=False, pretrained=not resume)
    if resume:
        trainer.resume()
    name = "segmenter_loss" if stage == "segmenter" else "grounding_loss"
    loss, calls = getattr(G, name), {"n": 0}

    def stopping_loss(*a, **k):
        calls["n"] += 1
        if calls["n"] == stop_at:
            trainer._stop_requested = True
        return loss(*a, **k)

    setattr(G, name, stopping_loss)
    try:
        trainer.fit()
    finally:
        setattr(G, name, loss)
    return trainer


@pytest.fixture(scope="module")
def grounding(tmp_path_factory, synth):
    """(config, an uninterrupted run folder)."""
    root = tmp_path_factory.mktemp("grounding")
    cfg = load_config("grounding_synth",
                      [f"data.root={synth}", *GROUNDING,
                       f"train.grounding.cache_dir={root / 'cache'}"])
    grounding_run(cfg, root / "straight")
    return cfg, root / "straight"


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["segmenter", "scorer"])
def test_grounding_resume_redoes_a_stopped_stage_exactly(tmp_path, grounding, stage):
    """A grounding run stopped in the middle of a stage and resumed reaches the weights of
    an uninterrupted run (stages bounded by steps; dropout on)."""
    cfg, straight = grounding
    stopped = tmp_path / "stopped"
    assert stage not in grounding_run(cfg, stopped, stage, stop_at=2).state.done
    at_stop = load_checkpoint(stopped / "checkpoints" / "last", with_training_state=True)
    assert at_stop.training_state["stage"] == stage
    assert grounding_run(cfg, stopped, resume=True).state.done == ["segmenter", "scorer"]
    assert_same_weights(straight, stopped)
    assert (load_checkpoint(stopped / "checkpoints" / "last").meta["step"]
            == load_checkpoint(straight / "checkpoints" / "last").meta["step"])
