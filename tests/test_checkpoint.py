import json

import pytest
import torch
from torch import nn

from rvos.config import Config, load_config
from rvos.engine.checkpoint import (checkpoint_paths, load_checkpoint, load_weights_into,
                                    save_checkpoint)
from rvos.errors import RVOSError


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


def test_round_trip_keeps_weights_config_meta_and_state(tmp_path):
    net, cfg = small_net(), load_config(None, ["optim.lr=1e-3"])
    opt = torch.optim.AdamW(net.parameters())
    net(torch.randn(2, 4)).sum().backward()
    opt.step()
    path = save_checkpoint(tmp_path / "ck" / "last", net, cfg, {"step": 7, "epoch": 1},
                           {"optimizer": opt.state_dict(), "torch_rng": torch.get_rng_state()})
    assert path.name == "last.safetensors"
    ck = load_checkpoint(path, with_training_state=True)
    assert ck.meta["step"] == 7 and ck.config.optim.lr == 1e-3
    other = small_net()
    with torch.no_grad():
        for p in other.parameters():
            p.zero_()
    load_weights_into(other, ck, path)
    for a, b in zip(net.parameters(), other.parameters()):
        assert torch.equal(a, b)
    opt2 = torch.optim.AdamW(other.parameters())
    opt2.load_state_dict(ck.training_state["optimizer"])
    assert opt2.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]
    # any of the three files names the checkpoint
    assert checkpoint_paths(tmp_path / "ck" / "last.json")[0] == path
    # no temporary files are left behind
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == [
        "last.json", "last.safetensors", "last.state.pt"]


def test_missing_checkpoint_and_missing_json(tmp_path):
    with pytest.raises(RVOSError, match="not found"):
        load_checkpoint(tmp_path / "nope.safetensors")
    path = save_checkpoint(tmp_path / "a", small_net(), Config(), {"step": 1})
    (tmp_path / "a.json").unlink()
    with pytest.raises(RVOSError, match="a.json"):
        load_checkpoint(path)


def test_interrupted_write_is_detected(tmp_path):
    net = small_net()
    save_checkpoint(tmp_path / "a", net, Config(), {"step": 1})
    doc = json.loads((tmp_path / "a.json").read_text())
    doc["meta"]["step"] = 2          # JSON of a newer step beside older weights
    (tmp_path / "a.json").write_text(json.dumps(doc))
    with pytest.raises(RVOSError, match="incomplete"):
        load_checkpoint(tmp_path / "a.safetensors")


def test_corrupt_files_are_clear_errors(tmp_path):
    save_checkpoint(tmp_path / "a", small_net(), Config(), {"step": 1})
    (tmp_path / "a.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(RVOSError, match="cannot read checkpoint weights"):
        load_checkpoint(tmp_path / "a.safetensors")
    save_checkpoint(tmp_path / "b", small_net(), Config(), {"step": 1})
    (tmp_path / "b.json").write_text("{broken")
    with pytest.raises(RVOSError, match="corrupt"):
        load_checkpoint(tmp_path / "b.safetensors")


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    cfg18 = load_config(None, ["model.baseline.backbone=resnet18"])
    cfg50 = load_config(None, ["model.baseline.backbone=resnet50"])
    save_checkpoint(tmp_path / "a", small_net(), cfg18, {"step": 1})
    ck = load_checkpoint(tmp_path / "a.safetensors")
    with pytest.raises(RVOSError, match="another architecture"):
        load_weights_into(small_net(), ck, tmp_path / "a.safetensors", expected=cfg50)
    bigger = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2))
    with pytest.raises(RVOSError, match="shape"):
        load_weights_into(bigger, ck, tmp_path / "a.safetensors")
    with pytest.raises(RVOSError, match="1 unexpected|2 unexpected"):
        load_weights_into(nn.Sequential(nn.Linear(4, 3)), ck, tmp_path / "a.safetensors")
