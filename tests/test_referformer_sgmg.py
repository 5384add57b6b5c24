"""The SgMg family (bo-miao/SgMg): conversion of official checkpoints, the parts with a closed
form, the scheduling invariants, and `rvos convert` / `rvos predict` with a converted
checkpoint.

The official key names and shapes (tests/data/sgmg_official_keys.json) were recorded from
the official model's ``state_dict()`` with ``benchmarks/sgmg_parity.py --record-keys``; the
live comparison with the official code runs when RVOS_SGMG_OFFICIAL names a checkout.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from rvos.cli import main
from rvos.errors import RVOSError
from rvos.models.referformer.config import (ReferFormerConfig, ReferFormerInferenceConfig,
                                            ReferFormerTextConfig)
from rvos.models.referformer.families import detect_family
from rvos.models.referformer.sgmg import (MaskRefiner, SgMg, SpectralFilter, centre_gaussian,
                                          config_from_state, convert_state, dynamic_mask_features,
                                          masked_sine_position_2d)
from referformer_helpers import (BENCHMARKS, SENTENCE_IDS, as_not_binary_without_box_refinement,
                                 assert_conversion_refuses, assert_every_key_maps,
                                 convert_then_predict, meta_state, official_checkout,
                                 perturb_constants, predict_both, run_child,
                                 write_official_checkpoint, zeros_state)

DATA = Path(__file__).parent / "data"
KEYS = json.loads((DATA / "sgmg_official_keys.json").read_text())


def official_state(backbone: str) -> dict[str, torch.Tensor]:
    """Zeros with the official names and shapes, plus the buffer some transformers versions save."""
    shapes = {**KEYS["backbones"][backbone], **KEYS["text_encoder"]}
    return zeros_state(shapes, "text_encoder.text_backbone.embeddings.position_ids")


def expected_state(cfg: ReferFormerConfig) -> dict[str, torch.Tensor]:
    return meta_state(SgMg, cfg)


@pytest.mark.parametrize("backbone", ["video_swin_t", "video_swin_b", "resnet50"])
def test_official_keys_all_map_with_their_shapes(backbone):
    state = official_state(backbone)
    assert detect_family(state) == "sgmg"
    cfg = config_from_state(state)
    assert cfg.family == "sgmg" and cfg.backbone == backbone
    assert (cfg.num_classes, cfg.num_queries, cfg.hidden_dim, cfg.with_box_refine) == (1, 5, 256, True)
    assert (cfg.enc_layers, cfg.dec_layers, cfg.dim_feedforward, cfg.mask_dim) == (4, 4, 2048, 256)
    assert (cfg.controller_layers, cfg.dynamic_mask_channels, cfg.rel_coord) == (2, 16, True)
    assert (cfg.text.vocab_size, cfg.text.num_layers, cfg.text.hidden_size) == (50265, 12, 768)
    dropped = {k for k in state if k.startswith("transformer.decoder.bbox_embed.")
               or k.endswith("position_ids")}
    converted = assert_every_key_maps(convert_state, state, expected_state(cfg), dropped)
    assert "text_encoder.embeddings.word_embeddings.weight" in converted
    assert "input_fft_post.3.fc.2.weight" in converted and "mask_refine.conv1_1div4.weight" in converted


def test_architecture_is_read_from_shapes():
    state = official_state("video_swin_t")
    as_not_binary_without_box_refinement(state)
    cfg = config_from_state(state)
    assert cfg.num_classes == 65 and not cfg.with_box_refine
    convert_state(state, expected_state(cfg))


def test_bad_checkpoints_name_the_problem():
    state = official_state("video_swin_t")
    expected = expected_state(config_from_state(state))
    assert_conversion_refuses(
        convert_state, state, expected,
        extra=("pixel_decoder.mask_features.weight", r"^1 keys rvos's SgMg does not have .*pixel_decoder.mask_features"),
        missing=("input_fft.2.laplace.weight", r"^1 keys missing: input_fft.2.laplace.weight"),
        wrong=("mask_refine.conv1_1div8.weight", (16, 16, 3, 3),
               r"wrong shape: mask_refine.conv1_1div8.weight \(16, 16, 3, 3\)"))
    other = {k: v for k, v in state.items() if not k.startswith("sentence_proj")}
    with pytest.raises(RVOSError, match="not an SgMg checkpoint: it lacks sentence_proj.fc.weight"):
        config_from_state(other)
    # a plain ReferFormer file is not claimed by SgMg
    rf = json.loads((DATA / "referformer_official_keys.json").read_text())["models"]["resnet50"]
    assert detect_family({k: torch.zeros(s) for k, s in rf.items()}) == "referformer"


def test_spectral_filter_equals_the_dft_formula():
    """SpectralFilter against the DFT written out as matrices, in float64."""
    torch.manual_seed(0)
    c, h, w = 4, 6, 9
    f = SpectralFilter(c).eval()
    x = torch.randn(2, c, h, w)
    g = centre_gaussian(h, w, 7.0, torch.device("cpu"))
    assert g[0, 0, h // 2, w // 2] == 1 and math.isclose(
        float(g[0, 0, 0, 0]), math.exp(-((h // 2) ** 2 + (w // 2) ** 2) / 98), rel_tol=1e-6)
    with torch.no_grad():
        got = f(x, g)
        lap = F.conv2d(x, f.laplace.weight, f.laplace.bias).mean((2, 3))
        gate = torch.sigmoid(torch.relu(lap @ f.fc[0].weight.t()) @ f.fc[2].weight.t())   # (2, 1)
    xd = x.double()
    fh = torch.exp(-2j * math.pi * torch.outer(torch.arange(h), torch.arange(h)).double() / h)
    fw = torch.exp(-2j * math.pi * torch.outer(torch.arange(w), torch.arange(w)).double() / w)
    spec = fh @ xd.to(torch.complex128) @ fw                                # fft2
    spec = spec * (1 - gate.double()[:, :, None, None] * g.double())
    z = torch.cat([spec.real, spec.imag], 1)
    w1, b1 = f.conv1.weight.double()[:, :, 0, 0], f.conv1.bias.double()
    w2, b2 = f.conv2.weight.double()[:, :, 0, 0], f.conv2.bias.double()
    z = torch.einsum("oc,nchw->nohw", w1, z) + b1[:, None, None]
    z = torch.einsum("oc,nchw->nohw", w2, torch.relu(z)) + b2[:, None, None]
    y = torch.complex(z[:, :c], z[:, c:])
    inv = (fh.conj() @ y @ fw.conj()) / (h * w)                              # ifft2
    assert torch.allclose(got.double(), xd + inv.real, atol=1e-4)


def test_mask_refiner_and_pixel_shuffle_equal_their_formulas():
    """MSO: residual 3x3 steps at stride 8 then stride 4; the 4x4 pixel shuffle puts channel
    4i + j of cell (y, x) at pixel (4y + i, 4x + j)."""
    torch.manual_seed(0)
    refiner = MaskRefiner(16, (3, 5)).eval()
    masks, f4, f8 = torch.randn(2, 16, 3, 4), torch.randn(2, 3, 6, 8), torch.randn(2, 5, 3, 4)
    with torch.no_grad():
        got = refiner(masks, f4, f8)

        def step(m, img, c1, c2):
            x = torch.relu(torch.cat([m, img], 1)).double()
            cols = F.unfold(x, 3, padding=1)                                 # (n, cin*9, hw)
            y = torch.relu(torch.einsum("ok,nkl->nol", c1.weight.double().flatten(1), cols)
                           + c1.bias.double()[:, None]).view(m.shape[0], -1, *m.shape[-2:])
            z = torch.einsum("ok,nkl->nol", c2.weight.double().flatten(1), F.unfold(y, 3, padding=1))
            return m.double() + (z + c2.bias.double()[:, None]).view(m.shape)
        m = step(masks, f8, refiner.conv1_1div8, refiner.conv2_1div8)
        m = F.interpolate(m, size=(6, 8), mode="bilinear", align_corners=False)
        m = step(m.float(), f4, refiner.conv1_1div4, refiner.conv2_1div4)
    assert torch.allclose(got.double(), m, atol=1e-5)
    shuffled = F.pixel_shuffle(got, 4)[:, 0]
    by_formula = torch.empty(2, 24, 32)
    for i in range(4):
        for j in range(4):
            by_formula[:, i::4, j::4] = got[:, 4 * i + j]
    assert torch.equal(shuffled, by_formula)


def test_dynamic_head_equals_the_official_grouped_convolutions():
    torch.manual_seed(0)
    n, q, c, h, w, ch = 2, 3, 6, 5, 7, 16
    features, centres = torch.randn(n, c, h, w), torch.rand(n, q, 2) * 40
    sizes = [ch * (c + 2), ch * ch, ch, ch]
    params = torch.randn(n, q, sum(sizes)) * 0.1
    got = dynamic_mask_features(features, params, centres, ch, 2, rel_coord=True)
    xs, ys = torch.arange(w) * 8.0 + 4, torch.arange(h) * 8.0 + 4
    rel = torch.stack((centres[..., 0, None, None] - xs[None, :].expand(h, w),
                       centres[..., 1, None, None] - ys[:, None].expand(h, w)), 2)
    x = torch.cat((features[:, None].expand(-1, q, -1, -1, -1), rel), 2).reshape(1, -1, h, w)
    w0, w1, b0, b1 = params.reshape(n * q, -1).split(sizes, 1)
    x = torch.relu(F.conv2d(x, w0.reshape(n * q * ch, -1, 1, 1), b0.reshape(-1), groups=n * q))
    x = F.conv2d(x, w1.reshape(n * q * ch, -1, 1, 1), b1.reshape(-1), groups=n * q)
    assert torch.allclose(got, x.view(n, q, ch, h, w), atol=1e-4, rtol=1e-5)


def test_masked_position_encoding_counts_unpadded_pixels():
    """Unpadded: the plain encoding; padded rows repeat the last valid row's encoding."""
    from rvos.models.referformer.layers import sine_position_2d

    mask = torch.zeros(5, 7, dtype=torch.bool)
    assert torch.allclose(masked_sine_position_2d(mask, 32), sine_position_2d(5, 7, 32, mask.device))
    mask[4] = True
    pos = masked_sine_position_2d(mask, 32)
    assert torch.allclose(pos[:, :4], sine_position_2d(4, 7, 32, mask.device))
    assert torch.equal(pos[:16, 4], pos[:16, 3])


def tiny_config(**inference) -> ReferFormerConfig:
    return ReferFormerConfig(family="sgmg", controller_layers=2, dynamic_mask_channels=16,
                             text=ReferFormerTextConfig(vocab_size=64, hidden_size=64, num_layers=1,
                                                        num_heads=1, intermediate_size=64),
                             enc_layers=1, dec_layers=2, dim_feedforward=64,
                             inference=ReferFormerInferenceConfig(**inference))


def noisy(model: SgMg) -> SgMg:
    """No constant-initialised part outside the norms left degenerate."""
    return perturb_constants(model, skip_norms=True)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return noisy(SgMg(tiny_config(frame_chunk=2, channels_last=False)).eval())


def test_chunks_and_sentences_do_not_change_the_outputs(tiny_model):
    """Frame chunking and several sentences per video change the schedule, not the outputs;
    frames not a multiple of 16 are padded inside and the masks cropped back."""
    torch.manual_seed(1)
    frames = torch.randn(1, 3, 3, 136, 152)
    ids = torch.tensor([[0, 5, 7, 9, 2], [0, 11, 2, 1, 1]])
    mask = (ids != 1).long()
    mask[0] = 1
    with torch.no_grad():
        chunked = tiny_model.predict(frames, ids, mask, torch.tensor([0, 0]))
        tiny_model.cfg.inference.frame_chunk = 0
        whole = tiny_model.predict(frames, ids, mask, torch.tensor([0, 0]))
        one = tiny_model.predict(frames, ids[1:, :3], mask[1:, :3], torch.tensor([0]))
        tiny_model.cfg.inference.frame_chunk = 2
    assert chunked.masks.shape == (2, 3, 136, 152) and chunked.query.shape == (2,)
    assert chunked.logits.shape == (2, 3, 5, 1) and chunked.boxes.shape == (2, 3, 5, 4)
    for a, b in ((chunked.logits, whole.logits), (chunked.boxes, whole.boxes), (chunked.masks, whole.masks)):
        assert torch.allclose(a, b, atol=1e-4)
    assert torch.equal(chunked.query, whole.query)
    assert torch.allclose(chunked.masks[1], one.masks[0], atol=1e-4)     # padded tokens masked
    assert not torch.allclose(chunked.logits[0], chunked.logits[1], atol=1e-4)
    with pytest.raises(ValueError, match="video_of_text must index the 1 videos"):
        tiny_model.predict(frames, ids, mask, torch.tensor([0, 1]))


def test_too_small_frames_are_one_clear_error(tiny_model):
    ids, mask = torch.tensor([[0, 5, 2]]), torch.ones(1, 3, dtype=torch.long)
    with pytest.raises(RVOSError, match="at least"):
        tiny_model.predict(torch.randn(1, 2, 3, 64, 96), ids, mask)


def official_text_name(k: str) -> str:
    """SgMg's official name of a non-backbone weight: RoBERTa under ``text_encoder.text_backbone``."""
    if k.startswith("text_encoder."):
        return "text_encoder.text_backbone." + k[len("text_encoder."):]
    return k


def test_convert_then_predict_a_video(tmp_path):
    """rvos convert of an official-layout SgMg .pth, then rvos predict with the result."""
    cfg = tiny_config()
    cfg.text.vocab_size = 300
    torch.manual_seed(3)
    model = noisy(SgMg(cfg))
    write_official_checkpoint(tmp_path / "checkpoint.pth", model, official_text_name)
    convert_then_predict(tmp_path, tmp_path / "checkpoint.pth", "sg", 3, ["a red car"])

    from rvos.inference import Predictor

    predictor = Predictor.from_checkpoint(tmp_path / "sg.safetensors", "cpu")
    assert isinstance(predictor.model, SgMg) and predictor.model.cfg.family == "sgmg"
    assert predictor.short_side == 360 and predictor.window > 10**6   # the official recipe
    a, b = predict_both(model, predictor.model, torch.randn(1, 2, 3, 136, 200))
    assert torch.equal(a.query, b.query)
    assert torch.allclose(a.masks, b.masks, atol=1e-3) and torch.allclose(a.logits, b.logits, atol=1e-5)


OFFICIAL = official_checkout("RVOS_SGMG_OFFICIAL", "models/sgmg.py")


@pytest.mark.skipif(not OFFICIAL, reason="RVOS_SGMG_OFFICIAL is not set to an SgMg checkout "
                                         "(with models/, util/ and opts.py) to compare against")
@pytest.mark.parametrize("backbone", ["resnet50"])
def test_live_equivalence_with_the_official_model(tmp_path, backbone):
    """The official model (random weights) saved in its own format, converted, and run on the
    same frames (184x328: padded to 192x336 in both directions) and token ids: the same
    outputs (benchmarks/sgmg_parity.py measures 360x640 and the speed)."""
    run_child(f"""
import sys, torch
sys.argv = [sys.argv[0]]
sys.path.insert(0, {str(BENCHMARKS.parent)!r})
from pathlib import Path
from benchmarks import referformer_parity as rp, sgmg_parity as sp
ids = torch.tensor([rp.SENTENCE_IDS])
model = sp.build_official(Path({OFFICIAL!r}), {backbone!r}, 0, ids)
torch.save({{"model": model.state_dict()}}, {str(tmp_path / "official.pth")!r})
frames = rp.make_frames(3, (184, 328))
torch.save(frames, {str(tmp_path / "frames.pt")!r})
with torch.no_grad():
    out = sp.official_runner(model)(frames)
torch.save([o.float() for o in out], {str(tmp_path / "official_out.pt")!r})
""")
    assert main(["convert", str(tmp_path / "official.pth"), "--out", str(tmp_path / "sg")]) == 0
    from rvos.engine.checkpoint import load_checkpoint, load_weights_into
    from rvos.models.build import build_model

    checkpoint = load_checkpoint(tmp_path / "sg")
    model = build_model(checkpoint.config, pretrained=False)
    load_weights_into(model, checkpoint, tmp_path / "sg")
    model.prepare_for_inference()                  # as rvos predict runs it
    frames = torch.load(tmp_path / "frames.pt")
    ids = torch.tensor(SENTENCE_IDS)
    with torch.no_grad():
        pred = model.predict(frames[None], ids, torch.ones_like(ids))
    all_logits, query, logits, boxes, masks = torch.load(tmp_path / "official_out.pt")
    assert int(pred.query[0]) == int(query[0])
    q = pred.query
    assert (pred.logits - all_logits).abs().max() < 1e-4
    assert (pred.logits[:, :, q] - logits).abs().max() < 1e-4
    assert (pred.boxes[:, :, q] - boxes).abs().max() < 1e-4
    # the final mask logits reach |40| with random weights; their float32 rounding noise
    # (upstream reorderings: folded BN, SDPA, the gathered deformable sampling) is ~2e-6 of
    # that, 0.7e-4 to 1.2e-4 absolute: bounded relative to the scale, and the binary masks agree
    scale = float(masks.abs().max())
    assert (pred.masks - masks).abs().max() < 1e-4 * max(1.0, scale / 10)
    a, b = pred.masks > 0, masks > 0
    assert (a ^ b).sum() <= a.numel() // 10000
