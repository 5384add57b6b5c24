"""Proof that rvos's SOC computes what the official SOC computes, and how fast.

    python benchmarks/soc_parity.py --official /path/to/NeurIPS2023_SOC \
        [--backbone video_swin_t video_swin_b] [--frames 5 36] [--size 360 640] [--threads 2]
    python benchmarks/soc_parity.py --official ... --record-keys tests/data/soc_official_keys.json

``--official`` is a checkout (or export) of RobertLuo1/NeurIPS2023_SOC (a folder with
``models/soc.py``, ``misc.py`` and ``configs/refer_youtube_vos.yaml``). For each backbone
the script

1. builds the OFFICIAL model from that checkout (``models.build`` with the settings of
   ``configs/refer_youtube_vos.yaml``, the config of the released Ref-YouTube-VOS models)
   with random weights: the model's own initialisation, then N(0, 0.02) noise on every
   parameter outside the norms and RoBERTa that is constant (zero box heads, ...), so that no
   part is left degenerate; RoBERTa is built from roberta-base's config (the official code
   loads it from a local folder; nothing is downloaded), the Video Swin without Kinetics
   weights; the compiled deformable-attention op is replaced by the checkout's pure-PyTorch
   ``ms_deform_attn_core_pytorch``;
2. saves its state dict in the official format (``{"model": state_dict}``), converts it with
   ``rvos convert`` and loads the result into rvos's model;
3. runs both on the same frames (a real DAVIS clip from ../shared/assets when present,
   else noise) and the same token ids, each in its own process, and compares
   ``pred_cls`` / ``pred_boxes`` / ``pred_masks`` of the last layer (max abs difference),
   the query the official Ref-YouTube-VOS recipe selects and the IoU of its binary masks,
   frames/s and peak resident memory.

With the official random initialisation the dynamic mask head's generated weights act on
pixel-scale relative coordinates, so the mask logits reach several hundred; the float32
rounding of its inputs (1e-6 relative, from summation order in attention and deformable
sampling) then shows as ~1e-3 on them. The report gives the absolute and the relative
differences; the exit status asks 1e-4 absolute for logits and boxes and 1e-4 times the
largest mask logit (at least 1) for the masks, plus the same selected query.

Prints a table and writes ``--json`` (default benchmarks/results/soc_parity.json). The
official modules are imported at run time from the user's path only. Needs ``einops``,
``timm``, ``scipy``, ``pycocotools``, ``torchvision`` and PyYAML (the official imports);
the helpers are those of ``referformer_parity.py``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))     # this checkout's rvos first
from referformer_parity import (ROBERTA_BASE, SENTENCE_IDS, FixedTokens, compare,  # noqa: E402
                                make_frames, peak_rss_gb, reset_peak_rss)

ROOT = Path(__file__).resolve().parents[1]
OFFICIAL_BACKBONE = {"video_swin_t": "video-swin-t", "video_swin_s": "video-swin-s",
                     "video_swin_b": "video-swin-b"}


# ----------------------------------------------------------------------------- official side
def import_official(checkout: Path):
    """The checkout's ``models.soc`` module, with the compiled deformable attention replaced
    by the checkout's own pure-PyTorch version and RoBERTa built from its config."""
    sys.path.insert(0, str(checkout))
    msda = types.ModuleType("MultiScaleDeformableAttention")

    def forward(value, shapes, level_start, locations, weights, im2col_step):
        from models.ops.functions.ms_deform_attn_func import ms_deform_attn_core_pytorch

        return ms_deform_attn_core_pytorch(value, [(int(h), int(w)) for h, w in shapes],
                                           locations, weights)

    msda.ms_deform_attn_forward = forward
    sys.modules["MultiScaleDeformableAttention"] = msda
    soc = importlib.import_module("models.soc")

    class RandomRoberta:
        @staticmethod
        def from_pretrained(name):
            from transformers import RobertaConfig, RobertaModel

            return RobertaModel(RobertaConfig(**ROBERTA_BASE))

    class NoTokenizer:            # token ids are given (no tokenizer files here)
        @staticmethod
        def from_pretrained(name):
            return None

    soc.RobertaModel = RandomRoberta
    soc.RobertaTokenizerFast = NoTokenizer
    return soc


def official_options(checkout: Path, backbone: str) -> argparse.Namespace:
    """``configs/refer_youtube_vos.yaml`` as the official scripts read it (each entry's
    ``value``), with the command-line options of ``infer_refytb.py``."""
    import yaml

    raw = yaml.safe_load((checkout / "configs" / "refer_youtube_vos.yaml").read_text())
    config = {k: v["value"] for k, v in raw.items()}
    config.update(backbone=OFFICIAL_BACKBONE[backbone], backbone_pretrained_path=None,
                  running_mode="test", device="cpu", checkpoint_path=None, num_gpus=1,
                  version="parity", visualize=False)
    return argparse.Namespace(**config)


def build_official(checkout: Path, backbone: str, seed: int, controller_scale: float = 1.0):
    """The official model with random weights; ``controller_scale`` multiplies the dynamic
    mask head's generator (the controller's last layer), a check of how the mask logits'
    rounding differences follow their magnitude."""
    soc = import_official(checkout)
    torch.manual_seed(seed)
    model, _, _ = soc.build(official_options(checkout, backbone))
    model.eval()
    with torch.no_grad():   # no constant-initialised part left degenerate
        for name, p in model.named_parameters():
            if ("norm" not in name and not name.startswith("text_encoder")
                    and bool((p == p.flatten()[0]).all())):
                p.add_(torch.randn_like(p) * 0.02)
        last = model.controller.layers[-1]
        last.weight.mul_(controller_scale)
        last.bias.mul_(controller_scale)
    return model


def record_keys(checkout: Path, backbones: list[str], out: Path) -> None:
    """Names and shapes of the official state dict per backbone (tests/data)."""
    record = {}
    for backbone in backbones:
        model = build_official(checkout, backbone, 0)
        record[backbone] = {k: list(v.shape) for k, v in model.state_dict().items()}
    out.write_text(json.dumps({"official": str(checkout), "config": "configs/refer_youtube_vos.yaml",
                               "recorded_by": "benchmarks/soc_parity.py --record-keys",
                               "models": record}, indent=0))
    print(f"wrote {out}: {', '.join(f'{b} {len(k)} keys' for b, k in record.items())}")


# ----------------------------------------------------------------------------- workers
def worker(args: argparse.Namespace) -> None:
    """One side's runs, in its own process: results to ``args.result``."""
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    frames_all = torch.load(work / "frames.pt")
    ids = torch.tensor([SENTENCE_IDS])
    runs = []
    if args.worker == "official":
        model = build_official(Path(args.official), args.backbone, args.seed, args.controller_scale)
        model.tokenizer = FixedTokens(ids)
        torch.save({"model": model.state_dict()}, work / "official.pth")
        misc = importlib.import_module("misc")

        def run(frames):
            t = frames.shape[0]
            samples = misc.nested_tensor_from_videos_list([frames])
            size = torch.as_tensor(frames.shape[-2:])
            out = model(samples, None, ["a sentence"], [[{"size": size}] for _ in range(t)])
            # official layout (T, B, Q, ...) -> (B, T, Q, ...)
            return tuple(out[k].transpose(0, 1) for k in ("pred_cls", "pred_boxes", "pred_masks"))
    else:
        from rvos.engine.checkpoint import load_checkpoint, load_weights_into
        from rvos.models.build import build_model

        checkpoint = load_checkpoint(work / "converted")
        model = build_model(checkpoint.config, pretrained=False)
        load_weights_into(model, checkpoint, work / "converted")
        del checkpoint
        model.prepare_for_inference()
        attention = torch.ones_like(ids)

        def run(frames):
            pred = model.predict(frames[None], ids, attention)
            return pred.logits, pred.boxes, pred.masks
    with torch.no_grad():
        if not args.no_warmup:
            run(frames_all[: min(args.frames)])                  # warm-up
        for t in args.frames:
            frames = frames_all[:t]
            repeats = args.repeats or (1 if t > 8 else 2)
            reset_peak_rss()
            start = time.perf_counter()
            for _ in range(repeats):
                outputs = run(frames)
            seconds = (time.perf_counter() - start) / repeats
            name = f"{args.worker}_T{t}"
            torch.save([o.float() for o in outputs], work / f"{name}.pt")
            runs.append({"side": args.worker, "mode": "float32", "frames": t,
                         "seconds": seconds, "frames_per_s": t / seconds,
                         "peak_rss_gb": peak_rss_gb(), "outputs": name})
            print(f"  {name}: {seconds:.2f} s, {t / seconds:.2f} frames/s, "
                  f"peak {runs[-1]['peak_rss_gb']:.2f} GB", flush=True)
    Path(args.result).write_text(json.dumps(runs))


def spawn(args: argparse.Namespace, side: str, work: Path) -> list[dict]:
    result = work / f"{side}.json"
    cmd = [sys.executable, __file__, "--worker", side, "--work", str(work), "--result", str(result),
           "--backbone", args.backbone_now, "--threads", str(args.threads), "--seed", str(args.seed),
           "--frames", *map(str, args.frames), "--controller-scale", str(args.controller_scale),
           "--repeats", str(args.repeats)] + (["--no-warmup"] if args.no_warmup else [])
    if args.official:
        cmd += ["--official", str(args.official)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(args.threads)}
    subprocess.run(cmd, check=True, env=env)
    return json.loads(result.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", type=Path, help="checkout of RobertLuo1/NeurIPS2023_SOC")
    parser.add_argument("--official-commit", help="its commit, when the folder is an export "
                                                  "without .git (read with git otherwise)")
    parser.add_argument("--backbone", nargs="+", default=["video_swin_t"],
                        choices=sorted(OFFICIAL_BACKBONE))
    parser.add_argument("--frames", nargs="+", type=int, default=[5, 36])
    parser.add_argument("--size", nargs=2, type=int, default=[360, 640])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "soc_parity.json")
    parser.add_argument("--tolerance", type=float, default=1e-4)
    parser.add_argument("--repeats", type=int, default=0,
                        help="timed runs per clip length (0: 2 up to 8 frames, else 1)")
    parser.add_argument("--no-warmup", action="store_true",
                        help="no untimed first run (equivalence only: the timings then include it)")
    parser.add_argument("--controller-scale", type=float, default=1.0,
                        help="scale the official controller's last layer (mask logits of "
                             "trained-model magnitude instead of thousands)")
    parser.add_argument("--record-keys", type=Path, help="write the official state dict's "
                        "names and shapes per backbone to this JSON file and stop")
    parser.add_argument("--worker", choices=["official", "rvos"], help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.backbone = args.backbone[0]
        worker(args)
        return
    if args.official is None or not (args.official / "models" / "soc.py").is_file():
        print(f"skipped: --official must name a checkout of RobertLuo1/NeurIPS2023_SOC "
              f"(got {args.official})")
        sys.exit(0)
    if args.record_keys:
        record_keys(args.official, args.backbone, args.record_keys)
        return
    from rvos.convert import convert_checkpoint

    commit = args.official_commit
    try:
        commit = commit or subprocess.run(["git", "-C", str(args.official), "rev-parse", "HEAD"],
                                          capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    report = {"official": str(args.official), "official_commit": commit,
              "cpu": platform.processor() or platform.machine(), "threads": args.threads,
              "size": args.size, "torch": torch.__version__,
              "controller_scale": args.controller_scale, "backbones": {}}
    ok = ok_scaled = True
    for backbone in args.backbone:
        args.backbone_now = backbone
        print(f"== {backbone}")
        with tempfile.TemporaryDirectory(prefix="rvos-soc-parity-") as tmp:
            work = Path(tmp)
            torch.save(make_frames(max(args.frames), tuple(args.size)), work / "frames.pt")
            official_runs = spawn(args, "official", work)
            start = time.perf_counter()
            convert_checkpoint(work / "official.pth", work / "converted")
            convert_s = time.perf_counter() - start
            rvos_runs = spawn(args, "rvos", work)
            rows = []
            for o in official_runs:
                for r in (r for r in rvos_runs if r["frames"] == o["frames"]):
                    diff, agreement = compare(work, o, r)
                    scale = {n: float(x.abs().max()) for n, x in zip(
                        ("pred_logits", "pred_boxes", "pred_masks"),
                        torch.load(work / f"{o['outputs']}.pt"))}
                    ok &= max(diff.values()) < args.tolerance and agreement["same_query"]
                    # mask logits scaled by their magnitude (see the docstring)
                    ok_scaled &= (max(diff["pred_logits"], diff["pred_boxes"]) < args.tolerance
                                  and diff["pred_masks"] < args.tolerance * max(1.0, scale["pred_masks"])
                                  and agreement["same_query"])
                    rows.append({"frames": o["frames"],
                                 "official_frames_per_s": o["frames_per_s"],
                                 "rvos_frames_per_s": r["frames_per_s"],
                                 "speedup": r["frames_per_s"] / o["frames_per_s"],
                                 "official_peak_rss_gb": o["peak_rss_gb"],
                                 "rvos_peak_rss_gb": r["peak_rss_gb"], "max_abs_diff": diff,
                                 "official_max_abs": scale,
                                 "max_rel_diff": {n: diff[n] / max(scale[n], 1e-12) for n in diff},
                                 "selected_query_agreement": agreement})
        report["backbones"][backbone] = {"convert_s": convert_s, "runs": rows}
        print(f"{'T':>3} {'official f/s':>12} {'rvos f/s':>9} {'speed-up':>8} "
              f"{'off. GB':>8} {'rvos GB':>8}  max |diff| logits / boxes / masks   "
              f"same query, mask IoU, max |official mask logit|")
        for row in rows:
            d = row["max_abs_diff"]
            print(f"{row['frames']:>3} {row['official_frames_per_s']:>12.3f} "
                  f"{row['rvos_frames_per_s']:>9.3f} {row['speedup']:>7.2f}x "
                  f"{row['official_peak_rss_gb']:>8.2f} {row['rvos_peak_rss_gb']:>8.2f}  "
                  f"{d['pred_logits']:.2e} / {d['pred_boxes']:.2e} / {d['pred_masks']:.2e}   "
                  f"{row['selected_query_agreement']['same_query']}, "
                  f"{row['selected_query_agreement']['mask_iou']:.5f}, "
                  f"{row['official_max_abs']['pred_masks']:.1f}")
    report["within_tolerance"] = ok
    report["within_tolerance_masks_scaled"] = ok_scaled
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(f"float32 outputs within {args.tolerance:g}: {ok}; with the mask logits' tolerance "
          f"scaled by their magnitude: {ok_scaled}; report: {args.json}")
    sys.exit(0 if ok_scaled else 1)


if __name__ == "__main__":
    main()
