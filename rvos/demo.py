"""The main job (README's first command): synthetic benchmark -> train the track-grounding
model (frozen ImageNet MobileNetV2, cached features) -> evaluate on test and
compositional-test -> segment one test video -> results table.

Output folder layout (``demo_output/`` by default):
  data/        the synthetic benchmark (Ref-YouTube-VOS layout)
  run/         config.yaml, metrics.csv, curves.png, tensorboard/, checkpoints/, feature_cache/
  eval/        metrics.json, per_expression.csv, results.txt
  video/       one test video encoded as MP4 (the predict command's input)
  predict/     masks/<k>/*.png, overlay.mp4, overlay.gif, expressions.json
  demo_summary.json  written last: the demo completed
  .rvos-output       the marker: rvos made this folder (and whether it is complete)
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from rvos.config import CONFIG_DIR, Config, load_config
from rvos.errors import RVOSError
from rvos.outputs_dir import InPlaceOutput, staged_output, write_file_atomic

logger = logging.getLogger(__name__)

# In a clone, the folder holding rvos/; the configs name the offline weights from there
# (../shared/assets/weights/...). An installed copy has no such folder: pass --weights.
REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = CONFIG_DIR / "grounding_synth.yaml"
BASELINE_CONFIG = CONFIG_DIR / "baseline_synth.yaml"   # the seed-000 reference
# 1000 training videos with 8 sentences each: sentences cost the feature cache nothing, and
# 8 per video give the scorer twice the sentences to learn from and the test splits about
# 150 expressions per type (a per-type J&F moves ~0.03 with the sample at 75)
DEMO_SYNTH = dict(train_videos=1000, valid_videos=16, test_videos=96, compositional_videos=96,
                  expressions_per_video=8)
DEMO_BUDGET_S = 360.0


def demo_config(data_root: Path, run_dir: Path, budget_s: float, config_path: Path = DEMO_CONFIG,
                overrides: list[str] | None = None, weights: str | Path | None = None) -> Config:
    """The config at ``config_path`` (a file or a packaged name) pointed at ``data_root`` and
    ``run_dir`` with the time budget; ``overrides`` (e.g. ``["train.seed=1"]``) are applied
    after those. ``weights``: the backbone weights file to use instead of the config's
    (``rvos demo --weights``); a config's relative weights path that does not exist from the
    working directory is looked up from the repository root of a clone."""
    cfg = load_config(config_path, [f"data.root={data_root}", f"train.out_dir={run_dir}",
                                    f"train.time_budget_s={budget_s}", *(overrides or [])])
    part = getattr(cfg.model, cfg.model.kind)
    if weights is not None:
        if not Path(weights).expanduser().is_file():
            raise RVOSError("--weights: backbone weights file not found", weights)
        part.backbone_weights = str(Path(weights).expanduser().resolve())
        return cfg
    named = getattr(part, "backbone_weights", "none")
    if named.startswith(("./", "../")) and not Path(named).exists():
        part.backbone_weights = str(REPO_ROOT / named)
        if not Path(part.backbone_weights).is_file():
            raise RVOSError(f"{cfg.model.kind} backbone weights not found: the offline ImageNet "
                            f"MobileNetV2 the config names ({named}, from the working folder or "
                            "a clone's root) is not here; pass rvos demo --weights FILE (the "
                            "shared/assets/weights file of the repository's set-up, or "
                            "torchvision's mobilenet_v2 IMAGENET1K_V1 .features state dict "
                            f"saved with torch.save; rvos train: model.{cfg.model.kind}."
                            "backbone_weights=FILE)", named)
    return cfg


def model_name(cfg: Config) -> str:
    """A short label: 'baseline resnet18', 'query mobilenet_v2', 'grounding mobilenet_v2'."""
    return f"{cfg.model.kind} {getattr(cfg.model, cfg.model.kind).backbone}"


def encode_frames_as_mp4(frame_dir: Path, out_mp4: Path, fps: float = 10.0) -> Path:
    """Write a folder of JPEG frames as an MP4 (the demo feeds rvos predict a real video)."""
    from rvos.data.video_io import VideoWriter, iter_video_frames

    with VideoWriter(out_mp4, fps) as writer:
        for _, frame in iter_video_frames(frame_dir):
            writer.write(frame)
    return out_mp4


def generate_demo_data(root: Path, progress: bool = True, train_videos: int = 0) -> float:
    """The demo's synthetic benchmark (``DEMO_SYNTH``, seed 0; ``train_videos`` > 0 replaces
    its number of training videos, the test splits unchanged) written to ``root``; returns
    the seconds it took."""
    from rvos.data.synthetic import SynthConfig, generate_benchmark

    start = time.monotonic()
    settings = {**DEMO_SYNTH, **({"train_videos": train_videos} if train_videos else {})}
    generate_benchmark(root, SynthConfig(**settings), progress=progress)
    return time.monotonic() - start


def run_demo(out: Path, budget_s: float = DEMO_BUDGET_S, overwrite: bool = False,
             progress: bool = True, weights: str | Path | None = None) -> int:
    """The main job into ``out``. The folder is written in place (its run's configs and
    checkpoints name the data by its final path) and marked unfinished until
    ``demo_summary.json``, written last, is there; a folder it replaces (--overwrite) comes
    back if the new demo does not complete. ``weights``: the MobileNetV2 backbone file
    (default: the one the config names, see :func:`demo_config`)."""
    demo_config(out / "data", out / "run", budget_s, weights=weights)   # weights missing: fail now
    with InPlaceOutput(out, "demo", overwrite=overwrite):
        logger.info("[1/4] generating the synthetic benchmark ...")
        data_s = generate_demo_data(out / "data", progress)
        summary = train_evaluate_predict(out, out / "data", DEMO_CONFIG, budget_s, progress,
                                         weights=weights)
        summary["timings"] = {"data_s": data_s, **summary["timings"]}
        write_file_atomic(out / "demo_summary.json", json.dumps(summary, indent=1))
    _print_report(out, summary)
    return 0


def train_evaluate_predict(out: Path, data_root: Path, config_path: Path, budget_s: float,
                           progress: bool = True, overrides: list[str] | None = None,
                           eval_samples: int = 0, weights: str | Path | None = None) -> dict:
    """Steps 2-4 of the demo for any config on an existing synthetic benchmark: train within
    ``budget_s`` seconds into ``out/run``, evaluate the best checkpoint on test and
    test_compositional into ``out/eval``, segment the first test video into ``out/predict``.
    ``overrides`` are config overrides applied last (e.g. ``["train.seed=1"]``);
    ``eval_samples`` > 0 scores only the first that many expressions of each split;
    ``weights`` as :func:`demo_config`'s.
    Returns the summary written as ``demo_summary.json`` (timings, steps, results per split)."""
    from rvos.data.ytvos import RefYTVOSLayout
    from rvos.engine.evaluator import evaluate_layout, write_results
    from rvos.engine import make_trainer
    from rvos.inference import Predictor
    from rvos.predict import segment_video

    timings: dict[str, float] = {}
    t = time.monotonic()
    cfg = demo_config(data_root, out / "run", budget_s, config_path, overrides, weights)
    logger.info(f"[2/4] training the {model_name(cfg)} model (budget {budget_s:.0f} s) ...")
    state = make_trainer(cfg, out / "run", progress=progress).fit()
    timings["train_s"] = time.monotonic() - t

    t = time.monotonic()
    ckpt_dir = out / "run" / "checkpoints"
    checkpoint = ckpt_dir / ("best.safetensors" if (ckpt_dir / "best.safetensors").exists() else "last.safetensors")
    logger.info(f"[3/4] evaluating {checkpoint.name} on test and test_compositional ...")
    predictor = Predictor.from_checkpoint(checkpoint, cfg.train.device)
    results = [evaluate_layout(predictor, RefYTVOSLayout(data_root, split),
                               cfg.eval.threshold, max_samples=eval_samples, progress=progress)
               for split in ("test", "test_compositional")]
    with staged_output(out / "eval", command="evaluate") as stage:
        write_results(results, stage)
    paths = {"json": out / "eval" / "metrics.json", "csv": out / "eval" / "per_expression.csv"}
    timings["eval_s"] = time.monotonic() - t

    t = time.monotonic()
    test = RefYTVOSLayout(data_root, "test")
    video = sorted(test.videos)[0]
    texts = [e.text for e in test.videos[video].expressions.values()]
    with staged_output(out / "video", command="demo") as stage:
        encode_frames_as_mp4(data_root / "test" / "JPEGImages" / video, stage / f"{video}.mp4")
    mp4 = out / "video" / f"{video}.mp4"
    logger.info(f"[4/4] rvos predict on {mp4} with {len(texts)} sentences ...")
    segment_video(predictor, mp4, texts, out / "predict", cfg.eval.threshold, progress=progress)
    timings["predict_s"] = time.monotonic() - t
    return {"model": model_name(cfg), "config": str(config_path), "timings": timings,
            "steps": state.global_step, "epochs_done": state.epoch, "checkpoint": str(checkpoint),
            "training_stages": getattr(state, "timings", {}),
            "metrics": {"json": str(paths["json"]), "csv": str(paths["csv"])},
            "results": {s["split"]: s for s in (r.summary() for r in results)}}


def _print_report(out: Path, summary: dict) -> None:
    from rvos.engine.evaluator import format_table

    timings = summary["timings"]
    print()
    print(f"J&F per expression type (synthetic benchmark, {summary['model']}):")
    print(format_table(list(summary["results"].values())))
    print()
    print(f"time: data {timings['data_s']:.0f}s, training {timings['train_s']:.0f}s "
          f"({summary['steps']} steps), evaluation {timings['eval_s']:.0f}s, "
          f"prediction {timings['predict_s']:.0f}s")
    print("outputs:")
    for label, path in [("benchmark data", out / "data"), ("checkpoint", summary["checkpoint"]),
                        ("training curves", out / "run" / "curves.png"),
                        ("metrics (JSON)", summary["metrics"]["json"]),
                        ("per expression (CSV)", summary["metrics"]["csv"]),
                        ("predicted masks", out / "predict" / "masks"),
                        ("overlay video", out / "predict" / "overlay.mp4"),
                        ("overlay GIF", out / "predict" / "overlay.gif")]:
        if Path(path).exists():          # curves.png needs the plots extra
            print(f"  {label:<22} {path}")
