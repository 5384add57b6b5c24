"""Schema of the few-shot family's own parts (``model.fewshot``) and of its episodic data
and training (``data.fewshot``, ``train.fewshot``); see rvos/config.py for loading."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class CrossModalAffinityConfig:
    """The cross-modal affinity module over the support set (``model.fewshot``).

    ``affinity: false`` builds the same model without it: the support is ignored and the
    model is the track-grounding model trained on the base categories (the baseline).
    """

    affinity: bool = True
    key_dim: int = 128                # the official Q/K/V width
    heads: int = 1                    # the official affinity is single-head
    self_affinity: bool = True        # step A: query tracks attend to the query's tracks first
    dropout: float = 0.1              # on the attended values, as the official module
    # width of the silhouette projection of the shape affinity (an rvos addition, see
    # rvos.models.fewshot.affinity); 0: off, the paper's module alone. 64 measured below
    # CMA alone on the synthetic split (README, few-shot)
    shape_dim: int = 0


@dataclass
class FewShotDataConfig:
    """Which few-shot dataset and fold (``data.fewshot``); the pool is read from
    ``data.root``."""

    dataset: str = "synth"            # synth | mini-ytvos | mini-sailvos
    fold: int = 1                     # 1-based: this group's categories are novel
    shots: int = 5                    # K support samples per episode at evaluation
    eval_draws: int = 1               # support sets drawn per novel category (official: 1)
    eval_seed: int = 0


@dataclass
class FewShotTrainConfig:
    """Episodic training of the scorer and the affinity module (``train.fewshot``); the
    segmenter stage and the step/lr/batch settings are ``train.grounding``'s."""

    min_shots: int = 1                # each step draws K in [min_shots, data.fewshot.shots]
    # share of training queries whose category name is replaced by "object"
    # (rvos.data.fewshot.mask_category): the category must then come from the support, as a
    # novel category's unseen name must at evaluation
    category_word_dropout: float = 0.0
