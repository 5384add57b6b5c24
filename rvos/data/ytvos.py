"""The Ref-YouTube-VOS on-disk layout, and a dataset of referring clips read from it.

The same reader serves real Ref-YouTube-VOS, our synthetic benchmark and converted
Ref-DAVIS17::

    <root>/<split>/JPEGImages/<video>/<frame>.jpg
    <root>/<split>/Annotations/<video>/<frame>.png     palette PNG of object ids (absent for
                                                       real valid/test splits)
    <root>/<split>/meta.json                           optional: objects, categories, frames
    <root>/meta_expressions/<split>/meta_expressions.json
                                                       (or <root>/<split>/meta_expressions.json)

``meta_expressions.json`` holds ``{"videos": {vid: {"frames": [...], "expressions":
{exp_id: {"exp": sentence, "obj_id": "1"}}}}}``; ``obj_id`` may be a list (the target is
the union of the objects, ``anno_id`` accepted in its place), may be absent
(inference-only splits), and an expression may carry a ``"type"``. MeViS keeps the same
file but its masks in ``mask_dict.json`` keyed by ``anno_id`` (:mod:`rvos.data.mevis`
reads it with ``parse_meta_expressions(path, anno_ids=True)``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from rvos.data.batch import ClipMeta, ClipSample, masks_to_boxes_cxcywh
from rvos.data.palette import read_label_png
from rvos.data.transforms import ClipTransform
from rvos.errors import RVOSError
from rvos.paths import check_component, file_problem, safe_join


@dataclass
class ExpressionRecord:
    """One referring expression of a video; ``obj_ids`` is empty on inference-only splits.

    ``anno_ids`` (MeViS only): the keys in ``mask_dict.json`` of the referred objects' masks,
    as strings; None where the file lists none (inference-only splits), [] for an
    expression that refers to no object."""

    exp_id: str
    text: str
    obj_ids: list[int]
    exp_type: str = ""
    anno_ids: list[str] | None = field(default=None)


@dataclass
class VideoRecord:
    video: str
    frames: list[str]                           # frame stems in temporal order
    expressions: dict[str, ExpressionRecord]    # by exp_id


def _sort_key(exp_id: str) -> tuple[int, int | str]:
    return (0, int(exp_id)) if exp_id.isdigit() else (1, exp_id)


def _parse_obj_ids(value: Any, where: str, path: Path) -> list[int]:
    items = value if isinstance(value, list) else [value]
    ids = []
    for item in items:
        try:
            if isinstance(item, bool) or isinstance(item, float):
                raise ValueError
            obj = int(item)
        except (TypeError, ValueError):
            raise RVOSError(f"{where}: obj_id must be an integer or a list of integers, "
                            f"got {value!r}", path) from None
        if not 0 < obj < 256:
            raise RVOSError(f"{where}: obj_id {obj} is outside 1..255", path)
        ids.append(obj)
    return ids


def _parse_anno_ids(value: Any, where: str, path: Path) -> list[str]:
    """MeViS ``anno_id``: a list of non-negative integers (or their decimal strings), the
    keys of ``mask_dict.json``; returned as those keys (decimal strings)."""
    items = value if isinstance(value, list) else [value]
    ids = []
    for item in items:
        text = str(item) if isinstance(item, int) and not isinstance(item, bool) else item
        if not isinstance(text, str) or not text.isdigit():
            raise RVOSError(f"{where}: anno_id must be a list of non-negative integers, "
                            f"got {value!r}", path)
        ids.append(str(int(text)))
    return ids


def _read_videos_json(path: Path) -> dict:
    """The JSON object of ``path``, which must hold a "videos" mapping (RVOSError naming the
    file otherwise)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise RVOSError(f"invalid JSON ({e})", path) from None
    except (OSError, UnicodeDecodeError) as e:
        raise RVOSError(f"cannot read ({type(e).__name__}: {e})", path) from None
    if not isinstance(data, dict) or not isinstance(data.get("videos"), dict):
        raise RVOSError('expected an object with a "videos" mapping at the top level', path)
    return data


def parse_meta_expressions(path: str | Path, anno_ids: bool = False) -> dict[str, VideoRecord]:
    """Read and validate a meta_expressions.json; videos sorted by name, expressions by id.
    Sentences have their whitespace runs collapsed to single spaces.

    With ``anno_ids`` (MeViS), each expression's ``"anno_id"`` list is kept in
    :attr:`ExpressionRecord.anno_ids` and ``obj_id`` is not read: MeViS numbers its objects
    from 0 within a video and has no label maps they would index."""
    path = Path(path)
    data = _read_videos_json(path)
    videos: dict[str, VideoRecord] = {}
    for video in sorted(data["videos"]):
        check_component(video, "video id", path)
        entry = data["videos"][video]
        if not isinstance(entry, dict):
            raise RVOSError(f"video {video!r}: expected an object", path)
        for key in ("frames", "expressions"):
            if key not in entry:
                raise RVOSError(f'video {video!r}: missing key "{key}"', path)
        frames = entry["frames"]
        if (not isinstance(frames, list) or not frames
                or not all(isinstance(f, str) and f for f in frames)):
            raise RVOSError(f'video {video!r}: "frames" must be a non-empty list of frame names', path)
        for frame in frames:
            check_component(frame, f"video {video!r}: frame name", path)
        if not isinstance(entry["expressions"], dict):
            raise RVOSError(f'video {video!r}: "expressions" must be a mapping', path)
        expressions: dict[str, ExpressionRecord] = {}
        for exp_id in sorted(entry["expressions"], key=_sort_key):
            exp = entry["expressions"][exp_id]
            where = f"video {video!r} expression {exp_id!r}"
            check_component(exp_id, f"video {video!r}: expression id", path)
            if not isinstance(exp, dict):
                raise RVOSError(f"{where}: expected an object", path)
            if "exp" not in exp:
                raise RVOSError(f'{where}: missing key "exp"', path)
            text = exp["exp"]
            if not isinstance(text, str) or not text.strip():
                raise RVOSError(f"{where}: empty sentence", path)
            if anno_ids:
                obj_ids = []
                annos = (None if exp.get("anno_id") is None
                         else _parse_anno_ids(exp["anno_id"], where, path))
            else:
                raw_ids = exp.get("obj_id", exp.get("anno_id"))
                obj_ids = [] if raw_ids is None else _parse_obj_ids(raw_ids, where, path)
                annos = None
            expressions[exp_id] = ExpressionRecord(exp_id=exp_id, text=" ".join(text.split()),
                                                   obj_ids=obj_ids, exp_type=str(exp.get("type", "")),
                                                   anno_ids=annos)
        videos[video] = VideoRecord(video=video, frames=list(frames), expressions=expressions)
    return videos


def parse_objects_json(path: str | Path) -> dict[str, dict[int, dict]]:
    """Read a meta.json of objects: ``{"videos": {vid: {"objects": {obj_id: {"category": ...,
    "frames": [...]}}}}}`` -> {video: {obj_id: object entry}}; entries that are not objects
    are skipped."""
    path = Path(path)
    data = _read_videos_json(path)
    objects: dict[str, dict[int, dict]] = {}
    for video, entry in data["videos"].items():
        objs = entry.get("objects", {}) if isinstance(entry, dict) else None
        if not isinstance(objs, dict):
            raise RVOSError(f'video {video!r}: "objects" must be a mapping', path)
        try:
            objects[video] = {int(k): v for k, v in objs.items() if isinstance(v, dict)}
        except ValueError:
            raise RVOSError(f"video {video!r}: object ids must be integers", path) from None
    return objects


class RefYTVOSLayout:
    """Reader of one split of a dataset in the Ref-YouTube-VOS layout.

    Parses and validates the expressions on construction; frames and masks are read on
    demand. Every problem with the files is an :class:`RVOSError` naming the file.
    """

    def __init__(self, root: str | Path, split: str):
        self.root = Path(root).expanduser()
        self.split = check_component(split, "split name")
        self.split_dir = self.root / split
        candidates = [self.root / "meta_expressions" / split / "meta_expressions.json",
                      self.split_dir / "meta_expressions.json"]
        self.meta_expressions_path = next((p for p in candidates if p.is_file()), None)
        if self.meta_expressions_path is None:
            raise RVOSError(f"meta_expressions.json not found for split {split!r} "
                            f"(also looked for {candidates[1]})", candidates[0])
        self.videos: dict[str, VideoRecord] = parse_meta_expressions(self.meta_expressions_path)
        meta_json = self.split_dir / "meta.json"
        # the file the objects (and their categories) came from; None when there is none
        self.objects_path: Path | None = meta_json if meta_json.is_file() else None
        self.objects = self._read_meta_json()

    def _read_meta_json(self) -> dict[str, dict[int, dict]]:
        """meta.json, when present: {video: {obj_id: {"category": ..., "frames": [...]}}}."""
        if self.objects_path is None:
            return {}
        return parse_objects_json(self.objects_path)

    def __repr__(self) -> str:
        n_exp = sum(len(v.expressions) for v in self.videos.values())
        return (f"RefYTVOSLayout(root={str(self.root)!r}, split={self.split!r}, "
                f"videos={len(self.videos)}, expressions={n_exp})")

    @property
    def has_annotations(self) -> bool:
        """Whether the split has ground-truth masks (real valid/test splits have none)."""
        return (self.split_dir / "Annotations").is_dir()

    def frame_path(self, video: str, frame: str) -> Path:
        return safe_join(self.split_dir / "JPEGImages", video, f"{frame}.jpg",
                         what="video id or frame name", source=self.meta_expressions_path)

    def mask_path(self, video: str, frame: str) -> Path:
        return safe_join(self.split_dir / "Annotations", video, f"{frame}.png",
                         what="video id or frame name", source=self.meta_expressions_path)

    def samples(self) -> list[tuple[str, str]]:
        """Every (video, exp_id) pair, videos sorted by name, expressions by id."""
        return [(v, e) for v, rec in self.videos.items() for e in rec.expressions]

    def load_frames(self, video: str, frames: list[str]) -> np.ndarray:
        """RGB frames (T, H, W, 3) uint8; all frames must share one size."""
        return read_rgb_frames([self.frame_path(video, frame) for frame in frames])

    def load_label_maps(self, video: str, frames: list[str],
                        frame_size: tuple[int, int] | None = None) -> np.ndarray:
        """Object-id label maps (T, H, W) uint8. With ``frame_size`` (H, W), each mask must
        have that size (the size of the frames it annotates)."""
        out = []
        for frame in frames:
            path = self.mask_path(video, frame)
            arr = read_label_png(path)
            expected = frame_size if frame_size is not None else (out[0].shape if out else None)
            if expected is not None and arr.shape != tuple(expected):
                raise RVOSError(f"mask size {arr.shape[1]}x{arr.shape[0]} differs from the "
                                f"frame size {expected[1]}x{expected[0]}", path)
            out.append(arr)
        if not out:
            raise ValueError("load_label_maps needs at least one frame name")
        return np.stack(out)

    def load_clip(self, video: str, frames: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
        """Frames (T, H, W, 3) uint8 and label maps (T, H, W) uint8 checked against each
        other, or None for the label maps when the split has no annotations."""
        images = self.load_frames(video, frames)
        if not self.has_annotations:
            return images, None
        labels = self.load_label_maps(video, frames, frame_size=images.shape[1:3])
        return images, labels

    @staticmethod
    def referred_mask(label_maps: np.ndarray, obj_ids: list[int]) -> np.ndarray:
        """(T, H, W) bool: pixels of any of ``obj_ids`` (the union, for multi-object
        expressions)."""
        if not obj_ids:
            return np.zeros(label_maps.shape, dtype=bool)
        return np.isin(label_maps, np.asarray(obj_ids, dtype=label_maps.dtype))

    def object_frames(self, video: str, obj_id: int) -> list[str] | None:
        """Frames where meta.json says the object appears, or None when it does not say."""
        obj = self.objects.get(video, {}).get(obj_id)
        frames = obj.get("frames") if obj else None
        return list(frames) if isinstance(frames, list) else None

    def verify(self, check_masks: bool = True, videos: Iterable[str] | None = None) -> None:
        """Check up front that every listed frame (and mask, when the split has annotations)
        of ``videos`` (default: all) is a non-empty file, so that a damaged dataset fails
        before training starts rather than when the sample is drawn. Only ``stat`` is used
        (fast on large splits; decoding errors still surface, naming the file, when read).
        Raises :class:`RVOSError` naming the first bad file and how many there are."""
        check_masks = check_masks and self.has_annotations
        names = list(self.videos) if videos is None else list(dict.fromkeys(videos))
        paths = []
        for video in names:
            for frame in self.videos[video].frames:
                paths.append(self.frame_path(video, frame))
                if check_masks:
                    paths.append(self.mask_path(video, frame))
        check_files(paths, self.meta_expressions_path)


def read_rgb_frames(paths: list[Path]) -> np.ndarray:
    """RGB frames (T, H, W, 3) uint8 read from ``paths``; all must share one size (an
    RVOSError names the first missing, unreadable or odd-sized file)."""
    out = []
    for path in paths:
        if not path.is_file():
            raise RVOSError("frame not found", path)
        try:
            with Image.open(path) as img:
                arr = np.asarray(img.convert("RGB"))
        except Exception as e:
            raise RVOSError(f"cannot read frame ({type(e).__name__}: {e})", path) from None
        if out and arr.shape != out[0].shape:
            raise RVOSError(f"frame size {arr.shape[1]}x{arr.shape[0]} differs from "
                            f"{out[0].shape[1]}x{out[0].shape[0]} of the video's other frames", path)
        out.append(arr)
    if not out:
        raise ValueError("read_rgb_frames needs at least one path")
    return np.stack(out)


def check_files(paths: Iterable[Path], listed_in: Path) -> None:
    """Each of ``paths`` must be a non-empty file (``stat`` only, no decoding); otherwise an
    RVOSError names the first bad one and how many of the files ``listed_in`` names are bad."""
    bad: list[tuple[Path, str]] = []
    for path in paths:
        problem = file_problem(path)
        if problem:
            bad.append((path, problem))
    if bad:
        path, problem = bad[0]
        raise RVOSError(f"{problem}; {len(bad)} of the files listed in {listed_in} are "
                        "missing or empty", path)


# --------------------------------------------------------------------------- clips

def sample_clip_indices(num_video_frames: int, num_frames: int, max_stride: int,
                        rng: np.random.Generator, anchor: int | None = None) -> list[int]:
    """Indices of a training clip: ``num_frames`` frames taken every k-th frame, k drawn in
    [1, max_stride] (lowered so the clip fits), from a random start. A video shorter than
    the clip gives its frames spread over the clip, repeated in order. With ``anchor``, the
    clip contains that frame."""
    n, t = num_video_frames, num_frames
    stride = int(rng.integers(1, max(1, max_stride) + 1))
    if t > 1:
        stride = max(1, min(stride, (n - 1) // (t - 1)))
    span = (t - 1) * stride + 1
    if span > n:  # shorter than the clip even at stride 1
        return np.linspace(0, n - 1, t).round().astype(int).tolist()
    if anchor is None:
        start = int(rng.integers(0, n - span + 1))
        return [start + i * stride for i in range(t)]
    # Put the anchor at a random clip position p that keeps the clip inside the video.
    p_lo = max(0, -((n - span - anchor) // stride))   # ceil((anchor - (n - span)) / stride)
    p_hi = min(t - 1, anchor // stride)
    if p_lo <= p_hi:
        start = anchor - int(rng.integers(p_lo, p_hi + 1)) * stride
        return [start + i * stride for i in range(t)]
    # No regular clip holds the anchor: snap the nearest frame of one onto it (order kept).
    start = int(rng.integers(max(0, anchor - span + 1), min(n - span, anchor) + 1))
    indices = [start + i * stride for i in range(t)]
    nearest = min(range(t), key=lambda i: abs(indices[i] - anchor))
    indices[nearest] = anchor
    return indices


def evenly_spaced_indices(num_video_frames: int, num_frames: int) -> list[int]:
    """``num_frames`` indices spread over the whole video (all frames when num_frames <= 0)."""
    if num_frames <= 0:
        return list(range(num_video_frames))
    return np.linspace(0, num_video_frames - 1, num_frames).round().astype(int).tolist()


class ReferringClipDataset(Dataset):
    """One item per (video, expression) of a layout: a clip and the referred object's mask.

    Training clips are ``num_frames`` frames at a random start and stride in
    [1, max_frame_stride], preferring clips where the referred object is visible in at least
    one frame; evaluation clips are ``num_frames`` frames spread evenly over the video (the
    whole video when ``num_frames`` is 0) without augmentation.

    Randomness is drawn from a generator seeded by (seed, epoch, index), so a clip depends
    only on those: a resumed run sees the same clips as an uninterrupted one whatever the
    number of DataLoader workers. Call :meth:`set_epoch` at the start of every epoch.
    """

    def __init__(self, layout: RefYTVOSLayout, num_frames: int, input_size: tuple[int, int],
                 train: bool = True, max_frame_stride: int = 1, hflip_prob: float = 0.0,
                 scale_jitter: float = 0.0, color_jitter: float = 0.0, max_samples: int = 0,
                 seed: int = 0):
        if num_frames < (1 if train else 0):
            raise ValueError(f"num_frames must be >= 1 for training (0 = whole video only for "
                             f"evaluation), got {num_frames}")
        if max_frame_stride < 1:
            raise ValueError(f"max_frame_stride must be >= 1, got {max_frame_stride}")
        self.layout = layout
        self.num_frames = num_frames
        self.train = train
        self.max_frame_stride = max_frame_stride
        self.seed = seed
        self.epoch = 0
        self.transform = ClipTransform(input_size, train=train, hflip_prob=hflip_prob,
                                       scale_jitter=scale_jitter, color_jitter=color_jitter)
        items = self.candidate_items()
        if max_samples and max_samples < len(items):
            # Spread over the list, so a capped set still spans many videos.
            keep = np.linspace(0, len(items) - 1, max_samples).round().astype(int)
            items = [items[i] for i in keep]
        self.items: list[tuple[str, str]] = items
        # video -> per-frame set of object ids present; tiny, filled on first use.
        self._ids_per_frame: dict[str, list[frozenset[int]]] = {}

    @classmethod
    def from_config(cls, data_cfg, split: str, train: bool, seed: int = 0) -> "ReferringClipDataset":
        """Build from an :class:`rvos.config.DataConfig` (augmentations only when training)."""
        layout = RefYTVOSLayout(data_cfg.root, split)
        return cls(layout, num_frames=data_cfg.num_frames, input_size=tuple(data_cfg.input_size),
                   train=train, max_frame_stride=data_cfg.max_frame_stride if train else 1,
                   hflip_prob=data_cfg.hflip_prob if train else 0.0,
                   scale_jitter=data_cfg.scale_jitter if train else 0.0,
                   color_jitter=data_cfg.color_jitter if train else 0.0,
                   max_samples=data_cfg.max_train_samples if train else data_cfg.max_val_samples,
                   seed=seed)

    def candidate_items(self) -> list[tuple[str, str]]:
        """The (video, exp_id) pairs the dataset draws from (before ``max_samples``): every
        expression of the layout; readers whose official recipe leaves some out override it."""
        return self.layout.samples()

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's clips. Call before building the epoch's DataLoader iterator:
        persistent workers keep the copy of the dataset they started with."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.items)

    def rng_for(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index])

    def visible_frame_indices(self, video: str, obj_ids: list[int]) -> list[int]:
        """Indices (into the video's frame list) where any of ``obj_ids`` is visible, from
        meta.json when it lists the objects' frames, else from the label maps."""
        rec = self.layout.videos[video]
        listed = [self.layout.object_frames(video, o) for o in obj_ids]
        if all(f is not None for f in listed):
            names = set().union(*listed)
            return [i for i, f in enumerate(rec.frames) if f in names]
        if video not in self._ids_per_frame:
            per_frame = []
            for frame in rec.frames:
                # through the layout, so readers that remap ids (binarised masks) are honoured
                labels = self.layout.load_label_maps(video, [frame])[0]
                per_frame.append(frozenset(int(v) for v in np.unique(labels)) - {0})
            self._ids_per_frame[video] = per_frame
        wanted = set(obj_ids)
        return [i for i, ids in enumerate(self._ids_per_frame[video]) if ids & wanted]

    def clip_indices(self, index: int, rng: np.random.Generator) -> list[int]:
        video, exp_id = self.items[index]
        rec = self.layout.videos[video]
        n = len(rec.frames)
        if not self.train:
            return evenly_spaced_indices(n, self.num_frames)
        obj_ids = rec.expressions[exp_id].obj_ids
        anchor = None
        if obj_ids and self.layout.has_annotations:
            visible = self.visible_frame_indices(video, obj_ids)
            if visible:
                anchor = int(visible[rng.integers(len(visible))])
        return sample_clip_indices(n, self.num_frames, self.max_frame_stride, rng, anchor)

    def load_referred_clip(self, video: str, exp: ExpressionRecord,
                           indices: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Frames (T, H, W, 3) uint8 at ``indices`` of the video's frame list and the referred
        object(s)' mask (T, H, W) bool (all False where the split has no annotations)."""
        frame_names = [self.layout.videos[video].frames[i] for i in indices]
        images, labels = self.layout.load_clip(video, frame_names)
        if labels is None:
            return images, np.zeros(images.shape[:3], dtype=bool)
        return images, self.layout.referred_mask(labels, exp.obj_ids)

    def referent_ids(self, exp: ExpressionRecord) -> list[int]:
        """:attr:`ClipMeta.obj_ids` of a sample: ids that tell which sentences share a referent."""
        return list(exp.obj_ids)

    def __getitem__(self, index: int) -> ClipSample:
        video, exp_id = self.items[index]
        rec = self.layout.videos[video]
        exp = rec.expressions[exp_id]
        rng = self.rng_for(index)
        indices = self.clip_indices(index, rng)
        frame_names = [rec.frames[i] for i in indices]

        images, referred = self.load_referred_clip(video, exp, indices)
        frames, masks, text, flipped = self.transform(images, referred, exp.text, rng)
        boxes, valid = masks_to_boxes_cxcywh(masks)
        meta = ClipMeta(video=video, exp_id=exp_id, frame_names=frame_names,
                        orig_size=(int(images.shape[1]), int(images.shape[2])),
                        obj_ids=self.referent_ids(exp), exp_type=exp.exp_type, flipped=flipped)
        return ClipSample(frames=frames, masks=masks, valid=valid, boxes=boxes.float(),
                          text=text, meta=meta)
