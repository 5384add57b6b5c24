"""The ReferFormer model at inference parity with the official code (wjn922/ReferFormer,
``models/referformer.py``), scheduled for a CPU.

What it computes is the official forward of an unpadded clip, for the outputs inference
uses: the last decoder layer's ``pred_logits``, ``pred_boxes`` and ``pred_masks``. What it
does not compute: masks, boxes and scores of the other decoder layers (the official code
makes them at inference and throws them away), and the sampling-point statistics of the
decoder.

How it is scheduled (``ReferFormerInferenceConfig``):
- the per-frame parts (backbone, early fusion, encoder, decoder, most of the FPN, mask head)
  run over ``frame_chunk`` frames at a time; only the FPN's self-attention sees all frames,
  on subsampled maps (``pixel_decoder``), so peak memory grows slowly with the clip length;
- the backbone runs once per frame whatever the number of sentences;
- attention goes through ``scaled_dot_product_attention``; the dynamic mask head shares one
  matmul across queries instead of repeating the features per query.

Names: V videos, K sentences (``video_of_text`` says whose), T frames, Q queries, C width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rvos.errors import RVOSError
from rvos.models.outputs import RVOSOutput
from rvos.models.referformer.backbone import ResNetBackbone, build_backbone
from rvos.models.referformer.config import ReferFormerConfig
from rvos.models.query.layers import MLP
from rvos.models.referformer.layers import (Attention, FeatureResizer, refine_boxes,
                                            sine_position_1d, sine_position_2d)
from rvos.models.referformer.pixel_decoder import CrossModalFPN, dynamic_mask_logits
from rvos.models.referformer.transformer import DeformableTransformer


@dataclass
class ReferFormerPredictions:
    """The official inference outputs, one row per sentence.

    logits (K, T, Q, classes); boxes (K, T, Q, 4) normalised (cx, cy, w, h);
    masks (K, T, Q, H/4, W/4) mask logits at stride 4 of the input.
    """

    logits: Tensor
    boxes: Tensor
    masks: Tensor


class VisionLanguageFusion(nn.Module):
    """Early fusion of a level with the words: x * attention(x -> words) (no residual)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.multihead_attn = Attention(dim, heads)

    def forward(self, x: Tensor, words: Tensor, word_pos: Tensor, word_padding: Tensor) -> Tensor:
        """x (N, C, h, w); words, word_pos (N, L, C); word_padding (N, L) -> (N, C, h, w)."""
        n, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        fused = tokens * self.multihead_attn(tokens, words + word_pos, words, word_padding)
        return fused.transpose(1, 2).reshape(n, c, h, w)


def _roberta(cfg: ReferFormerConfig) -> nn.Module:
    """RoBERTa with the checkpoint's architecture and random weights (the weights come from
    the converted checkpoint), reading and downloading nothing."""
    from transformers import RobertaConfig, RobertaModel

    from rvos.models.text import quiet_transformers

    t = cfg.text
    with quiet_transformers():
        config = RobertaConfig(vocab_size=t.vocab_size, hidden_size=t.hidden_size,
                               num_hidden_layers=t.num_layers, num_attention_heads=t.num_heads,
                               intermediate_size=t.intermediate_size,
                               max_position_embeddings=t.max_positions,
                               type_vocab_size=t.type_vocab_size, layer_norm_eps=t.layer_norm_eps,
                               pad_token_id=1, bos_token_id=0, eos_token_id=2)
        return RobertaModel(config)


def level_projections(channels: list[int], dim: int) -> nn.ModuleList:
    """The official ``input_proj``: 1x1 conv + GroupNorm(32) of the backbone's last three
    maps, and a strided 3x3 conv + GroupNorm of the last one (the extra stride-64 level)."""
    return nn.ModuleList(
        [nn.Sequential(nn.Conv2d(c, dim, 1), nn.GroupNorm(32, dim)) for c in channels[-3:]]
        + [nn.Sequential(nn.Conv2d(channels[-1], dim, 3, stride=2, padding=1),
                         nn.GroupNorm(32, dim))])


class ReleasedModel(nn.Module):
    """What every released family's inference model shares: RoBERTa's tokenizer, the frame
    chunks of the per-frame parts, and the backbone's inference layout. Subclasses set
    ``cfg`` (a :class:`ReferFormerConfig`), ``backbone``, ``_tokenizer = None`` and
    ``_prepared = False``."""

    def load_tokenizer(self) -> None:
        """Load RoBERTa's tokenizer now (an RVOSError naming what to supply if it is absent)."""
        if self._tokenizer is None:
            self._tokenizer = load_roberta_tokenizer(self.cfg.text.tokenizer)

    def tokenize(self, texts: list[str], device: torch.device) -> tuple[Tensor, Tensor]:
        """Sentences -> (input_ids (K, L), attention_mask (K, L)) as the official code
        tokenizes them (padding to the longest, no truncation)."""
        self.load_tokenizer()
        tokens = self._tokenizer(texts, padding="longest", return_tensors="pt")
        return tokens["input_ids"].to(device), tokens["attention_mask"].to(device)

    @staticmethod
    def _video_of_text(video_of_text: Tensor | None, k_count: int, v_count: int,
                       device: torch.device) -> Tensor:
        """The video of each of K sentences (K,) long, checked to index the V videos;
        default: sentence k on video k."""
        if video_of_text is None:
            if k_count != v_count:
                raise ValueError(f"{k_count} sentences for {v_count} videos: pass video_of_text")
            return torch.arange(k_count, device=device)
        if k_count and not 0 <= int(video_of_text.min()) <= int(video_of_text.max()) < v_count:
            raise ValueError(f"video_of_text must index the {v_count} videos, got {video_of_text.tolist()}")
        return video_of_text

    def _chunks(self, t: int) -> list[slice]:
        size = self.cfg.inference.frame_chunk or t
        return [slice(s, min(s + size, t)) for s in range(0, t, size)]

    def _channels_last(self) -> bool:
        """NHWC convolutions: the ResNet backbones (Swin's patch embeddings are not 2-D convs)."""
        return self.cfg.inference.channels_last and isinstance(self.backbone, ResNetBackbone)

    def _frames_in(self, frames: Tensor) -> Tensor:
        if self._channels_last():
            return frames.contiguous(memory_format=torch.channels_last)
        return frames

    def prepare_for_inference(self) -> "ReleasedModel":
        """Apply the inference config's layout changes (after the weights are loaded: the
        folded backbone no longer takes the checkpoint's state dict). Applied once."""
        if not self._prepared:
            if self.cfg.inference.fold_frozen_bn and hasattr(self.backbone, "fold_frozen_batchnorm"):
                self.backbone.fold_frozen_batchnorm()
            if self._channels_last():
                self.backbone.to(memory_format=torch.channels_last)
            self._prepared = True
        return self.eval()


class ReferFormer(ReleasedModel):
    """ReferFormer (Wu et al., CVPR 2022) for inference. Parameter names are the official
    ones except ``backbone.0.`` -> ``backbone.`` and the decoder's duplicate box heads
    (``rvos.models.referformer.convert``)."""

    def __init__(self, cfg: ReferFormerConfig):
        super().__init__()
        if cfg.num_feature_levels != 4:
            raise ValueError("ReferFormer's cross-modal FPN needs num_feature_levels 4")
        channels = self._build_detector(cfg)
        dim = cfg.hidden_dim
        self.resizer = FeatureResizer(cfg.text.hidden_size, dim)
        self.fusion_module = VisionLanguageFusion(dim, cfg.nheads)
        self.pixel_decoder = CrossModalFPN([channels[0], dim, dim, dim], dim, cfg.mask_dim,
                                           cfg.dim_feedforward, heads=8)
        self._build_controller(cfg)

    def _build_detector(self, cfg: ReferFormerConfig) -> list[int]:
        """The parts every family built on ReferFormer keeps under the official names: the
        backbone, the four level projections, the deformable transformer, the queries, the
        per-layer class and box heads, RoBERTa. Returns the backbone's channels."""
        if cfg.controller_layers < 2:
            raise ValueError("controller_layers must be at least 2")
        self.cfg = cfg
        dim = cfg.hidden_dim
        self.backbone = build_backbone(cfg.backbone, cfg.dilation)
        channels = self.backbone.num_channels
        self.input_proj = level_projections(channels, dim)
        self.transformer = DeformableTransformer(dim, cfg.nheads, cfg.enc_layers, cfg.dec_layers,
                                                 cfg.dim_feedforward, cfg.num_feature_levels,
                                                 cfg.enc_n_points, cfg.dec_n_points)
        self.query_embed = nn.Embedding(cfg.num_queries, dim)
        self.class_embed = nn.ModuleList(nn.Linear(dim, cfg.num_classes) for _ in range(cfg.dec_layers))
        self.bbox_embed = nn.ModuleList(MLP(dim, dim, 4, 3) for _ in range(cfg.dec_layers))
        self.text_encoder = _roberta(cfg)
        return channels

    def _build_controller(self, cfg: ReferFormerConfig) -> None:
        """The controller that generates the dynamic mask head's weights (the official
        layout: the last layer gives one channel), and the inference state."""
        cin = cfg.mask_dim + 2 if cfg.rel_coord else cfg.mask_dim
        ch = cfg.dynamic_mask_channels
        num_params = (ch * cin + ch * ch * (cfg.controller_layers - 2) + ch
                      + ch * (cfg.controller_layers - 1) + 1)
        self.controller = MLP(cfg.hidden_dim, cfg.hidden_dim, num_params, 3)
        self._tokenizer = None
        self._prepared = False
        self._positions: dict[tuple[int, int], Tensor] = {}

    # ---- text
    def encode_text(self, input_ids: Tensor, attention_mask: Tensor
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """-> words (K, L, C), their sine encoding (K, L, C), padding (K, L) bool, and the
        sentence feature (K, C) from RoBERTa's pooler."""
        out = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask)
        words = self.resizer(out.last_hidden_state)
        padding = attention_mask.ne(1)
        sentence = self.resizer(out.pooler_output)
        return words, sine_position_1d(padding, words.shape[-1]), padding, sentence

    def _position(self, h: int, w: int, device: torch.device) -> Tensor:
        key = (h, w)
        if key not in self._positions or self._positions[key].device != device:
            self._positions[key] = sine_position_2d(h, w, self.cfg.hidden_dim, device)
        return self._positions[key]

    # ---- vision, per chunk of frames
    @torch.no_grad()
    def predict(self, frames: Tensor, input_ids: Tensor, attention_mask: Tensor,
                video_of_text: Tensor | None = None) -> ReferFormerPredictions:
        """frames (V, T, 3, H, W) normalised; token ids and mask (K, L); video_of_text (K,)
        long (default: sentence k on video k) -> :class:`ReferFormerPredictions`."""
        v_count, t, _, h, w = frames.shape
        k_count = input_ids.shape[0]
        video_of_text = self._video_of_text(video_of_text, k_count, v_count, frames.device)
        words, word_pos, padding, sentence = self.encode_text(input_ids, attention_mask)
        results: list[tuple[Tensor, ReferFormerPredictions]] = []
        for v in range(v_count):
            texts = (video_of_text == v).nonzero().flatten()
            if len(texts):
                results.append((texts, self._predict_video(frames[v], words[texts], word_pos[texts],
                                                           padding[texts], sentence[texts])))
        out = [None] * k_count
        for texts, pred in results:
            for j, k in enumerate(texts.tolist()):
                out[k] = (pred.logits[j], pred.boxes[j], pred.masks[j])
        return ReferFormerPredictions(*(torch.stack(parts) for parts in zip(*out)))

    def _predict_video(self, frames: Tensor, words: Tensor, word_pos: Tensor, padding: Tensor,
                       sentence: Tensor) -> ReferFormerPredictions:
        """frames (T, 3, H, W) of one video, k sentences -> predictions (k, T, ...)."""
        t = frames.shape[0]
        autocast = torch.autocast(frames.device.type, dtype=torch.bfloat16,
                                  enabled=self.cfg.inference.bf16)
        chunks = self._chunks(t)
        with autocast:
            stage = self._clip_stages(frames, chunks, words, word_pos, padding, sentence)
            masks = self._clip_masks(frames, chunks, stage, words, word_pos, padding)
        return ReferFormerPredictions(
            logits=torch.cat([s["logits"] for s in stage], 1).float(),
            boxes=torch.cat([s["boxes"] for s in stage], 1).float(),
            masks=masks)

    def _backbone_chunks(self, frames: Tensor, chunks: list[slice]):
        """The backbone's four maps (n, C_i, H_i, W_i) of each chunk of frames, in order (a
        Video Swin mixes the frames of the clip: it sees the whole clip at once)."""
        t = frames.shape[0]
        clip_maps = self.backbone(frames, t) if self.backbone.temporal else None
        for chunk in chunks:
            yield ([m[chunk] for m in clip_maps] if clip_maps is not None
                   else self.backbone(self._frames_in(frames[chunk]), chunk.stop - chunk.start))

    def _clip_stages(self, frames: Tensor, chunks: list[slice], words: Tensor, word_pos: Tensor,
                     padding: Tensor, sentence: Tensor) -> list[dict]:
        """Per chunk of frames, :meth:`_encode_chunk`'s entries (k, n, ...)."""
        return [self._encode_chunk(maps, words, word_pos, padding, sentence)
                for maps in self._backbone_chunks(frames, chunks)]

    def _clip_masks(self, frames: Tensor, chunks: list[slice], stage: list[dict], words: Tensor,
                    word_pos: Tensor, padding: Tensor) -> Tensor:
        """The FPN over the clip and the dynamic mask head: the chunks' ``laterals``,
        ``attn_in``, ``params`` and ``centres`` -> mask logits (k, T, Q, H/4, W/4)."""
        cfg, fpn = self.cfg, self.pixel_decoder
        t, _, height, width = frames.shape
        k = words.shape[0]
        # the FPN's cross-frame self-attention, level by level over the whole clip
        attended = []
        for level in range(fpn.levels):
            qk = torch.cat([s["attn_in"][level][0] for s in stage], 1)
            val = torch.cat([s["attn_in"][level][1] for s in stage], 1)
            clips = qk.shape[0]                      # 1 for the text-free stride-4 level
            out = fpn.attend(level, qk.flatten(0, 1), val.flatten(0, 1), clips)
            attended.append(out.view(clips, t, *out.shape[1:]))
        masks = []
        for chunk, s in zip(chunks, stage):
            n = chunk.stop - chunk.start
            laterals = [lat.expand(k, *lat.shape[1:]).flatten(0, 1) for lat in s["laterals"]]
            att = [a[:, chunk].expand(k, n, *a.shape[2:]).flatten(0, 1) for a in attended]
            pos = [self._position(*lat.shape[-2:], frames.device) for lat in laterals]
            rows = torch.arange(k, device=frames.device).repeat_interleave(n)
            features = fpn.decode(laterals, att, pos, words, word_pos, padding, rows)
            centres = s["centres"] * torch.tensor([width, height], dtype=torch.float32,
                                                  device=frames.device)
            logits = dynamic_mask_logits(features.float(), s["params"].float(), centres,
                                         cfg.dynamic_mask_channels, cfg.controller_layers,
                                         cfg.rel_coord)
            masks.append(logits.view(k, n, *logits.shape[1:]))
        return torch.cat(masks, 1)

    def _project(self, maps: list[Tensor]) -> list[Tensor]:
        """The four backbone maps (n, C_i, H_i, W_i) -> the transformer's four levels
        (n, C, h_l, w_l) before any fusion (the extra stride-64 level is made from res5)."""
        inputs = maps[-3:] + [maps[-1]]
        return [proj(x) for proj, x in zip(self.input_proj, inputs)]

    def _fuse(self, projected: list[Tensor], words: Tensor, word_pos: Tensor, padding: Tensor
              ) -> tuple[list[Tensor], list[Tensor]]:
        """Early fusion of the n frames' levels with each of the k sentences' words ->
        (levels (k*n, C, h_l, w_l) sentence-major, their sine encodings (C, h_l, w_l))."""
        n, k, device = projected[0].shape[0], words.shape[0], projected[0].device
        rows = torch.arange(k, device=device).repeat_interleave(n)      # sentence of each row
        srcs, poses = [], []
        for src in projected:
            src = src[None].expand(k, *src.shape).flatten(0, 1)
            srcs.append(self.fusion_module(src, words[rows], word_pos[rows], padding[rows]))
            poses.append(self._position(*src.shape[-2:], device))
        return srcs, poses

    def _heads(self, hs: Tensor, reference_in: Tensor, reference_out: Tensor, k: int, n: int) -> dict:
        """The last decoder layer's heads: its output hs (k*n, Q, C), the reference it read
        (k*n, Q, 2 | 4) and the one it refined (k*n, Q, 2 | 4) -> ``logits``, ``boxes``
        (k, n, Q, ...), ``params`` (the dynamic head's weights, (k*n, Q, P)) and
        ``centres`` (normalised reference points of the masks, (k*n, Q, 2))."""
        last = self.cfg.dec_layers - 1
        delta = self.bbox_embed[last](hs)
        boxes = refine_boxes(delta, reference_in)
        return {
            "logits": self.class_embed[last](hs).view(k, n, *hs.shape[1:2], -1),
            "boxes": boxes.view(k, n, *boxes.shape[1:]),
            "params": self.controller(hs),
            "centres": reference_out[..., :2].float(),
        }

    def _fpn_inputs(self, lateral0: Tensor, memory: list[Tensor], k: int) -> dict:
        """The FPN's per-chunk inputs: the stride-4 lateral (n, C, H/4, W/4) shared by the
        sentences and the encoder memory's three levels as maps (k*n, C, h_l, w_l) ->
        ``laterals`` (per FPN level, finest first; the stride-4 one (1, n, ...), the others
        (k, n, ...)) and ``attn_in`` (their subsampled attention inputs, same layout)."""
        fpn, device = self.pixel_decoder, lateral0.device
        n = lateral0.shape[0]
        laterals = [lateral0[None]]
        attn_in = [tuple(x[None] for x in fpn.attention_inputs(
            0, lateral0, self._position(*lateral0.shape[-2:], device)))]
        for level in (1, 2, 3):
            lat = fpn.lateral(level, memory[level - 1])
            laterals.append(lat.view(k, n, *lat.shape[1:]))
            pos = self._position(*lat.shape[-2:], device)
            attn_in.append(tuple(x.view(k, n, *x.shape[1:])
                                 for x in fpn.attention_inputs(level, lat, pos)))
        return {"laterals": laterals, "attn_in": attn_in}

    def _encode_chunk(self, maps: list[Tensor], words: Tensor, word_pos: Tensor,
                      padding: Tensor, sentence: Tensor) -> dict:
        """Everything per frame after the backbone up to the FPN's attention, for the four
        backbone maps (n, C_i, H_i, W_i) of n frames, and k sentences.

        Returns (k, n, ...)-shaped entries: ``logits``, ``boxes``, ``params`` (the dynamic
        head's weights), ``centres`` (normalised reference points of the masks),
        ``laterals`` (per FPN level, finest first; the stride-4 one shared by the
        sentences, (1, n, ...)) and ``attn_in`` (their subsampled attention inputs).
        """
        cfg = self.cfg
        n, k, device = maps[0].shape[0], words.shape[0], maps[0].device
        rows = torch.arange(k, device=device).repeat_interleave(n)      # sentence of each row
        srcs, poses = self._fuse(self._project(maps), words, word_pos, padding)
        hs, reference0, references, memory = self.transformer(
            srcs, poses, sentence[rows], self.query_embed.weight,
            self.bbox_embed if cfg.with_box_refine else None)
        last = cfg.dec_layers - 1
        reference = references[last - 1] if last > 0 else reference0
        out = self._heads(hs, reference, references[last], k, n)
        out.update(self._fpn_inputs(self.pixel_decoder.lateral(0, maps[0]), memory, k))
        return out

    # ---- the rvos model interface (Predictor, evaluation)
    def forward(self, frames: Tensor, texts: list[str], clip_index: Tensor) -> RVOSOutput:
        """frames (V, T, 3, H, W), K sentences, clip_index (K,) -> RVOSOutput with
        mask_logits (K, T, Q, H/4, W/4) and scores (K, T, Q).

        Scores: the class logit with one class (``--binary`` checkpoints). With several
        classes, the official selection takes the highest class of the time-averaged
        probabilities, which no per-frame score reproduces; every frame then gets that
        clip-level probability's logit, so the mean-score selection picks the same query.
        """
        input_ids, attention_mask = self.tokenize(texts, frames.device)
        pred = self.predict(frames, input_ids, attention_mask, clip_index)
        if pred.logits.shape[-1] == 1:
            scores = pred.logits[..., 0]
        else:
            clip = pred.logits.sigmoid().mean(1).max(-1).values                 # (K, Q)
            scores = torch.logit(clip, eps=1e-6)[:, None].expand(-1, pred.logits.shape[1], -1)
        return RVOSOutput(mask_logits=pred.masks, scores=scores, boxes=pred.boxes)


def load_roberta_tokenizer(folder: str):
    """RoBERTa's tokenizer from ``folder`` (vocab.json + merges.txt, or tokenizer.json) or,
    when empty, from the Hugging Face cache's roberta-base; never downloads."""
    from transformers import RobertaTokenizerFast

    from rvos.models.text import quiet_transformers

    source = folder or "roberta-base"
    try:
        with quiet_transformers():
            return RobertaTokenizerFast.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError, TypeError):
        raise RVOSError(
            "the RoBERTa tokenizer is not on this machine: download roberta-base's vocab.json "
            "and merges.txt (huggingface.co/FacebookAI/roberta-base) into a folder and pass "
            "model.referformer.text.tokenizer=<folder>", folder or None) from None
