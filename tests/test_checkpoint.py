import json

import pytest
import torch
from torch import nn

from rvos.config import Config, load_config, to_dict
from rvos.engine.checkpoint import (architecture_signature, checkpoint_file, load_checkpoint,
                                    load_weights_into, save_checkpoint)
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
    # the checkpoint is one file, named with or without its suffix
    assert checkpoint_file(tmp_path / "ck" / "last") == path
    assert load_checkpoint(tmp_path / "ck" / "last").meta["step"] == 7
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["last.safetensors"]
    # any safetensors reader sees the weights under their state-dict names
    from safetensors.torch import load_file
    assert set(net.state_dict()) <= set(load_file(str(path)))


def test_missing_checkpoint_and_foreign_safetensors(tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(RVOSError, match="not found"):
        load_checkpoint(tmp_path / "nope.safetensors")
    save_file(small_net().state_dict(), str(tmp_path / "a.safetensors"))
    with pytest.raises(RVOSError, match="not an rvos checkpoint.*a.json"):
        load_checkpoint(tmp_path / "a")


def save_format1(path, net, cfg, step, state=None):
    """A checkpoint in the earlier three-file layout (NAME.safetensors/.json/.state.pt)."""
    from safetensors.torch import save_file

    save_file(net.state_dict(), str(path.with_name(path.name + ".safetensors")),
              metadata={"step": str(step)})
    document = {"format_version": 1, "architecture": architecture_signature(cfg),
                "config": to_dict(cfg), "meta": {"step": step}, "has_training_state": bool(state)}
    path.with_name(path.name + ".json").write_text(json.dumps(document))
    if state is not None:
        torch.save({**state, "step": step}, path.with_name(path.name + ".state.pt"))


def test_format1_checkpoints_still_load_and_are_replaced_by_one_file(tmp_path):
    net = small_net()
    save_format1(tmp_path / "a", net, Config(), 3, {"torch_rng": torch.get_rng_state()})
    ck = load_checkpoint(tmp_path / "a.safetensors", with_training_state=True)
    assert ck.meta["step"] == 3 and torch.equal(ck.training_state["torch_rng"], torch.get_rng_state())
    save_checkpoint(tmp_path / "a", net, Config(), {"step": 4})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors"]
    assert load_checkpoint(tmp_path / "a").meta["step"] == 4


def test_interrupted_format1_write_is_detected(tmp_path):
    net = small_net()
    save_format1(tmp_path / "a", net, Config(), 1)
    doc = json.loads((tmp_path / "a.json").read_text())
    doc["meta"]["step"] = 2          # JSON of a newer step beside older weights
    (tmp_path / "a.json").write_text(json.dumps(doc))
    with pytest.raises(RVOSError, match="incomplete"):
        load_checkpoint(tmp_path / "a.safetensors")


def test_corrupt_files_are_clear_errors(tmp_path):
    save_checkpoint(tmp_path / "a", small_net(), Config(), {"step": 1})
    (tmp_path / "a.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(RVOSError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "a.safetensors")
    path = save_checkpoint(tmp_path / "b", small_net(), Config(), {"step": 1})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])          # truncated
    with pytest.raises(RVOSError, match="cannot read checkpoint"):
        load_checkpoint(path)
    save_format1(tmp_path / "c", small_net(), Config(), 1)
    (tmp_path / "c.json").write_text("{broken")
    with pytest.raises(RVOSError, match="corrupt"):
        load_checkpoint(tmp_path / "c.safetensors")


def test_weights_only_checkpoint_cannot_be_resumed(tmp_path):
    save_checkpoint(tmp_path / "best", small_net(), Config(), {"step": 1})
    with pytest.raises(RVOSError, match="no training state"):
        load_checkpoint(tmp_path / "best", with_training_state=True)
    ck = load_checkpoint(tmp_path / "best", with_training_state=True, require_training_state=False)
    assert ck.training_state is None


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
