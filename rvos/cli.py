"""The ``rvos`` command: data, train, evaluate, predict, serve, bench, demo.

Every command reports bad input (an argument out of range, a file it cannot read or write)
as one line naming the argument or the file and the problem, with exit status 2, instead
of a traceback; ``RVOS_DEBUG=1`` shows the traceback of an OS error. A training run
stopped by SIGINT (Ctrl-C) or SIGTERM exits with 130 or 143 after its checkpoint.
"""

from __future__ import annotations

import argparse
import errno
import logging
import math
import os
import re
import shlex
import sys
from pathlib import Path

from rvos.errors import RVOSError


# ----------------------------------------------------------------------------- argument types
def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW like 128x128, got {text!r}") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"height and width must be positive, got {text!r}")
    return h, w


def _integer(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {text!r}")
    return value


def _count(text: str) -> int:
    """A positive integer (frames, videos, workers, window length)."""
    return _integer(text, 1)


def _non_negative(text: str) -> int:
    """An integer >= 0 (seeds; 0 meaning "no limit" for step and sample limits)."""
    return _integer(text, 0)


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def _probability_threshold(text: str) -> float:
    """A mask threshold strictly between 0 and 1 (0 or 1 would mark every or no pixel)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < 1:                  # NaN fails too
        raise argparse.ArgumentTypeError(f"must lie in (0, 1), got {text!r}")
    return value


def _positive_number(text: str) -> float:
    """A positive, finite number."""
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def _seconds(text: str) -> float:
    """A positive, finite duration in seconds."""
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def _device(text: str) -> str:
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"must be auto, cpu, cuda or cuda:N, got {text!r}")
    return text


def _set_type(parser: argparse.ArgumentParser, dest: str, type_) -> None:
    """Give the option ``dest`` (added elsewhere) a checking ``type``."""
    for action in parser._actions:
        if action.dest == dest:
            action.type = type_


# ----------------------------------------------------------------------------- data
def cmd_data_synth(args: argparse.Namespace) -> int:
    from rvos.data.synthetic import SynthConfig, generate_benchmark

    cfg = SynthConfig(seed=args.seed)
    if args.videos is not None and not args.few_shot:
        cfg = _scaled_synth_config(cfg, args.videos)
    if args.frames is not None:
        cfg.num_frames = args.frames
    if args.size is not None:
        cfg.height, cfg.width = args.size
    if args.few_shot:
        return _synth_few_shot(args, cfg)
    info = generate_benchmark(args.out, cfg, overwrite=args.overwrite, progress=not args.quiet,
                              workers=args.workers)
    print(f"{'split':<20}{'videos':>8}{'expressions':>13}  per type")
    for split, counts in info["splits"].items():
        per_type = ", ".join(f"{k} {v}" for k, v in counts["expressions_per_type"].items())
        print(f"{split:<20}{counts['videos']:>8}{counts['expressions']:>13}  {per_type}")
    print(f"synthetic benchmark written to {args.out}")
    return 0


def _synth_few_shot(args: argparse.Namespace, cfg) -> int:
    """data synth --few-shot: the few-shot variant; prints its categories and folds."""
    from rvos.data.synthetic import FEWSHOT_FOLDS, generate_fewshot_benchmark

    kwargs = {} if args.videos is None else {"videos_per_category": args.videos}
    info = generate_fewshot_benchmark(args.out, cfg, overwrite=args.overwrite,
                                      progress=not args.quiet, workers=args.workers, **kwargs)
    fold_of = {shape: g for g, group in enumerate(FEWSHOT_FOLDS, start=1) for shape in group}
    print(f"{'category':<12}{'fold':>5}{'videos':>8}{'expressions':>13}  per type")
    for category, counts in info["per_category"].items():
        per_type = ", ".join(f"{k} {v}" for k, v in counts["expressions_per_type"].items())
        print(f"{category:<12}{fold_of[category]:>5}{counts['videos']:>8}"
              f"{counts['expressions']:>13}  {per_type}")
    total = info["splits"]["train"]
    per_type = ", ".join(f"{k} {v}" for k, v in total["expressions_per_type"].items())
    print(f"{'all':<12}{'':>5}{total['videos']:>8}{total['expressions']:>13}  {per_type}")
    print("folds (fold g: group g novel, the other groups base):")
    for g, group in enumerate(FEWSHOT_FOLDS, start=1):
        print(f"  fold {g}: novel {', '.join(group)}")
    print(f"few-shot synthetic benchmark written to {args.out}")
    return 0


def _scaled_synth_config(cfg, train_videos: int):
    """--videos N: N training videos; valid/test/compositional scaled to N/5 (at least 4)."""
    cfg.train_videos = train_videos
    cfg.valid_videos = cfg.test_videos = cfg.compositional_videos = max(4, train_videos // 5)
    return cfg


def cmd_data_convert_davis(args: argparse.Namespace) -> int:
    from rvos.data.davis import convert_davis_to_ytvos

    convert_davis_to_ytvos(args.davis_root, args.expressions, args.out, split=args.split,
                           resolution=args.resolution)
    print(f"Ref-DAVIS17 in the Ref-YouTube-VOS layout written to {args.out}")
    return 0


# ----------------------------------------------------------------------------- train
def cmd_train(args: argparse.Namespace) -> int:
    """Under torchrun (``torchrun --nproc-per-node N -m rvos train ...``) every process runs
    this; rank 0 alone prepares the run folder, writes and prints."""
    from rvos.engine import distributed

    try:
        return _train(args)
    finally:
        distributed.teardown()


def _train(args: argparse.Namespace) -> int:
    from contextlib import nullcontext

    from rvos.config import load_config, resolve_config
    from rvos.engine import distributed
    from rvos.outputs_dir import InPlaceOutput, check_inputs_outside

    cfg = load_config(args.config, args.overrides)
    if cfg.model.kind == "referformer":
        raise RVOSError("model.kind referformer runs converted released checkpoints and does not "
                        "train; train this architecture with model.kind query "
                        "(query_ytvos_resnet50, query_ytvos_video_swin_t)", args.config)
    run_dir = Path(args.out or cfg.train.out_dir)
    if args.init_from and args.resume is not None:
        raise RVOSError("--init-from starts a new run from another run's weights and --resume "
                        "continues a run from its own checkpoint: give one of them")
    if args.resume is None:
        check_inputs_outside(run_dir, {"config": resolve_config(args.config), "data.root": cfg.data.root,
                                       "--init-from": args.init_from})
    if cfg.model.kind in ("grounding", "fewshot") or cfg.train.feature_cache:
        distributed.refuse(f"model.kind {cfg.model.kind}" + (
            " with train.feature_cache" if cfg.train.feature_cache else "") + " trains")
    distributed.setup(cfg.train.device)           # torchrun: join the process group
    main = distributed.is_main()
    # A run folder is written in place (its checkpoints must survive a kill) and marked; a
    # run it replaces (--overwrite) is moved aside once the new run is set up, and removed
    # once the new run has its first checkpoint (restored if it fails before). Rank 0's.
    output = distributed.main_only(InPlaceOutput, run_dir, "train", overwrite=args.overwrite,
                                   resume=args.resume is not None, started_when="checkpoints/last*")
    if cfg.model.kind in ("grounding", "fewshot"):
        return _train_grounding(cfg, run_dir, args, output)
    if cfg.train.feature_cache:   # the query family on cached frozen-backbone maps
        from rvos.engine.query_cache_trainer import QueryCacheTrainer as Trainer
    else:
        from rvos.engine.trainer import Trainer
    # resuming or --init-from: the weights come from a checkpoint, the initial ones are not read
    trainer = Trainer(cfg, run_dir, progress=not args.quiet,
                      pretrained=args.resume is None and not args.init_from)
    say = print if main else (lambda *a, **k: None)
    if args.resume is not None:
        trainer.resume(args.resume or None)
        say(f"resumed from step {trainer.state.global_step} (epoch {trainer.state.epoch + 1}, "
            f"batch {trainer.state.micro_step})")
    elif args.init_from:
        trainer.init_from(args.init_from)
        say(f"initialised from the weights of {trainer.init_record['checkpoint']} "
            f"(step {trainer.init_record['step']})")
    with output or nullcontext():
        state = trainer.fit(stop_after_steps=args.stop_after_steps)
    done = getattr(state, "finished", state.epoch >= cfg.train.epochs)
    say(f"{'finished' if done else 'stopped (resume with --resume)'} at step {state.global_step}; "
        f"best validation J&F {state.best_jf:.4f}; run folder {run_dir}")
    return 0


def _train_grounding(cfg, run_dir: Path, args: argparse.Namespace, output) -> int:
    """The track-grounding model (and its few-shot extension) trains in stages on cached
    features (its own trainer)."""
    from rvos.engine.grounding_trainer import STAGES, GroundingTrainer

    if args.stop_after_steps:
        raise RVOSError(f"--stop-after-steps applies to the clip trainers; a {cfg.model.kind} run "
                        "is bounded by train.grounding.*_steps and train.time_budget_s")
    trainer_class = GroundingTrainer
    if cfg.model.kind == "fewshot":
        from rvos.engine.fewshot_trainer import FewShotTrainer as trainer_class
    # resuming or --init-from: the weights come from a checkpoint, the initial ones are not read
    trainer = trainer_class(cfg, run_dir, progress=not args.quiet,
                            pretrained=args.resume is None and not args.init_from)
    if args.resume is not None:
        trainer.resume(args.resume or None)
        print(f"resumed after the stages {trainer.state.done or 'none'}")
    elif args.init_from:
        trainer.init_from(args.init_from)
        print(f"initialised from the weights of {trainer.init_record['checkpoint']}")
    with output:
        state = trainer.fit()
    done = all(s in state.done for s in STAGES)
    scored = (f"score it with: rvos evaluate --checkpoint {run_dir / 'checkpoints' / 'last'}"
              if cfg.model.kind == "fewshot" else f"best validation J&F {state.best_jf:.4f}")
    print(f"{'finished' if done else 'stopped (resume with --resume)'} at step {state.global_step}; "
          f"{scored}; run folder {run_dir}")
    return 0


def cmd_configs(args: argparse.Namespace) -> int:
    """rvos configs: the packaged configs' names (what ``rvos train NAME`` takes) and files."""
    from rvos.config import CONFIG_DIR, config_names

    for name in config_names():
        print(name)
    print(f"(files in {CONFIG_DIR}; copy one to change it, or name it as base: in your own)")
    return 0


# ----------------------------------------------------------------------------- evaluate
def cmd_evaluate(args: argparse.Namespace) -> int:
    from rvos.outputs_dir import check_inputs_outside, staged_output

    out = Path(args.out)
    overwrite = getattr(args, "overwrite", False)
    check_inputs_outside(out, {f"--{name.replace('_', '-')}": getattr(args, name, None) for name in
                               ("checkpoint", "data", "expressions", "pred", "gt", "meta",
                                "mask_dict", "frame_sizes", "sequences")})
    if args.benchmark:
        _refuse_several_processes("rvos evaluate --benchmark")
        return _evaluate_benchmark(args, out, overwrite)
    if not args.checkpoint:
        raise RVOSError("rvos evaluate needs --checkpoint (score a model) or --benchmark "
                        "(score prediction folders)")
    from rvos.engine.checkpoint import load_checkpoint
    from rvos.engine.protocols import EvaluationRequest, protocol_module
    from rvos.inference import Predictor

    cfg = load_checkpoint(args.checkpoint).config
    if cfg.model.kind == "fewshot":
        _refuse_several_processes("rvos evaluate of a few-shot checkpoint")
        return _evaluate_fewshot(args, cfg, out, overwrite)
    protocol = protocol_module(args.dataset or cfg.data.format)
    from rvos.engine import distributed

    if distributed.requested_world_size() > 1:
        try:
            return _evaluate_distributed(args, cfg, protocol, out, overwrite)
        finally:
            distributed.teardown()
    owned = (*protocol.OUTPUTS, ".rvos-output", *([args.zip] if getattr(args, "zip", None) else []))
    others = sorted(p.name for p in out.iterdir() if p.name not in owned) if out.is_dir() else []
    if overwrite and others and not out.is_symlink():
        raise RVOSError(f"also holds other results ({', '.join(others[:3])}), which --overwrite "
                        "would remove; choose another --out", out)
    # staged: earlier results are replaced only as a whole (--overwrite), and a killed run
    # leaves them untouched, never new masks beside old metrics
    with staged_output(out, overwrite, "evaluate") as stage:
        predictor = Predictor.from_checkpoint(args.checkpoint, args.device, args.window,
                                              amp=args.amp)
        request = EvaluationRequest(predictor, Path(args.data or cfg.data.root), list(args.split),
                                    stage, args.threshold, args.max_samples, args.save_masks,
                                    progress=not args.quiet, options=args)
        report = protocol.evaluate(request)
    print(report.table)
    print("  ".join(f"{name}: {out / path.relative_to(stage)}" for name, path in report.files.items()))
    return 0


def _evaluate_distributed(args: argparse.Namespace, cfg, protocol, out: Path,
                          overwrite: bool) -> int:
    """``rvos evaluate --checkpoint`` under torchrun. A request the protocol can share
    (``shardable``: ref-ytvos scored splits without --save-masks) is segmented by every rank,
    each its share of the videos, and merged; rank 0 writes the results, the same files as
    one process writes. Anything else runs on rank 0 alone (the other ranks return at once)."""
    from contextlib import ExitStack

    from rvos.engine import distributed
    from rvos.engine.protocols import EvaluationRequest
    from rvos.inference import Predictor
    from rvos.outputs_dir import staged_output

    main = distributed.requested_rank() == 0
    request = EvaluationRequest(None, Path(args.data or cfg.data.root), list(args.split), None,
                                args.threshold, args.max_samples, args.save_masks,
                                progress=main and not args.quiet, options=args)
    sharded = getattr(protocol, "SHARDED", False) and protocol.shardable(request)
    if not sharded and not main:
        return 0
    # rank 0 alone joins no process group: the other ranks have returned
    device = distributed.setup(args.device) if sharded else distributed.process_device(args.device)
    request.predictor = Predictor.from_checkpoint(args.checkpoint, str(device), args.window,
                                                  amp=args.amp)
    with ExitStack() as stack:
        if sharded:
            request.shard = distributed.shard()
            # rank 0's staged folder; its checks fail on every rank, before any work
            request.stage = distributed.main_only(stack.enter_context,
                                                  staged_output(out, overwrite, "evaluate"))
        else:                           # rank 0 alone: no collectives from here on
            print("this evaluation runs on rank 0 alone (the ranks share ref-ytvos scored "
                  "splits without --save-masks only)", file=sys.stderr)
            request.stage = stack.enter_context(staged_output(out, overwrite, "evaluate"))
        report = protocol.evaluate(request)
    if main:
        print(report.table)
        print("  ".join(f"{name}: {out / path.relative_to(request.stage)}"
                        for name, path in report.files.items()))
    return 0


def _evaluate_fewshot(args: argparse.Namespace, cfg, out: Path, overwrite: bool) -> int:
    """A few-shot checkpoint: episodes of its fold's novel categories (or of another
    few-shot dataset's, --fewshot-dataset with --data), per-fold J, F, J&F; ``cfg`` is the
    checkpoint's config."""
    import json

    from rvos.data.mini_refvos import open_fewshot_layout
    from rvos.engine.fewshot_evaluator import VideoMemo, evaluate_fold, format_fewshot_table
    from rvos.inference import Predictor
    from rvos.outputs_dir import staged_output, write_file_atomic

    f = cfg.data.fewshot
    dataset = args.fewshot_dataset or f.dataset
    fold = f.fold if dataset == f.dataset else 1
    if dataset != f.dataset and not args.data:
        raise RVOSError(f"--fewshot-dataset {dataset} needs --data (its root)")
    shots_list = args.shots or [f.shots]
    layout = open_fewshot_layout(dataset, args.data or cfg.data.root)
    with staged_output(out, overwrite, "evaluate") as stage:
        model = Predictor.from_checkpoint(args.checkpoint, args.device).model
        device = next(model.parameters()).device
        memo = VideoMemo(model, layout, cfg.data.input_size, device)   # shared by the shot counts
        results = [evaluate_fold(model, layout, fold, shots, args.draws or f.eval_draws,
                                 f.eval_seed, cfg.data.input_size, device,
                                 progress=not args.quiet, support=args.support, memo=memo)
                   for shots in shots_list]
        table = format_fewshot_table(results)
        write_file_atomic(stage / "metrics.json",
                          json.dumps({"dataset": dataset, "checkpoint": str(args.checkpoint),
                                      "results": results}, indent=2))
        write_file_atomic(stage / "results.txt", table + "\n")
    print(table)
    print(f"metrics: {out / 'metrics.json'}")
    return 0


def _evaluate_benchmark(args: argparse.Namespace, out: Path, overwrite: bool) -> int:
    """--benchmark: ``<out>/<benchmark>.json`` (+ its CSV, Ref-YouTube-VOS's submission.zip)
    share ``out`` with other benchmarks' results; they are staged and moved in at the end,
    replacing this benchmark's earlier results only with --overwrite. An explicit --zip
    never replaces an existing file."""
    from rvos.metrics.cli import run_benchmark
    from rvos.outputs_dir import staged_results

    benchmark = args.benchmark
    if getattr(args, "zip", None) and (Path(args.zip).exists() or Path(args.zip).is_symlink()):
        raise RVOSError("already exists; rvos does not replace files it did not put in its own "
                        "output folder: choose another --zip name or remove it", args.zip)

    def owned(name: str) -> bool:
        return (name == f"{benchmark}.json" or (name.startswith(f"{benchmark}_") and name.endswith(".csv"))
                or (benchmark == "ref-ytvos" and not args.zip and name == "submission.zip"))

    with staged_results(out, benchmark, owned, f"{benchmark}.json", overwrite, "evaluate") as stage:
        code = run_benchmark(argparse.Namespace(**{**vars(args), "out": str(stage)}))
    print(f"results moved into {out}")
    return code


# ----------------------------------------------------------------------------- predict
def cmd_predict(args: argparse.Namespace) -> int:
    from rvos.inference import Predictor
    from rvos.outputs_dir import check_fresh_output, check_inputs_outside
    from rvos.predict import segment_video

    from rvos.support import SupportSample

    if not Path(args.video).exists():
        raise RVOSError("video not found", args.video)
    supports = [SupportSample(Path(v), Path(m), t) for v, m, t in args.support or []]
    inputs = {"--checkpoint": args.checkpoint, "--video": args.video}
    for i, s in enumerate(supports):
        inputs.update({f"--support {i + 1} video": s.video, f"--support {i + 1} masks": s.masks})
    check_inputs_outside(args.out, inputs)
    check_fresh_output(args.out, args.overwrite, "predict")       # before loading the model
    predictor = Predictor.from_checkpoint(args.checkpoint, args.device, args.window,
                                          amp=args.amp)
    if supports:
        predictor.use_support(supports)
    elif getattr(predictor.model, "affinity", None) is not None:
        logging.getLogger("rvos").warning(
            "a few-shot checkpoint without --support: the sentences alone decide (pass "
            "--support VIDEO MASKS TEXT, annotated examples of the category)")
    summary = segment_video(predictor, args.video, args.text, args.out, args.threshold,
                            overwrite=args.overwrite, gif=not args.no_gif,
                            progress=not args.quiet)
    print(f"{summary['frames']} frames segmented for {len(args.text)} sentence(s)")
    for k, e in summary["expressions"].items():
        print(f"  [{k}] {e['text']!r}: masks in {Path(args.out) / e['masks']}, "
              f"mean area {100 * e['mean_area_fraction']:.2f}% of the frame")
    print(f"overlay video: {Path(args.out) / 'overlay.mp4'}")
    return 0


# ----------------------------------------------------------------------------- serve
def cmd_serve(args: argparse.Namespace) -> int:
    from rvos.inference import Predictor
    from rvos.serve import check_gradio, serve

    check_gradio()                                                # before loading the model
    predictor = Predictor.from_checkpoint(args.checkpoint, args.device, args.window)
    serve(predictor, args.host, args.port, args.max_frames, args.max_upload_mb, args.threshold,
          examples=not args.no_examples)
    return 0


# ----------------------------------------------------------------------------- convert
def cmd_convert(args: argparse.Namespace) -> int:
    from rvos.convert import convert_checkpoint

    file = convert_checkpoint(args.checkpoint, args.out, tokenizer=args.tokenizer or "",
                              overwrite=args.overwrite)
    print(f"converted {args.checkpoint} -> {file}")
    print(f"segment a video with: rvos predict --checkpoint {file} --video VIDEO --text SENTENCE --out DIR")
    return 0


# ----------------------------------------------------------------------------- bench, demo
def cmd_bench(args: argparse.Namespace) -> int:
    from rvos.bench import run_baseline_benchmarks

    run_baseline_benchmarks(args)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from rvos.demo import run_demo

    return run_demo(Path(args.out), budget_s=args.budget_s, overwrite=args.overwrite,
                    progress=not args.quiet, weights=args.weights)


# ----------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    from rvos.config import config_names
    from rvos.engine.protocols import PROTOCOLS

    parser = argparse.ArgumentParser(prog="rvos", description="Referring video object segmentation toolkit.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", action="store_true", help="no progress bars")

    data = sub.add_parser("data", help="make or convert datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    synth = data_sub.add_parser("synth", parents=[common], help="generate the synthetic referring-video benchmark")
    synth.add_argument("--out", required=True, help="output folder (Ref-YouTube-VOS layout)")
    synth.add_argument("--videos", type=_count,
                       help="training videos (other splits scale with it); with --few-shot: "
                            "videos per category (default 40)")
    synth.add_argument("--few-shot", action="store_true",
                       help="the few-shot variant: the 8 shapes as categories in 4 folds, one "
                            "train split (Mini-Ref-YouTube-VOS layout)")
    synth.add_argument("--seed", type=_non_negative, default=0)
    synth.add_argument("--frames", type=_count, help="frames per video")
    synth.add_argument("--size", type=_size, help="frame size HxW, e.g. 128x128")
    synth.add_argument("--overwrite", action="store_true")
    synth.add_argument("--workers", type=_count, metavar="N",
                       help="processes generating videos (default: all cores); the files do not "
                            "depend on it")
    synth.set_defaults(func=cmd_data_synth)
    davis = data_sub.add_parser("convert-davis", parents=[common],
                                help="DAVIS-2017 + Ref-DAVIS17 texts -> Ref-YouTube-VOS layout")
    davis.add_argument("--davis-root", required=True, help="folder with JPEGImages/ and Annotations/")
    davis.add_argument("--expressions", required=True,
                       help="folder of Davis17_annot*.txt files, or a meta_expressions.json")
    davis.add_argument("--out", required=True)
    davis.add_argument("--split", default="valid")
    davis.add_argument("--resolution", default="480p")
    davis.set_defaults(func=cmd_data_convert_davis)

    train = sub.add_parser("train", parents=[common], help="train a model from a YAML config",
                           epilog="packaged configs (rvos configs lists them): "
                                  + ", ".join(config_names()))
    train.add_argument("config", help="a YAML config file, or the name of a packaged config "
                                      "(e.g. baseline_synth, ablations/soc_without_clusters)")
    train.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=1e-4")
    train.add_argument("--out", help="run folder (default: train.out_dir of the config)")
    train.add_argument("--resume", nargs="?", const="", default=None, metavar="CHECKPOINT",
                       help="continue exactly where a run stopped (default: <run>/checkpoints/last)")
    train.add_argument("--init-from", metavar="CHECKPOINT",
                       help="start a new run from the weights of another run's checkpoint of "
                            "the same architecture (e.g. RefCOCO pre-training); its optimizer, "
                            "schedule and step start fresh")
    train.add_argument("--overwrite", action="store_true", help="replace an existing run folder's results")
    train.add_argument("--stop-after-steps", type=_non_negative, default=0,
                       help="stop (checkpointed) after this many optimizer steps")
    train.set_defaults(func=cmd_train)

    ev = sub.add_parser("evaluate", parents=[common],
                        help="score a checkpoint on a split, or prediction folders on a benchmark")
    ev.add_argument("--checkpoint", help="checkpoint file (NAME.safetensors, or NAME)")
    ev.add_argument("--data", help="dataset root (default: the checkpoint's data.root)")
    ev.add_argument("--dataset", choices=sorted(PROTOCOLS),
                    help="benchmark whose official layout --data holds (default: the "
                         "checkpoint's data.format)")
    ev.add_argument("--expressions", help="--dataset ref-davis: the folder of the four "
                                          "Davis17_annot*.txt files, or a meta_expressions.json "
                                          "(default: davis_text_annotations/ beside DAVIS/)")
    ev.add_argument("--split", nargs="+", default=["test"], help="splits to score")
    ev.add_argument("--out", default="eval", help="folder for metrics.json, per_expression.csv")
    ev.add_argument("--threshold", type=_probability_threshold, default=0.5)
    ev.add_argument("--window", type=_count, help="frames per inference window")
    ev.add_argument("--max-samples", type=_non_negative, default=0, help="score only the first N expressions")
    ev.add_argument("--save-masks", action="store_true", help="also write predicted masks")
    ev.add_argument("--device", type=_device, default="auto")
    ev.add_argument("--amp", action="store_true",
                    help="run the model under autocast (bf16; fp16 on GPUs without bf16)")
    ev.add_argument("--overwrite", action="store_true",
                    help="replace an earlier output folder of rvos evaluate")
    ev.add_argument("--shots", type=_count, nargs="+",
                    help="few-shot checkpoints: support samples per episode (default: "
                         "data.fewshot.shots); several values score each")
    ev.add_argument("--draws", type=_count,
                    help="few-shot checkpoints: support sets drawn per novel category")
    ev.add_argument("--support", choices=("same", "other", "none"), default="same",
                    help="few-shot checkpoints: the episodes' support (same: the task; for "
                         "diagnostics, other: the next novel category's, none: withheld)")
    ev.add_argument("--fewshot-dataset", choices=("synth", "mini-ytvos", "mini-sailvos"),
                    help="few-shot checkpoints: score on another few-shot dataset (with --data)")
    ev.add_argument("--refcoco-dataset", choices=("refcoco", "refcoco+", "refcocog"),
                    help="--dataset refcoco: score this one (default: each of refcoco, refcoco+, "
                         "refcocog found under --data)")
    try:
        from rvos.metrics.cli import add_benchmark_arguments

        add_benchmark_arguments(ev)
        _set_type(ev, "bound_th", _positive_number)   # a fraction (<1) or pixels
    except ImportError:
        ev.set_defaults(benchmark=None)
    ev.set_defaults(func=cmd_evaluate)

    pr = sub.add_parser("predict", parents=[common], help="segment a video with one or more sentences")
    pr.add_argument("--checkpoint", required=True, help="checkpoint file (NAME.safetensors, or NAME)")
    pr.add_argument("--video", required=True, help="video file (mp4, avi, mov, webm) or folder of frames")
    pr.add_argument("--text", action="append", required=True, help="a referring sentence (repeatable)")
    pr.add_argument("--out", required=True)
    pr.add_argument("--threshold", type=_probability_threshold, default=0.5)
    pr.add_argument("--window", type=_count, help="frames per window (memory bound)")
    pr.add_argument("--device", type=_device, default="auto")
    pr.add_argument("--amp", action="store_true",
                    help="run the model under autocast (bf16; fp16 on GPUs without bf16)")
    pr.add_argument("--no-gif", action="store_true")
    pr.add_argument("--support", nargs=3, action="append", metavar=("VIDEO", "MASKS", "TEXT"),
                    help="few-shot checkpoints: an annotated example of the category to segment "
                         "(a video or frame folder, a folder of its object's masks <frame>.png, "
                         "its sentence); repeat for K shots")
    pr.add_argument("--overwrite", action="store_true")
    pr.set_defaults(func=cmd_predict)

    sv = sub.add_parser("serve", parents=[common],
                        help="a local web demo: upload a video, type sentences, see the masks",
                        description="Serve a Gradio page at http://HOST:PORT (needs "
                                    "pip install 'rvos[serve]'); Ctrl-C stops it.")
    sv.add_argument("--checkpoint", required=True, help="checkpoint file (NAME.safetensors, or NAME)")
    sv.add_argument("--host", default="127.0.0.1",
                    help="address to listen on (default 127.0.0.1: this machine only)")
    sv.add_argument("--port", type=_count, default=7860, help="default 7860")
    sv.add_argument("--max-frames", type=_count, default=3000,
                    help="longest video taken, in frames (default 3000)")
    sv.add_argument("--max-upload-mb", type=_count, default=500,
                    help="largest upload taken, in MB (default 500)")
    sv.add_argument("--threshold", type=_probability_threshold, default=0.5,
                    help="mask probability threshold (default 0.5)")
    sv.add_argument("--window", type=_count, help="frames per window (memory bound)")
    sv.add_argument("--device", type=_device, default="auto", help="auto | cpu | cuda | cuda:N")
    sv.add_argument("--no-examples", action="store_true", help="no bundled synthetic examples")
    sv.set_defaults(func=cmd_serve)

    cv = sub.add_parser("convert", parents=[common],
                        help="convert a released ReferFormer-layout checkpoint (.pth) to rvos")
    cv.add_argument("checkpoint", help="the official checkpoint.pth (read with weights_only=True)")
    cv.add_argument("--out", required=True, help="the rvos checkpoint to write (NAME or NAME.safetensors)")
    cv.add_argument("--tokenizer", help="folder with roberta-base's tokenizer files (vocab.json, "
                                        "merges.txt); default: the Hugging Face cache")
    cv.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint")
    cv.set_defaults(func=cmd_convert)

    be = sub.add_parser(
        "bench", parents=[common],
        help="speed benchmarks (baseline, query family) and the standard quality comparison of configs",
        description="speed: baseline inference frames/s at 360x640 and training clips/s, peak "
                    "memory -> <out>/baseline_speed.json. query_speed: inference frames/s and "
                    "peak memory of each --config (random weights, nothing downloaded) at "
                    "360x640 for clips of 5 and 36 frames, each in a fresh process -> "
                    "<out>/query_speed.json. quality: every --config trained once "
                    "per --seeds training seed for --budget-s seconds on one shared synthetic "
                    "benchmark, scored on test and test_compositional; J&F and object accuracy "
                    "per expression type as mean ± std (min..max) over the seeds -> "
                    "<out>/quality.json, <out>/quality.png, runs in <out>/quality/<config>/seed<k>/. "
                    "fewshot: every --config (default: the few-shot baseline, then CMA) trained "
                    "on each --folds fold's base categories of the few-shot synthetic split "
                    "per --seeds seed, scored on the fold's novel categories at each --shots; "
                    "per-fold and mean J&F with each config's margin over the first -> "
                    "<out>/fewshot.json, runs in <out>/fewshot/<config>/fold<f>/seed<k>/.",
        epilog="example: rvos bench --what quality --config baseline_synth "
               "query_synth_mobilenetv2 --seeds 0 1 --budget-s 600")
    be.add_argument("--what", nargs="+", default=["speed"],
                    choices=["speed", "quality", "query_speed", "fewshot"],
                    help="which benchmarks to run (default: speed); query_speed: inference "
                         "frames/s and peak memory of query-family configs (random weights) "
                         "-> <out>/query_speed.json")
    be.add_argument("--out", default="benchmarks/results",
                    help="folder for the results (default: benchmarks/results)")
    be.add_argument("--device", type=_device, default="auto",
                    help="auto | cpu | cuda | cuda:N; for quality anything but auto overrides "
                         "the configs' train.device")
    be.add_argument("--config", nargs="+", metavar="CONFIG",
                    help="config files or packaged names (rvos configs). quality: configs to "
                         "train and compare on the same synthetic data (default: "
                         "grounding_synth); query_speed: configs to measure (default: the "
                         "published ones, *_ytvos_* and *_a2d_*)")
    be.add_argument("--frames", nargs="+", type=_count, metavar="T",
                    help="query_speed: clip lengths (default: 5 36)")
    be.add_argument("--repeats", nargs="+", type=_count, metavar="N",
                    help="query_speed: timed passes after one warm-up, one count or one per "
                         "--frames value (default: 3 for clips of up to 8 frames, 1 for longer)")
    be.add_argument("--size", type=_size, metavar="HxW",
                    help="query_speed: input size (default: 360x640)")
    be.add_argument("--seeds", nargs="+", type=_non_negative, default=[0, 1], metavar="K",
                    help="quality: training seeds, one run per config and seed (default: 0 1)")
    be.add_argument("--budget-s", type=_seconds,
                    help="quality, fewshot: training time budget per run in seconds (default: "
                         "600 for quality; for fewshot the configs' own step counts)")
    be.add_argument("--train-videos", type=_non_negative, default=0, metavar="N",
                    help="quality: training videos of the synthetic benchmark (default 0: the "
                         "demo's 1000); for quick comparisons. fewshot: videos per category "
                         "(default 0: 40)")
    be.add_argument("--folds", nargs="+", type=_count, default=[1, 2, 3, 4], metavar="F",
                    help="fewshot: folds, each trained on its base categories (default: 1 2 3 4)")
    be.add_argument("--shots", nargs="+", type=_count, default=[1, 5], metavar="K",
                    help="fewshot: support samples per evaluation episode (default: 1 5)")
    be.add_argument("--eval-samples", type=_non_negative, default=0, metavar="N",
                    help="quality: score only the first N expressions of each test split "
                         "(default 0: all); for slow models")
    be.add_argument("--error-bars", choices=["minmax", "std"], default="minmax",
                    help="quality: error bars of quality.png, min..max over seeds or ± std "
                         "(default: minmax)")
    be.add_argument("--overwrite", action="store_true",
                    help="replace earlier results of the same benchmark in --out")
    be.set_defaults(func=cmd_bench)

    cf = sub.add_parser("configs", help="list the packaged configs (rvos train NAME)")
    cf.set_defaults(func=cmd_configs)

    demo = sub.add_parser("demo", parents=[common],
                          help="the main job: synthetic data -> train -> evaluate -> predict")
    demo.add_argument("--out", default="demo_output")
    demo.add_argument("--budget-s", type=_seconds, default=360.0,
                      help="training time budget, feature cache included (default: 360)")
    demo.add_argument("--weights", metavar="FILE",
                      help="the ImageNet MobileNetV2 backbone weights (a .features state dict; "
                           "default: ../shared/assets/weights/mobilenetv2_imagenet_features.pt "
                           "from the working folder or the clone's root)")
    demo.add_argument("--overwrite", action="store_true")
    demo.set_defaults(func=cmd_demo)
    return parser


def _version() -> str:
    from rvos import __version__

    return f"rvos {__version__}"


class _StderrHandler(logging.StreamHandler):
    """Writes each record to the ``sys.stderr`` of the moment (redirections and test
    captures made after the handler was installed included)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


class _PlainFormatter(logging.Formatter):
    """The message alone; warnings and errors prefixed ``warning:`` / ``error:``."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {text}"


def install_log_handler(quiet: bool = False) -> logging.Handler:
    """The command's one log handler, on the ``rvos`` logger only: plain messages to stderr,
    INFO and above (WARNING with ``--quiet``). The root logger and other libraries' loggers
    are left as they are; a handler installed by an earlier call is replaced."""
    logger = logging.getLogger("rvos")
    for handler in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
        logger.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(_PlainFormatter())
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    return handler


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    install_log_handler(getattr(args, "quiet", False))
    command = " ".join(filter(None, (args.command, getattr(args, "data_command", None))))
    try:
        if args.command not in ("train", "evaluate"):
            _refuse_several_processes(f"rvos {command}")
        return args.func(args)
    except RVOSError as e:
        if os.environ.get("RVOS_DEBUG"):    # the traceback, with the OSError it may wrap
            raise
        if not getattr(e, "reported_by_rank_zero", False):   # torchrun: rank 0 printed it
            print(f"rvos {command}: {_rank_tag()}error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:     # Ctrl-C, or a training run stopped by a signal
        if not _rank_tag():            # torchrun: rank 0 reports the stop
            print(f"rvos {command}: {getattr(e, 'message', 'interrupted')}{_resume_hint(args, e)}",
                  file=sys.stderr)
        return getattr(e, "exit_code", 130)
    except OSError as e:               # a folder or file the OS refused: one line, no traceback
        if os.environ.get("RVOS_DEBUG"):
            raise
        print(f"rvos {command}: error: {os_error_text(e, getattr(args, 'out', None))}",
              file=sys.stderr)
        return 2


def _refuse_several_processes(what: str) -> None:
    """RVOSError under torchrun with several processes: ``what`` runs in one."""
    if os.environ.get("WORLD_SIZE", "1") not in ("", "1"):
        raise RVOSError(f"{what} runs in one process; torchrun runs rvos train and rvos "
                        "evaluate --checkpoint on several")


def _rank_tag() -> str:
    """"rank N: " in the processes torchrun started with RANK > 0, else ""."""
    rank = os.environ.get("RANK", "0") if os.environ.get("WORLD_SIZE", "1") != "1" else "0"
    return "" if rank == "0" else f"rank {rank}: "


def os_error_text(e: OSError, out: str | None = None) -> str:
    """``<path>: <reason>`` (both paths of a rename) for an OSError. A full disk reported
    by a write names no file: then the command's output folder ``out`` is named."""
    reason = e.strerror or str(e) or type(e).__name__
    paths = [str(p) for p in (e.filename, e.filename2) if p is not None]
    if not paths and out and e.errno in (errno.ENOSPC, errno.EDQUOT):
        paths = [str(out)]
    return f"{' -> '.join(paths)}: {reason}" if paths else reason


def _resume_hint(args: argparse.Namespace, stop: BaseException) -> str:
    """How to continue a stopped training run ("" for anything else)."""
    if not getattr(stop, "run_dir", None):
        return ""
    if not getattr(stop, "resumable", False):
        return "; no checkpoint was written yet: start the run again"
    if args.command != "train":
        return f"; its checkpoint is in {stop.run_dir}"
    words = ["rvos", "train", args.config, *args.overrides, "--out", str(stop.run_dir), "--resume"]
    world = os.environ.get("WORLD_SIZE", "1")
    if world not in ("", "1"):          # torchrun: the same number of processes
        words = ["torchrun", f"--nproc-per-node={os.environ.get('LOCAL_WORLD_SIZE', world)}",
                 "-m", *words]
        return ("; resume with the same torchrun options (" + world + " processes): " +
                " ".join(shlex.quote(w) for w in words))
    return "; resume with: " + " ".join(shlex.quote(w) for w in words)


if __name__ == "__main__":
    sys.exit(main())
