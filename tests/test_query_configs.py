"""Every packaged query_*.yaml config loads, validates, names weights torchvision knows, and the
synthetic ones build the model they describe."""

from pathlib import Path

import pytest
import torch
import torchvision

from rvos.config import CONFIG_DIR, load_config
from rvos.models.backbones import torchvision_weights
from rvos.models.build import build_criterion, build_model
from rvos.models.query.build import validate_query_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(CONFIG_DIR.glob("query_*.yaml"))
BUILDERS = {"resnet50": torchvision.models.resnet50, "swin_t": torchvision.models.swin_t,
            "video_swin_t": torchvision.models.video.swin3d_t,
            "video_swin_b": torchvision.models.video.swin3d_b}


def test_the_expected_configs_exist():
    names = {c.stem for c in CONFIGS}
    assert {"query_synth_resnet50", "query_synth_swin_t", "query_synth_video_swin_t",
            "query_synth_mobilenetv2", "query_ytvos_resnet50", "query_ytvos_video_swin_t",
            "query_a2d_video_swin_t"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_loads_and_validates(path):
    cfg = load_config(path)
    assert cfg.model.kind == "query"
    validate_query_config(cfg.model.query)
    q = cfg.model.query
    if q.backbone_weights not in ("none", "") and not q.backbone_weights.endswith(".pt"):
        torchvision_weights(BUILDERS[q.backbone], q.backbone_weights)   # a known name, no download
    assert not Path(cfg.data.root).is_absolute() and not Path(cfg.train.out_dir).is_absolute()


@pytest.mark.parametrize("name", ["query_synth_resnet50", "query_synth_swin_t",
                                  "query_synth_video_swin_t", "query_synth_mobilenetv2"])
def test_synthetic_configs_build_and_run(name, monkeypatch):
    monkeypatch.chdir(REPO)      # the MobileNetV2 weights path is relative to the repo root
    cfg = load_config(CONFIG_DIR / f"{name}.yaml")
    weights = cfg.model.query.backbone_weights
    if weights.endswith(".pt") and not (REPO / weights).is_file():
        pytest.skip("offline assets (../shared/assets) absent")
    model, criterion = build_model(cfg), build_criterion(cfg)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 2, 3, 64, 64), ["the red circle"])
    assert out.mask_logits.shape == (1, 2, cfg.model.query.num_queries, 16, 16)
    assert len(criterion.weights) == 5 * cfg.model.query.dec_layers


# Each derived config: its base and the few values it changes (the rest is inherited).
DERIVED = {
    "query_synth_resnet50": ("query_synth_mobilenetv2", [
        "model.query.backbone=resnet50", "model.query.backbone_weights=none",
        "train.out_dir=runs/query_synth_resnet50", "train.max_steps_per_epoch=15"]),
    "query_synth_swin_t": ("query_synth_mobilenetv2", [
        "model.query.backbone=swin_t", "model.query.backbone_weights=none",
        "train.out_dir=runs/query_synth_swin_t", "train.max_steps_per_epoch=15"]),
    "query_synth_video_swin_t": ("query_synth_mobilenetv2", [
        "model.query.backbone=video_swin_t", "model.query.backbone_weights=none",
        "train.out_dir=runs/query_synth_video_swin_t", "train.max_steps_per_epoch=15"]),
    "query_ytvos_video_swin_t": ("query_ytvos_resnet50", [
        "model.query.backbone=video_swin_t", "model.query.backbone_weights=KINETICS400_V1",
        "model.query.frozen_backbone_bn=false", "model.query.dynamic_layers=2",
        "model.query.dynamic_channels=16", "loss.query.mask=2.0", "loss.query.dice=5.0",
        "loss.query.cost_mask=2.0", "loss.query.cost_dice=5.0", "optim.accumulate_steps=2",
        "train.out_dir=runs/query_ytvos_video_swin_t"]),
    "query_a2d_video_swin_t": ("query_ytvos_video_swin_t", [
        "data.format=a2d", "data.root=data/a2d_sentences", "data.val_split=test", "optim.batch_size=2",
        "train.out_dir=runs/query_a2d_video_swin_t", "eval.window=5", "eval.split=test"]),
}


@pytest.mark.parametrize("name", sorted(DERIVED))
def test_a_derived_config_is_its_base_plus_its_differences(name):
    base, changes = DERIVED[name]
    child = load_config(CONFIG_DIR / f"{name}.yaml")
    assert child == load_config(CONFIG_DIR / f"{base}.yaml", changes)
    assert child != load_config(CONFIG_DIR / f"{base}.yaml")
