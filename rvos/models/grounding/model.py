"""The object-centric track-grounding model: a frozen backbone, a class-agnostic instance
segmenter, track linking, and a sentence-conditioned track scorer.

    frames ──frozen backbone──► maps ──segmenter──► objects per frame ──link──► tracks
    sentence ──frozen text encoder──► words ──┐                                  │
                                             └──────── scorer ◄── track tokens ◄─┘
                                                          │
                               one logit per track; the chosen track's masks are the answer

Only the segmenter and the scorer learn, and both learn from cached backbone features
(``rvos.models.feature_cache``), so a training step never runs the backbone.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rvos.models.feature_cache import backbone_forward
from rvos.models.grounding.config import TrackGroundingConfig
from rvos.models.grounding.scorer import TrackBatch, TrackScorer
from rvos.models.grounding.segmenter import InstanceSegmenter, SegmenterOutput, group_instances
from rvos.models.grounding.tracks import TrackSet, link_tracks, pool_objects, track_set
from rvos.models.outputs import RVOSOutput
from rvos.models.sharing import frame_index_for
from rvos.models.text import TextEncoder
from rvos.precision import backbone_dtype

BACKGROUND_LOGIT = -20.0


def pad_tracks(sets: list[TrackSet]) -> TrackBatch:
    """Tracks of B clips (Q_b tracks over T_b frames each) -> a :class:`TrackBatch` padded to
    N = max Q_b tracks and T = max T_b frames (padding is invisible and invalid)."""
    n = max(1, max(len(s) for s in sets))
    t = max(s.geometry.shape[1] for s in sets)
    first = sets[0]
    d, g = first.appearance.shape[2], first.geometry.shape[2]
    device = first.appearance.device
    app = torch.zeros(len(sets), n, d, device=device)
    geo = torch.zeros(len(sets), n, t, g, device=device)
    vis = torch.zeros(len(sets), n, t, dtype=torch.bool, device=device)
    valid = torch.zeros(len(sets), n, dtype=torch.bool, device=device)
    for b, s in enumerate(sets):
        q, tb = len(s), s.geometry.shape[1]
        if q:
            app[b, :q] = s.mean_appearance
            geo[b, :q, :tb] = s.geometry
            vis[b, :q, :tb] = s.visible
            valid[b, :q] = True
    return TrackBatch(app, geo, vis, valid)


class TrackGroundingModel(nn.Module):
    """frames (C, T, 3, H, W) ImageNet-normalised + B sentences (+ clip_index (B,)) ->
    :class:`RVOSOutput` with one query per track: mask_logits (B, T, Q, H, W) (the
    segmenter's foreground logit inside the track's masks, its (negative) logit on the
    background, ``BACKGROUND_LOGIT`` on other tracks' pixels),
    scores (B, T, Q) (the logit of the track's probability of being the referred one, the
    same in every frame; Q = the most tracks of any clip, padding scored -1e4)."""

    def __init__(self, backbone: nn.Module, text: TextEncoder, segmenter: InstanceSegmenter,
                 scorer: TrackScorer, cfg: TrackGroundingConfig):
        super().__init__()
        self.backbone = backbone.requires_grad_(False).eval()
        self.text = text
        self.segmenter = segmenter
        self.scorer = scorer
        self.cfg = cfg

    def train(self, mode: bool = True) -> "TrackGroundingModel":
        super().train(mode)
        self.backbone.eval()               # frozen: BatchNorm statistics stay as trained
        return self

    @torch.no_grad()
    def features(self, frames: Tensor) -> list[Tensor]:
        """frames (N, 3, H, W) -> the backbone's maps [(N, C_i, h_i, w_i)] float32, computed
        as the feature cache computes them, rounded to the cache's float16."""
        dtype = backbone_dtype(self.cfg.backbone_dtype, frames.device)
        maps = backbone_forward(self.backbone, frames, dtype)
        return [m.half().float() for m in maps]

    def find_tracks(self, maps: list[Tensor], rgb: Tensor, seg: SegmenterOutput) -> TrackSet:
        """One clip: maps [(T, C_i, h_i, w_i)], rgb (T, 3, H, W), its segmenter output ->
        the clip's tracks."""
        c = self.cfg
        assign, _ = group_instances(seg, c.center_threshold, c.nms_kernel, c.max_objects, c.min_area)
        t, h, w = assign.shape
        centres, areas, apps, masks = [], [], [], []
        ys = torch.arange(h, dtype=torch.float32, device=assign.device)
        xs = torch.arange(w, dtype=torch.float32, device=assign.device)
        for i in range(t):
            k = int(assign[i].max()) + 1
            m = assign[i][None] == torch.arange(k, device=assign.device)[:, None, None]  # (K, H, W)
            masks.append(m)
            area = m.flatten(1).sum(1).float()
            cy = (m.sum(2) * ys).sum(1) / area.clamp(min=1)
            cx = (m.sum(1) * xs).sum(1) / area.clamp(min=1)
            centres.append(torch.stack([cy, cx], 1).cpu().numpy())
            areas.append(area.cpu().numpy())
            apps.append(pool_objects([fm[i:i + 1] for fm in maps], rgb[i:i + 1], m[:, None])[:, 0])
        links = link_tracks(centres, areas, [a.cpu().numpy() for a in apps], c.link_max_gap,
                            c.link_max_distance, c.link_appearance_weight)
        track_masks = torch.zeros(len(links), t, h, w, dtype=torch.bool, device=assign.device)
        appearance = apps[0].new_zeros(len(links), t, apps[0].shape[-1])
        for q, frames in enumerate(links):
            for i, k in frames.items():
                track_masks[q, i] = masks[i][k]
                appearance[q, i] = apps[i][k]      # pooled once, for linking and for the token
        return track_set(maps, rgb, track_masks, appearance)

    def encode_text(self, texts: list[str], device: torch.device) -> tuple[Tensor, Tensor]:
        """texts -> words (B, L, D), padding (B, L) bool."""
        feats = self.text(texts, device)
        return feats.words, feats.padding_mask

    def clip_tracks(self, frames: Tensor, num_texts: int, clip_index: Tensor | None
                    ) -> tuple[list[TrackSet], list[int], SegmenterOutput]:
        """frames (C, T, 3, H, W) -> (the tracks of each clip, the clip of each of the
        ``num_texts`` sentences, the segmenter's output over all C * T frames)."""
        num_clips, t = frames.shape[:2]
        rows = frame_index_for(clip_index, num_clips, num_texts, t, frames.device)
        clip_of = (torch.arange(num_texts) if rows is None else clip_index.cpu()).tolist()
        flat = frames.flatten(0, 1)
        maps = self.features(flat)
        seg = self.segmenter(maps, flat)
        sets = []
        for ci in range(num_clips):
            sl = slice(ci * t, (ci + 1) * t)
            sets.append(self.find_tracks([m[sl] for m in maps], flat[sl],
                                         SegmenterOutput(seg.fg_logits[sl], seg.heatmap_logits[sl],
                                                         seg.offsets[sl])))
        return sets, clip_of, seg

    def forward(self, frames: Tensor, texts: list[str], clip_index: Tensor | None = None) -> RVOSOutput:
        sets, clip_of, seg = self.clip_tracks(frames, len(texts), clip_index)
        words, padding = self.encode_text(texts, frames.device)
        batch = pad_tracks([sets[ci] for ci in clip_of])
        return self.output(sets, clip_of, seg, batch, self.scorer(batch, words, padding))

    def output(self, sets: list[TrackSet], clip_of: list[int], seg: SegmenterOutput,
               batch: TrackBatch, logits: Tensor) -> RVOSOutput:
        """Track logits (B, N) of B sentences -> the :class:`RVOSOutput` (see the class)."""
        log_p = logits.log_softmax(-1)
        score = (log_p - torch.log1p(-log_p.exp().clamp(max=1 - 1e-6)))    # logit of P
        score = score.masked_fill(~batch.valid, -1e4)
        n = logits.shape[1]
        t, h, w = seg.fg_logits.shape[0] // len(sets), *seg.fg_logits.shape[-2:]
        mask_logits = torch.full((len(clip_of), t, n, h, w), BACKGROUND_LOGIT, device=logits.device)
        for b, ci in enumerate(clip_of):
            s = sets[ci]
            fg = seg.fg_logits[ci * t:(ci + 1) * t, 0].float()              # (T, H, W)
            # soft logits against the background keep sub-pixel edges when the Predictor
            # upsamples; other objects' pixels are firmly outside
            outside = torch.where(s.masks.any(0), BACKGROUND_LOGIT, fg.clamp(max=-0.05))
            for q in range(len(s)):
                mask_logits[b, :, q] = torch.where(s.masks[q], fg.clamp(min=0.05), outside)
        return RVOSOutput(mask_logits=mask_logits, scores=score[:, None, :].expand(-1, t, -1),
                          extras={"track_logits": logits})
