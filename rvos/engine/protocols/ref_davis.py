"""Ref-DAVIS17 from the official files: DAVIS-2017 + the four Ref-DAVIS17 expression files
-> the four expression-set runs scored as the papers do, and their mean.

Input (``--data`` the DAVIS folder, or the folder holding ``DAVIS/``; ``--expressions`` the
folder of the four ``Davis17_annot*.txt`` files or a meta_expressions.json, by default
``davis_text_annotations/`` beside ``DAVIS/``; ``--split val``)::

    DAVIS/JPEGImages/480p/<sequence>/<frame>.jpg
    DAVIS/Annotations_unsupervised/480p/<sequence>/<frame>.png   (else Annotations/480p)
    DAVIS/ImageSets/2017/val.txt

The protocol, as ReferFormer runs it (``inference_davis.py``, ``scripts/dist_test_davis.sh``,
``eval_davis.py``), a model trained on Ref-YouTube-VOS, not fine-tuned:

* expression ids are 4k + a (object k of the sequence, set a = annotator 1 first-frame,
  annotator 1 full-video, annotator 2 first-frame, annotator 2 full-video; see
  :mod:`rvos.data.davis`); every sentence of a sequence is segmented over all its frames
  (clips of 36 frames in ReferFormer; here the Predictor's window, 36 for a converted
  ReferFormer checkpoint that would otherwise take the whole video);
* for each set a, the objects' probability maps become one label map per frame: a
  probability below the threshold (0.5) counts as 0, the background scores 0.1, and each
  pixel takes the argmax (the most confident object wins where masks overlap; ties go to the
  first object). Label = the object's DAVIS id (ReferFormer writes k + 1; the same ids when
  they run 1..n, and the unsupervised matching below makes the numbering irrelevant);
* each set's label maps, palette PNGs ``predictions/anno_<a>/<sequence>/<frame>.png`` (the
  DAVIS results layout), are scored with the official DAVIS-2017 unsupervised task over
  every frame (davis2017-evaluation ``davis2017/evaluation.py`` with ``task="unsupervised"``,
  ground truth ``Annotations_unsupervised/480p``, which is what that task reads): per
  object J and F, Hungarian matching of predicted ids to ground-truth objects,
  :func:`rvos.metrics.davis_protocols.evaluate_ref_davis`;
* the figure papers quote is the mean of the four runs' J&F (and of J, F).

Each sequence's frames go through the model once for all its sentences (the Predictor
takes several sentences at a time; a sentence repeated across sets is segmented once).
"""

from __future__ import annotations

import copy
import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from rvos.config import Config
from rvos.data.davis import IMAGESET_NAMES, davis_base, read_expressions
from rvos.data.palette import write_label_png
from rvos.engine.protocols import EvaluationRequest, ProtocolReport
from rvos.errors import RVOSError
from rvos.inference import WHOLE_VIDEO, Predictor
from rvos.metrics.cli import format_table
from rvos.metrics.davis import DEFAULT_BOUND_TH
from rvos.metrics.davis_protocols import (EXPRESSION_SET_NAMES, N_EXPRESSION_SETS, RefDavisResult,
                                          evaluate_ref_davis, list_sequences,
                                          ref_davis_expression_sets)
from rvos.outputs_dir import write_file_atomic

OUTPUTS = ("metrics.json", "per_object.csv", "results.txt", "predictions")
RESOLUTION = "480p"
CLIP_FRAMES = 36          # ReferFormer inference_davis.py: clips of 36 frames
BACKGROUND_SCORE = 0.1    # ReferFormer inference_davis.py: the background's constant score


@dataclass
class ExpressionSet:
    """The sentences of one set (one annotator, one kind) of a sequence, one per object."""

    labels: list[int]          # DAVIS object ids, in expression-id order
    sentences: list[str]


@dataclass
class DavisSequence:
    name: str
    frame_dir: Path            # JPEGImages/480p/<name>
    frames: list[str]          # frame stems, sorted (every ground-truth frame among them)
    size: tuple[int, int]      # (H, W) of the ground truth
    sets: list[ExpressionSet]  # N_EXPRESSION_SETS of them

    def sentences(self) -> list[str]:
        """Every distinct sentence of the four sets, in order of first use."""
        return list(dict.fromkeys(s for es in self.sets for s in es.sentences))


@dataclass
class RefDavisSplit:
    """The official files of one Ref-DAVIS17 split, checked."""

    base: Path                 # the DAVIS folder
    gt_root: Path              # Annotations_unsupervised/480p (else Annotations/480p)
    imageset: Path             # ImageSets/2017/<split>.txt
    expressions: Path          # the text-file folder or the meta_expressions.json
    sequences: list[DavisSequence]


# ----------------------------------------------------------------------------- reading
def find_expressions(root: Path, base: Path, given: str | Path | None) -> Path:
    """``--expressions``, or ``davis_text_annotations/`` in ``--data`` or beside ``DAVIS/``."""
    if given:
        return Path(given).expanduser()
    candidates = [root / "davis_text_annotations", base.parent / "davis_text_annotations"]
    for path in candidates:
        if path.is_dir():
            return path
    raise RVOSError("Ref-DAVIS17 expressions not found: give --expressions (the folder of the "
                    "four Davis17_annot*.txt files, or a meta_expressions.json)", candidates[-1])


def ground_truth_root(base: Path) -> Path:
    """``Annotations_unsupervised/480p``, what the official unsupervised task reads, or
    ``Annotations/480p`` when only the semi-supervised masks are there."""
    for folder in ("Annotations_unsupervised", "Annotations"):
        if (base / folder / RESOLUTION).is_dir():
            return base / folder / RESOLUTION
    raise RVOSError(f"no Annotations_unsupervised/{RESOLUTION} nor Annotations/{RESOLUTION} folder "
                    "(download DAVIS-2017-Unsupervised-trainval-480p.zip)", base)


def expression_sets(sequence: str, expressions: dict[str, dict], source: Path) -> list[ExpressionSet]:
    """{exp_id: {"exp", "obj_id"}} of one sequence -> the four sets (ids 4k + a)."""
    items = ref_davis_expression_sets({sequence: {"expressions": expressions}})[sequence]
    sets = [ExpressionSet([], []) for _ in range(N_EXPRESSION_SETS)]
    for a, exp_id, label in sorted(items, key=lambda it: int(it[1])):
        sets[a].labels.append(label)
        sets[a].sentences.append(expressions[exp_id]["exp"])
    empty = [EXPRESSION_SET_NAMES[a] for a, s in enumerate(sets) if not s.labels]
    if empty:
        raise RVOSError(f"sequence {sequence}: no sentence in expression set(s) {', '.join(empty)}",
                        source)
    return sets


def _sequence_frames(frame_dir: Path, gt_dir: Path) -> tuple[list[str], tuple[int, int]]:
    """Frame stems of ``frame_dir`` and the (H, W) of the ground truth; every annotated frame
    must have its JPEG."""
    if not frame_dir.is_dir():
        raise RVOSError("frame folder not found", frame_dir)
    frames = sorted(p.stem for p in frame_dir.glob("*.jpg"))
    annotated = sorted(p for p in gt_dir.glob("*.png"))
    if not annotated:
        raise RVOSError("no annotation PNGs", gt_dir)
    on_disk = set(frames)
    missing = [p.stem for p in annotated if p.stem not in on_disk]
    if missing:
        raise RVOSError(f"frame not found ({len(missing)} annotated frame(s) of the sequence have "
                        f"no JPEG)", frame_dir / f"{missing[0]}.jpg")
    try:
        with Image.open(annotated[0]) as img:
            width, height = img.size
    except Exception as e:
        raise RVOSError(f"cannot read annotation PNG ({type(e).__name__}: {e})", annotated[0]) from None
    return frames, (height, width)


def open_split(root: str | Path, split: str, expressions: str | Path | None = None) -> RefDavisSplit:
    """Check the official files of ``split`` and read its sequences and sentences."""
    root = Path(root).expanduser()
    base = davis_base(root)
    imageset = base / "ImageSets" / "2017" / f"{IMAGESET_NAMES.get(split, split)}.txt"
    if not imageset.is_file():
        raise RVOSError(f"image set of split {split!r} not found (Ref-DAVIS17 is evaluated on "
                        f"--split val)", imageset)
    gt_root = ground_truth_root(base)
    source = find_expressions(root, base, expressions)
    all_expressions = read_expressions(source)
    sequences = []
    for name in list_sequences(gt_root, imageset):
        if name not in all_expressions:
            raise RVOSError(f"sequence {name} of {imageset} has no expressions", source)
        frame_dir = base / "JPEGImages" / RESOLUTION / name
        frames, size = _sequence_frames(frame_dir, gt_root / name)
        sequences.append(DavisSequence(name, frame_dir, frames, size,
                                       expression_sets(name, all_expressions[name], source)))
    return RefDavisSplit(base, gt_root, imageset, source, sequences)


def _read_frames(sequence: DavisSequence) -> Iterator[tuple[str, np.ndarray]]:
    """(frame stem, (H, W, 3) uint8), one at a time; the size must be the ground truth's."""
    for name in sequence.frames:
        path = sequence.frame_dir / f"{name}.jpg"
        try:
            with Image.open(path) as img:
                frame = np.asarray(img.convert("RGB"))
        except Exception as e:
            raise RVOSError(f"cannot read frame ({type(e).__name__}: {e})", path) from None
        if frame.shape[:2] != sequence.size:
            raise RVOSError(f"frame size {frame.shape[1]}x{frame.shape[0]} differs from the "
                            f"annotations' {sequence.size[1]}x{sequence.size[0]}", path)
        yield name, frame


# ----------------------------------------------------------------------------- predicting
def merge_objects(probs: np.ndarray, labels: list[int], threshold: float = 0.5) -> np.ndarray:
    """One frame's label map from the objects of one expression set, as ReferFormer's
    ``inference_davis.py`` does: probabilities below ``threshold`` become 0, the background
    scores 0.1, each pixel takes the argmax (ties: the earlier object).

    probs: (N, H, W) float, one map per object in set order; labels: their N ids.
    Returns (H, W) uint8 label map (0 = background).
    """
    scores = np.where(probs >= threshold, probs, 0.0)
    background = np.full((1, *probs.shape[1:]), BACKGROUND_SCORE, dtype=scores.dtype)
    winner = np.argmax(np.concatenate([background, scores]), axis=0)     # 0 = background
    lut = np.asarray([0, *labels], dtype=np.uint8)
    return lut[winner]


def davis_predictor(request: EvaluationRequest) -> Predictor:
    """The request's Predictor; one that would take the whole video as one clip (a converted
    ReferFormer checkpoint without --window) gets ReferFormer's 36-frame clips instead."""
    predictor = request.predictor
    if getattr(request.options, "window", None) or predictor.window != WHOLE_VIDEO:
        return predictor
    clipped = copy.copy(predictor)
    clipped.window = CLIP_FRAMES
    return clipped


def predict_sequence(predictor: Predictor, sequence: DavisSequence, pred_root: Path,
                     threshold: float) -> None:
    """Segment every sentence of ``sequence`` in one pass over its frames and write each
    set's label maps ``<pred_root>/anno_<a>/<sequence>/<frame>.png`` (palette PNGs)."""
    texts = sequence.sentences()
    column = {text: k for k, text in enumerate(texts)}
    rows = [[column[s] for s in es.sentences] for es in sequence.sets]
    for pred in predictor.predict(_read_frames(sequence), texts):             # probs (K, H, W)
        for a, (es, idx) in enumerate(zip(sequence.sets, rows)):
            write_label_png(pred_root / f"anno_{a}" / sequence.name / f"{pred.name}.png",
                            merge_objects(pred.probs[idx], es.labels, threshold))


# ----------------------------------------------------------------------------- reporting
def report_dict(data: RefDavisSplit, split: str, result: RefDavisResult, partial: bool) -> dict:
    """metrics.json: the four runs, their mean, and what was scored against what."""
    n_objects = sum(len(es.labels) for s in data.sequences for es in s.sets)
    return {"benchmark": "ref-davis", "split": split,
            "protocol": "DAVIS-2017 unsupervised task over every frame, one run per expression "
                        "set; the figure papers quote is mean_over_runs J&F-Mean",
            "ground_truth": str(data.gt_root), "expressions": str(data.expressions),
            "sequences": len(data.sequences), "sentences": n_objects, "partial": partial,
            "expression_sets": dict(zip((f"anno_{a}" for a in range(N_EXPRESSION_SETS)),
                                        EXPRESSION_SET_NAMES)),
            **result.summary()}


def per_object_csv(result: RefDavisResult) -> str:
    rows = [{"mode": mode, "run": name, **row}
            for mode, runs in (("unsupervised", result.runs), ("fixed-ids", result.strict_runs))
            for name, run in runs.items() for row in run.per_object_rows()]
    out = io.StringIO(newline="")
    if rows:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out.getvalue()


def results_table(summary: dict, partial: bool) -> str:
    rows = [(f"{name} ({label})", s)
            for (name, s), label in zip(summary["runs"].items(), EXPRESSION_SET_NAMES)]
    rows.append(("mean of the 4 runs", summary["mean_over_runs"]))
    if "strict_fixed_ids" in summary:
        rows.append(("strict fixed ids: mean", summary["strict_fixed_ids"]["mean_over_runs"]))
    table = format_table("Ref-DAVIS17 (unsupervised protocol)", rows)
    return table + ("\npartial: only the first --max-samples sequences" if partial else "")


def evaluate(request: EvaluationRequest) -> ProtocolReport:
    """predictions/anno_<a>/<sequence>/<frame>.png for the four sets, metrics.json (the four
    runs and their mean), per_object.csv, results.txt. ``max_samples`` > 0: only the first
    that many sequences (a partial, non-comparable figure)."""
    if len(request.splits) != 1:
        raise RVOSError(f"--dataset ref-davis scores one split (val), got {request.splits}")
    split = request.splits[0]
    data = open_split(request.root, split, getattr(request.options, "expressions", None))
    sequences = data.sequences[:request.max_samples] if request.max_samples > 0 else data.sequences
    partial = len(sequences) < len(data.sequences)
    predictor = davis_predictor(request)
    pred_root = request.stage / "predictions"
    for sequence in tqdm(sequences, desc=f"ref-davis {split}", unit="seq",
                         disable=not request.progress, leave=False):
        predict_sequence(predictor, sequence, pred_root, request.threshold)
    result = evaluate_ref_davis(data.gt_root, pred_root,
                                strict=bool(getattr(request.options, "strict_ids", False)),
                                bound_th=getattr(request.options, "bound_th", None) or DEFAULT_BOUND_TH,
                                sequences=[s.name for s in sequences])
    report = report_dict(data, split, result, partial)
    table = results_table(report, partial)
    files = {"metrics": request.stage / "metrics.json", "per object": request.stage / "per_object.csv"}
    write_file_atomic(files["per object"], per_object_csv(result))
    write_file_atomic(request.stage / "results.txt", table + "\n")
    write_file_atomic(files["metrics"], json.dumps(report, indent=1))   # last: results complete
    return ProtocolReport(table, files)


def validation_summary(predictor: Predictor, cfg: Config, progress: bool = True) -> dict | None:
    """None: training validation on Ref-DAVIS17 goes through the split converted to the
    Ref-YouTube-VOS layout (``rvos data convert-davis``; ``data.format: ref-ytvos``), whose
    per-expression J&F :mod:`rvos.engine.protocols.ref_ytvos` computes."""
    return None
