"""The MeViS on-disk layout, and training clips sampled from it as the MeViS baseline does.

The official layout (MeViS repository ``README.md``, "File Structure")::

    <root>/<split>/JPEGImages/<video>/<frame>.jpg     split: train | valid_u | valid
    <root>/<split>/meta_expressions.json
    <root>/<split>/mask_dict.json                     train and valid_u only

``meta_expressions.json`` is ``{"videos": {video: {"frames": [...], "expressions": {exp_id:
{"exp": sentence, "obj_id": [...], "anno_id": [...]}}}}}``. An expression may refer to several
objects (or, in MeViS v2, to none: ``"anno_id": []``). ``anno_id`` are the keys of
``mask_dict.json``; ``obj_id`` only numbers the objects of a video from 0 and is not used.

``mask_dict.json`` is ``{anno_id: [RLE or null, one per frame]}``: the i-th entry is the
object's mask in the i-th frame listed for its video (the official ``tools/eval_mevis.py``
indexes it by the position in ``frames``), ``null`` where the object is absent. Each RLE is
a compressed COCO RLE as pycocotools encodes it, ``{"size": [H, W], "counts": str}``.

The referred target of an expression is the union of its objects' masks, empty in a frame
where none of them is visible (official ``eval_mevis.py`` and ``ReferFormer_dataset.py``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from rvos.config import Config
from rvos.data.ytvos import (ExpressionRecord, ReferringClipDataset, VideoRecord, check_files,
                             parse_meta_expressions, read_rgb_frames)
from rvos.errors import RVOSError
from rvos.metrics.mevis import load_mask_dict
from rvos.paths import check_component, safe_join


class MeViSLayout:
    """Reader of one split of MeViS.

    Parses and validates ``meta_expressions.json`` on construction; ``mask_dict.json`` is
    read on first use (it is large for ``train``), frames and masks on demand. Every problem
    with the files is an :class:`RVOSError` naming the file.
    """

    def __init__(self, root: str | Path, split: str):
        self.root = Path(root).expanduser()
        self.split = check_component(split, "split name")
        self.split_dir = self.root / split
        self.meta_expressions_path = self.split_dir / "meta_expressions.json"
        self.mask_dict_path = self.split_dir / "mask_dict.json"
        if not self.meta_expressions_path.is_file():
            raise RVOSError(f"meta_expressions.json not found for MeViS split {split!r} (expected "
                            "<root>/<split>/meta_expressions.json)", self.meta_expressions_path)
        self.videos: dict[str, VideoRecord] = parse_meta_expressions(self.meta_expressions_path,
                                                                     anno_ids=True)
        self._mask_dict: dict | None = None

    def __repr__(self) -> str:
        n_exp = sum(len(v.expressions) for v in self.videos.values())
        return (f"MeViSLayout(root={str(self.root)!r}, split={self.split!r}, "
                f"videos={len(self.videos)}, expressions={n_exp})")

    @property
    def has_annotations(self) -> bool:
        """Whether the split has ground-truth masks (``valid``, scored by the server, has none)."""
        return self.mask_dict_path.is_file()

    @property
    def mask_dict(self) -> dict:
        """The parsed ``mask_dict.json`` (read once)."""
        if self._mask_dict is None:
            self._mask_dict = load_mask_dict(self.mask_dict_path)
        return self._mask_dict

    def samples(self) -> list[tuple[str, str]]:
        """Every (video, exp_id) pair, videos sorted by name, expressions by id."""
        return [(v, e) for v, rec in self.videos.items() for e in rec.expressions]

    def frame_path(self, video: str, frame: str) -> Path:
        return safe_join(self.split_dir / "JPEGImages", video, f"{frame}.jpg",
                         what="video id or frame name", source=self.meta_expressions_path)

    def load_frames(self, video: str, frames: list[str]) -> np.ndarray:
        """RGB frames (T, H, W, 3) uint8; all frames must share one size."""
        return read_rgb_frames([self.frame_path(video, frame) for frame in frames])

    def anno_ids(self, video: str, exp_id: str) -> list[str]:
        """The anno_ids (mask_dict.json keys) of an expression; an RVOSError when the file
        lists none for it (needed wherever the split is trained on or scored)."""
        ids = self.videos[video].expressions[exp_id].anno_ids
        if ids is None:
            raise RVOSError(f'video {video!r} expression {exp_id!r}: no "anno_id" list, needed '
                            "to read its masks from mask_dict.json", self.meta_expressions_path)
        return ids

    def check_masks(self, samples: list[tuple[str, str]]) -> None:
        """Every anno_id of ``samples`` is in mask_dict.json with one entry (an RLE object or
        null) per frame of its video; an RVOSError naming the file otherwise. RLEs are
        decoded (and their sizes checked) only when read."""
        masks = self.mask_dict
        for video, exp_id in samples:
            n_frames = len(self.videos[video].frames)
            for anno_id in self.anno_ids(video, exp_id):
                entries = masks.get(anno_id)
                where = f"anno_id {anno_id} (video {video!r} expression {exp_id!r})"
                if entries is None:
                    raise RVOSError(f"{where} is not in mask_dict.json", self.mask_dict_path)
                if not isinstance(entries, list) or len(entries) != n_frames:
                    got = len(entries) if isinstance(entries, list) else type(entries).__name__
                    raise RVOSError(f"{where}: expected a list of {n_frames} masks (one per frame "
                                    f"listed in meta_expressions.json), got {got}", self.mask_dict_path)
                if any(e is not None and not isinstance(e, dict) for e in entries):
                    raise RVOSError(f"{where}: each entry must be a COCO RLE object or null",
                                    self.mask_dict_path)

    def visible_frames(self, anno_ids: list[str]) -> np.ndarray:
        """(T,) bool: frames where any of the objects has a mask (no decoding)."""
        flags = [np.array([bool(rle) for rle in self.mask_dict[a]]) for a in anno_ids]
        return np.logical_or.reduce(flags) if flags else np.zeros(0, dtype=bool)

    def decode(self, video: str, anno_id: str, index: int, size: tuple[int, int]) -> np.ndarray | None:
        """(H, W) bool mask of object ``anno_id`` in frame ``index`` of ``video``, None where
        the object is absent. ``size`` (H, W) is the frame's size, which the RLE must have."""
        rle = self.mask_dict[anno_id][index]
        if not rle:
            return None
        frame = self.videos[video].frames[index]
        where = f"anno_id {anno_id}, frame {frame} of video {video!r}"
        rle_size, counts = rle.get("size"), rle.get("counts")
        if (not isinstance(rle_size, list) or len(rle_size) != 2
                or not all(isinstance(v, int) for v in rle_size) or not isinstance(counts, str)):
            raise RVOSError(f"{where}: expected a compressed COCO RLE "
                            '{"size": [H, W], "counts": "..."}', self.mask_dict_path)
        if tuple(rle_size) != tuple(size):
            raise RVOSError(f"{where}: mask size {rle_size[1]}x{rle_size[0]} differs from the "
                            f"frame size {size[1]}x{size[0]} (W x H)", self.mask_dict_path)
        try:
            mask = mask_utils.decode({"size": rle_size, "counts": counts.encode("ascii")})
        except Exception as e:  # non-ASCII text, or pycocotools' errors on corrupt counts
            raise RVOSError(f"{where}: cannot decode the RLE ({type(e).__name__}: {e})",
                            self.mask_dict_path) from None
        return mask.astype(bool)

    def referred_masks(self, video: str, anno_ids: list[str], indices: list[int],
                       size: tuple[int, int]) -> np.ndarray:
        """(T, H, W) bool union of the objects ``anno_ids`` in frames ``indices`` of the
        video's frame list; ``size`` = (H, W) of the frames."""
        out = np.zeros((len(indices), *size), dtype=bool)
        for t, index in enumerate(indices):
            for anno_id in anno_ids:
                mask = self.decode(video, anno_id, index, size)
                if mask is not None:
                    out[t] |= mask
        return out

    def verify(self, samples: list[tuple[str, str]], check_masks: bool = True) -> None:
        """Check up front that every frame of the videos of ``samples`` is a non-empty file
        (``stat`` only) and, when ``check_masks`` and the split has annotations, that their
        anno_ids are in mask_dict.json with one entry per frame."""
        videos = dict.fromkeys(v for v, _ in samples)
        check_files((self.frame_path(v, f) for v in videos for f in self.videos[v].frames),
                    self.meta_expressions_path)
        if check_masks and self.has_annotations:
            self.check_masks(samples)


def first_samples(layout: MeViSLayout, max_samples: int = 0) -> list[tuple[str, str]]:
    """The first ``max_samples`` (video, exp_id) pairs in sorted order (all when 0): the
    expressions ``--max-samples`` and ``data.max_val_samples`` evaluate."""
    samples = layout.samples()
    return samples[:max_samples] if max_samples > 0 else samples


# --------------------------------------------------------------------------- training clips

def lmpm_clip_indices(num_video_frames: int, num_frames: int, frame_range: int,
                      rng: np.random.Generator) -> list[int]:
    """Indices of a training clip as the MeViS baseline samples them (``MeViSDatasetMapper``
    in ``lmpm/data/dataset_mapper.py``): a reference frame drawn uniformly from the video,
    and ``num_frames - 1`` others drawn *with replacement* from the frames within
    ``frame_range`` of it (the reference excluded), all sorted in time. Repeated frames are
    thus possible, as in the official sampler. Needs a video of at least 2 frames."""
    n = num_video_frames
    if n < 2:
        raise ValueError("a MeViS training clip needs a video of at least 2 frames")
    ref = int(rng.integers(n))
    window = [i for i in range(max(0, ref - frame_range), min(n, ref + frame_range + 1)) if i != ref]
    others = rng.choice(window, size=num_frames - 1, replace=True).tolist() if num_frames > 1 else []
    return sorted([ref, *(int(i) for i in others)])


class MeViSClipDataset(ReferringClipDataset):
    """One item per (video, expression) of a MeViS split with masks: a clip and the union of
    the referred objects' masks.

    Clips follow the MeViS baseline (LMPM, ``lmpm/data/dataset_mapper.py`` with
    ``configs/lmpm_SWIN_bs8.yaml``: SAMPLING_FRAME_NUM 6, SAMPLING_FRAME_RANGE 8):
    :func:`lmpm_clip_indices`. As its loader does (``lmpm/data/datasets/mevis.py`` and
    ``DATALOADER.FILTER_EMPTY_ANNOTATIONS``), videos of fewer than 2 frames and expressions
    none of whose objects has a mask in any frame are left out; a clip where the objects are
    absent from every sampled frame is kept (an all-empty target, ``valid`` all False).

    ``ClipMeta.obj_ids`` holds the expression's anno_ids as integers (sentences with the same
    ids share their referent). Randomness and augmentation are those of
    :class:`ReferringClipDataset` (seeded by seed, epoch and index).
    """

    def __init__(self, layout: MeViSLayout, num_frames: int, input_size: tuple[int, int],
                 frame_range: int = 8, hflip_prob: float = 0.0, scale_jitter: float = 0.0,
                 color_jitter: float = 0.0, max_samples: int = 0, seed: int = 0):
        if frame_range < 1:
            raise ValueError(f"frame_range must be >= 1, got {frame_range}")
        self.frame_range = frame_range
        super().__init__(layout, num_frames=num_frames, input_size=input_size, train=True,
                         max_frame_stride=1, hflip_prob=hflip_prob, scale_jitter=scale_jitter,
                         color_jitter=color_jitter, max_samples=max_samples, seed=seed)

    def candidate_items(self) -> list[tuple[str, str]]:
        layout: MeViSLayout = self.layout
        samples = layout.samples()
        layout.check_masks(samples)
        return [(v, e) for v, e in samples if len(layout.videos[v].frames) >= 2
                and layout.visible_frames(layout.anno_ids(v, e)).any()]

    def clip_indices(self, index: int, rng: np.random.Generator) -> list[int]:
        video, _ = self.items[index]
        return lmpm_clip_indices(len(self.layout.videos[video].frames), self.num_frames,
                                 self.frame_range, rng)

    def load_referred_clip(self, video: str, exp: ExpressionRecord,
                           indices: list[int]) -> tuple[np.ndarray, np.ndarray]:
        layout: MeViSLayout = self.layout
        images = layout.load_frames(video, [layout.videos[video].frames[i] for i in indices])
        referred = layout.referred_masks(video, layout.anno_ids(video, exp.exp_id), indices,
                                         images.shape[1:3])
        return images, referred

    def referent_ids(self, exp: ExpressionRecord) -> list[int]:
        return sorted(int(a) for a in exp.anno_ids or [])


def build_train_dataset(cfg: Config) -> MeViSClipDataset:
    """MeViS training clips of ``cfg.data.train_split`` under ``cfg.data.root``; the frames of
    every video in use and the mask_dict.json entries of every expression are checked first."""
    d = cfg.data
    layout = MeViSLayout(d.root, d.train_split)
    if not layout.has_annotations:
        raise RVOSError(f"MeViS split {d.train_split!r} has no mask_dict.json to train on",
                        layout.mask_dict_path)
    dataset = MeViSClipDataset(layout, num_frames=d.num_frames, input_size=tuple(d.input_size),
                               frame_range=d.frame_range, hflip_prob=d.hflip_prob,
                               scale_jitter=d.scale_jitter, color_jitter=d.color_jitter,
                               max_samples=d.max_train_samples, seed=cfg.train.seed)
    if not dataset.items:
        raise RVOSError(f"no expression of split {d.train_split!r} has a mask in any frame of a "
                        "video of 2 frames or more", layout.meta_expressions_path)
    layout.verify(dataset.items, check_masks=False)   # masks were checked on construction
    return dataset


def verify_validation_split(cfg: Config) -> None:
    """Check the files training validation will read: the frames of the videos of the first
    ``data.max_val_samples`` expressions of ``data.val_split`` and their mask_dict.json
    entries. Nothing when validation is off (``train.eval_every`` = 0) or the split has no
    mask_dict.json (validation is then skipped)."""
    if not cfg.train.eval_every:
        return
    d = cfg.data
    layout = MeViSLayout(d.root, d.val_split)
    if not layout.has_annotations:
        return
    layout.verify(first_samples(layout, d.max_val_samples))
