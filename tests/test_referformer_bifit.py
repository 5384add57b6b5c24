"""The BIFIT released-checkpoint family: conversion of official checkpoints, the model's
parts against their textbook formulas, scheduling invariants, and `rvos convert` /
`rvos predict` with a converted checkpoint.

The official key names and shapes (tests/data/bifit_official_keys.json) were read from the
official model's ``state_dict()`` (``benchmarks/bifit_parity.py --record-keys``); the live
comparison with the official code runs when RVOS_BIFIT_OFFICIAL names a checkout of
LANMNG/BIFIT (benchmarks/bifit_parity.py measures the full-size case and the speed).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from rvos.cli import main
from rvos.errors import RVOSError
from rvos.models.referformer.bifit import BIFITConfig
from rvos.models.referformer.bifit.convert import config_from_state, convert_state, detect
from rvos.models.referformer.bifit.model import BIFIT, InterFrameLayer, WordsToClip
from rvos.models.referformer.config import (ReferFormerConfig, ReferFormerInferenceConfig,
                                            ReferFormerTextConfig)
from rvos.models.referformer.families import detect_family
from referformer_helpers import (SENTENCE_IDS, assert_conversion_refuses, assert_every_key_maps,
                                 convert_then_predict,
                                 converted_model, meta_state,
                                 official_checkout, official_referformer_outputs,
                                 perturb_constants, predict_both, write_official_checkpoint,
                                 zeros_state)

KEYS = json.loads((Path(__file__).parent / "data" / "bifit_official_keys.json").read_text())
REFERFORMER_KEYS = json.loads((Path(__file__).parent / "data" / "referformer_official_keys.json").read_text())


def official_state(backbone: str = "resnet50", keys: dict = KEYS) -> dict[str, torch.Tensor]:
    """A state dict with the official names and shapes (zeros, broadcast: no memory), plus
    the buffer older transformers versions saved in released checkpoints."""
    return zeros_state(keys["models"][backbone], broadcast=True)


def expected_state(cfg: ReferFormerConfig) -> dict[str, torch.Tensor]:
    return meta_state(BIFIT, cfg)


@pytest.mark.parametrize("backbone", ["resnet50", "video_swin_t"])
def test_official_keys_all_map_with_their_shapes(backbone):
    state = official_state(backbone)
    assert detect(state) and detect_family(state) == "bifit"
    cfg = config_from_state(state)
    assert cfg.family == "bifit" and cfg.backbone == backbone
    assert cfg.bifit == BIFITConfig(query_enc_layers=1)
    assert (cfg.num_classes, cfg.num_queries, cfg.hidden_dim, cfg.with_box_refine) == (1, 5, 256, True)
    assert (cfg.enc_layers, cfg.dec_layers, cfg.dim_feedforward, cfg.mask_dim) == (4, 4, 2048, 256)
    assert (cfg.controller_layers, cfg.dynamic_mask_channels, cfg.rel_coord) == (3, 8, True)
    dropped = {k for k in state if k.startswith("transformer.decoder.bbox_embed.")
               or k == "text_encoder.embeddings.position_ids"}
    converted = assert_every_key_maps(convert_state, state, expected_state(cfg), dropped)
    for key in ("text_fusion_module.multihead_attn.in_proj_weight", "poolout_module.dense.weight",
                "transformer.decoder.query_encoder_layers.0.self_attn.in_proj_weight",
                "transformer.decoder.decoder_layers.3.cross_attn.sampling_offsets.weight"):
        assert key in converted


def test_architecture_is_read_from_shapes():
    state = official_state()
    for k in [k for k in state if k.startswith("transformer.decoder.query_encoder_layers.0.")]:
        state[k.replace(".0.", ".1.", 1)] = state[k]                     # --query_enc_layers 2
    for k in [k for k in state if k.startswith("transformer.decoder.bbox_embed.")]:
        del state[k]                                                   # no box refinement
    cfg = config_from_state(state)
    assert cfg.bifit.query_enc_layers == 2 and not cfg.with_box_refine and cfg.dec_layers == 4
    convert_state(state, expected_state(cfg))
    none = {k: v for k, v in state.items() if ".query_encoder_layers." not in k}
    cfg = config_from_state(none)                                      # --query_enc_layers 0
    assert cfg.bifit.query_enc_layers == 0
    convert_state(none, expected_state(cfg))


def test_bad_checkpoints_name_the_problem():
    state = official_state()
    cfg = config_from_state(state)
    expected = expected_state(cfg)
    key = "transformer.decoder.query_encoder_layers.0.norm2.bias"
    assert_conversion_refuses(
        convert_state, state, expected, twin=False,
        extra=("spectrum_fusion.filter.weight", r"1 keys rvos's BIFIT does not have .*spectrum_fusion"),
        missing=(key, rf"1 keys missing: {key}"),
        wrong=("poolout_module.dense.weight", (256, 128),
               r"wrong shape: poolout_module.dense.weight \(256, 128\)"))
    no_pool = {k: v for k, v in state.items() if not k.startswith("poolout_module.")}
    assert detect(no_pool)                      # still BIFIT's, and told what it lacks
    with pytest.raises(RVOSError, match="not a BIFIT checkpoint: it lacks poolout_module.dense.weight"):
        config_from_state(no_pool)
    ffn = dict(state, **{"transformer.decoder.query_encoder_layers.0.linear1.weight": torch.zeros(1024, 256)})
    with pytest.raises(RVOSError, match=r"FFN width \(1024\) is not the transformer's dim_feedforward \(2048\)"):
        config_from_state(ffn)
    extra = dict(state, **{"spectrum_fusion.filter.weight": torch.zeros(3)})
    with pytest.raises(RVOSError) as info:                 # one line, naming the file once
        convert_state(extra, expected, Path("ckpt.pth"))
    assert str(info.value).startswith("ckpt.pth: ") and "\n" not in str(info.value)
    assert str(info.value).count("ckpt.pth") == 1


def test_plain_referformer_is_not_bifit():
    state = official_state("resnet50", REFERFORMER_KEYS)
    assert not detect(state) and detect_family(state) == "referformer"


def test_words_to_clip_is_the_official_gated_attention():
    """Chunked key/value projection, first word only == words attending to all frames'
    tokens at once through nn.MultiheadAttention, gated (the official formula)."""
    torch.manual_seed(0)
    c, heads, t, h, w = 32, 4, 5, 3, 4
    module = WordsToClip(c, heads)
    mha = nn.MultiheadAttention(c, heads)
    mha.load_state_dict(module.multihead_attn.state_dict())
    words, maps, pos = torch.randn(2, 6, c), torch.randn(t, c, h, w), torch.randn(c, h, w)
    with torch.no_grad():
        got = module(words[:, :1], [maps[:2], maps[2:]], pos)
        tokens = maps.permute(0, 2, 3, 1).reshape(t * h * w, 1, c)        # (t h w) tokens
        keys = (maps + pos).permute(0, 2, 3, 1).reshape(t * h * w, 1, c)
        ref = [words[i, :, None] * mha(words[i, :, None], keys, tokens)[0] for i in range(2)]
    assert torch.allclose(got[:, 0], torch.stack(ref)[:, 0, 0], atol=1e-6)


def test_inter_frame_layer_is_detr_post_norm_encoder_layer():
    torch.manual_seed(0)
    layer = InterFrameLayer(32, 4, 64).eval()
    ref = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0).eval()       # post-norm, ReLU
    ref.load_state_dict(layer.state_dict())
    x = torch.randn(2, 15, 32)
    with torch.no_grad():
        assert torch.allclose(layer(x), ref(x.transpose(0, 1)).transpose(0, 1), atol=1e-5)


def tiny_config(**inference) -> ReferFormerConfig:
    return ReferFormerConfig(family="bifit", bifit=BIFITConfig(query_enc_layers=1),
                             text=ReferFormerTextConfig(vocab_size=300, hidden_size=64, num_layers=1,
                                                        num_heads=1, intermediate_size=64),
                             enc_layers=1, dec_layers=2, dim_feedforward=64, mask_dim=16,
                             inference=ReferFormerInferenceConfig(**inference))


def perturbed(model: nn.Module) -> nn.Module:
    """No constant-initialised part left degenerate (zero biases, uniform attention)."""
    return perturb_constants(model)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return perturbed(BIFIT(tiny_config(frame_chunk=2, channels_last=False)).eval())


def test_chunks_sentences_and_layout_do_not_change_the_outputs(tiny_model):
    """Frame chunking (the clip-wide parts still see the whole clip), several sentences per
    video, and a padded sentence change how the work is scheduled, not what it computes."""
    torch.manual_seed(1)
    frames = torch.randn(1, 5, 3, 32, 64)
    ids = torch.tensor([[0, 5, 7, 9, 2], [0, 11, 2, 1, 1]])
    mask = (ids != 1).long()
    with torch.no_grad():
        chunked = tiny_model.predict(frames, ids, mask, torch.tensor([0, 0]))
        tiny_model.cfg.inference.frame_chunk = 0
        whole = tiny_model.predict(frames, ids, mask, torch.tensor([0, 0]))
        one = tiny_model.predict(frames, ids[1:, :3], mask[1:, :3], torch.tensor([0]))
        tiny_model.cfg.inference.frame_chunk = 3
        uneven = tiny_model.predict(frames, ids, mask, torch.tensor([0, 0]))
        tiny_model.cfg.inference.frame_chunk = 2
    assert chunked.masks.shape == (2, 5, 5, 8, 16)
    assert chunked.logits.shape == (2, 5, 5, 1) and chunked.boxes.shape == (2, 5, 5, 4)
    for other in (whole, uneven):
        for a, b in ((chunked.logits, other.logits), (chunked.boxes, other.boxes),
                     (chunked.masks, other.masks)):
            assert (a - b).abs().max() < 1e-5
    assert (chunked.masks[1] - one.masks[0]).abs().max() < 1e-4      # padding is masked
    assert not torch.allclose(chunked.masks[0], chunked.masks[1], atol=1e-3)


def test_frames_of_the_clip_interact_in_the_decoder(tiny_model):
    """Unlike ReferFormer, frame 0's scores and boxes depend on frame 4 (the words see the
    whole clip, the queries of all frames mix after every decoder layer)."""
    torch.manual_seed(2)
    frames = torch.randn(1, 5, 3, 32, 64)
    other = frames.clone()
    other[0, 4] = torch.randn(3, 32, 64)
    ids, mask = torch.tensor([[0, 5, 7, 2]]), torch.ones(1, 4, dtype=torch.long)
    with torch.no_grad():
        a = tiny_model.predict(frames, ids, mask)
        b = tiny_model.predict(other, ids, mask)
        decoder = tiny_model.transformer.decoder
        layers = decoder.query_encoder_layers
        decoder.query_encoder_layers = nn.ModuleList()          # words-to-clip alone
        c = tiny_model.predict(frames, ids, mask)
        d = tiny_model.predict(other, ids, mask)
        decoder.query_encoder_layers = layers
    assert not torch.allclose(a.logits[0, 0], b.logits[0, 0], atol=1e-6)
    assert not torch.allclose(a.boxes[0, 0], b.boxes[0, 0], atol=1e-6)
    assert not torch.allclose(c.logits[0, 0], d.logits[0, 0], atol=1e-6)


def test_convert_then_predict_a_video(tmp_path):
    """rvos convert of a BIFIT-layout .pth, then rvos predict with the result."""
    torch.manual_seed(3)
    model = perturbed(BIFIT(tiny_config()))
    write_official_checkpoint(tmp_path / "checkpoint.pth", model)
    out = convert_then_predict(tmp_path, tmp_path / "checkpoint.pth", "bifit", 2, ["a red car"])
    assert (out / "overlay.mp4").is_file()

    from rvos.inference import Predictor

    predictor = Predictor.from_checkpoint(tmp_path / "bifit.safetensors", "cpu")
    assert isinstance(predictor.model, BIFIT)
    assert predictor.model.cfg.family == "bifit" and predictor.model.cfg.bifit.query_enc_layers == 1
    assert predictor.short_side == 360 and predictor.window > 10**6   # the official recipe
    a, b = predict_both(model, predictor.model, torch.randn(1, 3, 3, 64, 96))
    assert torch.allclose(a.masks, b.masks, atol=1e-3) and torch.allclose(a.logits, b.logits, atol=1e-5)


def test_config_rule_for_the_inter_frame_layers(tmp_path):
    from rvos.config import Config, config_errors

    cfg = Config()
    bad = dataclasses.replace(cfg, model=dataclasses.replace(
        cfg.model, kind="referformer",
        referformer=dataclasses.replace(cfg.model.referformer, family="bifit",
                                        bifit=BIFITConfig(query_enc_layers=-1))))
    assert any("model.referformer.bifit.query_enc_layers" in e for e in config_errors(bad))


OFFICIAL = official_checkout("RVOS_BIFIT_OFFICIAL", "models/referformer.py")


@pytest.mark.skipif(not OFFICIAL, reason="RVOS_BIFIT_OFFICIAL is not set to a BIFIT checkout (with models/, "
                                         "util/ and opts.py) to compare against")
def test_live_equivalence_with_the_official_model(tmp_path):
    """The official ResNet-50 BIFIT (random weights) saved in its own format, converted, and
    run on the same frames (128x224, T=3) and token ids: the same outputs."""
    official_referformer_outputs(tmp_path, OFFICIAL)
    assert main(["convert", str(tmp_path / "official.pth"), "--out", str(tmp_path / "bifit")]) == 0
    model = converted_model(tmp_path / "bifit")
    assert isinstance(model, BIFIT)
    frames = torch.load(tmp_path / "frames.pt")
    ids = torch.tensor(SENTENCE_IDS)
    logits, boxes, masks = torch.load(tmp_path / "official_out.pt")
    for chunk in (4, 2):                      # the default schedule, and frames split across chunks
        model.cfg.inference.frame_chunk = chunk
        with torch.no_grad():
            pred = model.predict(frames[None], ids, torch.ones_like(ids))
        assert (pred.logits - logits).abs().max() < 1e-4
        assert (pred.boxes - boxes).abs().max() < 1e-4
        assert (pred.masks - masks).abs().max() < 1e-4
