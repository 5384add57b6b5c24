"""BIFIT at inference parity with the official code (LANMNG/BIFIT at 3c88769:
``models/referformer.py``, ``models/deformable_transformer.py``), built on rvos's ReferFormer.

What BIFIT changes in ReferFormer's inference, and how it is computed here:

1. Words to clip, before the transformer (official ``text_fusion_module``, ReferFormer's
   gated fusion module with the roles swapped). For each of the four levels in turn
   (strides 8, 16, 32, then the extra stride-64 level), the words attend to that level's
   projected visual tokens of all T frames of the clip at once (the frames' 2-D sine
   encodings added to the keys; the tokens are the projections *before* ReferFormer's early
   fusion) and are multiplied by the result, ``w <- w * attn(w, clip)``; the product feeds
   the next level. One attention serves all levels. Each word is a query of its own, so a
   word's update depends on that word alone, and only the first word's is used: a Linear +
   tanh of it (official ``poolout_module``) replaces RoBERTa's pooled sentence as the
   content of every object query. So only the first word is computed here (the official
   code updates every word and discards all but the first). The other direction, the
   visual tokens attending to the words, is ReferFormer's early fusion with the text
   encoder's own words, unchanged, and the FPN reads those words too.
2. Inter-frame interaction in the decoder (official ``DeformableTransformerDecoder``):
   after every deformable decoder layer, the T x Q queries of the clip pass
   ``query_enc_layers`` post-norm transformer encoder layers (self-attention without
   positions, ReLU FFN of ``dim_feedforward``), the same layers after every decoder layer;
   the box refinement then reads the mixed queries, and so do the heads.

Scheduling (the ReferFormer model's ``frame_chunk``): the backbone, the projections, the
early fusion, the encoder, the decoder layers' own work and the heads run chunk by chunk;
what mixes frames runs over the whole clip: the words-to-clip attention (its keys and
values are projected chunk by chunk into one clip-long buffer per level), the queries'
inter-frame layers (T x Q tokens, small) and, as in ReferFormer, the FPN's self-attention.
The decoder therefore runs after every chunk is encoded, each layer chunk by chunk on that
chunk's encoder memory, then the inter-frame layers over the clip.

Not computed (the official code computes it at inference and discards it): the updated
words other than the first, RoBERTa's pooled sentence through the resizer (BIFIT replaces
it), and everything ReferFormer's parity model already skips (other decoder layers' heads,
sampling-point statistics).

Names: k sentences, T frames (n in a chunk), Q queries, C width, S tokens of a frame's
levels, L words.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rvos.models.deform_attn import SpatialShapes
from rvos.models.referformer.config import ReferFormerConfig
from rvos.models.referformer.layers import Attention, feed_forward, refine_boxes, sine_position_1d
from rvos.models.referformer.model import ReferFormer
from rvos.models.referformer.transformer import DecoderLayer


class WordsToClip(nn.Module):
    """Gated cross-attention of words to a clip's visual tokens of one level (official
    ``text_fusion_module``; ``multihead_attn`` has ``nn.MultiheadAttention``'s parameters).

    forward(words (k, L, C), maps: the level's projected maps of each chunk of frames, each
    (n, C, h, w), pos (C, h, w) the level's sine encoding) -> words * attention (k, L, C),
    every word attending to all T*h*w tokens (keys: token + position; values: token).
    The keys and values are projected chunk by chunk into one (T*h*w, C) buffer each.
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.multihead_attn = Attention(dim, heads)

    def forward(self, words: Tensor, maps: list[Tensor], pos: Tensor) -> Tensor:
        attn = self.multihead_attn
        k, length, c = words.shape
        heads, d = attn.heads, c // attn.heads
        w_q, w_k, w_v = attn.in_proj_weight.chunk(3)
        b_q, b_k, b_v = attn.in_proj_bias.chunk(3)
        pos_tokens = pos.flatten(1).t()                                     # (h*w, C)
        count = sum(m.shape[0] * m.shape[2] * m.shape[3] for m in maps)
        keys = values = None
        start = 0
        for m in maps:
            tokens = m.flatten(2).transpose(1, 2)                           # (n, h*w, C)
            key = F.linear(tokens + pos_tokens, w_k, b_k).reshape(-1, c)
            value = F.linear(tokens, w_v, b_v).reshape(-1, c)
            if keys is None:
                keys = key.new_empty(count, c)
                values = value.new_empty(count, c)
            keys[start:start + key.shape[0]] = key
            values[start:start + key.shape[0]] = value
            start += key.shape[0]
        # the words of all k sentences are one set of queries (each row attends on its own)
        q = F.linear(words, w_q, b_q).reshape(1, k * length, heads, d).transpose(1, 2)
        out = F.scaled_dot_product_attention(q.to(keys.dtype),
                                             keys.view(1, count, heads, d).transpose(1, 2),
                                             values.view(1, count, heads, d).transpose(1, 2))
        out = attn.out_proj(out.transpose(1, 2).reshape(k, length, c))
        return words * out


class SentencePool(nn.Module):
    """The official ``poolout_module``: tanh(Linear(first word)). forward((k, C)) -> (k, C)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dense = nn.Linear(dim, dim)

    def forward(self, first_word: Tensor) -> Tensor:
        return torch.tanh(self.dense(first_word))


class InterFrameLayer(nn.Module):
    """The official query encoder layer (DETR's ``TransformerEncoderLayer``, post-norm, no
    positional encoding, ReLU): forward(queries (k, T*Q, C)) -> (k, T*Q, C)."""

    def __init__(self, dim: int, heads: int, ffn_dim: int):
        super().__init__()
        self.self_attn = Attention(dim, heads)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm1(x + self.self_attn(x, x, x))
        return self.norm2(x + feed_forward(x, self.linear1, self.linear2))


class InterFrameDecoder(nn.Module):
    """BIFIT's decoder: ReferFormer's deformable decoder layers (``decoder_layers``, per
    frame), each followed by the ``query_encoder_layers`` over the clip's T x Q queries,
    with Deformable DETR's box refinement on the mixed queries.

    forward(tgt (k, T, Q, C), query_pos (Q, C), reference (k, T, Q, 2) in [0, 1],
    memories: the encoder memory of each chunk of frames, (k*n, S, C) sentence-major,
    chunks: the chunks' frame slices, spatial_shapes, bbox_embed (the model's box MLPs, or
    None without refinement)) -> (the last layer's queries (k, T, Q, C), the references
    after every layer, each (k, T, Q, 4) with refinement, else the initial (k, T, Q, 2)).
    """

    def __init__(self, layers: list[DecoderLayer], query_layers: list[InterFrameLayer]):
        super().__init__()
        self.decoder_layers = nn.ModuleList(layers)
        self.query_encoder_layers = nn.ModuleList(query_layers)

    def forward(self, tgt: Tensor, query_pos: Tensor, reference: Tensor, memories: list[Tensor],
                chunks: list[slice], spatial_shapes: SpatialShapes,
                bbox_embed: nn.ModuleList | None) -> tuple[Tensor, list[Tensor]]:
        k, t, q, c = tgt.shape
        levels = len(spatial_shapes)
        references = []
        for i, layer in enumerate(self.decoder_layers):
            out = None
            for chunk, memory in zip(chunks, memories):
                n = chunk.stop - chunk.start
                ref = reference[:, chunk].reshape(k * n, q, -1)
                y = layer(tgt[:, chunk].reshape(k * n, q, c), query_pos[None].expand(k * n, -1, -1),
                          ref[:, :, None].expand(-1, -1, levels, -1), memory, spatial_shapes)
                if out is None:
                    out = y.new_empty(k, t, q, c)
                out[:, chunk] = y.view(k, n, q, c)
            mixed = out.view(k, t * q, c)
            for encoder_layer in self.query_encoder_layers:
                mixed = encoder_layer(mixed)
            tgt = mixed.view(k, t, q, c)
            if bbox_embed is not None:
                delta = bbox_embed[i](tgt)
                reference = refine_boxes(delta, reference)
            references.append(reference)
        return tgt, references


class BIFIT(ReferFormer):
    """BIFIT (Lan et al., 2023) for inference: ReferFormer plus ``text_fusion_module``,
    ``poolout_module`` and the inter-frame decoder. Parameter names are the official ones
    except those ReferFormer's converter maps (``backbone.0.`` -> ``backbone.``, the
    decoder's duplicate box heads dropped)."""

    def __init__(self, cfg: ReferFormerConfig):
        super().__init__(cfg)
        dim, heads, ffn = cfg.hidden_dim, cfg.nheads, cfg.dim_feedforward
        # ReferFormer's decoder replaced by BIFIT's (official names: decoder_layers,
        # query_encoder_layers)
        self.transformer.decoder = InterFrameDecoder(
            [DecoderLayer(dim, ffn, cfg.num_feature_levels, heads, cfg.dec_n_points)
             for _ in range(cfg.dec_layers)],
            [InterFrameLayer(dim, heads, ffn) for _ in range(cfg.bifit.query_enc_layers)])
        self.text_fusion_module = WordsToClip(dim, heads)
        self.poolout_module = SentencePool(dim)

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """-> words (K, L, C), their sine encoding, padding (K, L) bool, and an empty (K, 0)
        in place of the pooled sentence (BIFIT makes its sentence from the clip)."""
        out = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask)
        words = self.resizer(out.last_hidden_state)
        padding = attention_mask.ne(1)
        return words, sine_position_1d(padding, words.shape[-1]), padding, words.new_empty(len(words), 0)

    def clip_sentence(self, projected: list[list[Tensor]], words: Tensor) -> Tensor:
        """The words-to-clip interaction and the pooler: projected (per chunk of frames, the
        four levels (n, C, h_l, w_l) before early fusion), words (k, L, C) -> the queries'
        content (k, C). Only the first word is carried (see the module doc)."""
        first = words[:, :1]
        for level in range(len(projected[0])):
            maps = [p[level] for p in projected]
            pos = self._position(*maps[0].shape[-2:], words.device)
            first = self.text_fusion_module(first, maps, pos)
        return self.poolout_module(first[:, 0])

    def _clip_stages(self, frames: Tensor, chunks: list[slice], words: Tensor, word_pos: Tensor,
                     padding: Tensor, sentence: Tensor) -> list[dict]:
        """Per chunk of frames, the entries of ReferFormer's ``_encode_chunk`` (``logits``,
        ``boxes``, ``params``, ``centres``, ``laterals``, ``attn_in``), in three passes:
        backbone and projections per chunk; the sentence from the whole clip, then early
        fusion, encoder and FPN inputs per chunk; the decoder over the clip, then the heads
        per chunk. ``sentence`` (RoBERTa's) is not used."""
        cfg, fpn = self.cfg, self.pixel_decoder
        t, k = frames.shape[0], words.shape[0]
        projected, lateral0 = [], []
        for maps in self._backbone_chunks(frames, chunks):
            projected.append(self._project(maps))
            lateral0.append(fpn.lateral(0, maps[0]))
        sentence = self.clip_sentence(projected, words)                            # (k, C)

        stage, memories = [], []
        for i, lat0 in enumerate(lateral0):
            proj, projected[i] = projected[i], None          # each chunk's levels freed once fused
            srcs, poses = self._fuse(proj, words, word_pos, padding)
            del proj
            memory, spatial_shapes = self.transformer.encode(srcs, poses)
            del srcs
            memories.append(memory)
            stage.append(self._fpn_inputs(lat0, self.transformer.memory_maps(memory, spatial_shapes), k))
        del lateral0

        tgt, query_pos, reference = self.transformer.initial_queries(sentence, self.query_embed.weight)
        q, c = tgt.shape[1:]
        hs, references = self.transformer.decoder(
            tgt[:, None].expand(k, t, q, c), query_pos[0], reference[:, None].expand(k, t, q, 2),
            memories, chunks, spatial_shapes, self.bbox_embed if cfg.with_box_refine else None)
        del memories
        last = cfg.dec_layers - 1
        reference_in = references[last - 1] if last > 0 else reference[:, None].expand(k, t, q, 2)
        for chunk, s in zip(chunks, stage):
            n = chunk.stop - chunk.start
            rows = [x[:, chunk].reshape(k * n, *x.shape[2:])         # (k, T, ...) -> (k*n, ...)
                    for x in (hs, reference_in, references[last])]
            s.update(self._heads(*rows, k, n))
        return stage
