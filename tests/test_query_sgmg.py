"""SgMg on the query core: the spectral filters of its fusion, the segment-and-optimize head,
the losses of its coarse masks, the switches, the configs."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from rvos.config import CONFIG_DIR, load_config
from rvos.data.batch import ClipBatch, ClipMeta, masks_to_boxes_cxcywh
from rvos.errors import RVOSError
from rvos.inference import select_referred
from rvos.losses import weighted_total
from rvos.models.query.matcher import ClipMatcher
from rvos.models.build import build_criterion, build_model
from rvos.models.outputs import RVOSOutput
from rvos.models.query.build import validate_query_config
from rvos.models.query.criterion import QueryCriterion
from rvos.models.query.sgmg import (DetailOptimizer, SpectralFilter, SpectrumFusion,
                                    centre_gaussian, coarse_mask_losses, damp_high_frequencies)

from tiny_query import build_tiny, tiny_overrides

REPO = Path(__file__).resolve().parents[1]
TINY = tiny_overrides(64) + ["model.query.sgmg.spectrum_sigma=2.0"]
BOTH = ["model.query.sgmg.spectrum_fusion=true", "model.query.sgmg.multi_granularity=true",
        "loss.query.sgmg_coarse_mask=2", "loss.query.sgmg_coarse_dice=5"]


def build(*extra):
    return build_tiny(*extra, "model.query.sgmg.spectrum_sigma=2.0")


def clip_batch(b=2, t=2, size=64):
    g = torch.Generator().manual_seed(0)
    frames = torch.randn(b, t, 3, size, size, generator=g)
    masks = torch.zeros(b, t, size, size)
    masks[:, :, 8:32, 16:40] = 1
    boxes, valid = masks_to_boxes_cxcywh(masks)
    meta = [ClipMeta(f"v{i}", "0", [f"{j:05d}" for j in range(t)], (size, size)) for i in range(b)]
    return ClipBatch(frames, masks, valid, boxes, ["the small red circle", "a blue star"][:b], meta)


@pytest.fixture(scope="module")
def sgmg():
    return build(*BOTH)


@pytest.fixture(scope="module")
def base():
    return build()


# --------------------------------------------------------------------------- spectral filter
def test_the_damped_band_is_the_highest_frequencies():
    g = centre_gaussian(8, 10, 1.5, 1.5)
    assert g[4, 5] == 1 and g.argmax() == 4 * 10 + 5          # the Nyquist bin of an unshifted FFT
    assert g[0, 0] < 1e-3
    checker = ((torch.arange(8)[:, None] + torch.arange(10)[None]) % 2).float() * 2 - 1
    x = torch.stack([checker, torch.full((8, 10), 3.0)])[None]            # (1, 2, 8, 10)
    spectrum = torch.fft.fft2(x)
    passed = torch.fft.ifft2(damp_high_frequencies(spectrum, torch.zeros(1), g)).real
    torch.testing.assert_close(passed, x, atol=1e-5, rtol=0)              # strength 0: all pass
    damped = torch.fft.ifft2(damp_high_frequencies(spectrum, torch.ones(1), g)).real
    assert damped[0, 0].abs().max() < 1e-5                                # the checkerboard is gone
    torch.testing.assert_close(damped[0, 1], x[0, 1], atol=1e-3, rtol=0)  # the constant stays


def test_a_filter_whose_spectral_branch_is_zero_returns_its_input_exactly():
    f = SpectralFilter(8)
    x = torch.randn(2, 8, 5, 6)
    g = centre_gaussian(5, 6, 2.0, 2.0)
    assert not torch.equal(f(x, g), x)
    torch.nn.init.zeros_(f.mix[2].weight)
    torch.nn.init.zeros_(f.mix[2].bias)
    assert torch.equal(f(x, g), x)


def test_filter_strength_is_per_frame_and_the_gaussian_keeps_its_shape_across_levels():
    fusion = SpectrumFusion(8, 2, sigma=3.0)
    levels = [torch.randn(3, 8, 16, 12), torch.randn(3, 8, 8, 6)]
    g0, g1 = fusion.gaussians(levels)
    torch.testing.assert_close(g1, g0[::2, ::2])      # half the size: the same band, half as wide
    s = fusion.pre[0].strength(levels[0])
    assert s.shape == (3,) and ((s > 0) & (s < 1)).all() and s.unique().numel() == 3
    out = fusion.after_fusion(fusion.before_fusion(levels))
    assert [o.shape for o in out] == [x.shape for x in levels]


def test_the_sentence_changes_the_filter_after_the_fusion(sgmg):
    model, _ = sgmg
    model.eval()
    seen = {}
    hooks = [model.sgmg_spectrum.post[0].gate.register_forward_hook(
                 lambda m, i, o: seen.__setitem__("post", o.detach().clone())),
             model.sgmg_spectrum.pre[0].gate.register_forward_hook(
                 lambda m, i, o: seen.__setitem__("pre", o.detach().clone()))]
    frames = clip_batch(b=1).frames
    with torch.no_grad():
        model(frames, ["the small red circle"])
        first = dict(seen)
        model(frames, ["a big dog jumping over the fence"])
    for h in hooks:
        h.remove()
    torch.testing.assert_close(seen["pre"], first["pre"])        # before the fusion: vision only
    assert (seen["post"] - first["post"]).abs().max() > 1e-6


# --------------------------------------------------------------------------- segment and optimize
def test_the_optimizer_shares_each_frame_term_and_equals_convolving_the_concatenation():
    torch.manual_seed(0)
    opt = DetailOptimizer(2, channels8=5, channels4=3)
    patches, map8, map4 = torch.randn(2, 3, 4, 4, 6), torch.randn(2, 5, 4, 6), torch.randn(2, 3, 8, 12)
    out = opt(patches, map8, map4)
    assert out.shape == (2, 3, 16, 24)

    def stage(x, frame, convs):       # the definition: per query, conv of cat(masks, frame)
        cat = torch.cat([x, frame], 1)
        return x + convs[1](F.relu(convs[0](F.relu(cat))))

    expected = []
    for k in range(3):
        x = stage(patches[:, k], map8, opt.stage8)
        x = F.interpolate(x, size=(8, 12), mode="bilinear", align_corners=False)
        expected.append(F.pixel_shuffle(stage(x, map4, opt.stage4), 2)[:, 0])
    torch.testing.assert_close(out, torch.stack(expected, 1), atol=1e-5, rtol=1e-5)


def test_training_outputs_refined_and_coarse_masks_for_every_layer(sgmg):
    model, _ = sgmg
    model.train()
    out = model(clip_batch().frames, clip_batch().texts)
    for layer in [out, *out.aux]:
        assert layer.mask_logits.shape == (2, 2, 3, 64, 64)                  # stride 1
        assert layer.extras["sgmg_coarse_logits"].shape == (2, 2, 3, 32, 32)  # stride 2
    assert out.scores.shape == (2, 2, 3) and out.boxes.shape == (2, 2, 3, 4)
    assert model.mask_decoder is None and model.stride4_proj is None


def test_inference_refines_the_referred_query_only(sgmg):
    model, _ = sgmg
    batch = clip_batch()
    model.eval()
    with torch.no_grad():
        best = model(batch.frames, batch.texts)
        model.sgmg_head.refine = "all"
        try:
            every = model(batch.frames, batch.texts)
        finally:
            model.sgmg_head.refine = "best"
    assert every.mask_logits.shape == best.mask_logits.shape == (2, 2, 3, 64, 64)
    torch.testing.assert_close(select_referred(best), select_referred(every), atol=1e-5, rtol=1e-5)
    chosen = best.scores.sigmoid().mean(1).argmax(-1)
    other = (chosen[0] + 1) % 3
    upsampled = F.interpolate(best.extras["sgmg_coarse_logits"][0, :, other][:, None],
                              size=(64, 64), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(best.mask_logits[0, :, other], upsampled)
    assert not torch.allclose(every.mask_logits[0, :, other], upsampled, atol=1e-3)
    assert best.aux[0].mask_logits.shape == (2, 2, 3, 32, 32)     # earlier layers: coarse only


# --------------------------------------------------------------------------- whole model
def test_padded_word_features_do_not_change_the_output(sgmg):
    model, _ = sgmg
    model.eval()
    batch = clip_batch()
    texts = ["a cat", "the small red circle on the left of the big square"]
    encode = model.text_encoder.forward

    def noisy_padding(*args, **kwargs):
        feats = encode(*args, **kwargs)
        feats.words = torch.where(feats.padding_mask[..., None], torch.randn_like(feats.words) * 5,
                                  feats.words)
        return feats

    with torch.no_grad():
        clean = model(batch.frames, texts)
        model.text_encoder.forward = noisy_padding
        try:
            noisy = model(batch.frames, texts)
        finally:
            del model.text_encoder.forward
    torch.testing.assert_close(noisy.mask_logits, clean.mask_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(noisy.scores, clean.scores, atol=1e-4, rtol=1e-4)


def test_a_training_step_reaches_every_sgmg_parameter(sgmg):
    model, criterion = sgmg
    model.train()
    model.zero_grad()
    batch = clip_batch()
    losses = criterion(model(batch.frames, batch.texts), batch)
    assert {"sgmg_coarse_mask", "sgmg_coarse_dice", "sgmg_coarse_mask_0"} <= set(criterion.weights)
    weighted_total(losses, criterion.weights).backward()
    for part in (model.sgmg_spectrum, model.sgmg_head, model.mask_head):
        for name, p in part.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_switched_off_it_is_the_base_model(base):
    base, base_criterion = base
    off, off_criterion = build("model.query.sgmg.spectrum_fusion=false",
                               "model.query.sgmg.multi_granularity=false",
                               "loss.query.sgmg_coarse_mask=2")    # unused without the head
    assert off.state_dict().keys() == base.state_dict().keys()
    assert off.sgmg_spectrum is None and off.sgmg_head is None
    assert off_criterion.weights == base_criterion.weights
    base.eval(), off.eval()
    batch = clip_batch()
    with torch.no_grad():
        torch.testing.assert_close(off(batch.frames, batch.texts).mask_logits,
                                   base(batch.frames, batch.texts).mask_logits)


def test_spectrum_fusion_with_zeroed_filters_gives_the_base_output(base):
    base, _ = base
    scf, _ = build("model.query.sgmg.spectrum_fusion=true")
    missing, unexpected = scf.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("sgmg_spectrum.") for k in missing)
    for f in [*scf.sgmg_spectrum.pre, *scf.sgmg_spectrum.post]:
        torch.nn.init.zeros_(f.mix[2].weight)
        torch.nn.init.zeros_(f.mix[2].bias)
    base.eval(), scf.eval()
    batch = clip_batch()
    with torch.no_grad():
        a, b = scf(batch.frames, batch.texts), base(batch.frames, batch.texts)
    torch.testing.assert_close(a.mask_logits, b.mask_logits, atol=0, rtol=0)
    torch.testing.assert_close(a.scores, b.scores, atol=0, rtol=0)


# --------------------------------------------------------------------------- losses
def test_coarse_losses_score_the_coarse_masks_at_their_own_grid():
    target = torch.zeros(1, 2, 16, 16)
    target[..., 4:12, 6:14] = 1
    exact = (F.interpolate(target, size=(8, 8), mode="nearest-exact") * 2 - 1) * 8
    good = coarse_mask_losses(exact, target)
    shifted = coarse_mask_losses(exact.roll(3, -1), target)
    assert set(good) == {"sgmg_coarse_mask", "sgmg_coarse_dice"}
    assert good["sgmg_coarse_dice"] < 0.01 and good["sgmg_coarse_mask"] < 1e-3
    assert shifted["sgmg_coarse_dice"] > 0.3 and shifted["sgmg_coarse_mask"] > 10 * good["sgmg_coarse_mask"]


def test_the_criterion_supervises_the_matched_querys_coarse_masks_only():
    batch = clip_batch(b=1)
    masks = F.interpolate(batch.masks, size=(16, 16), mode="area")
    refined = torch.full((1, 2, 3, 16, 16), -6.0)
    refined[0, :, 1] = (masks[0] * 2 - 1) * 6              # query 1 is the referred object
    coarse = torch.zeros(1, 2, 3, 8, 8, requires_grad=True)
    out = RVOSOutput(mask_logits=refined, scores=torch.tensor([[[-4.0, 4.0, -4.0]] * 2]),
                     boxes=torch.where(torch.arange(3)[:, None] == 1, batch.boxes[0, 0], 0.5)
                     .expand(1, 2, 3, 4).clone(), extras={"sgmg_coarse_logits": coarse})
    weights = {"class": 2.0, "mask": 2.0, "dice": 5.0, "sgmg_coarse_mask": 2.0, "sgmg_coarse_dice": 5.0}
    losses = QueryCriterion(ClipMatcher(), weights)(out, batch)
    assert losses["sgmg_coarse_dice"] > 0.3
    weighted_total(losses, weights).backward()
    assert coarse.grad[0, :, 1].abs().sum() > 0
    assert coarse.grad[0, :, [0, 2]].abs().sum() == 0
    with pytest.raises(ValueError, match="unknown loss"):
        QueryCriterion(ClipMatcher(), {"sgmg_coarse": 1.0})


# --------------------------------------------------------------------------- configs
SGMG_CONFIGS = sorted(CONFIG_DIR.glob("sgmg_*.yaml"))


def test_the_sgmg_configs_exist():
    assert {c.stem for c in SGMG_CONFIGS} >= {"sgmg_synth", "sgmg_ytvos_video_swin_t",
                                              "sgmg_ytvos_video_swin_b"}


@pytest.mark.parametrize("path", SGMG_CONFIGS, ids=lambda p: p.stem)
def test_sgmg_configs_load_and_validate_with_both_modules_on(path):
    cfg = load_config(path)
    validate_query_config(cfg.model.query)
    s = cfg.model.query.sgmg
    assert s.spectrum_fusion and s.multi_granularity and s.patch_size == 4
    assert cfg.loss.query.sgmg_coarse_mask == cfg.loss.query.mask
    assert cfg.loss.query.sgmg_coarse_dice == cfg.loss.query.dice
    if "ytvos" in path.stem:
        q = cfg.model.query
        assert (q.dim, q.mask_dim, q.dynamic_layers, q.dynamic_channels) == (256, 256, 2, 16)
        assert s.spectrum_sigma == 7.0 and list(q.feature_strides) == [8, 16, 32, 64]


@pytest.mark.parametrize("override", [
    "model.query.sgmg.patch_size=0", "model.query.sgmg.refine=top", "model.query.sgmg.spectrum_sigma=0",
    "loss.query.sgmg_coarse_dice=-1"])
def test_bad_sgmg_values_are_one_line_errors_naming_the_key(override):
    with pytest.raises(RVOSError, match=override.split("=")[0].replace(".", r"\.")):
        load_config(None, TINY + [override])


@pytest.mark.parametrize("overrides, key", [
    (["model.query.sgmg.spectrum_fusion=true", "model.query.fusion=none"], "sgmg.spectrum_fusion"),
    (["model.query.sgmg.multi_granularity=true", "model.query.feature_strides=[4,8,16,32]"],
     "sgmg.multi_granularity")])
def test_modules_that_cannot_work_with_the_core_settings_are_refused(overrides, key):
    with pytest.raises(RVOSError, match=key):
        load_config(None, TINY + overrides)


def test_one_training_step_of_the_synthetic_config(monkeypatch):
    monkeypatch.chdir(REPO)      # the MobileNetV2 weights path is relative to the repo root
    cfg = load_config(CONFIG_DIR / "sgmg_synth.yaml",
                      ["model.query.backbone_weights=none", "model.query.enc_layers=1"])
    torch.manual_seed(0)
    model, criterion = build_model(cfg), build_criterion(cfg)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    batch = clip_batch(b=1, t=2, size=64)
    losses = criterion(model(batch.frames, batch.texts), batch)
    total = weighted_total(losses, criterion.weights)
    assert torch.isfinite(total)
    before = model.sgmg_head.optimizer.stage4[0].weight.detach().clone()
    total.backward()
    optimizer.step()
    assert not torch.equal(model.sgmg_head.optimizer.stage4[0].weight, before)
