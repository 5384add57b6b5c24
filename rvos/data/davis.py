"""Ref-DAVIS17 -> Ref-YouTube-VOS layout converter.

Input: the DAVIS-2017 folders (``JPEGImages/480p/<seq>/*.jpg``, ``Annotations/480p/<seq>/
*.png``, optionally ``ImageSets/2017/{train,val}.txt`` and ``davis_semantics.json``) and the
Ref-DAVIS17 expressions, either the four official text files

    davis_text_annotations/Davis17_annot1.txt              annotator 1, first frame
    davis_text_annotations/Davis17_annot1_full_video.txt   annotator 1, full video
    davis_text_annotations/Davis17_annot2.txt              annotator 2, first frame
    davis_text_annotations/Davis17_annot2_full_video.txt   annotator 2, full video

(one ``<video> <obj_id> "<sentence>"`` per line), or a ready ``meta_expressions.json``.

Output: the layout :class:`rvos.data.ytvos.RefYTVOSLayout` reads, frames copied (or
linked), masks rewritten as palette PNGs (DAVIS-2016 binary 0/255 masks become object id 1),
``meta.json`` and ``meta_expressions.json`` written. Expression ids follow ReferFormer's
conversion: the k-th object of a video (objects sorted by id, so k = obj_id - 1 when ids
run 1..n) gets ids 4k + a, with a = 0 annotator 1 first-frame, 1 annotator 1 full-video,
2 annotator 2 first-frame, 3 annotator 2 full-video. The official protocol averages J&F
over the four sets a = 0..3.

Note: ReferFormer builds its Ref-DAVIS17 split from ``Annotations_unsupervised`` and scores
with the unsupervised DAVIS task; pass ``annotations="Annotations_unsupervised"`` to match.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from rvos.data.palette import read_label_png, write_label_png
from rvos.data.ytvos import RefYTVOSLayout, parse_meta_expressions
from rvos.errors import RVOSError
from rvos.paths import check_component

DAVIS_TEXT_FILES = (
    "Davis17_annot1.txt",
    "Davis17_annot1_full_video.txt",
    "Davis17_annot2.txt",
    "Davis17_annot2_full_video.txt",
)

# Misspelt sequence names in the official text files (fixed as in ReferFormer).
_VIDEO_NAME_FIXES = {"clasic-car": "classic-car", "dog-scale": "dogs-scale", "motor-bike": "motorbike"}

IMAGESET_NAMES = {"valid": "val", "val": "val", "train": "train"}


def read_davis_text_annotations(path: str | Path) -> dict[str, dict[int, str]]:
    """One Ref-DAVIS17 text file -> {video: {obj_id: sentence}}.

    Lines are ``<video> <obj_id> "<sentence>"``; blank lines are skipped. The files are
    UTF-8 or Latin-1 (annotator 2's are Latin-1).
    """
    path = Path(path)
    if not path.is_file():
        raise RVOSError("Ref-DAVIS17 expression file not found", path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    videos: dict[str, dict[int, str]] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        parts = line.split(maxsplit=2)
        if len(parts) < 3:
            raise RVOSError(f'line {lineno}: expected <video> <obj_id> "<sentence>", got {line!r}', path)
        video, obj, sentence = parts
        try:
            obj_id = int(obj)
        except ValueError:
            raise RVOSError(f"line {lineno}: object id {obj!r} is not an integer", path) from None
        sentence = sentence.strip()
        if len(sentence) >= 2 and sentence[0] == sentence[-1] == '"':
            sentence = sentence[1:-1]
        sentence = " ".join(sentence.split())
        if not sentence:
            raise RVOSError(f"line {lineno}: empty sentence for {video} object {obj_id}", path)
        video = _VIDEO_NAME_FIXES.get(video, video)
        check_component(video, f"line {lineno}: video name", path)
        per_video = videos.setdefault(video, {})
        if obj_id in per_video:
            raise RVOSError(f"line {lineno}: second sentence for {video} object {obj_id}", path)
        per_video[obj_id] = sentence
    return videos


def expressions_from_text_files(folder: str | Path) -> dict[str, dict[str, dict]]:
    """The four official text files -> {video: {exp_id: {"exp": ..., "obj_id": "k"}}} with
    ReferFormer's ids 4 * (object rank) + annotator set."""
    folder = Path(folder)
    sets = [read_davis_text_annotations(folder / name) for name in DAVIS_TEXT_FILES]
    videos: dict[str, dict[str, dict]] = {}
    for video in sorted(set().union(*sets)):
        per_set = [s.get(video, {}) for s in sets]
        objects = sorted(set.intersection(*(set(p) for p in per_set)))
        partial = sorted(set().union(*per_set) - set(objects))
        if partial:
            warnings.warn(f"{folder}: {video} objects {partial} lack a sentence in some of the four "
                          f"expression sets; they are left out", stacklevel=2)
        expressions = {}
        for rank, obj_id in enumerate(objects):
            for a, sentences in enumerate(per_set):
                expressions[str(4 * rank + a)] = _expression_entry(sentences[obj_id], [obj_id])
        if expressions:
            videos[video] = expressions
    return videos


def _expression_entry(text: str, obj_ids: list[int]) -> dict:
    entry: dict = {"exp": text}
    if len(obj_ids) == 1:
        entry["obj_id"] = str(obj_ids[0])
    elif obj_ids:
        entry["obj_id"] = list(obj_ids)
    return entry


def _entry_obj_ids(entry: dict) -> list[int]:
    value = entry.get("obj_id", [])
    return [int(v) for v in (value if isinstance(value, list) else [value])]


def read_expressions(expressions: str | Path) -> dict[str, dict[str, dict]]:
    """{video: {exp_id: {"exp", "obj_id"}}} from a meta_expressions.json or a folder holding
    the four text files (directly or in ``davis_text_annotations/``)."""
    expressions = Path(expressions).expanduser()
    if expressions.is_file():
        records = parse_meta_expressions(expressions)
        return {video: {e.exp_id: _expression_entry(e.text, e.obj_ids)
                        for e in rec.expressions.values()}
                for video, rec in records.items()}
    if expressions.is_dir():
        folder = expressions
        if not (folder / DAVIS_TEXT_FILES[0]).is_file() and (folder / "davis_text_annotations").is_dir():
            folder = folder / "davis_text_annotations"
        return expressions_from_text_files(folder)
    raise RVOSError("expressions not found (give a meta_expressions.json or the folder of the "
                    "Davis17_annot*.txt files)", expressions)


def davis_base(davis_root: Path) -> Path:
    """The folder holding JPEGImages/ (the root itself, or its DAVIS/ subfolder)."""
    for base in (davis_root, davis_root / "DAVIS"):
        if (base / "JPEGImages").is_dir():
            return base
    raise RVOSError("not a DAVIS folder: no JPEGImages/ in it (nor in DAVIS/)", davis_root)


def _split_videos(base: Path, split: str, expression_videos: list[str], resolution: str,
                  videos: list[str] | None) -> list[str]:
    if videos is not None:
        chosen = [check_component(v, "video name (--videos)") for v in videos]
    else:
        imageset = base / "ImageSets" / "2017" / f"{IMAGESET_NAMES.get(split, split)}.txt"
        if imageset.is_file():
            listed = [check_component(v.strip(), "video name", imageset)
                      for v in imageset.read_text().splitlines() if v.strip()]
            chosen = [v for v in listed if v in set(expression_videos)]
            if not chosen:
                raise RVOSError("no video of this image set has expressions", imageset)
        else:
            # No image set: every video with expressions that is on disk.
            chosen = [v for v in expression_videos
                      if (base / "JPEGImages" / resolution / v).is_dir()]
            if not chosen:
                raise RVOSError(f"none of the {len(expression_videos)} videos with expressions "
                                f"has frames here", base / "JPEGImages" / resolution)
    for video in chosen:
        if video not in expression_videos:
            raise RVOSError(f"video {video!r} has no expressions", base)
        if not (base / "JPEGImages" / resolution / video).is_dir():
            raise RVOSError("frame folder not found", base / "JPEGImages" / resolution / video)
    return chosen


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False), encoding="utf-8")
    tmp.replace(path)


def _place_frame(src: Path, dst: Path, link: bool) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    if link:
        dst.symlink_to(src.resolve())
    else:
        shutil.copyfile(src, dst)


def convert_davis_to_ytvos(davis_root: str | Path, expressions: str | Path, out_root: str | Path,
                           split: str = "valid", resolution: str = "480p",
                           annotations: str = "Annotations", videos: list[str] | None = None,
                           link_frames: bool = False) -> RefYTVOSLayout:
    """Convert DAVIS-2017 frames/masks + Ref-DAVIS17 expressions to the Ref-YouTube-VOS layout.

    davis_root: folder with ``JPEGImages/<resolution>/`` (or its parent, holding ``DAVIS/``).
    expressions: a ``meta_expressions.json``, or the folder of the four ``Davis17_annot*.txt``.
    out_root: the new dataset root; ``<out_root>/<split>/...`` and
        ``<out_root>/meta_expressions/<split>/meta_expressions.json`` are written.
    videos: the sequences to convert; default: those of ``ImageSets/2017/<split>.txt`` when
        present, else every sequence with expressions found on disk.
    annotations: the mask folder under ``davis_root`` (``Annotations`` or
        ``Annotations_unsupervised``); "" converts frames only (an inference-only split).
    link_frames: symlink the JPEGs instead of copying them.

    Returns the converted split, opened with :class:`RefYTVOSLayout`.
    """
    check_component(split, "split name")
    base = davis_base(Path(davis_root).expanduser())
    out_split = Path(out_root).expanduser() / split
    all_expressions = read_expressions(expressions)
    chosen = _split_videos(base, split, sorted(all_expressions), resolution, videos)

    semantics_path = base / "davis_semantics.json"
    semantics: dict = {}
    if semantics_path.is_file():
        try:
            semantics = json.loads(semantics_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, OSError, UnicodeDecodeError) as e:
            raise RVOSError(f"cannot read ({type(e).__name__}: {e})", semantics_path) from None

    meta_expressions: dict[str, dict] = {}
    meta: dict[str, dict] = {}
    for video in chosen:
        frame_dir = base / "JPEGImages" / resolution / video
        frame_files = sorted(frame_dir.glob("*.jpg"))
        if not frame_files:
            raise RVOSError("no .jpg frames in this folder", frame_dir)
        frames = [f.stem for f in frame_files]
        for src in frame_files:
            _place_frame(src, out_split / "JPEGImages" / video / src.name, link_frames)

        referred = sorted({o for e in all_expressions[video].values() for o in _entry_obj_ids(e)})
        objects: dict[int, list[str]] = {}
        if annotations:
            mask_dir = base / annotations / resolution / video
            for src in frame_files:
                labels = read_label_png(mask_dir / f"{src.stem}.png")
                with Image.open(src) as img:
                    width, height = img.size
                if labels.shape != (height, width):
                    raise RVOSError(f"mask size {labels.shape[1]}x{labels.shape[0]} differs from the "
                                    f"frame size {width}x{height}", mask_dir / f"{src.stem}.png")
                write_label_png(out_split / "Annotations" / video / f"{src.stem}.png", labels)
                for obj_id in np.unique(labels).tolist():
                    if obj_id not in (0, 255):
                        objects.setdefault(int(obj_id), []).append(src.stem)
            absent = [o for o in referred if o not in objects]
            if absent:
                warnings.warn(f"{mask_dir}: referred object(s) {absent} never appear in the masks",
                              stacklevel=2)
        meta[video] = {"objects": {
            str(obj_id): {"category": semantics.get(video, {}).get(str(obj_id), ""),
                          "frames": objects.get(obj_id, [])}
            for obj_id in sorted(set(objects) | set(referred))}}
        meta_expressions[video] = {"expressions": all_expressions[video], "frames": frames}

    _write_json(out_split / "meta.json", {"videos": meta})
    _write_json(Path(out_root).expanduser() / "meta_expressions" / split / "meta_expressions.json",
                {"videos": meta_expressions})
    return RefYTVOSLayout(out_root, split)
