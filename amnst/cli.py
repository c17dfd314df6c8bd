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

EXIT_OK, EXIT_INPUT, EXIT_USAGE = 0, 1, 2
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

    demo = commands.add_parser("demo", help="synthesize example music and ambience and transfer them",
                               description="Synthesize a piece of music and a rain recording, transfer "
                                           "the rain onto the music with the default preset, write all three.")
    demo.add_argument("--output", default="out", help="folder to write into (default: out)")
    demo.add_argument("--seconds", type=_positive_float, default=12.0, help="length of the music (s)")
    demo.add_argument("--weights", help="CNN weights (.weights.h5 or .npz); default: seeded random")
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
                           ("invert", "fast batched inversion against librosa's mel_to_audio")):
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
    from amnst.config import get_preset
    from amnst.demo import write_demo_inputs

    folder = Path(args.output)
    content, style = write_demo_inputs(folder / "demo", args.seconds)
    print(f"synthesized {content} (music) and {style} (rain)")
    run_transfer(content, style, folder / "demo" / "output.wav", get_preset("default"), args.weights)
    return EXIT_OK


def run_transfer(content_path: Path, style_path: Path, output: Path, preset: Any,
                 weights: str | None) -> None:
    """Load, transfer, write atomically, and print a summary; one-line errors otherwise."""
    from tqdm import tqdm

    from amnst import audio, storage
    from amnst.audio import AudioError
    from amnst.model import WeightsError, load_model, model_id
    from amnst.nst import StyleTransfer, piece_loss_curve
    from amnst.pipeline import transfer_pair

    started = time.perf_counter()
    try:
        content = audio.load(content_path, preset.audio, name=str(content_path))
        style = audio.load(style_path, preset.audio, name=str(style_path))
        model = load_model(weights, seed=preset.nst.seed)
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
    storage.write_bytes(output, audio.encode(outcome.audio, preset.audio.sample_rate,
                                             output.suffix.lower().lstrip(".")))
    stages = {"load": loaded, **outcome.stage_seconds, "write": time.perf_counter() - clock}
    curve = piece_loss_curve(outcome.result)
    rollbacks = int(outcome.result.rollbacks.sum())
    print(f"wrote {output} ({len(outcome.audio) / preset.audio.sample_rate:.1f} s of audio)")
    print(f"preset {preset.name}, model {model_id(model)}: loss {curve[0]:.4g} -> {curve[-1]:.4g} "
          f"over {preset.nst.iterations} iterations x {segments} segments"
          + (f", {rollbacks} rollbacks" if rollbacks else ""))
    print("seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in stages.items())
          + f", total {time.perf_counter() - started:.2f}")


def command_weights_import(args: argparse.Namespace) -> int:
    from amnst.model import WeightsError, import_original_weights, model_id

    try:
        model = import_original_weights(args.original, args.out)
    except WeightsError as error:
        raise CommandError(str(error)) from None
    print(f"wrote {args.out} (model {model_id(model)}, {model.count_params()} parameters)")
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
