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
import subprocess
import sys
from pathlib import Path


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
    rp.add_common_options(parser, "LANMNG/BIFIT", ["resnet50"], commit_default="3c88769",
                          commit_help="its commit, when the folder is an export without .git")
    rp.add_output_options(parser, "bifit_parity.json")
    parser.add_argument("--record-keys", type=Path, metavar="JSON",
                        help="write the official state dict's names and shapes and stop")
    args = parser.parse_args()
    rp.require_checkout(args, "models/referformer.py", "LANMNG/BIFIT")
    if args.record_keys:
        record_keys(args.official, args.backbone, args.record_keys)
        return
    report = rp.new_report(args, rp.official_commit(args, git_first=True))
    ok = True

    def check_family(work: Path) -> str:
        from rvos.engine.checkpoint import load_checkpoint

        family = load_checkpoint(work / "converted").config.model.referformer.family
        if family != "bifit":
            raise SystemExit(f"the converted checkpoint is of family {family!r}, not bifit")
        return family

    def make_row(work, o, r):
        diff, agreement = rp.compare(work, o, r)
        return rp.timing_row(o, r, diff, agreement, {"rvos_mode": r["mode"]})
    for backbone in args.backbone:
        args.backbone_now = backbone
        print(f"== BIFIT {backbone}, {args.size[0]}x{args.size[1]}, frames {args.frames}")
        convert_s, rows, family = rp.run_backbone(args, "rvos-bifit-parity-", rp.spawn, make_row,
                                                  check_family)
        ok &= all(max(row["max_abs_diff"].values()) < args.tolerance
                  for row in rows if row["rvos_mode"] == "float32")
        report["backbones"][backbone] = {"family": family, "convert_s": convert_s, "runs": rows}
        rp.print_rows(rows)
    report["within_tolerance"] = ok
    rp.write_report(args, report)
    print(f"float32 outputs within {args.tolerance:g}: {ok}; report: {args.json}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
