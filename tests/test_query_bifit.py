"""BIFIT in the query core: the words updated by vision seed the queries, the queries of a
clip's frames interact in the decoder, each switch off gives the base model, the configs."""

from pathlib import Path

import pytest
import torch
from torch import nn

from rvos.config import CONFIG_DIR, load_config
from rvos.data.batch import ClipBatch, ClipMeta, masks_to_boxes_cxcywh
from rvos.errors import RVOSError
from rvos.models.build import build_criterion, build_model
from rvos.models.query.bifit import InterFrameInteraction, VisionToWords
from rvos.models.text import TextFeatures

from tiny_query import build_tiny, tiny_overrides

REPO = Path(__file__).resolve().parents[1]
TINY = tiny_overrides(32)
BOTH = ["model.query.bifit.bidirectional=true", "model.query.bifit.inter_frame=true"]
BIDIRECTIONAL, INTER_FRAME = BOTH[:1], BOTH[1:]


def build(*extra):
    return build_tiny(*extra, size=32)


@pytest.fixture(scope="module")
def bifit():
    return build(*BOTH)


def clip_batch(b=2, t=2, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    frames = torch.randn(b, t, 3, size, size, generator=g)
    masks = torch.zeros(b, t, size, size)
    masks[:, :, 4:16, 8:20] = 1
    boxes, valid = masks_to_boxes_cxcywh(masks)
    meta = [ClipMeta(f"v{i}", "0", [f"{j:05d}" for j in range(t)], (size, size)) for i in range(b)]
    return ClipBatch(frames, masks, valid, boxes, ["the red circle", "the square on the left"][:b], meta)


def run(model, frames, texts):
    model.eval()
    with torch.no_grad():
        return model(frames, texts)


def test_output_shapes(bifit):
    model, _ = bifit
    assert isinstance(model.bifit_words, VisionToWords)
    assert isinstance(model.bifit_inter_frame, InterFrameInteraction)
    out = run(model, clip_batch().frames, clip_batch().texts)
    assert out.mask_logits.shape == (2, 2, 3, 8, 8)                # (B, T, Q, H/4, W/4)
    assert out.scores.shape == (2, 2, 3) and out.boxes.shape == (2, 2, 3, 4)
    assert len(out.aux) == 1 and torch.isfinite(out.mask_logits).all()


class FixedText(nn.Module):
    """A text encoder stand-in that returns given features (to control the padding)."""

    def __init__(self, features: TextFeatures, dim: int):
        super().__init__()
        self.features, self.dim, self.max_length = features, dim, 32

    def forward(self, texts, device=None):
        return self.features


@pytest.mark.parametrize("pool", ["first", "mean"])
def test_padded_words_change_nothing(pool):
    model, _ = build(*BOTH, f"model.query.bifit.sentence_pool={pool}")
    d = model.text_encoder.dim
    g = torch.Generator().manual_seed(1)
    words = torch.randn(2, 6, d, generator=g)
    padding = torch.zeros(2, 6, dtype=torch.bool)
    padding[0, 3:] = True                                # sentence 0 has 3 words, sentence 1 has 6
    sentence = torch.randn(2, d, generator=g)
    maps = [torch.randn(4, c, 32 // s, 32 // s, generator=g)
            for c, s in zip(model.backbone.channels, (4, 8, 16, 32))]
    model.eval()
    outputs = []
    for fill in (0.0, 7.0):
        changed = words.clone()
        changed[padding] = fill
        model.text_encoder = FixedText(TextFeatures(changed, padding, sentence), d)
        with torch.no_grad():
            outputs.append(model.forward_maps(maps, ["a", "b"], 2))
    torch.testing.assert_close(outputs[0].mask_logits, outputs[1].mask_logits)
    torch.testing.assert_close(outputs[0].scores, outputs[1].scores)


def test_a_training_step_reaches_every_bifit_parameter(bifit):
    model, criterion = bifit
    model.train()
    batch = clip_batch()
    losses = criterion(model(batch.frames, batch.texts), batch)
    sum(criterion.weights[k] * losses[k] for k in criterion.weights).backward()
    names = [n for n, _ in model.named_parameters() if n.startswith("bifit_")]
    assert any(n.startswith("bifit_words.") for n in names)
    assert any(n.startswith("bifit_inter_frame.") for n in names)
    dead = [n for n, p in model.named_parameters()
            if n.startswith("bifit_") and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert dead == []
    model.zero_grad(set_to_none=True)


def base_with_weights_of(model):
    """The base model (BIFIT off) holding ``model``'s weights: its parameters are exactly
    ``model``'s minus the bifit_* ones."""
    base, _ = build()
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("bifit_")}
    base.load_state_dict(state, strict=True)
    return base


def test_each_module_switched_off_is_the_base_model(bifit):
    model, _ = bifit
    batch = clip_batch()
    base = run(base_with_weights_of(model), batch.frames, batch.texts)
    assert not torch.allclose(run(model, batch.frames, batch.texts).scores, base.scores, atol=1e-4)
    words, inter = model.bifit_words, model.bifit_inter_frame
    try:
        model.bifit_words = None                          # inter-frame only: not the base
        assert not torch.allclose(run(model, batch.frames, batch.texts).scores, base.scores, atol=1e-4)
        model.bifit_words, model.bifit_inter_frame = words, None
        assert not torch.allclose(run(model, batch.frames, batch.texts).scores, base.scores, atol=1e-4)
        model.bifit_words = None                          # both off: the base exactly
        off = run(model, batch.frames, batch.texts)
    finally:
        model.bifit_words, model.bifit_inter_frame = words, inter
    torch.testing.assert_close(off.mask_logits, base.mask_logits)
    torch.testing.assert_close(off.scores, base.scores)


def test_gated_inter_frame_module_starts_as_the_base():
    model, _ = build(*INTER_FRAME, "model.query.bifit.inter_frame_gate=true")
    batch = clip_batch()
    base = run(base_with_weights_of(model), batch.frames, batch.texts)
    out = run(model, batch.frames, batch.texts)
    torch.testing.assert_close(out.mask_logits, base.mask_logits)
    with torch.no_grad():
        model.bifit_inter_frame.gate.fill_(1.0)
    assert not torch.allclose(run(model, batch.frames, batch.texts).scores, base.scores, atol=1e-4)


def frame_0_reaches_frame_2(model):
    """Whether changing frame 0 of a clip changes the predictions in its frame 2."""
    frames = clip_batch(b=1, t=3).frames
    changed = frames.clone()
    changed[0, 0] = torch.randn_like(changed[0, 0])
    a, b = run(model, frames, ["the red circle"]), run(model, changed, ["the red circle"])
    return not torch.allclose(a.scores[0, 2], b.scores[0, 2], atol=1e-5)


def test_the_switches_decide_whether_frames_exchange_information(bifit):
    model, _ = bifit
    words, inter = model.bifit_words, model.bifit_inter_frame
    try:
        model.bifit_words = model.bifit_inter_frame = None
        assert not frame_0_reaches_frame_2(model)          # the base decodes frames alone
        model.bifit_inter_frame = inter
        assert frame_0_reaches_frame_2(model)              # queries interact across frames
        model.bifit_words, model.bifit_inter_frame = words, None
        assert frame_0_reaches_frame_2(model)              # words read the whole clip and seed every frame
    finally:
        model.bifit_words, model.bifit_inter_frame = words, inter


def test_inter_frame_module_mixes_frames_within_a_clip_only():
    torch.manual_seed(0)
    module = InterFrameInteraction(16, 4, 32, 0.0).eval()
    queries = torch.randn(2 * 3, 5, 16)                     # 2 clips x 3 frames, 5 queries
    changed = queries.clone()
    changed[0] += 1.0                                       # clip 0, frame 0
    a, b = module(queries, num_frames=3), module(changed, num_frames=3)
    assert not torch.allclose(a[1:3], b[1:3])               # clip 0's other frames
    torch.testing.assert_close(a[3:], b[3:])                # clip 1 untouched


def test_words_updated_by_vision_depend_on_the_clip():
    torch.manual_seed(0)
    module = VisionToWords(16, 4, "multiply").eval()
    words = torch.randn(2, 4, 16)
    levels = [torch.randn(2 * 3, 16, 4, 4), torch.randn(2 * 3, 16, 2, 2)]
    updated = module.words(levels, words, clips=2)
    assert updated.shape == words.shape and not torch.allclose(updated, words)
    levels[0][0] += 1.0                                     # clip 0, frame 0, first level
    again = module.words(levels, words, clips=2)
    assert not torch.allclose(updated[0], again[0])
    torch.testing.assert_close(updated[1], again[1])


def test_one_training_step_of_the_synthetic_config(monkeypatch):
    monkeypatch.chdir(REPO)
    overrides = ["data.input_size=[32,32]", "data.num_frames=2"]
    cfg = load_config(CONFIG_DIR / "bifit_synth.yaml", overrides)
    if not (REPO / cfg.model.query.backbone_weights).is_file():
        cfg = load_config(CONFIG_DIR / "bifit_synth.yaml",
                          overrides + ["model.query.backbone_weights=none"])
    torch.manual_seed(0)
    model, criterion = build_model(cfg), build_criterion(cfg)
    model.train()
    batch = clip_batch(b=1, t=cfg.data.num_frames)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr)
    before = model.bifit_inter_frame.layers[0].self_attn.in_proj_weight.detach().clone()
    losses = criterion(model(batch.frames, batch.texts), batch)
    total = sum(criterion.weights[k] * losses[k] for k in criterion.weights)
    assert torch.isfinite(total)
    total.backward()
    optimizer.step()
    assert not torch.equal(before, model.bifit_inter_frame.layers[0].self_attn.in_proj_weight)


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("bifit_*.yaml")), ids=lambda p: p.stem)
def test_configs_load_validate_and_switch_bifit_on(path):
    cfg = load_config(path)
    from rvos.models.query.build import validate_query_config
    validate_query_config(cfg.model.query)
    assert cfg.model.kind == "query"
    assert cfg.model.query.bifit.bidirectional and cfg.model.query.bifit.inter_frame
    assert not Path(cfg.train.out_dir).is_absolute()


def test_the_expected_configs_exist():
    assert {"bifit_synth", "bifit_ytvos_resnet50"} <= {p.stem for p in CONFIG_DIR.glob("bifit_*.yaml")}


@pytest.mark.parametrize("override, key", [
    (["model.query.bifit.sentence_pool=max"], "model.query.bifit.sentence_pool"),
    (["model.query.bifit.inter_frame_layers=0"], "model.query.bifit.inter_frame_layers"),
    (["model.query.bifit.bidirectional=true", "model.query.fusion=none"], "model.query.bifit.bidirectional"),
])
def test_bad_values_are_one_line_errors_naming_the_key(override, key):
    with pytest.raises(RVOSError, match=key.replace(".", r"\.")) as info:
        build_model(load_config(None, TINY + override))
    assert "\n" not in str(info.value)
