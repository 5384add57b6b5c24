"""JHMDB-Sentences in its official layout: an evaluation-only benchmark.

JHMDB-Sentences (Gavrilyuk et al., CVPR 2018) gives a sentence to each of the 928 videos of
J-HMDB (Jhuang et al., ICCV 2013), whose puppet masks are the ground truth. Papers evaluate
the model trained on A2D-Sentences on it without training. As downloaded and unpacked::

    <root>/jhmdb_annotation.txt               CSV with the header ``video_id,query``
    <root>/Rename_Images/<action>/<video>/<frame>.png
                                              the frames, 1-based, 5 digits (00001.png)
    <root>/puppet_mask/<action>/<video>/puppet_mask.mat
                                              MATLAB file, ``part_mask`` (H, W, T) uint8: the
                                              person's mask in each of the first T frames
    <root>/jhmdb_sentences_samples_metadata.json
                                              MTTR's samples (from the MTTR repository,
                                              datasets/jhmdb_sentences/; see below)

The samples are MTTR's (``datasets/jhmdb_sentences/jhmdb_sentences_dataset.py``, which
ReferFormer's ``datasets/jhmdb.py`` reads from the same file): three frames per video drawn
at random once among the frames that have a mask, and saved as a JSON list of
``[video id, frame path, mask path, frame count, sentence]``, e.g.
``["100_pullups_pullup_f_nm_np1_fr_med_1",
"./jhmdb_sentences/Rename_Images/pullup/100_pullups_pullup_f_nm_np1_fr_med_1/00002.png",
"./jhmdb_sentences/puppet_mask/pullup/100_pullups_pullup_f_nm_np1_fr_med_1/puppet_mask.mat",
40, "man in black pulling up"]``; the frame count is the number of frames with a mask
(frames past it are never shown to the model). The published figures are on that draw, so
rvos reads that file rather than drawing again; its paths are read from their
``Rename_Images`` / ``puppet_mask`` component on, under ``<root>``.

A sample's clip is MTTR's window around its frame (:func:`rvos.data.a2d.window_indices`,
indices clamped to [1, frame count]); its ground truth is ``part_mask[:, :, frame - 1]``.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import scipy.io
from PIL import Image

from rvos.config import Config
from rvos.data.a2d import Clip, clean_sentence, window_indices
from rvos.errors import RVOSError
from rvos.paths import file_problem, safe_join

METADATA_NAME = "jhmdb_sentences_samples_metadata.json"
TEXT_COLUMNS = ("video_id", "query")


@dataclass(frozen=True)
class JHMDBSample:
    """One (sentence, chosen frame) pair of MTTR's metadata."""

    video: str
    action: str         # the action folder the video is filed under
    frame: int          # 1-based frame number, as in the .png name
    num_frames: int     # frames with a mask: the clip's indices are clamped to them
    text: str           # lower-cased, whitespace collapsed

    @property
    def frame_index(self) -> int:
        return self.frame - 1

    @property
    def image_id(self) -> str:
        """The sample's id in the COCO ground truth, as MTTR's ``get_image_id`` names it."""
        return f"v_{self.video}_f_{self.frame}"


def _tail(path: str, anchor: str, where: str, source: Path) -> tuple[str, ...]:
    """The components of a metadata path after ``anchor`` (Rename_Images / puppet_mask)."""
    parts = PurePosixPath(path.replace("\\", "/")).parts
    if anchor not in parts:
        raise RVOSError(f"{where}: path {path!r} has no {anchor} folder", source)
    return parts[parts.index(anchor) + 1:]


def parse_samples_metadata(entries: object, source: Path) -> list[JHMDBSample]:
    """MTTR's metadata list -> samples, in file order (see the module doc)."""
    if not isinstance(entries, list) or not entries:
        raise RVOSError("expected a non-empty list of [video id, frame path, mask path, "
                        "frame count, sentence]", source)
    samples = []
    for k, entry in enumerate(entries):
        where = f"entry {k}"
        if (not isinstance(entry, list) or len(entry) != 5
                or not all(isinstance(v, str) for v in entry[:3] + entry[4:])
                or not isinstance(entry[3], int) or isinstance(entry[3], bool)):
            raise RVOSError(f"{where}: expected [video id, frame path, mask path, frame count, "
                            f"sentence], got {entry!r}", source)
        video, frame_path, mask_path, count, text = entry
        frame_tail = _tail(frame_path, "Rename_Images", where, source)
        mask_tail = _tail(mask_path, "puppet_mask", where, source)
        name = frame_tail[-1] if frame_tail else ""
        if (len(frame_tail) != 3 or frame_tail[1] != video or not name.endswith(".png")
                or not name[:-4].isdigit()):
            raise RVOSError(f"{where}: frame path {frame_path!r} is not "
                            f"Rename_Images/<action>/{video}/<frame>.png", source)
        if mask_tail != (frame_tail[0], video, "puppet_mask.mat"):
            raise RVOSError(f"{where}: mask path {mask_path!r} is not "
                            f"puppet_mask/{frame_tail[0]}/{video}/puppet_mask.mat", source)
        frame = int(name[:-4])
        if not 1 <= frame <= count:
            raise RVOSError(f"{where}: frame {frame} is outside the video's {count} frames", source)
        if not text.strip():
            raise RVOSError(f"{where}: empty sentence", source)
        samples.append(JHMDBSample(video, frame_tail[0], frame, count, clean_sentence(text)))
    return samples


def parse_text_annotations(path: Path) -> dict[str, str]:
    """jhmdb_annotation.txt -> {video id: sentence}."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise RVOSError(f"cannot read ({type(e).__name__}: {e})", path) from None
    reader = csv.reader(lines)
    header = next(reader, None)
    if header is None or [h.strip() for h in header] != list(TEXT_COLUMNS):
        raise RVOSError(f"expected the header {','.join(TEXT_COLUMNS)}, got "
                        f"{','.join(header or [])!r}", path)
    sentences = {}
    for number, row in enumerate(reader, 2):
        if not row:
            continue
        if len(row) != 2:
            raise RVOSError(f"line {number}: {len(row)} columns, expected 2 (video_id,query)", path)
        sentences[row[0].strip()] = row[1]
    return sentences


def read_part_mask(path: Path) -> np.ndarray:
    """``part_mask`` of a puppet_mask.mat: (H, W, T) bool, as stored (MATLAB's row-major
    (H, W) frames, the time axis last)."""
    if not path.is_file():
        raise RVOSError("mask file not found", path)
    try:
        data = scipy.io.loadmat(path)
    except Exception as e:     # scipy raises several types for a damaged .mat
        raise RVOSError(f"cannot read as a MATLAB file ({type(e).__name__}: {e})", path) from None
    masks = data.get("part_mask")
    if not isinstance(masks, np.ndarray) or masks.ndim != 3 or min(masks.shape) == 0:
        found = masks.shape if isinstance(masks, np.ndarray) else "none"
        raise RVOSError(f"expected 'part_mask' of shape (H, W, T), found {found}", path)
    return masks > 0


def _read_png(path: Path) -> np.ndarray:
    if not path.is_file():
        raise RVOSError("frame not found", path)
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except Exception as e:
        raise RVOSError(f"cannot read frame ({type(e).__name__}: {e})", path) from None


class JHMDBLayout:
    """Reader of a JHMDB-Sentences root (see the module doc); the metadata and sentences are
    read on construction, frames and masks on demand. ``metadata``: MTTR's samples file
    (default ``<root>/jhmdb_sentences_samples_metadata.json``)."""

    def __init__(self, root: str | Path, metadata: str | Path | None = None):
        self.root = Path(root).expanduser()
        self.metadata_path = Path(metadata) if metadata else self.root / METADATA_NAME
        self.sentences_path = self.root / "jhmdb_annotation.txt"
        if not self.metadata_path.is_file():
            raise RVOSError("MTTR's JHMDB-Sentences samples not found: download "
                            f"datasets/jhmdb_sentences/{METADATA_NAME} from "
                            "github.com/mttr2021/MTTR into the JHMDB-Sentences root (the "
                            "published figures are on its frames)", self.metadata_path)
        if not self.sentences_path.is_file():
            raise RVOSError("not found (is --data / data.root the JHMDB-Sentences root?)",
                            self.sentences_path)
        try:
            entries = json.loads(self.metadata_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RVOSError(f"invalid JSON ({e})", self.metadata_path) from None
        self.samples = parse_samples_metadata(entries, self.metadata_path)
        described = parse_text_annotations(self.sentences_path)
        unknown = sorted({s.video for s in self.samples} - set(described))
        if unknown:
            raise RVOSError(f"{len(unknown)} videos of the samples are not in "
                            f"{self.sentences_path}, e.g. {unknown[:3]}: the samples belong to "
                            "another dataset", self.metadata_path)
        self._videos = {s.video: s for s in self.samples}
        self._masks: tuple[str, np.ndarray] | None = None    # the last video's part_mask

    def __repr__(self) -> str:
        return f"JHMDBLayout(root={str(self.root)!r}, samples={len(self.samples)})"

    def frame_path(self, video: str, frame: int) -> Path:
        action = self._videos[video].action
        return safe_join(self.root / "Rename_Images", action, video, f"{frame:05d}.png",
                         what="action or video id", source=self.metadata_path)

    def mask_path(self, video: str) -> Path:
        action = self._videos[video].action
        return safe_join(self.root / "puppet_mask", action, video, "puppet_mask.mat",
                         what="action or video id", source=self.metadata_path)

    def read_clips(self, video: str, centers: list[int], length: int) -> dict[int, Clip]:
        """The clips of ``length`` frames around the 0-based frame indices ``centers``;
        frames (T, H, W, 3) uint8 RGB."""
        count = self._videos[video].num_frames
        cache: dict[int, np.ndarray] = {}
        clips = {}
        for c in centers:
            indices = window_indices(c, length, count)
            for i in indices:
                if i not in cache:
                    cache[i] = _read_png(self.frame_path(video, i + 1))
                    if cache[i].shape != next(iter(cache.values())).shape:
                        raise RVOSError("frame size differs from the video's other frames",
                                        self.frame_path(video, i + 1))
            clips[c] = Clip(indices, np.stack([cache[i] for i in indices]))
        return clips

    def read_mask(self, sample: JHMDBSample) -> np.ndarray:
        """(H, W) bool: ``part_mask[:, :, frame - 1]``."""
        if self._masks is None or self._masks[0] != sample.video:
            self._masks = (sample.video, read_part_mask(self.mask_path(sample.video)))
        masks = self._masks[1]
        if sample.frame > masks.shape[2]:
            raise RVOSError(f"part_mask has {masks.shape[2]} frames, but frame {sample.frame} "
                            f"is a sample of {self.metadata_path.name}", self.mask_path(sample.video))
        return masks[:, :, sample.frame_index]

    def verify(self, samples: list[JHMDBSample]) -> None:
        """Check up front (``stat`` only) the frames of the samples' clips and their masks;
        RVOSError naming the first missing or empty file and how many there are."""
        paths = {}
        for s in samples:
            paths[self.mask_path(s.video)] = None
            for i in range(1, s.num_frames + 1):
                paths[self.frame_path(s.video, i)] = None
        bad = [(p, why) for p in paths if (why := file_problem(p))]
        if bad:
            path, problem = bad[0]
            raise RVOSError(f"{problem}; {len(bad)} of the files the samples need are missing "
                            "or empty", path)


def validation_samples(cfg: Config, layout: JHMDBLayout) -> list[JHMDBSample]:
    """The first ``data.max_val_samples`` samples (all when 0)."""
    n = cfg.data.max_val_samples
    return layout.samples[:n] if n else layout.samples


def build_train_dataset(cfg: Config):
    """JHMDB-Sentences has no training split: always an RVOSError."""
    raise RVOSError("JHMDB-Sentences is evaluation-only (papers score the A2D-Sentences model "
                    "on it): train with data.format: a2d, then rvos evaluate --dataset jhmdb")


def verify_validation_split(cfg: Config) -> None:
    """The frames and masks of the validation samples exist (nothing when
    ``train.eval_every`` is 0)."""
    if not cfg.train.eval_every:
        return
    layout = JHMDBLayout(cfg.data.root)
    layout.verify(validation_samples(cfg, layout))
