"""Proof that rvos's BIFIT computes what the official BIFIT code computes, and how fast.

    python benchmarks/bifit_parity.py --official /path/to/BIFIT \
        [--backbone resnet50] [--frames 5 36] [--size 360 640] [--threads 2]
    python benchmarks/bifit_parity.py --official /path/to/BIFIT --record-keys tests/data/bifit_official_keys.json

``--official`` is a checkout of LANMNG/BIFIT (a folder with ``models/``, ``util/`` and
``opts.py``). BIFIT keeps ReferFormer's repository layout, so the steps are those of
benchmarks/referformer_parity.py, whose functions this script runs: for each backbone

1. the OFFICIAL model is built from the checkout (``models.build`` with the options of the
   released Ref-YouTube-VOS model: ``--with_box_refine --binary --freeze_text_encoder``, and
   opts.py's defaults, among them ``--query_enc_layers 1``) with random weights: RoBERTa from
   roberta-base's config (nothing downloaded), no ImageNet weights, N(0, 0.02) noise on the
   constant-initialised non-norm parameters; the compiled deformable attention replaced by
   the checkout's pure-PyTorch ``ms_deform_attn_core_pytorch``;
2. its state dict is saved in the official format and converted with ``rvos convert``;
3. both run on the same frames and token ids, each in its own process, and ``pred_logits``,
   ``pred_boxes``, ``pred_masks`` are compared (max abs difference), with the query the
   official recipe selects and the IoU of its binary masks, frames/s and peak resident memory.

Prints a table and writes ``--json`` (default benchmarks/results/bifit_parity.json).
``--record-keys`` writes the official state dict's names and shapes instead (the file the
converter tests read). Official modules are imported at run time from the user's path only.
BIFIT released ResNet-50 weights only (its README's model zoo); ``--backbone`` takes the
other backbones of the official code too.
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

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import referformer_parity as rp  # noqa: E402  (the shared steps)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))          # this checkout's rvos, as in the workers (rp.spawn)


def record_keys(official: Path, backbones: list[str], out: Path) -> None:
    """The official model's ``state_dict()`` names and shapes per backbone -> ``out`` (JSON),
    each backbone built in a child process (the checkout's modules stay out of this one)."""
    models = {}
    for backbone in backbones:
        code = (f"import sys, json, torch; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
                f"import referformer_parity as rp; from pathlib import Path; "
                f"build, opts = rp.import_official(Path({str(official)!r})); "
                f"model = build(rp.official_options(opts, {backbone!r}))[0]; "
                f"print(json.dumps({{k: list(v.shape) for k, v in model.state_dict().items()}}))")
        done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
        models[backbone] = json.loads(done.stdout.strip().splitlines()[-1])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "source": "state_dict() key names and shapes of the official BIFIT model (LANMNG/BIFIT "
                  "at 3c88769), built with --with_box_refine --binary --freeze_text_encoder, "
                  "opts.py's defaults (--query_enc_layers 1) and the named --backbone",
        "models": models}, indent=1))
    print(f"recorded {', '.join(f'{b}: {len(m)} keys' for b, m in models.items())} -> {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", type=Path, help="checkout of LANMNG/BIFIT")
    parser.add_argument("--official-commit", default="3c88769",
                        help="its commit, when the folder is an export without .git")
    parser.add_argument("--backbone", nargs="+", default=["resnet50"])
    parser.add_argument("--frames", nargs="+", type=int, default=[5, 36])
    parser.add_argument("--size", nargs=2, type=int, default=[360, 640])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "bifit_parity.json")
    parser.add_argument("--tolerance", type=float, default=1e-4)
    parser.add_argument("--record-keys", type=Path, metavar="JSON",
                        help="write the official state dict's names and shapes and stop")
    args = parser.parse_args()
    if args.official is None or not (args.official / "models" / "referformer.py").is_file():
        print(f"skipped: --official must name a checkout of LANMNG/BIFIT (got {args.official})")
        sys.exit(0)
    if args.record_keys:
        record_keys(args.official, args.backbone, args.record_keys)
        return
    from rvos.convert import convert_checkpoint

    commit = args.official_commit
    try:
        commit = subprocess.run(["git", "-C", str(args.official), "rev-parse", "HEAD"],
                                capture_output=True, text=True, check=True).stdout.strip() or commit
    except (OSError, subprocess.CalledProcessError):
        pass
    report = {"official": str(args.official), "official_commit": commit,
              "cpu": platform.processor() or platform.machine(), "threads": args.threads,
              "size": args.size, "torch": torch.__version__, "backbones": {}}
    ok = True
    for backbone in args.backbone:
        args.backbone_now = backbone
        print(f"== BIFIT {backbone}, {args.size[0]}x{args.size[1]}, frames {args.frames}")
        with tempfile.TemporaryDirectory(prefix="rvos-bifit-parity-") as tmp:
            work = Path(tmp)
            torch.save(rp.make_frames(max(args.frames), tuple(args.size)), work / "frames.pt")
            official_runs = rp.spawn(args, "official", work)
            start = time.perf_counter()
            convert_checkpoint(work / "official.pth", work / "converted")
            convert_s = time.perf_counter() - start
            from rvos.engine.checkpoint import load_checkpoint

            family = load_checkpoint(work / "converted").config.model.referformer.family
            if family != "bifit":
                raise SystemExit(f"the converted checkpoint is of family {family!r}, not bifit")
            rvos_runs = rp.spawn(args, "rvos", work)
            rows = []
            for o in official_runs:
                for r in (r for r in rvos_runs if r["frames"] == o["frames"]):
                    diff, agreement = rp.compare(work, o, r)
                    if r["mode"] == "float32":
                        ok &= max(diff.values()) < args.tolerance
                    rows.append({"frames": o["frames"], "rvos_mode": r["mode"],
                                 "official_frames_per_s": o["frames_per_s"],
                                 "rvos_frames_per_s": r["frames_per_s"],
                                 "speedup": r["frames_per_s"] / o["frames_per_s"],
                                 "official_peak_rss_gb": o["peak_rss_gb"],
                                 "rvos_peak_rss_gb": r["peak_rss_gb"], "max_abs_diff": diff,
                                 "selected_query_agreement": agreement})
        report["backbones"][backbone] = {"family": family, "convert_s": convert_s, "runs": rows}
        print(f"{'T':>3} {'rvos mode':>9} {'official f/s':>12} {'rvos f/s':>9} {'speed-up':>8} "
              f"{'off. GB':>8} {'rvos GB':>8}  max |diff| logits / boxes / masks   same query, mask IoU")
        for row in rows:
            d, a = row["max_abs_diff"], row["selected_query_agreement"]
            print(f"{row['frames']:>3} {row['rvos_mode']:>9} {row['official_frames_per_s']:>12.3f} "
                  f"{row['rvos_frames_per_s']:>9.3f} {row['speedup']:>7.2f}x "
                  f"{row['official_peak_rss_gb']:>8.2f} {row['rvos_peak_rss_gb']:>8.2f}  "
                  f"{d['pred_logits']:.2e} / {d['pred_boxes']:.2e} / {d['pred_masks']:.2e}   "
                  f"{a['same_query']}, {a['mask_iou']:.5f}")
    report["within_tolerance"] = ok
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(f"float32 outputs within {args.tolerance:g}: {ok}; report: {args.json}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
