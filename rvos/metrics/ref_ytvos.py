"""Ref-YouTube-VOS submissions: write the layout the evaluation server expects, check it
against ``meta_expressions.json`` and zip it only when nothing is wrong.

Layout (as MTTR / ReferFormer produce it): ``Annotations/<video>/<exp_id>/<frame>.png``, one
single-channel PNG per frame listed for the video in meta_expressions.json (palette or
grayscale; we write grayscale 0/255 like MTTR and ReferFormer), non-zero = the referred
object; the zip holds the ``Annotations`` folder at its root.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from rvos.errors import RVOSError
from rvos.metrics.davis_protocols import load_meta_expressions
from rvos.paths import safe_join, safe_zip_entry

ACCEPTED_MODES = ("P", "L", "1")  # single-channel PNGs; the server reads non-zero as foreground
MAX_LISTED_PROBLEMS = 50


def annotations_dir(pred_root: str | Path) -> Path:
    """``<pred_root>/Annotations`` when it exists, else ``pred_root`` itself."""
    pred_root = Path(pred_root)
    return pred_root / "Annotations" if (pred_root / "Annotations").is_dir() else pred_root


def write_expression_masks(annotations: str | Path, video: str, exp_id: str, frame_names: list[str],
                           masks: np.ndarray, source: str | Path | None = None) -> None:
    """Save (T, H, W) binary masks of one expression as ``<annotations>/<video>/<exp_id>/<frame>.png``.

    Files are single-channel 8-bit PNGs with 0 = background and 255 = object, byte for byte
    the format MTTR and ReferFormer submit (accepted by the server whether it reads
    non-zero, > 128 or == 255 as the object); written atomically (temp file + rename).
    The video id, expression id and frame names must each be one path component (nothing is
    written outside ``annotations``); ``source``, the file they came from, is named in the
    RVOSError otherwise.
    """
    masks = np.asarray(masks)
    if masks.ndim != 3 or masks.shape[0] != len(frame_names):
        raise ValueError(f"masks must be (T, H, W) with T = {len(frame_names)} frames, got {masks.shape}")
    folder = safe_join(annotations, video, str(exp_id), what="video or expression id", source=source)
    paths = [safe_join(folder, f"{name}.png", what="frame name", source=source)
             for name in frame_names]
    folder.mkdir(parents=True, exist_ok=True)
    for path, mask in zip(paths, masks):
        tmp = path.with_name(f".{path.name}.tmp")
        Image.fromarray(np.where(mask != 0, 255, 0).astype(np.uint8), mode="L").save(tmp, format="PNG")
        tmp.replace(path)


def validate_submission(annotations: str | Path, videos: dict,
                        frame_sizes: dict[str, tuple[int, int]] | None = None) -> list[str]:
    """Every problem that would make the server reject the submission; empty when it is fine.

    Args:
        annotations: the ``Annotations`` folder.
        videos: the ``videos`` dict of meta_expressions.json.
        frame_sizes: optional {video: (H, W)}; sizes are checked only for listed videos
            (meta_expressions.json itself has no sizes). Within a video all frames of all
            expressions must have one size either way.
    """
    annotations = Path(annotations)
    if not annotations.is_dir():
        return [f"{annotations}: Annotations folder not found"]
    problems: list[str] = []
    for video, entry in videos.items():
        video_dir = safe_join(annotations, video, what="video id")
        if not video_dir.is_dir():
            problems.append(f"{video}: video folder missing")
            continue
        expected_size = None if frame_sizes is None else frame_sizes.get(video)
        seen_size = None
        for exp_id in entry.get("expressions", {}):
            exp_dir = safe_join(video_dir, str(exp_id), what="expression id")
            if not exp_dir.is_dir():
                problems.append(f"{video}/{exp_id}: expression folder missing")
                continue
            for frame in entry.get("frames", []):
                path = safe_join(exp_dir, f"{frame}.png", what="frame name")
                if not path.is_file():
                    problems.append(f"{video}/{exp_id}/{frame}.png: frame missing")
                    continue
                try:
                    with Image.open(path) as img:
                        mode, (w, h), fmt = img.mode, img.size, img.format
                        img.load()  # decodes every row: truncated files fail here
                except Exception as e:  # unreadable or truncated file
                    problems.append(f"{video}/{exp_id}/{frame}.png: unreadable PNG ({type(e).__name__}: {e})")
                    continue
                if fmt != "PNG":
                    problems.append(f"{video}/{exp_id}/{frame}.png: not a PNG (format {fmt})")
                if mode not in ACCEPTED_MODES:
                    problems.append(f"{video}/{exp_id}/{frame}.png: mode {mode}, expected a palette (P) "
                                    f"or grayscale (L) single-channel PNG")
                if expected_size is not None and (h, w) != tuple(expected_size):
                    problems.append(f"{video}/{exp_id}/{frame}.png: size {w}x{h}, expected "
                                    f"{expected_size[1]}x{expected_size[0]} (W x H)")
                elif seen_size is None:
                    seen_size = (h, w)
                elif (h, w) != seen_size:
                    problems.append(f"{video}/{exp_id}/{frame}.png: size {w}x{h} differs from other "
                                    f"frames of the video ({seen_size[1]}x{seen_size[0]})")
    for video_dir in sorted(p for p in annotations.iterdir() if p.is_dir()):
        if video_dir.name not in videos:
            problems.append(f"{video_dir.name}: video not in meta_expressions.json")
            continue
        known = {str(e) for e in videos[video_dir.name].get("expressions", {})}
        for exp_dir in sorted(p for p in video_dir.iterdir() if p.is_dir()):
            if exp_dir.name not in known:
                problems.append(f"{video_dir.name}/{exp_dir.name}: expression not in meta_expressions.json")
    return problems


def zip_submission(annotations: str | Path, zip_path: str | Path, meta_path: str | Path,
                   frame_sizes: dict[str, tuple[int, int]] | None = None,
                   zip_root: str = "Annotations") -> Path:
    """Validate and zip the submission: ``<zip_root>/<video>/<exp_id>/<frame>.png`` in the
    zip (Ref-YouTube-VOS: ``Annotations/``; MeViS: ``""``, the video folders at the root).

    Raises RVOSError listing the problems instead of writing a zip the server would reject.
    The zip is written to a temporary name and renamed, so a failed run leaves no zip.
    """
    videos = load_meta_expressions(meta_path)
    annotations = Path(annotations)
    problems = validate_submission(annotations, videos, frame_sizes)
    if problems:
        shown = "\n  ".join(problems[:MAX_LISTED_PROBLEMS])
        more = f"\n  ... and {len(problems) - MAX_LISTED_PROBLEMS} more" if len(problems) > MAX_LISTED_PROBLEMS else ""
        raise RVOSError(f"submission not written: {len(problems)} problem(s)\n  {shown}{more}", annotations)
    zip_path = Path(zip_path)
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = zip_path.with_name(f".{zip_path.name}.tmp")
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for video, entry in videos.items():
                for exp_id in entry.get("expressions", {}):
                    for frame in entry.get("frames", []):
                        names = (video, str(exp_id), f"{frame}.png")
                        what = "video, expression or frame name"
                        path = safe_join(annotations, *names, what=what, source=meta_path)
                        entry_names = (zip_root, *names) if zip_root else names
                        zf.write(path, safe_zip_entry(*entry_names, what=what, source=meta_path))
        tmp.replace(zip_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return zip_path


def submission_stats(videos: dict) -> dict[str, int]:
    """Counts the submission must cover: videos, expressions, PNG files."""
    n_exp = sum(len(v.get("expressions", {})) for v in videos.values())
    n_png = sum(len(v.get("expressions", {})) * len(v.get("frames", [])) for v in videos.values())
    return {"videos": len(videos), "expressions": n_exp, "png_files": n_png}
