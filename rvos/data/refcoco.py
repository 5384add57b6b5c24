"""Referring-image data (RefCOCO, RefCOCO+, RefCOCOg) as one-frame (or repeated) clips.

Two official layouts are read unchanged; which one is used is decided by the files present
(:func:`detect_layout`):

**Per-expression COCO files** (the layout ReferFormer, SgMg and SOC train and evaluate on;
written by ReferFormer's ``tools/data/convert_refexp_to_coco.py``, the same scheme as MDETR's
``scripts/fine-tuning/refexp_coco_format.py``)::

    <root>/<dataset>/instances_<dataset>_<split>.json    e.g. refcoco+/instances_refcoco+_val.json
    <root>/train2014/<file_name>                          COCO train2014 images

Every referring expression is one ``images`` entry ``{"id", "file_name", "height", "width",
"caption", "original_id" (the COCO image id), "dataset_name"}`` with exactly one
``annotations`` entry ``{"id", "image_id" (= that entry's id), "segmentation", "bbox",
"area", "iscrowd", "category_id", "original_id" (the COCO annotation id)}``. MDETR's own
refexp files leave ``segmentation`` out (boxes only); they cannot train or score masks.

**The refer toolkit's files** (lichengunc/refer)::

    <root>/<dataset>/refs(<split_by>).p     pickled list of refs (see below)
    <root>/<dataset>/instances.json         COCO annotations of the referred objects
    <root>/images/train2014/<file_name>     COCO train2014 images

A ref is {"ref_id", "ann_id", "image_id", "split", "sentences": [{"sent": ...}, ...], ...};
``split_by`` is "unc" for refcoco / refcoco+ and "umd" for refcocog (splits train / val /
testA / testB, or train / val / test). The refs files are Python pickles. Unpickling can run
arbitrary code, so they are read with :class:`RestrictedUnpickler`, which only builds plain
containers and scalars and refuses every other global by name.

ReferFormer's converter writes its files into the folder holding refs(unc).p, so both
layouts often sit side by side; the per-expression file of the split is then used (same
expressions, in the same order: the converter walks the refs of the split and their
sentences in order). The images are looked for in ``<root>/train2014`` (ReferFormer, SgMg,
SOC), ``<root>/images/train2014`` and ``<root>/images/mscoco/images/train2014`` (refer).

Every referring expression is one sample: a :class:`ClipSample` whose T frames are the same
image (T = 1 for image pre-training; T = the video clip length for joint training, so image
and video samples collate together), optionally with a small random translation per frame
("pseudo-motion", as the anchors turn images into clips). Sentences that are empty after
stripping are left out (in both layouts).
"""

from __future__ import annotations

import io
import json
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from rvos.data.batch import ClipMeta, ClipSample, masks_to_boxes_cxcywh
from rvos.data.transforms import ClipTransform
from rvos.errors import RVOSError
from rvos.paths import check_component, file_problem, safe_join

DATASETS = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd"}
REFEXP_COCO, REFER = "per-expression COCO", "refer toolkit"     # the two layouts
_SAFE_BUILTINS = frozenset({"dict", "list", "tuple", "set", "frozenset", "str", "bytes",
                            "bytearray", "int", "float", "bool", "complex", "slice", "range"})


@dataclass(frozen=True)
class ReferringExpression:
    """One referring expression of a split, whichever layout it came from.

    ``sample_id``: unique in the split (the ``images`` entry id of the per-expression
    layout, ``<ref_id>_<sentence index>`` of the refer layout); ``image_id`` and ``ann_id``
    are the COCO train2014 ids of the image and of the referred object's annotation;
    ``segmentation``: that annotation's COCO segmentation (polygons, RLE or uncompressed RLE).
    """

    sample_id: str
    image_id: int
    file_name: str
    ann_id: int
    text: str
    segmentation: Any


@dataclass(frozen=True)
class SplitFiles:
    """The annotation files of one split: ``layout`` is :data:`REFEXP_COCO` (``path`` is
    instances_<dataset>_<split>.json) or :data:`REFER` (``path`` is refs(<split_by>).p,
    ``instances`` the instances.json beside it)."""

    layout: str
    path: Path
    instances: Path | None = None


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that only allows plain builtin containers and scalars.

    Python-2 pickles (the refer toolkit's) name ``__builtin__``, which Python 3 maps to
    ``builtins``; any other module or name (``os.system``, ``numpy...``) is refused.
    """

    def find_class(self, module: str, name: str) -> Any:
        if module in ("builtins", "__builtin__") and name in _SAFE_BUILTINS:
            import builtins

            return getattr(builtins, name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")


def load_refs(path: str | Path) -> list[dict]:
    """The refs list of a ``refs(*).p`` file, read with :class:`RestrictedUnpickler`."""
    path = Path(path)
    if not path.is_file():
        raise RVOSError("refs file not found (expected the refer toolkit's refs(<split_by>).p)", path)
    try:
        data = path.read_bytes()
        refs = RestrictedUnpickler(io.BytesIO(data), encoding="utf-8", errors="replace").load()
    except pickle.UnpicklingError as e:
        raise RVOSError(f"unsafe or corrupt pickle: {e}", path) from None
    except Exception as e:  # truncated file, wrong format
        raise RVOSError(f"cannot read refs ({type(e).__name__}: {e})", path) from None
    if not isinstance(refs, list) or not all(isinstance(r, dict) for r in refs):
        raise RVOSError("refs file must hold a list of dicts", path)
    for i, r in enumerate(refs):
        missing = {"ref_id", "ann_id", "image_id", "split", "sentences"} - set(r)
        if missing:
            raise RVOSError(f"ref #{i} lacks {sorted(missing)}", path)
    return refs


def find_image_dir(root: Path) -> Path:
    for candidate in (root / "train2014", root / "images" / "train2014",
                      root / "images" / "mscoco" / "images" / "train2014"):
        if candidate.is_dir():
            return candidate
    raise RVOSError("COCO train2014 images not found (looked for train2014, images/train2014, "
                    "images/mscoco/images/train2014)", root)


def detect_layout(root: Path, dataset: str, split: str, split_by: str | None = None) -> SplitFiles:
    """The annotation files of ``split`` of ``dataset`` under ``root``: the per-expression
    file when it is there (and ``split_by`` is not given), else the refer toolkit's files;
    RVOSError naming both when neither is."""
    check_component(split, "split name")
    folder = root / dataset
    per_split = folder / f"instances_{dataset}_{split}.json"
    refs = folder / f"refs({split_by or DATASETS[dataset]}).p"
    if split_by is None and per_split.is_file():
        return SplitFiles(REFEXP_COCO, per_split)
    if refs.is_file():
        return SplitFiles(REFER, refs, folder / "instances.json")
    raise RVOSError(f"no {dataset} annotations for split {split!r}: expected either "
                    f"{dataset}/{per_split.name} (per-expression COCO layout of ReferFormer / "
                    f"SgMg / SOC) or {dataset}/{refs.name} + {dataset}/instances.json (refer "
                    "toolkit layout)", folder)


def read_json(path: Path) -> Any:
    """The JSON document of ``path``; RVOSError naming it when it is missing or malformed."""
    if not path.is_file():
        raise RVOSError("annotation file not found", path)
    try:
        return json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RVOSError(f"not valid JSON ({e})", path) from None


def _coco_lists(data: Any, path: Path) -> tuple[list[dict], list[dict]]:
    """The ``images`` and ``annotations`` lists of a COCO document, checked to be lists of
    objects with an ``id``."""
    if not isinstance(data, dict):
        raise RVOSError("not a COCO annotation file (expected an object with images and "
                        "annotations)", path)
    lists = []
    for key in ("images", "annotations"):
        entries = data.get(key)
        if not isinstance(entries, list):
            raise RVOSError(f"not a COCO annotation file: no {key!r} list", path)
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or "id" not in entry:
                raise RVOSError(f"{key} entry #{i} is not an object with an id", path)
        lists.append(entries)
    return lists[0], lists[1]


def _field(entry: dict, key: str, what: str, path: Path) -> Any:
    if key not in entry:
        raise RVOSError(f"{what} has no {key!r}", path)
    return entry[key]


def _sentence_text(sentence: Any) -> str:
    if isinstance(sentence, dict):
        return str(sentence.get("sent", sentence.get("raw", "")))
    return str(sentence)


def load_refexp_coco(path: Path, dataset: str) -> list[ReferringExpression]:
    """The expressions of a per-expression COCO file (see the module doc), in file order.

    Checked: every ``images`` entry has a caption, a file_name that is one file name and
    exactly one annotation with a segmentation; every annotation names a listed image; a
    ``dataset_name`` present is ``dataset``."""
    images, annotations = _coco_lists(read_json(path), path)
    by_image: dict[Any, list[dict]] = {im["id"]: [] for im in images}
    for ann in annotations:
        image_id = _field(ann, "image_id", f"annotation {ann['id']}", path)
        if image_id not in by_image:
            raise RVOSError(f"annotation {ann['id']} names image {image_id}, which the file "
                            "does not list", path)
        by_image[image_id].append(ann)
    out = []
    for im in images:
        what = f"image entry {im['id']}"
        name = im.get("dataset_name")
        if name is not None and name != dataset:
            raise RVOSError(f"{what} belongs to dataset_name {name!r}, not {dataset!r}", path)
        anns = by_image[im["id"]]
        if len(anns) != 1:
            raise RVOSError(f"{what} has {len(anns)} annotations; this layout has exactly one "
                            "per referring expression", path)
        ann = anns[0]
        segmentation = _field(ann, "segmentation", f"annotation {ann['id']}", path)
        if not segmentation:
            raise RVOSError(f"annotation {ann['id']} has an empty segmentation (MDETR's "
                            "box-only refexp files cannot train or score masks; use ReferFormer's "
                            "tools/data/convert_refexp_to_coco.py)", path)
        file_name = check_component(_field(im, "file_name", what, path), f"{what}: file_name", path)
        text = str(_field(im, "caption", what, path)).strip()
        if text:
            out.append(ReferringExpression(
                sample_id=str(im["id"]), image_id=int(im.get("original_id", im["id"])),
                file_name=file_name, ann_id=int(ann.get("original_id", ann["id"])), text=text,
                segmentation=segmentation))
    return out


def load_refer_split(refs_path: Path, instances_path: Path, split: str) -> list[ReferringExpression]:
    """The expressions of ``split`` in the refer toolkit's files: every sentence of every
    ref of the split, in file order."""
    refs = [r for r in load_refs(refs_path) if r["split"] == split]
    if not refs:
        raise RVOSError(f"no refs in split {split!r}", refs_path)
    images, annotations = _coco_lists(read_json(instances_path), instances_path)
    images_by_id = {int(im["id"]): im for im in images}
    anns_by_id = {int(a["id"]): a for a in annotations}
    out = []
    for r in refs:
        image_id, ann_id = int(r["image_id"]), int(r["ann_id"])
        if ann_id not in anns_by_id or image_id not in images_by_id:
            raise RVOSError(f"ref {r['ref_id']} names annotation {ann_id} / image {image_id} "
                            "missing from instances.json", refs_path)
        image = images_by_id[image_id]
        file_name = check_component(image.get("file_name"), f"image {image_id}: file_name",
                                    instances_path)
        segmentation = _field(anns_by_id[ann_id], "segmentation", f"annotation {ann_id}",
                              instances_path)
        for k, sentence in enumerate(r["sentences"]):
            text = _sentence_text(sentence).strip()
            if text:
                out.append(ReferringExpression(f"{r['ref_id']}_{k}", image_id, file_name,
                                               ann_id, text, segmentation))
    return out


def load_split(root: Path, dataset: str, split: str,
               split_by: str | None = None) -> tuple[list[ReferringExpression], SplitFiles]:
    """Every referring expression of ``split``, from whichever layout is there."""
    files = detect_layout(root, dataset, split, split_by)
    if files.layout == REFEXP_COCO:
        expressions = load_refexp_coco(files.path, dataset)
    else:
        expressions = load_refer_split(files.path, files.instances, split)
    if not expressions:
        raise RVOSError(f"no referring expressions in split {split!r}", files.path)
    return expressions, files


def annotation_mask(ann: dict, height: int, width: int) -> np.ndarray:
    """(H, W) bool mask of a COCO annotation (polygons, RLE or uncompressed RLE).

    An RLE carries its own size; polygons are rasterised at (height, width). Several
    polygons are merged into one mask (pycocotools ``annToMask``)."""
    from pycocotools import mask as mask_utils

    seg = ann["segmentation"]
    if isinstance(seg, list):                       # polygons
        rles = mask_utils.frPyObjects(seg, height, width)
        rle = mask_utils.merge(rles)
    elif isinstance(seg, dict) and isinstance(seg.get("counts"), list):
        rle = mask_utils.frPyObjects(seg, height, width)
    else:
        rle = seg
    with warnings.catch_warnings():   # pycocotools' own numpy-2 copy= deprecation, harmless
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode([rle])[..., 0].astype(bool)


class ReferringImageDataset(Dataset):
    """One item per referring expression of a split (either layout, see the module doc): an
    image clip of ``num_frames`` repeated frames and the referred object's mask.

    ``pseudo_motion`` m: in training, every frame after the first is translated by up to
    m * (H, W) pixels (zero-filled), a different shift per frame. Randomness is seeded by
    (seed, epoch, index); call :meth:`set_epoch` each epoch. ``max_samples`` > 0 keeps that
    many expressions spread evenly over the split.
    """

    def __init__(self, root: str | Path, dataset: str = "refcoco", split: str = "train",
                 input_size: tuple[int, int] = (128, 128), num_frames: int = 1,
                 train: bool = True, hflip_prob: float = 0.0, scale_jitter: float = 0.0,
                 color_jitter: float = 0.0, pseudo_motion: float = 0.0, max_samples: int = 0,
                 seed: int = 0, split_by: str | None = None):
        if dataset not in DATASETS:
            raise RVOSError(f"unknown referring-image dataset {dataset!r}; choose one of "
                            f"{', '.join(DATASETS)}")
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise RVOSError("referring-image root not found", self.root)
        self.expressions, self.files = load_split(self.root, dataset, split, split_by)
        self.image_dir = find_image_dir(self.root)
        if max_samples and max_samples < len(self.expressions):
            keep = np.linspace(0, len(self.expressions) - 1, max_samples).round().astype(int)
            self.expressions = [self.expressions[i] for i in keep]
        self.dataset, self.split = dataset, split
        self.num_frames = num_frames
        self.train = train
        self.pseudo_motion = pseudo_motion
        self.seed, self.epoch = seed, 0
        self.transform = ClipTransform(input_size, train=train, hflip_prob=hflip_prob,
                                       scale_jitter=scale_jitter, color_jitter=color_jitter)

    @property
    def layout(self) -> str:
        return self.files.layout

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.expressions)

    def image_path(self, expression: ReferringExpression) -> Path:
        """The image file of ``expression`` (its checked ``file_name`` under the image folder)."""
        return safe_join(self.image_dir, expression.file_name, what="file_name",
                         source=self.files.instances or self.files.path)

    def verify(self) -> None:
        """Check up front (``stat`` only) that the image of every sample is a non-empty file;
        raises RVOSError naming the first bad one and how many there are."""
        paths = dict.fromkeys(self.image_path(e) for e in self.expressions)
        bad = [(p, problem) for p in paths if (problem := file_problem(p))]
        if bad:
            path, problem = bad[0]
            raise RVOSError(f"{problem}; {len(bad)} of the COCO images the split uses are "
                            "missing or empty", path)

    def load_image(self, expression: ReferringExpression) -> np.ndarray:
        """(H, W, 3) uint8 RGB image of ``expression``."""
        path = self.image_path(expression)
        try:
            with Image.open(path) as im:
                return np.array(im.convert("RGB"))          # writable: torch wraps it
        except FileNotFoundError:
            raise RVOSError("COCO image not found", path) from None
        except OSError as e:
            raise RVOSError(f"cannot read image ({e})", path) from None

    def target_mask(self, expression: ReferringExpression, height: int, width: int) -> np.ndarray:
        """(H, W) bool mask of the referred object at the image's size; RVOSError naming the
        annotation file when an RLE of another size or an unreadable segmentation is there."""
        source = self.files.instances or self.files.path
        seg = expression.segmentation
        size = seg.get("size") if isinstance(seg, dict) else [height, width]
        if not isinstance(size, (list, tuple)) or list(size) != [height, width]:
            raise RVOSError(f"annotation {expression.ann_id}: mask of size {size} but image "
                            f"{expression.file_name} is {[height, width]} (H, W)", source)
        try:
            return annotation_mask({"segmentation": seg}, height, width)
        except Exception as e:  # pycocotools raises bare TypeError/ValueError on bad input
            raise RVOSError(f"annotation {expression.ann_id}: unreadable segmentation "
                            f"({type(e).__name__}: {e})", source) from None

    def __getitem__(self, index: int) -> ClipSample:
        expression = self.expressions[index]
        image = self.load_image(expression)
        h, w = image.shape[:2]
        mask = self.target_mask(expression, h, w)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        frames, masks, text, flipped = self.transform(image[None], mask[None], expression.text,
                                                      rng if self.train else None)
        frames = frames.repeat(self.num_frames, 1, 1, 1)
        masks = masks.repeat(self.num_frames, 1, 1)
        if self.train and self.pseudo_motion > 0 and self.num_frames > 1:
            frames, masks = translate_frames(frames, masks, self.pseudo_motion, rng)
        boxes, valid = masks_to_boxes_cxcywh(masks)
        meta = ClipMeta(video=f"coco_{expression.image_id}", exp_id=expression.sample_id,
                        frame_names=[f"{i:05d}" for i in range(self.num_frames)],
                        orig_size=(h, w), obj_ids=[expression.ann_id], exp_type="image",
                        flipped=flipped)
        return ClipSample(frames=frames.contiguous(), masks=masks.contiguous(), valid=valid,
                          boxes=boxes.float(), text=text, meta=meta)


def translate_frames(frames: torch.Tensor, masks: torch.Tensor, amount: float,
                     rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Shift frames 1.. (T, 3, H, W) and masks (T, H, W) by random integer offsets of up
    to ``amount`` * (H, W), filling with zeros (the ImageNet mean after normalisation)."""
    t, _, h, w = frames.shape
    out_f, out_m = frames.clone(), masks.clone()
    for i in range(1, t):
        dy = int(rng.integers(-int(amount * h), int(amount * h) + 1))
        dx = int(rng.integers(-int(amount * w), int(amount * w) + 1))
        out_f[i].zero_()
        out_m[i].zero_()
        ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
        xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
        out_f[i, :, yd, xd] = frames[i, :, ys, xs]
        out_m[i, yd, xd] = masks[i, ys, xs]
    return out_f, out_m


def build_image_dataset(data_cfg, input_size: tuple[int, int], num_frames: int | None = None,
                        train: bool = True, seed: int = 0,
                        pseudo_motion: float = 0.05) -> ReferringImageDataset:
    """The training split of ``data_cfg.refcoco_dataset`` under ``data_cfg.refcoco_root``
    (joint image-video training).

    Clips have ``num_frames`` frames, by default ``data_cfg.num_frames``: the length of the
    video clips they are mixed with in joint training (set data.num_frames=1 for image
    pre-training). Augmentations follow the video data's settings.
    """
    if not data_cfg.refcoco_root:
        raise RVOSError("data.refcoco_root is empty: set it to the folder holding "
                        f"{data_cfg.refcoco_dataset}/ (instances_{data_cfg.refcoco_dataset}_train.json, "
                        "or refs(...).p + instances.json) and the COCO train2014 images")
    return ReferringImageDataset(
        data_cfg.refcoco_root, data_cfg.refcoco_dataset, "train", tuple(input_size),
        num_frames=num_frames or data_cfg.num_frames, train=train,
        hflip_prob=data_cfg.hflip_prob if train else 0.0,
        scale_jitter=data_cfg.scale_jitter if train else 0.0,
        color_jitter=data_cfg.color_jitter if train else 0.0,
        pseudo_motion=pseudo_motion if train else 0.0, seed=seed)


# --------------------------------------------------------------- data.format: refcoco
def build_train_dataset(cfg) -> ReferringImageDataset:
    """``data.format: refcoco``: the ``data.train_split`` expressions of
    ``data.refcoco_dataset`` under ``data.root`` (image pre-training, as ReferFormer's
    main_pretrain.py), as clips of ``data.num_frames`` repeated frames (1 for pre-training;
    more frames get pseudo-motion). Every image is checked to exist up front."""
    d = cfg.data
    dataset = ReferringImageDataset(
        d.root, d.refcoco_dataset, d.train_split, tuple(d.input_size), num_frames=d.num_frames,
        train=True, hflip_prob=d.hflip_prob, scale_jitter=d.scale_jitter,
        color_jitter=d.color_jitter, pseudo_motion=0.05, max_samples=d.max_train_samples,
        seed=cfg.train.seed)
    dataset.verify()
    return dataset


def open_validation_split(cfg) -> ReferringImageDataset:
    """The expressions training validation scores: the first ``data.max_val_samples`` (all
    when 0) of ``data.val_split`` of ``data.refcoco_dataset`` under ``data.root``."""
    d = cfg.data
    dataset = ReferringImageDataset(d.root, d.refcoco_dataset, d.val_split, tuple(d.input_size),
                                    train=False)
    if 0 < d.max_val_samples < len(dataset):
        dataset.expressions = dataset.expressions[:d.max_val_samples]
    return dataset


def verify_validation_split(cfg) -> None:
    """Check up front that the validation split's files are there (its annotations parse,
    every image it uses exists); RVOSError naming the first bad file."""
    open_validation_split(cfg).verify()
