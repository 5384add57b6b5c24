"""Visualisation: overlays touch only masked pixels, captions only their banner, overlay
videos stream to MP4/GIF with small frames scaled up and the sentences in a panel under the
picture, training curves and comparison grids are valid images."""

import csv
import math

import numpy as np
import pytest
from PIL import Image

from rvos.data.palette import davis_palette, read_label_png
from rvos.data.video_io import iter_video_frames, probe_video
from rvos.errors import RVOSError
from rvos.viz import (PANEL_BACKGROUND, caption_panel, compose_overlay_frame, contour_thickness,
                      display_size, draw_caption, overlay_mask, overlay_masks,
                      plot_training_curves, render_overlay_video, resize_frame_and_masks,
                      save_comparison_grid, sentence_colors)

H, W = 48, 64


def textured(h: int = H, w: int = W, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(20, 236, (h, w, 3), dtype=np.uint8)


def smooth(h: int = H, w: int = W, seed: int = 0) -> np.ndarray:
    """A photo-like frame (smooth colours) that video codecs keep well."""
    coarse = np.random.default_rng(seed).integers(20, 236, (6, 8, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC))


def disk(h: int = H, w: int = W, cy: float = 24, cx: float = 32, r: float = 12) -> np.ndarray:
    ys, xs = np.mgrid[0:h, 0:w]
    return (ys - cy) ** 2 + (xs - cx) ** 2 <= r ** 2


def test_sentence_colours_are_the_palette_png_colours_and_distinct():
    colors = sentence_colors(6)
    assert colors == [tuple(int(c) for c in davis_palette()[k]) for k in range(1, 7)]
    assert len(set(colors)) == 6


def test_overlay_changes_only_masked_pixels_and_tints_them():
    frame, mask = textured(), disk()
    color = (255, 0, 0)
    out = overlay_mask(frame, mask, color, alpha=0.5, contour=False)
    changed = np.any(out != frame, axis=-1)
    assert not changed[~mask].any()
    np.testing.assert_allclose(out[mask], 0.5 * frame[mask] + 0.5 * np.array(color), atol=1)
    assert (frame == textured()).all()  # the input is not modified


def test_contour_is_opaque_inside_the_mask_and_thicker_on_big_frames():
    frame, mask = textured(), disk()
    out = overlay_mask(frame, mask, (0, 255, 0), alpha=0.3, contour=True)
    assert not np.any(out != frame, axis=-1)[~mask].any()
    opaque = np.all(out == (0, 255, 0), axis=-1)
    assert opaque.any() and not opaque[~mask].any()
    assert not opaque[24, 32]  # the middle of the disk is tinted, not outlined
    assert opaque[24, 32 - 12] or opaque[24, 32 - 11]  # the rim is outlined

    big_frame, big_mask = textured(480, 640), disk(480, 640, 240, 320, 100)
    big = np.all(overlay_mask(big_frame, big_mask, (0, 255, 0)) == (0, 255, 0), axis=-1)
    thin = np.all(overlay_mask(frame, mask, (0, 255, 0)) == (0, 255, 0), axis=-1)
    assert big[240].sum() > thin[24].sum()


def test_a_mask_cut_by_the_frame_border_gets_no_line_along_the_border():
    frame = textured()
    mask = np.zeros((H, W), bool)
    mask[:, :20] = True
    out = overlay_mask(frame, mask, (0, 0, 255), contour=True)
    opaque = np.all(out == (0, 0, 255), axis=-1)
    assert opaque[:, 19].all() and not opaque[:, 0].any() and not opaque[0, 5:15].any()


def test_masks_of_any_dtype_give_the_same_overlay():
    frame, mask = textured(), disk()
    expected = overlay_mask(frame, mask)
    for variant in (mask.astype(np.uint8), mask.astype(np.uint8) * 255,
                    np.where(mask, 0.9, 0.1).astype(np.float32)):
        np.testing.assert_array_equal(overlay_mask(frame, variant), expected)


def test_overlay_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="mask is"):
        overlay_mask(textured(), np.zeros((H, W + 1), bool))
    with pytest.raises(ValueError, match="uint8"):
        overlay_mask(textured().astype(np.float32), disk())
    with pytest.raises(ValueError, match="2 masks but 1 colours"):
        overlay_masks(textured(), [disk(), disk()], [(255, 0, 0)])


def test_each_sentence_gets_its_own_colour():
    frame = np.full((H, W, 3), 128, np.uint8)
    left, right = np.zeros((H, W), bool), np.zeros((H, W), bool)
    left[10:30, 5:25] = True
    right[10:30, 35:60] = True
    out = overlay_masks(frame, np.stack([left, right]), contour=False)
    c1, c2 = sentence_colors(2)
    np.testing.assert_allclose(out[20, 15], (np.array(c1) + 128) / 2, atol=1)
    np.testing.assert_allclose(out[20, 45], (np.array(c2) + 128) / 2, atol=1)
    assert (out[40] == 128).all()
    assert not np.array_equal(out[20, 15], out[20, 45])


def banner_rows(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.any(before != after, axis=(1, 2)))


def test_caption_changes_only_a_top_banner_and_writes_light_text():
    frame = textured(240, 320)
    out = draw_caption(frame, [("the swan on the left", (128, 0, 0))])
    rows = banner_rows(frame, out)
    assert rows[0] == 0 and len(rows) == rows[-1] + 1  # one contiguous band from the top
    assert rows[-1] < 0.25 * 240
    band = out[: rows[-1] + 1]
    assert (band > 230).all(axis=-1).sum() > 20  # white text pixels
    assert band.mean() < frame[: rows[-1] + 1].mean()  # darkened for contrast

    bottom = draw_caption(frame, [("the swan", (128, 0, 0))], position="bottom")
    rows = banner_rows(frame, bottom)
    assert rows[-1] == 239 and rows[0] > 0.75 * 240


def test_long_sentences_wrap_and_several_sentences_stack():
    frame = textured(240, 320)
    short = len(banner_rows(frame, draw_caption(frame, [("a swan", (128, 0, 0))])))
    long_text = "the black swan swimming slowly from the left bank towards the right bank"
    long = len(banner_rows(frame, draw_caption(frame, [(long_text, (128, 0, 0))])))
    two = len(banner_rows(frame, draw_caption(frame, [("a swan", (128, 0, 0)),
                                                      ("a duck", (0, 128, 0))])))
    assert long > 1.5 * short and two > 1.5 * short


def test_captions_fit_on_tiny_frames():
    text = "an extraordinarily_long_identifier_without_spaces and many more words " * 3
    lines = [(text, (128, 0, 0)), ("second", (0, 128, 0))]
    frame = textured(48, 64)
    out = draw_caption(frame, lines)
    assert out.shape == frame.shape
    assert banner_rows(frame, out)[-1] < 0.4 * 48
    # smaller still: one line of the smallest font, never the whole frame
    frame = textured(24, 32)
    assert banner_rows(frame, draw_caption(frame, lines))[-1] < 24 * 0.7


def test_overlay_video_streams_to_mp4_and_gif(tmp_path):
    n = 6
    frames = [(f"{i:05d}", smooth(seed=i)) for i in range(n)]
    masks = [np.stack([disk(cx=10 + 4 * i), disk(cx=50 - 2 * i, r=6)]) for i in range(n)]
    texts = ["the left ball", "the small ball on the right"]
    count = render_overlay_video(iter(frames), iter(masks), texts, tmp_path / "o.mp4",
                                 tmp_path / "o.gif", fps=12.0, gif_max_side=32, gif_stride=2)
    assert count == n
    # 48x64 is scaled up to 384x512, the sentences listed under it
    info = probe_video(tmp_path / "o.mp4")
    assert (info.num_frames, info.width, info.fps) == (n, 512, 12.0)
    assert info.height > 384 and info.height % 2 == 0
    # the GIF has the same layout, its picture capped at 32 px: 24x32 plus its own panel
    gif = probe_video(tmp_path / "o.gif")
    assert (gif.num_frames, gif.width) == (3, 32) and gif.height > 24
    # the first sentence's mask is tinted towards its (red) colour, anywhere in the picture
    (_, first), = iter_video_frames(tmp_path / "o.mp4", stop=1)
    expected = compose_overlay_frame(frames[0][1], masks[0], list(zip(texts, sentence_colors(2))))
    assert first.shape == expected.shape
    inside = display_disk(cx=10, r=9)
    got, want = first[:384][inside].mean(0), expected[:384][inside].mean(0)
    source = resize_frame_and_masks(frames[0][1], [], (384, 512))[0][inside].mean(0)
    assert np.abs(got - want).max() < 6 and np.abs(got - source).max() > 25
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.gif", "o.mp4"]


def display_disk(cx: float, r: float, scale: int = 8) -> np.ndarray:
    """disk(cx=cx, r=r) of a 48x64 frame, as it lies in that frame scaled by ``scale``."""
    return disk(H * scale, W * scale, 24 * scale, cx * scale, r * scale)


SQUARE = 128    # the synthetic benchmark's frame size


def square_scene(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 128x128 frame and two (2, 128, 128) masks, a disk on the left and one on the right."""
    frame = smooth(SQUARE, SQUARE, seed)
    return frame, np.stack([disk(SQUARE, SQUARE, 64, 40, 20), disk(SQUARE, SQUARE, 64, 96, 16)])


def caption_lines(*texts: str) -> list:
    return list(zip(texts, sentence_colors(len(texts))))


def test_small_frames_are_shown_at_least_384_px_with_the_captions_below_the_picture():
    frame, masks = square_scene()
    lines = caption_lines("the ball on the left", "the ball on the right")
    out = compose_overlay_frame(frame, masks, lines)
    assert display_size(SQUARE, SQUARE) == (384, 384)
    assert out.shape[1] == 384 and out.shape[0] > 384 and out.shape[0] % 2 == 0
    # the picture region is exactly the upscaled frame with the masks drawn at that size
    big_frame, big_masks = resize_frame_and_masks(frame, masks, (384, 384))
    assert big_frame.shape == (384, 384, 3) and big_masks.shape == (2, 384, 384)
    np.testing.assert_array_equal(out[:384], overlay_masks(big_frame, big_masks))
    # ... so no caption touches it; the panel under it is dark, with white text and swatches
    panel = out[384:]
    background = np.all(panel == PANEL_BACKGROUND, axis=-1)
    assert background.mean() > 0.5
    assert (panel > 230).all(axis=-1).sum() > 50
    for color in sentence_colors(2):
        assert np.all(panel == color, axis=-1).sum() > 20
    assert np.abs(panel.astype(int).mean((0, 1)) - big_frame.mean((0, 1))).max() > 40
    # contours are drawn at the display size (2 px there), not 1 px scaled up to 3
    rim = np.all(out[192, :120] == sentence_colors(1)[0], axis=-1)   # the left disk's left rim
    assert rim.sum() == contour_thickness(384, 384)


def test_every_frame_has_the_same_even_size():
    lines = caption_lines("the ball on the left", "the ball")
    sizes = set()
    for seed in range(3):
        frame, masks = square_scene(seed)
        masks[0, :, : 20 * seed] = False     # masks change from frame to frame
        sizes.add(compose_overlay_frame(frame, masks, lines).shape)
    assert len(sizes) == 1
    # odd frame sizes give even videos, the extra row/column belonging to the panel
    frame, mask = textured(101, 75), disk(101, 75, 50, 37, 20)[None]
    out = compose_overlay_frame(frame, mask, caption_lines("a ball"))
    h, w = display_size(101, 75)
    assert (h, w) == (round(101 * 384 / 75), 384)
    assert out.shape[0] % 2 == 0 and out.shape[1] % 2 == 0 and out.shape[0] > h


def test_large_frames_keep_their_size_and_the_gif_cap_still_applies(tmp_path):
    assert display_size(480, 854) == (480, 854)
    assert display_size(480, 854, max_side=640) == (360, 640)
    assert display_size(24, 2000) == (24, 2000)     # never scaled up past the long side limit
    frames = [smooth(400, 600, seed=i) for i in range(2)]
    masks = [disk(400, 600, 200, 300, 80)[None]] * 2
    render_overlay_video(frames, masks, ["the ball"], tmp_path / "o.mp4", tmp_path / "o.gif",
                         gif_max_side=300)
    mp4, gif = probe_video(tmp_path / "o.mp4"), probe_video(tmp_path / "o.gif")
    assert mp4.width == 600 and mp4.height > 400
    assert gif.width == 300 and gif.height > 200


def text_bands(panel: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) row of each line of white text in a caption panel."""
    rows = np.flatnonzero((panel > 230).all(axis=-1).any(axis=1))
    breaks = np.flatnonzero(np.diff(rows) > 1)
    return list(zip(rows[np.r_[0, breaks + 1]], rows[np.r_[breaks, len(rows) - 1]]))


def test_long_sentences_wrap_inside_the_panel():
    frame, masks = square_scene()
    long_text = ("the big ball on the left that rolls slowly towards the right edge of the "
                 "table and then stops next to the smaller ball")
    short = compose_overlay_frame(frame, masks, caption_lines("a ball", "a ball"))
    long = compose_overlay_frame(frame, masks, caption_lines(long_text, "a ball"))
    assert long.shape[1] == short.shape[1] == 384          # wrapped, not wider
    assert len(text_bands(long[384:])) >= len(text_bands(short[384:])) + 2  # 3+ lines
    np.testing.assert_array_equal(long[:384], short[:384])
    # text reaches down to the panel's last lines and stays off its right margin
    panel_text = (long[384:] > 230).all(axis=-1)
    text_rows, text_cols = np.nonzero(panel_text)
    assert text_rows.max() > 0.8 * (long.shape[0] - 384)
    assert text_cols.max() < 384 - 4
    # same width and lines: the panel is the same, whatever the frame
    panel = caption_panel(384, caption_lines(long_text, "a ball"))
    assert long.shape[0] - 384 - len(panel) in (0, 1)      # 1: a row to make the height even
    np.testing.assert_array_equal(long[384:384 + len(panel)], panel)


def test_overlay_video_with_too_few_masks_writes_nothing(tmp_path):
    frames = [textured(seed=i) for i in range(3)]
    masks = [disk()[None]] * 2
    with pytest.raises(ValueError, match="masks ran out after 2 frames"):
        render_overlay_video(frames, masks, ["a ball"], tmp_path / "o.mp4", tmp_path / "o.gif")
    assert not any(tmp_path.iterdir())
    with pytest.raises(ValueError, match="2 masks for 1 texts"):
        render_overlay_video(frames, [np.stack([disk(), disk()])] * 3, ["a ball"],
                             tmp_path / "o.mp4")


def write_metrics(path, rows):
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "epoch", "split", "name", "value"])
        writer.writerows(rows)


def test_training_curves_png(tmp_path):
    rows = []
    for step in range(1, 121):
        loss = 2.0 * math.exp(-step / 40)
        rows.append([step, f"{step / 40:.4f}", "train", "loss", f"{loss:.6g}"])
        rows.append([step, f"{step / 40:.4f}", "train", "loss_dice", "nan" if step == 7 else "0.5"])
    for epoch in (1, 2, 3):
        rows.append([40 * epoch, epoch, "val", "JF", 0.2 * epoch])
        rows.append([40 * epoch, epoch, "val", "loss", 2.0 * math.exp(-epoch)])
    metrics = tmp_path / "metrics.csv"
    write_metrics(metrics, rows)
    out = plot_training_curves(metrics, tmp_path / "plots" / "curves.png")
    with Image.open(out) as img:
        img.verify()
    with Image.open(out) as img:
        pixels = np.asarray(img.convert("RGB"))
    assert pixels.shape[0] > 100 and pixels.shape[1] > 300
    assert pixels.std() > 10  # something was drawn
    assert [p.name for p in (tmp_path / "plots").iterdir()] == ["curves.png"]


def test_training_curves_refuse_bad_csvs(tmp_path):
    with pytest.raises(RVOSError, match="not found"):
        plot_training_curves(tmp_path / "missing.csv", tmp_path / "c.png")
    bad = tmp_path / "bad.csv"
    bad.write_text("step,loss\n1,0.5\n")
    with pytest.raises(RVOSError, match=r"bad\.csv.*missing column"):
        plot_training_curves(bad, tmp_path / "c.png")
    header_only = tmp_path / "empty.csv"
    write_metrics(header_only, [])
    with pytest.raises(RVOSError, match="no rows"):
        plot_training_curves(header_only, tmp_path / "c.png")
    garbled = tmp_path / "garbled.csv"
    write_metrics(garbled, [[1, 0, "train", "loss", "0.5"], [2, 0, "train", "loss", "oops"]])
    with pytest.raises(RVOSError, match="line 3"):
        plot_training_curves(garbled, tmp_path / "c.png")
    assert not (tmp_path / "c.png").exists()


def test_comparison_grid_has_one_row_per_frame(tmp_path):
    frames = [textured(seed=i) for i in range(3)]
    gts = [disk(cx=20 + 5 * i) for i in range(3)]
    preds = [disk(cx=22 + 5 * i) for i in range(3)]
    out = save_comparison_grid(frames, gts, preds, tmp_path / "grid.png", text="the ball",
                               max_side=W)
    with Image.open(out) as img:
        width, height = img.size
    assert width == 3 * W + 2 * 4 and height == 3 * (H + 4)


def test_real_frame_overlay_touches_only_the_swan_and_the_banner(assets):
    root = assets / "davis-real"
    (_, frame), = iter_video_frames(root / "JPEGImages" / "480p" / "blackswan", stop=1)
    mask = read_label_png(root / "Annotations" / "480p" / "blackswan" / "00000.png") > 0
    out = draw_caption(overlay_mask(frame, mask), [("a black swan", sentence_colors(1)[0])])
    rows = banner_rows(overlay_mask(frame, mask), out)
    assert 0 < len(rows) < 0.15 * 480
    changed = np.any(out != frame, axis=-1)
    changed[: rows[-1] + 1] = False
    assert changed.any() and not changed[~mask].any()


def test_captions_work_without_freetype(monkeypatch):
    from PIL import ImageFont

    import rvos.viz as viz

    def bitmap_only(size=None):
        if size is not None:
            raise ImportError("The _imagingft C module is not installed")
        return ImageFont.load_default_imagefont()

    monkeypatch.setattr(viz.ImageFont, "load_default", bitmap_only)
    viz._font.cache_clear()
    viz._caption_layout.cache_clear()
    try:
        frame = textured(120, 160)
        out = draw_caption(frame, [("a black swan swimming to the right", (128, 0, 0))])
        rows = banner_rows(frame, out)
        assert 0 < len(rows) < 0.4 * 120 and (out[rows] > 230).all(axis=-1).any()
    finally:
        viz._font.cache_clear()
        viz._caption_layout.cache_clear()
