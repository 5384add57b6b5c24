"""An on-disk, memory-mapped cache of frozen-backbone features for every frame of a split.

With a frozen backbone, a frame's multi-scale features never change during training, so
they are computed once and read back from memory-mapped ``.npy`` files: a training step
then touches only the trainable parts of a model. The cache is keyed by everything its
contents depend on:

* the data: every frame file of the split (name, size, modification time) and every mask;
* the backbone: its name and a digest of its weights (the tensors, not the file name);
* the transform: input size, normalisation, and the augmentation variants kept (the
  horizontal flip).

A cache is built in ``<root>/<key>.partial-<pid>`` and renamed to ``<root>/<key>`` when
complete; its ``manifest.json`` (written last, inside the folder) records the key, the
shape and the BLAKE2 digest of every array. On opening, a cache whose manifest is missing,
of another key, or whose arrays are truncated or do not match their digests is rebuilt
(with a warning naming the file), so a stale or damaged cache is never used silently.

Layout of one cache folder::

    manifest.json          key, key inputs, arrays {name: {shape, dtype, blake2b}}, index
    feat_s4.npy ...        (N, C_i, H/s_i, W/s_i) float16 backbone maps, N frames of the split
    frames.npy             (N, H, W, 3) uint8 frames at the input size
    labels.npy             (N, H, W) uint8 object ids at the input size (when annotated)
    flip_feat_s4.npy ...   the same maps for the horizontally flipped frames (flip variant)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from rvos.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize, resize_frames, resize_masks
from rvos.errors import RVOSError

CACHE_FORMAT = 1
# How frames and labels reach the input size (rvos.data.transforms.resize_frames / resize_masks);
# part of the cache key, so caches made by an earlier resize are rebuilt.
RESIZE = "bilinear-antialias-uint8+nearest-exact"
MANIFEST = "manifest.json"


def weights_digest(module: nn.Module) -> str:
    """A digest of a module's parameters and buffers (names, shapes and values)."""
    h = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def file_digest(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class VideoSpan:
    """Frames ``start .. start + count - 1`` of the cache belong to ``video``."""

    video: str
    start: int
    count: int
    frames: list[str]


class FeatureCache:
    """Read access to a complete cache folder (see the module docstring).

    ``maps[i]`` / ``flip_maps[i]``: (N, C_i, h_i, w_i) float16 memory maps, finest first;
    ``frames``: (N, H, W, 3) uint8; ``labels``: (N, H, W) uint8 or None; ``videos``:
    {video: :class:`VideoSpan`}.
    """

    def __init__(self, folder: Path, manifest: dict):
        self.folder = folder
        self.manifest = manifest
        self.strides: list[int] = list(manifest["strides"])
        load = lambda name: np.load(folder / f"{name}.npy", mmap_mode="r")  # noqa: E731
        self.maps = [load(f"feat_s{s}") for s in self.strides]
        self.flip_maps = ([load(f"flip_feat_s{s}") for s in self.strides]
                          if manifest["key_inputs"]["transform"]["flip"] else None)
        self.frames = load("frames")
        self.labels = load("labels") if "labels" in manifest["arrays"] else None
        self.videos = {v: VideoSpan(v, s, c, f) for v, s, c, f in manifest["index"]}

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    def features(self, rows: np.ndarray | list[int], flip: bool = False) -> list[torch.Tensor]:
        """float32 maps [(n, C_i, h_i, w_i)] of the given frame rows (flip: of the flipped
        frames)."""
        maps = self.flip_maps if flip else self.maps
        if maps is None:
            raise RVOSError("this cache holds no flip variant", self.folder)
        rows = np.asarray(rows)
        return [torch.from_numpy(np.ascontiguousarray(m[rows])).float() for m in maps]


# --------------------------------------------------------------------------- keys


def data_fingerprint(layout) -> dict:
    """What the split's files look like: per video, its frames (name, size, mtime) and its
    masks; a changed, added or removed file changes the fingerprint."""
    h = hashlib.blake2b(digest_size=16)
    frames = 0
    for video, record in sorted(layout.videos.items()):
        h.update(f"V{video}".encode())
        for name in record.frames:
            for path in (layout.frame_path(video, name), layout.mask_path(video, name)):
                try:
                    st = path.stat()
                    h.update(f"{path.name}:{st.st_size}:{st.st_mtime_ns};".encode())
                except FileNotFoundError:
                    h.update(f"{path.name}:missing;".encode())
            frames += 1
    return {"split_dir": str(layout.split_dir.resolve()), "frames": frames, "files": h.hexdigest()}


def cache_key(key_inputs: dict) -> str:
    text = json.dumps(key_inputs, sort_keys=True)
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


# --------------------------------------------------------------------------- open / build


def backbone_forward(backbone: nn.Module, x: torch.Tensor, dtype: str = "float32") -> list[torch.Tensor]:
    """The frozen backbone on normalised frames (N, 3, H, W), in channels-last memory and,
    with ``dtype="bfloat16"``, under bfloat16 autocast (about 2.5x faster on CPUs with
    AVX512-BF16); maps returned as float32. The cache and the model both call this, so
    cached features are the ones inference computes."""
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
        maps = backbone(x)
    return [m.float().contiguous() for m in maps]


def open_or_build(root: str | Path, layout, backbone: nn.Module, backbone_name: str,
                  input_size: tuple[int, int], flip: bool = False, batch_frames: int = 32,
                  progress: bool = True, verify: bool = True,
                  dtype: str = "float32") -> FeatureCache:
    """The cache of ``layout``'s frames under ``root`` for this backbone and transform
    (``dtype``: the backbone's compute type, see :func:`backbone_forward`): opened when a
    complete, matching, intact one exists, else (re)built."""
    root = Path(root)
    key_inputs = {
        "format": CACHE_FORMAT,
        "data": data_fingerprint(layout),
        "backbone": {"name": backbone_name, "weights": weights_digest(backbone), "dtype": dtype},
        "transform": {"input_size": list(input_size), "mean": list(IMAGENET_MEAN),
                      "std": list(IMAGENET_STD), "resize": RESIZE, "flip": bool(flip),
                      "dtype": "float16"},
    }
    key = cache_key(key_inputs)
    # one path component whatever the split is called, so nothing outside ``root`` is touched
    folder = root / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', layout.split)}-{key}"
    if folder.is_dir():
        problem = check_cache(folder, key, verify)
        if problem is None:
            return FeatureCache(folder, json.loads((folder / MANIFEST).read_text()))
        warnings.warn(f"feature cache {problem}; rebuilding it", stacklevel=2)
        shutil.rmtree(folder)
    _remove_stale_partials(root)
    return build_cache(folder, key, key_inputs, layout, backbone, input_size, flip,
                       batch_frames, progress, dtype)


def check_cache(folder: Path, key: str, verify: bool = True) -> str | None:
    """None when ``folder`` is a complete cache of ``key`` whose arrays are intact; else
    what is wrong with it, naming the file."""
    manifest_path = folder / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        return f"{manifest_path} is missing (an interrupted build?)"
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        return f"{manifest_path} is unreadable ({type(e).__name__})"
    if manifest.get("key") != key or manifest.get("format") != CACHE_FORMAT:
        return f"{manifest_path} belongs to other data, weights or transform"
    for name, info in manifest.get("arrays", {}).items():
        path = folder / f"{name}.npy"
        try:
            array = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as e:
            return f"{path} is truncated or corrupt ({type(e).__name__}: {e})"
        if list(array.shape) != info["shape"] or str(array.dtype) != info["dtype"]:
            return f"{path} has shape {list(array.shape)}, the manifest says {info['shape']}"
        if verify and file_digest(path) != info["blake2b"]:
            return f"{path} does not match its digest (corrupt)"
    return None


_PARTIAL = re.compile(r".+-[0-9a-f]{24}\.partial-(\d+)")


def _remove_stale_partials(root: Path) -> None:
    """Remove the ``<split>-<key>.partial-<pid>`` folders of builds whose process is gone
    (killed builds of any key); nothing else in ``root`` is touched."""
    if not root.is_dir():
        return
    for path in root.iterdir():
        match = _PARTIAL.fullmatch(path.name)
        if not match or not path.is_dir():
            continue
        pid = int(match.group(1))
        try:
            os.kill(pid, 0)
            alive = pid != os.getpid()
        except ProcessLookupError:
            alive = False
        except PermissionError:          # another user's live process
            alive = True
        if not alive:
            shutil.rmtree(path, ignore_errors=True)


@torch.inference_mode()
def build_cache(folder: Path, key: str, key_inputs: dict, layout, backbone: nn.Module,
                input_size: tuple[int, int], flip: bool, batch_frames: int,
                progress: bool, dtype: str = "float32") -> FeatureCache:
    """Compute and write the cache of every frame of ``layout`` (see :func:`open_or_build`)."""
    partial = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    try:
        partial.mkdir(parents=True, exist_ok=False)
    except FileExistsError:
        shutil.rmtree(partial)
        partial.mkdir(parents=True)
    except OSError as e:
        raise RVOSError(f"cannot create the feature cache folder ({e.strerror or e})",
                        folder.parent) from None
    try:
        cache = _write_arrays(partial, key, key_inputs, layout, backbone, input_size, flip,
                              batch_frames, progress, dtype)
        os.replace(partial, folder)
    except OSError as e:
        shutil.rmtree(partial, ignore_errors=True)
        raise RVOSError(f"cannot write the feature cache ({e.strerror or e})", partial) from None
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return FeatureCache(folder, cache)


def _write_arrays(out: Path, key: str, key_inputs: dict, layout, backbone: nn.Module,
                  input_size: tuple[int, int], flip: bool, batch_frames: int,
                  progress: bool, dtype: str) -> dict:
    backbone = backbone.eval()
    device = next(backbone.parameters()).device
    videos = sorted(layout.videos.items())
    total = sum(len(r.frames) for _, r in videos)
    h, w = input_size
    annotated = layout.has_annotations
    probe = backbone_forward(backbone, torch.zeros(1, 3, h, w, device=device), dtype)
    strides = list(getattr(backbone, "strides", [h // m.shape[-2] for m in probe]))
    arrays: dict[str, np.ndarray] = {}

    def create(name: str, shape: tuple, dtype) -> np.ndarray:
        arrays[name] = np.lib.format.open_memmap(out / f"{name}.npy", mode="w+", dtype=dtype,
                                                 shape=shape)
        return arrays[name]

    maps = [create(f"feat_s{s}", (total, *m.shape[1:]), np.float16) for s, m in zip(strides, probe)]
    flip_maps = ([create(f"flip_feat_s{s}", (total, *m.shape[1:]), np.float16)
                  for s, m in zip(strides, probe)] if flip else [])
    frames_out = create("frames", (total, h, w, 3), np.uint8)
    labels_out = create("labels", (total, h, w), np.uint8) if annotated else None

    index, row = [], 0
    pending: list[tuple[int, np.ndarray]] = []

    def flush() -> None:
        if not pending:
            return
        start = pending[0][0]
        batch = torch.cat([torch.from_numpy(f) for _, f in pending]).to(device)
        x = normalize(batch)
        for target, fmap in zip(maps, backbone_forward(backbone, x, dtype)):
            target[start:start + len(batch)] = fmap.cpu().numpy().astype(np.float16)
        if flip:
            for target, fmap in zip(flip_maps, backbone_forward(backbone, x.flip(-1), dtype)):
                target[start:start + len(batch)] = fmap.cpu().numpy().astype(np.float16)
        pending.clear()

    bar = tqdm(total=total, desc=f"feature cache {layout.split}", unit="frame", disable=not progress)
    for video, record in videos:
        images, labels = layout.load_clip(video, record.frames)
        resized = resize_frames(images, input_size)                        # (T, 3, h, w) uint8
        frames_out[row:row + len(resized)] = resized.permute(0, 2, 3, 1).numpy()
        x = resized.float().div_(255.0)       # the features see exactly the frames stored
        if labels_out is not None:
            labels_out[row:row + len(x)] = resize_masks(labels, (h, w)).numpy()
        index.append([video, row, len(x), list(record.frames)])
        for i in range(0, len(x), batch_frames):
            pending.append((row + i, x[i:i + batch_frames].numpy()))
            if sum(len(p) for _, p in pending) >= batch_frames:
                flush()
        row += len(x)
        bar.update(len(x))
    flush()
    bar.close()
    for name, array in arrays.items():
        array.flush()
        with open(out / f"{name}.npy", "rb") as f:
            os.fsync(f.fileno())
    manifest = {"format": CACHE_FORMAT, "key": key, "key_inputs": key_inputs,
                "strides": strides, "input_size": [h, w],
                "arrays": {name: {"shape": list(a.shape), "dtype": str(a.dtype),
                                  "blake2b": file_digest(out / f"{name}.npy")}
                           for name, a in arrays.items()},
                "index": index}
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest))
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    tmp.replace(out / MANIFEST)
    return manifest
