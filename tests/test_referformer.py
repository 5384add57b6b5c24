"""The ReferFormer parity family: conversion of official checkpoints, the model's scheduling
invariants, and `rvos convert` / `rvos predict` with a converted checkpoint.

The official key names and shapes (tests/data/referformer_official_keys.json) were read from
the official model's ``state_dict()``; the live comparison with the official code is
benchmarks/referformer_parity.py (and tests/test_referformer_swin.py for the backbones),
which needs a checkout of wjn922/ReferFormer.
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from rvos.cli import main
from rvos.errors import RVOSError
from rvos.models.referformer.config import (ReferFormerConfig, ReferFormerInferenceConfig,
                                            ReferFormerTextConfig)
from rvos.models.referformer.convert import config_from_state, convert_state, read_official_checkpoint
from rvos.models.referformer.model import ReferFormer
from rvos.models.referformer.pixel_decoder import dynamic_mask_logits
from referformer_helpers import (SENTENCE_IDS, as_not_binary_without_box_refinement,
                                 assert_conversion_refuses, assert_every_key_maps,
                                 convert_then_predict, converted_model, meta_state,
                                 official_checkout, official_referformer_outputs,
                                 perturb_constants, predict_both, write_official_checkpoint,
                                 zeros_state)

KEYS = json.loads((Path(__file__).parent / "data" / "referformer_official_keys.json").read_text())


def official_state(backbone: str) -> dict[str, torch.Tensor]:
    """A state dict with the official names and shapes (zeros; pages are not touched), plus
    the buffer older transformers versions saved in released checkpoints."""
    return zeros_state(KEYS["models"][backbone])


def expected_state(cfg: ReferFormerConfig) -> dict[str, torch.Tensor]:
    return meta_state(ReferFormer, cfg)


@pytest.mark.parametrize("backbone", ["resnet50", "video_swin_t"])
def test_official_keys_all_map_with_their_shapes(backbone):
    state = official_state(backbone)
    cfg = config_from_state(state)
    assert cfg.backbone == backbone
    assert (cfg.num_classes, cfg.num_queries, cfg.hidden_dim, cfg.with_box_refine) == (1, 5, 256, True)
    assert (cfg.enc_layers, cfg.dec_layers, cfg.dim_feedforward, cfg.mask_dim) == (4, 4, 2048, 256)
    assert (cfg.controller_layers, cfg.dynamic_mask_channels, cfg.rel_coord) == (3, 8, True)
    assert (cfg.text.vocab_size, cfg.text.num_layers, cfg.text.hidden_size) == (50265, 12, 768)
    # every official key is either mapped or one of the documented drops
    dropped = {k for k in state if k.startswith("transformer.decoder.bbox_embed.")
               or k == "text_encoder.embeddings.position_ids"}
    converted = assert_every_key_maps(convert_state, state, expected_state(cfg), dropped)
    assert "backbone.body.patch_embed.proj.weight" in converted or "backbone.body.conv1.weight" in converted


def test_architecture_is_read_from_shapes():
    state = official_state("resnet50")
    as_not_binary_without_box_refinement(state)
    cfg = config_from_state(state)
    assert cfg.num_classes == 65 and not cfg.with_box_refine
    convert_state(state, expected_state(cfg))


def test_bad_checkpoints_name_the_problem():
    state = official_state("resnet50")
    cfg = config_from_state(state)
    expected = expected_state(cfg)
    assert_conversion_refuses(
        convert_state, state, expected,
        extra=("spectrum_fusion.filter.weight", r"1 keys rvos's ReferFormer does not have .*spectrum_fusion"),
        missing=("pixel_decoder.layer_1.weight", r"1 keys missing: pixel_decoder.layer_1.weight"),
        wrong=("pixel_decoder.layer_1.weight", (256, 256, 1, 1),
               r"wrong shape: pixel_decoder.layer_1.weight \(256, 256, 1, 1\)"))
    other = {k: v for k, v in state.items() if not k.startswith("query_embed")}
    with pytest.raises(RVOSError, match="not a ReferFormer-layout checkpoint: it lacks query_embed.weight"):
        config_from_state(other)


def test_official_pickle_is_read_weights_only(tmp_path):
    """The official training saves args (a Namespace) and the MultiStepLR state (a Counter)
    beside the weights; both load with weights_only=True. Code objects do not."""
    state = {"query_embed.weight": torch.ones(5, 4)}
    path = tmp_path / "checkpoint.pth"
    torch.save({"model": state, "optimizer": {"state": {}, "param_groups": []},
                "lr_scheduler": {"milestones": collections.Counter({3: 1, 5: 1})},
                "epoch": 5, "args": argparse.Namespace(backbone="resnet50", lr=1e-4)}, path)
    assert torch.equal(read_official_checkpoint(path)["query_embed.weight"], state["query_embed.weight"])
    torch.save({"model": state, "hook": print}, path)      # a callable: refused, nothing runs
    with pytest.raises(RVOSError, match="cannot read the checkpoint with weights_only=True"):
        read_official_checkpoint(path)
    (tmp_path / "junk.pth").write_bytes(b"not a pickle")
    with pytest.raises(RVOSError, match="junk.pth"):
        read_official_checkpoint(tmp_path / "junk.pth")
    with pytest.raises(RVOSError, match="not found"):
        read_official_checkpoint(tmp_path / "absent.pth")


def test_dynamic_head_equals_the_official_grouped_convolutions():
    """The shared-matmul head computes the official repeat + grouped 1x1 convs."""
    torch.manual_seed(0)
    n, q, c, h, w, ch = 2, 3, 6, 5, 7, 4
    features, centres = torch.randn(n, c, h, w), torch.rand(n, q, 2) * 20
    sizes = [ch * (c + 2), ch * ch, ch, ch, ch, 1]
    params = torch.randn(n, q, sum(sizes))
    got = dynamic_mask_logits(features, params, centres, ch, 3, rel_coord=True)

    xs = torch.arange(w) * 4.0 + 2
    ys = torch.arange(h) * 4.0 + 2
    rel = torch.stack((centres[..., 0, None, None] - xs[None, :].expand(h, w),
                       centres[..., 1, None, None] - ys[:, None].expand(h, w)), 2)   # (n, q, 2, h, w)
    x = torch.cat((features[:, None].expand(-1, q, -1, -1, -1), rel), 2).reshape(1, -1, h, w)
    w0, w1, w2, b0, b1, b2 = params.reshape(n * q, -1).split(sizes, 1)
    x = torch.relu(torch.nn.functional.conv2d(x, w0.reshape(n * q * ch, -1, 1, 1), b0.reshape(-1), groups=n * q))
    x = torch.relu(torch.nn.functional.conv2d(x, w1.reshape(n * q * ch, -1, 1, 1), b1.reshape(-1), groups=n * q))
    x = torch.nn.functional.conv2d(x, w2.reshape(n * q, -1, 1, 1), b2.reshape(-1), groups=n * q)
    assert torch.allclose(got, x.view(n, q, h, w), atol=1e-4, rtol=1e-5)


def tiny_config(**inference) -> ReferFormerConfig:
    return ReferFormerConfig(text=ReferFormerTextConfig(vocab_size=64, hidden_size=64, num_layers=1,
                                                        num_heads=1, intermediate_size=64),
                             enc_layers=1, dec_layers=2, dim_feedforward=64, mask_dim=16,
                             inference=ReferFormerInferenceConfig(**inference))


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return perturb_constants(ReferFormer(tiny_config(frame_chunk=2, channels_last=False)).eval())


def test_chunks_sentences_and_layout_do_not_change_the_outputs(tiny_model):
    """Frame chunking, several sentences per video, BN folding and channels-last change how
    the work is scheduled, not what it computes."""
    torch.manual_seed(1)
    frames = torch.randn(1, 5, 3, 64, 96)
    ids = torch.tensor([[0, 5, 7, 9, 2], [0, 11, 2, 1, 1]])
    mask = (ids != 1).long()
    mask[0] = 1
    with torch.no_grad():
        chunked = tiny_model.predict(frames, ids, mask, torch.tensor([0, 0]))
        tiny_model.cfg.inference.frame_chunk = 0
        whole = tiny_model.predict(frames, ids, mask, torch.tensor([0, 0]))
        one = tiny_model.predict(frames, ids[1:, :3], mask[1:, :3], torch.tensor([0]))
        tiny_model.cfg.inference.frame_chunk = 2
    assert chunked.masks.shape == (2, 5, 5, 16, 24)
    assert chunked.logits.shape == (2, 5, 5, 1) and chunked.boxes.shape == (2, 5, 5, 4)
    for a, b in ((chunked.logits, whole.logits), (chunked.boxes, whole.boxes), (chunked.masks, whole.masks)):
        assert torch.allclose(a, b, atol=1e-4)
    # the padded second sentence alone, unpadded: same result (padding is masked)
    assert torch.allclose(chunked.masks[1], one.masks[0], atol=1e-4)
    assert not torch.allclose(chunked.masks[0], chunked.masks[1], atol=1e-3)  # the sentence matters
    with pytest.raises(ValueError, match="video_of_text must index the 1 videos"):
        tiny_model.predict(frames, ids, mask, torch.tensor([0, 1]))


def test_frames_of_the_clip_interact(tiny_model):
    """The FPN's self-attention spans the clip: changing frame 4 changes frame 0's masks."""
    torch.manual_seed(2)
    frames = torch.randn(1, 5, 3, 64, 96)
    other = frames.clone()
    other[0, 4] = torch.randn(3, 64, 96)
    ids, mask = torch.tensor([[0, 5, 7, 2]]), torch.ones(1, 4, dtype=torch.long)
    with torch.no_grad():
        a = tiny_model.predict(frames, ids, mask)
        b = tiny_model.predict(other, ids, mask)
    assert not torch.allclose(a.masks[0, 0], b.masks[0, 0], atol=1e-5)
    assert torch.allclose(a.logits[0, 0], b.logits[0, 0], atol=1e-6)   # the decoder is per frame


def test_video_swin_referformer_runs_prepared():
    """The Video Swin model: clip-wise backbone, no NHWC layout to apply, chunked decoding."""
    cfg = tiny_config(frame_chunk=2)
    cfg.backbone = "video_swin_t"
    model = ReferFormer(cfg).prepare_for_inference()
    ids, mask = torch.tensor([[0, 5, 7, 2]]), torch.ones(1, 4, dtype=torch.long)
    frames = torch.randn(1, 5, 3, 64, 96)
    with torch.no_grad():
        chunked = model.predict(frames, ids, mask)
        model.cfg.inference.frame_chunk = 0
        whole = model.predict(frames, ids, mask)
    assert chunked.masks.shape == (1, 5, 5, 16, 24) and torch.isfinite(chunked.masks).all()
    assert torch.allclose(chunked.masks, whole.masks, atol=1e-4)     # the backbone saw the clip


def test_convert_then_predict_a_video(tmp_path, tiny_model):
    """rvos convert of an official-layout .pth, then rvos predict with the result."""
    cfg = tiny_config()
    cfg.text.vocab_size = 300
    torch.manual_seed(3)
    model = ReferFormer(cfg)
    write_official_checkpoint(tmp_path / "checkpoint.pth", model)
    out = convert_then_predict(tmp_path, tmp_path / "checkpoint.pth", "rf", 4, ["a red car", "the dog"])
    assert main(["convert", str(tmp_path / "checkpoint.pth"), "--out", str(tmp_path / "rf")]) == 2
    assert (out / "overlay.mp4").is_file()

    # the converted checkpoint reproduces the source model's outputs
    from rvos.inference import Predictor

    predictor = Predictor.from_checkpoint(tmp_path / "rf.safetensors", "cpu")
    assert predictor.short_side == 360 and predictor.window > 10**6   # the official recipe
    predictor.model.prepare_for_inference()                           # a second time: no-op
    a, b = predict_both(model, predictor.model, torch.randn(1, 3, 3, 64, 96))
    assert torch.allclose(a.masks, b.masks, atol=1e-3) and torch.allclose(a.logits, b.logits, atol=1e-5)


def test_missing_tokenizer_is_one_clear_error(tmp_path, capsys):
    """Without RoBERTa's tokenizer files, rvos predict stops before writing anything."""
    cfg = tiny_config()
    cfg.text.vocab_size = 300
    write_official_checkpoint(tmp_path / "checkpoint.pth", ReferFormer(cfg))
    assert main(["convert", str(tmp_path / "checkpoint.pth"), "--out", str(tmp_path / "rf"),
                 "--tokenizer", str(tmp_path / "nowhere")]) == 0
    video = tmp_path / "frames"
    video.mkdir()
    from PIL import Image

    for i in range(2):
        Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(video / f"{i:05d}.jpg")
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(tmp_path / "rf"), "--video", str(video),
                 "--text", "a car", "--out", str(tmp_path / "pred"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "model.referformer.text.tokenizer=<folder>" in err and "nowhere" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "pred").exists()


def test_referformer_configs_do_not_train(tmp_path):
    config = tmp_path / "rf.yaml"
    config.write_text("model:\n  kind: referformer\n")
    assert main(["train", str(config), "--out", str(tmp_path / "run")]) == 2
    assert not (tmp_path / "run").exists()


OFFICIAL = official_checkout("RVOS_REFERFORMER_OFFICIAL", "models/referformer.py")


@pytest.mark.skipif(not OFFICIAL, reason="RVOS_REFERFORMER_OFFICIAL is not set to a ReferFormer checkout "
                                         "(with models/, util/ and opts.py) to compare against")
def test_live_equivalence_with_the_official_model(tmp_path):
    """The official ResNet-50 model (random weights) saved in its own format, converted, and
    run on the same frames and token ids: the same outputs (benchmarks/referformer_parity.py
    measures the full 360x640 case and the speed)."""
    official_referformer_outputs(tmp_path, OFFICIAL)
    assert main(["convert", str(tmp_path / "official.pth"), "--out", str(tmp_path / "rf")]) == 0
    model = converted_model(tmp_path / "rf")
    frames = torch.load(tmp_path / "frames.pt")
    ids = torch.tensor(SENTENCE_IDS)
    with torch.no_grad():
        pred = model.predict(frames[None], ids, torch.ones_like(ids))
    logits, boxes, masks = torch.load(tmp_path / "official_out.pt")
    assert (pred.logits - logits).abs().max() < 1e-4
    assert (pred.boxes - boxes).abs().max() < 1e-4
    assert (pred.masks - masks).abs().max() < 1e-4
