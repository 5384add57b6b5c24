"""The package as ``pip install .`` builds it: the wheel holds every module, the configs and
every other package data file, the license, and metadata with floors (no pins), the extras
and the SPDX license; an installed copy (the wheel unpacked, away from the repository) loads
the packaged configs by name."""

import importlib.metadata
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _setuptools_supports_pep639() -> bool:
    try:
        major = int(importlib.metadata.version("setuptools").split(".")[0])
    except importlib.metadata.PackageNotFoundError:
        return False
    return major >= 77


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built offline from a copy of the sources (the build writes build/ and
    *.egg-info beside them, not in the repository)."""
    if not _setuptools_supports_pep639():
        pytest.skip("building needs setuptools>=77 in this environment (pyproject's build-system)")
    root = tmp_path_factory.mktemp("pkg")
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "rvos", src / "rvos", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "--no-index", "-q", "-w", str(root / "dist"), str(src)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    (file,) = (root / "dist").glob("rvos-*.whl")
    return file


def _package_files() -> set[str]:
    """Every file of the rvos package in the repository (modules and data), posix paths."""
    return {p.relative_to(REPO).as_posix() for p in (REPO / "rvos").rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}


def test_the_wheel_holds_every_module_config_and_data_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = sorted(_package_files() - names)
    assert not missing, f"left out of the wheel: {missing}"
    assert {"rvos/configs/baseline_synth.yaml", "rvos/configs/ablations/soc_without_clusters.yaml"} <= names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)


def test_the_wheel_metadata_has_floors_extras_and_the_spdx_license(wheel):
    with zipfile.ZipFile(wheel) as z:
        (meta_name,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        meta = z.read(meta_name).decode()
    headers = meta.split("\n\n", 1)[0].splitlines()
    requires = [h.split(": ", 1)[1] for h in headers if h.startswith("Requires-Dist: ")]
    core = [r for r in requires if "extra ==" not in r]
    assert "License-Expression: Apache-2.0" in headers
    assert not any("==" in r for r in core), core
    assert any(r.startswith("torch>=") for r in core) and any(r.startswith("torchvision>=") for r in core)
    assert not any(r.startswith(("tensorboard", "matplotlib")) for r in core), core
    assert {"Provides-Extra: tensorboard", "Provides-Extra: plots", "Provides-Extra: all"} <= set(headers)


def test_an_installed_copy_loads_the_packaged_configs_by_name(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = ("import rvos; from rvos.config import load_config, config_names; "
            "assert rvos.__file__.startswith(%r), rvos.__file__; "
            "assert load_config('baseline_synth').model.kind == 'baseline'; "
            "assert load_config('ablations/soc_without_clusters').model.query.soc.clusters is False; "
            "print(len(config_names()))" % str(site))
    env = {**os.environ, "PYTHONPATH": str(site)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) == len(list((REPO / "rvos" / "configs").rglob("*.yaml")))
