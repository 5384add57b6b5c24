"""The SOC family (RobertLuo1/NeurIPS2023_SOC) of released checkpoints: conversion of
official state dicts, SOC's own modules against independent formulas, the scheduling
invariants, and `rvos convert` / `rvos predict` with a converted SOC checkpoint.

The official key names and shapes (tests/data/soc_official_keys.json) were recorded from the
official model's ``state_dict()`` (``benchmarks/soc_parity.py --record-keys``); the live
comparison with the official code runs when RVOS_SOC_OFFICIAL names a checkout.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from rvos.cli import main
from rvos.errors import RVOSError
from rvos.inference import capped_short_side
from rvos.models.referformer.config import (ReferFormerConfig, ReferFormerInferenceConfig,
                                            ReferFormerTextConfig)
from rvos.models.referformer.convert import read_official_checkpoint
from rvos.models.referformer.families import FAMILIES, detect_family
from rvos.models.referformer.soc import (SOC, SpatialDecoder, VideoObjectClusters,
                                         config_from_state, convert_state, detect)
from rvos.models.referformer.soc_config import SOCConfig
from referformer_helpers import (BENCHMARKS, SENTENCE_IDS, assert_conversion_refuses,
                                 assert_every_key_maps,
                                 convert_then_predict, converted_model,
                                 meta_state, official_checkout, official_layout_state,
                                 perturb_constants, predict_both, run_child, zeros_state)

DATA = Path(__file__).parent / "data"
KEYS = json.loads((DATA / "soc_official_keys.json").read_text())


def official_state(backbone: str) -> dict[str, torch.Tensor]:
    """Zeros with the official names and shapes, plus what released files also hold: the
    buffer older transformers versions saved, and FLOP-counter buffers."""
    state = zeros_state(KEYS["models"][backbone])
    state["voc.decoder_norm.total_ops"] = torch.zeros(1)
    return state


def expected_state(cfg: ReferFormerConfig) -> dict[str, torch.Tensor]:
    return meta_state(SOC, cfg)


@pytest.mark.parametrize("backbone", ["video_swin_t", "video_swin_b"])
def test_official_keys_all_map_with_their_shapes(backbone):
    state = official_state(backbone)
    assert detect(state) and detect_family(state) == "soc"
    cfg = config_from_state(state)
    assert cfg.family == "soc" and cfg.backbone == backbone
    assert (cfg.num_classes, cfg.num_queries, cfg.hidden_dim, cfg.with_box_refine) == (1, 20, 256, True)
    assert (cfg.enc_layers, cfg.dec_layers, cfg.dim_feedforward, cfg.mask_dim) == (3, 3, 2048, 8)
    assert (cfg.controller_layers, cfg.dynamic_mask_channels, cfg.rel_coord) == (3, 8, True)
    assert (cfg.text.vocab_size, cfg.text.num_layers, cfg.text.hidden_size) == (50265, 12, 768)
    assert cfg.soc == SOCConfig(voc_queries=20, voc_enc_layers=3, voc_dec_layers=3, voc_ffn=2048)
    # every official key is mapped or one of the documented drops
    dropped = {k for k in state if k.startswith(("transformer.decoder.bbox_embed.", "lvf."))
               or k in ("text_encoder.embeddings.position_ids", "voc.decoder_norm.total_ops")}
    assert len(dropped) == 3 * 3 * 2 + 4 + 2          # 3 box MLPs of 3 linears, lvf, 2 buffers
    converted = assert_every_key_maps(convert_state, state, expected_state(cfg), dropped)
    assert "backbone.body.patch_embed.proj.weight" in converted


def test_architecture_is_read_from_shapes():
    state = official_state("video_swin_t")
    for k in [k for k in state if k.startswith(("voc.enc_self_attn.2.", "voc.enc_ffn.2."))]:
        del state[k]                                                   # a 2-layer VOC encoder
    for k in [k for k in state if k.startswith("class_embed.")]:
        state[k] = torch.zeros((65,) + tuple(state[k].shape[1:]))      # not binary
    cfg = config_from_state(state)
    assert cfg.soc.voc_enc_layers == 2 and cfg.num_classes == 65
    convert_state(state, expected_state(cfg))


def test_bad_checkpoints_name_the_problem(tmp_path):
    state = official_state("video_swin_t")
    cfg = config_from_state(state)
    expected = expected_state(cfg)
    assert_conversion_refuses(
        convert_state, state, expected,
        extra=("voc.temporal_gate.weight", r"1 keys rvos's SOC does not have .*voc.temporal_gate"),
        missing=("spatial_decoder.adapter3.weight", r"^1 keys missing: spatial_decoder.adapter3.weight$"),
        wrong=("voc.fq_pos.weight", (10, 256),
               r"wrong shape: voc.fq_pos.weight \(10, 256\) \(expected \(20, 256\)\)"))
    other = {k: v for k, v in state.items() if not k.startswith("txt_proj.")}
    with pytest.raises(RVOSError, match="not an SOC checkpoint: it lacks txt_proj.fc.weight"):
        config_from_state(other)
    # a plain ReferFormer file is not claimed by SOC
    referformer = json.loads((DATA / "referformer_official_keys.json").read_text())["models"]
    plain = {k: torch.zeros(s) for k, s in referformer["video_swin_t"].items()}
    assert not detect(plain) and detect_family(plain) == "referformer"
    # SOC's trainer saves the weights under model_state_dict, beside optimizer state
    path = tmp_path / "soc.pth.tar"
    torch.save({"epoch": 3, "model_state_dict": {"voc.fq_pos.weight": torch.ones(2, 3)},
                "optimizer_state_dict": {"state": {}, "param_groups": []}, "best_loss": 0.5}, path)
    assert read_official_checkpoint(path)["voc.fq_pos.weight"].shape == (2, 3)
    assert "soc" in FAMILIES


def test_voc_equals_an_independent_formula():
    """VOC at inference against a formulation with nn.MultiheadAttention (sequence first,
    as the official layers), written from the method's description."""
    torch.manual_seed(0)
    c, q, t, k, heads = 32, 4, 3, 2, 4
    voc = VideoObjectClusters(c, q, q, heads, 48, enc_layers=2, dec_layers=2).eval()
    frame_q, sentence = torch.randn(k, t, q, c), torch.randn(k, c)

    def mha(attn_block_attn: nn.Module) -> nn.MultiheadAttention:
        m = nn.MultiheadAttention(c, heads)
        m.load_state_dict(attn_block_attn.state_dict())
        return m.eval()

    def ffn(block, x):
        return block.norm(x + block.linear2(torch.relu(block.linear1(x))))

    with torch.no_grad():
        x = frame_q.reshape(k, t * q, c).transpose(0, 1)               # (T*Q, K, C)
        for a, f in zip(voc.enc_self_attn, voc.enc_ffn):
            x = a.norm(x + mha(a.self_attn)(x, x, x)[0])
            x = ffn(f, x)
        slot = voc.fq_pos.weight[torch.arange(t * q) % q][:, None]      # frame query i -> slot i % Q
        pos = voc.query_embed.weight[:, None]
        out = sentence[None].repeat(q, 1, 1)
        for cr, sa, f in zip(voc.transformer_cross_attention_layers,
                             voc.transformer_self_attention_layers, voc.transformer_ffn_layers):
            out = cr.norm(out + mha(cr.multihead_attn)(out + pos, x + slot, x)[0])
            out = sa.norm(out + mha(sa.self_attn)(out + pos, out + pos, out)[0])
            out = ffn(f, out)
        want = voc.decoder_norm(out).transpose(0, 1)
        got = voc(frame_q, sentence)
    assert torch.allclose(got, want, atol=1e-5)


def test_spatial_decoder_and_resize_cap():
    """The spatial decoder's sizes (stride 32 -> stride 4); DETR's long-side cap."""
    dec = SpatialDecoder(128, 24, 8)
    x = dec(torch.randn(2, 128, 2, 3), [torch.randn(2, 128, 4, 6), torch.randn(2, 128, 8, 12),
                                        torch.randn(1, 24, 16, 24)], fine_repeat=2)
    assert x.shape == (2, 8, 16, 24)
    assert capped_short_side(720, 1280, 360, 640) == 360           # 16:9: 640 exactly
    assert capped_short_side(800, 1920, 360, 640) == 267           # round(640 * 800 / 1920)
    assert capped_short_side(1920, 800, 360, 640) == 267
    assert capped_short_side(800, 1920, 360, 0) == 360


def tiny_config(**inference) -> ReferFormerConfig:
    return ReferFormerConfig(
        family="soc", backbone="video_swin_t", hidden_dim=128, num_queries=4, enc_layers=1,
        dec_layers=2, dim_feedforward=64, mask_dim=8,
        text=ReferFormerTextConfig(vocab_size=64, hidden_size=64, num_layers=1, num_heads=1,
                                   intermediate_size=64),
        soc=SOCConfig(voc_queries=4, voc_enc_layers=1, voc_dec_layers=1, voc_ffn=64),
        inference=ReferFormerInferenceConfig(**inference))


def randomised(model: nn.Module) -> nn.Module:
    """No constant-initialised part left degenerate; in eval mode."""
    return perturb_constants(model).eval()


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return randomised(SOC(tiny_config(frame_chunk=2)))


def test_chunks_and_sentences_do_not_change_the_outputs(tiny_model):
    torch.manual_seed(1)
    frames = torch.randn(1, 5, 3, 64, 96)
    ids = torch.tensor([[0, 5, 7, 9, 2], [0, 11, 2, 1, 1]])
    mask = (ids != 1).long()
    with torch.no_grad():
        chunked = tiny_model.predict(frames, ids, mask, torch.tensor([0, 0]))
        tiny_model.cfg.inference.frame_chunk = 0
        whole = tiny_model.predict(frames, ids, mask, torch.tensor([0, 0]))
        one = tiny_model.predict(frames, ids[1:, :3], mask[1:, :3], torch.tensor([0]))
        tiny_model.cfg.inference.frame_chunk = 2
    assert chunked.masks.shape == (2, 5, 4, 16, 24)
    assert chunked.logits.shape == (2, 5, 4, 1) and chunked.boxes.shape == (2, 5, 4, 4)
    for a, b in ((chunked.logits, whole.logits), (chunked.boxes, whole.boxes), (chunked.masks, whole.masks)):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-5)
    assert torch.allclose(chunked.masks[1], one.masks[0], atol=1e-4, rtol=1e-5)
    assert not torch.allclose(chunked.logits[0], chunked.logits[1], atol=1e-4)


def test_voc_makes_the_scores_depend_on_other_frames(tiny_model):
    """Unlike ReferFormer's per-frame decoder, SOC's scores see the clip (through VOC)."""
    torch.manual_seed(2)
    frames = torch.randn(1, 4, 3, 64, 96)
    other = frames.clone()
    other[0, 3] = torch.randn(3, 64, 96)
    ids, mask = torch.tensor([[0, 5, 7, 2]]), torch.ones(1, 4, dtype=torch.long)
    with torch.no_grad():
        a, b = tiny_model.predict(frames, ids, mask), tiny_model.predict(other, ids, mask)
    assert not torch.allclose(a.logits[0, 0], b.logits[0, 0], atol=1e-6)


def write_official_checkpoint(path: Path, model: SOC) -> None:
    """``model``'s weights under the official names, as SOC's trainer saves them (with the
    decoder's box-head twins and the language-side fusion that inference does not use)."""
    sd = model.state_dict()
    state = official_layout_state(model)
    state.update({k.replace("vlf.", "lvf."): torch.randn_like(v) for k, v in sd.items()
                  if k.startswith("vlf.")})
    torch.save({"epoch": 5, "model_state_dict": state, "optimizer_state_dict": {}}, path)


def test_convert_then_predict_a_video(tmp_path):
    cfg = tiny_config()
    cfg.text.vocab_size = 300
    torch.manual_seed(3)
    model = randomised(SOC(cfg))
    write_official_checkpoint(tmp_path / "soc.pth.tar", model)
    convert_then_predict(tmp_path, tmp_path / "soc.pth.tar", "soc", 4, ["a red car", "the dog"])

    from rvos.inference import Predictor

    predictor = Predictor.from_checkpoint(tmp_path / "soc.safetensors", "cpu")
    assert isinstance(predictor.model, SOC)
    assert (predictor.short_side, predictor.max_size) == (360, 640) and predictor.window > 10**6
    a, b = predict_both(model, predictor.model, torch.randn(1, 3, 3, 64, 96))
    for x, y in ((a.logits, b.logits), (a.boxes, b.boxes), (a.masks, b.masks)):
        assert torch.equal(x, y)


OFFICIAL = official_checkout("RVOS_SOC_OFFICIAL", "models/soc.py")


@pytest.mark.skipif(not OFFICIAL,
                    reason="RVOS_SOC_OFFICIAL is not set to a NeurIPS2023_SOC checkout to compare against")
def test_live_equivalence_with_the_official_model(tmp_path):
    """The official Video-Swin-T SOC (random weights, its own initialisation) saved in its
    own format, converted, and run on the same 3 frames of 128x224 and token ids
    (benchmarks/soc_parity.py measures 360x640 and the speed)."""
    run_child(f"""
import sys, torch
sys.argv = [sys.argv[0]]
sys.path.insert(0, {str(BENCHMARKS)!r})
import referformer_parity as rp
import soc_parity as sp
from pathlib import Path
model = sp.build_official(Path({OFFICIAL!r}), "video_swin_t", 0)
ids = torch.tensor([rp.SENTENCE_IDS])
model.tokenizer = rp.FixedTokens(ids)
torch.save({{"model_state_dict": model.state_dict()}}, {str(tmp_path / "official.pth")!r})
frames = rp.make_frames(3, (128, 224))
torch.save(frames, {str(tmp_path / "frames.pt")!r})
import misc
with torch.no_grad():
    out = model(misc.nested_tensor_from_videos_list([frames]), None, ["x"],
                [[{{"size": torch.as_tensor(frames.shape[-2:])}}] for _ in range(3)])
torch.save([out[k].transpose(0, 1) for k in ("pred_cls", "pred_boxes", "pred_masks")],
           {str(tmp_path / "official_out.pt")!r})
""", env={**os.environ, "PYTHONPATH": str(BENCHMARKS.parent)})
    assert main(["convert", str(tmp_path / "official.pth"), "--out", str(tmp_path / "soc")]) == 0
    model = converted_model(tmp_path / "soc")
    frames = torch.load(tmp_path / "frames.pt")
    ids = torch.tensor(SENTENCE_IDS)
    with torch.no_grad():
        pred = model.predict(frames[None], ids, torch.ones_like(ids))
    logits, boxes, masks = torch.load(tmp_path / "official_out.pt")
    assert (pred.logits - logits).abs().max() < 1e-4
    assert (pred.boxes - boxes).abs().max() < 1e-4
    # mask logits reach hundreds with random weights (pixel-scale relative coordinates in the
    # dynamic head): float32 rounding of the inputs is 1e-6 of that
    assert (pred.masks - masks).abs().max() < 1e-4 * max(1.0, float(masks.abs().max()))
    chosen = logits[0].sigmoid().mean(0).max(-1).values.argmax()
    assert chosen == pred.logits[0].sigmoid().mean(0).max(-1).values.argmax()
    assert torch.equal(pred.masks[0][:, chosen] > 0, masks[0][:, chosen] > 0)
