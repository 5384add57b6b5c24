import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO.parent / "shared" / "assets"


@pytest.fixture(scope="session")
def assets() -> Path:
    """The offline real-data assets beside the repository (skips when absent)."""
    if not ASSETS.is_dir():
        pytest.skip(f"real-data assets not found at {ASSETS} (they sit beside the repo in CI)")
    return ASSETS


@pytest.fixture(scope="session")
def text_encoder():
    """One frozen MiniLM for the whole session (loading costs ~2 s)."""
    from rvos.models.text import TextEncoder

    return TextEncoder()
