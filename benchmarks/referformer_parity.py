"""Proof that rvos's ReferFormer computes what the official code computes, and how fast.

    python benchmarks/referformer_parity.py --official /path/to/ReferFormer \
        [--backbone resnet50 video_swin_t] [--frames 5 36] [--size 360 640] [--threads 2]

``--official`` is a checkout of wjn922/ReferFormer (a folder with ``models/``, ``util/`` and
``opts.py``). For each backbone the script

1. builds the OFFICIAL model from that checkout (``models.build`` with the options of the
   released Ref-YouTube-VOS models: ``--with_box_refine --binary``), with random weights:
   RoBERTa is built from roberta-base's config (nothing is downloaded), the ResNet without
   ImageNet weights; the compiled deformable-attention op is replaced by the official
   pure-PyTorch ``ms_deform_attn_core_pytorch`` from the same checkout;
2. saves its state dict in the official format (``{"model": state_dict}`` in a ``.pth``),
   converts it with ``rvos convert`` and loads the result into rvos's model;
3. runs both on the same frames (a real DAVIS clip from ../shared/assets when present,
   resized to ``--size``, else random) and the same token ids, each in its own process
   (so that its peak memory is its own), and compares ``pred_logits``, ``pred_boxes`` and
   ``pred_masks`` (max abs difference), frames/s and peak resident memory; rvos in float32
   and, where the CPU has AVX512-BF16, in bfloat16 too.

Prints a table and writes ``--json`` (default benchmarks/results/referformer_parity.json).
Official modules are imported at run time from the user's path only; nothing of them is
in rvos. Needs ``einops`` (and ``timm`` for Swin backbones) for the official code; a
missing ``fvcore`` is stood in for by its one initialiser the official code calls.
"""

from __future__ import annotations

import argparse
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

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
ROBERTA_BASE = dict(vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                    intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1,
                    layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2)
SENTENCE_IDS = [0, 627, 1275, 512, 15, 5, 314, 9, 5, 2170, 2]   # <s> ... </s>, 11 tokens


# ----------------------------------------------------------------------------- memory
def reset_peak_rss() -> None:
    """Start a new peak-RSS measurement (Linux: clear_refs 5 resets VmHWM)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_gb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def has_avx512_bf16() -> bool:
    try:
        return "avx512_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


# ----------------------------------------------------------------------------- official side
def install_stand_ins(checkout: Path, *, fvcore: bool = True, ftfy: bool = False) -> None:
    """Put ``checkout`` first on ``sys.path`` and register stand-ins for what the official
    code imports but cannot have here: the compiled ``MultiScaleDeformableAttention`` op
    (forwarded to the checkout's own pure-PyTorch ``ms_deform_attn_core_pytorch``), and,
    when not installed and asked for, ``fvcore`` (its one initialiser the official code
    calls) and ``ftfy`` (text cleaning of an unused CLIP tokenizer)."""
    sys.path.insert(0, str(checkout))
    if fvcore and importlib.util.find_spec("fvcore") is None:   # only its initialiser is used
        fv, nn_mod, init = (types.ModuleType(n) for n in ("fvcore", "fvcore.nn", "fvcore.nn.weight_init"))

        def c2_xavier_fill(module):
            torch.nn.init.kaiming_uniform_(module.weight, a=1)
            if module.bias is not None:
                torch.nn.init.constant_(module.bias, 0)

        init.c2_xavier_fill = c2_xavier_fill
        fv.nn, nn_mod.weight_init = nn_mod, init
        sys.modules.update({"fvcore": fv, "fvcore.nn": nn_mod, "fvcore.nn.weight_init": init})
    if ftfy and importlib.util.find_spec("ftfy") is None:
        ftfy_mod = types.ModuleType("ftfy")
        ftfy_mod.fix_text = lambda text: text
        sys.modules["ftfy"] = ftfy_mod

    msda = types.ModuleType("MultiScaleDeformableAttention")

    def forward(value, shapes, level_start, locations, weights, im2col_step):
        from models.ops.functions.ms_deform_attn_func import ms_deform_attn_core_pytorch

        return ms_deform_attn_core_pytorch(value, [(int(h), int(w)) for h, w in shapes],
                                           locations, weights)

    msda.ms_deform_attn_forward = forward
    sys.modules["MultiScaleDeformableAttention"] = msda


class RandomRoberta:
    """Stands in for ``transformers.RobertaModel``: roberta-base's architecture with random
    weights (nothing is downloaded)."""

    @staticmethod
    def from_pretrained(name):
        from transformers import RobertaConfig, RobertaModel

        return RobertaModel(RobertaConfig(**ROBERTA_BASE))


class NoTokenizer:
    """Stands in for ``RobertaTokenizerFast``: token ids are given (no tokenizer files here)."""

    @staticmethod
    def from_pretrained(name):
        return None


def patch_roberta(model_module, tokenizer_module=None) -> None:
    """Make the official module build RoBERTa from its config and no tokenizer
    (``tokenizer_module``: where the tokenizer class is looked up, default the same)."""
    model_module.RobertaModel = RandomRoberta
    (tokenizer_module or model_module).RobertaTokenizerFast = NoTokenizer


def perturb_constant_parameters(model: torch.nn.Module, is_text=None) -> None:
    """Add N(0, 0.02) noise to every constant-initialised parameter (zero box heads, ...)
    that is neither a norm's nor the text encoder's (``is_text(name)``, default: the name
    starts with ``text_encoder``), so that no part is left degenerate (uniform attention, ...)."""
    is_text = is_text or (lambda name: name.startswith("text_encoder"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name and not is_text(name) and bool((p == p.flatten()[0]).all()):
                p.add_(torch.randn_like(p) * 0.02)


def import_official(checkout: Path):
    """``models.build`` and ``opts.get_args_parser`` from the checkout, with the compiled
    deformable attention replaced by the checkout's own pure-PyTorch version."""
    install_stand_ins(checkout)
    import models            # noqa: F401  (the checkout's package)
    import models.backbone as official_backbone
    import models.referformer as official_referformer
    import opts

    official_backbone.is_main_process = lambda: False        # no ImageNet download
    patch_roberta(official_referformer)
    return official_referformer.build, opts.get_args_parser


class FixedTokens:
    """Stands in for the tokenizer: returns the given ids for the (one) caption."""

    def __init__(self, ids: torch.Tensor):
        self.ids = ids

    def batch_encode_plus(self, captions, padding, return_tensors):
        from transformers import BatchEncoding

        return BatchEncoding({"input_ids": self.ids, "attention_mask": torch.ones_like(self.ids)})


def official_options(parser_factory, backbone: str) -> argparse.Namespace:
    name = {"video_swin_t": "video_swin_t_p4w7", "video_swin_s": "video_swin_s_p4w7",
            "video_swin_b": "video_swin_b_p4w7"}.get(backbone, backbone)
    parser = argparse.ArgumentParser(parents=[parser_factory()], add_help=False)
    return parser.parse_args(["--with_box_refine", "--binary", "--freeze_text_encoder",
                              "--backbone", name, "--device", "cpu", "--masks"])


# ----------------------------------------------------------------------------- inputs
def make_frames(count: int, size: tuple[int, int]) -> torch.Tensor:
    """(count, 3, H, W) normalised: a real DAVIS clip when ../shared has one, else noise."""
    from PIL import Image

    folders = sorted((ROOT.parent / "shared" / "assets" / "davis-real").glob("**/JPEGImages/*/*"))
    folders = [f for f in folders if f.is_dir()] or sorted(
        p.parent for p in (ROOT.parent / "shared" / "assets").glob("**/*.jpg"))
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    for folder in folders:
        files = sorted(folder.glob("*.jpg"))
        if files:
            files = [files[i % len(files)] for i in range(count)]
            arrays = [np.asarray(Image.open(f).convert("RGB").resize(size[::-1], Image.BILINEAR))
                      for f in files]
            x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255
            return (x - mean) / std
    return torch.randn(count, 3, *size, generator=torch.Generator().manual_seed(0))


# ----------------------------------------------------------------------------- workers
def load_rvos(work: Path):
    """rvos's model from the converted checkpoint in ``work / "converted"``, ready for
    inference (weights held once, as ``Predictor.from_checkpoint``)."""
    from rvos.engine.checkpoint import load_checkpoint, load_weights_into
    from rvos.models.build import build_model

    checkpoint = load_checkpoint(work / "converted")
    model = build_model(checkpoint.config, pretrained=False)
    load_weights_into(model, checkpoint, work / "converted")
    del checkpoint
    model.prepare_for_inference()
    return model


def time_runs(args: argparse.Namespace, work: Path, frames_all: torch.Tensor, modes, *,
              repeats, warmup_frames: int | None, mode_in_name: bool = True,
              mode_field: str | None = None) -> list[dict]:
    """Time each ``(mode, fn)`` of ``modes`` on the first ``t`` frames for every ``t`` of
    ``args.frames`` (``repeats(t)`` runs each, after one untimed run on ``warmup_frames``
    frames unless None); save the outputs to ``work / f"{name}.pt"`` and return one record
    per run. ``mode_in_name``: the name is ``{side}_{mode}_T{t}`` (else ``{side}_T{t}``);
    the record has a ``"mode"`` field when ``mode_in_name`` or ``mode_field`` is given."""
    runs = []
    with torch.no_grad():
        for mode, fn in modes:
            if warmup_frames is not None:
                fn(frames_all[:warmup_frames])                          # warm-up
            for t in args.frames:
                frames = frames_all[:t]
                count = repeats(t)
                reset_peak_rss()
                start = time.perf_counter()
                for _ in range(count):
                    outputs = fn(frames)
                seconds = (time.perf_counter() - start) / count
                name = f"{args.worker}_{mode}_T{t}" if mode_in_name else f"{args.worker}_T{t}"
                torch.save([o.float() for o in outputs], work / f"{name}.pt")
                record = {"side": args.worker}
                if mode_in_name or mode_field:
                    record["mode"] = mode_field or mode
                record.update({"frames": t, "seconds": seconds, "frames_per_s": t / seconds,
                               "peak_rss_gb": peak_rss_gb(), "outputs": name})
                runs.append(record)
                print(f"  {name}: {seconds:.2f} s, {t / seconds:.2f} frames/s, "
                      f"peak {record['peak_rss_gb']:.2f} GB", flush=True)
    return runs


def worker_inputs(args: argparse.Namespace) -> tuple[Path, torch.Tensor, torch.Tensor]:
    """A worker's threads set; its work folder, the frames saved there, the token ids."""
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    return work, torch.load(work / "frames.pt"), torch.tensor([SENTENCE_IDS])


def run_worker(args: argparse.Namespace, worker) -> bool:
    """When this process is a worker (``--worker`` given): ``worker(args)`` on its one
    backbone, and True; else False."""
    if not args.worker:
        return False
    args.backbone = args.backbone[0]
    worker(args)
    return True


def worker(args: argparse.Namespace) -> None:
    """One side's runs, in its own process: results to ``args.result``."""
    work, frames_all, ids = worker_inputs(args)
    if args.worker == "official":
        build, parser_factory = import_official(Path(args.official))
        torch.manual_seed(args.seed)
        model, _, _ = build(official_options(parser_factory, args.backbone))
        model.eval()
        model.tokenizer = FixedTokens(ids)
        perturb_constant_parameters(model)
        torch.save({"model": model.state_dict()}, work / "official.pth")

        def run(frames):
            size = torch.as_tensor(frames.shape[-2:])
            out = model([frames], ["a sentence"], [{"size": size}])
            return out["pred_logits"], out["pred_boxes"], out["pred_masks"]
        modes = [("float32", run)]
    else:
        model = load_rvos(work)
        attention = torch.ones_like(ids)

        def run(frames):
            pred = model.predict(frames[None], ids, attention)
            return pred.logits, pred.boxes, pred.masks

        def run_bf16(frames):
            model.cfg.inference.bf16 = True
            try:
                return run(frames)
            finally:
                model.cfg.inference.bf16 = False
        modes = [("float32", run)] + ([("bfloat16", run_bf16)] if has_avx512_bf16() else [])
    runs = time_runs(args, work, frames_all, modes, repeats=lambda t: 1 if t > 8 else 3,
                     warmup_frames=min(args.frames))
    Path(args.result).write_text(json.dumps(runs))


def spawn(args: argparse.Namespace, side: str, work: Path, script: str | None = None,
          extra: list[str] = ()) -> list[dict]:
    """Run ``script`` (default this one) as the ``side`` worker with ``args``' settings and
    the ``extra`` command-line options; its run records."""
    result = work / f"{side}.json"
    cmd = [sys.executable, script or __file__, "--worker", side, "--work", str(work),
           "--result", str(result), "--backbone", args.backbone_now, "--threads", str(args.threads),
           "--seed", str(args.seed), *extra, "--frames", *map(str, args.frames)]
    if args.official:
        cmd += ["--official", str(args.official)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(args.threads)}
    subprocess.run(cmd, check=True, env=env)
    return json.loads(result.read_text())


def compare(work: Path, official: dict, mine: dict) -> tuple[dict, dict]:
    """(max abs difference per output, agreement of what inference keeps: the query the
    official recipe selects, and the IoU of the two binary masks of that query (> 0.5))."""
    a = torch.load(work / f"{official['outputs']}.pt")
    b = torch.load(work / f"{mine['outputs']}.pt")
    names = ("pred_logits", "pred_boxes", "pred_masks")
    diff = {n: float((x - y).abs().max()) for n, x, y in zip(names, a, b)}
    best_a = a[0][0].sigmoid().mean(0).max(-1).values.argmax()
    best_b = b[0][0].sigmoid().mean(0).max(-1).values.argmax()
    mask_a, mask_b = a[2][0][:, best_a] > 0, b[2][0][:, best_a] > 0
    union = (mask_a | mask_b).sum()
    iou = float((mask_a & mask_b).sum() / union) if union else 1.0
    return diff, {"same_query": bool(best_a == best_b), "mask_iou": iou,
                  "mask_pixels_differing": int((mask_a ^ mask_b).sum())}


# ----------------------------------------------------------------------------- main loop
def add_common_options(parser: argparse.ArgumentParser, repository: str, backbones: list[str],
                       backbone_choices=None, commit_default: str | None = None,
                       commit_help: str = "its commit, when the folder is an export "
                                          "without .git (read with git otherwise)") -> None:
    """The options every parity script has up to ``--seed``: ``--official`` (a checkout of
    ``repository``), ``--official-commit``, ``--backbone`` (default ``backbones``),
    ``--frames``, ``--size``, ``--threads``, ``--seed``."""
    parser.add_argument("--official", type=Path, help=f"checkout of {repository}")
    parser.add_argument("--official-commit", default=commit_default, help=commit_help)
    parser.add_argument("--backbone", nargs="+", default=backbones, choices=backbone_choices)
    parser.add_argument("--frames", nargs="+", type=int, default=[5, 36])
    parser.add_argument("--size", nargs=2, type=int, default=[360, 640])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)


def add_output_options(parser: argparse.ArgumentParser, json_name: str) -> None:
    """``--json`` (default benchmarks/results/``json_name``) and ``--tolerance``."""
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / json_name)
    parser.add_argument("--tolerance", type=float, default=1e-4)


def add_worker_options(parser: argparse.ArgumentParser) -> None:
    """The hidden options of a worker process (see ``spawn``)."""
    parser.add_argument("--worker", choices=["official", "rvos"], help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)


def require_checkout(args: argparse.Namespace, marker: str, repository: str) -> None:
    """Exit (status 0, "skipped") unless ``args.official / marker`` is a file."""
    if args.official is None or not (args.official / marker).is_file():
        print(f"skipped: --official must name a checkout of {repository} (got {args.official})")
        sys.exit(0)


def official_commit(args: argparse.Namespace, git_first: bool = False) -> str | None:
    """The checkout's commit: ``--official-commit`` when given, else ``git rev-parse HEAD``
    (``git_first``: git's answer when there is one, else ``--official-commit``)."""
    commit = args.official_commit
    if commit and not git_first:
        return commit
    try:
        return subprocess.run(["git", "-C", str(args.official), "rev-parse", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip() or commit
    except (OSError, subprocess.CalledProcessError):
        return commit


def new_report(args: argparse.Namespace, commit: str | None, **extra) -> dict:
    """The report's header fields (then ``extra``), with an empty ``backbones``."""
    return {"official": str(args.official), "official_commit": commit,
            "cpu": platform.processor() or platform.machine(), "threads": args.threads,
            "size": args.size, "torch": torch.__version__, **extra, "backbones": {}}


def run_backbone(args: argparse.Namespace, prefix: str, run_side, make_row, check_converted=None):
    """One backbone's parity run in a temporary folder (``prefix``): frames, the official
    worker (``run_side(args, "official", work)``), conversion (timed), ``check_converted(work)``
    when given, the rvos worker, then ``make_row(work, official_run, rvos_run)`` for each
    pair of runs on the same frame count. Returns (convert seconds, rows, what
    ``check_converted`` returned)."""
    from rvos.convert import convert_checkpoint

    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        work = Path(tmp)
        torch.save(make_frames(max(args.frames), tuple(args.size)), work / "frames.pt")
        official_runs = run_side(args, "official", work)
        start = time.perf_counter()
        convert_checkpoint(work / "official.pth", work / "converted")
        convert_s = time.perf_counter() - start
        checked = check_converted(work) if check_converted else None
        rvos_runs = run_side(args, "rvos", work)
        rows = [make_row(work, o, r) for o in official_runs
                for r in rvos_runs if r["frames"] == o["frames"]]
    return convert_s, rows, checked


def timing_row(o: dict, r: dict, diff: dict, agreement: dict, lead: dict | None = None,
               **extra) -> dict:
    """A report row: frame count, ``lead``, frames/s and peak memory of both sides, the
    differences, ``extra``, the selected-query agreement."""
    return {"frames": o["frames"], **(lead or {}),
            "official_frames_per_s": o["frames_per_s"], "rvos_frames_per_s": r["frames_per_s"],
            "speedup": r["frames_per_s"] / o["frames_per_s"],
            "official_peak_rss_gb": o["peak_rss_gb"], "rvos_peak_rss_gb": r["peak_rss_gb"],
            "max_abs_diff": diff, **extra, "selected_query_agreement": agreement}


TIMING_HEADER = f"{'official f/s':>12} {'rvos f/s':>9} {'speed-up':>8} {'off. GB':>8} {'rvos GB':>8}"


def timing_cells(row: dict) -> str:
    """The cells under ``TIMING_HEADER`` for one row."""
    return (f"{row['official_frames_per_s']:>12.3f} {row['rvos_frames_per_s']:>9.3f} "
            f"{row['speedup']:>7.2f}x {row['official_peak_rss_gb']:>8.2f} "
            f"{row['rvos_peak_rss_gb']:>8.2f}")


def write_report(args: argparse.Namespace, report: dict) -> None:
    """``report`` as JSON to ``args.json``."""
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_options(parser, "wjn922/ReferFormer", ["resnet50", "video_swin_t"])
    add_output_options(parser, "referformer_parity.json")
    add_worker_options(parser)
    args = parser.parse_args()
    if run_worker(args, worker):
        return
    require_checkout(args, "models/referformer.py", "wjn922/ReferFormer")
    report = new_report(args, official_commit(args))
    ok = True
    for backbone in args.backbone:
        args.backbone_now = backbone
        print(f"== {backbone}")

        def make_row(work, o, r):
            diff, agreement = compare(work, o, r)
            return timing_row(o, r, diff, agreement, {"rvos_mode": r["mode"]})
        convert_s, rows, _ = run_backbone(args, "rvos-parity-", spawn, make_row)
        ok &= all(max(row["max_abs_diff"].values()) < args.tolerance
                  for row in rows if row["rvos_mode"] == "float32")
        report["backbones"][backbone] = {"convert_s": convert_s, "runs": rows}
        print_rows(rows)
    report["within_tolerance"] = ok
    write_report(args, report)
    print(f"float32 outputs within {args.tolerance:g}: {ok}; report: {args.json}")
    sys.exit(0 if ok else 1)


def print_rows(rows: list[dict]) -> None:
    """The table of ReferFormer-layout rows (``rvos_mode``, logits / boxes / masks)."""
    print(f"{'T':>3} {'rvos mode':>9} {TIMING_HEADER}  max |diff| logits / boxes / masks   "
          f"same query, mask IoU")
    for row in rows:
        d, a = row["max_abs_diff"], row["selected_query_agreement"]
        print(f"{row['frames']:>3} {row['rvos_mode']:>9} {timing_cells(row)}  "
              f"{d['pred_logits']:.2e} / {d['pred_boxes']:.2e} / {d['pred_masks']:.2e}   "
              f"{a['same_query']}, {a['mask_iou']:.5f}")


if __name__ == "__main__":
    main()
