"""DAVIS J / F / statistics: hand-computed special cases, and agreement with an independent
transcription of the official algorithm (cv2.dilate with a skimage-style disk)."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from rvos.metrics import bitpack
from rvos.metrics.davis import (
    boundary_f_measure,
    boundary_f_measure_batch,
    boundary_tolerance,
    decay_bins,
    jaccard_and_f,
    region_similarity,
    region_similarity_batch,
    seg2bmap,
    sequence_statistics,
)

ASSETS = Path(__file__).resolve().parents[1].parent / "shared" / "assets"


# ----------------------------------------------------------------------------- reference


def _reference_disk(radius):
    axis = np.arange(-radius, radius + 1)
    xx, yy = np.meshgrid(axis, axis)
    return (xx**2 + yy**2 <= radius**2).astype(np.uint8)


def _reference_bmap(mask):
    """Boundary map written from the description of the official seg2bmap."""
    m = mask.astype(bool)
    h, w = m.shape
    out = np.zeros_like(m)
    for y in range(h):
        for x in range(w):
            east = m[y, x + 1] if x + 1 < w else False
            south = m[y + 1, x] if y + 1 < h else False
            se = m[y + 1, x + 1] if (y + 1 < h and x + 1 < w) else False
            if y == h - 1 and x == w - 1:
                out[y, x] = False
            elif y == h - 1:
                out[y, x] = m[y, x] != east
            elif x == w - 1:
                out[y, x] = m[y, x] != south
            else:
                out[y, x] = (m[y, x] != east) or (m[y, x] != south) or (m[y, x] != se)
    return out


def _reference_f(gt, pred, void=None, bound_th=0.008):
    keep = np.ones(gt.shape, bool) if void is None else ~void.astype(bool)
    radius = bound_th if bound_th >= 1 else np.ceil(bound_th * np.linalg.norm(gt.shape))
    fb = _reference_bmap(pred.astype(bool) & keep)
    gb = _reference_bmap(gt.astype(bool) & keep)
    kernel = _reference_disk(radius)
    fd = cv2.dilate(fb.astype(np.uint8), kernel).astype(bool)
    gd = cv2.dilate(gb.astype(np.uint8), kernel).astype(bool)
    n_fg, n_gt = fb.sum(), gb.sum()
    if n_fg == 0 and n_gt > 0:
        p, r = 1, 0
    elif n_fg > 0 and n_gt == 0:
        p, r = 0, 1
    elif n_fg == 0 and n_gt == 0:
        p, r = 1, 1
    else:
        p, r = (fb & gd).sum() / float(n_fg), (gb & fd).sum() / float(n_gt)
    return 0 if p + r == 0 else 2 * p * r / (p + r)


def _blobs(rng, shape, fill):
    from scipy.ndimage import gaussian_filter

    noise = gaussian_filter(rng.random(shape), sigma=(0, 1.5, 1.5)[-len(shape):])
    return noise > np.quantile(noise, 1 - fill)


# ----------------------------------------------------------------------------- J


def test_region_similarity_hand_computed():
    gt = np.zeros((4, 5), np.uint8)
    gt[1:3, 1:3] = 1  # 4 pixels
    pred = np.zeros((4, 5), np.uint8)
    pred[1:3, 2:5] = 7  # 6 pixels, 2 shared, any non-zero is foreground
    assert region_similarity(gt, pred) == pytest.approx(2 / 8)
    void = np.zeros((4, 5), bool)
    void[:, 4] = True  # removes 2 predicted pixels from the union
    assert region_similarity(gt, pred, void) == pytest.approx(2 / 6)


@pytest.mark.parametrize(
    "gt_fill, pred_fill, expected",
    [(0, 0, 1.0), (1, 0, 0.0), (0, 1, 0.0), (1, 1, 1.0)],
)
def test_region_similarity_empty_and_full(gt_fill, pred_fill, expected):
    gt = np.full((3, 7), gt_fill, np.uint8)
    pred = np.full((3, 7), pred_fill, np.uint8)
    assert region_similarity(gt, pred) == expected
    assert region_similarity_batch(gt[None], pred[None])[0] == expected


def test_region_similarity_all_void_is_one():
    gt = np.ones((3, 3))
    pred = np.zeros((3, 3))
    assert region_similarity(gt, pred, np.ones((3, 3))) == 1.0


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="differs"):
        region_similarity(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="differs"):
        boundary_f_measure_batch(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))


# ----------------------------------------------------------------------------- boundaries


def test_seg2bmap_one_pixel_object_marks_the_four_pixels_towards_the_origin():
    mask = np.zeros((5, 6), bool)
    mask[2, 3] = True
    expected = np.zeros_like(mask)
    expected[1:3, 2:4] = True
    np.testing.assert_array_equal(seg2bmap(mask), expected)


def test_seg2bmap_full_mask_and_image_border_have_no_boundary():
    assert not seg2bmap(np.ones((4, 5), bool)).any()
    left = np.zeros((4, 6), bool)
    left[:, :2] = True  # touches top, bottom and left borders
    expected = np.zeros_like(left)
    expected[:, 1] = True  # only the inner edge, on every row including the last
    np.testing.assert_array_equal(seg2bmap(left), expected)
    bottom = np.zeros((5, 4), bool)
    bottom[3:, :] = True
    expected = np.zeros_like(bottom)
    expected[2, :] = True  # the row above, including the last column
    np.testing.assert_array_equal(seg2bmap(bottom), expected)


def test_seg2bmap_bottom_right_pixel_is_never_boundary():
    mask = np.zeros((3, 3), bool)
    mask[2, 2] = True
    bmap = seg2bmap(mask)
    assert not bmap[2, 2]
    assert bmap[1, 1] and bmap[1, 2] and bmap[2, 1]


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (9, 1), (7, 63), (5, 64), (6, 65), (3, 130)])
def test_seg2bmap_matches_reference_and_packed_version(shape):
    rng = np.random.default_rng(sum(shape))
    masks = rng.random((3, *shape)) < 0.5
    packed = bitpack.seg2bmap_packed(bitpack.pack_rows(masks), shape[1])
    for t in range(3):
        reference = _reference_bmap(masks[t])
        np.testing.assert_array_equal(seg2bmap(masks[t]), reference)
        np.testing.assert_array_equal(bitpack.unpack_rows(packed[t], shape[1]), reference)


def test_boundary_tolerance_follows_the_image_diagonal():
    assert boundary_tolerance(480, 854) == 8.0  # ceil(0.008 * 979.65)
    assert boundary_tolerance(100, 100) == 2.0  # ceil(1.13)
    assert boundary_tolerance(1, 1) == 1.0
    assert boundary_tolerance(480, 854, bound_th=3) == 3


# ----------------------------------------------------------------------------- F


@pytest.mark.parametrize(
    "gt_fill, pred_fill, expected",
    [
        (0, 0, 1.0),  # both boundaries empty: P = R = 1
        (1, 1, 1.0),
        (1, 0, 1.0),  # a full mask has no boundary either: official quirk, F = 1
    ],
)
def test_f_with_empty_boundaries(gt_fill, pred_fill, expected):
    gt = np.full((6, 6), gt_fill, np.uint8)
    pred = np.full((6, 6), pred_fill, np.uint8)
    assert boundary_f_measure(gt, pred) == expected
    assert boundary_f_measure_batch(gt[None], pred[None])[0] == expected


def test_f_when_only_one_side_has_a_boundary_is_zero():
    obj = np.zeros((8, 8), np.uint8)
    obj[2:5, 2:5] = 1
    empty = np.zeros_like(obj)
    assert boundary_f_measure(obj, empty) == 0.0  # missed object: P = 1, R = 0
    assert boundary_f_measure(empty, obj) == 0.0  # hallucinated object: P = 0, R = 1
    np.testing.assert_array_equal(boundary_f_measure_batch(np.stack([obj, empty]), np.stack([empty, obj])), [0, 0])


def test_one_pixel_objects():
    gt = np.zeros((9, 9), bool)
    gt[4, 4] = True
    assert region_similarity(gt, gt) == 1.0 and boundary_f_measure(gt, gt) == 1.0
    # one pixel to the right: no overlap (J = 0), but the two 2x2 boundary squares share two
    # pixels and the others are 1 px apart, within the 1 px tolerance of a 9 x 9 frame: F = 1
    moved = np.roll(gt, 1, axis=1)
    assert region_similarity(gt, moved) == 0.0
    assert boundary_f_measure(gt, moved) == 1.0
    # three pixels away: nothing within tolerance
    far = np.roll(gt, 3, axis=1)
    assert boundary_f_measure(gt, far) == 0.0
    np.testing.assert_array_equal(boundary_f_measure_batch(np.stack([gt, gt]), np.stack([moved, far])), [1.0, 0.0])


def test_one_pixel_objects_in_the_corners():
    top_left = np.zeros((5, 5), bool)
    top_left[0, 0] = True
    assert seg2bmap(top_left).sum() == 1  # only the pixel itself: nothing above or left of it
    bottom_right = np.zeros((5, 5), bool)
    bottom_right[4, 4] = True
    assert seg2bmap(bottom_right).sum() == 3  # the pixel itself never counts
    # the two corner objects are far apart: J = 0, F = 0
    assert region_similarity(top_left, bottom_right) == 0.0
    assert boundary_f_measure(top_left, bottom_right) == 0.0


@pytest.mark.parametrize("shift, expected", [(0, 1.0), (1, 1.0), (2, 1.0), (3, 0.0)])
def test_f_tolerance_is_inclusive(shift, expected):
    # 100 x 100 frames: tolerance ceil(0.008 * 141.4) = 2 pixels; parallel straight edges
    gt = np.zeros((100, 100), bool)
    gt[:, :50] = True
    pred = np.zeros_like(gt)
    pred[:, : 50 + shift] = True
    assert boundary_f_measure(gt, pred) == expected
    assert boundary_f_measure_batch(gt[None], pred[None])[0] == expected


def test_f_partial_match_hand_computed():
    # 10 x 20 frame: tolerance ceil(0.008 * 22.4) = 1 pixel, disk(1) = a cross.
    gt = np.zeros((10, 20), bool)
    gt[:, :5] = True  # boundary: column 4 on all 10 rows
    pred = np.zeros_like(gt)
    pred[:5, :5] = True
    pred[5:, :10] = True
    # pred boundary: column 4 on rows 0-3, row 4 on columns 4-9, column 9 on rows 5-9: 15 px.
    # Within 1 px of the gt boundary: (0..4, 4) and (4, 5) -> P = 6 / 15.
    # gt boundary pixels within 1 px of the pred boundary: rows 0-5 -> R = 6 / 10.
    expected = 2 * 0.4 * 0.6 / (0.4 + 0.6)
    assert boundary_f_measure(gt, pred) == pytest.approx(expected, abs=1e-15)
    assert boundary_f_measure_batch(gt[None], pred[None])[0] == pytest.approx(expected, abs=1e-15)
    assert boundary_f_measure(gt, pred) == _reference_f(gt, pred)


def test_f_void_pixels_become_background():
    gt = np.zeros((20, 20), bool)
    gt[5:15, 5:15] = True
    void = np.zeros_like(gt)
    void[:, 10:] = True
    pred = gt.copy()
    pred[:, 10:] = False  # differs from gt only inside the void region
    assert boundary_f_measure(gt, pred) < 1.0
    assert boundary_f_measure(gt, pred, void) == 1.0
    assert region_similarity(gt, pred, void) == 1.0


@pytest.mark.parametrize("bound_th", [0.008, 0.05, 0.2, 1, 2, 1.5, 3.5])
def test_f_matches_reference_on_random_masks(bound_th):
    rng = np.random.default_rng(int(bound_th * 1000))
    for _ in range(6):
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        gt = _blobs(rng, (3, h, w), rng.uniform(0.1, 0.9))
        pred = _blobs(rng, (3, h, w), rng.uniform(0.1, 0.9))
        void = rng.random((3, h, w)) < 0.1
        for v in (None, void):
            batch = boundary_f_measure_batch(gt, pred, v, bound_th)
            for t in range(3):
                vt = None if v is None else v[t]
                ref = _reference_f(gt[t], pred[t], vt, bound_th)
                assert boundary_f_measure(gt[t], pred[t], vt, bound_th) == ref
                assert batch[t] == ref


def test_batch_equals_per_frame_across_chunks_and_word_edges():
    rng = np.random.default_rng(3)
    gt = _blobs(rng, (9, 33, 130), 0.4)
    pred = _blobs(rng, (9, 33, 130), 0.5)
    void = rng.random(gt.shape) < 0.05
    j, f = jaccard_and_f(gt, pred, void)
    np.testing.assert_array_equal(j, region_similarity_batch(gt, pred, void))
    np.testing.assert_array_equal(f, boundary_f_measure_batch(gt, pred, void))
    for t in range(9):
        assert j[t] == region_similarity(gt[t], pred[t], void[t])
        assert f[t] == boundary_f_measure(gt[t], pred[t], void[t])


# ----------------------------------------------------------------------------- statistics


def test_statistics_hand_computed():
    values = np.array([1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1])
    mean, recall, decay = sequence_statistics(values)
    assert mean == pytest.approx(0.55)
    assert recall == pytest.approx(0.5)  # 0.5 itself is not above 0.5
    # bins: ids round(linspace(1, 10, 5)) - 1 = 0, 2, 5, 7, 9 -> [0:3] and [7:10]
    assert decay == pytest.approx(0.9 - 0.2)


def test_decay_bins_round_halves_up_and_overlap():
    # linspace(1, 3, 5) = 1, 1.5, 2, 2.5, 3: halves go up (2, 3), not to even
    assert decay_bins(3) == [slice(0, 2), slice(1, 2), slice(1, 3), slice(2, 3)]
    _, _, decay = sequence_statistics([0.9, 0.7, 0.2])
    assert decay == pytest.approx(0.8 - 0.2)


def test_statistics_nan_frames_count_as_misses_in_recall():
    mean, recall, _ = sequence_statistics([np.nan, 0.8, 0.6, 0.2])
    assert mean == pytest.approx(1.6 / 3)
    assert recall == pytest.approx(2 / 4)


def test_statistics_single_frame_has_no_decay():
    assert sequence_statistics([0.7]) == (0.7, 1.0, 0.0)


def test_decay_at_256_frames_has_the_official_empty_last_bin():
    # ids[4] = 255 as uint8, and 255 + 1 wraps to 0 in the official slice: values[191:0]
    values = np.linspace(1, 0, 256)
    assert decay_bins(256)[3] == slice(191, 0)
    assert np.isnan(sequence_statistics(values)[2])
    assert decay_bins(255)[3] == slice(191, 255)
    assert not np.isnan(sequence_statistics(values[:255])[2])


def test_decay_bins_wrap_like_the_official_uint8_ids_beyond_256_frames():
    values = np.linspace(1, 0, 300)
    official = decay_bins(300)
    assert official[3] == slice(224, 44)  # 299 stored as uint8 -> 43: an empty last bin
    assert np.isnan(sequence_statistics(values)[2])
    intended = sequence_statistics(values, wrap_like_official=False)[2]
    assert intended == pytest.approx(values[:76].mean() - values[224:].mean())


# ----------------------------------------------------------------------------- real data


def _real_masks(video, n):
    from rvos.data.palette import read_label_png

    folder = ASSETS / "davis-real" / "Annotations" / "480p" / video
    if not folder.is_dir():
        pytest.skip(f"real DAVIS assets not found at {folder}")
    files = sorted(folder.glob("*.png"))[:n]
    return np.stack([read_label_png(p) for p in files]) > 0


def test_real_davis_masks_against_themselves_and_shifted():
    gt = _real_masks("blackswan", 6)
    j, f = jaccard_and_f(gt, gt)
    np.testing.assert_array_equal(j, 1.0)
    np.testing.assert_array_equal(f, 1.0)
    shifted = np.roll(gt, 12, axis=2)  # 12 px, beyond the 8 px tolerance at 480p
    j, f = jaccard_and_f(gt, shifted)
    assert (j < 1).all() and (f < 1).all()
    for t in (0, 5):
        assert j[t] == region_similarity(gt[t], shifted[t])
        assert f[t] == _reference_f(gt[t], shifted[t]) == boundary_f_measure(gt[t], shifted[t])
