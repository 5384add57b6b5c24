"""The assembled query-based model: contract shapes, per-frame behaviour, text
conditioning, freezing, config validation, a few training steps, the Predictor."""

import numpy as np
import pytest
import torch

from rvos.data.batch import ClipBatch, ClipMeta, masks_to_boxes_cxcywh
from rvos.errors import RVOSError
from rvos.inference import Predictor
from rvos.models.query.model import QueryRVOS

from tiny_query import build_tiny as build, train_step_leaves_no_parameter_without_gradient


@pytest.fixture(scope="module")
def tiny():
    return build()


def clip_batch(b=2, t=3, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    frames = torch.randn(b, t, 3, size, size, generator=g)
    masks = torch.zeros(b, t, size, size)
    masks[:, :, 8:32, 16:40] = 1
    masks[-1, -1] = 0                                # object absent in one frame
    boxes, valid = masks_to_boxes_cxcywh(masks)
    meta = [ClipMeta(f"v{i}", "0", [f"{j:05d}" for j in range(t)], (size, size)) for i in range(b)]
    texts = ["the small red circle", "the square on the left", "a blue star"][:b]
    return ClipBatch(frames, masks, valid, boxes, texts, meta)


def test_output_follows_the_model_contract(tiny):
    model, criterion = tiny
    assert isinstance(model, QueryRVOS)
    model.eval()
    batch = clip_batch()
    with torch.no_grad():
        out = model(batch.frames, batch.texts)
    assert out.mask_logits.shape == (2, 3, 3, 16, 16)            # (B, T, Q, H/4, W/4)
    assert out.scores.shape == (2, 3, 3)
    assert out.boxes.shape == (2, 3, 3, 4)
    assert ((out.boxes >= 0) & (out.boxes <= 1)).all()
    assert len(out.aux) == 1 and out.aux[0].mask_logits.shape == out.mask_logits.shape
    assert out.extras["reference_points"].shape == (2, 3, 3, 2)
    assert set(criterion.weights) == {"class", "bbox", "giou", "mask", "dice",
                                      "class_0", "bbox_0", "giou_0", "mask_0", "dice_0"}


def test_frames_are_decoded_with_the_same_queries(tiny):
    model, _ = tiny
    model.eval()
    frame = torch.randn(1, 1, 3, 64, 64)
    with torch.no_grad():
        out = model(frame.expand(1, 4, -1, -1, -1), ["the cat"])
    # identical frames -> identical per-frame predictions: query q means the same in every frame
    for t in range(1, 4):
        torch.testing.assert_close(out.mask_logits[0, t], out.mask_logits[0, 0])
        torch.testing.assert_close(out.scores[0, t], out.scores[0, 0])


def test_sentences_condition_the_predictions_and_clips_stay_independent(tiny):
    model, _ = tiny
    model.eval()
    batch = clip_batch(b=2)
    with torch.no_grad():
        a = model(batch.frames, ["the red circle", "the green square"])
        b = model(batch.frames, ["the red circle", "the moving star at the top"])
        alone = model(batch.frames[:1], ["the red circle"])
    torch.testing.assert_close(a.mask_logits[0], b.mask_logits[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(alone.scores[0], a.scores[0], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(a.mask_logits[1], b.mask_logits[1], atol=1e-4)
    with pytest.raises(ValueError, match="sentences"):
        model(batch.frames, ["only one"])


def test_every_trainable_parameter_gets_a_gradient(tiny):
    model, criterion = tiny
    assert train_step_leaves_no_parameter_without_gradient(model, criterion, clip_batch()) == []
    # the frozen text encoder is not trained
    assert not any(p.requires_grad for p in model.text_encoder.parameters())
    model.zero_grad(set_to_none=True)


def test_frozen_backbone_keeps_weights_and_statistics():
    model, _ = build("model.query.freeze_backbone=true")
    model.train()
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert not model.backbone.training and model.encoder.training
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    with torch.no_grad():
        model(clip_batch().frames, ["a", "b"])
    after = model.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)    # BN running stats too


def test_frozen_backbone_bn_trains_convs_only():
    model, _ = build("model.query.frozen_backbone_bn=true")
    model.train()
    bn = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bn and all(not m.training and not m.weight.requires_grad for m in bn)
    assert model.backbone.features[0][0].weight.requires_grad
    stats = bn[0].running_mean.clone()
    with torch.no_grad():
        model(clip_batch().frames, ["a", "b"])
    assert torch.equal(bn[0].running_mean, stats)


def test_stride_4_and_stride_64_levels():
    model, _ = build("model.query.feature_strides=[4,8,16,32,64]", "model.query.fusion=multiply",
                     "model.query.box_refine=false", "loss.query.aux=false")
    model.eval()
    with torch.no_grad():
        out = model(clip_batch(b=1, t=2).frames, ["x"])
    assert out.mask_logits.shape == (1, 2, 3, 16, 16)
    assert model.stride4_proj is None and len(model.input_proj) == 5


def test_video_swin_backbone_runs_whole_clips():
    model, _ = build("model.query.backbone=video_swin_t", "model.query.fusion=none")
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 2, 3, 32, 32), ["x"])
    assert out.mask_logits.shape == (1, 2, 3, 8, 8)


@pytest.mark.parametrize("override, key", [
    ("model.query.feature_strides=[16,8]", "feature_strides"),
    ("model.query.feature_strides=[8,64]", "feature_strides"),
    ("model.query.feature_strides=[8,12]", "feature_strides"),
    ("model.query.heads=5", "heads"),
    ("model.query.fusion=concat", "fusion"),
    ("model.query.num_queries=0", "num_queries"),
    ("model.query.backbone=vgg", "backbone"),
])
def test_invalid_settings_are_clear_errors(override, key):
    with pytest.raises(RVOSError, match=key):
        build(override)


def test_a_few_steps_fit_one_batch():
    model, criterion = build()
    model.train()
    batch = clip_batch(b=1, t=2)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    totals = []
    for _ in range(25):
        losses = criterion(model(batch.frames, batch.texts), batch)
        total = sum(criterion.weights[k] * losses[k] for k in criterion.weights)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        totals.append(total.item())
    assert totals[-1] < 0.6 * totals[0]


def test_the_predictor_uses_the_model_unchanged(tiny):
    model, _ = tiny
    predictor = Predictor(model, (64, 64), window=2)
    frames = [(f"{i:05d}", np.random.default_rng(i).integers(0, 255, (48, 80, 3), dtype=np.uint8))
              for i in range(5)]
    results = list(predictor.predict(iter(frames), ["the red circle", "the blue square"]))
    assert [r.name for r in results] == [n for n, _ in frames]
    assert results[0].probs.shape == (2, 48, 80)
    assert all(((r.probs >= 0) & (r.probs <= 1)).all() for r in results)


def test_sentences_sharing_a_clip_get_the_masks_of_separate_copies(tiny):
    model, _ = tiny
    clips = clip_batch(b=2).frames
    texts = ["the small red circle", "the square on the left", "a blue star"]
    clip_index = torch.tensor([0, 0, 1])
    model.eval()
    try:                                      # the module's shared model goes back to training mode
        with torch.no_grad():
            shared = model(clips, texts, clip_index)
            copies = model(clips[clip_index], texts)
    finally:
        model.train()
    torch.testing.assert_close(shared.mask_logits, copies.mask_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shared.scores, copies.scores, atol=1e-5, rtol=1e-5)
