"""Which track does a sentence refer to? A sentence-conditioned scorer over the tracks of a
clip.

The design follows what referring expressions need (cf. MAttNet, Yu et al. 2018, and
Relation Networks, Santoro et al. 2017):

* word read-outs: a few learned queries attend over the words, so the subject ("the small
  red circle"), a place ("leftmost"), a relation and its anchor ("above the blue square")
  and a motion ("that stops halfway") can each be read separately;
* word-by-word matching (:class:`WordMatch`) of the track's attribute views
  (:class:`AttributeViews`: colour, outline and size each embedded on its own, plus a
  linear view of the whole appearance), summed over the words, so that attributes learned
  apart compose (a colour-shape pair never seen in training);
* per track: appearance (frozen features pooled over its masks) and a temporal encoding of
  its trajectory (position, size, velocity and visibility frame by frame, with the time in
  the clip), so motion and temporal expressions see how the track changes;
* pairwise reasoning: every pair of tracks is compared with explicit relative geometry
  (offsets over the frames where both are seen), and each track gathers the max and mean
  over the others, so "leftmost" (no other such object further left) and "above the X"
  (some X below it) are one step of reasoning each.

The output is one logit per track; softmax over a clip's tracks gives the probability that
each is the referred object.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rvos.models.grounding.tracks import GEOMETRY_DIM, SILHOUETTE

PAIR_DIM = 9


@dataclass
class TrackBatch:
    """B sentences, each with the N (padded) tracks of its clip over T frames.

    appearance (B, N, D); geometry (B, N, T, GEOMETRY_DIM); visible (B, N, T) bool;
    valid (B, N) bool (False for padding).
    """

    appearance: Tensor
    geometry: Tensor
    visible: Tensor
    valid: Tensor


def _mlp(cin: int, dim: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(cin, dim), nn.ReLU(inplace=True), nn.Linear(dim, cout))


def pair_geometry(geometry: Tensor, visible: Tensor) -> Tensor:
    """(B, N, T, G), (B, N, T) -> (B, N, N, PAIR_DIM) for (i, j): over the frames where both
    are visible, the mean, min and max of x_j - x_i and the mean, min and max of y_j - y_i,
    the share of i's frames that j shares, j's and i's mean size ratio (log), and the mean
    distance."""
    both = visible[:, :, None] & visible[:, None, :]                         # (B, N, N, T)
    n_both = both.sum(-1).clamp(min=1)
    d = geometry[:, None, :, :, :2] - geometry[:, :, None, :, :2]             # (B, N, N, T, 2)
    on = both[..., None]
    mean = (d * on).sum(-2) / n_both[..., None]
    big = torch.finfo(d.dtype).max / 4
    dmin = torch.where(on, d, big).amin(-2)
    dmax = torch.where(on, d, -big).amax(-2)
    any_both = both.any(-1, keepdim=True)
    dmin, dmax = dmin * any_both, dmax * any_both
    share = both.sum(-1) / visible.sum(-1).clamp(min=1)[:, :, None]
    size = geometry[..., 2].sum(-1) / visible.sum(-1).clamp(min=1)           # (B, N)
    ratio = torch.log((size[:, None, :] + 1e-3) / (size[:, :, None] + 1e-3))
    dist = (d.norm(dim=-1) * both).sum(-1) / n_both
    return torch.cat([mean, dmin, dmax, share[..., None], ratio[..., None], dist[..., None]], -1)


def track_size(geometry: Tensor, visible: Tensor) -> Tensor:
    """(B, N, T, G), (B, N, T) -> (B, N, 8): mean and max over the visible frames of the
    size columns (sqrt area, box width, box height, log area); the max is what an occlusion
    does not shrink."""
    size = geometry[..., 2:6]
    vis = visible[..., None].to(size.dtype)
    mean = (size * vis).sum(2) / vis.sum(2).clamp(min=1)
    return torch.cat([mean, (size * vis).amax(2)], -1)


class AttributeViews(nn.Module):
    """What the word match sees of a track: appearance (B, N, D), its layer-normed copy,
    geometry (B, N, T, G), visible (B, N, T) -> (B, N, dim).

    The mean colour, the silhouette and the size (:func:`track_size`) each go through their
    own small MLP, and a linear view of the whole (normalised) appearance is added. Each MLP
    sees one attribute only, so the view of a colour-shape pair never seen together is the
    sum of views learned apart; the MLPs (rather than linear maps) let a word pick a band of
    an attribute ("medium" between "small" and "big", "orange" between "red" and "yellow"),
    which a linear score of the size or the colour cannot. Measured on the synthetic
    benchmark: held-out-pair attribute pick accuracy with true tracks 0.889 (linear colour
    and size) -> 0.931.

    The appearance layout is :func:`~rvos.models.grounding.tracks.pool_objects`': pooled
    maps, then the mean colour (3), then the silhouette (SILHOUETTE ** 2).
    """

    def __init__(self, appearance_dim: int, dim: int):
        super().__init__()
        self.silhouette_dim = SILHOUETTE * SILHOUETTE
        self.linear = nn.Linear(appearance_dim, dim)
        self.colour = _mlp(3, dim // 2, dim)
        self.outline = _mlp(self.silhouette_dim, dim, dim)
        self.size = _mlp(8, dim, dim)

    def forward(self, appearance: Tensor, normed: Tensor, geometry: Tensor,
                visible: Tensor) -> Tensor:
        s = self.silhouette_dim
        return (self.linear(normed) + self.colour(appearance[..., -s - 3:-s])
                + self.outline(appearance[..., -s:]) + self.size(track_size(geometry, visible)))


class WordRoles(nn.Module):
    """words (B, L, D), padding (B, L) bool -> (B, R, D): R learned attention read-outs."""

    def __init__(self, dim: int, roles: int):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(roles, dim) * dim ** -0.5)
        self.key = nn.Linear(dim, dim)

    def forward(self, words: Tensor, padding: Tensor) -> Tensor:
        logits = torch.einsum("rd,bld->brl", self.queries, self.key(words))
        logits = logits.masked_fill(padding[:, None, :], float("-inf"))
        return torch.einsum("brl,bld->brd", logits.softmax(-1), words)


class WordMatch(nn.Module):
    """Per-word matching of the tracks' appearance: words (B, L, d), padding (B, L),
    appearance embeddings (B, N, d) -> (B, N, H) scores, one per head.

    Each head weighs the words (a learned, word-dependent attention: one head can read the
    subject's words, another the anchor's) and sums word-by-word bilinear matches with the
    appearance. A sum over words is a product of experts over attributes, so a colour and a
    shape learned apart also match a colour-shape pair never seen together (the
    compositional split).
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.weight = nn.Linear(dim, heads)
        self.word = nn.Linear(dim, dim * heads)
        self.track = nn.Linear(dim, dim * heads)

    def forward(self, words: Tensor, padding: Tensor, appearance: Tensor) -> Tensor:
        b, l, d = words.shape
        n = appearance.shape[1]
        attn = self.weight(words).masked_fill(padding[..., None], float("-inf")).softmax(1)  # (B, L, H)
        w = self.word(words).view(b, l, self.heads, d)
        a = self.track(appearance).view(b, n, self.heads, d)
        match = torch.einsum("blhd,bnhd->bnlh", w, a) / d ** 0.5                  # (B, N, L, H)
        return (match * attn[:, None]).sum(2)


class TrajectoryEncoder(nn.Module):
    """geometry (B, N, T, G), visible (B, N, T) -> (B, N, dim): per-frame [geometry,
    velocity, time in the clip] through two temporal convolutions, then masked mean and
    max over the visible frames."""

    def __init__(self, dim: int):
        super().__init__()
        self.inp = nn.Linear(GEOMETRY_DIM + 2 + 1, dim)
        self.convs = nn.ModuleList(nn.Conv1d(dim, dim, 3, padding=1) for _ in range(2))
        self.out = nn.Linear(2 * dim, dim)

    def forward(self, geometry: Tensor, visible: Tensor) -> Tensor:
        b, n, t, _ = geometry.shape
        vis = visible.float()
        step_ok = vis[..., 1:] * vis[..., :-1]
        velocity = (geometry[..., 1:, :2] - geometry[..., :-1, :2]) * step_ok[..., None]
        velocity = torch.cat([velocity[..., :1, :], velocity], -2) * (t - 1)  # per clip length
        time = torch.linspace(-1, 1, t, device=geometry.device).expand(b, n, t)[..., None]
        x = self.inp(torch.cat([geometry, velocity, time], -1)).flatten(0, 1).transpose(1, 2)
        mask = vis.flatten(0, 1)[:, None]                                    # (BN, 1, T)
        for conv in self.convs:
            x = torch.relu(conv(x * mask)) + x
        x = x.transpose(1, 2)                                                # (BN, T, dim)
        m = mask.transpose(1, 2)
        mean = (x * m).sum(1) / m.sum(1).clamp(min=1)
        top = x.masked_fill(m == 0, -1e4).amax(1) * (m.sum(1) > 0)
        return self.out(torch.cat([mean, top], -1)).view(b, n, -1)


class RelationLayer(nn.Module):
    """h (B, N, d), pairs (B, N, N, d) embedded pair geometry, valid (B, N), sentence (B, d)
    -> h updated with what each track finds among the others (max and mean over j of an MLP
    of [h_i, h_j, pair_ij], both tracks modulated by the sentence)."""

    def __init__(self, dim: int):
        super().__init__()
        self.film = nn.Linear(dim, 2 * dim)
        # the pair MLP's first layer on [g_i, g_j, pair_ij], split by input so that the
        # per-track parts are computed once per track rather than once per pair
        self.from_i = nn.Linear(dim, dim)
        self.from_j = nn.Linear(dim, dim, bias=False)
        self.pair_out = nn.Linear(dim, dim)
        self.merge = nn.Linear(2 * dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, h: Tensor, pairs: Tensor, valid: Tensor, sentence: Tensor) -> Tensor:
        scale, shift = self.film(sentence)[:, None].chunk(2, -1)
        g = h * (1 + scale) + shift
        n = h.shape[1]
        hidden = self.from_i(g)[:, :, None] + self.from_j(g)[:, None, :] + pairs
        e = self.pair_out(torch.relu(hidden))                                # (B, N, N, d)
        others = valid[:, None, :] & ~torch.eye(n, dtype=torch.bool, device=h.device)
        m = others[..., None]
        top = e.masked_fill(~m, -1e4).amax(2) * others.any(-1, keepdim=True)
        mean = (e * m).sum(2) / m.sum(2).clamp(min=1)
        return self.norm(h + self.merge(torch.cat([top, mean], -1)))


class TrackScorer(nn.Module):
    """tracks (:class:`TrackBatch`) + words (B, L, text_dim), padding (B, L) -> logits (B, N)
    (-inf at padded tracks). ``evidence`` (B, N, dim), optional: what another module knows
    about each track (the few-shot family's support affinity), added to the track states
    before the sentence conditions them."""

    def __init__(self, appearance_dim: int, text_dim: int, dim: int = 128, heads: int = 4,
                 relation_layers: int = 2, roles: int = 4, dropout: float = 0.0):
        super().__init__()
        self.words = nn.Sequential(nn.Linear(text_dim, dim), nn.LayerNorm(dim))
        self.roles = WordRoles(dim, roles)
        self.condition = nn.Linear(roles * dim, dim)
        self.appearance_norm = nn.LayerNorm(appearance_dim)
        self.appearance = _mlp(appearance_dim, dim, dim)
        self.attributes = AttributeViews(appearance_dim, dim)     # what the word match sees
        self.word_match = WordMatch(dim, roles)
        self.from_match = nn.Linear(roles, dim)
        self.trajectory = TrajectoryEncoder(dim)
        self.film = nn.Linear(dim, 2 * dim)
        self.cross = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.pairs = _mlp(PAIR_DIM, dim, dim)
        self.relations = nn.ModuleList(RelationLayer(dim) for _ in range(relation_layers))
        self.read_out = _mlp(2 * dim, dim, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, tracks: TrackBatch, words: Tensor, padding: Tensor,
                evidence: Tensor | None = None) -> Tensor:
        w = self.words(words)                                               # (B, L, d)
        roles = self.roles(w, padding)                                      # (B, R, d)
        sentence = self.condition(roles.flatten(1))                         # (B, d)
        raw = self.dropout(self.appearance_norm(tracks.appearance))
        match = self.word_match(w, padding, self.attributes(tracks.appearance, raw,
                                                            tracks.geometry, tracks.visible))
        h = (self.appearance(raw) + self.trajectory(tracks.geometry, tracks.visible)
             + self.from_match(match))                                      # (B, N, d)
        if evidence is not None:
            h = h + evidence
        scale, shift = self.film(sentence)[:, None].chunk(2, -1)
        h = h * (1 + scale) + shift
        h = self.norm(h + self.cross(h, w, w, key_padding_mask=padding, need_weights=False)[0])
        h = self.dropout(h)
        pairs = self.pairs(pair_geometry(tracks.geometry, tracks.visible))
        for layer in self.relations:
            h = layer(h, pairs, tracks.valid, sentence)
        logits = self.read_out(torch.cat([h, sentence[:, None].expand_as(h)], -1))[..., 0]
        logits = logits + match[..., 0]             # head 0 reads the subject straight out
        return logits.masked_fill(~tracks.valid, float("-inf"))
