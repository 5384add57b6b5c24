"""Writing the benchmark to disk in the Ref-YouTube-VOS layout."""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from rvos.data.palette import write_label_png
from rvos.data.synthetic.config import (COLORS, EXPRESSION_TYPES, GENERATOR_VERSION, SHAPES,
                                        SIZES, SynthConfig, heldout_color_shape_pairs)
from rvos.data.synthetic.language import query_kind
from rvos.data.synthetic.video import VideoData, generate_video
from rvos.errors import RVOSError

INFO_FILE = "synth_info.json"


def _write_json(path: Path, data, indent: int | None = 4) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=indent)   # no trailing newline, as the official files


def _write_video(root: Path, split: str, video_id: str, video: VideoData, quality: int) -> None:
    images = root / split / "JPEGImages" / video_id
    images.mkdir(parents=True, exist_ok=True)
    for name, rgb, labels in zip(video.scene["frames"], video.frames, video.labels):
        Image.fromarray(rgb, mode="RGB").save(images / f"{name}.jpg", format="JPEG", quality=quality)
        write_label_png(root / split / "Annotations" / video_id / f"{name}.png", labels)


def _generate_split(root: Path, split: str, count: int, first_index: int, cfg: SynthConfig,
                    heldout: list[tuple[str, str]], progress: bool) -> dict:
    usage: Counter = Counter()      # expressions per query kind ("motion/left", ...)
    meta, meta_exp, scenes = {}, {}, {}
    num_objects = 0
    for index in tqdm(range(count), desc=f"synth {split}", disable=not progress, unit="video"):
        video = generate_video(cfg, split, index, heldout, usage)
        video_id = f"synth_{first_index + index:06d}"
        _write_video(root, split, video_id, video, cfg.jpeg_quality)
        frames = video.scene["frames"]
        meta[video_id] = {"objects": {
            obj_id: {"category": obj["shape"],
                     "frames": [f for f, area in zip(frames, obj["visible_area"]) if area > 0]}
            for obj_id, obj in video.scene["objects"].items()}}
        meta_exp[video_id] = {
            "expressions": {k: {"exp": e["exp"], "obj_id": e["obj_id"], "type": e["type"]}
                            for k, e in video.scene["expressions"].items()},
            "frames": frames}
        scenes[video_id] = video.scene
        num_objects += len(video.scene["objects"])
        usage.update(query_kind(e.query) for e in video.expressions)
    _write_json(root / split / "meta.json", {"videos": meta})
    _write_json(root / "meta_expressions" / split / "meta_expressions.json", {"videos": meta_exp})
    _write_json(root / split / "scenes.json", {"videos": scenes}, indent=1)
    per_type = {k: sum(n for kind, n in usage.items() if kind.split("/")[0] == k)
                for k in EXPRESSION_TYPES}
    return {"videos": count, "objects": num_objects, "expressions": sum(usage.values()),
            "expressions_per_type": per_type, "expressions_per_kind": dict(sorted(usage.items()))}


def _holds_files(path: Path) -> bool:
    return path.exists() and (not path.is_dir() or any(path.iterdir()))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def generate_benchmark(out_dir: str | Path, cfg: SynthConfig | None = None, progress: bool = True,
                       overwrite: bool = False) -> dict:
    """Generate the synthetic referring-video benchmark into ``out_dir``; returns the
    ``synth_info.json`` content.

    Layout (as Ref-YouTube-VOS, plus the scene descriptions)::

        <out>/<split>/JPEGImages/<video>/<frame>.jpg
        <out>/<split>/Annotations/<video>/<frame>.png     palette PNG of object ids
        <out>/<split>/meta.json
        <out>/<split>/scenes.json                         objects, motion, per-frame measures
        <out>/meta_expressions/<split>/meta_expressions.json
        <out>/synth_info.json

    for split in train, valid, test, test_compositional. Everything is written into
    ``<out>.partial`` and renamed at the end, so an interrupted run never looks complete.
    A non-empty ``out_dir`` is refused unless ``overwrite`` (then replaced at the end).
    """
    cfg = cfg or SynthConfig()
    cfg.validate()
    out = Path(out_dir).resolve()      # "." has no name to put ".partial" after
    if _holds_files(out) and not overwrite:
        what = ("already holds a synthetic benchmark" if (out / INFO_FILE).is_file()
                else "already exists and is not empty")
        raise RVOSError(f"{what}; pass overwrite=True to replace it", out)
    partial = out.with_name(out.name + ".partial")
    _remove(partial)               # the leftovers of an interrupted run
    partial.mkdir(parents=True)

    heldout = heldout_color_shape_pairs(cfg.seed, cfg.heldout_pairs)
    splits = {}
    first_index = 0
    for split, count in cfg.videos_per_split().items():
        splits[split] = _generate_split(partial, split, count, first_index, cfg, heldout, progress)
        first_index += count
    info = {
        "generator": "rvos.data.synthetic",
        "version": GENERATOR_VERSION,
        "seed": cfg.seed,
        "config": asdict(cfg),
        "vocabulary": {"shapes": list(SHAPES), "colors": list(COLORS), "sizes": list(SIZES)},
        "heldout_color_shape_pairs": [list(p) for p in heldout],
        "splits": splits,
    }
    _write_json(partial / INFO_FILE, info)     # last: its presence marks a complete benchmark

    if out.exists() or out.is_symlink():
        old = out.with_name(out.name + ".old")
        _remove(old)
        os.replace(out, old)
        os.replace(partial, out)
        _remove(old)
    else:
        os.replace(partial, out)
    return info

