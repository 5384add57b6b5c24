"""Proof that rvos's SgMg computes what the official SgMg computes, and how fast.

    python benchmarks/sgmg_parity.py --official /path/to/SgMg \
        [--backbone video_swin_t resnet50] [--frames 5 36] [--size 360 640] [--threads 2]
    python benchmarks/sgmg_parity.py --official /path/to/SgMg --record-keys tests/data/sgmg_official_keys.json

``--official`` is a checkout (or export) of bo-miao/SgMg (a folder with ``models/sgmg.py``,
``util/`` and ``opts.py``). For each backbone the script

1. builds the OFFICIAL model from that checkout (``models.sgmg.build`` with the options of
   its Ref-YouTube-VOS inference, ``--with_box_refine --binary --freeze_text_encoder
   --eval``), with its own random initialisation plus N(0, 0.02) noise on every
   constant-initialised parameter that is not a norm's (so nothing is degenerate): RoBERTa
   built from roberta-base's config (nothing is downloaded), the ResNet without ImageNet
   weights, the compiled deformable attention replaced by the checkout's own pure-PyTorch
   ``ms_deform_attn_core_pytorch``; stand-ins only for imports that compute nothing here
   (``ftfy``, used by the unused CLIP tokenizer, and ``fvcore``'s initialiser);
2. saves its state dict as the official training does (``{"model": state_dict}``),
   converts it with ``rvos convert``'s function and loads the result into rvos's SgMg;
3. runs both on the same frames (a real DAVIS clip from ../shared/assets when present,
   else noise) and token ids, each side in its own process (its own peak memory), and
   compares: the last decoder layer's logits of every query (``pred_logits`` before the
   official selection, read with a forward hook), the selected query, its logits and boxes
   (the official ``pred_logits`` / ``pred_boxes`` after selection) and its refined mask
   (the official ``pred_masks``, cropped to the unpadded frame): max abs differences, and
   the IoU of the two binary masks (logit > 0); frames/s and peak resident memory.

Prints a table and writes ``--json`` (default benchmarks/results/sgmg_parity.json).
Official modules are imported at run time from the user's path only; nothing of them is in
rvos. ``--record-keys FILE`` writes the official state dict's names and shapes for the
given backbones (the test data of tests/test_referformer_sgmg.py) and exits.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.referformer_parity import (SENTENCE_IDS, FixedTokens, TIMING_HEADER,  # noqa: E402
                                           add_common_options, add_output_options,
                                           add_worker_options, run_worker, worker_inputs, install_stand_ins, load_rvos,
                                           new_report, official_commit, patch_roberta,
                                           perturb_constant_parameters, require_checkout,
                                           run_backbone, spawn as spawn_script, time_runs,
                                           timing_cells, timing_row, write_report)

OFFICIAL_BACKBONES = {"video_swin_t": "video_swin_t_p4w7", "video_swin_s": "video_swin_s_p4w7",
                      "video_swin_b": "video_swin_b_p4w7"}


# ----------------------------------------------------------------------------- official side
@functools.cache
def import_official(checkout: Path):
    """``models.sgmg.build`` and ``opts.get_args_parser`` from the checkout, the compiled
    deformable attention replaced by the checkout's pure-PyTorch version, RoBERTa built
    from its config with random weights."""
    install_stand_ins(checkout, ftfy=True)
    import models.backbone as official_backbone
    import models.sgmg as official_sgmg
    import models.text_encoder.text_encoder as official_text
    import models.text_encoder.tokenizer as official_tokenizer
    import opts

    official_backbone.is_main_process = lambda: False        # no ImageNet download

    patch_roberta(official_text, official_tokenizer)
    return official_sgmg.build, opts.get_args_parser


def official_options(parser_factory, backbone: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(parents=[parser_factory()], add_help=False)
    return parser.parse_args(["--with_box_refine", "--binary", "--freeze_text_encoder", "--eval",
                              "--backbone", OFFICIAL_BACKBONES.get(backbone, backbone),
                              "--device", "cpu", "--masks", "--dataset_file", "ytvos"])


def build_official(checkout: Path, backbone: str, seed: int, ids: torch.Tensor):
    """The official model in eval mode, random weights (see the module docstring)."""
    build, parser_factory = import_official(checkout)
    torch.manual_seed(seed)
    model, _, _ = build(official_options(parser_factory, backbone))
    model.eval()
    model.text_encoder.tokenizer.tokenizer = FixedTokens(ids)
    perturb_constant_parameters(model, lambda name: "text_encoder" in name)
    return model


def official_runner(model):
    """frames (T, 3, h, w) -> (every query's last-layer logits (1, T, Q, k), selected query,
    selected logits (1, T, 1, k), boxes (1, T, 1, 4), refined mask (1, T, h, w))."""
    seen = {}
    model.class_embed[-1].register_forward_hook(lambda m, i, o: seen.__setitem__("logits", o))

    def run(frames):
        h, w = frames.shape[-2:]
        out = model([frames], ["a sentence"], [{"size": torch.as_tensor([h, w])}])
        logits = seen["logits"][None]                                        # (1, T, Q, k)
        query = logits[0].sigmoid().mean(0).max(-1).values.argmax()
        return (logits, query.reshape(1), out["pred_logits"], out["pred_boxes"],
                out["pred_masks"][:, :, 0, :h, :w])
    return run


def record_keys(checkout: Path, backbones: list[str], out: Path) -> None:
    """The official state dict's names and shapes, per backbone (RoBERTa's once, they do not
    depend on it), for the converter tests."""
    ids = torch.tensor([SENTENCE_IDS])
    record = {"official": str(checkout), "backbones": {}}
    for backbone in backbones:
        model = build_official(checkout, backbone, 0, ids)
        state = model.state_dict()
        record["backbones"][backbone] = {k: list(v.shape) for k, v in state.items()
                                         if not k.startswith("text_encoder.")}
        record["text_encoder"] = {k: list(v.shape) for k, v in state.items()
                                  if k.startswith("text_encoder.")}
        del model
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1))
    print(f"recorded {', '.join(backbones)}: {out}")


# ----------------------------------------------------------------------------- workers
def worker(args: argparse.Namespace) -> None:
    """One side's runs, in its own process: results to ``args.result``."""
    work, frames_all, ids = worker_inputs(args)
    if args.worker == "official":
        model = build_official(Path(args.official), args.backbone, args.seed, ids)
        torch.save({"model": model.state_dict()}, work / "official.pth")
        run = official_runner(model)
    else:
        model = load_rvos(work)
        attention = torch.ones_like(ids)

        def run(frames):
            p = model.predict(frames[None], ids, attention)
            q = p.query
            return (p.logits, q, p.logits[:, :, q], p.boxes[:, :, q], p.masks)
    runs = time_runs(args, work, frames_all, [("float32", run)], warmup_frames=2,
                     repeats=lambda t: 1 if t > 8 else args.repeats, mode_in_name=False)
    Path(args.result).write_text(json.dumps(runs))


def spawn(args: argparse.Namespace, side: str, work: Path) -> list[dict]:
    return spawn_script(args, side, work, __file__, ["--repeats", str(args.repeats)])


NAMES = ("pred_logits_all_queries", "selected_query", "pred_logits", "pred_boxes", "pred_masks")


def compare(work: Path, official: dict, mine: dict) -> tuple[dict, dict]:
    """(max abs difference per output, agreement: same selected query, IoU of the binary
    masks (logit > 0) and the count of differing pixels)."""
    a = torch.load(work / f"{official['outputs']}.pt")
    b = torch.load(work / f"{mine['outputs']}.pt")
    same_query = bool(torch.equal(a[1], b[1]))
    diff = {n: float((x - y).abs().max()) for n, x, y in zip(NAMES, a, b) if n != "selected_query"}
    mask_a, mask_b = a[4] > 0, b[4] > 0
    union = (mask_a | mask_b).sum()
    iou = float((mask_a & mask_b).sum() / union) if union else 1.0
    diff_rel = diff["pred_masks"] / max(float(a[4].abs().max()), 1e-12)
    return diff, {"same_query": same_query, "pred_masks_max_abs": float(a[4].abs().max()),
                  "pred_masks_relative_diff": diff_rel, "query": int(a[1][0]), "mask_iou": iou,
                  "mask_pixels_differing": int((mask_a ^ mask_b).sum())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_options(parser, "bo-miao/SgMg", ["video_swin_t", "resnet50"])
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per clip of 8 frames or fewer")
    add_output_options(parser, "sgmg_parity.json")
    parser.add_argument("--record-keys", type=Path, help="write the official names and shapes here and exit")
    add_worker_options(parser)
    args = parser.parse_args()
    if run_worker(args, worker):
        return
    require_checkout(args, "models/sgmg.py", "bo-miao/SgMg")
    if args.record_keys:
        record_keys(args.official, args.backbone, args.record_keys)
        return
    report = new_report(args, official_commit(args))
    ok = True
    for backbone in args.backbone:
        args.backbone_now = backbone
        print(f"== {backbone}")

        def make_row(work, o, r):
            return timing_row(o, r, *compare(work, o, r))
        convert_s, rows, _ = run_backbone(args, "rvos-sgmg-parity-", spawn, make_row)
        ok &= all(max(row["max_abs_diff"].values()) < args.tolerance
                  and row["selected_query_agreement"]["same_query"] for row in rows)
        report["backbones"][backbone] = {"convert_s": convert_s, "runs": rows}
        print(f"{'T':>3} {TIMING_HEADER}  max |diff| logits(all) / logits / boxes / final masks   "
              f"same query, mask IoU")
        for row in rows:
            d, a = row["max_abs_diff"], row["selected_query_agreement"]
            print(f"{row['frames']:>3} {timing_cells(row)}  "
                  f"{d['pred_logits_all_queries']:.2e} / {d['pred_logits']:.2e} / "
                  f"{d['pred_boxes']:.2e} / {d['pred_masks']:.2e}   {a['same_query']}, {a['mask_iou']:.5f}")
    report["within_tolerance"] = ok
    write_report(args, report)
    print(f"float32 outputs within {args.tolerance:g} and same query: {ok}; report: {args.json}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
