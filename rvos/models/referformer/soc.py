"""SOC (Luo et al., NeurIPS 2023, "Semantic-Assisted Object Cluster for Referring Video
Object Segmentation", RobertLuo1/NeurIPS2023_SOC) at inference parity, as a family of
:mod:`rvos.models.referformer.families`.

What the official ``SOC.forward`` (``models/soc.py``) computes for one video and one sentence
in eval mode, and this module computes with rvos's ReferFormer parts:

1. RoBERTa; its last hidden states and its pooler output both go through ``txt_proj``
   (Linear + LayerNorm eps 1e-12): words (L, C) and the sentence (C,).
2. Video Swin over the whole clip (the wrapper ReferFormer uses: per-frame stage outputs,
   no final norm), four maps at strides 4, 8, 16, 32.
3. ``input_proj`` on the last three maps and a strided 3x3 projection of the last one (a
   fourth, stride-64 level); each level is fused with the words as ReferFormer fuses them
   (``vlf``: x * attention(x -> words + sine position), no residual).
4. Deformable DETR encoder and decoder per frame, with box refinement; the decoder's
   initial content is **zero** (ReferFormer's is the sentence); Q = 20 queries per frame.
5. The object cluster module ``voc`` (:class:`VideoObjectClusters`) on the last decoder
   layer's frame queries: self-attention over all T*Q frame queries, then Q video queries,
   whose content starts as the sentence, cross-attend to them (slot embedding ``fq_pos`` of
   frame query q), self-attend and pass an FFN, layer after layer; a final LayerNorm.
6. Video query q is added to frame query q of every frame. The outputs the official code
   returns at inference are those of the FIRST decoder layer (:data:`OUTPUT_LAYER`: a
   ``zip`` with VOC's one-layer output truncates the per-layer list): layer 0's class head,
   box head (refining the initial reference) and dynamic-mask controller read (layer-0
   frame queries + video queries); the masks are centred on layer 0's refined reference.
   The later decoder layers still run: VOC reads the last one.
7. The masks: an FPN-like spatial decoder (:class:`SpatialDecoder`, MTTR's) on the encoder
   memory (strides 32, 16, 8) and the backbone's stride-4 map gives 8-channel features at
   stride 4; each query's generated 1x1 convolutions (with relative coordinates) make its
   mask logits at stride 4 (``mask_out_stride`` = ``mask_feat_stride`` = 4: no upsampling).

What the official code also computes at inference and throws away, skipped here: the
class, box and controller heads and the dynamic masks of the decoder layers after the
first (their outputs never reach the returned dict), the language side of the fusion (``lvf``: the
words attending to each level, whose result only feeds the training-time contrastive text
feature; its weights are dropped by the converter), the sampling-point statistics of the
decoder.

The official Ref-YouTube-VOS recipe (``infer_refytb.py``): frames resized to a shorter
side of 360 with the longer side at most 640 (``RandomResize([360], max_size=640)``), the
whole video one clip, the query with the highest time-averaged sigmoid score selected, its
stride-4 mask logits bilinearly resized to the original frame size, threshold 0.5. So
:meth:`ReferFormer.forward`'s output (scores = the class logit) gives the official
selection through ``rvos.inference.select_referred``.

Scheduling (``ReferFormerInferenceConfig``): the per-frame parts run over ``frame_chunk``
frames at a time; only the Video Swin (whole clip, as the official) and VOC (all T*Q frame
queries, a few thousand tokens) see every frame. Attention runs through
``scaled_dot_product_attention``.

Names: K sentences, T frames, n frames of a chunk, Q queries, C width.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rvos.errors import RVOSError
from rvos.models.referformer.config import ReferFormerConfig, ReferFormerInferenceConfig
from rvos.models.referformer.convert import (backbone_name, count_children, detector_fields,
                                             dynamic_head_shape, map_official_state,
                                             text_config_from_state)
from rvos.models.referformer.layers import (Attention, FeatureResizer, feed_forward,
                                            refine_boxes, sine_position_1d)
from rvos.models.referformer.model import (ReferFormer, ReferFormerPredictions,
                                           VisionLanguageFusion)
from rvos.models.referformer.pixel_decoder import dynamic_mask_logits
from rvos.models.referformer.soc_config import SOCConfig

__all__ = ["MODEL", "SOURCE", "SOC", "SOCConfig", "SpatialDecoder", "VideoObjectClusters",
           "config_from_state", "convert_state", "detect"]

SOURCE = "official SOC checkpoint (RobertLuo1/NeurIPS2023_SOC)"

# The decoder layer whose heads make the official inference outputs. In eval mode VOC
# returns one layer (the last decoder layer's video queries), and the official forward
# builds its per-layer outputs with ``zip(output_masks, voc_hs, outputs_classes,
# outputs_coord)`` (``vl_loss: true`` in every released config), which stops after the
# first element: ``out = layer_outputs[-1]`` is decoder layer 0's class, box and mask
# heads, read on (layer-0 frame queries + the video queries).
OUTPUT_LAYER = 0


# ----------------------------------------------------------------------------- VOC
class _SelfAttentionBlock(nn.Module):
    """x + self-attention, then LayerNorm (post-norm): (B, L, C) -> (B, L, C)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.self_attn = Attention(dim, heads)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, pos: Tensor | None = None) -> Tensor:
        q = x if pos is None else x + pos
        return self.norm(x + self.self_attn(q, q, x))


class _CrossAttentionBlock(nn.Module):
    """x + attention(x + pos -> memory + memory_pos, values memory), then LayerNorm."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.multihead_attn = Attention(dim, heads)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, pos: Tensor, memory: Tensor, memory_pos: Tensor) -> Tensor:
        """x, pos (B, Lq, C); memory, memory_pos (B, Lk, C) -> (B, Lq, C)."""
        return self.norm(x + self.multihead_attn(x + pos, memory + memory_pos, memory))


class _FFNBlock(nn.Module):
    """x + linear2(relu(linear1(x))), then LayerNorm."""

    def __init__(self, dim: int, ffn_dim: int):
        super().__init__()
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x + feed_forward(x, self.linear1, self.linear2))


class VideoObjectClusters(nn.Module):
    """SOC's VOC at inference (window size 0: every frame query sees every other).

    forward(frame_queries (K, T, Q, C) of the last decoder layer, sentence (K, C)) ->
    video queries (K, Qv, C). Parameter names are the official ones.
    """

    def __init__(self, dim: int, frame_queries: int, video_queries: int, heads: int,
                 ffn_dim: int, enc_layers: int, dec_layers: int):
        super().__init__()
        self.fq_pos = nn.Embedding(frame_queries, dim)
        self.query_embed = nn.Embedding(video_queries, dim)
        self.decoder_norm = nn.LayerNorm(dim)
        self.enc_self_attn = nn.ModuleList(_SelfAttentionBlock(dim, heads) for _ in range(enc_layers))
        self.enc_ffn = nn.ModuleList(_FFNBlock(dim, ffn_dim) for _ in range(enc_layers))
        self.transformer_cross_attention_layers = nn.ModuleList(
            _CrossAttentionBlock(dim, heads) for _ in range(dec_layers))
        self.transformer_self_attention_layers = nn.ModuleList(
            _SelfAttentionBlock(dim, heads) for _ in range(dec_layers))
        self.transformer_ffn_layers = nn.ModuleList(_FFNBlock(dim, ffn_dim) for _ in range(dec_layers))

    def forward(self, frame_queries: Tensor, sentence: Tensor) -> Tensor:
        k, t, q, c = frame_queries.shape
        if q != self.fq_pos.num_embeddings:
            raise ValueError(f"VOC has {self.fq_pos.num_embeddings} frame-query slots, got {q}")
        x = frame_queries.reshape(k, t * q, c)                          # frame-major tokens
        for attn, ffn in zip(self.enc_self_attn, self.enc_ffn):
            x = ffn(attn(x))
        x_pos = self.fq_pos.weight.repeat(t, 1)[None].expand(k, -1, -1)  # slot q of every frame
        pos = self.query_embed.weight[None].expand(k, -1, -1)
        out = sentence[:, None, :].expand(-1, pos.shape[1], -1)
        for cross, attn, ffn in zip(self.transformer_cross_attention_layers,
                                    self.transformer_self_attention_layers,
                                    self.transformer_ffn_layers):
            out = ffn(attn(cross(out, pos, x, x_pos), pos))
        return self.decoder_norm(out)


# ----------------------------------------------------------------------------- mask features
class SpatialDecoder(nn.Module):
    """MTTR's FPN-like spatial decoder (SOC's ``FPNSpatialDecoder`` with three lateral
    inputs): 3x3 conv + GroupNorm(8) + ReLU blocks halving the channels, each finer level's
    1x1 ``adapter`` added to the nearest-upsampled coarser result, then ``out_lay``.

    forward(x (N, C, h32, w32), laterals [(N, C, h16, w16), (N, C, h8, w8),
    (N, C4, h4, w4)]) -> (N, mask_dim, h4, w4). The adapted finest lateral may be given
    once for ``repeat`` consecutive groups (sentences): ``fine_repeat``.
    """

    def __init__(self, dim: int, fine_channels: int, mask_dim: int):
        super().__init__()
        widths = [dim, dim // 2, dim // 4, dim // 8, dim // 16]
        self.lay1, self.gn1 = nn.Conv2d(dim, widths[0], 3, padding=1), nn.GroupNorm(8, widths[0])
        self.lay2, self.gn2 = nn.Conv2d(widths[0], widths[1], 3, padding=1), nn.GroupNorm(8, widths[1])
        self.lay3, self.gn3 = nn.Conv2d(widths[1], widths[2], 3, padding=1), nn.GroupNorm(8, widths[2])
        self.lay4, self.gn4 = nn.Conv2d(widths[2], widths[3], 3, padding=1), nn.GroupNorm(8, widths[3])
        self.lay5, self.gn5 = nn.Conv2d(widths[3], widths[4], 3, padding=1), nn.GroupNorm(8, widths[4])
        self.adapter1 = nn.Conv2d(dim, widths[1], 1)
        self.adapter2 = nn.Conv2d(dim, widths[2], 1)
        self.adapter3 = nn.Conv2d(fine_channels, widths[3], 1)
        self.out_lay = nn.Conv2d(widths[4], mask_dim, 3, padding=1)

    @staticmethod
    def _block(x: Tensor, conv: nn.Conv2d, norm: nn.GroupNorm) -> Tensor:
        return F.relu(norm(conv(x)))

    @staticmethod
    def _merge(lateral: Tensor, x: Tensor) -> Tensor:
        return lateral + F.interpolate(x, size=lateral.shape[-2:], mode="nearest")

    def forward(self, x: Tensor, laterals: list[Tensor], fine_repeat: int = 1) -> Tensor:
        x = self._block(self._block(x, self.lay1, self.gn1), self.lay2, self.gn2)
        x = self._block(self._merge(self.adapter1(laterals[0]), x), self.lay3, self.gn3)
        x = self._block(self._merge(self.adapter2(laterals[1]), x), self.lay4, self.gn4)
        fine = self.adapter3(laterals[2])
        if fine_repeat > 1:
            fine = fine[None].expand(fine_repeat, *fine.shape).flatten(0, 1)
        x = self._block(self._merge(fine, x), self.lay5, self.gn5)
        return self.out_lay(x)


# ----------------------------------------------------------------------------- the model
class SOC(ReferFormer):
    """SOC for inference, with ReferFormer's interface (``load_tokenizer``, ``tokenize``,
    ``predict``, ``forward``, ``prepare_for_inference`` are ReferFormer's). Parameter names
    are the official ones except ``backbone.0.`` -> ``backbone.`` (``convert_state``)."""

    def __init__(self, cfg: ReferFormerConfig):
        nn.Module.__init__(self)
        if cfg.num_feature_levels != 4:
            raise ValueError("SOC's spatial decoder needs num_feature_levels 4")
        soc = cfg.soc
        if soc.voc_queries != cfg.num_queries:
            raise ValueError(f"SOC adds video query q to frame query q: voc_queries "
                             f"({soc.voc_queries}) must equal num_queries ({cfg.num_queries})")
        channels = self._build_detector(cfg)
        dim = cfg.hidden_dim
        self.txt_proj = FeatureResizer(cfg.text.hidden_size, dim)
        self.vlf = VisionLanguageFusion(dim, cfg.nheads)
        self.spatial_decoder = SpatialDecoder(dim, channels[0], cfg.mask_dim)
        self.voc = VideoObjectClusters(dim, cfg.num_queries, soc.voc_queries, soc.voc_heads,
                                       soc.voc_ffn, soc.voc_enc_layers, soc.voc_dec_layers)
        self._build_controller(cfg)

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """-> words (K, L, C), their sine encoding (K, L, C), padding (K, L) bool, and the
        sentence (K, C): RoBERTa's pooler output through the same ``txt_proj``."""
        out = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask)
        words = self.txt_proj(out.last_hidden_state)
        padding = attention_mask.ne(1)
        sentence = self.txt_proj(out.pooler_output)
        return words, sine_position_1d(padding, words.shape[-1]), padding, sentence

    def _predict_video(self, frames: Tensor, words: Tensor, word_pos: Tensor, padding: Tensor,
                       sentence: Tensor) -> ReferFormerPredictions:
        """frames (T, 3, H, W) of one video, k sentences -> predictions (k, T, ...) of the
        first decoder layer's heads (see the module docstring)."""
        cfg = self.cfg
        t, _, height, width = frames.shape
        k = words.shape[0]
        autocast = torch.autocast(frames.device.type, dtype=torch.bfloat16,
                                  enabled=cfg.inference.bf16)
        chunks = self._chunks(t)
        with autocast:
            clip_maps = self.backbone(frames, t) if self.backbone.temporal else None
            stage = []
            for chunk in chunks:
                maps = ([m[chunk] for m in clip_maps] if clip_maps is not None
                        else self.backbone(self._frames_in(frames[chunk]), chunk.stop - chunk.start))
                stage.append(self._encode_chunk(maps, words, word_pos, padding))
            del clip_maps
            video = self.voc(torch.cat([s["hs_last"] for s in stage], 1), sentence)  # (k, Q, C)
            hs = torch.cat([s["hs"] for s in stage], 1) + video[:, None]          # (k, T, Q, C)
            logits = self.class_embed[OUTPUT_LAYER](hs)
            delta = self.bbox_embed[OUTPUT_LAYER](hs)
            reference = torch.cat([s["reference"] for s in stage], 1)
            boxes = refine_boxes(delta, reference)
            masks = []
            scale = torch.tensor([width, height], dtype=torch.float32, device=frames.device)
            for chunk, s in zip(chunks, stage):
                n = chunk.stop - chunk.start
                params = self.controller(hs[:, chunk]).flatten(0, 1)         # (k*n, Q, P)
                centres = s["centres"].flatten(0, 1) * scale
                out = dynamic_mask_logits(s["features"].flatten(0, 1).float(), params.float(),
                                          centres, cfg.dynamic_mask_channels,
                                          cfg.controller_layers, cfg.rel_coord)
                masks.append(out.view(k, n, *out.shape[1:]))
        return ReferFormerPredictions(logits=logits.float(), boxes=boxes.float(),
                                      masks=torch.cat(masks, 1))

    def _transformer(self, srcs: list[Tensor], poses: list[Tensor]) -> dict:
        """The deformable encoder and decoder (rvos's layers, the official order) on the L
        levels (N, C, H_l, W_l) of N frame rows, with zero initial decoder content.

        Returns ``hs`` (N, Q, C) the output of decoder layer :data:`OUTPUT_LAYER`,
        ``reference`` (N, Q, 2 | 4) the reference its box head refines, ``centres`` (N, Q, 2)
        its refined reference (the mask centres), ``hs_last`` (N, Q, C) the last layer's
        output (VOC's input), ``memory`` the first L-1 levels' memory (N, C, H_l, W_l).
        """
        tr, cfg = self.transformer, self.cfg
        n = srcs[0].shape[0]
        shapes = [(s.shape[-2], s.shape[-1]) for s in srcs]
        src = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)          # (N, S, C)
        lvl_pos = torch.cat([p.flatten(1).t() + tr.level_embed[i] for i, p in enumerate(poses)], 0)
        memory = tr.encoder(src, lvl_pos[None].expand(n, -1, -1), shapes)
        query_pos = self.query_embed.weight[None].expand(n, -1, -1)
        reference = tr.reference_points(query_pos).sigmoid()                      # (N, Q, 2)
        tgt = torch.zeros_like(query_pos)
        out: dict = {}
        for i, layer in enumerate(tr.decoder.layers):
            before = reference
            tgt = layer(tgt, query_pos, reference[:, :, None].expand(-1, -1, len(shapes), -1),
                        memory, shapes)
            if cfg.with_box_refine:
                delta = self.bbox_embed[i](tgt)
                reference = refine_boxes(delta, reference)
            if i == OUTPUT_LAYER:
                out.update(hs=tgt, reference=before, centres=reference[..., :2].float())
        out["hs_last"] = tgt
        maps, start = [], 0
        for h, w in shapes[:-1]:
            maps.append(memory[:, start:start + h * w].transpose(1, 2).reshape(n, -1, h, w))
            start += h * w
        out["memory"] = maps
        return out

    def _encode_chunk(self, maps: list[Tensor], words: Tensor, word_pos: Tensor,
                      padding: Tensor) -> dict:
        """The per-frame part for the four backbone maps (n, C_i, H_i, W_i) of n frames and
        k sentences -> (k, n, ...) entries ``hs``, ``reference``, ``centres``, ``hs_last``
        (:meth:`_transformer`) and ``features`` (the mask features (k, n, mask_dim, H/4, W/4))."""
        n, k, device = maps[0].shape[0], words.shape[0], maps[0].device
        rows = torch.arange(k, device=device).repeat_interleave(n)      # sentence of each row
        srcs, poses = [], []
        inputs = maps[-3:] + [maps[-1]]        # the extra stride-64 level is made from stage 4
        for level, proj in enumerate(self.input_proj):
            src = proj(inputs[level])
            src = src[None].expand(k, *src.shape).flatten(0, 1)
            srcs.append(self.vlf(src, words[rows], word_pos[rows], padding[rows]))
            poses.append(self._position(*src.shape[-2:], device))
        out = self._transformer(srcs, poses)
        memory = out.pop("memory")
        out["features"] = self.spatial_decoder(memory[2], [memory[1], memory[0], maps[0]],
                                               fine_repeat=k)
        return {name: x.view(k, n, *x.shape[1:]) for name, x in out.items()}


MODEL = SOC


# ----------------------------------------------------------------------------- conversion
# keys only SOC has (with ReferFormer's SIGNATURE_KEYS minus its pixel decoder)
SIGNATURE_KEYS = ("voc.fq_pos.weight", "voc.query_embed.weight", "spatial_decoder.out_lay.weight",
                  "txt_proj.fc.weight", "vlf.multihead_attn.in_proj_weight", "query_embed.weight",
                  "transformer.level_embed", "controller.layers.0.weight",
                  "text_encoder.embeddings.word_embeddings.weight")
DROPPED = (
    # the box heads again, hung on the decoder for box refinement (checked equal)
    re.compile(r"^transformer\.decoder\.bbox_embed\."),
    # the language side of the fusion: only feeds the training-time text feature
    re.compile(r"^lvf\."),
    # a constant buffer of older transformers versions; BatchNorm counters
    re.compile(r"^text_encoder\.embeddings\.position_ids$"),
    re.compile(r"\.num_batches_tracked$"),
    # FLOP-counter buffers (thop) some training runs leave in the state dict
    re.compile(r"(^|\.)total_(params|ops)$"),
)


def detect(state: dict[str, Tensor]) -> bool:
    """An SOC state dict: it has the object-cluster module and the MTTR spatial decoder."""
    return "voc.fq_pos.weight" in state and "spatial_decoder.out_lay.weight" in state


def config_from_state(state: dict[str, Tensor], source: Path | None = None) -> ReferFormerConfig:
    """The architecture of an official SOC state dict, read from its names and shapes."""
    missing = [k for k in SIGNATURE_KEYS if k not in state]
    if missing:
        raise RVOSError(f"not an SOC checkpoint: it lacks {', '.join(missing)}", source)
    backbone = backbone_name(state, source)
    if not backbone.startswith("video_swin"):
        raise RVOSError(f"SOC releases Video Swin backbones only; this checkpoint has "
                        f"{backbone}, which rvos's SOC does not support", source)
    mask_dim = state["spatial_decoder.out_lay.weight"].shape[0]
    last = count_children(state, "controller.layers.") - 1
    layers, channels, rel = dynamic_head_shape(state[f"controller.layers.{last}.weight"].shape[0], mask_dim)
    voc_ffn = state.get("voc.transformer_ffn_layers.0.linear1.weight")
    soc = SOCConfig(voc_queries=state["voc.query_embed.weight"].shape[0],
                    voc_enc_layers=count_children(state, "voc.enc_self_attn."),
                    voc_dec_layers=count_children(state, "voc.transformer_ffn_layers."),
                    voc_ffn=voc_ffn.shape[0] if voc_ffn is not None else 2048)
    return ReferFormerConfig(
        family="soc", backbone=backbone, **detector_fields(state),
        mask_dim=mask_dim, controller_layers=layers, dynamic_mask_channels=channels,
        rel_coord=rel, text=text_config_from_state(state), soc=soc,
        inference=ReferFormerInferenceConfig(max_size=640))   # RandomResize([360], max_size=640)


def convert_state(state: dict[str, Tensor], expected: dict[str, Tensor],
                  source: Path | None = None) -> dict[str, Tensor]:
    """Official names -> rvos names, checked against the model's own state dict
    ``expected``: every key mapped (``backbone.0.`` -> ``backbone.``, the rest unchanged) or
    dropped by a rule of :data:`DROPPED`, none left over, every shape equal."""
    return map_official_state(state, expected, source, dropped=DROPPED, model_name="SOC")
