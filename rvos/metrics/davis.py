"""DAVIS region similarity J, boundary F-measure F, and their sequence statistics.

The numbers match the official DAVIS evaluation code bit for bit (see docs/metrics.md):

* ``region_similarity`` follows ``db_eval_iou`` of davis2017-evaluation (``davis2017/metrics.py``).
* ``boundary_f_measure`` follows ``f_measure``/``_seg2bmap`` of the same file (identical to
  ``davis/measures/f_boundary.py`` of the DAVIS-2016 code for masks without void): a one-pixel
  boundary map, dilation of each boundary by the ``skimage.morphology.disk`` of radius
  ``ceil(bound_th * ||(H, W)||)`` placed as ``cv2.dilate`` places it, precision on the predicted
  boundary, recall on the ground-truth boundary.
* ``sequence_statistics`` follows ``db_statistics`` (``davis2017/utils.py``).

Every array argument is a mask: any non-zero value is foreground. Per-frame functions take
(H, W) arrays; the ``*_batch`` functions take (T, H, W) arrays and return (T,) float64 arrays
with exactly the per-frame numbers, computed on bit-packed frames (``bitpack.py``), several
frames per array operation; ``jaccard_and_f`` gives both and is the path the protocols use.
"""

from __future__ import annotations

import warnings
from functools import lru_cache

import numpy as np

from rvos.metrics import bitpack

DEFAULT_BOUND_TH = 0.008
_BATCH_CHUNK_PIXELS = 4 * 480 * 854  # pixels per chunk of frames in the batched F (cache-sized)


# ----------------------------------------------------------------------------- helpers


def _as_bool(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    return mask if mask.dtype == np.bool_ else mask.astype(bool)


def _check_shapes(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None, ndim: int) -> None:
    kind = "(H, W)" if ndim == 2 else "(T, H, W)"
    if gt.ndim != ndim:
        raise ValueError(f"ground-truth mask must be {kind}, got shape {gt.shape}")
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground-truth shape {gt.shape}")
    if void is not None and void.shape != gt.shape:
        raise ValueError(f"void mask shape {void.shape} differs from ground-truth shape {gt.shape}")


def boundary_tolerance(height: int, width: int, bound_th: float = DEFAULT_BOUND_TH) -> float:
    """Disk radius in pixels: ``bound_th`` itself when >= 1, else ``ceil(bound_th * sqrt(H^2 + W^2))``
    (computed with ``np.linalg.norm`` as the official code does, so the rounding is identical)."""
    if bound_th >= 1:
        return bound_th
    return float(np.ceil(bound_th * np.linalg.norm((height, width))))


@lru_cache(maxsize=64)
def disk_offsets(radius: float) -> tuple[tuple[int, int, int], ...]:
    """The ``skimage.morphology.disk(radius)`` structuring element as ``cv2.dilate`` applies it.

    skimage builds ``L = arange(-radius, radius + 1)`` and keeps ``X^2 + Y^2 <= radius^2``;
    cv2 anchors an n x n kernel at ``(n // 2, n // 2)`` and sets
    ``dst(y, x) = max src(y + dy, x + dx)`` over the kernel's offsets. Each kernel row is a
    contiguous run, so the element is returned as rows ``(dy, dx_lo, dx_hi)`` (inclusive).
    """
    coords = np.arange(-radius, radius + 1)
    inside = (coords[None, :] ** 2 + coords[:, None] ** 2) <= radius**2
    anchor = len(coords) // 2
    rows = []
    for i in range(len(coords)):
        cols = np.flatnonzero(inside[i])
        if cols.size:
            rows.append((i - anchor, int(cols[0]) - anchor, int(cols[-1]) - anchor))
    return tuple(rows)


def seg2bmap(seg: np.ndarray) -> np.ndarray:
    """One-pixel boundary map of binary masks, (..., H, W) -> bool (..., H, W).

    As the official ``seg2bmap`` (D. Martin, 2003): a pixel is boundary when it differs from
    its east, south or south-east neighbour, so boundaries sit half a pixel towards the
    origin. On the last row only the east neighbour counts, on the last column only the south
    one, and the bottom-right pixel is never boundary; the image border itself is not a
    boundary (a full mask has none). Only the same-size case exists (the official resize
    branch is never used by the evaluation).
    """
    seg = _as_bool(seg)
    east = np.zeros_like(seg)
    south = np.zeros_like(seg)
    south_east = np.zeros_like(seg)
    east[..., :, :-1] = seg[..., :, 1:]
    south[..., :-1, :] = seg[..., 1:, :]
    south_east[..., :-1, :-1] = seg[..., 1:, 1:]
    bmap = (seg ^ east) | (seg ^ south) | (seg ^ south_east)
    bmap[..., -1, :] = seg[..., -1, :] ^ east[..., -1, :]
    bmap[..., :, -1] = seg[..., :, -1] ^ south[..., :, -1]
    bmap[..., -1, -1] = False
    return bmap


def dilate_disk(bmap: np.ndarray, radius: float) -> np.ndarray:
    """Binary dilation of (..., H, W) masks by ``disk(radius)``, pixels outside the image
    counting as 0 (cv2's default border for dilation). Each kernel row is a horizontal run,
    applied with a running sum along W and then shifted vertically."""
    bmap = _as_bool(bmap)
    h, w = bmap.shape[-2:]
    csum = np.zeros(bmap.shape[:-1] + (w + 1,), dtype=np.int32)
    np.cumsum(bmap, axis=-1, out=csum[..., 1:])
    cols = np.arange(w)
    out = np.zeros_like(bmap)
    for dy, lo, hi in disk_offsets(radius):
        right = np.clip(cols + hi + 1, 0, w)
        left = np.clip(cols + lo, 0, w)
        run = (csum[..., right] - csum[..., left]) > 0  # any pixel in row at x+lo..x+hi
        # dst(y) takes row y + dy of the source
        if dy >= 0:
            if dy < h:
                out[..., : h - dy, :] |= run[..., dy:, :]
        elif -dy < h:
            out[..., -dy:, :] |= run[..., : h + dy, :]
    return out


def _f_from_counts(n_fg, n_gt, fg_match, gt_match):
    """Official precision/recall/F arithmetic with its special cases, elementwise (float64).

    Empty predicted boundary with a non-empty ground-truth one: P=1, R=0; the reverse: P=0,
    R=1; both empty: P=R=1; P + R = 0 gives F = 0.
    """
    n_fg = np.asarray(n_fg, dtype=np.int64)
    n_gt = np.asarray(n_gt, dtype=np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.asarray(fg_match, dtype=np.int64) / n_fg.astype(np.float64)
        recall = np.asarray(gt_match, dtype=np.int64) / n_gt.astype(np.float64)
    precision = np.where(n_fg == 0, 1.0, precision)
    precision = np.where((n_fg > 0) & (n_gt == 0), 0.0, precision)
    recall = np.where(n_gt == 0, 1.0, recall)
    recall = np.where((n_fg == 0) & (n_gt > 0), 0.0, recall)
    denom = precision + recall
    with np.errstate(divide="ignore", invalid="ignore"):
        f = 2 * precision * recall / denom
    return np.where(denom == 0, 0.0, f)


# ----------------------------------------------------------------------------- per frame


def region_similarity(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None) -> float:
    """Region similarity J (Jaccard index) of one frame.

    Args:
        gt: (H, W) ground-truth mask, non-zero = foreground.
        pred: (H, W) predicted mask, non-zero = foreground.
        void: optional (H, W) mask of pixels excluded from both intersection and union.
    Returns:
        |gt & pred| / |gt | pred| over non-void pixels; 1.0 when that union is empty.
    """
    gt, pred = _as_bool(gt), _as_bool(pred)
    void = None if void is None else _as_bool(void)
    _check_shapes(gt, pred, void, 2)
    inter, union = gt & pred, gt | pred
    if void is not None:
        inter &= ~void
        union &= ~void
    n_union = int(np.count_nonzero(union))
    if n_union == 0:
        return 1.0
    return float(np.int64(np.count_nonzero(inter)) / np.int64(n_union))


def boundary_f_measure(
    gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None, bound_th: float = DEFAULT_BOUND_TH
) -> float:
    """Boundary F-measure F of one frame (the straightforward, whole-frame-dilation version).

    Args:
        gt: (H, W) ground-truth mask; pred: (H, W) predicted mask; non-zero = foreground.
        void: optional (H, W) mask; void pixels are set to background in both masks before the
            boundaries are taken (as the official code does).
        bound_th: tolerance, a fraction of the image diagonal when < 1, else pixels.
    Returns:
        2PR / (P + R), P = share of predicted boundary pixels within the tolerance disk of the
        ground-truth boundary, R = the converse; official values when a boundary is empty.
    """
    gt, pred = _as_bool(gt), _as_bool(pred)
    void = None if void is None else _as_bool(void)
    _check_shapes(gt, pred, void, 2)
    if void is not None:
        gt, pred = gt & ~void, pred & ~void
    radius = boundary_tolerance(*gt.shape, bound_th)
    fg_boundary, gt_boundary = seg2bmap(pred), seg2bmap(gt)
    fg_dilated, gt_dilated = dilate_disk(fg_boundary, radius), dilate_disk(gt_boundary, radius)
    fg_match = np.count_nonzero(fg_boundary & gt_dilated)
    gt_match = np.count_nonzero(gt_boundary & fg_dilated)
    f = _f_from_counts(np.count_nonzero(fg_boundary), np.count_nonzero(gt_boundary), fg_match, gt_match)
    return float(f)


# ----------------------------------------------------------------------------- batched


def _frame_chunks(n_frames: int, height: int, width: int):
    """Slices of frames small enough for the packed working set to stay in cache."""
    chunk = max(1, _BATCH_CHUNK_PIXELS // max(1, height * width))
    for start in range(0, n_frames, chunk):
        yield slice(start, min(n_frames, start + chunk))


def _prepare_batch(gt, pred, void):
    gt, pred = _as_bool(gt), _as_bool(pred)
    void = None if void is None else _as_bool(void)
    _check_shapes(gt, pred, void, 3)
    if gt.shape[1] == 0 or gt.shape[2] == 0:
        raise ValueError(f"frames must have at least one pixel, got shape {gt.shape}")
    return gt, pred, void


def _packed_chunk(gt, pred, void, sl):
    """Packed (gt, pred, keep) of a chunk of frames; keep is None without void."""
    g, p = bitpack.pack_rows(gt[sl]), bitpack.pack_rows(pred[sl])
    keep = None if void is None else ~bitpack.pack_rows(void[sl])
    return g, p, keep


def _j_from_packed(g, p, keep) -> np.ndarray:
    inter, union = g & p, g | p
    if keep is not None:
        inter &= keep
        union &= keep
    n_inter = bitpack.popcount_per_frame(inter)
    n_union = bitpack.popcount_per_frame(union)
    with np.errstate(divide="ignore", invalid="ignore"):
        j = n_inter / n_union
    j[n_union == 0] = 1.0
    return j


def _f_from_packed(g, p, keep, width: int, radius: float) -> np.ndarray:
    if keep is not None:
        g, p = g & keep, p & keep
    fg_boundary = bitpack.seg2bmap_packed(p, width)
    gt_boundary = bitpack.seg2bmap_packed(g, width)
    # The points tested and the points dilated are all boundary pixels, so rows and words
    # holding no boundary pixel in any frame of the chunk can be cropped away.
    occupied = fg_boundary | gt_boundary
    rows = np.flatnonzero(occupied.any(axis=(0, 2)))
    if rows.size:
        words = np.flatnonzero(occupied.any(axis=(0, 1)))
        crop = (slice(None), slice(rows[0], rows[-1] + 1), slice(words[0], words[-1] + 1))
        fg_boundary, gt_boundary = fg_boundary[crop], gt_boundary[crop]
    element = disk_offsets(radius)
    fg_match = bitpack.popcount_per_frame(fg_boundary & bitpack.dilate_rows_packed(gt_boundary, element))
    gt_match = bitpack.popcount_per_frame(gt_boundary & bitpack.dilate_rows_packed(fg_boundary, element))
    n_fg = bitpack.popcount_per_frame(fg_boundary)
    n_gt = bitpack.popcount_per_frame(gt_boundary)
    return _f_from_counts(n_fg, n_gt, fg_match, gt_match)


def jaccard_and_f(
    gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None, bound_th: float = DEFAULT_BOUND_TH
) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame J and F of (T, H, W) masks -> two (T,) float64 arrays, packing the masks once.

    Numbers are exactly those of :func:`region_similarity` and :func:`boundary_f_measure`.
    The masks are bit-packed (64 pixels per machine word, see ``bitpack.py``), processed a
    few frames at a time, and the boundary dilation is cropped to rows/words holding boundary
    pixels; all counts are integers, so no rounding differs from the per-frame path.
    """
    gt, pred, void = _prepare_batch(gt, pred, void)
    n_frames, h, w = gt.shape
    radius = boundary_tolerance(h, w, bound_th)
    j, f = np.empty(n_frames), np.empty(n_frames)
    for sl in _frame_chunks(n_frames, h, w):
        g, p, keep = _packed_chunk(gt, pred, void, sl)
        j[sl] = _j_from_packed(g, p, keep)
        f[sl] = _f_from_packed(g, p, keep, w, radius)
    return j, f


def region_similarity_batch(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None) -> np.ndarray:
    """J for every frame of (T, H, W) masks -> (T,) float64, equal to :func:`region_similarity`."""
    gt, pred, void = _prepare_batch(gt, pred, void)
    n_frames, h, w = gt.shape
    j = np.empty(n_frames)
    for sl in _frame_chunks(n_frames, h, w):
        j[sl] = _j_from_packed(*_packed_chunk(gt, pred, void, sl))
    return j


def boundary_f_measure_batch(
    gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None, bound_th: float = DEFAULT_BOUND_TH
) -> np.ndarray:
    """F for every frame of (T, H, W) masks -> (T,) float64, equal to :func:`boundary_f_measure`."""
    gt, pred, void = _prepare_batch(gt, pred, void)
    n_frames, h, w = gt.shape
    radius = boundary_tolerance(h, w, bound_th)
    f = np.empty(n_frames)
    for sl in _frame_chunks(n_frames, h, w):
        f[sl] = _f_from_packed(*_packed_chunk(gt, pred, void, sl), w, radius)
    return f


# ----------------------------------------------------------------------------- statistics


def decay_bins(n_frames: int, wrap_like_official: bool = True) -> list[slice]:
    """The four (overlapping) frame ranges of the official decay.

    ``ids = round(linspace(1, n, 5) + 1e-10) - 1`` and bin i covers ``ids[i] .. ids[i+1]``
    inclusive, so neighbouring bins share their boundary frame. The official code stores the
    ids as uint8 and slices ``values[ids[i] : ids[i+1] + 1]`` in uint8 arithmetic, so the ids
    wrap for sequences longer than 256 frames and an end id of 255 gives the stop 0 (at 256
    frames the last bin is empty); ``wrap_like_official`` keeps that (default, for identical
    numbers), False uses the intended indices.
    """
    ids = np.round(np.linspace(1, n_frames, 5) + 1e-10) - 1
    if not wrap_like_official:
        return [slice(int(ids[i]), int(ids[i + 1]) + 1) for i in range(4)]
    ids = ids.astype(np.uint8)
    return [slice(int(ids[i]), (int(ids[i + 1]) + 1) % 256) for i in range(4)]


def sequence_statistics(values, wrap_like_official: bool = True) -> tuple[float, float, float]:
    """Mean, Recall and Decay of per-frame values (J or F) of one object, (T,) -> 3 floats.

    Mean = nanmean; Recall = share of frames with value strictly above 0.5 (NaN frames count
    as misses, as in the official code); Decay = nanmean of the first quarter minus nanmean of
    the last quarter, with the official binning (see :func:`decay_bins`).
    """
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)  # all-NaN slices give NaN
        mean = np.nanmean(values)
        recall = np.nanmean(values > 0.5)
        bins = decay_bins(len(values), wrap_like_official)
        decay = np.nanmean(values[bins[0]]) - np.nanmean(values[bins[3]])
    return float(mean), float(recall), float(decay)



__all__ = [
    "DEFAULT_BOUND_TH",
    "boundary_tolerance",
    "disk_offsets",
    "seg2bmap",
    "dilate_disk",
    "region_similarity",
    "boundary_f_measure",
    "region_similarity_batch",
    "boundary_f_measure_batch",
    "jaccard_and_f",
    "decay_bins",
    "sequence_statistics",
]
