"""``amnst bench``: the harness's command line, which ``amnst.cli`` finds by name.

Each benchmark measures against a baseline in the same run and prints a
table; ``--json`` keeps the figures.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from amnst.cli.options import (EXIT_OK, EXIT_USAGE, CommandError, _non_negative_int, _positive_float, _positive_int,
                       _unit_fraction, check_folder,
                       check_input_file, check_output_file)


def add_bench_commands(commands: Any) -> None:
    """Add ``amnst bench NAME`` for every benchmark to the CLI's sub-commands."""
    bench = commands.add_parser("bench", help="measure speed against baselines in the same run")
    bench_commands = bench.add_subparsers(required=True, metavar="BENCHMARK")
    for name, helptext in (("nst", "compiled NST step against a seed-faithful eager loop and the matmul rate"),
                           ("invert", "fast batched inversion against librosa's mel_to_audio"),
                           ("pipeline", "Ray's overhead per task and the driver's memory against manifest size"),
                           ("train", "CNN training samples/s on Ray with 1 and 2 workers, and on a GPU if any"),
                           ("reliability", "bad inputs, storage faults, worker, driver and node loss: pairs "
                                           "expected, done, lost and duplicated (--quick: no 10-minute piece)")):
        _add_bench_parser(bench_commands, name, helptext, "fewer repeats (for smoke tests)")
    quality = _add_bench_parser(
        bench_commands, "quality", "presets over the synthesized evaluation set, against reference rows",
        "three pairs, ten iterations (smoke test)",
        description="Run presets and variants over the synthesized evaluation pairs and print a table of "
                    "quality measures, with the content itself and a plain mix as reference rows.")
    quality.add_argument("--preset", action="append", dest="presets", help="a preset to run (repeatable)")
    quality.add_argument("--variant", action="append", default=[],
                         help='a preset with overrides, e.g. "default:style_weight=100,style_layers=4+8"')
    quality.add_argument("--weights", help="CNN weights for every method (default: seeded random)")
    quality.add_argument("--seconds", type=_positive_float, default=10.0, help="length of each pair (s)")
    quality.add_argument("--frontier", action="store_true",
                         help="instead, sweep each design's strength and the plain mix's style share, and "
                              "report each design's margin over the mix frontier (docs/quality.md)")
    quality.add_argument("--plot", help="with --frontier: write the curves to this PNG (default: beside --json)")
    quality.add_argument("--design", action="append", default=[], dest="designs",
                         help="with --frontier: only the designs whose name contains this (repeatable)")
    quality.add_argument("--precision", action="append", default=[], dest="precisions", choices=("fp32", "bf16"),
                         help="with --frontier: every design at this CNN precision (repeatable: the first is the "
                              "base, and the report gives how far each measure moves from it)")
    e2e = _add_bench_parser(
        bench_commands, "e2e", "seconds of compute per second of audio, stage by stage, for pairs of each length",
        "2 iterations, pairs of 4 and 8 s (smoke test)",
        description="Run one synthesized pair per length through the batch runner's stages in this process "
                    "or, with --workers, its optimise tasks on Ray (default preset, files in a temporary "
                    "folder) and report seconds per stage and per "
                    "second of audio, the 0.5 target, and how cost per audio second spreads across lengths.")
    e2e.add_argument("--seconds", type=_positive_float, nargs="+", default=[10.0, 30.0, 120.0],
                     help="pair lengths (s)")
    e2e.add_argument("--segments-per-task", type=_positive_int,
                     help="segments per optimise call (default: amnst run's)")
    e2e.add_argument("--workers", type=_non_negative_int, default=0,
                     help="run the optimise tasks as amnst run does, as one-CPU Ray tasks on a local instance "
                          "of this many CPUs (default 0: in this process)")
    e2e.add_argument("--baseline", help='a variant timed alike in the same rounds, with the cost ratio, '
                                        'e.g. "default:iterations=20" (as bench quality --variant)')
    e2e.add_argument("--rounds", type=_positive_int, default=1,
                     help="time every length this many times, lengths in turn, and report each length's "
                          "median round (default 1)")
    capacity = _add_bench_parser(
        bench_commands, "capacity", "GPU workers and budgets for a nightly batch, from measured CPU costs",
        "without --e2e: a quick e2e (smoke test)",
        description="The capacity model (amnst.ops.capacity): GPU workers, CPU cores, max in flight, object "
                    "store, driver and storage budgets for a batch, from `amnst bench e2e` figures and a "
                    "GPU rate, measured on the card (--gpu) or assumed (--gpu-fraction).")
    capacity.add_argument("--e2e", help="figures of `amnst bench e2e --json` (default: measure a 30 s pair)")
    capacity.add_argument("--pairs", type=_positive_int, default=100_000, help="pairs in the batch")
    capacity.add_argument("--pair-seconds", type=_positive_float, default=180.0, help="length of each pair (s)")
    capacity.add_argument("--window-hours", type=_positive_float, default=8.0, help="time to finish it (h)")
    gpu_rate = capacity.add_mutually_exclusive_group()
    gpu_rate.add_argument("--gpu", help="figures of `python -m amnst.bench.xla_replay --json` measured on the card")
    gpu_rate.add_argument("--gpu-fraction", type=_unit_fraction,
                          help="assume this sustained fraction of the H100's FP32 rate (default: 0.2)")
    export = bench_commands.add_parser(
        "export-xla", help="write the GPU stages as XLA programs, to time on a card with `amnst.bench.xla_replay`",
        description="Write the default preset's NST step (per batch size) and the fast inversion of a "
                    "synthesized pair as XLA HLO, with their inputs and TensorFlow's results, for "
                    "`python -m amnst.bench.xla_replay FOLDER` to check and time on any XLA device (it needs "
                    "NumPy and jaxlib, not TensorFlow).")
    export.add_argument("folder", help="where to write the programs (created)")
    export.add_argument("--batch", type=_positive_int, action="append", dest="batches",
                        help="segments per step program (repeatable; default 1, 7, 14, 28 and 56)")
    export.add_argument("--seconds", type=_positive_float, default=30.0, help="length of the pair (s)")
    export.add_argument("--no-tf32", action="store_true",
                        help="full FP32 convolutions and products (default: TensorFloat-32 allowed, as TF does)")
    export.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="the CNN's precision in the step programs (default fp32)")
    export.set_defaults(command=command_export_xla)


def _add_bench_parser(bench_commands: Any, name: str, helptext: str, quick_help: str,
                      description: str | None = None) -> argparse.ArgumentParser:
    """``amnst bench NAME``, with the ``--json`` and ``--quick`` every benchmark takes."""
    sub = bench_commands.add_parser(name, help=helptext, description=description or helptext)
    sub.add_argument("--json", help="also write the figures to this file")
    sub.add_argument("--quick", action="store_true", help=quick_help)
    sub.set_defaults(command=command_bench, benchmark=name)
    return sub


def _benchmarks() -> dict[str, Callable[..., dict[str, Any]]]:
    """Every benchmark by its ``amnst bench`` name. Imported only when one runs:
    they import TensorFlow, which the rest of the CLI starts without."""
    from amnst.bench.capacity_plan import bench_capacity
    from amnst.bench.components import bench_invert, bench_nst, bench_pipeline
    from amnst.bench.e2e import bench_e2e
    from amnst.bench.preset_quality import bench_quality
    from amnst.bench.reliability import bench_reliability
    from amnst.bench.train_speed import bench_train

    return {"nst": bench_nst, "invert": bench_invert, "pipeline": bench_pipeline, "e2e": bench_e2e,
            "capacity": bench_capacity, "quality": bench_quality, "train": bench_train,
            "reliability": bench_reliability}


def command_bench(args: argparse.Namespace) -> int:
    from amnst.bench import frontier
    from amnst.bench.e2e import e2e_table
    from amnst.bench.preset_quality import quality_table

    _check_bench_options(args)
    options = {}
    if args.benchmark == "quality":
        options = dict(presets=tuple(args.presets or ("seed", "default")), variants=tuple(args.variant),
                       weights=args.weights, seconds=args.seconds, frontier=args.frontier,
                       plot=args.plot or (str(Path(args.json).with_suffix(".png")) if args.frontier and args.json
                                          else None), designs=tuple(args.designs), precisions=tuple(args.precisions))
    elif args.benchmark == "e2e":
        options = dict(seconds=tuple(args.seconds), segments_per_task=args.segments_per_task, workers=args.workers,
                       rounds=args.rounds, baseline=args.baseline)
    elif args.benchmark == "capacity":
        options = dict(e2e=args.e2e, pairs=args.pairs, pair_seconds=args.pair_seconds,
                       window_hours=args.window_hours, gpu=args.gpu)
        if args.gpu_fraction is not None:
            options["gpu_fraction"] = args.gpu_fraction
    figures = _benchmarks()[args.benchmark](quick=args.quick, **options)
    text = json.dumps(figures, indent=2)
    tables = {"quality": quality_table, "quality-frontier": frontier.table, "e2e": e2e_table,
              "reliability": lambda figures: figures["table"]}
    kind = figures.get("benchmark", args.benchmark)
    print(tables[kind](figures) if kind in tables else text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return EXIT_OK


def _check_bench_options(args: argparse.Namespace) -> None:
    """A benchmark's presets, variants and files, judged before it spends minutes measuring."""
    from amnst.bench.variants import parse_variant
    from amnst.config import ConfigError, get_preset

    try:
        for name in getattr(args, "presets", None) or ():
            get_preset(name)
        for text in [*getattr(args, "variant", ()), *filter(None, [getattr(args, "baseline", None)])]:
            try:
                parse_variant(text)
            except ConfigError as error:
                raise ConfigError(f"variant {text!r}: {error}") from None
    except ConfigError as error:
        raise CommandError(str(error), EXIT_USAGE) from None
    for name in ("e2e", "gpu"):
        check_input_file(getattr(args, name, None))
    for name in ("json", "plot"):
        check_output_file(getattr(args, name, None))


def command_export_xla(args: argparse.Namespace) -> int:
    from amnst.bench.xla_export import DEFAULT_BATCHES, export_programs

    check_folder(args.folder)
    folder = Path(args.folder)
    manifest = export_programs(folder, tuple(sorted(set(args.batches or DEFAULT_BATCHES))),
                               args.seconds, tf32=not args.no_tf32, precision=args.precision)
    batches = " ".join(str(step["batch"]) for step in manifest["steps"])
    print(f"wrote {folder}: step programs for batches {batches} and the inversion of {args.seconds:g} s; "
          f"on the GPU machine: python -m amnst.bench.xla_replay {folder} --json gpu.json")
    return EXIT_OK
