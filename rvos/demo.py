"""The main job (README's first command): synthetic benchmark -> train the baseline ->
evaluate on test and compositional-test -> segment one test video -> results table.

Output folder layout (``demo_output/`` by default):
  data/        the synthetic benchmark (Ref-YouTube-VOS layout)
  run/         config.yaml, metrics.csv, curves.png, tensorboard/, checkpoints/
  eval/        metrics.json, per_expression.csv, results.txt
  video/       one test video encoded as MP4 (the predict command's input)
  predict/     masks/<k>/*.png, overlay.mp4, overlay.gif, expressions.json
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from rvos.config import Config, load_config
from rvos.errors import RVOSError
from rvos.outputs_dir import check_fresh_output

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO_ROOT / "configs" / "baseline_synth.yaml"
DEMO_SYNTH = dict(train_videos=240, valid_videos=16, test_videos=48, compositional_videos=48)


def demo_config(data_root: Path, run_dir: Path, budget_s: float) -> Config:
    if not DEMO_CONFIG.is_file():
        raise RVOSError("the demo config is missing (run from a clone of the repository)", DEMO_CONFIG)
    return load_config(DEMO_CONFIG, [f"data.root={data_root}", f"train.out_dir={run_dir}",
                                     f"train.time_budget_s={budget_s}"])


def encode_frames_as_mp4(frame_dir: Path, out_mp4: Path, fps: float = 10.0) -> Path:
    """Write a folder of JPEG frames as an MP4 (the demo feeds rvos predict a real video)."""
    from rvos.data.video_io import VideoWriter, iter_video_frames

    with VideoWriter(out_mp4, fps) as writer:
        for _, frame in iter_video_frames(frame_dir):
            writer.write(frame)
    return out_mp4


def run_demo(out: Path, budget_s: float = 420.0, overwrite: bool = False,
             progress: bool = True) -> int:
    import shutil

    from rvos.data.synthetic import SynthConfig, generate_benchmark
    from rvos.data.ytvos import RefYTVOSLayout
    from rvos.engine.evaluator import evaluate_layout, format_table, write_results
    from rvos.engine.trainer import Trainer
    from rvos.inference import Predictor
    from rvos.predict import segment_video

    check_fresh_output(out, overwrite)
    if out.exists():
        shutil.rmtree(out)
    timings: dict[str, float] = {}
    t = time.monotonic()
    print("[1/4] generating the synthetic benchmark ...", flush=True)
    synth = SynthConfig(**DEMO_SYNTH)
    generate_benchmark(out / "data", synth, progress=progress)
    timings["data_s"] = time.monotonic() - t

    t = time.monotonic()
    cfg = demo_config(out / "data", out / "run", budget_s)
    print(f"[2/4] training the baseline ({cfg.model.baseline.backbone}, {cfg.train.epochs} epochs, "
          f"budget {budget_s:.0f} s) ...", flush=True)
    trainer = Trainer(cfg, out / "run", progress=progress)
    state = trainer.fit()
    timings["train_s"] = time.monotonic() - t

    t = time.monotonic()
    ckpt_dir = out / "run" / "checkpoints"
    checkpoint = ckpt_dir / ("best.safetensors" if (ckpt_dir / "best.json").exists() else "last.safetensors")
    print(f"[3/4] evaluating {checkpoint.name} on test and test_compositional ...", flush=True)
    predictor = Predictor.from_checkpoint(checkpoint, cfg.train.device)
    results = [evaluate_layout(predictor, RefYTVOSLayout(out / "data", split),
                               cfg.eval.threshold, progress=progress)
               for split in ("test", "test_compositional")]
    paths = write_results(results, out / "eval")
    timings["eval_s"] = time.monotonic() - t

    t = time.monotonic()
    test = RefYTVOSLayout(out / "data", "test")
    video = sorted(test.videos)[0]
    texts = [e.text for e in test.videos[video].expressions.values()]
    mp4 = encode_frames_as_mp4(out / "data" / "test" / "JPEGImages" / video,
                               out / "video" / f"{video}.mp4")
    print(f"[4/4] rvos predict on {mp4} with {len(texts)} sentences ...", flush=True)
    segment_video(predictor, mp4, texts, out / "predict", cfg.eval.threshold, progress=progress)
    timings["predict_s"] = time.monotonic() - t

    summaries = [r.summary() for r in results]
    (out / "demo_summary.json").write_text(json.dumps(
        {"timings": timings, "steps": state.global_step, "checkpoint": str(checkpoint),
         "results": {s["split"]: s for s in summaries}}, indent=1))
    print()
    print("J&F per expression type (synthetic benchmark, baseline):")
    print(format_table(summaries))
    print()
    print(f"time: data {timings['data_s']:.0f}s, training {timings['train_s']:.0f}s "
          f"({state.global_step} steps), evaluation {timings['eval_s']:.0f}s, "
          f"prediction {timings['predict_s']:.0f}s")
    print("outputs:")
    for label, path in [("benchmark data", out / "data"), ("checkpoint", checkpoint),
                        ("training curves", out / "run" / "curves.png"),
                        ("metrics (JSON)", paths["json"]), ("per expression (CSV)", paths["csv"]),
                        ("predicted masks", out / "predict" / "masks"),
                        ("overlay video", out / "predict" / "overlay.mp4"),
                        ("overlay GIF", out / "predict" / "overlay.gif")]:
        print(f"  {label:<22} {path}")
    return 0
