"""Several sentences on one clip: the clip's visual features are computed once and shared.

Models take ``frames`` (C, T, 3, H, W), B sentences and an optional ``clip_index`` (B,) long
that names the clip each sentence is about (default: sentence i is about clip i, B = C).
"""

from __future__ import annotations

import torch
from torch import Tensor


def frame_index_for(clip_index: Tensor | None, num_clips: int, num_sentences: int,
                    num_frames: int, device: torch.device) -> Tensor | None:
    """Rows to take from per-frame features (C*T, ...) to get per-sentence ones (B*T, ...).

    Returns None when ``clip_index`` is None (features are already per sentence); raises
    ValueError when the sizes do not fit.
    """
    if clip_index is None:
        if num_sentences != num_clips:
            raise ValueError(f"{num_sentences} sentences for a batch of {num_clips} clips "
                             f"(pass clip_index to share clips between sentences)")
        return None
    if clip_index.shape != (num_sentences,):
        raise ValueError(f"clip_index has shape {tuple(clip_index.shape)}, expected "
                         f"({num_sentences},): one clip per sentence")
    clip_index = clip_index.to(device=device, dtype=torch.long)
    if num_sentences and (int(clip_index.min()) < 0 or int(clip_index.max()) >= num_clips):
        raise ValueError(f"clip_index must lie in [0, {num_clips}), got {clip_index.tolist()}")
    return (clip_index[:, None] * num_frames + torch.arange(num_frames, device=device)).flatten()
