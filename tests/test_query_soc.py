"""SOC (rvos/models/query/soc.py) in the query core: the video-level object clusters carry
the clip into every frame's predictions, the switch off is the base model, the word padding
is ignored, every SOC parameter trains, the video-level contrastive loss ranks as defined,
and SOC's configs load, validate and train."""

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from rvos.config import CONFIG_DIR, load_config
from rvos.data.batch import ClipBatch, ClipMeta, masks_to_boxes_cxcywh
from rvos.errors import RVOSError
from rvos.models.backbones import clip_features, torchvision_weights
from rvos.models.build import build_criterion, build_model
from rvos.models.query.build import validate_query_config
from rvos.models.query.criterion import same_referent, video_text_contrast
from rvos.models.query.soc import VideoObjectClusters
from rvos.models.text import TextFeatures

from tiny_query import (build_tiny as build, tiny_overrides,
                        train_step_leaves_no_parameter_without_gradient)

REPO = Path(__file__).resolve().parents[1]
TINY = tiny_overrides(64)
SOC_ON = ["model.query.soc.clusters=true", "model.query.soc.vision_text=true",
          "model.query.soc.enc_layers=1", "model.query.soc.dec_layers=2",
          "model.query.soc.ffn_dim=64", "loss.query.contrast=1.0"]



@pytest.fixture(scope="module")
def soc():
    return build(*SOC_ON)


def clip_batch(b=2, t=3, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    frames = torch.randn(b, t, 3, size, size, generator=g)
    masks = torch.zeros(b, t, size, size)
    masks[:, :, 8:32, 16:40] = 1
    masks[-1, -1] = 0
    boxes, valid = masks_to_boxes_cxcywh(masks)
    meta = [ClipMeta(f"v{i}", "0", [f"{j:05d}" for j in range(t)], (size, size), [1])
            for i in range(b)]
    texts = ["the small red circle moving to the left", "a star", "the blue square"][:b]
    return ClipBatch(frames, masks, valid, boxes, texts, meta)


def test_outputs_carry_video_embeddings_for_every_layer(soc):
    model, criterion = soc
    model.eval()
    with torch.no_grad():
        out = model(clip_batch().frames, clip_batch().texts)
    assert out.mask_logits.shape == (2, 3, 3, 16, 16) and out.boxes.shape == (2, 3, 3, 4)
    for layer in [out] + out.aux:
        assert layer.extras["soc_video_embed"].shape == (2, 3, 32)     # (B, Q, C)
        assert layer.extras["soc_text_embed"].shape == (2, 32)         # (B, C)
    assert not torch.equal(out.extras["soc_video_embed"], out.aux[0].extras["soc_video_embed"])
    assert {"contrast", "contrast_0"} <= set(criterion.weights)
    assert ((out.boxes >= 0) & (out.boxes <= 1)).all()


def test_video_clusters_carry_other_frames_into_each_frame(soc):
    """The base model decodes each frame on its own; SOC's clusters make frame 0's masks,
    scores and boxes depend on what happens in frame 2 (motion, temporal words)."""
    batch = clip_batch(b=1)
    moved = batch.frames.clone()
    moved[:, 2] = torch.randn_like(moved[:, 2])
    for model, depends in ((build()[0], False), (soc[0], True)):
        model.eval()
        with torch.no_grad():
            for head in model.decoder.box_heads:      # boxes start at the reference: let them move
                head.layers[-1].weight.normal_(std=0.1)
            a, b = model(batch.frames, batch.texts), model(moved, batch.texts)
        for field in ("mask_logits", "scores", "boxes"):
            x, y = getattr(a, field)[:, 0], getattr(b, field)[:, 0]
            assert torch.allclose(x, y, atol=1e-5) != depends, field


def test_clusters_at_zero_are_the_base_model_with_the_same_weights():
    model, _ = build(*SOC_ON)
    model.eval()
    batch = clip_batch()
    with torch.no_grad():
        model.soc.clusters.norm.weight.zero_()      # video embeddings 0: hs' = hs
        model.soc.clusters.norm.bias.zero_()
        with_soc = model(batch.frames, batch.texts)
        soc, model.soc = model.soc, None
        base = model(batch.frames, batch.texts)
        model.soc = soc
    for field in ("mask_logits", "scores", "boxes"):
        torch.testing.assert_close(getattr(with_soc, field), getattr(base, field))
    assert "soc_video_embed" not in base.extras


def test_padded_words_do_not_change_anything(soc, monkeypatch):
    model, _ = soc
    model.eval()
    batch = clip_batch()
    with torch.no_grad():
        clean = model(batch.frames, batch.texts)
        encode = model.text_encoder.forward

        def noisy(texts, device=None):
            text = encode(texts, device)
            assert text.padding_mask.any()            # the short sentence is padded
            words = text.words.clone()
            words[text.padding_mask] = torch.randn_like(words[text.padding_mask]) * 10
            return TextFeatures(words=words, padding_mask=text.padding_mask, sentence=text.sentence)

        monkeypatch.setattr(model.text_encoder, "forward", noisy)
        dirty = model(batch.frames, batch.texts)
    torch.testing.assert_close(dirty.mask_logits, clean.mask_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dirty.extras["soc_text_embed"], clean.extras["soc_text_embed"],
                               atol=1e-5, rtol=1e-5)


def test_every_soc_parameter_trains_in_a_step(soc):
    model, criterion = soc
    assert train_step_leaves_no_parameter_without_gradient(model, criterion, clip_batch()) == []
    assert all(p.grad.abs().sum() > 0 for p in model.soc.parameters())
    model.zero_grad(set_to_none=True)


def test_contrast_prefers_the_matched_query_over_other_queries_and_sentences():
    torch.manual_seed(0)
    b, q, c = 3, 4, 16
    text = torch.randn(b, c) * 4
    video = torch.randn(b, q, c)
    query = torch.tensor([1, 0, 3])
    aligned = video.clone()
    aligned[torch.arange(b), query] = text            # each positive points along its text
    misaligned = video.clone()
    misaligned[torch.arange(b), (query + 1) % q] = text  # another query of the clip does
    assert video_text_contrast(aligned, text, query) < video_text_contrast(video, text, query) \
        < video_text_contrast(misaligned, text, query)
    # other sentences' embeddings are negatives: sentence 0's text in clip 1 raises its loss
    rival = aligned.clone()
    rival[1, 2] = text[0]
    assert video_text_contrast(rival, text, query) > video_text_contrast(aligned, text, query)


def test_contrast_does_not_push_away_another_sentence_about_the_same_object():
    torch.manual_seed(0)
    text = torch.randn(2, 8) * 4
    video = torch.randn(2, 3, 8)
    query = torch.tensor([0, 2])
    video[0, 0], video[1, 2] = text[0], text[0]          # both sentences describe one object
    same = torch.tensor([[False, True], [True, False]])
    assert video_text_contrast(video, text, query, same) < video_text_contrast(video, text, query)
    batch = clip_batch(b=3)
    batch.meta[2] = replace(batch.meta[0], exp_id="1")   # a second sentence on v0's object 1
    assert same_referent(batch).tolist() == [[False, False, True], [False, False, False],
                                             [True, False, False]]


def test_clusters_refuse_a_query_count_they_were_not_built_for():
    clusters = VideoObjectClusters(16, 2, num_queries=3, enc_layers=1, dec_layers=1, ffn_dim=32)
    assert clusters(torch.randn(2, 4, 3, 16), torch.randn(2, 16)).shape == (2, 3, 16)
    with pytest.raises(ValueError, match="3 frame queries"):
        clusters(torch.randn(2, 4, 5, 16), torch.randn(2, 16))


@pytest.mark.parametrize("override,key", [
    ("loss.query.contrast=1.0", "loss.query.contrast"),
    ("model.query.soc.vision_text=true", "model.query.soc.vision_text"),
])
def test_soc_parts_without_the_clusters_are_clear_errors(override, key):
    with pytest.raises(RVOSError, match=key.replace(".", r"\.")):
        build(override)


@pytest.mark.parametrize("override,key", [
    ("model.query.soc.dec_layers=0", "model.query.soc.dec_layers"),
    ("loss.query.contrast=-1", "loss.query.contrast"),
])
def test_out_of_range_soc_values_name_their_key(override, key):
    with pytest.raises(RVOSError, match=key.replace(".", r"\.")):
        load_config(None, TINY + SOC_ON + [override])


@pytest.mark.parametrize("name", ["soc_synth", "soc_ytvos_video_swin_t", "soc_ytvos_video_swin_b"])
def test_soc_configs_load_and_validate(name):
    cfg = load_config(CONFIG_DIR / f"{name}.yaml")
    q = cfg.model.query
    validate_query_config(q)
    assert q.soc.clusters and q.soc.vision_text and cfg.loss.query.contrast > 0
    if q.backbone.startswith("video_swin"):
        import torchvision
        builder = {"video_swin_t": torchvision.models.video.swin3d_t,
                   "video_swin_b": torchvision.models.video.swin3d_b}[q.backbone]
        torchvision_weights(builder, q.backbone_weights)                  # a known name
        assert q.num_queries == 20 and cfg.data.num_frames == 8
    assert not Path(cfg.train.out_dir).is_absolute()


def test_soc_synth_config_trains_a_step(monkeypatch):
    monkeypatch.chdir(REPO)
    cfg = load_config(CONFIG_DIR / "soc_synth.yaml", ["model.query.backbone_weights=none"])
    torch.manual_seed(0)
    model, criterion = build_model(cfg), build_criterion(cfg)
    model.train()
    batch = clip_batch(b=2, t=2)
    losses = criterion(model(batch.frames, batch.texts), batch)
    total = sum(criterion.weights[k] * losses[k] for k in criterion.weights)
    total.backward()
    assert torch.isfinite(total) and "contrast" in losses
    assert model.soc.clusters.video_query_pos.weight.grad is not None


def test_the_contrastive_loss_alone_can_be_lowered():
    """At the official scaling (dot / C) the loss starts near log(B*Q); its own gradient
    must still move the text and video embeddings towards the matched pairs."""
    model, criterion = build(*SOC_ON)
    model.train()
    batch = clip_batch(t=2)
    with torch.no_grad():                            # backbone maps once: only the rest trains
        maps = clip_features(model.backbone, batch.frames)
    opt = torch.optim.Adam([p for n, p in model.named_parameters()
                            if p.requires_grad and not n.startswith("backbone.")], lr=2e-3)
    losses = []
    for _ in range(5):
        loss = criterion(model.forward_maps(maps, batch.texts, 2), batch)["contrast"]
        losses.append(float(loss.detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < losses[0] - 0.1


def test_a_weighted_contrast_needs_the_video_embeddings(soc):
    model, criterion = soc
    model.eval()
    batch = clip_batch(t=2)
    part, model.soc = model.soc, None                # the base model's output, no embeddings
    try:
        with torch.no_grad(), pytest.raises(ValueError, match="soc.clusters"):
            criterion(model(batch.frames, batch.texts), batch)
    finally:
        model.soc = part
