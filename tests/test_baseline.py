import pytest
import torch

from rvos.config import BaselineConfig, Config, DenseLossConfig, ModelConfig, TextConfig
from rvos.errors import RVOSError
from rvos.losses import weighted_total
from rvos.models.backbones import ResNetBackbone
from rvos.models.baseline import build as baseline_build
from rvos.models.baseline.fusion import CrossModalAttentionLayer, coordinate_channels
from rvos.models.baseline.model import BaselineRVOS
from rvos.models.baseline.objective import DenseMaskCriterion
from rvos.models.baseline.temporal import Conv3dTemporalBlock
from rvos.models.build import build_criterion, build_model


def tiny_baseline(text_encoder, temporal_layers=1):
    return BaselineRVOS(ResNetBackbone(18), text_encoder, dim=32, heads=4, fusion_layers=1,
                        temporal_layers=temporal_layers)


def test_output_shapes_match_the_input(text_encoder):
    model = tiny_baseline(text_encoder)
    out = model(torch.randn(2, 3, 3, 64, 96), ["the red circle", "the leftmost square"])
    assert out.mask_logits.shape == (2, 3, 1, 64, 96)
    assert out.scores.shape == (2, 3, 1)
    assert out.boxes is None


def test_the_sentence_changes_the_mask(text_encoder):
    torch.manual_seed(0)
    model = tiny_baseline(text_encoder).eval()
    frames = torch.randn(1, 2, 3, 64, 64)
    a = model(frames, ["the red circle"]).mask_logits
    b = model(frames, ["the blue square moving to the right"]).mask_logits
    assert not torch.allclose(a, b)


def test_temporal_module_keeps_shape_and_carries_information_across_frames():
    block = Conv3dTemporalBlock(16).eval()
    x = torch.randn(1, 5, 16, 6, 6)
    y = block(x)
    assert y.shape == x.shape
    x2 = x.clone()
    x2[:, 0, :, 3, 3] += 5.0              # a local change in frame 0 ...
    changed = (block(x2) - y).abs()[0, 1].amax(0)   # ... reaches frame 1, at and near (3, 3)
    assert changed[3, 3] > 0


def test_fusion_ignores_padded_words():
    layer = CrossModalAttentionLayer(16, 4).eval()
    visual, words = torch.randn(1, 10, 16), torch.randn(1, 5, 16)
    pad = torch.tensor([[False, False, False, True, True]])
    out = layer(visual, words, pad)
    words2 = words.clone()
    words2[:, 3:] = 100.0
    assert torch.allclose(out, layer(visual, words2, pad), atol=1e-5)


def test_coordinate_channels_span_the_frame():
    c = coordinate_channels(4, 6, torch.device("cpu"))
    assert c.shape == (2, 4, 6)
    assert c[0, 0, 0] < 0 < c[0, 0, -1] and c[1, 0, 0] < 0 < c[1, -1, 0]


def test_a_few_steps_fit_a_single_clip(text_encoder):
    torch.manual_seed(0)
    model = tiny_baseline(text_encoder)
    crit = DenseMaskCriterion(DenseLossConfig())
    frames = torch.randn(1, 2, 3, 32, 32)
    masks = torch.zeros(1, 2, 32, 32)
    masks[:, :, 8:20, 10:22] = 1
    from rvos.data.batch import ClipBatch

    batch = ClipBatch(frames, masks, torch.ones(1, 2, dtype=torch.bool), torch.zeros(1, 2, 4),
                      ["the square"], [None])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(40):
        loss = weighted_total(crit(model(frames, batch.texts), batch), crit.weights)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]
    model.eval()
    pred = model(frames, batch.texts).mask_logits[:, :, 0] > 0
    iou = (pred & (masks > 0)).sum() / (pred | (masks > 0)).sum()
    assert iou > 0.7


def test_build_model_from_config():
    cfg = Config()
    cfg.model.baseline = BaselineConfig(dim=32, heads=2)
    model, criterion = build_model(cfg), build_criterion(cfg)
    assert isinstance(model, BaselineRVOS) and isinstance(criterion, DenseMaskCriterion)


def test_baseline_takes_the_offline_mobilenet_backbone_and_refuses_video_backbones(text_encoder, monkeypatch):
    monkeypatch.setattr(baseline_build, "TextEncoder", lambda *args: text_encoder)

    def config(backbone: str) -> Config:
        return Config(model=ModelConfig(baseline=BaselineConfig(backbone=backbone, dim=32), text=TextConfig()))

    model = baseline_build.build_baseline_model(config("mobilenet_v2"))
    assert model.backbone.channels == [24, 32, 96, 320]
    out = model(torch.randn(1, 2, 3, 64, 64), ["the red circle"])
    assert out.mask_logits.shape == (1, 2, 1, 64, 64)
    with pytest.raises(RVOSError, match="video backbone"):
        baseline_build.build_baseline_model(config("video_swin_t"))


def test_sentences_sharing_a_clip_get_the_masks_of_separate_copies(text_encoder):
    """One backbone pass per clip: clip_index gives the same masks as repeating the clip."""
    torch.manual_seed(0)
    model = tiny_baseline(text_encoder).eval()
    clips = torch.randn(2, 3, 3, 64, 64)
    texts = ["the red circle", "the leftmost square", "the star moving up"]
    clip_index = torch.tensor([1, 0, 1])
    shared = model(clips, texts, clip_index).mask_logits
    copies = model(clips[clip_index], texts).mask_logits
    assert shared.shape == (3, 3, 1, 64, 64)
    torch.testing.assert_close(shared, copies, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("clip_index, message", [
    (None, "3 sentences for a batch of 2 clips"),
    (torch.tensor([0, 1]), r"clip_index has shape \(2,\), expected \(3,\)"),
    (torch.tensor([0, 1, 2]), r"clip_index must lie in \[0, 2\)"),
])
def test_a_clip_index_that_does_not_fit_is_a_clear_error(text_encoder, clip_index, message):
    model = tiny_baseline(text_encoder).eval()
    with pytest.raises(ValueError, match=message):
        model(torch.randn(2, 1, 3, 32, 32), ["a", "b", "c"], clip_index)
