"""SOC (Luo et al., "SOC: Semantic-Assisted Object Cluster for Referring Video Object
Segmentation", NeurIPS 2023): the modules it adds to the query core.

    frame-level object queries hs (D, B*T, Q, C) from the deformable decoder (every layer)
        ──VideoObjectClusters (the Semantic Integration Module's inter-frame part):
              self-attention over all T*Q frame queries of the clip, then Q video queries
              whose content starts as the sentence embedding (the "semantic assistance")
              cross-attend to them──► video-level object embeddings (D, B, Q, C)
        ──added back to query q of every frame──► hs' = hs + video[q]; the class, box and
              dynamic mask heads decode hs', so each frame's prediction sees the clip.
    words ──attend to the clip's visual tokens (SOC's language-side fusion)──► mean over
        the real words ──► text embedding (B, C) for the video-level contrastive loss.

Facts taken from the paper and RobertLuo1/NeurIPS2023_SOC (models/voc.py, models/soc.py,
models/criterion.py at commit 76b2915): post-norm attention and FFN blocks; no position
code in the cluster encoder; learned per-slot positions for the frame queries (shared by
every frame) and for the video queries; a final LayerNorm; the video embedding of slot q is
added to frame query q of every frame of every decoder layer, and the per-layer class/box
heads are applied again to the sum around the decoder's own reference points; the text
embedding is the mean of the words after they attend to the clip's coarsest level.

Where this differs: the words attend to the encoder memory of that level (official: its
projection before the encoder); the dynamic mask heads centre their relative coordinates
on the boxes decoded from hs' (official: the decoder's own boxes), so a mask and the box
reported with it agree; the contrastive negatives span the batch (see
:func:`rvos.models.query.criterion.video_text_contrast`). As in the official module, the
cluster encoder has no frame-order code: frames are told apart by content only.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rvos.models.query.layers import sine_position_2d
from rvos.models.query.transformer import DeformableDecoder, FeedForward


class _Attention(nn.Module):
    """Post-norm residual attention: x <- LayerNorm(x + attn(x + x_pos, y + y_pos, y))."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, x_pos: Tensor | None, y: Tensor, y_pos: Tensor | None,
                y_padding: Tensor | None = None) -> Tensor:
        q = x if x_pos is None else x + x_pos
        k = y if y_pos is None else y + y_pos
        out = self.attn(q, k, y, key_padding_mask=y_padding, need_weights=False)[0]
        return self.norm(x + self.dropout(out))


class VideoObjectClusters(nn.Module):
    """Frame-level object queries -> video-level object embeddings, one per query slot.

    forward(frame_queries (M, T, Q, C), sentence (M, C)) -> (M, Q, C)

    M clips (decoder layers may be folded into M). ``enc_layers`` blocks of self-attention +
    FFN mix all T*Q frame queries of a clip (across frames and objects); then Q video queries,
    content initialised with the clip's sentence embedding and positioned by learned slot
    embeddings, run ``dec_layers`` blocks of cross-attention to the frame queries (keyed with
    a learned embedding of their slot), self-attention and FFN. A final LayerNorm.
    """

    def __init__(self, dim: int, heads: int, num_queries: int, enc_layers: int = 3,
                 dec_layers: int = 3, ffn_dim: int = 2048, dropout: float = 0.1):
        super().__init__()
        self.num_queries = num_queries
        self.enc_attn = nn.ModuleList(_Attention(dim, heads, dropout) for _ in range(enc_layers))
        self.enc_ffn = nn.ModuleList(FeedForward(dim, ffn_dim, dropout) for _ in range(enc_layers))
        self.cross_attn = nn.ModuleList(_Attention(dim, heads, dropout) for _ in range(dec_layers))
        self.self_attn = nn.ModuleList(_Attention(dim, heads, dropout) for _ in range(dec_layers))
        self.dec_ffn = nn.ModuleList(FeedForward(dim, ffn_dim, dropout) for _ in range(dec_layers))
        self.frame_slot_pos = nn.Embedding(num_queries, dim)   # which frame query slot a token is
        self.video_query_pos = nn.Embedding(num_queries, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, frame_queries: Tensor, sentence: Tensor) -> Tensor:
        m, t, q, c = frame_queries.shape
        if q != self.num_queries:
            raise ValueError(f"expected {self.num_queries} frame queries per frame, got {q}")
        src = frame_queries.reshape(m, t * q, c)
        for attn, ffn in zip(self.enc_attn, self.enc_ffn):
            src = ffn(attn(src, None, src, None))
        src_pos = self.frame_slot_pos.weight.repeat(t, 1)[None]             # (1, T*Q, C)
        query_pos = self.video_query_pos.weight[None]                       # (1, Q, C)
        out = sentence[:, None, :].expand(-1, q, -1)                        # (M, Q, C)
        for cross, self_, ffn in zip(self.cross_attn, self.self_attn, self.dec_ffn):
            out = cross(out, query_pos, src, src_pos)
            out = self_(out, query_pos, out, query_pos)
            out = ffn(out)
        return self.norm(out)


class TextFromVideo(nn.Module):
    """SOC's language-side fusion: the words attend to the visual tokens of their clip,
    gated by multiplication (words * attn), then average over the real words.

    forward(words (B, L, C), word_padding (B, L) bool True at padding, visual (B, S, C),
            visual_pos (S, C) or (B, S, C)) -> (B, C)
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)

    def forward(self, words: Tensor, word_padding: Tensor, visual: Tensor,
                visual_pos: Tensor) -> Tensor:
        attended = self.attn(words, visual + visual_pos, visual, need_weights=False)[0]
        return masked_mean(words * attended, word_padding)


def masked_mean(words: Tensor, word_padding: Tensor) -> Tensor:
    """Mean of (B, L, C) over the positions where ``word_padding`` (B, L) is False -> (B, C)."""
    keep = (~word_padding).to(words.dtype)[..., None]
    return (words * keep).sum(1) / keep.sum(1).clamp(min=1)


def decode_heads(decoder: DeformableDecoder, hs: Tensor, reference: Tensor,
                 boxes: Tensor) -> tuple[Tensor, Tensor]:
    """Apply ``decoder``'s per-layer class and box heads to new embeddings ``hs`` (D, N, Q, C),
    around the same reference each layer sampled at: the initial ``reference`` (N, Q, 2) for
    layer 0 and, with box refinement, the previous layer's (detached) ``boxes`` (D, N, Q, 4).
    -> scores (D, N, Q) logits, boxes (D, N, Q, 4) normalised cxcywh."""
    scores, out_boxes = [], []
    for i in range(hs.shape[0]):
        ref = boxes[i - 1].detach() if decoder.box_refine and i > 0 else reference
        score, box = decoder.predict(i, hs[i], ref)
        scores.append(score)
        out_boxes.append(box)
    return torch.stack(scores), torch.stack(out_boxes)


class SOC(nn.Module):
    """SOC's additions to the query core, called right after the deformable decoder.

    forward(hs (D, B*T, Q, C), reference (B*T, Q, 2), boxes (D, B*T, Q, 4), decoder,
            sentence (B, C), words (B, L, C), word_padding (B, L), memory (B*T, S, C),
            shapes [(h, w)] per level, num_frames T)
        -> hs' (D, B*T, Q, C) = hs + the clip's video embedding of each query slot,
           scores (D, B*T, Q) and boxes (D, B*T, Q, 4) decoded from hs',
           extras {"soc_video_embed": (D, B, Q, C), "soc_text_embed": (B, C)}

    ``text_level`` is the index of the memory level the words attend to (the coarsest one
    at stride <= 32); ``text_from_video`` None uses the plain mean of the real words.
    """

    def __init__(self, clusters: VideoObjectClusters, text_from_video: TextFromVideo | None = None,
                 text_level: int = -1):
        super().__init__()
        self.clusters = clusters
        self.text_from_video = text_from_video
        self.text_level = text_level

    def forward(self, hs: Tensor, reference: Tensor, boxes: Tensor, decoder: DeformableDecoder,
                sentence: Tensor, words: Tensor, word_padding: Tensor, memory: Tensor,
                shapes: list[tuple[int, int]], num_frames: int
                ) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
        d, n, q, c = hs.shape
        t, b = num_frames, n // num_frames
        frame_queries = hs.reshape(d * b, t, q, c)                          # layers folded into clips
        video = self.clusters(frame_queries, sentence.repeat(d, 1)).reshape(d, b, q, c)
        hs = hs + video[:, :, None].expand(-1, -1, t, -1, -1).reshape(d, n, q, c)
        scores, boxes = decode_heads(decoder, hs, reference, boxes)
        return hs, scores, boxes, {"soc_video_embed": video,
                                   "soc_text_embed": self.text_embed(words, word_padding, memory,
                                                                     shapes, t)}

    def text_embed(self, words: Tensor, word_padding: Tensor, memory: Tensor,
                   shapes: list[tuple[int, int]], num_frames: int) -> Tensor:
        """(B, C): the sentence as the contrastive loss sees it."""
        if self.text_from_video is None:
            return masked_mean(words, word_padding)
        level = self.text_level % len(shapes)
        start = sum(h * w for h, w in shapes[:level])
        h, w = shapes[level]
        tokens = memory[:, start:start + h * w]                             # (B*T, h*w, C)
        b = tokens.shape[0] // num_frames
        visual = tokens.reshape(b, num_frames * h * w, -1)
        pos = sine_position_2d(h, w, visual.shape[-1], visual.device).to(visual.dtype)
        return self.text_from_video(words, word_padding, visual, pos.repeat(num_frames, 1))
