"""The few-shot family's parts: the cross-modal affinity module (shapes, masks of padding,
gradients), the support batch, and the model without its module or its support being the
track-grounding model."""

import pytest
import torch

from rvos.config import load_config
from rvos.models.build import build_model
from rvos.models.fewshot.affinity import CrossModalAffinity, SupportBatch
from rvos.models.grounding.model import TrackGroundingModel, pad_tracks
from rvos.models.grounding.objective import grounding_loss
from rvos.models.grounding.tracks import GEOMETRY_DIM, TrackSet, track_set

D, TEXT = 40, 24


def _support(b=2, k=3, t=4, l=5, seed=0) -> SupportBatch:
    g = torch.Generator().manual_seed(seed)
    visible = torch.rand(b, k, t, generator=g) > 0.3
    visible[:, :, 0] = True
    padding = torch.zeros(b, k, l, dtype=torch.bool)
    padding[:, :, -2:] = True
    return SupportBatch(torch.randn(b, k, t, D, generator=g) * visible[..., None],
                        visible, torch.randn(b, k, l, TEXT, generator=g), padding)


def _query(b=2, n=4, l=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    valid = torch.ones(b, n, dtype=torch.bool)
    if b > 1:
        valid[1, -1] = False       # a padded track
    padding = torch.zeros(b, l, dtype=torch.bool)
    padding[0, -3:] = True
    return torch.randn(b, n, D, generator=g), valid, torch.randn(b, l, TEXT, generator=g), padding


@pytest.mark.parametrize("heads,self_affinity", [(1, True), (4, False)])
def test_affinity_shapes(heads, self_affinity):
    module = CrossModalAffinity(D, TEXT, 32, key_dim=16, heads=heads, self_affinity=self_affinity)
    evidence, logit = module(*_query(), _support())
    assert evidence.shape == (2, 4, 32) and logit.shape == (2, 4)
    assert torch.isfinite(evidence).all() and torch.isfinite(logit).all()


def test_padding_in_the_support_and_the_query_changes_nothing():
    module = CrossModalAffinity(D, TEXT, 32, key_dim=16, heads=2).eval()
    app, valid, words, padding = _query()
    support = _support()
    evidence, logit = module(app, valid, words, padding, support)
    # unseen support frames, padded words and padded query tracks hold anything
    noisy = SupportBatch(support.appearance + 50 * (~support.visible)[..., None],
                         support.visible,
                         support.words + 50 * support.padding[..., None], support.padding)
    app2 = app.clone()
    app2[~valid] = 99.0
    words2 = words + 50 * padding[..., None]
    evidence2, logit2 = module(app2, valid, words2, padding, noisy)
    assert torch.allclose(evidence[valid], evidence2[valid], atol=1e-5)
    assert torch.allclose(logit[valid], logit2[valid], atol=1e-5)


def test_a_track_like_the_support_can_be_told_apart():
    """The affinity statistics see how alike a track and the support are: two tracks that
    differ only in resembling the support get different logits."""
    torch.manual_seed(0)
    module = CrossModalAffinity(D, TEXT, 32, key_dim=16).eval()
    support = _support(b=1, k=2)
    app, valid, words, padding = _query(b=1, n=2)
    app[0, 0] = support.appearance[0, 0, 0]
    _, logit = module(app, valid, words, padding, support)
    assert not torch.allclose(logit[0, 0], logit[0, 1])


def test_a_one_episode_support_serves_every_sentence():
    module = CrossModalAffinity(D, TEXT, 32, key_dim=16).eval()
    app, valid, words, padding = _query()
    one = _support(b=1)
    both = SupportBatch(*(x.expand(2, *x.shape[1:]) for x in
                          (one.appearance, one.visible, one.words, one.padding)))
    a = module(app, valid, words, padding, one)
    b = module(app, valid, words, padding, both)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(ValueError):
        _support(b=3).expand(2)


# ----------------------------------------------------------------------------- the model

TINY = ["model.grounding.backbone_weights=none", "model.grounding.backbone_dtype=float32",
        "model.grounding.dim=32", "model.grounding.seg_dim=16", "model.grounding.refine_dim=8",
        "model.fewshot.key_dim=16"]


@pytest.fixture(scope="module")
def models():
    cfg = load_config("cma_synth", TINY)
    torch.manual_seed(0)
    with_module = build_model(cfg)
    torch.manual_seed(0)
    without = build_model(load_config("fewshot_baseline_synth", TINY))
    torch.manual_seed(0)
    grounding = build_model(load_config("grounding_synth", TINY[:5]))
    return with_module, without, grounding


def _tracks(n: int, t: int, d: int, seed: int) -> TrackSet:
    g = torch.Generator().manual_seed(seed)
    visible = torch.rand(n, t, generator=g) > 0.2
    geo = torch.rand(n, t, GEOMETRY_DIM, generator=g) * visible[..., None]
    return TrackSet(torch.randn(n, t, d, generator=g) * visible[..., None], geo, visible,
                    visible.float() * 30)


def test_without_module_or_support_it_is_the_grounding_model(models):
    with_module, without, grounding = models
    assert without.affinity is None and isinstance(without, TrackGroundingModel)
    assert without.state_dict().keys() == grounding.state_dict().keys()
    d = with_module.scorer.appearance_norm.normalized_shape[0]
    batch = pad_tracks([_tracks(3, 6, d, 0), _tracks(5, 6, d, 1)])
    words, padding = grounding.encode_text(["the red circle", "the square on the left"], "cpu")
    expected = grounding.scorer.eval()(batch, words, padding)
    support = with_module.support_batch([[_tracks(1, 6, d, 2)], [_tracks(1, 4, d, 3)]],
                                        [["a circle"], ["a square"]], torch.device("cpu"))
    assert torch.equal(without.eval().score(batch, words, padding, support), expected)
    with_module.scorer.load_state_dict(grounding.scorer.state_dict())
    assert torch.equal(with_module.eval().score(batch, words, padding, None), expected)
    assert not torch.allclose(with_module.score(batch, words, padding, support), expected)


def test_support_batch_pads_shots_and_frames(models):
    model = models[0]
    d = model.scorer.appearance_norm.normalized_shape[0]
    support = model.support_batch([[_tracks(1, 6, d, 0), _tracks(1, 4, d, 1)], [_tracks(1, 5, d, 2)]],
                                  [["a", "the red star"], ["a circle"]], torch.device("cpu"))
    assert support.appearance.shape[:3] == (2, 2, 6) and support.words.shape[:2] == (2, 2)
    assert not support.visible[0, 1, 4:].any() and not support.visible[1, 1].any()
    assert not support.padding[..., 0].any()       # every shot, padded or not, reads a key


def test_gradients_reach_every_trained_parameter(models):
    model = models[0].train()
    d = model.scorer.appearance_norm.normalized_shape[0]
    batch = pad_tracks([_tracks(3, 6, d, 0), _tracks(4, 6, d, 1)])
    words, padding = model.encode_text(["the red circle that moves up", "the star"], "cpu")
    support = model.support_batch([[_tracks(1, 6, d, 2), _tracks(1, 6, d, 3)], [_tracks(1, 6, d, 4)]],
                                  [["a circle", "a blue circle"], ["a star"]], torch.device("cpu"))
    target = torch.zeros_like(batch.valid)
    target[0, 1] = target[1, 2] = True
    model.zero_grad()
    grounding_loss(model.score(batch, words, padding, support), target).backward()
    for part in (model.scorer, model.affinity):
        missing = [n for n, p in part.named_parameters() if p.grad is None or not p.grad.abs().sum()]
        assert not missing, missing


def test_the_model_runs_on_frames_with_a_support_from_frames(models):
    model = models[0].eval()
    torch.manual_seed(0)
    frames = torch.randn(1, 3, 3, 32, 32)
    masks = torch.zeros(2, 3, 32, 32, dtype=torch.bool)
    masks[:, :, 8:20, 8:20] = True
    support = model.encode_support(torch.randn(2, 3, 3, 32, 32), masks, ["a circle", "the circle"])
    assert support.appearance.shape[:3] == (1, 2, 3) and support.visible.all()
    out = model(frames, ["the circle", "the square"], torch.zeros(2, dtype=torch.long), support)
    assert out.mask_logits.shape[:2] == (2, 3) and out.scores.shape[:2] == (2, 3)
    # the support tokens are the pooled appearance of the masked object
    maps = model.features(torch.randn(1, 3, 32, 32))
    tokens = track_set(maps, torch.randn(1, 3, 32, 32), masks[:1, :1]).appearance
    assert tokens.shape[-1] == support.appearance.shape[-1]


def test_mask_category_hides_the_category_name_only():
    from rvos.data.fewshot import mask_category

    assert mask_category("the red Hexagon left of the hexagons", "hexagon") == \
        "the red object left of the objects"
    assert mask_category("an earless  seal swimming", "earless_seal") == "an object swimming"
    assert mask_category("the cat near the category sign", "cat") == "the object near the category sign"
    assert mask_category("the dog", "cat") == "the dog"


def test_shape_affinity_compares_silhouettes_whatever_the_colour():
    """A track whose silhouette is one of the support's gets the highest shape affinity (1),
    whatever its other appearance channels; unseen support frames are ignored."""
    from rvos.models.grounding.tracks import SILHOUETTE

    sil, other = SILHOUETTE * SILHOUETTE, 16
    torch.manual_seed(0)
    module = CrossModalAffinity(other + sil, TEXT, 32, key_dim=16, shape_dim=8).eval()
    support_app = torch.randn(1, 2, 3, other + sil)
    visible = torch.tensor([[[True, True, False], [True, False, False]]])
    query = torch.randn(1, 3, other + sil)
    query[0, 0, -sil:] = support_app[0, 1, 0, -sil:]          # track 0: support 1's outline
    query[0, 0, :other] += 5.0                                # in another colour
    query[0, 2, -sil:] = support_app[0, 0, 2, -sil:]          # track 2: an UNSEEN frame's outline
    with torch.no_grad():
        stats = module.shape_affinity(query, support_app.flatten(1, 2), visible.flatten(1))
    assert stats.shape == (1, 3, 2)
    assert stats[0, 0, 0] == pytest.approx(1.0, abs=1e-5)
    assert stats[0, 2, 0] < 1 - 1e-3
    # and it reaches the outputs: a module with it has 2 more statistics than without
    words, padding = torch.randn(1, 4, TEXT), torch.zeros(1, 4, dtype=torch.bool)
    support = SupportBatch(support_app, visible, torch.randn(1, 2, 4, TEXT),
                           torch.zeros(1, 2, 4, dtype=torch.bool))
    evidence, logit = module(query, torch.ones(1, 3, dtype=torch.bool), words, padding, support)
    assert evidence.shape == (1, 3, 32) and logit.shape == (1, 3)
    assert module.logit.in_features == 2 + 2
