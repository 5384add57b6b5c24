"""The Ref-YouTube-VOS layout (real Ref-YouTube-VOS, our synthetic benchmark, converted
Ref-DAVIS17).

* A split with annotations (``<root>/<split>/Annotations``) is scored per expression (J, F,
  J&F; see :mod:`rvos.engine.evaluator`); ``--save-masks`` also writes its masks in the
  submission layout under ``predictions/<split>/``.
* A split without annotations (the real ``valid`` and ``test`` splits) becomes the
  submission the CodaLab server takes: every expression of every video is segmented over
  the frames meta_expressions.json lists for the video (the whole list as one clip, as
  ReferFormer's ``inference_ytvos.py`` does; the Predictor's window decides), one 0/255
  single-channel PNG per listed frame is written to
  ``predictions/<split>/Annotations/<video>/<exp_id>/<frame>.png``, the folder is checked
  with :func:`rvos.metrics.ref_ytvos.validate_submission` and only then zipped
  (``Annotations/...`` at the zip root, ReferFormer's ``docs/Ref-Youtube-VOS.md``).

The competition's ``meta_expressions/valid/meta_expressions.json`` lists the 202
validation videos and the 305 test videos together (507; only the 202 are in
``valid/JPEGImages``). As MTTR (``datasets/refer_youtube_vos/refer_youtube_vos_dataset.py``)
and ReferFormer (``inference_ytvos.py``) do, the videos of
``meta_expressions/test/meta_expressions.json`` are left out of the ``valid`` submission.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from rvos.config import Config
from rvos.data.ytvos import RefYTVOSLayout, VideoRecord, parse_meta_expressions
from rvos.engine.distributed import Shard
from rvos.engine.evaluator import EvalResult, evaluate_layout, format_table, write_results
from rvos.engine.protocols import (SUBMISSION_ZIP, EvaluationRequest, ProtocolReport,
                                   submission_zip_name)
from rvos.errors import RVOSError
from rvos.inference import Predictor
from rvos.metrics.ref_ytvos import submission_stats, write_expression_masks, zip_submission
from rvos.outputs_dir import write_file_atomic

SUBMISSION_REPORT = "submission.json"
# under torchrun, validation and scored splits are segmented by every rank, each its share
SHARDED = True
OUTPUTS = ("metrics.json", "per_expression.csv", "results.txt", "predictions",
           SUBMISSION_REPORT, SUBMISSION_ZIP)


@dataclass
class SubmissionReport:
    """What ``submission.json`` records of an inference-only split."""

    split: str
    videos: int
    expressions: int
    masks_written: int
    left_out_test_videos: int       # valid: videos of the test split's meta_expressions.json
    complete: bool                  # every expression of every video (no --max-samples)
    zip: str | None                 # the zip's name in the output folder; None when partial
    annotations: str                # the submission folder, relative to the output folder
    meta_expressions: str           # the meta_expressions.json it covers (written beside it)


def shardable(request: EvaluationRequest) -> bool:
    """Whether ranks can share ``request``: scored splits only, no masks to write (the
    masks and a submission are written by one process)."""
    return not request.save_masks and all(
        RefYTVOSLayout(request.root, split).has_annotations for split in request.splits)


def evaluate(request: EvaluationRequest) -> ProtocolReport:
    """Scored splits: metrics.json, per_expression.csv, results.txt (+ predictions/<split>/
    with ``save_masks``). A split without annotations (at most one per run): its submission
    under predictions/<split>/, submission.json and the zip (``--zip NAME``, default
    submission.zip). With ``request.shard`` (torchrun; :func:`shardable` requests only)
    every rank segments its share; the rank whose ``request.stage`` is None writes nothing
    and returns an empty report."""
    layouts = [RefYTVOSLayout(request.root, split) for split in request.splits]
    unannotated = [layout for layout in layouts if not layout.has_annotations]
    if len(unannotated) > 1:
        raise RVOSError(f"splits {', '.join(lay.split for lay in unannotated)} have no annotations: "
                        "each gives its own submission zip, so run them one at a time", request.root)
    zip_name = submission_zip_name(request)
    tables, files = [], {}
    scored: list[EvalResult] = []
    for layout in layouts:
        if layout.has_annotations:
            masks_out = request.stage / "predictions" / layout.split if request.save_masks else None
            scored.append(evaluate_layout(request.predictor, layout, request.threshold,
                                          request.max_samples, masks_out, progress=request.progress,
                                          shard=request.shard))
    if request.stage is None:                  # a rank > 0 of a sharded evaluation
        return ProtocolReport("", {})
    if scored:
        paths = write_results(scored, request.stage)
        tables.append(format_table([r.summary() for r in scored]))
        files.update({"metrics": paths["json"], "per expression": paths["csv"]})
    for layout in unannotated:
        report = write_submission(request, layout, zip_name)
        tables.append(submission_table(report))
        files["submission report"] = request.stage / SUBMISSION_REPORT
        if report.zip:
            files["submission"] = request.stage / report.zip
    return ProtocolReport("\n\n".join(tables), files)


# ----------------------------------------------------------------------------- submission
def submission_videos(layout: RefYTVOSLayout) -> tuple[dict[str, VideoRecord], int]:
    """The videos a submission of ``layout`` covers, and how many were left out.

    ``valid``: the videos of meta_expressions.json minus those of the test split's
    meta_expressions.json (the competition's valid file lists both). When that file is
    absent, every listed video must have its frame folder; a listing of test videos without
    frames is an RVOSError asking for the test file."""
    videos = dict(layout.videos)
    if layout.split != "valid":
        return videos, 0
    test_meta = _test_meta_path(layout.root)
    if test_meta is not None:
        test_videos = set(parse_meta_expressions(test_meta))
        kept = {v: rec for v, rec in videos.items() if v not in test_videos}
        if not kept:
            raise RVOSError(f"every video of {layout.meta_expressions_path} is also a test video",
                            test_meta)
        return kept, len(videos) - len(kept)
    frames_dir = layout.split_dir / "JPEGImages"
    absent = [v for v in videos if not (frames_dir / v).is_dir()]
    if absent:
        raise RVOSError(f"{len(absent)} of its {len(videos)} videos have no frame folder in "
                        f"{frames_dir} (e.g. {absent[0]}). The competition's valid file also lists "
                        f"the test videos: put the test split's meta_expressions.json at "
                        f"{layout.root / 'meta_expressions' / 'test' / 'meta_expressions.json'} "
                        f"so that they are left out", layout.meta_expressions_path)
    return videos, 0


def _test_meta_path(root: Path) -> Path | None:
    for path in (root / "meta_expressions" / "test" / "meta_expressions.json",
                 root / "test" / "meta_expressions.json"):
        if path.is_file():
            return path
    return None


def _first_expressions(videos: dict[str, VideoRecord], max_samples: int) -> dict[str, VideoRecord]:
    """The first ``max_samples`` expressions (videos by name, expressions by id); all when 0."""
    if max_samples <= 0:
        return videos
    out: dict[str, VideoRecord] = {}
    left = max_samples
    for video, record in videos.items():
        if left <= 0:
            break
        kept = dict(list(record.expressions.items())[:left])
        out[video] = VideoRecord(video, record.frames, kept)
        left -= len(kept)
    return out


def covered_meta(videos: dict[str, VideoRecord]) -> dict:
    """The meta_expressions.json of the submission: ``{"videos": {video: {"expressions":
    {exp_id: {"exp": ...}}, "frames": [...]}}}`` (the file the zip is checked against)."""
    return {"videos": {
        video: {"expressions": {e.exp_id: {"exp": e.text} for e in record.expressions.values()},
                "frames": list(record.frames)}
        for video, record in videos.items()}}


def _video_frames(layout: RefYTVOSLayout, video: str,
                  frames: list[str]) -> Iterator[tuple[str, np.ndarray]]:
    """(frame name, (H, W, 3) uint8) of the listed frames, read one at a time; a frame whose
    size differs from the video's first is an RVOSError naming its file."""
    first = None
    for name in frames:
        frame = layout.load_frames(video, [name])[0]
        first = frame.shape if first is None else first
        if frame.shape != first:
            raise RVOSError(f"frame size {frame.shape[1]}x{frame.shape[0]} differs from "
                            f"{first[1]}x{first[0]} of the video's first frame",
                            layout.frame_path(video, name))
        yield name, frame


def segment_video(predictor: Predictor, layout: RefYTVOSLayout, record: VideoRecord,
                  annotations: Path, threshold: float) -> tuple[int, int]:
    """Segment every expression of ``record`` over its listed frames and write the 0/255
    PNGs ``<annotations>/<video>/<exp_id>/<frame>.png`` frame by frame (memory holds one
    window). Returns the frame size (H, W)."""
    expressions = list(record.expressions.values())
    size = None
    for pred in predictor.predict(_video_frames(layout, record.video, record.frames),
                                  [e.text for e in expressions]):
        masks = pred.masks(threshold)                                  # (K, H, W) bool
        size = size or masks.shape[1:]
        for expression, mask in zip(expressions, masks):
            write_expression_masks(annotations, record.video, expression.exp_id, [pred.name],
                                   mask[None], source=layout.meta_expressions_path)
    return size


def write_submission(request: EvaluationRequest, layout: RefYTVOSLayout,
                     zip_name: str) -> SubmissionReport:
    """Segment an inference-only split into ``predictions/<split>/Annotations``, write the
    meta_expressions.json it covers beside it and ``submission.json``; validate and zip it
    (skipped with ``max_samples``: a partial submission is not one the server takes)."""
    videos, left_out = submission_videos(layout)
    videos = _first_expressions(videos, request.max_samples)
    complete = request.max_samples <= 0
    layout.verify(check_masks=False, videos=videos)     # a missing frame fails before any work
    folder = request.stage / "predictions" / layout.split
    annotations = folder / "Annotations"
    meta_path = folder / "meta_expressions.json"
    folder.mkdir(parents=True, exist_ok=True)
    write_file_atomic(meta_path, json.dumps(covered_meta(videos), indent=1, ensure_ascii=False))

    sizes: dict[str, tuple[int, int]] = {}
    bar = tqdm(total=sum(len(r.expressions) for r in videos.values()), unit="exp",
               desc=f"segment {layout.split}", disable=not request.progress, leave=False)
    for video, record in videos.items():
        sizes[video] = segment_video(request.predictor, layout, record, annotations,
                                     request.threshold)
        bar.update(len(record.expressions))
    bar.close()

    if complete:
        zip_submission(annotations, request.stage / zip_name, meta_path, sizes)
    stats = submission_stats(covered_meta(videos)["videos"])
    report = SubmissionReport(layout.split, stats["videos"], stats["expressions"],
                              stats["png_files"], left_out, complete,
                              zip_name if complete else None,
                              str(annotations.relative_to(request.stage)),
                              str(meta_path.relative_to(request.stage)))
    write_file_atomic(request.stage / SUBMISSION_REPORT, json.dumps(asdict(report), indent=1))
    return report


def submission_table(report: SubmissionReport) -> str:
    """What was written, in a few lines."""
    lines = [f"Ref-YouTube-VOS {report.split} submission: {report.videos} videos, "
             f"{report.expressions} expressions, {report.masks_written} masks written to "
             f"{report.annotations}"]
    if report.left_out_test_videos:
        lines.append(f"left out: {report.left_out_test_videos} test videos listed in the valid "
                     f"meta_expressions.json (the competition's valid file lists both)")
    if report.zip:
        lines.append(f"checked against {report.meta_expressions} and zipped: {report.zip} "
                     f"(upload it to the competition server)")
    else:
        lines.append("partial (--max-samples): masks written, no zip (the server takes only a "
                     "complete submission)")
    return "\n".join(lines)


def validation_summary(predictor: Predictor, cfg: Config, progress: bool = True,
                       shard: Shard | None = None) -> dict | None:
    """J, F, J&F on ``cfg.data.val_split`` (at most ``data.max_val_samples`` expressions), or
    None when that split has no annotations. ``shard``: this rank's share (every rank calls
    it and gets the whole split's summary)."""
    d = cfg.data
    layout = RefYTVOSLayout(Path(d.root), d.val_split)
    if not layout.has_annotations:
        return None
    return evaluate_layout(predictor, layout, cfg.eval.threshold,
                           max_samples=d.max_val_samples, progress=progress,
                           shard=shard).summary()
