"""The few-shot track-grounding model: the track-grounding model whose scorer also sees what
each track shares with a support set of annotated samples of the query's category.

    query clip ──► tracks ───────────────────────────┐
    query sentence ──────────────────────────────────┤
    support clips + masks ──► the referred objects ──┼─► cross-modal affinity ─► evidence
    support sentences ───────────────────────────────┘                              │
                                            scorer(tracks, sentence, evidence) ◄────┘

Without the affinity module (``model.fewshot.affinity: false``) or without a support set
the model is exactly the track-grounding model.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rvos.models.fewshot.affinity import CrossModalAffinity, SupportBatch
from rvos.models.grounding.config import TrackGroundingConfig
from rvos.models.grounding.model import TrackGroundingModel, pad_tracks
from rvos.models.grounding.scorer import TrackBatch, TrackScorer
from rvos.models.grounding.segmenter import InstanceSegmenter
from rvos.models.grounding.tracks import TrackSet, track_set
from rvos.models.outputs import RVOSOutput
from rvos.models.text import TextEncoder


class FewShotGroundingModel(TrackGroundingModel):
    """frames (C, T, 3, H, W) + B sentences (+ clip_index) + a support set (a
    :class:`SupportBatch` of B episodes, or of one shared by all sentences; None: ignored)
    -> :class:`RVOSOutput` as :class:`TrackGroundingModel`'s."""

    def __init__(self, backbone: nn.Module, text: TextEncoder, segmenter: InstanceSegmenter,
                 scorer: TrackScorer, affinity: CrossModalAffinity | None, cfg: TrackGroundingConfig):
        super().__init__(backbone, text, segmenter, scorer, cfg)
        self.affinity = affinity

    def score(self, batch: TrackBatch, words: Tensor, padding: Tensor,
              support: SupportBatch | None) -> Tensor:
        """Track logits (B, N) of B sentences, with the support's evidence when there is an
        affinity module and a support."""
        if self.affinity is None or support is None:
            return self.scorer(batch, words, padding)
        evidence, logit = self.affinity(batch.appearance, batch.valid, words, padding, support)
        return self.scorer(batch, words, padding, evidence) + logit

    def support_batch(self, objects: list[list[TrackSet]], texts: list[list[str]],
                      device: torch.device) -> SupportBatch:
        """B episodes of K_b support samples each: the referred object of each sample as a
        one-track :class:`TrackSet` and its sentence -> a :class:`SupportBatch` padded to the
        most shots and frames."""
        b = len(objects)
        k = max(len(shots) for shots in objects)
        t = max(s.appearance.shape[1] for shots in objects for s in shots)
        d = objects[0][0].appearance.shape[-1]
        flat = [x for shots in texts for x in shots]
        words, padding = self.encode_text(flat, device)
        appearance = torch.zeros(b, k, t, d, device=device)
        visible = torch.zeros(b, k, t, dtype=torch.bool, device=device)
        all_words = words.new_zeros(b, k, *words.shape[1:])
        all_padding = torch.ones(b, k, words.shape[1], dtype=torch.bool, device=device)
        row = 0
        for i, shots in enumerate(objects):
            for j, s in enumerate(shots):
                ts = s.appearance.shape[1]
                appearance[i, j, :ts] = s.appearance[0]
                visible[i, j, :ts] = s.visible[0]
                all_words[i, j] = words[row]
                all_padding[i, j] = padding[row]
                row += 1
        # a padded shot reads one (zero) word rather than none: attention needs a key (a
        # real sentence's first token is never padding)
        all_padding[..., 0] = False
        return SupportBatch(appearance, visible, all_words, all_padding)

    @torch.no_grad()
    def encode_support(self, frames: Tensor | list[Tensor], masks: Tensor | list[Tensor],
                       texts: list[str]) -> SupportBatch:
        """One episode's support from its clips: frames (K, T, 3, H, W) ImageNet-normalised,
        masks (K, T, H, W) bool (the referred object), K sentences -> a one-episode
        :class:`SupportBatch`. Clips of different lengths come as lists of (T_k, 3, H, W)
        and (T_k, H, W)."""
        shots = []
        for clip, mask in zip(frames, masks):
            maps = self.features(clip)
            shots.append(track_set(maps, clip, mask[None]).without_masks())
        return self.support_batch([shots], [list(texts)], frames[0].device)

    def forward(self, frames: Tensor, texts: list[str], clip_index: Tensor | None = None,
                support: SupportBatch | None = None) -> RVOSOutput:
        sets, clip_of, seg = self.clip_tracks(frames, len(texts), clip_index)
        words, padding = self.encode_text(texts, frames.device)
        batch = pad_tracks([sets[ci] for ci in clip_of])
        return self.output(sets, clip_of, seg, batch, self.score(batch, words, padding, support))
