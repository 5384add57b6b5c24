"""Published-scale configs (rvos/configs/*_ytvos_*.yaml, *_a2d_*.yaml: every method's
config joins by its name) build with random weights without downloading anything, have
the published text encoder's size, and run a forward pass with the documented shapes.
Random-weight text encoders: architecture without weights, stand-in tokenizer, and the
real tokenizer required before trained weights are loaded."""

import socket

import pytest
import torch

from rvos.bench import published_configs
from rvos.config import load_config
from rvos.errors import RVOSError
from rvos.models.build import build_model
from rvos.models.text import SentenceTruncatedWarning, StandInTokenizer, TextEncoder

PUBLISHED_CONFIGS = published_configs()
# parameter counts of the published text encoders (their config.json, with the pooler)
TEXT_PARAMS = {"roberta-base": 124_645_632, "bert-base-uncased": 109_482_240, "minilm": 22_713_216}


@pytest.fixture
def no_download(monkeypatch):
    """Any network connection or weights download fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"a download was attempted: {args[1:] or kwargs}")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def test_the_published_configs_are_listed():
    names = {c.stem for c in PUBLISHED_CONFIGS}
    assert {"query_ytvos_resnet50", "query_ytvos_video_swin_t", "query_a2d_video_swin_t"} <= names
    assert not any("synth" in n for n in names)


@pytest.mark.parametrize("path", PUBLISHED_CONFIGS, ids=lambda p: p.stem)
def test_published_config_builds_with_random_weights_and_runs(path, no_download):
    cfg = load_config(path)
    torch.manual_seed(0)
    model = build_model(cfg, pretrained=False)
    params = sum(p.numel() for p in model.parameters())
    text = model.text_encoder
    text_params = sum(p.numel() for p in text.parameters())
    if cfg.model.text.name in TEXT_PARAMS:
        assert text_params == TEXT_PARAMS[cfg.model.text.name]
    assert params > text_params + 10_000_000          # a backbone and a transformer besides
    assert all(torch.isfinite(p).all() for p in model.parameters())
    model.eval()
    q = cfg.model.query.num_queries
    with torch.inference_mode():
        out = model(torch.randn(1, 2, 3, 64, 64), ["the man in a red shirt riding a bike"])
    side = 64 if cfg.model.query.sgmg.multi_granularity else 16   # SgMg refines to full size
    assert out.mask_logits.shape == (1, 2, q, side, side)
    assert out.scores.shape == (1, 2, q)
    assert out.boxes.shape == (1, 2, q, 4)
    assert torch.isfinite(out.mask_logits).all() and torch.isfinite(out.scores).all()


@pytest.mark.parametrize("name", ["roberta-base", "bert-base-uncased"])
def test_named_text_encoder_builds_from_its_architecture_offline(name, no_download):
    torch.manual_seed(0)
    enc = TextEncoder(name, max_length=8, pretrained=False)
    assert sum(p.numel() for p in enc.model.parameters()) == TEXT_PARAMS[name]
    assert enc.stand_in_tokenizer          # no tokenizer files on this machine
    with pytest.warns(SentenceTruncatedWarning):
        feats = enc(["the small green triangle on the left side of the frame", "a dog"])
    assert feats.words.shape == (2, 8, enc.dim) and enc.dim == 768   # cut to max_length
    assert feats.padding_mask[1].tolist() == [False] * 4 + [True] * 4   # <s> a dog </s>
    # the stand-in must not meet trained weights: the real tokenizer, or a clear error
    with pytest.raises(RVOSError, match=f"real tokenizer of text encoder '{name}'.*model.text.name"):
        enc.ensure_real_tokenizer()


def test_minilm_random_weights_keep_the_real_tokenizer(no_download):
    torch.manual_seed(0)
    enc = TextEncoder("minilm", pretrained=False)
    real = TextEncoder("minilm")
    assert not enc.stand_in_tokenizer
    assert enc.model.state_dict().keys() == real.model.state_dict().keys()
    assert not torch.equal(enc.model.embeddings.word_embeddings.weight,
                           real.model.embeddings.word_embeddings.weight)
    enc.ensure_real_tokenizer()            # nothing to do


def test_stand_in_tokenizer_gives_valid_stable_ids():
    tok = StandInTokenizer(vocab_size=50265, first=0, last=2, pad=1)
    a = tok(["The dog, on the left.", "a cat"], padding=True, return_tensors="pt")
    assert a["input_ids"].shape == (2, 9) and a["attention_mask"].sum(1).tolist() == [9, 4]
    ids = a["input_ids"][0].tolist()
    assert ids[0] == 0 and ids[-1] == 2 and all(3 <= i < 50265 for i in ids[1:-1])
    assert a["input_ids"][1].tolist()[-5:] == [1] * 5                 # padding id
    assert tok(["the dog"])["input_ids"][0][1] == ids[1]              # "The" == "the"
    assert len(tok(["one two three four"], truncation=True, max_length=4)["input_ids"][0]) == 4


def test_unknown_text_encoder_without_config_is_a_clear_error(no_download):
    with pytest.raises(RVOSError, match="no architecture known offline.*model.text.name=<folder"):
        TextEncoder("someone/unknown-encoder", pretrained=False)
