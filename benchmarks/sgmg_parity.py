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
import importlib.util
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.referformer_parity import (ROBERTA_BASE, SENTENCE_IDS, FixedTokens,  # noqa: E402
                                           make_frames, peak_rss_gb, reset_peak_rss)

OFFICIAL_BACKBONES = {"video_swin_t": "video_swin_t_p4w7", "video_swin_s": "video_swin_s_p4w7",
                      "video_swin_b": "video_swin_b_p4w7"}


# ----------------------------------------------------------------------------- official side
@functools.cache
def import_official(checkout: Path):
    """``models.sgmg.build`` and ``opts.get_args_parser`` from the checkout, the compiled
    deformable attention replaced by the checkout's pure-PyTorch version, RoBERTa built
    from its config with random weights."""
    sys.path.insert(0, str(checkout))
    if importlib.util.find_spec("fvcore") is None:          # only its initialiser is imported
        fv, nn_mod, init = (types.ModuleType(n) for n in ("fvcore", "fvcore.nn", "fvcore.nn.weight_init"))

        def c2_xavier_fill(module):
            torch.nn.init.kaiming_uniform_(module.weight, a=1)
            if module.bias is not None:
                torch.nn.init.constant_(module.bias, 0)

        init.c2_xavier_fill = c2_xavier_fill
        fv.nn, nn_mod.weight_init = nn_mod, init
        sys.modules.update({"fvcore": fv, "fvcore.nn": nn_mod, "fvcore.nn.weight_init": init})
    if importlib.util.find_spec("ftfy") is None:            # the CLIP tokenizer's text cleaning
        ftfy = types.ModuleType("ftfy")
        ftfy.fix_text = lambda text: text
        sys.modules["ftfy"] = ftfy

    msda = types.ModuleType("MultiScaleDeformableAttention")

    def forward(value, shapes, level_start, locations, weights, im2col_step):
        from models.ops.functions.ms_deform_attn_func import ms_deform_attn_core_pytorch

        return ms_deform_attn_core_pytorch(value, [(int(h), int(w)) for h, w in shapes],
                                           locations, weights)

    msda.ms_deform_attn_forward = forward
    sys.modules["MultiScaleDeformableAttention"] = msda
    import models.backbone as official_backbone
    import models.sgmg as official_sgmg
    import models.text_encoder.text_encoder as official_text
    import models.text_encoder.tokenizer as official_tokenizer
    import opts

    official_backbone.is_main_process = lambda: False        # no ImageNet download

    class RandomRoberta:
        @staticmethod
        def from_pretrained(name):
            from transformers import RobertaConfig, RobertaModel

            return RobertaModel(RobertaConfig(**ROBERTA_BASE))

    class NoTokenizer:            # token ids are given (no tokenizer files here)
        @staticmethod
        def from_pretrained(name):
            return None

    official_text.RobertaModel = RandomRoberta
    official_tokenizer.RobertaTokenizerFast = NoTokenizer
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
    with torch.no_grad():   # no constant-initialised part left degenerate (uniform attention, ...)
        for name, p in model.named_parameters():
            if ("norm" not in name and "text_encoder" not in name
                    and bool((p == p.flatten()[0]).all())):
                p.add_(torch.randn_like(p) * 0.02)
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
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    frames_all = torch.load(work / "frames.pt")
    ids = torch.tensor([SENTENCE_IDS])
    runs = []
    if args.worker == "official":
        model = build_official(Path(args.official), args.backbone, args.seed, ids)
        torch.save({"model": model.state_dict()}, work / "official.pth")
        run = official_runner(model)
    else:
        from rvos.engine.checkpoint import load_checkpoint, load_weights_into
        from rvos.models.build import build_model

        checkpoint = load_checkpoint(work / "converted")
        cfg = checkpoint.config
        model = build_model(cfg, pretrained=False)
        load_weights_into(model, checkpoint, work / "converted")
        del checkpoint
        model.prepare_for_inference()
        attention = torch.ones_like(ids)

        def run(frames):
            p = model.predict(frames[None], ids, attention)
            q = p.query
            return (p.logits, q, p.logits[:, :, q], p.boxes[:, :, q], p.masks)
    with torch.no_grad():
        run(frames_all[:2])                                           # warm-up
        for t in args.frames:
            frames = frames_all[:t]
            repeats = 1 if t > 8 else args.repeats
            reset_peak_rss()
            start = time.perf_counter()
            for _ in range(repeats):
                outputs = run(frames)
            seconds = (time.perf_counter() - start) / repeats
            name = f"{args.worker}_T{t}"
            torch.save([o.float() for o in outputs], work / f"{name}.pt")
            runs.append({"side": args.worker, "frames": t, "seconds": seconds,
                         "frames_per_s": t / seconds, "peak_rss_gb": peak_rss_gb(),
                         "outputs": name})
            print(f"  {name}: {seconds:.2f} s, {t / seconds:.2f} frames/s, "
                  f"peak {runs[-1]['peak_rss_gb']:.2f} GB", flush=True)
    Path(args.result).write_text(json.dumps(runs))


def spawn(args: argparse.Namespace, side: str, work: Path) -> list[dict]:
    result = work / f"{side}.json"
    cmd = [sys.executable, __file__, "--worker", side, "--work", str(work), "--result", str(result),
           "--backbone", args.backbone_now, "--threads", str(args.threads), "--seed", str(args.seed),
           "--repeats", str(args.repeats), "--frames", *map(str, args.frames)]
    if args.official:
        cmd += ["--official", str(args.official)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(args.threads)}
    subprocess.run(cmd, check=True, env=env)
    return json.loads(result.read_text())


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
    parser.add_argument("--official", type=Path, help="checkout of bo-miao/SgMg")
    parser.add_argument("--official-commit", help="its commit, when the folder is an export "
                                                  "without .git (read with git otherwise)")
    parser.add_argument("--backbone", nargs="+", default=["video_swin_t", "resnet50"])
    parser.add_argument("--frames", nargs="+", type=int, default=[5, 36])
    parser.add_argument("--size", nargs=2, type=int, default=[360, 640])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per clip of 8 frames or fewer")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "sgmg_parity.json")
    parser.add_argument("--tolerance", type=float, default=1e-4)
    parser.add_argument("--record-keys", type=Path, help="write the official names and shapes here and exit")
    parser.add_argument("--worker", choices=["official", "rvos"], help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.backbone = args.backbone[0]
        worker(args)
        return
    if args.official is None or not (args.official / "models" / "sgmg.py").is_file():
        print(f"skipped: --official must name a checkout of bo-miao/SgMg (got {args.official})")
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
              "size": args.size, "torch": torch.__version__, "backbones": {}}
    ok = True
    for backbone in args.backbone:
        args.backbone_now = backbone
        print(f"== {backbone}")
        with tempfile.TemporaryDirectory(prefix="rvos-sgmg-parity-") as tmp:
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
                    ok &= max(diff.values()) < args.tolerance and agreement["same_query"]
                    rows.append({"frames": o["frames"],
                                 "official_frames_per_s": o["frames_per_s"],
                                 "rvos_frames_per_s": r["frames_per_s"],
                                 "speedup": r["frames_per_s"] / o["frames_per_s"],
                                 "official_peak_rss_gb": o["peak_rss_gb"],
                                 "rvos_peak_rss_gb": r["peak_rss_gb"], "max_abs_diff": diff,
                                 "selected_query_agreement": agreement})
        report["backbones"][backbone] = {"convert_s": convert_s, "runs": rows}
        print(f"{'T':>3} {'official f/s':>12} {'rvos f/s':>9} {'speed-up':>8} {'off. GB':>8} "
              f"{'rvos GB':>8}  max |diff| logits(all) / logits / boxes / final masks   "
              f"same query, mask IoU")
        for row in rows:
            d = row["max_abs_diff"]
            print(f"{row['frames']:>3} {row['official_frames_per_s']:>12.3f} "
                  f"{row['rvos_frames_per_s']:>9.3f} {row['speedup']:>7.2f}x "
                  f"{row['official_peak_rss_gb']:>8.2f} {row['rvos_peak_rss_gb']:>8.2f}  "
                  f"{d['pred_logits_all_queries']:.2e} / {d['pred_logits']:.2e} / "
                  f"{d['pred_boxes']:.2e} / {d['pred_masks']:.2e}   "
                  f"{row['selected_query_agreement']['same_query']}, "
                  f"{row['selected_query_agreement']['mask_iou']:.5f}")
    report["within_tolerance"] = ok
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(f"float32 outputs within {args.tolerance:g} and same query: {ok}; report: {args.json}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
