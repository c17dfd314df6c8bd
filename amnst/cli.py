"""The ``amnst`` command.

Heavy libraries (TensorFlow, librosa) are imported inside the commands, so
``--help`` and argument errors answer at once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_INPUT, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3
OUTPUT_FORMATS = (".wav", ".flac")


class CommandError(Exception):
    """A failure to report as one line, with the exit status to end with."""

    def __init__(self, message: str, status: int = EXIT_INPUT) -> None:
        super().__init__(message)
        self.status = status


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.command(args)
    except CommandError as error:
        print(f"amnst: error: {error}", file=sys.stderr)
        return error.status
    except KeyboardInterrupt:
        print("amnst: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="amnst", description="Ambience-to-music neural style transfer.")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    transfer = commands.add_parser("transfer", help="transfer one style recording onto one piece of music",
                                   description="Optimise CONTENT's mel so it takes on STYLE's texture; "
                                               "write the result as wav or flac.")
    transfer.add_argument("content", help="music to keep the melody and harmony of (wav, flac, ogg, mp3)")
    transfer.add_argument("style", help="ambience whose timbre and texture to take on")
    transfer.add_argument("-o", "--output", required=True, help="output file, .wav or .flac")
    add_nst_options(transfer)
    transfer.set_defaults(command=command_transfer)

    assess = commands.add_parser(
        "assess", help="measure an output's quality against its content and style",
        description="Print the quality measures of amnst.quality (content preservation, style match, "
                    "noise, peak) of OUTPUT against CONTENT and STYLE, as JSON.")
    assess.add_argument("output")
    assess.add_argument("content")
    assess.add_argument("style")
    assess.set_defaults(command=command_assess)

    run = commands.add_parser(
        "run", help="run a manifest of content/style pairs on Ray",
        description="Transfer every pair of MANIFEST (CSV, JSONL or Parquet; local or s3://) as Ray tasks, "
                    "writing OUTPUT/audio/<pair_id>.wav and Parquet metadata under OUTPUT/_amnst/. "
                    "Joins the cluster at --address or RAY_ADDRESS, else starts a local Ray. Pairs already "
                    "done with the same inputs and settings are skipped. Exit status: 0 all ok or skipped, "
                    f"{EXIT_PARTIAL} some pairs failed, {EXIT_INPUT} the run could not start.")
    run.add_argument("manifest", help="manifest URI")
    run.add_argument("--output", required=True, help="output prefix: a folder, file:// or s3:// URI")
    run.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    run.add_argument("--segments-per-task", type=int, default=1, help="segments per optimise task")
    run.add_argument("--num-gpus-per-task", type=float, default=0.0, help="GPUs per optimise task (fractional ok)")
    run.add_argument("--num-cpus-per-task", type=float, default=1.0, help="CPUs per task")
    run.add_argument("--max-in-flight", type=int, default=32, help="most tasks outstanding at once")
    run.add_argument("--format", choices=("wav", "flac"), default="wav", help="output audio format")
    run.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics on this port while running")
    run.add_argument("--pushgateway", help="push the batch's outcome to this Pushgateway (host:port or URL)")
    run.add_argument("--metrics-job", default="amnst_batch", help="Pushgateway job name (default: amnst_batch)")
    add_nst_options(run)
    run.set_defaults(command=command_run)

    demo = commands.add_parser("demo", help="synthesize example music, ambiences and a manifest",
                               description="Synthesize two short pieces of music and two ambiences (rain, "
                                           "a drone) and a manifest pairing them, for `amnst run`.")
    demo.add_argument("--output", default="out/demo", help="folder to write into (default: out/demo)")
    demo.add_argument("--seconds", type=_positive_float, default=12.0, help="length of each piece (s)")
    demo.set_defaults(command=command_demo)

    weights = commands.add_parser("weights", help="manage CNN weight files")
    weight_commands = weights.add_subparsers(required=True, metavar="ACTION")
    importer = weight_commands.add_parser(
        "import", help="convert the original pickled .npy weights to a safe format",
        description="Read the original research weight file with an unpickler that admits only NumPy "
                    "arrays, check it fits the seed CNN, and write .weights.h5 or .npz.")
    importer.add_argument("original", help="the original GenreClassificationTrainedModelWeights.npy")
    importer.add_argument("out", help="destination, ending in .weights.h5 or .npz")
    importer.set_defaults(command=command_weights_import)

    bench = commands.add_parser("bench", help="measure speed against baselines in the same run")
    bench_commands = bench.add_subparsers(required=True, metavar="BENCHMARK")
    for name, helptext in (("nst", "compiled NST step against a seed-faithful eager loop and the matmul rate"),
                           ("invert", "fast batched inversion against librosa's mel_to_audio"),
                           ("pipeline", "Ray's overhead per task and the driver's memory against manifest size")):
        sub = bench_commands.add_parser(name, help=helptext, description=helptext)
        sub.add_argument("--json", help="also write the figures to this file")
        sub.add_argument("--quick", action="store_true", help="fewer repeats (for smoke tests)")
        sub.set_defaults(command=command_bench, benchmark=name)
    return parser


def add_nst_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="default", help="seed (the original) or default")
    parser.add_argument("--weights", help="CNN weights (.weights.h5 or .npz); default: seeded random")
    parser.add_argument("--iterations", type=int, help="optimisation steps per segment")
    parser.add_argument("--content-layers", help="comma-separated layer indices, e.g. 0,2")
    parser.add_argument("--style-layers", help="comma-separated layer indices, e.g. 4,8,12,16")
    parser.add_argument("--content-weight", type=float)
    parser.add_argument("--style-weight", type=float)
    parser.add_argument("--init", help="starting target: content, style, zero or random")
    parser.add_argument("--lr", type=float, dest="learning_rate", help="learning rate")
    parser.add_argument("--seed", type=int, help="random seed")


def preset_from_args(args: argparse.Namespace) -> Any:
    """The named preset with the options given on the command line applied."""
    from amnst.config import ConfigError, get_preset, parse_layers

    overrides: dict[str, Any] = {}
    for name in ("iterations", "content_weight", "style_weight", "init", "learning_rate", "seed"):
        if getattr(args, name, None) is not None:
            overrides[name] = getattr(args, name)
    try:
        for name in ("content_layers", "style_layers"):
            if getattr(args, name, None) is not None:
                overrides[name] = parse_layers(getattr(args, name))
        return get_preset(args.preset).with_overrides(**overrides)
    except ConfigError as error:
        raise CommandError(str(error), EXIT_USAGE) from None


def command_transfer(args: argparse.Namespace) -> int:
    output = Path(args.output)
    if output.suffix.lower() not in OUTPUT_FORMATS:
        raise CommandError(f"{output}: output must end in {' or '.join(OUTPUT_FORMATS)}", EXIT_USAGE)
    preset = preset_from_args(args)
    run_transfer(Path(args.content), Path(args.style), output, preset, args.weights)
    return EXIT_OK


def command_demo(args: argparse.Namespace) -> int:
    from amnst.demo import write_demo

    manifest = write_demo(Path(args.output), args.seconds)
    print(f"wrote {manifest}; run it with: amnst run {manifest} --output out")
    return EXIT_OK


def command_run(args: argparse.Namespace) -> int:
    import ray

    from amnst import metrics, storage
    from amnst.manifest import ManifestError
    from amnst.ray_runner import RunOptions, run_manifest

    preset = preset_from_args(args)
    try:
        options = RunOptions(args.output, preset, args.weights, args.segments_per_task,
                             args.num_gpus_per_task, args.num_cpus_per_task, args.max_in_flight, args.format)
        storage.check_uri(args.output)
    except (ValueError, storage.StorageError) as error:
        raise CommandError(str(error), EXIT_USAGE) from None
    if args.metrics_port is not None:
        metrics.serve(args.metrics_port)
    ray.init(address=args.address, log_to_driver=False, include_dashboard=False,
             configure_logging=False)
    try:
        summary = run_manifest(args.manifest, options, _progress_printer())
    except (ManifestError, storage.StorageError) as error:
        raise CommandError(str(error)) from None
    finally:
        ray.shutdown()
    p = summary.progress
    if args.pushgateway:
        metrics.push_batch_outcome(args.pushgateway, args.metrics_job, p.ok, p.failed, p.skipped,
                                   summary.seconds)
    print(f"run {summary.run_id}: {p.ok} ok, {p.skipped} skipped, {p.failed} failed of {p.pairs_seen} pairs; "
          f"{p.audio_seconds:.1f} s of audio in {summary.seconds:.1f} s; outputs under {args.output}")
    return summary.exit_status


def _progress_printer() -> Any:
    """A live progress line: rewritten in place on a terminal, every 10 s otherwise."""
    interactive = sys.stderr.isatty()
    last = [0.0]

    def show(progress: Any) -> None:
        if interactive:
            print("\r" + progress.line(), end="", file=sys.stderr, flush=True)
        elif time.monotonic() - last[0] >= 10 or progress.pairs_done == progress.pairs_seen:
            print(progress.line(), file=sys.stderr, flush=True)
            last[0] = time.monotonic()
    return show


def run_transfer(content_path: Path, style_path: Path, output: Path, preset: Any,
                 weights: str | None) -> None:
    """Load, transfer, write atomically, and print a summary; one-line errors otherwise."""
    from tqdm import tqdm

    from amnst import audio, storage
    from amnst.audio import AudioError
    from amnst.model import WeightsError, load_model
    from amnst.nst import StyleTransfer, piece_loss_curve
    from amnst.pipeline import Weights, transfer_pair

    started = time.perf_counter()
    try:
        content = audio.load(content_path, preset.audio, name=str(content_path))
        style = audio.load(style_path, preset.audio, name=str(style_path))
        model = load_model(weights, seed=preset.nst.seed)
        model_id = Weights.locate(weights, preset.nst.seed).id
    except (AudioError, WeightsError) as error:
        raise CommandError(str(error)) from None
    loaded = time.perf_counter() - started
    transfer = StyleTransfer(model, preset.nst)

    segments = audio.num_segments(audio.num_frames(len(content), preset.audio), preset.audio)
    total = segments * preset.nst.iterations
    with tqdm(total=total, unit="seg-it", desc=f"{segments} segments x {preset.nst.iterations} it",
              file=sys.stderr, dynamic_ncols=True, disable=None) as bar:
        outcome = transfer_pair(content, style, preset, transfer,
                                progress=lambda done: bar.update(done - bar.n))

    clock = time.perf_counter()
    try:
        storage.write_bytes(output, audio.encode(outcome.audio, preset.audio.sample_rate,
                                                 output.suffix.lower().lstrip(".")))
    except storage.StorageError as error:
        raise CommandError(str(error)) from None
    stages = {"load": loaded, **outcome.stage_seconds, "write": time.perf_counter() - clock}
    curve = piece_loss_curve(outcome.result)
    rollbacks = int(outcome.result.rollbacks.sum())
    print(f"wrote {output} ({len(outcome.audio) / preset.audio.sample_rate:.1f} s of audio)")
    print(f"preset {preset.name}, model {model_id}: loss {curve[0]:.4g} -> {curve[-1]:.4g} "
          f"over {preset.nst.iterations} iterations x {segments} segments"
          + (f", {rollbacks} rollbacks" if rollbacks else ""))
    print("seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in stages.items())
          + f", total {time.perf_counter() - started:.2f}")


def command_assess(args: argparse.Namespace) -> int:
    from amnst import audio, quality
    from amnst.config import get_preset

    config = get_preset("default").audio
    try:
        signals = [audio.load(Path(path), config, name=path) for path in (args.output, args.content, args.style)]
    except audio.AudioError as error:
        raise CommandError(str(error)) from None
    print(json.dumps(quality.assess(*signals, config), indent=2))
    return EXIT_OK


def command_weights_import(args: argparse.Namespace) -> int:
    from amnst.model import WeightsError, import_original_weights
    from amnst.pipeline import Weights

    try:
        model = import_original_weights(args.original, args.out)
    except WeightsError as error:
        raise CommandError(str(error)) from None
    print(f"wrote {args.out} (model {Weights.locate(args.out, 0).id}, {model.count_params()} parameters)")
    return EXIT_OK


def command_bench(args: argparse.Namespace) -> int:
    from amnst import bench

    figures = bench.BENCHMARKS[args.benchmark](quick=args.quick)
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return EXIT_OK


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not positive")
    return value


if __name__ == "__main__":
    sys.exit(main())
