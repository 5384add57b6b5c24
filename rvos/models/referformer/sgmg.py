"""SgMg (Miao et al., ICCV 2023, "Spectrum-guided Multi-granularity Referring Video Object
Segmentation", bo-miao/SgMg) for inference, at parity with the official ``models/sgmg.py``
run as its ``inference_ytvos.py`` runs it; and SgMg as a family of
:mod:`rvos.models.referformer.families` (``detect``, ``config_from_state``,
``convert_state``, ``MODEL``, ``SOURCE``).

SgMg keeps ReferFormer's backbone, deformable transformer, early text fusion and box/class
heads, and changes the rest:

- text: RoBERTa's words go through ``text_proj``, its pooled sentence through
  ``sentence_proj`` (two resizers where ReferFormer has one);
- every level of the encoder's input is spectrally filtered before and after its fusion with
  the words (:class:`SpectralFilter`, the official ``input_fft`` / ``input_fft_post``): a
  Gaussian centred on the highest frequency of the unshifted 2-D spectrum, scaled by a
  gate the map predicts from itself, damps the spectrum, two 1x1 convolutions mix its real
  and imaginary parts, and the inverse transform is added back. The Gaussian (sigma 7) is
  built at the stride-8 level's size and bilinearly resized from level to level;
- no cross-modal FPN: the mask features are the encoder memory of the stride 8, 16 and 32
  levels, summed at stride 8 (bicubic resizing);
- the dynamic mask head (``controller``) ends in ``dynamic_mask_channels`` (16) channels at
  stride 8, not one: 16 = 4 x 4 sub-pixels of the mask;
- the mask of the selected query is refined (:class:`MaskRefiner`, the official ``MSO``)
  with the backbone's stride-8 and stride-4 maps, and a 4x pixel shuffle turns its 16
  channels at stride 4 into one channel at stride 1: the final mask is at the input's full
  resolution.

The official inference recipe (``inference_ytvos.py`` with the Ref-YouTube-VOS options): the
frames resized to a shorter side of 360, the whole video one clip, the frames zero-padded
at the bottom and right to a multiple of 16 (``nested_tensor_from_videos_list(.., 16)``
at evaluation), the query with the highest time-averaged probability selected from the
last decoder layer's logits, only its mask refined, cropped to the unpadded frame,
upsampled bilinearly to the source size and thresholded at 0.5. The padding matters:
its masks reach the position encodings, the deformable attention (padded values zeroed,
valid ratios) and the reference points, and this module computes all of them as the
official code does (:func:`padding_layout`).

Skipped because the official code computes them at inference only to throw them away:
boxes, logits and masks of the decoder layers before the last, the masks of the queries
that are not selected, the sampling-point statistics of the decoder, and the
``reference_points`` output. Not implemented: the A2D-Sentences / JHMDB / RefCOCO path
(every query's mask refined) and the training path.

Scheduling as in :mod:`rvos.models.referformer.model`: the per-frame parts over chunks of
``frame_chunk`` frames (a Video Swin sees the whole clip), the backbone once per frame
whatever the number of sentences, SDPA attention, folded frozen BatchNorm and channels-last
convolutions for ResNets.

Names: V videos, K sentences, T frames, Q queries, C width, H x W the padded frame.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rvos.errors import RVOSError
from rvos.models.outputs import RVOSOutput
from rvos.models.query.layers import MLP
from rvos.models.referformer.backbone import build_backbone
from rvos.models.referformer.config import ReferFormerConfig
from rvos.models.referformer.convert import (backbone_name, count_children, detector_fields,
                                             map_official_state, rename_backbone,
                                             text_config_from_state)
from rvos.models.referformer.layers import FeatureResizer, refine_boxes, sine_position_1d
from rvos.models.referformer.model import (ReleasedModel, VisionLanguageFusion, _roberta,
                                           level_projections)
from rvos.models.referformer.transformer import DeformableTransformer

SOURCE = "official SgMg checkpoint (bo-miao/SgMg)"

FILTER_SIGMA = 7.0          # the Gaussian's width (``LFMResizeAdaptive(dim, 7)``; not in the tensors)
SIZE_DIVISIBILITY = 16      # frames padded to a multiple of this at evaluation
MASK_STRIDE = 8             # the dynamic mask head's resolution
SHUFFLE = 4                 # pixel-shuffle factor of the refined mask (16 channels -> 1)


# ============================================================================ padding
@dataclass
class LevelLayout:
    """One level's share of the padding: ``mask`` (h, w) bool, True on padding; ``pos`` (C, h, w)
    the masked sine encoding; ``valid`` (2,) the valid ratios (w, h)."""

    mask: Tensor
    pos: Tensor
    valid: Tensor


def masked_sine_position_2d(mask: Tensor, dim: int) -> Tensor:
    """DETR's normalised 2-D sine encoding over a padding mask (the official
    ``PositionEmbeddingSine2D(dim // 2, normalize=True)``): mask (h, w) bool, True on padding
    -> (dim, h, w). Positions count unpadded pixels along each row / column, normalised by
    the count at its end; a fully padded row or column gets the formula's value for a zero
    count (it is computed, not special-cased, as the official code does)."""
    eps, scale, feats = 1e-6, 2 * math.pi, dim // 2
    keep = ~mask[None]
    y = keep.cumsum(1, dtype=torch.float32)
    x = keep.cumsum(2, dtype=torch.float32)
    y = (y - 0.5) / (y[:, -1:, :] + eps) * scale
    x = (x - 0.5) / (x[:, :, -1:] + eps) * scale
    i = torch.arange(feats, dtype=torch.float32, device=mask.device)
    freq = 10000.0 ** (2 * (i // 2) / feats)
    px, py = x[..., None] / freq, y[..., None] / freq
    px = torch.stack((px[..., 0::2].sin(), px[..., 1::2].cos()), dim=4).flatten(3)
    py = torch.stack((py[..., 0::2].sin(), py[..., 1::2].cos()), dim=4).flatten(3)
    return torch.cat((py, px), dim=3)[0].permute(2, 0, 1).contiguous()


def padding_layout(image_mask: Tensor, sizes: list[tuple[int, int]], dim: int) -> list[LevelLayout]:
    """The official padding bookkeeping of every level: image_mask (H, W) bool (True on the
    padding added to reach a multiple of 16); sizes the (h, w) of each level -> their masks
    (nearest resize of the image's), sine encodings and valid ratios (unpadded first
    row / column, counted, over the size)."""
    out = []
    for h, w in sizes:
        mask = F.interpolate(image_mask[None, None].float(), size=(h, w))[0, 0].to(torch.bool)
        valid = torch.stack([(~mask[0, :]).sum().float() / w, (~mask[:, 0]).sum().float() / h])
        out.append(LevelLayout(mask, masked_sine_position_2d(mask, dim), valid))
    return out


# ============================================================================ modules
class SpectralFilter(nn.Module):
    """The official ``LFMResizeAdaptive``: a map filtered in the 2-D Fourier domain, added back.

    forward(x (N, C, h, w), gaussian (1, 1, h, w)) -> x + irfft-part of
    ``conv2(relu(conv1([Re Y; Im Y])))`` with ``Y = fft2(x) * (1 - g(x) * gaussian)`` and
    ``g(x) = sigmoid(fc(mean(laplace(x))))`` in (0, 1) per map (``laplace`` an unpadded 3x3
    convolution, ``fc`` C -> C -> 1 without biases).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(2 * dim, 2 * dim, 1)
        self.conv2 = nn.Conv2d(2 * dim, 2 * dim, 1)
        self.laplace = nn.Conv2d(dim, dim, 3)
        self.fc = nn.Sequential(nn.Linear(dim, dim, bias=False), nn.ReLU(inplace=True),
                                nn.Linear(dim, 1, bias=False), nn.Sigmoid())

    def forward(self, x: Tensor, gaussian: Tensor) -> Tensor:
        n, c, h, w = x.shape
        x = x.float()
        gate = self.fc(F.adaptive_avg_pool2d(self.laplace(x), 1).view(n, c)).view(n, 1, 1, 1)
        spectrum = torch.fft.fft2(x) * (1 - gate * gaussian)
        mixed = self.conv2(F.relu(self.conv1(torch.cat([spectrum.real, spectrum.imag], 1))))
        real, imag = mixed.float().chunk(2, dim=1)
        return x + torch.fft.ifft2(torch.complex(real, imag), s=(h, w)).real


def centre_gaussian(h: int, w: int, sigma: float, device: torch.device) -> Tensor:
    """exp(-((y - h//2)^2 + (x - w//2)^2) / (2 sigma^2)) over the (h, w) grid: (1, 1, h, w)."""
    ys = torch.arange(h, device=device).float()[:, None]
    xs = torch.arange(w, device=device).float()[None, :]
    return torch.exp(-((ys - h // 2) ** 2 + (xs - w // 2) ** 2) / (2 * sigma ** 2))[None, None]


def resize_filter(gaussian: Tensor, size: tuple[int, int]) -> Tensor:
    """The official hand-over of the Gaussian from level to level: bilinear, align_corners False."""
    return F.interpolate(gaussian, size=size, mode="bilinear", align_corners=False)


class MaskRefiner(nn.Module):
    """The official ``MSO``: a mask's ``ch`` channels at stride 8 refined with the backbone's
    stride-8 map, upsampled (bilinear) to stride 4 and refined with the stride-4 map; each
    step a residual ``conv2(relu(conv1(relu([mask; image]))))`` of 3x3 convolutions.

    forward(masks (N, ch, h8, w8), stride4 (N, C0, h4, w4), stride8 (N, C1, h8, w8)) ->
    (N, ch, h4, w4).
    """

    def __init__(self, ch: int, image_channels: tuple[int, int]):
        super().__init__()
        self.conv1_1div8 = nn.Conv2d(ch + image_channels[1], ch, 3, padding=1)
        self.conv2_1div8 = nn.Conv2d(ch, ch, 3, padding=1)
        self.conv1_1div4 = nn.Conv2d(ch + image_channels[0], ch, 3, padding=1)
        self.conv2_1div4 = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, masks: Tensor, stride4: Tensor, stride8: Tensor) -> Tensor:
        x = F.relu(torch.cat([masks, stride8], 1))
        masks = masks + self.conv2_1div8(F.relu(self.conv1_1div8(x)))
        masks = F.interpolate(masks, size=stride4.shape[-2:], mode="bilinear", align_corners=False)
        x = F.relu(torch.cat([masks, stride4], 1))
        return masks + self.conv2_1div4(F.relu(self.conv1_1div4(x)))


def dynamic_mask_features(features: Tensor, params: Tensor, centres: Tensor, channels: int,
                          layers: int, rel_coord: bool, stride: int = MASK_STRIDE) -> Tensor:
    """SgMg's dynamic mask head: each query's generated 1x1 convolutions, every layer with
    ``channels`` outputs (ReLU between layers, none after the last).

    features (N, C, h, w) of N frames; params (N, Q, P) laid out as the official
    ``parse_dynamic_params`` reads them (the weights layer by layer, output channel major,
    then the biases); centres (N, Q, 2) reference points (x, y) in input pixels.
    Returns (N, Q, channels, h, w). Grouped convolutions over the features repeated per query,
    one frame at a time, to keep the official order of summation (the relative coordinates
    are hundreds of pixels, their terms cancel).
    """
    n, c, h, w = features.shape
    q = params.shape[1]
    cin = c + 2 if rel_coord else c
    sizes = [channels * cin] + [channels * channels] * (layers - 1) + [channels] * layers
    parts = params.split(sizes, dim=-1)
    weights, biases = parts[:layers], parts[layers:]
    xs = torch.arange(0, w * stride, stride, dtype=torch.float32, device=features.device) + stride // 2
    ys = torch.arange(0, h * stride, stride, dtype=torch.float32, device=features.device) + stride // 2
    out = features.new_empty(n, q, channels, h, w)
    for i in range(n):
        x = features[i][None].expand(q, c, h, w)
        if rel_coord:
            rel = torch.stack((centres[i, :, 0, None, None] - xs.expand(h, w),
                               centres[i, :, 1, None, None] - ys[:, None].expand(h, w)), 1)
            x = torch.cat((x, rel.to(x.dtype)), 1)
        x = x.reshape(1, q * cin, h, w)
        for layer in range(layers):
            x = F.conv2d(x, weights[layer][i].reshape(q * channels, -1, 1, 1),
                         biases[layer][i].reshape(-1), groups=q)
            if layer < layers - 1:
                x = F.relu(x)
        out[i] = x.view(q, channels, h, w)
    return out


class PaddedDeformableTransformer(DeformableTransformer):
    """ReferFormer's deformable transformer (same parameters) over padded maps: padded values
    zeroed in every deformable attention, reference points scaled by the valid ratios, as
    Deformable DETR does.

    forward(srcs: L maps (N, C, H_l, W_l), layout: L :class:`LevelLayout`, sentence (N, C),
    query_embed (Q, C), bbox_embed) -> (last decoder output (N, Q, C), initial reference
    (N, Q, 2), per-layer references, memory of the first L-1 levels (N, C, H_l, W_l)).
    """

    def forward(self, srcs: list[Tensor], layout: list[LevelLayout], sentence: Tensor,
                query_embed: Tensor, bbox_embed: nn.ModuleList | None
                ) -> tuple[Tensor, Tensor, list[Tensor], list[Tensor]]:
        n, device = srcs[0].shape[0], srcs[0].device
        shapes = [(s.shape[-2], s.shape[-1]) for s in srcs]
        src = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)           # (N, S, C)
        pos = torch.cat([lv.pos.flatten(1).t() + self.level_embed[i]
                         for i, lv in enumerate(layout)], 0)[None].expand(n, -1, -1)
        padding = torch.cat([lv.mask.flatten() for lv in layout])[None]           # (1, S)
        padding = padding if bool(padding.any()) else None
        valid = torch.stack([lv.valid for lv in layout])                          # (L, 2)

        points = []
        for lvl, (h, w) in enumerate(shapes):
            ry, rx = torch.meshgrid(torch.linspace(0.5, h - 0.5, h, dtype=torch.float32, device=device),
                                    torch.linspace(0.5, w - 0.5, w, dtype=torch.float32, device=device),
                                    indexing="ij")
            points.append(torch.stack((rx.reshape(-1) / (valid[lvl, 0] * w),
                                       ry.reshape(-1) / (valid[lvl, 1] * h)), -1))
        reference = (torch.cat(points)[:, None] * valid[None])[None].expand(n, -1, -1, -1)
        for layer in self.encoder.layers:
            src = layer(src, pos, reference, shapes, padding)
        memory = src

        q = query_embed.shape[0]
        query_pos = query_embed[None].expand(n, -1, -1)
        ref = self.reference_points(query_pos).sigmoid()                             # (N, Q, 2)
        reference0, tgt, references = ref, sentence[:, None, :].expand(-1, q, -1), []
        for i, layer in enumerate(self.decoder.layers):
            scale = valid if ref.shape[-1] == 2 else torch.cat([valid, valid], -1)
            tgt = layer(tgt, query_pos, ref[:, :, None] * scale[None, None], memory, shapes, padding)
            if bbox_embed is not None:
                delta = bbox_embed[i](tgt)
                ref = refine_boxes(delta, ref)
            references.append(ref)

        maps, start = [], 0
        for h, w in shapes[:-1]:
            maps.append(memory[:, start:start + h * w].transpose(1, 2).reshape(n, -1, h, w))
            start += h * w
        return tgt, reference0, references, maps


@dataclass
class SgMgPredictions:
    """The official inference outputs, one row per sentence.

    logits (K, T, Q, classes) and boxes (K, T, Q, 4) (normalised cx, cy, w, h) of every
    query at the last decoder layer; query (K,) the selected query (highest time-averaged
    probability); masks (K, T, H, W) its refined mask logits at the input's resolution
    (the padding cropped).
    """

    logits: Tensor
    boxes: Tensor
    query: Tensor
    masks: Tensor


# ============================================================================ the model
class SgMg(ReleasedModel):
    """SgMg for inference. Parameter names are the official ones except ``backbone.0.`` ->
    ``backbone.``, ``text_encoder.text_backbone.`` -> ``text_encoder.`` and the decoder's
    duplicate box heads (dropped), see :func:`convert_state`."""

    def __init__(self, cfg: ReferFormerConfig):
        super().__init__()
        if cfg.num_feature_levels != 4:
            raise ValueError("SgMg needs num_feature_levels 4")
        if cfg.dynamic_mask_channels != SHUFFLE * SHUFFLE:
            raise ValueError(f"SgMg's mask head must end in {SHUFFLE * SHUFFLE} channels "
                             f"(a {SHUFFLE}x{SHUFFLE} pixel shuffle), got {cfg.dynamic_mask_channels}")
        if cfg.mask_dim != cfg.hidden_dim:
            raise ValueError("SgMg's mask features are the encoder memory: mask_dim must be hidden_dim")
        self.cfg = cfg
        dim = cfg.hidden_dim
        self.backbone = build_backbone(cfg.backbone, cfg.dilation)
        channels = self.backbone.num_channels
        self.input_proj = level_projections(channels, dim)
        self.input_fft = nn.ModuleList(SpectralFilter(dim) for _ in range(4))
        self.input_fft_post = nn.ModuleList(SpectralFilter(dim) for _ in range(4))
        self.transformer = PaddedDeformableTransformer(
            dim, cfg.nheads, cfg.enc_layers, cfg.dec_layers, cfg.dim_feedforward,
            cfg.num_feature_levels, cfg.enc_n_points, cfg.dec_n_points)
        self.query_embed = nn.Embedding(cfg.num_queries, dim)
        self.class_embed = nn.ModuleList(nn.Linear(dim, cfg.num_classes) for _ in range(cfg.dec_layers))
        self.bbox_embed = nn.ModuleList(MLP(dim, dim, 4, 3) for _ in range(cfg.dec_layers))
        self.text_encoder = _roberta(cfg)
        self.text_proj = FeatureResizer(cfg.text.hidden_size, dim)
        self.sentence_proj = FeatureResizer(cfg.text.hidden_size, dim)
        self.fusion_module = VisionLanguageFusion(dim, cfg.nheads)
        ch = cfg.dynamic_mask_channels
        cin = cfg.mask_dim + 2 if cfg.rel_coord else cfg.mask_dim
        self.controller = MLP(dim, dim, ch * cin + ch * ch * (cfg.controller_layers - 1)
                              + ch * cfg.controller_layers, 3)
        self.mask_refine = MaskRefiner(ch, (channels[0], channels[1]))
        self._tokenizer = None
        self._prepared = False
        self._layouts: dict[tuple, tuple[list[LevelLayout], list[tuple[Tensor, Tensor]]]] = {}

    # ---- text
    def encode_text(self, input_ids: Tensor, attention_mask: Tensor
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """-> words (K, L, C), their sine encoding (K, L, C), padding (K, L) bool, sentence (K, C)."""
        out = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask)
        words = self.text_proj(out.last_hidden_state)
        padding = attention_mask.ne(1)
        sentence = self.sentence_proj(out.pooler_output)
        return words, sine_position_1d(padding, words.shape[-1]), padding, sentence

    # ---- layout of a padded frame size
    def _layout(self, height: int, width: int, padded: tuple[int, int], sizes: list[tuple[int, int]],
                device: torch.device) -> tuple[list[LevelLayout], list[tuple[Tensor, Tensor]]]:
        """The padding layout of the four encoder levels and the spectral filters' Gaussians
        (before and after the fusion, per level, as the official code hands them from filter
        to filter), cached for the last size."""
        key = (height, width, padded, tuple(sizes), device)
        if key not in self._layouts:
            image_mask = torch.ones(padded, dtype=torch.bool, device=device)
            image_mask[:height, :width] = False
            layout = padding_layout(image_mask, sizes, self.cfg.hidden_dim)
            gaussians, post = [], None
            for h, w in sizes:      # level 0 builds it; each filter resizes the one before
                pre = (centre_gaussian(h, w, FILTER_SIGMA, device) if post is None
                       else resize_filter(post, (h, w)))
                post = resize_filter(pre, (h, w))
                gaussians.append((pre, post))
            self._layouts = {key: (layout, gaussians)}
        return self._layouts[key]

    @torch.no_grad()
    def predict(self, frames: Tensor, input_ids: Tensor, attention_mask: Tensor,
                video_of_text: Tensor | None = None) -> SgMgPredictions:
        """frames (V, T, 3, h, w) normalised, unpadded; token ids and mask (K, L);
        video_of_text (K,) long (default: sentence k on video k) -> :class:`SgMgPredictions`."""
        v_count = frames.shape[0]
        k_count = input_ids.shape[0]
        video_of_text = self._video_of_text(video_of_text, k_count, v_count, frames.device)
        words, word_pos, padding, sentence = self.encode_text(input_ids, attention_mask)
        out: list = [None] * k_count
        for v in range(v_count):
            texts = (video_of_text == v).nonzero().flatten()
            if len(texts):
                pred = self._predict_video(frames[v], words[texts], word_pos[texts],
                                           padding[texts], sentence[texts])
                for j, k in enumerate(texts.tolist()):
                    out[k] = tuple(getattr(pred, f)[j] for f in ("logits", "boxes", "query", "masks"))
        return SgMgPredictions(*(torch.stack(parts) for parts in zip(*out)))

    def _predict_video(self, frames: Tensor, words: Tensor, word_pos: Tensor, padding: Tensor,
                       sentence: Tensor) -> SgMgPredictions:
        """frames (T, 3, h, w) of one video, k sentences -> predictions (k, T, ...)."""
        cfg = self.cfg
        t, _, height, width = frames.shape
        k = words.shape[0]
        div = SIZE_DIVISIBILITY
        ph, pw = -(-height // div) * div, -(-width // div) * div
        if (ph, pw) != (height, width):
            frames = F.pad(frames, (0, pw - width, 0, ph - height))
        autocast = torch.autocast(frames.device.type, dtype=torch.bfloat16, enabled=cfg.inference.bf16)
        chunks = self._chunks(t)
        stage: list[dict] = []
        with autocast:
            clip_maps = self.backbone(frames, t) if self.backbone.temporal else None
            for chunk in chunks:
                maps = ([m[chunk] for m in clip_maps] if clip_maps is not None
                        else self.backbone(self._frames_in(frames[chunk]), chunk.stop - chunk.start))
                stage.append(self._encode_chunk(maps, words, word_pos, padding, sentence,
                                                height, width, (ph, pw)))
            del clip_maps
            logits = torch.cat([s["logits"] for s in stage], 1).float()        # (k, T, Q, cls)
            boxes = torch.cat([s["boxes"] for s in stage], 1).float()
            # the official selection: highest class of the time-averaged probabilities
            query = logits.sigmoid().mean(1).max(-1).values.argmax(-1)       # (k,)
            masks = []
            for chunk, s in zip(chunks, stage):
                n = chunk.stop - chunk.start
                low = s["masks"][torch.arange(k, device=query.device), :, query]   # (k, n, ch, h8, w8)
                low = low.flatten(0, 1)
                f4, f8 = (x.float().expand(k, *x.shape).flatten(0, 1) for x in s["image"])
                refined = F.pixel_shuffle(self.mask_refine(low.float(), f4, f8), SHUFFLE)
                masks.append(refined.view(k, n, ph, pw))
        return SgMgPredictions(logits=logits, boxes=boxes, query=query,
                               masks=torch.cat(masks, 1)[..., :height, :width].float())

    def _encode_chunk(self, maps: list[Tensor], words: Tensor, word_pos: Tensor, padding: Tensor,
                      sentence: Tensor, height: int, width: int, padded: tuple[int, int]) -> dict:
        """Everything per frame from the four backbone maps (n, C_i, H_i, W_i) of n padded
        frames and k sentences: ``logits`` (k, n, Q, cls), ``boxes`` (k, n, Q, 4), ``masks``
        (k, n, Q, ch, H/8, W/8) every query's dynamic mask channels, ``image`` the backbone's
        stride-4 and stride-8 maps (n, ...) for the refinement."""
        cfg = self.cfg
        n, k, device = maps[0].shape[0], words.shape[0], maps[0].device
        rows = torch.arange(k, device=device).repeat_interleave(n)      # sentence of each row

        def per_sentence(x: Tensor) -> Tensor:       # (n, ...) -> (k*n, ...), sentence-major
            return x[None].expand(k, *x.shape).flatten(0, 1)

        projected = [proj(m) for proj, m in zip(self.input_proj[:3], maps[-3:])]
        projected.append(self.input_proj[3](maps[-1]))
        sizes = [tuple(p.shape[-2:]) for p in projected]
        if min(sizes[-1]) < 3:     # the filters' unpadded 3x3 convolution (the official fails too)
            raise RVOSError(f"SgMg needs frames of at least 129 pixels a side (its stride-64 "
                            f"level must be 3x3 or more); got {height}x{width}")
        layout, gaussians = self._layout(height, width, padded, sizes, device)
        srcs = []
        for level, src in enumerate(projected):
            pre, post = gaussians[level]
            src = per_sentence(self.input_fft[level](src, pre))
            src = self.fusion_module(src, words[rows], word_pos[rows], padding[rows])
            srcs.append(self.input_fft_post[level](src, post))
        hs, reference0, references, memory = self.transformer(
            srcs, layout, sentence[rows], self.query_embed.weight,
            self.bbox_embed if cfg.with_box_refine else None)

        last = cfg.dec_layers - 1
        reference = references[last - 1] if last > 0 else reference0
        delta = self.bbox_embed[last](hs)
        boxes = refine_boxes(delta, reference)

        size0 = memory[0].shape[-2:]
        features = memory[0]
        for m in memory[1:]:
            features = features + F.interpolate(m, size=size0, mode="bicubic", align_corners=False)
        centres = references[last][..., :2].float() * torch.tensor(
            [width, height], dtype=torch.float32, device=device)
        masks = dynamic_mask_features(features.float(), self.controller(hs).float(), centres,
                                      cfg.dynamic_mask_channels, cfg.controller_layers, cfg.rel_coord)
        return {
            "logits": self.class_embed[last](hs).view(k, n, hs.shape[1], -1),
            "boxes": boxes.view(k, n, *boxes.shape[1:]),
            "masks": masks.view(k, n, *masks.shape[1:]),
            "image": (maps[0], maps[1]),
        }

    # ---- the rvos model interface (Predictor, evaluation)
    def forward(self, frames: Tensor, texts: list[str], clip_index: Tensor) -> RVOSOutput:
        """frames (V, T, 3, h, w), K sentences, clip_index (K,) -> RVOSOutput of the selected
        query only (Q = 1, as the official inference returns it): mask_logits (K, T, 1, h, w)
        the refined mask at the input's resolution, scores (K, T, 1), boxes (K, T, 1, 4).

        Scores: the selected query's class logit with one class; with several, the logit of
        its clip-level probability (the selection is already made either way)."""
        input_ids, attention_mask = self.tokenize(texts, frames.device)
        pred = self.predict(frames, input_ids, attention_mask, clip_index)
        rows = torch.arange(pred.logits.shape[0], device=pred.logits.device)
        logits = pred.logits[rows, :, pred.query]                            # (K, T, cls)
        if logits.shape[-1] == 1:
            scores = logits[..., 0]
        else:
            clip = logits.sigmoid().mean(1).max(-1).values
            scores = torch.logit(clip, eps=1e-6)[:, None].expand(-1, logits.shape[1])
        return RVOSOutput(mask_logits=pred.masks[:, :, None], scores=scores[..., None],
                          boxes=pred.boxes[rows, :, pred.query][:, :, None])


MODEL = SgMg


# ============================================================================ the family
SIGNATURE_KEYS = ("query_embed.weight", "transformer.level_embed", "controller.layers.0.weight",
                  "input_fft.0.conv1.weight", "mask_refine.conv1_1div8.weight",
                  "text_proj.fc.weight", "sentence_proj.fc.weight",
                  "text_encoder.text_backbone.embeddings.word_embeddings.weight")
DROPPED = (re.compile(r"^transformer\.decoder\.bbox_embed\."),
           re.compile(r"^text_encoder\.text_backbone\.embeddings\.position_ids$"),
           re.compile(r"\.num_batches_tracked$"))
TEXT = "text_encoder.text_backbone."


def detect(state: dict[str, Tensor]) -> bool:
    """An SgMg checkpoint: the spectral filters and the mask refiner are there."""
    return "input_fft.0.conv1.weight" in state and "mask_refine.conv1_1div8.weight" in state


def sgmg_dynamic_head(num_params: int, mask_dim: int) -> tuple[int, int, bool]:
    """(controller_layers, dynamic_mask_channels, rel_coord) whose generated-parameter count
    is ``num_params``; the official (2, 16, True) first."""
    candidates = [(2, 16, True)] + [(layers, 16, rel) for rel in (True, False)
                                    for layers in (2, 3, 4, 5)]
    for layers, ch, rel in candidates:
        cin = mask_dim + 2 if rel else mask_dim
        if ch * cin + ch * ch * (layers - 1) + ch * layers == num_params:
            return layers, ch, rel
    raise RVOSError(f"the dynamic mask head's {num_params} generated parameters fit no SgMg "
                    f"setting (16 channels every layer, mask features of width {mask_dim})")


def config_from_state(state: dict[str, Tensor], source: Path | None = None) -> ReferFormerConfig:
    """The architecture of an official SgMg state dict, read from its names and shapes."""
    missing = [k for k in SIGNATURE_KEYS if k not in state]
    if missing:
        raise RVOSError(f"not an SgMg checkpoint: it lacks {', '.join(missing)}", source)
    fields = detector_fields(state)
    last = count_children(state, "controller.layers.") - 1
    layers, channels, rel = sgmg_dynamic_head(state[f"controller.layers.{last}.weight"].shape[0],
                                               fields["hidden_dim"])
    return ReferFormerConfig(
        family="sgmg", backbone=backbone_name(state, source), **fields,
        mask_dim=fields["hidden_dim"], controller_layers=layers, dynamic_mask_channels=channels,
        rel_coord=rel, text=text_config_from_state(state, TEXT))


def _rename(key: str) -> str:
    if key.startswith(TEXT):
        return "text_encoder." + key[len(TEXT):]
    return rename_backbone(key)


def convert_state(state: dict[str, Tensor], expected: dict[str, Tensor],
                  source: Path | None = None) -> dict[str, Tensor]:
    """Official names -> rvos names, checked against the model's own state dict ``expected``:
    every key mapped, none left over, every shape equal (an RVOSError lists what is not).

    - ``backbone.0.*`` -> ``backbone.*`` (``backbone.1``, the position encoding, has no weights);
    - ``text_encoder.text_backbone.*`` -> ``text_encoder.*`` (the RoBERTa);
    - ``transformer.decoder.bbox_embed.*`` dropped: the same tensors as ``bbox_embed.*``;
    - ``text_encoder.text_backbone.embeddings.position_ids`` (a constant buffer some
      ``transformers`` versions save) and BatchNorm counters dropped;
    - every other key unchanged.
    """
    return map_official_state(state, expected, source, rename=_rename, dropped=DROPPED,
                              model_name="SgMg")
