import pytest
import torch

from rvos.errors import RVOSError
from rvos.models.text import TextEncoder


def test_minilm_word_and_sentence_features(text_encoder):
    feats = text_encoder(["the small green triangle", "the circle that stops halfway through"])
    assert text_encoder.dim == 384
    assert feats.words.shape[0] == 2 and feats.words.shape[2] == 384
    assert feats.sentence.shape == (2, 384)
    # the shorter sentence is padded; padding is marked and excluded from the mean
    assert feats.padding_mask[0].any() and not feats.padding_mask[1].any()
    keep = ~feats.padding_mask[0]
    assert torch.allclose(feats.sentence[0], feats.words[0][keep].mean(0), atol=1e-5)


def test_frozen_encoder_caches_and_gives_identical_features(text_encoder):
    a = text_encoder(["the red star"]).sentence
    assert "the red star" in text_encoder._cache
    b = text_encoder(["the red star", "a blue square"]).sentence[0]
    assert torch.allclose(a[0], b, atol=1e-6)
    assert not any(p.requires_grad for p in text_encoder.model.parameters())


def test_different_sentences_differ(text_encoder):
    s = text_encoder(["the red circle", "the blue square moving left"]).sentence
    assert torch.cosine_similarity(s[0], s[1], dim=0) < 0.99


def test_missing_encoder_folder_is_a_clear_error(tmp_path):
    with pytest.raises(RVOSError, match="text encoder"):
        TextEncoder(str(tmp_path / "no-such-bert"))


@pytest.mark.parametrize("name", ["bert-base-uncased", "roberta-base"])
def test_named_encoder_not_available_offline_says_what_to_do(name, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    try:
        encoder = TextEncoder(name)
    except RVOSError as e:
        assert name in str(e) and "minilm" in str(e)
    else:  # the user has it in the Hugging Face cache: then it must work like MiniLM
        assert encoder(["a red car"]).sentence.shape == (1, encoder.dim)


def test_memoised_features_do_not_depend_on_the_sentences_encoded_together():
    """A resumed run memoises its sentences in other company than the uninterrupted run did;
    the features (and so the trained weights) must be the same bits."""
    same_length = ["a green star moving up", "the small yellow cross below",
                   "the large red square left", "a blue circle that stops"]
    alone, together, reordered = TextEncoder(), TextEncoder(), TextEncoder()
    for text in same_length:
        alone([text])
    together(same_length)
    reordered(list(reversed(same_length[1:])) + ["an unrelated longer sentence here now"])
    reordered([same_length[0]])
    for text in same_length:
        assert torch.equal(alone._cache[text], together._cache[text])
        assert torch.equal(alone._cache[text], reordered._cache[text])
