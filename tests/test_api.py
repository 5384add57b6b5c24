"""The Python API: ``import rvos`` is light and exposes the predictor, video reading,
configs, model building and checkpoint loading; README's "Python API" examples run as they
stand (against a tiny checkpoint and video made here), so they cannot rot."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np

import rvos

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_api_examples() -> list[str]:
    """The ```python blocks of README's "## Python API" section, in order."""
    text = README.read_text()
    section = text[text.index("## Python API"):]
    section = section[:section.index("\n## ", 1)]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_import_rvos_is_light_and_every_public_name_resolves():
    code = ("import sys, rvos; assert 'torch' not in sys.modules, 'import rvos imported torch'; "
            "print(sorted(rvos.__all__))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for name in rvos.__all__:
        assert getattr(rvos, name) is not None and name in dir(rvos)
    assert rvos.Predictor.from_checkpoint and rvos.load_checkpoint.__doc__
    assert rvos.Predictor.__module__ == "rvos.inference"


def _tiny_checkpoint(path: Path) -> None:
    from rvos.engine.checkpoint import save_checkpoint

    cfg = rvos.load_config(None, ["model.baseline.dim=32", "model.baseline.heads=2",
                                  "data.input_size=[32,32]", "eval.window=2"])
    save_checkpoint(path, rvos.build_model(cfg), cfg, {"step": 7})


def _tiny_video(path: Path, frames: int = 5) -> None:
    from rvos.data.video_io import VideoWriter

    rng = np.random.default_rng(0)
    with VideoWriter(path, 10.0) as writer:
        for _ in range(frames):
            writer.write(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))


def test_the_readme_python_api_examples_run(tmp_path, monkeypatch, capsys):
    examples = readme_api_examples()
    assert len(examples) == 2 and "rvos.Predictor.from_checkpoint" in examples[0]
    monkeypatch.chdir(tmp_path)
    _tiny_checkpoint(tmp_path / "demo_output" / "run" / "checkpoints" / "best")
    _tiny_video(tmp_path / "my_clip.mp4")
    namespace: dict = {}
    for code in examples:
        exec(compile(code, str(README), "exec"), namespace)
    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in printed[:5]] == [f"{i:05d}" for i in range(5)]
    assert all(line.count("%") == 2 for line in printed[:5])               # two sentences
    for k in (0, 1):
        assert len(list((tmp_path / "pred" / "masks" / str(k)).glob("*.png"))) == 5
    assert (tmp_path / "pred" / "overlay.mp4").is_file()
    assert namespace["masks"].shape == (2, 48, 64) and namespace["masks"].dtype == bool
    assert namespace["checkpoint"].meta["step"] == 7
    assert namespace["cfg"].train.time_budget_s == 60
