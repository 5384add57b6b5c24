"""DAVIS-2017 semi-supervised / unsupervised evaluation and Ref-DAVIS17, scored like the
official davis2017-evaluation package (``davis2017/evaluation.py``, ``davis.py``,
``results.py``; see docs/metrics.md for every rule reproduced and every deviation).

Layouts: ground truth ``<gt>/<sequence>/<frame>.png`` label maps (DAVIS ``Annotations/480p``
or ``Annotations_unsupervised/480p``), predictions ``<pred>/<sequence>/<frame>.png`` label
maps with the same frame names. Ref-DAVIS17 predictions are either ReferFormer's
``<pred>/anno_<a>/<sequence>/<frame>.png`` label maps or per-expression binary masks
``<pred>/<sequence>/<exp_id>/<frame>.png`` (composed here into the four label-map runs).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

from rvos.data.palette import read_label_png
from rvos.errors import RVOSError
from rvos.paths import check_component
from rvos.metrics.davis import DEFAULT_BOUND_TH, jaccard_and_f, sequence_statistics

VOID_LABEL = 255
MAX_PROPOSALS = 20  # the official unsupervised limit on predicted ids per sequence
TASKS = ("semi-supervised", "unsupervised", "fixed-ids")
SUMMARY_KEYS = ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")


# ----------------------------------------------------------------------------- results


@dataclass
class ObjectScores:
    """Per-frame J and F of one ground-truth object of one sequence.

    ``object_id`` is the ground-truth id; ``pred_id`` the predicted id scored against it
    (the same id except in the unsupervised task, where it comes from the matching; 0 when
    the object was matched to an empty padding proposal).
    """

    sequence: str
    object_id: int
    pred_id: int
    j: np.ndarray  # (T,) float64
    f: np.ndarray  # (T,) float64

    def statistics(self) -> dict[str, float]:
        jm, jr, jd = sequence_statistics(self.j)
        fm, fr, fd = sequence_statistics(self.f)
        return {"J-Mean": jm, "J-Recall": jr, "J-Decay": jd, "F-Mean": fm, "F-Recall": fr, "F-Decay": fd}


@dataclass
class DavisResult:
    """All objects of all sequences of one run, and the global figures the official script
    prints: means over objects (pooled over sequences) of each per-object statistic."""

    task: str
    objects: list[ObjectScores] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        if not self.objects:
            return {k: float("nan") for k in SUMMARY_KEYS}
        stats = [o.statistics() for o in self.objects]
        out = {k: float(np.mean([s[k] for s in stats])) for k in SUMMARY_KEYS if k != "J&F-Mean"}
        out["J&F-Mean"] = (out["J-Mean"] + out["F-Mean"]) / 2.0
        return {k: out[k] for k in SUMMARY_KEYS}

    def per_object_rows(self) -> list[dict]:
        rows = []
        for o in self.objects:
            row = {"sequence": o.sequence, "object_id": o.object_id, "pred_id": o.pred_id,
                   "frames": int(len(o.j))}
            row.update(o.statistics())
            rows.append(row)
        return rows


# ----------------------------------------------------------------------------- reading


def list_sequences(gt_root: str | Path, sequences_file: str | Path | None = None) -> list[str]:
    """Sequence names: the lines of ``sequences_file`` (e.g. ``ImageSets/2017/val.txt``), or
    every sub-folder of ``gt_root`` holding PNGs, sorted."""
    gt_root = Path(gt_root)
    if not gt_root.is_dir():
        raise RVOSError("ground-truth folder not found", gt_root)
    if sequences_file is not None:
        path = Path(sequences_file)
        if not path.is_file():
            raise RVOSError("sequence list not found", path)
        names = [check_component(line.strip(), "sequence name", path)
                 for line in path.read_text().splitlines() if line.strip()]
        missing = [n for n in names if not (gt_root / n).is_dir()]
        if missing:
            raise RVOSError(f"no ground truth for sequences {missing[:10]}", gt_root)
        return names
    names = sorted(p.name for p in gt_root.iterdir() if p.is_dir() and any(p.glob("*.png")))
    if not names:
        raise RVOSError("no sequence folders with PNG annotations", gt_root)
    return names


def read_gt_sequence(folder: Path) -> tuple[np.ndarray, list[str], np.ndarray]:
    """All annotation PNGs of a sequence, sorted by name -> ((T, H, W) uint8 labels, frame
    names, (T, H, W) bool void mask). As the official loader does, void (255) pixels become
    background in the labels and are returned separately; the unsupervised task excludes
    them from J and F, the semi-supervised task ignores them."""
    files = sorted(folder.glob("*.png"))
    if not files:
        raise RVOSError("no annotation PNGs", folder)
    frames = [read_label_png(p) for p in files]
    shape = frames[0].shape
    for p, f in zip(files, frames):
        if f.shape != shape:
            raise RVOSError(f"annotation size {f.shape} differs from the sequence's first frame {shape}", p)
    labels = np.stack(frames)
    void = labels == VOID_LABEL
    labels[void] = 0
    return labels, [p.stem for p in files], void


def read_pred_sequence(folder: Path, frame_names: list[str], shape: tuple[int, int]) -> np.ndarray:
    """Predicted label maps for the given frames -> (T, H, W) uint8, with clear errors for a
    missing folder, a missing frame or a wrong size."""
    if not folder.is_dir():
        raise RVOSError("prediction folder for this sequence is missing", folder)
    out = np.zeros((len(frame_names), *shape), dtype=np.uint8)
    for t, name in enumerate(frame_names):
        path = folder / f"{name}.png"
        if not path.is_file():
            raise RVOSError(f"predicted frame missing (every ground-truth frame needs {name}.png)", path)
        labels = read_label_png(path)
        if labels.shape != tuple(shape):
            raise RVOSError(f"predicted mask is {labels.shape[1]}x{labels.shape[0]} (W x H), "
                            f"ground truth is {shape[1]}x{shape[0]}", path)
        out[t] = labels
    return out


# ----------------------------------------------------------------------------- scoring


def _object_masks(labels: np.ndarray, object_id: int) -> np.ndarray:
    return labels == object_id


def score_fixed_ids(sequence: str, gt: np.ndarray, pred: np.ndarray, n_objects: int,
                    bound_th: float = DEFAULT_BOUND_TH, void: np.ndarray | None = None) -> list[ObjectScores]:
    """Object k of the ground truth against id k of the prediction, k = 1..n_objects.

    Args: gt, pred: (T, H, W) label maps; void: optional (T, H, W) pixels excluded from J and
    F. Returns one ObjectScores per ground-truth object.
    """
    out = []
    for k in range(1, n_objects + 1):
        j, f = jaccard_and_f(_object_masks(gt, k), _object_masks(pred, k), void, bound_th)
        out.append(ObjectScores(sequence, k, k, j, f))
    return out


def score_unsupervised(sequence: str, gt: np.ndarray, pred: np.ndarray, n_objects: int,
                       max_proposals: int = MAX_PROPOSALS, bound_th: float = DEFAULT_BOUND_TH,
                       source: Path | None = None, void: np.ndarray | None = None) -> list[ObjectScores]:
    """The official unsupervised task: every predicted id 1..max(pred) is a proposal (fewer
    than the objects: padded with empty proposals); the cost of a (proposal, object) pair is
    the mean over frames of (J + F) / 2; the Hungarian assignment maximising the total picks
    one proposal per object; unmatched proposals are ignored.

    Args: gt, pred: (T, H, W) label maps; void: optional (T, H, W) ground-truth void pixels,
    excluded from J and F (the official task passes them). Returns one ObjectScores per
    ground-truth object, in ground-truth id order.
    """
    n_pred = int(pred.max()) if pred.size else 0
    if n_pred > max_proposals:
        raise RVOSError(f"prediction uses id {n_pred}, more than the {max_proposals} proposals "
                        f"the unsupervised task allows", source)
    n_rows = max(n_pred, n_objects)
    n_frames = gt.shape[0]
    j_all = np.zeros((n_rows, n_objects, n_frames))
    f_all = np.zeros((n_rows, n_objects, n_frames))
    empty = np.zeros_like(gt, dtype=bool)
    for i in range(n_objects):
        gt_i = _object_masks(gt, i + 1)
        for r in range(n_rows):
            pred_r = _object_masks(pred, r + 1) if r < n_pred else empty
            j_all[r, i], f_all[r, i] = jaccard_and_f(gt_i, pred_r, void, bound_th)
    cost = (np.mean(j_all, axis=2) + np.mean(f_all, axis=2)) / 2
    rows, cols = linear_sum_assignment(-cost)
    by_object = {int(c): int(r) for r, c in zip(rows, cols)}
    out = []
    for i in range(n_objects):
        r = by_object[i]
        out.append(ObjectScores(sequence, i + 1, r + 1 if r < n_pred else 0, j_all[r, i], f_all[r, i]))
    return out


def evaluate_davis(gt_root: str | Path, pred_root: str | Path, task: str = "semi-supervised",
                   sequences: list[str] | None = None, bound_th: float = DEFAULT_BOUND_TH,
                   max_proposals: int = MAX_PROPOSALS) -> DavisResult:
    """Score a folder of predicted label maps against DAVIS-2017 ground truth.

    task "semi-supervised": the first and last frames are not scored, predicted ids must be
    the ground-truth ids, void pixels count as background. "unsupervised": all frames,
    Hungarian matching of predicted ids to objects, void pixels excluded. "fixed-ids": all
    frames, void excluded, no matching (a diagnostic, used by strict Ref-DAVIS17).
    Objects of a sequence are the ids 1..max of its first ground-truth frame.
    """
    if task not in TASKS:
        raise RVOSError(f"unknown DAVIS task {task!r}; choose one of {TASKS}")
    gt_root, pred_root = Path(gt_root), Path(pred_root)
    if not pred_root.is_dir():
        raise RVOSError("prediction folder not found", pred_root)
    result = DavisResult(task)
    for seq in sequences if sequences is not None else list_sequences(gt_root):
        gt, frames, void = read_gt_sequence(gt_root / seq)
        n_objects = int(gt[0].max())
        if task == "semi-supervised":
            gt, frames, void = gt[1:-1], frames[1:-1], None
        pred = read_pred_sequence(pred_root / seq, frames, gt.shape[1:])
        if task == "unsupervised":
            result.objects += score_unsupervised(seq, gt, pred, n_objects, max_proposals, bound_th,
                                                 source=pred_root / seq, void=void)
            continue
        n_pred = int(pred.max()) if pred.size else 0
        if n_pred > n_objects:
            t = int(np.flatnonzero((pred == n_pred).any(axis=(1, 2)))[0])
            raise RVOSError(f"predicted id {n_pred} but the sequence has {n_objects} objects "
                            f"(ids 1..{n_objects})", pred_root / seq / f"{frames[t]}.png")
        if n_pred < n_objects:
            result.warnings.append(
                f"{seq}: prediction never uses ids {n_pred + 1}..{n_objects}; scored as empty masks "
                f"(as the official script pads them)")
        result.objects += score_fixed_ids(seq, gt, pred, n_objects, bound_th, void)
    return result


# ----------------------------------------------------------------------------- Ref-DAVIS17

N_EXPRESSION_SETS = 4
EXPRESSION_SET_NAMES = ("annotator1-first-frame", "annotator1-full-video",
                        "annotator2-first-frame", "annotator2-full-video")


def load_meta_expressions(path: str | Path) -> dict:
    """The ``videos`` dict of a (Ref-YouTube-VOS-style) meta_expressions.json."""
    path = Path(path)
    if path.is_dir():
        path = path / "meta_expressions.json"
    if not path.is_file():
        raise RVOSError("meta_expressions.json not found", path)
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RVOSError(f"not valid JSON ({e})", path) from None
    if not isinstance(meta, dict) or not isinstance(meta.get("videos"), dict):
        raise RVOSError('expected {"videos": {video: {"frames": [...], "expressions": {...}}}}', path)
    check_meta_names(meta["videos"], path)
    return meta["videos"]


def check_meta_names(videos: dict, path: str | Path) -> None:
    """Check that every video id, expression id and frame name of a meta_expressions
    ``videos`` dict is one safe path component (they name prediction folders, files and zip
    entries); a bad one is an RVOSError naming ``path``."""
    for video, entry in videos.items():
        check_component(video, "video id", path)
        if not isinstance(entry, dict):
            raise RVOSError(f"video {video!r}: expected an object", path)
        frames = entry.get("frames", [])
        expressions = entry.get("expressions", {})
        if not isinstance(frames, list) or not isinstance(expressions, dict):
            raise RVOSError(f'video {video!r}: "frames" must be a list and "expressions" a mapping',
                            path)
        for frame in frames:
            check_component(frame, f"video {video!r}: frame name", path)
        for exp_id in expressions:
            check_component(exp_id, f"video {video!r}: expression id", path)


def ref_davis_expression_sets(videos: dict) -> dict[str, list[tuple[int, str, int]]]:
    """Per video, the expressions of each set: exp id e belongs to set e % 4 and object index
    e // 4 (Ref-DAVIS17 order: annotator 1 first-frame, annotator 1 full-video, annotator 2
    first-frame, annotator 2 full-video). Returns {video: [(set, exp_id, label), ...]} where
    label is the object's DAVIS id (``obj_id``; object index + 1 when absent)."""
    out = {}
    for video, entry in videos.items():
        items = []
        for exp_id, exp in entry.get("expressions", {}).items():
            try:
                e = int(exp_id)
            except ValueError:
                raise RVOSError(f"Ref-DAVIS17 expression ids must be integers 4*o + a, got {exp_id!r} "
                                f"in video {video}") from None
            label = int(exp.get("obj_id", e // N_EXPRESSION_SETS + 1))
            items.append((e % N_EXPRESSION_SETS, exp_id, label))
        out[video] = items
    return out


def compose_expression_set(pred_root: Path, video: str, items: list[tuple[int, str, int]],
                           expression_set: int, frames: list[str], shape: tuple[int, int]) -> np.ndarray:
    """Label maps (T, H, W) of one expression set from per-expression binary masks
    ``<pred_root>/<video>/<exp_id>/<frame>.png``; where masks overlap the lowest label wins
    (what ReferFormer's argmax gives for equally confident objects)."""
    labels = np.zeros((len(frames), *shape), dtype=np.uint8)
    for _, exp_id, label in sorted((it for it in items if it[0] == expression_set), key=lambda it: -it[2]):
        masks = read_pred_sequence(pred_root / video / exp_id, frames, shape) > 0
        labels[masks] = label
    return labels


@dataclass
class RefDavisResult:
    """The four expression-set runs and their mean (the figure papers quote)."""

    runs: dict[str, DavisResult]
    strict_runs: dict[str, DavisResult] = field(default_factory=dict)

    def summary(self) -> dict:
        per_run = {name: r.summary() for name, r in self.runs.items()}
        mean = {k: float(np.mean([s[k] for s in per_run.values()])) for k in SUMMARY_KEYS}
        out = {"mean_over_runs": mean, "runs": per_run}
        if self.strict_runs:
            strict = {name: r.summary() for name, r in self.strict_runs.items()}
            out["strict_fixed_ids"] = {
                "mean_over_runs": {k: float(np.mean([s[k] for s in strict.values()])) for k in SUMMARY_KEYS},
                "runs": strict}
        return out


def evaluate_ref_davis(gt_root: str | Path, pred_root: str | Path, meta_path: str | Path | None = None,
                       strict: bool = False, bound_th: float = DEFAULT_BOUND_TH,
                       sequences: list[str] | None = None) -> RefDavisResult:
    """Ref-DAVIS17: each of the four expression sets is one unsupervised-task run over all
    frames (as ReferFormer's ``eval_davis.py``); ``strict`` adds fixed-id runs (no matching).

    Predictions: ``<pred>/anno_<a>/<video>/<frame>.png`` label maps, or per-expression binary
    masks ``<pred>/<video>/<exp_id>/<frame>.png`` together with ``meta_path``.
    """
    gt_root, pred_root = Path(gt_root), Path(pred_root)
    if not pred_root.is_dir():
        raise RVOSError("prediction folder not found", pred_root)
    seqs = sequences if sequences is not None else list_sequences(gt_root)
    run_names = [f"anno_{a}" for a in range(N_EXPRESSION_SETS)]
    tasks = ["unsupervised"] + (["fixed-ids"] if strict else [])
    results = {task: {name: DavisResult(task) for name in run_names} for task in tasks}
    folder_layout = all((pred_root / name).is_dir() for name in run_names)
    sets = None
    if not folder_layout:
        if meta_path is None:
            raise RVOSError("expected anno_0..anno_3 folders of label maps, or per-expression masks "
                            "with --meta meta_expressions.json", pred_root)
        sets = ref_davis_expression_sets(load_meta_expressions(meta_path))
    for seq in seqs:
        gt, frames, void = read_gt_sequence(gt_root / seq)
        n_objects = int(gt[0].max())
        for a, name in enumerate(run_names):
            if folder_layout:
                pred = read_pred_sequence(pred_root / name / seq, frames, gt.shape[1:])
            else:
                if seq not in sets:
                    raise RVOSError(f"video {seq} has no expressions in the meta file", meta_path)
                pred = compose_expression_set(pred_root, seq, sets[seq], a, frames, gt.shape[1:])
            source = pred_root / name / seq if folder_layout else pred_root / seq
            results["unsupervised"][name].objects += score_unsupervised(
                seq, gt, pred, n_objects, MAX_PROPOSALS, bound_th, source=source, void=void)
            if strict:
                results["fixed-ids"][name].objects += score_fixed_ids(seq, gt, pred, n_objects,
                                                                      bound_th, void)
    return RefDavisResult(results["unsupervised"], results.get("fixed-ids", {}))
