"""Referring-image data (RefCOCO, RefCOCO+, RefCOCOg) as one-frame (or repeated) clips.

The layout of the refer toolkit (lichengunc/refer), unchanged:

    <root>/<dataset>/refs(<split_by>).p     pickled list of refs (see below)
    <root>/<dataset>/instances.json         COCO annotations of the referred objects
    <root>/images/train2014/<file_name>     COCO train2014 images (also accepted:
                                            <root>/train2014/, <root>/images/mscoco/images/train2014/)

A ref is {"ref_id", "ann_id", "image_id", "split", "sentences": [{"sent": ...}, ...], ...};
``split_by`` is "unc" for refcoco / refcoco+ and "umd" for refcocog (both use the splits
train / val / testA / testB, or train / val / test).

The refs files are Python pickles. Unpickling can run arbitrary code, so they are read
with :class:`RestrictedUnpickler`, which only builds plain containers and scalars and
refuses every other global by name.

Every (ref, sentence) pair is one sample: a :class:`ClipSample` whose T frames are the
same image (T = 1 for image pre-training; T = the video clip length for joint training,
so image and video samples collate together), optionally with a small random translation
per frame ("pseudo-motion", as the anchors turn images into clips).
"""

from __future__ import annotations

import io
import json
import pickle
import warnings
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
_SAFE_BUILTINS = frozenset({"dict", "list", "tuple", "set", "frozenset", "str", "bytes",
                            "bytearray", "int", "float", "bool", "complex", "slice", "range"})


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
    for candidate in (root / "images" / "train2014", root / "train2014",
                      root / "images" / "mscoco" / "images" / "train2014"):
        if candidate.is_dir():
            return candidate
    raise RVOSError("COCO train2014 images not found (looked for images/train2014, train2014, "
                    "images/mscoco/images/train2014)", root)


def annotation_mask(ann: dict, height: int, width: int) -> np.ndarray:
    """(H, W) bool mask of a COCO annotation (polygons, RLE or uncompressed RLE)."""
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
    """One item per (ref, sentence) of a split: an image clip of ``num_frames`` repeated
    frames and the referred object's mask (see module doc).

    ``pseudo_motion`` m: in training, every frame after the first is translated by up to
    m * (H, W) pixels (zero-filled), a different shift per frame. Randomness is seeded by
    (seed, epoch, index); call :meth:`set_epoch` each epoch.
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
            raise RVOSError("referring-image root not found (data.refcoco_root)", self.root)
        folder = self.root / dataset
        refs_path = folder / f"refs({split_by or DATASETS[dataset]}).p"
        refs = [r for r in load_refs(refs_path) if r["split"] == split]
        if not refs:
            raise RVOSError(f"no refs in split {split!r}", refs_path)
        instances = folder / "instances.json"
        if not instances.is_file():
            raise RVOSError("COCO annotations not found", instances)
        try:
            coco = json.loads(instances.read_text())
            self.images = {int(im["id"]): im for im in coco["images"]}
            self.annotations = {int(a["id"]): a for a in coco["annotations"]}
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise RVOSError(f"not a COCO annotation file ({type(e).__name__}: {e})", instances) from None
        self.image_dir = find_image_dir(self.root)
        self.instances_path = instances
        self.items: list[tuple[dict, int]] = []
        for r in refs:
            if int(r["ann_id"]) not in self.annotations or int(r["image_id"]) not in self.images:
                raise RVOSError(f"ref {r['ref_id']} names annotation {r['ann_id']} / image "
                                f"{r['image_id']} missing from instances.json", refs_path)
            check_component(self.images[int(r["image_id"])].get("file_name"),
                            f"image {r['image_id']}: file_name", instances)
            for k, sentence in enumerate(r["sentences"]):
                text = sentence.get("sent", sentence.get("raw", "")) if isinstance(sentence, dict) else str(sentence)
                if text.strip():
                    self.items.append((r, k))
        if max_samples and max_samples < len(self.items):
            keep = np.linspace(0, len(self.items) - 1, max_samples).round().astype(int)
            self.items = [self.items[i] for i in keep]
        self.dataset, self.split = dataset, split
        self.num_frames = num_frames
        self.train = train
        self.pseudo_motion = pseudo_motion
        self.seed, self.epoch = seed, 0
        self.transform = ClipTransform(input_size, train=train, hflip_prob=hflip_prob,
                                       scale_jitter=scale_jitter, color_jitter=color_jitter)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.items)

    def image_path(self, image_id: int) -> Path:
        """The image file of ``image_id`` (its checked ``file_name`` under the image folder)."""
        return safe_join(self.image_dir, self.images[image_id]["file_name"],
                         what="file_name", source=self.instances_path)

    def verify(self) -> None:
        """Check up front (``stat`` only) that the image of every sample is a non-empty file;
        raises RVOSError naming the first bad one and how many there are."""
        ids = dict.fromkeys(int(ref["image_id"]) for ref, _ in self.items)
        bad = [(self.image_path(i), p) for i in ids if (p := file_problem(self.image_path(i)))]
        if bad:
            path, problem = bad[0]
            raise RVOSError(f"{problem}; {len(bad)} of the COCO images the refs use are missing "
                            f"or empty", path)

    def load_image(self, image_id: int) -> np.ndarray:
        path = self.image_path(image_id)
        try:
            with Image.open(path) as im:
                return np.asarray(im.convert("RGB"))
        except FileNotFoundError:
            raise RVOSError("COCO image not found", path) from None
        except OSError as e:
            raise RVOSError(f"cannot read image ({e})", path) from None

    def __getitem__(self, index: int) -> ClipSample:
        ref, k = self.items[index]
        sentence = ref["sentences"][k]
        text = sentence.get("sent", sentence.get("raw", "")) if isinstance(sentence, dict) else str(sentence)
        image_id, ann_id = int(ref["image_id"]), int(ref["ann_id"])
        image = self.load_image(image_id)
        h, w = image.shape[:2]
        mask = annotation_mask(self.annotations[ann_id], h, w)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        frames, masks, text, flipped = self.transform(image[None], mask[None], text,
                                                      rng if self.train else None)
        frames = frames.repeat(self.num_frames, 1, 1, 1)
        masks = masks.repeat(self.num_frames, 1, 1)
        if self.train and self.pseudo_motion > 0 and self.num_frames > 1:
            frames, masks = translate_frames(frames, masks, self.pseudo_motion, rng)
        boxes, valid = masks_to_boxes_cxcywh(masks)
        meta = ClipMeta(video=f"coco_{image_id}", exp_id=f"{ref['ref_id']}_{k}",
                        frame_names=[f"{i:05d}" for i in range(self.num_frames)],
                        orig_size=(h, w), obj_ids=[ann_id], exp_type="image", flipped=flipped)
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
    """The training split of ``data_cfg.refcoco_dataset`` under ``data_cfg.refcoco_root``.

    Clips have ``num_frames`` frames, by default ``data_cfg.num_frames``: the length of the
    video clips they are mixed with in joint training (set data.num_frames=1 for image
    pre-training). Augmentations follow the video data's settings.
    """
    if not data_cfg.refcoco_root:
        raise RVOSError("data.refcoco_root is empty: set it to the folder holding "
                        f"{data_cfg.refcoco_dataset}/refs(...).p, instances.json and the COCO images")
    return ReferringImageDataset(
        data_cfg.refcoco_root, data_cfg.refcoco_dataset, "train", tuple(input_size),
        num_frames=num_frames or data_cfg.num_frames, train=train,
        hflip_prob=data_cfg.hflip_prob if train else 0.0,
        scale_jitter=data_cfg.scale_jitter if train else 0.0,
        color_jitter=data_cfg.color_jitter if train else 0.0,
        pseudo_motion=pseudo_motion if train else 0.0, seed=seed)
