"""The query-based RVOS model (ReferFormer family): language as queries.

    frames (B, T, 3, H, W) ──backbone──► maps at strides 4, 8, 16, 32 (per frame)
    texts ──TextEncoder──► words (B, L, C), sentence (B, C)
    levels (feature_strides) ──1x1 conv + GN──► fused with the words (cross-attention)
        ──deformable encoder──► memory
    Q queries per frame: content = the sentence, position = learned embeddings, the same
        in every frame ──deformable decoder (box refinement)──► per layer: scores, boxes
    memory + stride-4 map ──FPN──► mask features; each query's dynamic conv ──► masks

Everything per frame is batched over the B * T frames of the clips.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn

from rvos.models.backbones import clip_features
from rvos.models.outputs import RVOSOutput
from rvos.models.query.bifit import InterFrameInteraction, VisionToWords
from rvos.models.query.fusion import VisionLanguageFusion
from rvos.models.query.layers import FeatureResizer, sine_position_1d, sine_position_2d
from rvos.models.query.mask_head import DynamicMaskHead, MaskFeatureDecoder, group_norm
from rvos.models.query.soc import SOC
from rvos.models.query.sgmg import MultiGranularityHead, SpectrumFusion, encoded_mask_features
from rvos.models.query.transformer import DeformableDecoder, DeformableEncoder
from rvos.models.sharing import frame_index_for
from rvos.models.text import TextEncoder

BACKBONE_STRIDES = (4, 8, 16, 32)


class QueryRVOS(nn.Module):
    """Backbone + text encoder + fused deformable transformer + dynamic mask heads.

    forward(frames (B, T, 3, H, W) ImageNet-normalised, texts: B sentences) -> RVOSOutput:
        mask_logits (B, T, Q, H/4, W/4), scores (B, T, Q) logits, boxes (B, T, Q, 4)
        normalised cxcywh, aux = the earlier decoder layers' outputs (same fields), extras
        {"reference_points": (B, T, Q, 2) initial reference points}; with ``soc`` (SOC's
        video-level object clusters) every layer's extras also hold "soc_video_embed"
        (B, Q, C) and "soc_text_embed" (B, C) for the contrastive loss.

    ``feature_strides`` picks the transformer levels: backbone maps at 4/8/16/32 and an
    extra stride-2 conv level (64) on top of the last map.

    SgMg (rvos/models/query/sgmg.py): ``sgmg_spectrum`` filters the levels in the spectral
    domain before and after the word fusion; ``sgmg_head`` (with ``mask_decoder`` None and a
    ``mask_head`` of P^2 output channels) segments the encoder memory into coarse patch masks
    and refines them: mask_logits (B, T, Q, H, W) for P = 4, extras["sgmg_coarse_logits"].
    """

    def __init__(self, backbone: nn.Module, text_encoder: TextEncoder, encoder: DeformableEncoder,
                 decoder: DeformableDecoder, mask_decoder: MaskFeatureDecoder | None,
                 mask_head: DynamicMaskHead, *, dim: int, num_queries: int,
                 feature_strides: tuple[int, ...], fusion: VisionLanguageFusion | None = None,
                 freeze_backbone: bool = False, frozen_backbone_bn: bool = False,
                 text_dropout: float = 0.1, soc: SOC | None = None,
                 bifit_words: VisionToWords | None = None,
                 bifit_inter_frame: InterFrameInteraction | None = None,
                 sgmg_spectrum: SpectrumFusion | None = None,
                 sgmg_head: MultiGranularityHead | None = None):
        super().__init__()
        self.backbone = backbone
        self.text_encoder = text_encoder
        self.encoder, self.decoder = encoder, decoder
        self.mask_decoder, self.mask_head = mask_decoder, mask_head
        self.fusion = fusion
        self.soc = soc   # SOC: video-level object clusters (rvos/models/query/soc.py); None = base
        self.sgmg_spectrum, self.sgmg_head = sgmg_spectrum, sgmg_head   # SgMg's modules
        self.dim, self.num_queries = dim, num_queries
        self.feature_strides = tuple(feature_strides)
        self.freeze_backbone = freeze_backbone
        self.frozen_backbone_bn = frozen_backbone_bn
        if freeze_backbone:
            self.backbone.requires_grad_(False)
        if frozen_backbone_bn:
            for module in self.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.requires_grad_(False)

        channels = dict(zip(BACKBONE_STRIDES, backbone.channels))
        projections = []
        for stride in self.feature_strides:
            if stride == 64:   # extra level from the last backbone map (or the previous extra one)
                cin = dim if projections and self.feature_strides[len(projections) - 1] == 64 \
                    else backbone.channels[-1]
                projections.append(nn.Sequential(nn.Conv2d(cin, dim, 3, stride=2, padding=1),
                                                 group_norm(dim)))
            else:
                projections.append(nn.Sequential(nn.Conv2d(channels[stride], dim, 1), group_norm(dim)))
        self.input_proj = nn.ModuleList(projections)
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight)
            nn.init.zeros_(proj[0].bias)
        self.level_embed = nn.Parameter(torch.randn(len(self.feature_strides), dim) * 0.02)
        self.stride4_proj = None if 4 in self.feature_strides or sgmg_head is not None else \
            nn.Sequential(nn.Conv2d(channels[4], dim, 1), group_norm(dim))

        self.word_proj = FeatureResizer(text_encoder.dim, dim, text_dropout)
        self.sentence_proj = FeatureResizer(text_encoder.dim, dim, text_dropout)
        self.query_embed = nn.Embedding(num_queries, dim)
        self.reference_points = nn.Linear(dim, 2)
        nn.init.xavier_uniform_(self.reference_points.weight)
        nn.init.zeros_(self.reference_points.bias)
        # BIFIT (bifit.py): words updated by vision seed the queries; queries interact across frames
        self.bifit_words, self.bifit_inter_frame = bifit_words, bifit_inter_frame

    def train(self, mode: bool = True) -> "QueryRVOS":
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()   # frozen BatchNorm statistics
        elif self.frozen_backbone_bn and mode:
            for module in self.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    # ------------------------------------------------------------------ pieces
    def levels(self, maps: list[Tensor]) -> list[Tensor]:
        """Backbone maps (finest first, strides 4..32) -> the transformer's levels, each
        (N, C, h, w)."""
        by_stride = dict(zip(BACKBONE_STRIDES, maps))
        out: list[Tensor] = []
        for stride, proj in zip(self.feature_strides, self.input_proj):
            if stride == 64:
                source = out[-1] if out and self.feature_strides[len(out) - 1] == 64 else maps[-1]
                out.append(proj(source))
            else:
                out.append(proj(by_stride[stride]))
        return out

    def fuse_text(self, levels: list[Tensor], words: Tensor, word_padding: Tensor,
                  clips: int) -> list[Tensor]:
        """Every level's tokens attend to their clip's words: (N, C, h, w) each, N = B*T."""
        if self.fusion is None:
            return levels
        word_pos = sine_position_1d(words.shape[1], self.dim, words.device,
                                    max_length=self.text_encoder.max_length).to(words.dtype)
        if self.sgmg_spectrum is not None:      # SgMg: spectral filters around the word fusion
            levels = self.sgmg_spectrum.before_fusion(levels)
        fused = []
        for x in levels:
            n, c, h, w = x.shape
            tokens = x.flatten(2).transpose(1, 2).reshape(clips, (n // clips) * h * w, c)
            tokens = self.fusion(tokens, words, word_padding, word_pos)
            fused.append(tokens.reshape(n, h * w, c).transpose(1, 2).reshape(n, c, h, w))
        if self.sgmg_spectrum is not None:
            fused = self.sgmg_spectrum.after_fusion(fused)
        return fused

    def flatten_levels(self, levels: list[Tensor]) -> tuple[Tensor, Tensor, list[tuple[int, int]]]:
        """-> src (N, S, C), pos (1, S, C) (sine + level embedding), spatial shapes."""
        shapes = [(x.shape[-2], x.shape[-1]) for x in levels]
        src = torch.cat([x.flatten(2).transpose(1, 2) for x in levels], 1)
        pos = torch.cat([sine_position_2d(h, w, self.dim, src.device) + self.level_embed[i]
                         for i, (h, w) in enumerate(shapes)])[None]
        return src, pos.to(src.dtype), shapes

    # ------------------------------------------------------------------ forward
    def forward(self, frames: Tensor, texts: list[str], clip_index: Tensor | None = None) -> RVOSOutput:
        """frames (C, T, 3, H, W), B sentences, ``clip_index`` (B,) as in
        :mod:`rvos.models.sharing`: sentences on one clip share its backbone pass."""
        if frames.ndim != 5 or frames.shape[2] != 3:
            raise ValueError(f"frames must be (B, T, 3, H, W), got {tuple(frames.shape)}")
        t = frames.shape[1]
        frame_index = frame_index_for(clip_index, frames.shape[0], len(texts), t, frames.device)

        maps = clip_features(self.backbone, frames)                       # (C*T, C_i, h_i, w_i)
        if frame_index is not None:
            maps = [m.index_select(0, frame_index) for m in maps]          # (N, C_i, h_i, w_i)
        return self.forward_maps(maps, texts, t)

    def forward_maps(self, maps: list[Tensor], texts: list[str], num_frames: int) -> RVOSOutput:
        """Everything after the backbone: ``maps`` [(B * T, C_i, h_i, w_i)] at strides
        4..32 (rows b*T .. b*T + T-1 are sentence b's frames; from the backbone, or from a
        feature cache of a frozen one), B sentences, T = ``num_frames`` -> RVOSOutput as
        :meth:`forward`."""
        t, b = num_frames, len(texts)
        n, q = b * t, self.num_queries
        device = maps[0].device
        text = self.text_encoder(texts, device)
        words = self.word_proj(text.words)                                 # (B, L, C)
        sentence = self.sentence_proj(text.sentence)                       # (B, C)

        levels = self.levels(maps)
        query_text = sentence if self.bifit_words is None else \
            self.bifit_words(levels, words, text.padding_mask, b)         # BIFIT (B, C)
        levels = self.fuse_text(levels, words, text.padding_mask, b)
        src, pos, shapes = self.flatten_levels(levels)
        memory = self.encoder(src, pos, shapes)                            # (N, S, C)

        query_pos = self.query_embed.weight[None].expand(n, -1, -1)        # (N, Q, C)
        tgt = query_text.repeat_interleave(t, 0)[:, None, :].expand(-1, q, -1)
        reference = self.reference_points(query_pos).sigmoid()            # (N, Q, 2)
        between = None if self.bifit_inter_frame is None else \
            partial(self.bifit_inter_frame, num_frames=t)                  # BIFIT
        hs, scores, boxes = self.decoder(tgt, query_pos, reference, memory, shapes, between)
        soc_extras: dict[str, Tensor] = {}
        if self.soc is not None:   # SOC: every frame's queries get their clip's video embedding
            hs, scores, boxes, soc_extras = self.soc(hs, reference, boxes, self.decoder, sentence,
                                                     words, text.padding_mask, memory, shapes, t)

        mask_features = self.mask_features(maps, memory, shapes, sentence.repeat_interleave(t, 0))
        outputs = []
        for layer in range(hs.shape[0]):
            masks = self.mask_head(hs[layer], mask_features, boxes[layer][..., :2].detach())
            outputs.append(RVOSOutput(
                mask_logits=masks.view(b, t, q, *masks.shape[2:]),
                scores=scores[layer].view(b, t, q),
                boxes=boxes[layer].view(b, t, q, 4)))
        final = outputs[-1]
        final.aux = outputs[:-1]
        final.extras = {"reference_points": reference.view(b, t, q, 2)}
        for layer, out in enumerate(outputs if soc_extras else []):   # SOC's loss, per layer
            out.extras.update(soc_video_embed=soc_extras["soc_video_embed"][layer],
                              soc_text_embed=soc_extras["soc_text_embed"])
        if self.sgmg_head is not None:          # SgMg: coarse patch masks -> refined masks
            self.sgmg_head(outputs, maps[1], maps[0])
        return final

    def mask_features(self, maps: list[Tensor], memory: Tensor, shapes: list[tuple[int, int]],
                      sentence: Tensor) -> Tensor:
        """FPN input: the encoder memory at its strides <= 32, plus the backbone's stride-4
        map when stride 4 is not a transformer level. -> (N, mask_dim, H/4, W/4)."""
        per_level = memory.split([h * w for h, w in shapes], 1)
        fpn = [x.transpose(1, 2).reshape(x.shape[0], -1, h, w)
               for x, (h, w), s in zip(per_level, shapes, self.feature_strides) if s <= 32]
        if self.sgmg_head is not None:          # SgMg segments the encoder memory itself
            return encoded_mask_features(fpn)
        if self.stride4_proj is not None:
            fpn.insert(0, self.stride4_proj(maps[0]))
        return self.mask_decoder(fpn, sentence)
