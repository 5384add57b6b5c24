"""Training and inference speed and peak GPU memory per precision setting: fp32 (IEEE),
TF32, bf16 autocast, fp16 autocast + GradScaler, and bf16 + torch.compile.

    python benchmarks/bench_gpu_precision.py [--config configs/baseline_synth.yaml]
        [--set key=value ...] [--steps 20] [--warmup 5] [--modes fp32 tf32 bf16 ...]
        [--out benchmarks/results/gpu_precision.json]

Needs a CUDA GPU. A small synthetic benchmark is generated once under --data (default: a
temporary folder). Each mode runs in a fresh process (TF32 flags, compile caches and the
peak-memory counter start clean): the clip Trainer of --config with the mode's switches
takes --warmup optimizer steps (compilation, allocator warm-up), then --steps timed ones
(checkpoint writing switched off: it is not what is measured); then the Predictor
segments a clip of 2 windows under the same precision (autocast for bf16/fp16; compile
applies to training only) and the second window is timed. JSON: per mode steps/s,
clips/s, peak allocated GPU memory (MiB) of training and of inference, inference
frames/s, and the first and last logged loss (a sanity check that the mode trains).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))          # this checkout's rvos, also in the worker processes

MODES = {
    "fp32": ["optim.amp=false", "train.tf32=false"],
    "tf32": ["optim.amp=false", "train.tf32=true"],
    "bf16": ["optim.amp=true", "optim.amp_dtype=bfloat16", "train.tf32=true"],
    "fp16": ["optim.amp=true", "optim.amp_dtype=float16", "train.tf32=true"],
    "bf16_compile": ["optim.amp=true", "optim.amp_dtype=bfloat16", "train.tf32=true",
                     "train.compile=true"],
}


def measure(config: str, overrides: list[str], steps: int, warmup: int) -> dict:
    """In this process: time ``steps`` training steps after ``warmup``, then inference."""
    import numpy as np
    import torch

    cuda = torch.cuda.is_available()
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def peak_mib():
        return torch.cuda.max_memory_allocated() / 2**20 if cuda else None

    def reset_peak():
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    from rvos.config import load_config
    from rvos.engine.trainer import Trainer
    from rvos.inference import Predictor

    cfg = load_config(REPO / config, overrides)
    trainer = Trainer(cfg, Path(tempfile.mkdtemp(prefix="rvos_bench_")), progress=False)
    trainer.save = lambda *a, **k: None          # checkpoints are not what is measured
    trainer.fit(stop_after_steps=warmup)
    sync()
    reset_peak()
    start = time.perf_counter()
    trainer.fit(stop_after_steps=steps)
    sync()
    seconds = time.perf_counter() - start
    train_peak = peak_mib()
    rows = [r.split(",") for r in (trainer.run_dir / "metrics.csv").read_text().splitlines()[1:]]
    losses = [float(r[4]) for r in rows if r[2] == "train" and r[3] == "total"]

    trainer.optimizer.zero_grad(set_to_none=True)
    reset_peak()
    window = cfg.eval.window
    predictor = Predictor(trainer.model, cfg.data.input_size, window, trainer.device,
                          amp=cfg.optim.amp)
    h, w = cfg.data.input_size
    rng = np.random.default_rng(0)
    frames = [(f"{i:05d}", rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
              for i in range(2 * window)]
    stream = predictor.predict(iter(frames), ["the red circle on the left"])
    for i, _ in enumerate(stream):
        if i == window - 1:                       # the first window warms up
            sync()
            t0 = time.perf_counter()
    sync()
    infer_s = time.perf_counter() - t0
    clips_per_step = cfg.optim.batch_size * cfg.optim.accumulate_steps
    return {"overrides": overrides, "steps": steps, "seconds": seconds,
            "steps_per_s": steps / seconds, "clips_per_s": steps * clips_per_step / seconds,
            "train_peak_mib": train_peak, "first_loss": losses[0] if losses else None,
            "last_loss": losses[-1] if losses else None,
            "inference_frames_per_s": window / infer_s,
            "inference_peak_mib": peak_mib()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/baseline_synth.yaml")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides for every mode (e.g. optim.batch_size=4)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--data", help="synthetic benchmark folder (made when absent)")
    parser.add_argument("--videos", type=int, default=40, help="training videos to generate")
    parser.add_argument("--out", default="benchmarks/results/gpu_precision.json")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                        help="cpu: only to check the script (no GPU figures)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)   # JSON arguments of one mode
    args = parser.parse_args()
    if args.worker:
        job = json.loads(args.worker)
        print(json.dumps(measure(**job)))
        return 0

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench_gpu_precision: needs a CUDA GPU (--device cpu checks the script only)",
              file=sys.stderr)
        return 2
    data = Path(args.data or tempfile.mkdtemp(prefix="rvos_bench_data_")) / "synth"
    if not (data / "train").is_dir():
        from rvos.data.synthetic import SynthConfig, generate_benchmark

        generate_benchmark(data, SynthConfig(train_videos=args.videos, valid_videos=4,
                                             test_videos=4, compositional_videos=4),
                           progress=False)
    steps_per_epoch = args.warmup + args.steps + 1
    common = [f"data.root={data}", "train.eval_every=0", "train.log_every=1", "train.epochs=100",
              f"train.device={args.device}", f"train.max_steps_per_epoch={steps_per_epoch}", *args.set]
    results = {}
    for mode in args.modes:
        job = {"config": args.config, "overrides": [*common, *MODES[mode]], "steps": args.steps,
               "warmup": args.warmup}
        proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)],
                              capture_output=True, text=True, cwd=REPO)
        if proc.returncode == 0 and not proc.stdout.strip():
            proc.returncode, proc.stderr = 1, "the worker printed no result"
        if proc.returncode:
            results[mode] = {"error": proc.stderr.strip().splitlines()[-1:]}
        else:
            results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
        r = results[mode]
        print(f"{mode:>13}: " + (f"{r['steps_per_s']:.2f} steps/s, {r['clips_per_s']:.1f} clips/s, "
                                 f"train peak {r['train_peak_mib']} MiB; inference "
                                 f"{r['inference_frames_per_s']:.1f} frames/s, peak "
                                 f"{r['inference_peak_mib']} MiB" if "error" not in r
                                 else f"failed: {r['error']}"), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "config": args.config, "set": args.set,
        "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None,
        "bf16_supported": torch.cuda.is_bf16_supported() if args.device == "cuda" else None, "torch": torch.__version__,
        "python": platform.python_version(), "modes": results}, indent=1))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
