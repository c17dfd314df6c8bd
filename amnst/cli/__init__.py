"""The ``amnst`` command.

Heavy libraries (TensorFlow, librosa) are imported inside the commands, so
``--help`` and argument errors answer at once.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from amnst.cli.options import (CommandError, EXIT_INPUT, EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, OUTPUT_FORMATS, OneLineParser, _exit_status, _non_negative_float, _open_fraction, _positive_float, _positive_int, _progress_printer, _seed, add_nst_options, add_run_options, check_batch_paths, check_folder, check_input_file, check_output_file, preset_from_args, run_options_from_args, train_options_from_args)
from amnst.cli.submit import add_submit_parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # a refused command line (its line is printed), or --help
        return _exit_status(exit_)
    try:
        return args.command(args)
    except CommandError as error:
        print(f"amnst: error: {error}", file=sys.stderr)
        return error.status
    except KeyboardInterrupt:
        print("amnst: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="amnst", description="Ambience-to-music neural style transfer.")
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
        description="Print the quality measures of amnst.engine.quality (content preservation, style match, "
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
    add_run_options(run, metrics_job="amnst_batch")
    run.set_defaults(command=command_run)

    report = commands.add_parser(
        "report", help="(re)build a run's HTML report from its records",
        description="Write report.html, with its pictures and sound previews, for the run that RUN_URI "
                    "names: the run's records folder, OUTPUT/_amnst/runs/date=YYYY-MM-DD/run_id=RUN_ID "
                    "(local, file:// or s3://), or an output URI for its newest committed run. The page "
                    "lands in OUTPUT/_amnst/reports/date=.../run_id=.../; `amnst run` writes it at the end "
                    "of every run.")
    report.add_argument("run_uri", metavar="RUN_URI", help="a run's records folder, or an output URI")
    report.set_defaults(command=command_report)

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

    add_training_commands(commands)

    _add_harness_commands(commands)
    add_submit_parser(commands)
    return parser


def _add_harness_commands(commands: Any) -> None:
    """``amnst bench ...``: the benchmarks and fault scenarios of the harness
    (``amnst.bench``), found by name so that the product never imports it. An
    install without the harness (the image) has no ``bench`` command."""
    try:
        harness = importlib.import_module("amnst.bench.commands")
    except ModuleNotFoundError as error:
        if error.name not in ("amnst.bench", "amnst.bench.commands"):
            raise
        return
    harness.add_bench_commands(commands)


def add_training_commands(commands: Any) -> None:
    """``amnst train`` and ``amnst evaluate``: the genre CNN on a GTZAN-layout dataset."""
    train = commands.add_parser(
        "train", help="train the CNN on a GTZAN-layout dataset with Ray Train",
        description="Train the seed CNN on DATA (genres_original/<genre>/*.wav, labels from features_30_sec.csv "
                    "if present) over Ray Train workers, checkpointing every epoch to OUTPUT; a rerun into the "
                    "same OUTPUT resumes. Writes OUTPUT/model.weights.h5 (best validation epoch), "
                    "OUTPUT/model_card.json and one Parquet row per epoch under OUTPUT/_amnst/training/.")
    train.add_argument("--data", required=True, help="dataset folder: local, file:// or s3://")
    train.add_argument("--output", required=True, help="output folder: local, file:// or s3://")
    train.add_argument("--workers", type=_positive_int, default=1, help="Ray Train workers")
    train.add_argument("--epochs", type=_positive_int, default=30)
    train.add_argument("--gpus-per-worker", type=_non_negative_float, default=0.0)
    train.add_argument("--cpus-per-worker", type=_positive_float, default=1.0)
    train.add_argument("--batch-size", type=_positive_int, default=32, help="global batch, over all workers")
    train.add_argument("--lr", type=_positive_float, default=1e-3, dest="learning_rate",
                       help="initial learning rate")
    train.add_argument("--val-fraction", type=_open_fraction, default=0.1,
                       help="share of each genre's tracks held out")
    train.add_argument("--seed", type=_seed, default=0, help="initial weights, split and batch order")
    train.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    train.set_defaults(command=command_train)

    evaluate = commands.add_parser(
        "evaluate", help="accuracy and confusion matrix of CNN weights on a GTZAN-layout dataset",
        description="Classify every segment of DATA (or only its validation tracks, chosen as `amnst train` "
                    "chose them with the same --val-fraction and --seed) and print the accuracy and the "
                    "confusion matrix.")
    evaluate.add_argument("--data", required=True, help="dataset folder: local, file:// or s3://")
    evaluate.add_argument("--weights", required=True, help=".weights.h5 or .npz, local or s3://")
    evaluate.add_argument("--split", choices=("all", "val"), default="all")
    evaluate.add_argument("--val-fraction", type=_open_fraction, default=0.1)
    evaluate.add_argument("--seed", type=_seed, default=0)
    evaluate.set_defaults(command=command_evaluate)


def command_transfer(args: argparse.Namespace) -> int:
    output = Path(args.output)
    if output.suffix.lower() not in OUTPUT_FORMATS:
        raise CommandError(f"{output}: output must end in {' or '.join(OUTPUT_FORMATS)}", EXIT_USAGE)
    preset = preset_from_args(args)
    # Options first, then the files they name: nothing is decoded before all are judged.
    check_output_file(output)
    for path in (args.content, args.style):
        check_input_file(path)
    check_input_file(args.weights, "no such weight file")
    run_transfer(Path(args.content), Path(args.style), output, preset, args.weights)
    return EXIT_OK


def command_demo(args: argparse.Namespace) -> int:
    from amnst.demo import write_demo

    check_folder(args.output)
    manifest = write_demo(Path(args.output), args.seconds)
    print(f"wrote {manifest}; run it with: amnst run {manifest} --output out")
    return EXIT_OK


def command_run(args: argparse.Namespace) -> int:
    import ray

    from amnst.ops import metrics
    from amnst.batch import storage
    from amnst.batch.manifest import ManifestError
    from amnst.batch.ray_runner import connect, run_manifest

    options = run_options_from_args(args)
    check_batch_paths(args, args.manifest)
    if args.metrics_port is not None:
        metrics.serve(args.metrics_port)
    connect(args.address)
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
    if summary.report_uri:
        print(f"report: {summary.report_uri}")
    else:
        print(f"amnst: the run's report was not written: {summary.report_error}", file=sys.stderr)
    return summary.exit_status


def command_report(args: argparse.Namespace) -> int:
    from amnst.batch import report, storage

    try:
        page = report.write_report(report.locate(args.run_uri))
    except (report.ReportError, storage.StorageError) as error:
        raise CommandError(str(error)) from None
    print(f"wrote {page}")
    return EXIT_OK




def run_transfer(content_path: Path, style_path: Path, output: Path, preset: Any,
                 weights: str | None) -> None:
    """Load, transfer, write atomically, and print a summary; one-line errors otherwise."""
    from tqdm import tqdm

    from amnst.engine import audio
    from amnst.batch import storage
    from amnst.engine.audio import AudioError
    from amnst.engine.model import WeightsError, load_model
    from amnst.engine.nst import StyleTransfer, piece_loss_curve
    from amnst.batch.pipeline import Weights, noticed, transfer_pair

    started = time.perf_counter()
    try:
        with noticed() as notices:
            content = audio.load(content_path, preset.audio, name=str(content_path))
            style = audio.load(style_path, preset.audio, name=str(style_path))
        for notice in notices:
            print(f"warning: {notice}", file=sys.stderr)
        model = load_model(weights, seed=preset.nst.seed)
        model_id = Weights.locate(weights, preset.nst.seed).id
    except (AudioError, WeightsError) as error:
        raise CommandError(str(error)) from None
    loaded = time.perf_counter() - started
    try:
        transfer = StyleTransfer(model, preset.nst, audio=preset.audio)
    except ValueError as error:  # a precision this machine cannot compute
        raise CommandError(str(error)) from None

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
    from amnst.engine import audio, quality
    from amnst.config import get_preset

    config = get_preset("default").audio
    for path in (args.output, args.content, args.style):
        check_input_file(path)
    try:
        signals = [audio.load(Path(path), config, name=path) for path in (args.output, args.content, args.style)]
    except audio.AudioError as error:
        raise CommandError(str(error)) from None
    print(json.dumps(quality.assess(*signals, config), indent=2))
    return EXIT_OK


def command_weights_import(args: argparse.Namespace) -> int:
    from amnst.engine.model import WeightsError, import_original_weights
    from amnst.batch.pipeline import Weights

    check_input_file(args.original, "no such weight file")
    check_output_file(args.out)
    try:
        model = import_original_weights(args.original, args.out)
    except WeightsError as error:
        raise CommandError(str(error)) from None
    print(f"wrote {args.out} (model {Weights.locate(args.out, 0).id}, {model.count_params()} parameters)")
    return EXIT_OK


def command_train(args: argparse.Namespace) -> int:
    import ray
    from ray.train import TrainingFailedError

    from amnst.batch import storage
    from amnst.batch.ray_runner import connect
    from amnst.train.cnn import train
    from amnst.train.dataset import DatasetError

    options = train_options_from_args(args)
    check_folder(args.data, EXIT_INPUT)
    check_folder(args.output)
    connect(args.address)
    try:
        card = train(options)
    except (DatasetError, storage.StorageError, TrainingFailedError) as error:
        raise CommandError(str(error)) from None
    finally:
        ray.shutdown()
    print(f"best epoch {card['best_epoch']} of {card['epochs']}: validation accuracy {card['val_accuracy']:.3f}; "
          f"wrote {storage.join(args.output, card['weights'])}")
    for skipped in card["dataset"]["skipped"]:
        print(f"skipped {skipped['track']}: {skipped['reason']}")
    return EXIT_OK




def command_evaluate(args: argparse.Namespace) -> int:
    from amnst.batch import storage
    from amnst.engine.model import WeightsError
    from amnst.train.dataset import DatasetError
    from amnst.train.evaluate import evaluate, format_evaluation

    check_folder(args.data, EXIT_INPUT)
    check_input_file(args.weights, "no such weight file")
    try:
        print(format_evaluation(evaluate(args.data, args.weights, args.split, args.val_fraction, args.seed)))
    except (DatasetError, WeightsError, storage.StorageError) as error:
        raise CommandError(str(error)) from None
    return EXIT_OK
