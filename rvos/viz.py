"""Visualisation: mask overlays, sentence captions, overlay videos, training curves.

    frame = overlay_masks(frame, masks, sentence_colors(len(masks)))
    frame = draw_caption(frame, list(zip(texts, sentence_colors(len(texts)))))
    render_overlay_video(iter_video_frames(video), masks_per_frame, texts, "out.mp4", "out.gif")
    frame = compose_overlay_frame(frame, masks, list(zip(texts, sentence_colors(len(texts)))))
    plot_training_curves(run_dir / "metrics.csv", run_dir / "curves.png")

Sentence k is drawn in DAVIS palette colour k + 1, the colour its object id k + 1 has in the
palette PNGs, so overlays and saved masks agree. Frames are (H, W, 3) uint8 RGB throughout;
masks are (H, W), bool or thresholded at 0.5 (so 0/1, 0/255 and probabilities all work).

``draw_caption`` writes sentences on a banner over the picture (for small labels such as the
comparison grid's); overlay videos instead scale small frames up (shorter side >= 384 px) and
list the sentences in a panel under the picture (``compose_overlay_frame``), so the picture
is never covered.
"""

from __future__ import annotations

import csv
import math
import os
import textwrap
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from rvos.data.palette import davis_palette
from rvos.errors import RVOSError

Color = tuple[int, int, int]

BANNER_OPACITY = 0.6          # the caption banner darkens what is under it by this much
MAX_BANNER_FRACTION = 0.4     # a caption never covers more than this share of the frame height


def sentence_colors(count: int) -> list[Color]:
    """Distinct colours for ``count`` sentences: DAVIS palette entries 1, 2, ... (cycling
    after 255)."""
    palette = davis_palette()
    return [tuple(int(c) for c in palette[1 + k % 255]) for k in range(count)]


# ---------------------------------------------------------------------------------- overlays


def _check_frame(frame: np.ndarray) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"a frame must be (H, W, 3) uint8 RGB, got {frame.shape} {frame.dtype}")
    return frame


def _binary(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.shape != shape:
        raise ValueError(f"mask is {mask.shape} but the frame is {shape}")
    return mask if mask.dtype == bool else mask > 0.5


def _inner_contour(mask: np.ndarray, thickness: int) -> np.ndarray:
    """Pixels of ``mask`` within ``thickness`` (4-connected steps) of its outside. The frame
    border does not count as outside, so an object cut by the border gets no line there."""
    eroded = mask.copy()
    for _ in range(thickness):
        padded = np.pad(eroded, 1, mode="edge")
        eroded = (eroded & padded[:-2, 1:-1] & padded[2:, 1:-1]
                  & padded[1:-1, :-2] & padded[1:-1, 2:])
    return mask & ~eroded


def contour_thickness(height: int, width: int) -> int:
    """Contour width in pixels for a frame size: 1 up to ~360p, 2 at 480p, 3 at 720p..."""
    return max(1, round(min(height, width) / 240))


def overlay_mask(frame: np.ndarray, mask: np.ndarray, color: Color = sentence_colors(1)[0],
                 alpha: float = 0.5, contour: bool = True) -> np.ndarray:
    """Tint the ``mask`` pixels of ``frame`` with ``color``.

    frame: (H, W, 3) uint8 RGB; mask: (H, W). Inside the mask each pixel becomes
    ``(1 - alpha) * pixel + alpha * color``; with ``contour`` the mask's inner edge is drawn
    in the opaque colour. Pixels outside the mask are never changed. Returns a new array.
    """
    frame = _check_frame(frame)
    mask = _binary(mask, frame.shape[:2])
    out = frame.copy()
    if not mask.any():
        return out
    tint = np.asarray(color, dtype=np.float32)
    out[mask] = np.round(frame[mask] * (1.0 - alpha) + tint * alpha).astype(np.uint8)
    if contour:
        out[_inner_contour(mask, contour_thickness(*mask.shape))] = np.asarray(color, np.uint8)
    return out


def overlay_masks(frame: np.ndarray, masks: Sequence[np.ndarray] | np.ndarray,
                  colors: Sequence[Color] | None = None, alpha: float = 0.5,
                  contour: bool = True) -> np.ndarray:
    """Overlay one mask per sentence: masks (N, H, W) or a list of N (H, W); colour k for
    mask k (default :func:`sentence_colors`). Later masks are drawn over earlier ones."""
    colors = sentence_colors(len(masks)) if colors is None else list(colors)
    if len(colors) != len(masks):
        raise ValueError(f"{len(masks)} masks but {len(colors)} colours")
    out = _check_frame(frame)
    for mask, color in zip(masks, colors):
        out = overlay_mask(out, mask, color, alpha, contour)
    return out if len(masks) else out.copy()


# ---------------------------------------------------------------------------------- captions


@lru_cache(maxsize=32)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)   # Pillow >= 10.1 with FreeType: scalable
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()            # the fixed bitmap font


def _metrics(font) -> tuple[int, int]:
    """(ascent, descent) in pixels; the bitmap fallback font has no getmetrics()."""
    if hasattr(font, "getmetrics"):
        return font.getmetrics()
    return font.getbbox("Ag")[3], 0


def _wrap(text: str, font, max_width: float) -> list[str]:
    """Greedy word wrap by measured width; a word wider than a line is cut by characters."""
    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}" if current else word
        if font.getlength(candidate) <= max_width:
            current = candidate
            continue
        if current:
            lines.append(current)
        while font.getlength(word) > max_width and len(word) > 1:
            cut = max(1, next((i for i in range(len(word), 0, -1)
                               if font.getlength(word[:i]) <= max_width), 1))
            lines.append(word[:cut])
            word = word[cut:]
        current = word
    if current or not lines:
        lines.append(current)
    return lines


@lru_cache(maxsize=64)
def _caption_layout(width: int, height: int, lines: tuple[tuple[str, Color], ...]):
    """Font, wrapped rows and banner geometry for a caption on a (height, width) frame.

    Returns (font, rows, line_height, pad, swatch, banner_height) where each row is
    (text, colour of the swatch to draw before it or None) and swatch is its side (0 when no
    sentence has a colour).
    """
    size = int(np.clip(round(min(width / 36, height / 14)), 8, 28))
    while True:
        font = _font(size)
        ascent, descent = _metrics(font)
        line_height = ascent + descent + max(1, size // 6)
        pad = max(2, size // 3)
        swatch = max(4, ascent - 1) if any(color is not None for _, color in lines) else 0
        text_width = max(width - 2 * pad - (swatch + pad if swatch else 0), 8)
        rows = []
        for text, color in lines:
            for i, row in enumerate(_wrap(text, font, text_width)):
                rows.append((row, color if i == 0 else None))
        banner_height = 2 * pad + len(rows) * line_height
        if banner_height <= MAX_BANNER_FRACTION * height or size <= 8:
            break
        size -= 1
    max_rows = max(1, int((MAX_BANNER_FRACTION * height - 2 * pad) // line_height))
    if len(rows) > max_rows:   # still too tall at the smallest size: cut, and say so
        last_text, last_color = rows[max_rows - 1]
        while last_text and font.getlength(last_text + "…") > text_width:
            last_text = last_text[:-1]
        rows = rows[:max_rows - 1] + [(last_text + "…", last_color)]
        banner_height = 2 * pad + len(rows) * line_height
    return font, rows, line_height, pad, swatch, min(banner_height, height)


def draw_caption(frame: np.ndarray, lines: Sequence[tuple[str, Color | None]],
                 position: str = "top") -> np.ndarray:
    """Draw sentences on a dark banner across the top (or ``position="bottom"``) of the frame.

    lines: (sentence, colour) pairs; each sentence is written in white after a square of its
    colour (legible whatever the colour; colour None: no square), wrapped to the frame width.
    The font scales with the frame; on small frames the banner stays under 40% of the height
    (one line of the smallest font at least), ending with "…" when the sentences do not fit.
    Only the banner rows change. Returns a new (H, W, 3) uint8 array.
    """
    frame = _check_frame(frame)
    if position not in ("top", "bottom"):
        raise ValueError(f"position must be 'top' or 'bottom', got {position!r}")
    out = frame.copy()
    if not lines:
        return out
    height, width = frame.shape[:2]
    key = tuple((str(text), None if color is None else tuple(int(c) for c in color))
                for text, color in lines)
    font, rows, line_height, pad, swatch, banner_height = _caption_layout(width, height, key)
    top = 0 if position == "top" else height - banner_height
    region = out[top:top + banner_height]
    banner = Image.fromarray(np.round(region * (1.0 - BANNER_OPACITY)).astype(np.uint8))
    draw = ImageDraw.Draw(banner)
    ascent = _metrics(font)[0]
    for i, (text, color) in enumerate(rows):
        y = pad + i * line_height
        if color is not None:
            y0 = y + max(0, (ascent - swatch) // 2 + 1)
            draw.rectangle([pad, y0, pad + swatch - 1, y0 + swatch - 1], fill=color,
                           outline=(255, 255, 255))
        draw.text((pad + (swatch + pad if swatch else 0), y), text, font=font,
                  fill=(255, 255, 255))
    region[:] = np.asarray(banner)
    return out


# ----------------------------------------------------------------------------- overlay videos

MIN_DISPLAY_SIDE = 384        # overlay videos show the picture at least this big (short side)
MAX_UPSCALED_SIDE = 1920      # ... but upscaling never makes the long side bigger than this
PANEL_BACKGROUND: Color = (24, 24, 24)


def _resize(frame: np.ndarray, max_side: int) -> np.ndarray:
    height, width = frame.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1:
        return frame
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(frame).resize(size, Image.Resampling.BILINEAR))


def display_size(height: int, width: int, min_side: int = MIN_DISPLAY_SIDE,
                 max_side: int | None = None) -> tuple[int, int]:
    """(height, width) at which a (height, width) picture is shown in an overlay video.

    Small pictures are scaled up, keeping the aspect ratio, until the shorter side is
    ``min_side`` (the longer side stops at ``MAX_UPSCALED_SIDE`` for extreme aspect ratios);
    pictures with a longer side above ``max_side`` (None: no limit) are scaled down to it,
    which wins over ``min_side``. Otherwise the size is kept.
    """
    scale = 1.0
    if min(height, width) < min_side:
        scale = min(min_side / min(height, width),
                    max(1.0, MAX_UPSCALED_SIDE / max(height, width)))
    if max_side is not None and max(height, width) * scale > max_side:
        scale = max_side / max(height, width)
    if scale == 1.0:
        return height, width
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize_frame_and_masks(frame: np.ndarray, masks: Sequence[np.ndarray] | np.ndarray,
                           size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Scale an (H, W, 3) uint8 frame (bilinear) and its N (H, W) masks to ``size`` =
    (h, w). Masks are interpolated bilinearly as 0/1 and thresholded at 0.5, so their edges
    are smooth at the new size rather than blocky. Returns ((h, w, 3) uint8, (N, h, w) bool).
    """
    frame = _check_frame(frame)
    binary = [_binary(m, frame.shape[:2]) for m in masks]
    height, width = size
    if (height, width) == frame.shape[:2]:
        stacked = np.stack(binary) if binary else np.zeros((0, height, width), bool)
        return frame, stacked
    pil_size = (width, height)
    frame = np.asarray(Image.fromarray(frame).resize(pil_size, Image.Resampling.BILINEAR))
    resized = [np.asarray(Image.fromarray(m.astype(np.float32))
                          .resize(pil_size, Image.Resampling.BILINEAR)) > 0.5 for m in binary]
    return frame, (np.stack(resized) if resized else np.zeros((0, height, width), bool))


@lru_cache(maxsize=16)
def _panel(width: int, lines: tuple[tuple[str, Color | None], ...]) -> np.ndarray:
    """The rendered caption panel (read-only) for :func:`caption_panel`."""
    size = int(np.clip(round(width / 24), 16, 48))
    font = _font(size)
    ascent, descent = _metrics(font)
    line_height = ascent + descent + max(2, size // 4)
    pad = max(4, size // 2)
    swatch = max(6, ascent) if any(color is not None for _, color in lines) else 0
    indent = pad + (swatch + pad if swatch else 0)
    text_width = max(width - indent - pad, 8)
    rows = []   # (y, text, colour of the swatch before it or None)
    y = pad
    for text, color in lines:
        for i, row in enumerate(_wrap(text, font, text_width)):
            rows.append((y, row, color if i == 0 else None))
            y += line_height
        y += max(2, size // 3)              # a little air between sentences
    height = y - max(2, size // 3) + pad if rows else 0
    panel = Image.new("RGB", (width, height), PANEL_BACKGROUND)
    draw = ImageDraw.Draw(panel)
    for y, text, color in rows:
        if color is not None:
            y0 = y + max(0, (ascent - swatch) // 2 + 1)
            draw.rectangle([pad, y0, pad + swatch - 1, y0 + swatch - 1], fill=color,
                           outline=(255, 255, 255))
        draw.text((indent, y), text, font=font, fill=(255, 255, 255))
    out = np.asarray(panel).copy()
    out.flags.writeable = False
    return out


def caption_panel(width: int, lines: Sequence[tuple[str, Color | None]]) -> np.ndarray:
    """A dark panel ``width`` pixels wide listing the sentences, to go under a picture.

    lines: (sentence, colour) pairs; each sentence is written in white after a square of its
    mask colour (colour None: no square), wrapped by measured width so nothing is cut. The
    font scales with ``width`` (16 px at 384 px wide, at most 48 px); the height grows with
    the number of wrapped lines (0 when there are no lines). Returns a new (P, width, 3)
    uint8 array; the same lines and width always give the same P.
    """
    key = tuple((str(text), None if color is None else tuple(int(c) for c in color))
                for text, color in lines)
    return _panel(int(width), key).copy()


def compose_overlay_frame(frame: np.ndarray, masks: Sequence[np.ndarray] | np.ndarray,
                          lines: Sequence[tuple[str, Color]], alpha: float = 0.5,
                          min_side: int = MIN_DISPLAY_SIDE,
                          max_side: int | None = None) -> np.ndarray:
    """One frame of an overlay video: the picture with its masks, the sentences under it.

    frame: (H, W, 3) uint8 RGB; masks: N (H, W) masks, or an (N, H, W) array, one per line;
    lines: N (sentence, colour) pairs, mask k drawn in colour k.
    The frame and masks are scaled to (h, w) = :func:`display_size` (H, W, min_side,
    max_side) and the masks drawn at that size; the :func:`caption_panel` (P rows) goes
    below, so no sentence covers the picture. Returns an (h + P + e, w + f, 3) uint8 array,
    e and f being 0 or 1 so both sides are even (as yuv420 video needs); the picture is at
    ``[:h, :w]`` and everything else is panel. Frames of one size with the same lines always
    give the same output size.
    """
    frame = _check_frame(frame)
    if len(masks) != len(lines):
        raise ValueError(f"{len(masks)} masks for {len(lines)} texts")
    size = display_size(*frame.shape[:2], min_side=min_side, max_side=max_side)
    picture, scaled = resize_frame_and_masks(frame, masks, size)
    picture = overlay_masks(picture, scaled, [color for _, color in lines], alpha)
    height, width = size
    panel = _panel(width, tuple((str(t), tuple(int(c) for c in color)) for t, color in lines))
    total = height + len(panel)
    out = np.empty((total + total % 2, width + width % 2, 3), np.uint8)
    out[:] = np.asarray(PANEL_BACKGROUND, np.uint8)
    out[:height, :width] = picture
    out[height:total, :width] = panel
    return out


def render_overlay_video(frames: Iterable[np.ndarray | tuple[str, np.ndarray]],
                         masks: Iterable[np.ndarray | Sequence[np.ndarray]],
                         texts: Sequence[str], out_mp4: str | Path | None,
                         out_gif: str | Path | None = None, fps: float = 24.0,
                         colors: Sequence[Color] | None = None, alpha: float = 0.5,
                         gif_max_side: int = 640, gif_stride: int = 1,
                         min_side: int = MIN_DISPLAY_SIDE) -> int:
    """Write the video with every sentence's mask drawn, and the sentences listed below it.

    frames: (H, W, 3) uint8 RGB frames, or ``(name, frame)`` pairs as
        :func:`rvos.data.video_io.iter_video_frames` yields them.
    masks: per frame, the N masks of the N ``texts``: an (N, H, W) array or N (H, W) masks.
    out_mp4 / out_gif: where to write (either may be None). Each output frame is
        :func:`compose_overlay_frame`: the picture scaled up so its shorter side is at least
        ``min_side`` (small videos stay readable), masks drawn at that size, and a caption
        panel under the picture with each sentence after a square of its mask colour. Every
        frame of a file has the same (even) size. The GIF uses the same layout with the
        picture's longer side at most ``gif_max_side``, and keeps every ``gif_stride``-th
        frame, played at ``fps / gif_stride`` so it lasts as long as the video.
    One frame is held at a time. Returns the number of frames rendered. If the frames and
    masks differ in count, nothing is written and ValueError is raised.
    """
    from rvos.data.video_io import VideoWriter

    if out_mp4 is None and out_gif is None:
        raise ValueError("give out_mp4, out_gif or both")
    colors = sentence_colors(len(texts)) if colors is None else list(colors)
    if len(colors) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(colors)} colours")
    caption = list(zip(texts, colors))
    writers = []
    if out_mp4 is not None:
        mp4 = VideoWriter(out_mp4, fps)
        writers.append(mp4)
    if out_gif is not None:
        gif = VideoWriter(out_gif, fps / gif_stride)
        writers.append(gif)
    count = 0
    try:
        masks_iter = iter(masks)
        for item in frames:
            frame = item[1] if isinstance(item, tuple) else item
            frame_masks = next(masks_iter, None)
            if frame_masks is None:
                raise ValueError(f"masks ran out after {count} frames")
            if len(frame_masks) != len(texts):
                raise ValueError(f"frame {count}: {len(frame_masks)} masks for {len(texts)} texts")
            composed = None
            if out_mp4 is not None:
                composed = compose_overlay_frame(frame, frame_masks, caption, alpha, min_side)
                mp4.write(composed)
            if out_gif is not None and count % gif_stride == 0:
                shape = np.shape(frame)[:2]
                if composed is None or (display_size(*shape, min_side, gif_max_side)
                                        != display_size(*shape, min_side)):
                    composed = compose_overlay_frame(frame, frame_masks, caption, alpha,
                                                     min_side, gif_max_side)
                gif.write(composed)
            count += 1
        if next(masks_iter, None) is not None:
            raise ValueError(f"more masks than the {count} frames")
    except BaseException:
        for writer in writers:
            writer.abort()
        raise
    for writer in writers:
        writer.close()
    return count


def save_comparison_grid(frames: Sequence[np.ndarray], gt_masks: Sequence[np.ndarray],
                         pred_masks: Sequence[np.ndarray], out_png: str | Path,
                         text: str | None = None, color: Color = sentence_colors(1)[0],
                         max_side: int = 320) -> Path:
    """Save a frame | ground truth | prediction strip per frame, stacked as rows, with each
    row's IoU written on the prediction. frames (H, W, 3) uint8, masks (H, W); each panel is
    scaled to ``max_side``. ``text``, if given, is drawn over the first frame panel."""
    if not (len(frames) == len(gt_masks) == len(pred_masks)) or not len(frames):
        raise ValueError(f"need as many frames, ground truths and predictions (>0), got "
                         f"{len(frames)}, {len(gt_masks)}, {len(pred_masks)}")
    rows = []
    for i, (frame, gt, pred) in enumerate(zip(frames, gt_masks, pred_masks)):
        frame = _check_frame(frame)
        gt, pred = _binary(gt, frame.shape[:2]), _binary(pred, frame.shape[:2])
        union = np.logical_or(gt, pred).sum()
        iou = np.logical_and(gt, pred).sum() / union if union else 1.0
        labels = [f"frame: {text}" if text and i == 0 else "frame", "ground truth",
                  f"prediction (IoU {iou:.2f})"]
        panels = [frame, overlay_mask(frame, gt, color), overlay_mask(frame, pred, color)]
        panels = [draw_caption(_resize(p, max_side), [(label, None)], position="bottom")
                  for p, label in zip(panels, labels)]
        gap = np.full((panels[0].shape[0], 4, 3), 255, np.uint8)
        rows.append(np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=255)
            for r in rows]
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_png.with_name(f".{out_png.name}.partial-{os.getpid()}")
    Image.fromarray(np.concatenate(rows, axis=0)).save(tmp, format="PNG")
    os.replace(tmp, out_png)
    return out_png


# --------------------------------------------------------------------------- training curves


def _read_metrics(metrics_csv: Path) -> dict[str, dict[str, tuple[list[float], list[float]]]]:
    """name -> split -> (steps, values) from the trainer's CSV."""
    if not metrics_csv.is_file():
        raise RVOSError("metrics file not found", metrics_csv)
    with metrics_csv.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = {"step", "split", "name", "value"} - set(reader.fieldnames or [])
        if missing:
            raise RVOSError(f"not a metrics CSV: missing column(s) {', '.join(sorted(missing))} "
                            "(expected step, epoch, split, name, value)", metrics_csv)
        series: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
        for line, row in enumerate(reader, start=2):
            try:
                step, value = float(row["step"]), float(row["value"])
            except (TypeError, ValueError):
                raise RVOSError(f"line {line}: step and value must be numbers, got "
                                f"{row['step']!r} and {row['value']!r}", metrics_csv) from None
            steps, values = series.setdefault(row["name"], {}).setdefault(row["split"], ([], []))
            steps.append(step)
            values.append(value)
    if not series:
        raise RVOSError("metrics file has no rows yet", metrics_csv)
    return series


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average over finite values, same length as ``values``."""
    finite = np.where(np.isfinite(values), values, 0.0)
    counts = np.convolve(np.isfinite(values).astype(float), np.ones(window), "full")[:len(values)]
    sums = np.convolve(finite, np.ones(window), "full")[:len(values)]
    return np.divide(sums, counts, out=np.full(len(values), np.nan), where=counts > 0)


def plot_training_curves(metrics_csv: str | Path, out_png: str | Path) -> Path:
    """Plot every scalar of the trainer's ``metrics.csv`` (columns ``step, epoch, split, name,
    value``, one row per logged scalar) as one subplot per name, one line per split (train,
    val, ...) over the step, and write a PNG (atomically). Long noisy series are drawn faintly
    with a moving average on top. Uses matplotlib's Agg canvas directly, so the global
    matplotlib backend is left alone."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metrics_csv, out_png = Path(metrics_csv), Path(out_png)
    series = _read_metrics(metrics_csv)
    names = sorted(series, key=lambda n: (not n.startswith("loss"), n))
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    figure = Figure(figsize=(4.2 * cols, 3.0 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    split_colors = {"train": "tab:blue", "val": "tab:orange"}
    for i, name in enumerate(names):
        ax = figure.add_subplot(rows, cols, i + 1)
        for j, (split, (steps, values)) in enumerate(sorted(series[name].items())):
            steps_a, values_a = np.asarray(steps), np.asarray(values)
            order = np.argsort(steps_a, kind="stable")
            steps_a, values_a = steps_a[order], values_a[order]
            color = split_colors.get(split, f"C{(j + 2) % 10}")
            marker = "o" if len(steps_a) <= 30 else None
            if len(steps_a) > 50:
                ax.plot(steps_a, values_a, color=color, alpha=0.25, linewidth=0.8)
                ax.plot(steps_a, _smooth(values_a, max(5, len(steps_a) // 50)), color=color,
                        label=split)
            else:
                ax.plot(steps_a, values_a, color=color, marker=marker, markersize=3, label=split)
        ax.set_title(textwrap.shorten(name, 40))
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    out_png.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_png.with_name(f".{out_png.name}.partial-{os.getpid()}")
    figure.savefig(tmp, format="png", dpi=100)
    os.replace(tmp, out_png)
    return out_png
