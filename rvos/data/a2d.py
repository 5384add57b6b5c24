"""A2D-Sentences in its official layout, and its training clips.

A2D-Sentences (Gavrilyuk et al., CVPR 2018) adds a sentence per actor instance to the
videos of A2D (Xu et al., CVPR 2015). As downloaded and unpacked::

    <root>/Release/videoset.csv          one row per video, no header row, 9 columns: video
                                         id, label, start time, end time, height, width,
                                         frame count, annotated frame count, subset
                                         (0 = train, 1 = test)
    <root>/Release/clips320H/<video>.mp4 the videos, 320 pixels high (``CLIPS320`` in some
                                         guides; either name is found)
    <root>/text_annotations/a2d_annotation.txt
                                         CSV with the header ``video_id,instance_id,query``,
                                         one sentence per (video, instance)
    <root>/text_annotations/a2d_missed_videos.txt
                                         video ids (one a line) left out of the benchmark
    <root>/text_annotations/a2d_annotation_with_instances/<video>/<frame>.h5
                                         the annotated frames, named by their 1-based frame
                                         number on 5 digits (``00012.h5`` = the 12th frame)

An ``.h5`` file holds ``instance`` (N,), the ids of the instances annotated in that frame,
``reMask`` their masks stored transposed, (N, W, H), or (W, H) when N = 1, and ``reBBox``
(4, N) boxes (not read here).

The samples are those of MTTR (``datasets/a2d_sentences/a2d_sentences_dataset.py``, which
ReferFormer's ``datasets/a2d.py`` reads from the same JSON, and
``create_gt_in_coco_format.py`` for the test ground truth): for every sentence of a video of
the split that is not a missed video, in the order of ``a2d_annotation.txt``, one sample per
``.h5`` file of the video (in file-name order) whose ``instance`` holds the sentence's
instance id. Sentences are lower-cased with their whitespace runs collapsed. A row whose
instance id is not an integer is skipped, as MTTR skips the one such row of the release
(``1 (copy)`` in video T6bNPuKV-wY).

A training clip is MTTR's window of ``num_frames`` frames with the annotated frame at
position ``num_frames // 2``, indices past the video's ends replaced by its first or last
frame. Only the annotated frame has ground truth: the clip's ``labelled`` flags say so, and
the losses take no supervision from the other frames.
"""

from __future__ import annotations

import csv
import functools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from rvos.config import Config
from rvos.data.batch import ClipMeta, ClipSample, masks_to_boxes_cxcywh
from rvos.data.transforms import ClipTransform
from rvos.data.video_io import iter_video_frames
from rvos.errors import RVOSError
from rvos.paths import check_component, file_problem, safe_join

SPLITS = {"train": 0, "test": 1}          # videoset.csv's subset column
VIDEO_FOLDERS = ("clips320H", "CLIPS320")
VIDEOSET_COLUMNS = 9
TEXT_COLUMNS = ("video_id", "instance_id", "query")


@dataclass(frozen=True)
class A2DSample:
    """One (sentence, annotated frame) pair."""

    video: str
    instance_id: int
    frame: int          # 1-based frame number, as in the .h5 file name
    text: str           # lower-cased, whitespace collapsed

    @property
    def frame_index(self) -> int:
        """0-based index of the annotated frame among the decoded frames of the video."""
        return self.frame - 1

    @property
    def image_id(self) -> str:
        """The sample's id in the COCO ground truth, as MTTR's ``get_image_id`` names it."""
        return f"v_{self.video}_f_{self.frame}_i_{self.instance_id}"


@dataclass
class Clip:
    """Frames (T, H, W, 3) uint8 RGB and their 0-based indices in the video (T,)."""

    indices: list[int]
    frames: np.ndarray


def clean_sentence(text: str) -> str:
    """Lower-cased, whitespace runs collapsed to single spaces (MTTR's clean-up)."""
    return " ".join(text.lower().split())


def window_indices(center: int, length: int, num_frames: int) -> list[int]:
    """MTTR's clip around frame ``center`` (0-based): ``length`` consecutive indices with
    ``center`` at position ``length // 2``, clamped to [0, num_frames - 1] (the first or
    last frame repeated at the video's ends)."""
    start = center - length // 2
    return [min(max(i, 0), num_frames - 1) for i in range(start, start + length)]


def read_video_clips(path: Path, centers: list[int], length: int) -> dict[int, Clip]:
    """The clips :func:`window_indices` gives around each of ``centers`` (0-based frame
    indices) of the video file ``path``, decoded in one pass that stops after the last frame
    any clip needs; only the frames the clips hold are kept.

    RVOSError naming the file when the video ends before one of ``centers`` (a video shorter
    than its annotations) or cannot be decoded."""
    if not centers:
        return {}
    lo = max(0, min(centers) - length // 2)
    hi = max(centers) - length // 2 + length            # one past the last index wanted
    wanted = {i for c in centers for i in range(c - length // 2, c - length // 2 + length)}
    kept: dict[int, np.ndarray] = {}
    count = 0                       # frames in the video, as far as decoded
    for name, frame in iter_video_frames(path, start=lo, stop=hi):
        count = int(name) + 1
        if count - 1 in wanted:
            kept[count - 1] = frame
    if max(centers) >= count:
        raise RVOSError(f"the video has fewer than {max(centers) + 1} frames, but its frame "
                        f"{max(centers) + 1} is annotated (a truncated or wrong video?)", path)
    # A clamped index is 0 or count - 1, both inside the window that needed it, so kept.
    return {c: Clip(window_indices(c, length, count),
                    np.stack([kept[i] for i in window_indices(c, length, count)]))
            for c in centers}


# ---------------------------------------------------------------------- the .h5 annotations


@contextmanager
def open_h5(path: Path) -> Iterator[h5py.File]:
    """``path`` opened read-only; RVOSError naming it when missing or not an HDF5 file."""
    if not path.is_file():
        raise RVOSError("annotation file not found", path)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise RVOSError(f"cannot read as HDF5 ({e})", path) from None
    with f:
        yield f


def _dataset(f: h5py.File, key: str, path: Path) -> np.ndarray:
    if key not in f or not isinstance(f[key], h5py.Dataset):
        raise RVOSError(f"no {key!r} dataset (an A2D-Sentences annotation has 'instance' and "
                        "'reMask')", path)
    try:
        return np.asarray(f[key])
    except (OSError, ValueError, TypeError) as e:
        raise RVOSError(f"cannot read {key!r} ({e})", path) from None


def read_instance_ids(path: Path) -> list[int]:
    """The instance ids of one annotated frame (its ``instance`` dataset), in file order."""
    with open_h5(path) as f:
        return _instance_ids(_dataset(f, "instance", path), path)


def _instance_ids(values: np.ndarray, path: Path) -> list[int]:
    flat = values.ravel()
    if flat.size == 0 or not np.issubdtype(flat.dtype, np.number):
        raise RVOSError(f"'instance' must hold the frame's instance ids, got {values.dtype} "
                        f"{values.shape}", path)
    ids = flat.astype(np.int64)
    if not np.array_equal(ids, flat):
        raise RVOSError(f"'instance' holds non-integer ids {flat.tolist()}", path)
    return ids.tolist()


def read_instance_mask(path: Path, instance_id: int) -> np.ndarray:
    """(H, W) bool: the mask of ``instance_id`` in one annotated frame.

    ``reMask`` is stored transposed, (N, W, H), and as (W, H) when the frame has one
    instance; the mask is that of the first entry of ``instance`` equal to the id (MTTR's
    ``instances.index``), transposed back."""
    with open_h5(path) as f:
        ids = _instance_ids(_dataset(f, "instance", path), path)
        masks = _dataset(f, "reMask", path)
    if instance_id not in ids:
        raise RVOSError(f"instance {instance_id} is not annotated in this frame "
                        f"(instances {ids})", path)
    if masks.ndim == 2 and len(ids) == 1:
        masks = masks[None]
    if masks.ndim != 3 or masks.shape[0] != len(ids) or min(masks.shape) == 0:
        raise RVOSError(f"'reMask' has shape {masks.shape}, expected (N, W, H) with N = "
                        f"{len(ids)} instances", path)
    return masks[ids.index(instance_id)].T > 0


# ---------------------------------------------------------------------------- the layout


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise RVOSError(f"cannot read ({type(e).__name__}: {e})", path) from None


def parse_videoset(path: Path) -> dict[str, int]:
    """videoset.csv -> {video id: subset (0 train, 1 test)}, in file order."""
    subsets: dict[str, int] = {}
    for number, row in enumerate(csv.reader(_read_lines(path)), 1):
        if not row:
            continue
        if len(row) != VIDEOSET_COLUMNS:
            raise RVOSError(f"line {number}: {len(row)} columns, expected {VIDEOSET_COLUMNS} "
                            "(video id, label, start, end, height, width, frames, annotated "
                            "frames, subset)", path)
        video = check_component(row[0].strip(), f"line {number}: video id", path)
        try:
            subset = int(row[-1])
        except ValueError:
            subset = -1
        if subset not in SPLITS.values():
            raise RVOSError(f"line {number}: subset must be 0 (train) or 1 (test), got "
                            f"{row[-1]!r}", path)
        subsets[video] = subset
    if not subsets:
        raise RVOSError("no videos listed", path)
    return subsets


def parse_text_annotations(path: Path) -> list[tuple[str, str, str]]:
    """a2d_annotation.txt -> [(video id, instance id as written, sentence)], in file order."""
    reader = csv.DictReader(_read_lines(path))
    if reader.fieldnames is None or [f.strip() for f in reader.fieldnames] != list(TEXT_COLUMNS):
        raise RVOSError(f"expected the header {','.join(TEXT_COLUMNS)}, got "
                        f"{','.join(reader.fieldnames or [])!r}", path)
    rows = []
    for number, row in enumerate(reader, 2):
        values = [row.get(k) for k in reader.fieldnames]
        if any(v is None for v in values) or None in row:
            raise RVOSError(f"line {number}: expected 3 columns ({','.join(TEXT_COLUMNS)})", path)
        video, instance, query = (v.strip() for v in values)
        check_component(video, f"line {number}: video id", path)
        if not query:
            raise RVOSError(f"line {number}: empty sentence", path)
        rows.append((video, instance, query))
    return rows


class A2DLayout:
    """Reader of an A2D-Sentences root (see the module doc). The CSV and text files are read
    on construction; annotations and videos on demand. Every problem with a file is an
    :class:`RVOSError` naming it."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()
        self.videoset_path = self.root / "Release" / "videoset.csv"
        text = self.root / "text_annotations"
        self.sentences_path = text / "a2d_annotation.txt"
        self.missed_path = text / "a2d_missed_videos.txt"
        self.masks_dir = text / "a2d_annotation_with_instances"
        for path in (self.videoset_path, self.sentences_path, self.missed_path):
            if not path.is_file():
                raise RVOSError("not found (is --data / data.root the A2D-Sentences root?)", path)
        if not self.masks_dir.is_dir():
            raise RVOSError("folder not found (unzip a2d_annotation_with_instances.zip here)",
                            self.masks_dir)
        self.subsets = parse_videoset(self.videoset_path)
        self.missed = {v.strip() for v in _read_lines(self.missed_path) if v.strip()}
        self.sentences = parse_text_annotations(self.sentences_path)
        self.videos_dir = next((self.root / "Release" / name for name in VIDEO_FOLDERS
                                if (self.root / "Release" / name).is_dir()),
                               self.root / "Release" / VIDEO_FOLDERS[0])
        self._instances: dict[str, dict[int, list[int]]] = {}   # video -> frame -> ids

    def __repr__(self) -> str:
        return f"A2DLayout(root={str(self.root)!r}, sentences={len(self.sentences)})"

    # paths
    def video_path(self, video: str) -> Path:
        return safe_join(self.videos_dir, f"{video}.mp4", what="video id",
                         source=self.sentences_path)

    def annotation_dir(self, video: str) -> Path:
        return safe_join(self.masks_dir, video, what="video id", source=self.sentences_path)

    def annotation_path(self, video: str, frame: int) -> Path:
        return self.annotation_dir(video) / f"{frame:05d}.h5"

    # samples
    def split_videos(self, split: str) -> set[str]:
        """The videos of ``split`` (train or test) that are not missed videos."""
        if split not in SPLITS:
            raise RVOSError(f"A2D-Sentences has the splits {' and '.join(SPLITS)} (the subset "
                            f"column of videoset.csv), not {split!r}", self.videoset_path)
        return {v for v, s in self.subsets.items() if s == SPLITS[split] and v not in self.missed}

    def annotated_frames(self, video: str) -> dict[int, list[int]]:
        """{1-based frame number: instance ids} of every ``.h5`` file of the video, in
        file-name order (read once per video)."""
        if video not in self._instances:
            folder = self.annotation_dir(video)
            if not folder.is_dir():
                raise RVOSError(f"no annotation folder for video {video}, which "
                                f"{self.sentences_path.name} describes", folder)
            files = sorted(p for p in folder.iterdir() if p.suffix == ".h5" and p.stem.isdigit())
            self._instances[video] = {int(p.stem): read_instance_ids(p) for p in files}
        return self._instances[video]

    def samples(self, split: str, progress: bool = False) -> list[A2DSample]:
        """Every sample of ``split`` (see the module doc), in MTTR's order."""
        videos = self.split_videos(split)
        rows = [r for r in self.sentences if r[0] in videos]
        out = []
        for video, instance, query in tqdm(rows, desc=f"A2D-Sentences {split} samples",
                                           disable=not progress):
            try:
                instance_id = int(instance)
            except ValueError:
                continue   # MTTR skips the release's one such row, "1 (copy)"
            for frame, ids in self.annotated_frames(video).items():
                if instance_id in ids:
                    out.append(A2DSample(video, instance_id, frame, clean_sentence(query)))
        return out

    # data
    def read_mask(self, sample: A2DSample) -> np.ndarray:
        """(H, W) bool: the sentence's instance in its annotated frame."""
        return read_instance_mask(self.annotation_path(sample.video, sample.frame),
                                  sample.instance_id)

    def read_clips(self, video: str, centers: list[int], length: int) -> dict[int, Clip]:
        """The clips of ``length`` frames around the 0-based frame indices ``centers``."""
        path = self.video_path(video)
        if not path.is_file():
            raise RVOSError("video not found", path)
        return read_video_clips(path, centers, length)

    def verify_videos(self, samples: list[A2DSample]) -> None:
        """Check up front (``stat`` only) that the video of every sample is a non-empty
        file; RVOSError naming the first bad one and how many there are."""
        bad = []
        for video in dict.fromkeys(s.video for s in samples):
            problem = file_problem(self.video_path(video))
            if problem:
                bad.append((self.video_path(video), problem))
        if bad:
            path, problem = bad[0]
            raise RVOSError(f"{problem}; {len(bad)} of the split's videos are missing or empty "
                            f"(under {self.videos_dir})", path)


# ------------------------------------------------------------------------- training clips


class A2DClipDataset(Dataset):
    """One item per sample: the clip of ``num_frames`` frames around its annotated frame
    (MTTR's window, see :func:`window_indices`), the referred instance's mask in that frame,
    ``labelled`` True at that frame only.

    Augmentation as :class:`rvos.data.transforms.ClipTransform` (one set of parameters per
    clip), drawn from a generator seeded by (seed, epoch, index); call :meth:`set_epoch`.
    """

    def __init__(self, layout: A2DLayout, samples: list[A2DSample], num_frames: int,
                 input_size: tuple[int, int], train: bool = True, hflip_prob: float = 0.0,
                 scale_jitter: float = 0.0, color_jitter: float = 0.0, seed: int = 0):
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        self.layout = layout
        self.samples = samples
        self.num_frames = num_frames
        self.seed = seed
        self.epoch = 0
        self.transform = ClipTransform(input_size, train=train, hflip_prob=hflip_prob,
                                       scale_jitter=scale_jitter, color_jitter=color_jitter)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> ClipSample:
        s = self.samples[index]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        t, center = self.num_frames, self.num_frames // 2
        clip = self.layout.read_clips(s.video, [s.frame_index], t)[s.frame_index]
        mask = self.layout.read_mask(s)
        if mask.shape != clip.frames.shape[1:3]:
            raise RVOSError(f"mask size {mask.shape[1]}x{mask.shape[0]} differs from the frame "
                            f"size {clip.frames.shape[2]}x{clip.frames.shape[1]} of "
                            f"{self.layout.video_path(s.video).name}",
                            self.layout.annotation_path(s.video, s.frame))
        masks = np.zeros(clip.frames.shape[:3], dtype=bool)
        masks[center] = mask
        frames, masks_t, text, flipped = self.transform(clip.frames, masks, s.text, rng)
        boxes, valid = masks_to_boxes_cxcywh(masks_t)
        labelled = torch.zeros(t, dtype=torch.bool)
        labelled[center] = True
        meta = ClipMeta(video=s.video, exp_id=str(s.instance_id),
                        frame_names=[f"{i + 1:05d}" for i in clip.indices],
                        orig_size=(int(clip.frames.shape[1]), int(clip.frames.shape[2])),
                        obj_ids=[s.instance_id], flipped=flipped)
        return ClipSample(frames=frames, masks=masks_t, valid=valid, boxes=boxes.float(),
                          text=text, meta=meta, labelled=labelled)


def _capped(samples: list[A2DSample], max_samples: int) -> list[A2DSample]:
    """At most ``max_samples`` (0: all), spread over the list so that they span many videos."""
    if not max_samples or max_samples >= len(samples):
        return samples
    keep = np.linspace(0, len(samples) - 1, max_samples).round().astype(int)
    return [samples[i] for i in keep]


def build_train_dataset(cfg: Config) -> A2DClipDataset:
    """The clips of ``data.train_split`` (train, from videoset.csv) under ``data.root``, at
    most ``data.max_train_samples``; every video in use is checked to exist."""
    d = cfg.data
    layout = training_layout(d.root)
    samples = _capped(layout.samples(d.train_split, progress=True), d.max_train_samples)
    if not samples:
        raise RVOSError(f"split {d.train_split!r} has no samples", layout.sentences_path)
    layout.verify_videos(samples)
    return A2DClipDataset(layout, samples, d.num_frames, tuple(d.input_size), train=True,
                          hflip_prob=d.hflip_prob, scale_jitter=d.scale_jitter,
                          color_jitter=d.color_jitter, seed=cfg.train.seed)


@functools.lru_cache(maxsize=4)
def training_layout(root: str) -> A2DLayout:
    """The layout of ``root`` shared by a training run's dataset, its up-front checks and every
    validation pass, so the instance ids of the .h5 files are read once per process, not at
    each validation."""
    return A2DLayout(root)


def validation_samples(cfg: Config, layout: A2DLayout) -> list[A2DSample]:
    """The first ``data.max_val_samples`` samples (all when 0) of ``data.val_split``."""
    samples = layout.samples(cfg.data.val_split)
    return samples[:cfg.data.max_val_samples] if cfg.data.max_val_samples else samples


def verify_validation_split(cfg: Config) -> None:
    """The annotations and videos validation will read exist (nothing when
    ``train.eval_every`` is 0); RVOSError naming the first missing file."""
    if not cfg.train.eval_every:
        return
    layout = training_layout(cfg.data.root)
    samples = validation_samples(cfg, layout)
    if not samples:
        raise RVOSError(f"split {cfg.data.val_split!r} has no samples", layout.sentences_path)
    layout.verify_videos(samples)
