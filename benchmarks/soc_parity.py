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
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))     # this checkout's rvos first
from referformer_parity import (FixedTokens, TIMING_HEADER,  # noqa: E402
                                add_common_options, add_output_options, add_worker_options, run_worker, worker_inputs,
                                compare, install_stand_ins, load_rvos, new_report,
                                official_commit, patch_roberta, perturb_constant_parameters,
                                require_checkout, run_backbone, spawn as spawn_script, time_runs,
                                timing_cells, timing_row, write_report)

ROOT = Path(__file__).resolve().parents[1]
OFFICIAL_BACKBONE = {"video_swin_t": "video-swin-t", "video_swin_s": "video-swin-s",
                     "video_swin_b": "video-swin-b"}


# ----------------------------------------------------------------------------- official side
def import_official(checkout: Path):
    """The checkout's ``models.soc`` module, with the compiled deformable attention replaced
    by the checkout's own pure-PyTorch version and RoBERTa built from its config."""
    install_stand_ins(checkout, fvcore=False)
    soc = importlib.import_module("models.soc")

    patch_roberta(soc)
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
    perturb_constant_parameters(model)
    with torch.no_grad():
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
    work, frames_all, ids = worker_inputs(args)
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
        model = load_rvos(work)
        attention = torch.ones_like(ids)

        def run(frames):
            pred = model.predict(frames[None], ids, attention)
            return pred.logits, pred.boxes, pred.masks
    runs = time_runs(args, work, frames_all, [("float32", run)], mode_in_name=False,
                     mode_field="float32", repeats=lambda t: args.repeats or (1 if t > 8 else 2),
                     warmup_frames=None if args.no_warmup else min(args.frames))
    Path(args.result).write_text(json.dumps(runs))


def spawn(args: argparse.Namespace, side: str, work: Path) -> list[dict]:
    return spawn_script(args, side, work, __file__,
                        ["--controller-scale", str(args.controller_scale), "--repeats", str(args.repeats)]
                        + (["--no-warmup"] if args.no_warmup else []))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_options(parser, "RobertLuo1/NeurIPS2023_SOC", ["video_swin_t"],
                       backbone_choices=sorted(OFFICIAL_BACKBONE))
    add_output_options(parser, "soc_parity.json")
    parser.add_argument("--repeats", type=int, default=0,
                        help="timed runs per clip length (0: 2 up to 8 frames, else 1)")
    parser.add_argument("--no-warmup", action="store_true",
                        help="no untimed first run (equivalence only: the timings then include it)")
    parser.add_argument("--controller-scale", type=float, default=1.0,
                        help="scale the official controller's last layer (mask logits of "
                             "trained-model magnitude instead of thousands)")
    parser.add_argument("--record-keys", type=Path, help="write the official state dict's "
                        "names and shapes per backbone to this JSON file and stop")
    add_worker_options(parser)
    args = parser.parse_args()
    if run_worker(args, worker):
        return
    require_checkout(args, "models/soc.py", "RobertLuo1/NeurIPS2023_SOC")
    if args.record_keys:
        record_keys(args.official, args.backbone, args.record_keys)
        return
    report = new_report(args, official_commit(args), controller_scale=args.controller_scale)
    ok = ok_scaled = True
    for backbone in args.backbone:
        args.backbone_now = backbone
        print(f"== {backbone}")

        def make_row(work, o, r):
            diff, agreement = compare(work, o, r)
            scale = {n: float(x.abs().max()) for n, x in zip(
                ("pred_logits", "pred_boxes", "pred_masks"), torch.load(work / f"{o['outputs']}.pt"))}
            return timing_row(o, r, diff, agreement, official_max_abs=scale,
                              max_rel_diff={n: diff[n] / max(scale[n], 1e-12) for n in diff})
        convert_s, rows, _ = run_backbone(args, "rvos-soc-parity-", spawn, make_row)
        for row in rows:
            diff, same = row["max_abs_diff"], row["selected_query_agreement"]["same_query"]
            ok &= max(diff.values()) < args.tolerance and same
            # mask logits scaled by their magnitude (see the docstring)
            ok_scaled &= (max(diff["pred_logits"], diff["pred_boxes"]) < args.tolerance
                          and diff["pred_masks"] < args.tolerance * max(1.0, row["official_max_abs"]["pred_masks"])
                          and same)
        report["backbones"][backbone] = {"convert_s": convert_s, "runs": rows}
        print(f"{'T':>3} {TIMING_HEADER}  max |diff| logits / boxes / masks   "
              f"same query, mask IoU, max |official mask logit|")
        for row in rows:
            d, a = row["max_abs_diff"], row["selected_query_agreement"]
            print(f"{row['frames']:>3} {timing_cells(row)}  "
                  f"{d['pred_logits']:.2e} / {d['pred_boxes']:.2e} / {d['pred_masks']:.2e}   "
                  f"{a['same_query']}, {a['mask_iou']:.5f}, {row['official_max_abs']['pred_masks']:.1f}")
    report["within_tolerance"] = ok
    report["within_tolerance_masks_scaled"] = ok_scaled
    write_report(args, report)
    print(f"float32 outputs within {args.tolerance:g}: {ok}; with the mask logits' tolerance "
          f"scaled by their magnitude: {ok_scaled}; report: {args.json}")
    sys.exit(0 if ok_scaled else 1)


if __name__ == "__main__":
    main()
