"""Readers of the few-shot referring video benchmarks: Mini-Ref-YouTube-VOS, Mini-Ref-SAIL-VOS
and the few-shot synthetic split, each a :class:`RefYTVOSLayout` of one annotated pool
(split "train") whose referred objects have categories, with the category folds.

On-disk layouts, as the official CMA code reads them (hengliusky/Few_shot_RVOS)::

    Mini-Ref-YouTube-VOS (and the synthetic split, plus <root>/synth_info.json)
        <root>/meta_expressions/train/meta_expressions.json
        <root>/train/meta.json   (or train/train.json, the name in the official README)
        <root>/train/JPEGImages/<video>/<frame>.jpg
        <root>/train/Annotations/<video>/<frame>.png   palette PNG, object id = pixel value

    Mini-Ref-SAIL-VOS, as its official code reads it        or as its README describes it
        <root>/meta_expressions.json                         the Mini-Ref-YouTube-VOS layout
        <root>/meta.json  (or train.json)                    above (chosen when
        <root>/Images/<video>/<frame>.bmp                    <root>/train/JPEGImages exists)
        <root>/Annotations/<video>/<frame>.png

``meta.json`` is ``{"videos": {vid: {"objects": {obj_id: {"category": name, ...}}}}}``. There
is no split file: every video is in the pool, and base/novel is decided by category fold.
Mini-Ref-SAIL-VOS masks are binarised as the official code does (every non-zero pixel is the
object), so its label maps hold 0/1 and every expression refers to object 1.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from rvos.data.fewshot import MINI_SAILVOS_CATEGORIES, MINI_YTVOS_FOLDS
from rvos.data.ytvos import RefYTVOSLayout, parse_meta_expressions, parse_objects_json
from rvos.errors import RVOSError
from rvos.paths import safe_join

# Names of the object-category file, in order of preference: the code reads meta.json, the
# official README calls it train.json.
CATEGORY_FILE_NAMES: tuple[str, ...] = ("meta.json", "train.json")

SYNTH_INFO_FILE = "synth_info.json"
_SYNTH_NOT_FEWSHOT = "not a few-shot synthetic benchmark; generate it with rvos data synth --few-shot"


def _existing_root(root: str | Path, title: str) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise RVOSError(f"{title} root folder not found", root)
    return root


@dataclass(frozen=True)
class PoolFiles:
    """Where a few-shot pool keeps its files."""

    split_dir: Path                                 # holds Annotations/, the frames folder
                                                    # and the object-category file
    meta_expressions_candidates: tuple[Path, ...]   # the first that exists is read
    frames_folder: str                              # "JPEGImages" or "Images"
    frame_suffix: str                               # ".jpg" or ".bmp"

    @staticmethod
    def ytvos_arrangement(root: Path) -> "PoolFiles":
        """The Mini-Ref-YouTube-VOS arrangement: train/ and meta_expressions/train/."""
        return PoolFiles(split_dir=root / "train",
                         meta_expressions_candidates=(
                             root / "meta_expressions" / "train" / "meta_expressions.json",
                             root / "train" / "meta_expressions.json"),
                         frames_folder="JPEGImages", frame_suffix=".jpg")


class FewShotLayout(RefYTVOSLayout):
    """An annotated pool in the Ref-YouTube-VOS layout whose referred objects all have one of
    ``categories``, split into ``folds`` (see :mod:`rvos.data.fewshot`).

    Attributes besides those of :class:`RefYTVOSLayout`: ``name`` (the dataset name of
    :func:`open_fewshot_layout`), ``title`` (for messages), ``categories``, ``folds`` and
    ``files`` (:class:`PoolFiles`).

    Checked on construction: every object an expression refers to is listed in the
    object-category file with a known category (objects no expression refers to are not
    checked, as the official code never reads them).
    """

    def __init__(self, root: str | Path, *, name: str, title: str, categories: tuple[str, ...],
                 folds: tuple[tuple[str, ...], ...], files: PoolFiles):
        # RefYTVOSLayout.__init__ is not called: it derives split_dir from (root, split) and
        # treats meta.json as optional, and neither holds here. The attributes it sets are
        # all set below.
        self.root = _existing_root(root, title)
        self.split = "train"
        self.split_dir = files.split_dir
        self.name = name
        self.title = title
        self.categories: tuple[str, ...] = tuple(categories)
        self.folds: tuple[tuple[str, ...], ...] = tuple(tuple(group) for group in folds)
        self.files = files
        candidates = files.meta_expressions_candidates
        self.meta_expressions_path = next((p for p in candidates if p.is_file()), None)
        if self.meta_expressions_path is None:
            looked = " or ".join(str(p) for p in candidates)
            raise RVOSError(f"{title}: meta_expressions.json not found (looked for {looked})",
                            candidates[0])
        self.videos = parse_meta_expressions(self.meta_expressions_path)
        self.objects_path: Path | None = next(
            (self.split_dir / n for n in CATEGORY_FILE_NAMES if (self.split_dir / n).is_file()), None)
        if self.objects_path is None:
            raise RVOSError(f"{title}: no object-category file (looked for "
                            f"{' and '.join(CATEGORY_FILE_NAMES)} in this folder)", self.split_dir)
        self.objects = parse_objects_json(self.objects_path)
        self._check_categories()

    def _check_categories(self) -> None:
        """Every referred object is listed with one of ``self.categories``."""
        known = set(self.categories)
        for video, record in self.videos.items():
            objects = self.objects.get(video, {})
            for exp in record.expressions.values():
                for obj_id in exp.obj_ids:
                    where = f"video {video!r} object {obj_id}"
                    if obj_id not in objects:
                        raise RVOSError(f"{where} (referred to by expression {exp.exp_id!r} of "
                                        f"{self.meta_expressions_path.name}) is not listed",
                                        self.objects_path)
                    category = objects[obj_id].get("category")
                    if not isinstance(category, str) or not category:
                        raise RVOSError(f'{where}: no "category"', self.objects_path)
                    if category not in known:
                        raise RVOSError(f"{where}: category {category!r} is not one of the "
                                        f"{len(known)} {self.title} categories", self.objects_path)

    def __repr__(self) -> str:
        n_exp = sum(len(v.expressions) for v in self.videos.values())
        return (f"{type(self).__name__}(root={str(self.root)!r}, videos={len(self.videos)}, "
                f"expressions={n_exp}, categories={len(self.categories)}, folds={len(self.folds)})")

    @property
    def has_annotations(self) -> bool:
        """Always True: a few-shot pool is annotated, so a missing mask is a damaged dataset
        (``verify`` names it) rather than an inference-only split."""
        return True

    def frame_path(self, video: str, frame: str) -> Path:
        """``<split_dir>/<frames folder>/<video>/<frame><suffix>`` (.jpg, or .bmp under Images/)."""
        return safe_join(self.split_dir / self.files.frames_folder, video,
                         f"{frame}{self.files.frame_suffix}",
                         what="video id or frame name", source=self.meta_expressions_path)


class MiniRefYouTubeVOS(FewShotLayout):
    """Mini-Ref-YouTube-VOS: 48 categories in the 4 official folds (:data:`MINI_YTVOS_FOLDS`);
    ``categories`` lists them fold by fold."""

    def __init__(self, root: str | Path):
        root = _existing_root(root, "Mini-Ref-YouTube-VOS")
        super().__init__(root, name="mini-ytvos", title="Mini-Ref-YouTube-VOS",
                         categories=tuple(c for group in MINI_YTVOS_FOLDS for c in group),
                         folds=MINI_YTVOS_FOLDS, files=PoolFiles.ytvos_arrangement(root))


class MiniRefSAILVOS(FewShotLayout):
    """Mini-Ref-SAIL-VOS: categories dog, car, person, all novel (one fold), evaluated with a
    model trained on a Mini-Ref-YouTube-VOS fold.

    ``arrangement`` is "readme" when ``<root>/train/JPEGImages`` exists (the
    Mini-Ref-YouTube-VOS layout), else "code" (root-level json files, ``Images/*.bmp``).

    Masks are binarised as the official reader does: any non-zero pixel is the object, label
    maps hold 0/1, and every expression's ``obj_ids`` become ``[1]`` (its category taken from
    the object the json names). A video whose expressions refer to objects of different
    categories is refused: binarised masks cannot tell them apart.
    """

    def __init__(self, root: str | Path):
        title = "Mini-Ref-SAIL-VOS"
        root = _existing_root(root, title)
        self.arrangement: Literal["readme", "code"] = (
            "readme" if (root / "train" / "JPEGImages").is_dir() else "code")
        if self.arrangement == "readme":
            files = PoolFiles.ytvos_arrangement(root)
        else:
            if not (root / "meta_expressions.json").is_file():
                raise RVOSError(f"{title}: meta_expressions.json not found (looked for it here, "
                                "as the official code reads it, and for train/JPEGImages, the "
                                "README arrangement)", root)
            files = PoolFiles(split_dir=root,
                              meta_expressions_candidates=(root / "meta_expressions.json",),
                              frames_folder="Images", frame_suffix=".bmp")
        super().__init__(root, name="mini-sailvos", title=title, categories=MINI_SAILVOS_CATEGORIES,
                         folds=(MINI_SAILVOS_CATEGORIES,), files=files)
        self._refer_to_binarised_object()

    def _refer_to_binarised_object(self) -> None:
        """Make every expression refer to object 1, the binarised mask, and list that object
        in ``objects`` with the category of the objects the json named."""
        for video, record in self.videos.items():
            referred = sorted({o for exp in record.expressions.values() for o in exp.obj_ids})
            if not referred:
                continue
            entries = [self.objects[video][o] for o in referred]
            categories = sorted({e["category"] for e in entries})
            if len(categories) > 1:
                raise RVOSError(f"video {video!r}: its expressions refer to objects {referred} of "
                                f"different categories ({', '.join(categories)}), which binarised "
                                f"{self.title} masks cannot tell apart", self.objects_path)
            merged: dict = {"category": categories[0]}
            frame_lists = [e.get("frames") for e in entries]
            if all(isinstance(f, list) for f in frame_lists):
                # the union, in video order, so visibility follows the binarised mask
                listed = set().union(*frame_lists)
                merged["frames"] = [f for f in record.frames if f in listed]
            self.objects[video] = {1: merged}
            for exp in record.expressions.values():
                if exp.obj_ids:
                    exp.obj_ids = [1]

    def load_label_maps(self, video: str, frames: list[str],
                        frame_size: tuple[int, int] | None = None) -> np.ndarray:
        """Binarised label maps (T, H, W) uint8: 1 where the mask PNG is non-zero, else 0."""
        labels = super().load_label_maps(video, frames, frame_size)
        return (labels > 0).astype(np.uint8)


def read_synth_fewshot_info(path: Path) -> tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]:
    """(categories in id order, folds) from the "fewshot" entry of a synth_info.json; the folds
    must split the categories (each in exactly one fold)."""
    if not path.is_file():
        raise RVOSError(f"not found; {_SYNTH_NOT_FEWSHOT}", path)
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise RVOSError(f"invalid JSON ({e})", path) from None
    except (OSError, UnicodeDecodeError) as e:
        raise RVOSError(f"cannot read ({type(e).__name__}: {e})", path) from None
    fewshot = info.get("fewshot") if isinstance(info, dict) else None
    if not isinstance(fewshot, dict):
        raise RVOSError(_SYNTH_NOT_FEWSHOT, path)
    categories, folds = fewshot.get("categories"), fewshot.get("folds")
    if (not isinstance(categories, list) or not categories
            or not all(isinstance(c, str) and c for c in categories)
            or len(set(categories)) != len(categories)):
        raise RVOSError('"fewshot.categories" must be a non-empty list of distinct names', path)
    if (not isinstance(folds, list) or not folds
            or not all(isinstance(g, list) and g and all(isinstance(c, str) for c in g) for g in folds)):
        raise RVOSError('"fewshot.folds" must be a non-empty list of non-empty lists of '
                        'category names', path)
    in_folds = [c for g in folds for c in g]
    unknown = sorted(set(in_folds) - set(categories))
    if unknown:
        raise RVOSError(f'"fewshot.folds" name categories not in "fewshot.categories": '
                        f"{', '.join(unknown)}", path)
    if sorted(in_folds) != sorted(categories):
        raise RVOSError('"fewshot.folds" must hold every category of "fewshot.categories" '
                        "exactly once", path)
    return tuple(categories), tuple(tuple(g) for g in folds)


class FewShotSynthLayout(FewShotLayout):
    """The few-shot synthetic split (``rvos data synth --few-shot``): the Mini-Ref-YouTube-VOS
    layout with shape names as categories, and the categories and folds in the "fewshot"
    entry of ``<root>/synth_info.json``."""

    def __init__(self, root: str | Path):
        title = "few-shot synthetic benchmark"
        root = _existing_root(root, title)
        categories, folds = read_synth_fewshot_info(root / SYNTH_INFO_FILE)
        super().__init__(root, name="synth", title=title, categories=categories, folds=folds,
                         files=PoolFiles.ytvos_arrangement(root))


FEWSHOT_DATASETS: dict[str, type[FewShotLayout]] = {
    "mini-ytvos": MiniRefYouTubeVOS,
    "mini-sailvos": MiniRefSAILVOS,
    "synth": FewShotSynthLayout,
}


def open_fewshot_layout(dataset: str, root: str | Path) -> FewShotLayout:
    """The few-shot pool of ``dataset`` ("mini-ytvos", "mini-sailvos" or "synth") at ``root``,
    with its categories and folds; RVOSError for an unknown name or a missing root."""
    if dataset not in FEWSHOT_DATASETS:
        raise RVOSError(f"unknown few-shot dataset {dataset!r}; known: {', '.join(FEWSHOT_DATASETS)}")
    return FEWSHOT_DATASETS[dataset](root)
