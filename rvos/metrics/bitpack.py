"""Bit-packed binary masks: the machinery behind the fast batched J and F of ``davis.py``.

A (T, H, W) boolean stack is stored as (T, H, n_words) little-endian uint64 words, pixel x
of a row being bit ``x % 64`` of word ``x // 64`` (padding bits past W are zero). Every
boolean operation then handles 64 pixels at once, counting is a popcount, and a shift along
a row is two word shifts with a carry. Everything here is exact integer work.
"""

from __future__ import annotations

import numpy as np

WORD_BITS = 64
_BYTE_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def pack_rows(mask: np.ndarray) -> np.ndarray:
    """(..., H, W) bool -> (..., H, ceil(W / 64)) uint64 words (padding bits zero)."""
    packed = np.packbits(mask, axis=-1, bitorder="little")
    n_words = -(-mask.shape[-1] // WORD_BITS)
    padded = np.zeros(mask.shape[:-1] + (n_words * 8,), dtype=np.uint8)
    padded[..., : packed.shape[-1]] = packed
    return padded.view("<u8")


def unpack_rows(words: np.ndarray, width: int) -> np.ndarray:
    """Inverse of :func:`pack_rows`: (..., H, n_words) -> (..., H, width) bool."""
    bits = np.unpackbits(np.ascontiguousarray(words).view(np.uint8), axis=-1, bitorder="little")
    return bits[..., :width].astype(bool)


def popcount_per_frame(words: np.ndarray) -> np.ndarray:
    """Set bits of each leading-axis entry of (T, ...) uint64 words -> (T,) int64."""
    if hasattr(np, "bitwise_count"):
        counts = np.bitwise_count(words)
    else:  # numpy < 2.0
        counts = _BYTE_POPCOUNT[np.ascontiguousarray(words).view(np.uint8)]
    return counts.reshape(words.shape[0], -1).sum(axis=1, dtype=np.int64)


def or_shifted_cols(out: np.ndarray, words: np.ndarray, d: int) -> None:
    """``out |= A'`` in place, where A'(x) = A(x + d) and A is zero outside the row."""
    n_words = words.shape[-1]
    q, r = divmod(abs(d), WORD_BITS)
    if q >= n_words:
        return
    if d > 0:  # bits move towards lower x: right shifts, carry in from the next word
        src = words[..., q:]
        out[..., : n_words - q] |= src >> np.uint64(r)
        if r:
            out[..., : n_words - q - 1] |= src[..., 1:] << np.uint64(WORD_BITS - r)
    elif d < 0:  # bits move towards higher x: left shifts, carry in from the previous word
        src = words[..., : n_words - q]
        out[..., q:] |= src << np.uint64(r)
        if r:
            out[..., q + 1 :] |= src[..., :-1] >> np.uint64(WORD_BITS - r)
    else:
        out |= words


def shift_cols(words: np.ndarray, d: int) -> np.ndarray:
    """A -> A' with A'(x) = A(x + d), zeros where x + d leaves the row."""
    out = np.zeros_like(words)
    or_shifted_cols(out, words, d)
    return out


def or_shifted_rows(out: np.ndarray, words: np.ndarray, dy: int) -> None:
    """``out |= A'`` in place, where A'(y) = A(y + dy) over the H axis (-2), zero outside."""
    h = words.shape[-2]
    if abs(dy) >= h:
        return
    if dy >= 0:
        out[..., : h - dy, :] |= words[..., dy:, :]
    else:
        out[..., -dy:, :] |= words[..., : h + dy, :]


def shift_rows(words: np.ndarray, dy: int) -> np.ndarray:
    """A -> A' with A'(y) = A(y + dy), zeros outside."""
    out = np.zeros_like(words)
    or_shifted_rows(out, words, dy)
    return out


def seg2bmap_packed(seg: np.ndarray, width: int) -> np.ndarray:
    """The official one-pixel boundary map (``rvos.metrics.davis.seg2bmap``) of packed masks.

    A pixel is boundary when it differs from its east, south or south-east neighbour; the
    last row compares with the east neighbour only, the last column with the south one only,
    and the bottom-right pixel is never boundary.
    """
    east = shift_cols(seg, 1)
    south = shift_rows(seg, 1)
    south_east = shift_rows(east, 1)
    bmap = (seg ^ east) | (seg ^ south) | (seg ^ south_east)
    bmap[..., -1, :] = seg[..., -1, :] ^ east[..., -1, :]
    word, bit = divmod(width - 1, WORD_BITS)
    last_col = np.uint64(1 << bit)
    last_col_value = (seg[..., word] ^ south[..., word]) & last_col
    bmap[..., word] = (bmap[..., word] & ~last_col) | last_col_value
    bmap[..., -1, word] &= ~last_col
    return bmap


def dilate_rows_packed(bmap: np.ndarray, element_rows: tuple[tuple[int, int, int], ...]) -> np.ndarray:
    """Binary dilation of packed masks by a structuring element given as rows (dy, lo, hi):
    ``dst(y, x) = any src(y + dy, x + lo .. x + hi)`` over the rows (outside counts as 0).

    The runs of a disk are nested intervals, so they are grown one shift at a time from the
    shortest to the longest; an interval not nested in the previous one is built afresh.
    """
    intervals = sorted({(lo, hi) for _, lo, hi in element_rows}, key=lambda iv: iv[1] - iv[0])
    runs: dict[tuple[int, int], np.ndarray] = {}
    current, cur_lo, cur_hi = None, 0, 0
    for lo, hi in intervals:
        if current is None or lo > cur_lo or hi < cur_hi:
            current, cur_lo, cur_hi = np.zeros_like(bmap), lo, lo - 1
        for d in range(lo, cur_lo):
            or_shifted_cols(current, bmap, d)
        for d in range(max(cur_hi + 1, lo), hi + 1):
            or_shifted_cols(current, bmap, d)
        cur_lo, cur_hi = lo, hi
        runs[(lo, hi)] = current.copy()
    out = np.zeros_like(bmap)
    for dy, lo, hi in element_rows:
        or_shifted_rows(out, runs[(lo, hi)], dy)
    return out
