"""The ``amnst`` command.

Heavy libraries (TensorFlow, librosa) are imported inside the commands, so
``--help`` and argument errors answer at once.
"""

from __future__ import annotations

import argparse
import importlib
import contextlib
import datetime
import io
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from amnst.config import SEED_LIMIT

EXIT_OK, EXIT_INPUT, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3
OUTPUT_FORMATS = (".wav", ".flac")


class CommandError(Exception):
    """A failure to report as one line, with the exit status to end with."""

    def __init__(self, message: str, status: int = EXIT_INPUT) -> None:
        super().__init__(message)
        self.status = status


class OneLineParser(argparse.ArgumentParser):
    """argparse, reporting a bad command line in one line, ``PROG: error: MESSAGE``, exit status 2.

    The usage (a dozen lines for the batch commands) is left to ``--help``, so
    that a refused option reads like every other refusal: one line that names
    the option and the reason. Sub-command parsers take this class too.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


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


def _exit_status(exit_: SystemExit) -> int:
    return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE if exit_.code else EXIT_OK


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


def add_run_options(parser: argparse.ArgumentParser, metrics_job: str) -> None:
    """Where a batch writes, how it runs on Ray, its metrics, and the NST options."""
    parser.add_argument("--output", required=True, help="output prefix: a folder, file:// or s3:// URI")
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--segments-per-task", type=_positive_int, default=1, help="segments per optimise task")
    parser.add_argument("--num-gpus-per-task", type=_non_negative_float, default=0.0,
                        help="GPUs per optimise task (fractional ok)")
    parser.add_argument("--num-cpus-per-task", type=_positive_float, default=1.0, help="CPUs per task")
    parser.add_argument("--max-in-flight", type=_int_at_least(2), default=32,
                        help="most tasks outstanding at once (at least 2)")
    parser.add_argument("--format", choices=("wav", "flac"), default="wav", help="output audio format")
    parser.add_argument("--metadata-flush-seconds", type=_non_negative_float, default=30.0,
                        help="write finished pairs' records at least this often (default 30); a driver "
                             "killed mid-run loses at most this much of its record, whose pairs the "
                             "rerun computes again")
    parser.add_argument("--metrics-port", type=_port,
                        help="serve Prometheus /metrics on this port while running (0: any free port)")
    parser.add_argument("--pushgateway", help="push the outcome to this Pushgateway (host:port or URL)")
    parser.add_argument("--metrics-job", default=metrics_job, help=f"Pushgateway job name (default: {metrics_job})")
    add_nst_options(parser)


def run_options_from_args(args: argparse.Namespace) -> Any:
    """The RunOptions that ``add_run_options`` describes; bad values raise CommandError.

    Looks at no file: ``amnst submit`` judges a job's options with it on a
    machine that may not see the job's files (``check_batch_paths`` does that).
    """
    from amnst.batch import storage
    from amnst.batch.ray_runner import RunOptions

    preset = preset_from_args(args)
    try:
        return RunOptions(storage.check_uri(args.output), preset, args.weights, args.segments_per_task,
                          args.num_gpus_per_task, args.num_cpus_per_task, args.max_in_flight, args.format,
                          metadata_flush_seconds=args.metadata_flush_seconds)
    except (ValueError, storage.StorageError) as error:
        raise CommandError(str(error), EXIT_USAGE) from None


def check_batch_paths(args: argparse.Namespace, manifest: str | None = None) -> None:
    """The local paths of a batch, before Ray starts: the output prefix is a folder, the weights
    a file and ``manifest`` (if given) a readable manifest; S3 ones are checked when read."""
    from amnst.batch.manifest import ManifestError, check_manifest

    check_folder(args.output)
    check_input_file(args.weights, "no such weight file")
    if manifest is not None:
        try:
            check_manifest(manifest)
        except ManifestError as error:
            raise CommandError(str(error)) from None


def add_nst_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="default", help="seed (the original) or default")
    parser.add_argument("--weights", help="CNN weights (.weights.h5 or .npz); default: seeded random")
    parser.add_argument("--iterations", type=int, help="optimisation steps per segment")
    parser.add_argument("--content-layers", help="comma-separated layer indices, e.g. 0,2")
    parser.add_argument("--style-layers", help="comma-separated layer indices, e.g. 4,8,12,16")
    parser.add_argument("--content-weight", type=float)
    parser.add_argument("--style-weight", type=float)
    parser.add_argument("--spectral-style-weight", type=float,
                        help="weight of the log-mel band Gram style loss (default preset: 0)")
    parser.add_argument("--strength", type=float,
                        help="how far toward the style, 0 (the content's own reconstruction) to 1 "
                             "(the full transfer); default: the preset's")
    parser.add_argument("--init", help="starting target: content, style, zero or random")
    parser.add_argument("--lr", type=float, dest="learning_rate", help="learning rate")
    parser.add_argument("--seed", type=int, help="random seed, 0 to 2**32 - 1")


def preset_from_args(args: argparse.Namespace) -> Any:
    """The named preset with the options given on the command line applied.

    NSTConfig judges every value (the rules the manifest's overrides meet too);
    a bad one raises CommandError with exit status 2, before any file is read.
    """
    from amnst.config import ConfigError, get_preset, parse_layers

    overrides: dict[str, Any] = {}
    for name in ("iterations", "content_weight", "style_weight", "spectral_style_weight", "strength", "init",
                 "learning_rate", "seed"):
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
    transfer = StyleTransfer(model, preset.nst, audio=preset.audio)

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
    from amnst.train.cnn import DatasetError, train

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


def train_options_from_args(args: argparse.Namespace) -> Any:
    """The TrainOptions of ``amnst train``'s arguments; bad values raise CommandError (looks at no file)."""
    from amnst.batch import storage
    from amnst.train.cnn import TrainOptions

    try:
        return TrainOptions(args.data, storage.check_uri(args.output), args.workers, args.epochs,
                            args.batch_size, args.learning_rate, args.val_fraction, args.seed,
                            args.cpus_per_worker, args.gpus_per_worker)
    except (ValueError, storage.StorageError) as error:
        raise CommandError(str(error), EXIT_USAGE) from None


def command_evaluate(args: argparse.Namespace) -> int:
    from amnst.batch import storage
    from amnst.engine.model import WeightsError
    from amnst.train.cnn import DatasetError, evaluate, format_evaluation

    check_folder(args.data, EXIT_INPUT)
    check_input_file(args.weights, "no such weight file")
    try:
        print(format_evaluation(evaluate(args.data, args.weights, args.split, args.val_fraction, args.seed)))
    except (DatasetError, WeightsError, storage.StorageError) as error:
        raise CommandError(str(error)) from None
    return EXIT_OK


# --- amnst submit: jobs on a Ray cluster's job server ---------------------------------------

JOB_SCRIPTS = {"nst": "jobs/nst_batch.py", "train": "jobs/train_cnn.py", "nightly": "jobs/nightly.py"}
DEFAULT_JOB_SERVER = "http://127.0.0.1:8265"
# Left out of the uploaded working_dir, on top of what the project's .gitignore says.
WORKING_DIR_EXCLUDES = [".git/", ".venv/", "out/", "build/", "tmp/", ".pytest_cache/",
                        "**/__pycache__/", "*.egg-info/"]
# env_vars travel in the job's record, which the dashboard, `ray job list` and the
# REST API show in clear to anyone who can reach them: secrets stay with the cluster
# (its pods' Secrets, its cloud identity) and never ride along with a job.
_SECRET_NAME = r"SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|ACCESS_KEY|PRIVATE"


def add_submit_parser(commands: Any) -> None:
    """The ``submit`` command: one sub-command per job kind, each taking the job's arguments after --."""
    submit = commands.add_parser(
        "submit", help="submit an NST batch, a training run or a night's batches as a Ray job",
        description="Submit a job (jobs/nst_batch.py, jobs/train_cnn.py or jobs/nightly.py with the "
                    "arguments after --) to a Ray cluster's job server. "
                    "The project travels as the job's working_dir (or names a container image); the "
                    "cluster's token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token) goes "
                    "along unless RAY_AUTH_MODE=disabled. A submission id that already exists is "
                    "reported, never run twice.")
    kinds = submit.add_subparsers(dest="kind", required=True, metavar="KIND")
    for kind, helptext in (("nst", "an NST batch: the arguments of `amnst run`"),
                           ("train", "CNN training: the arguments of jobs/train_cnn.py"),
                           ("nightly", "a night's batches: the arguments of jobs/nightly.py; the id "
                                       "defaults to amnst-nightly-<date>")):
        sub = kinds.add_parser(kind, help=helptext, description=helptext)
        _add_submit_options(sub)
        sub.add_argument("job_args", nargs="*", metavar="-- JOB_ARGS", help="the job's own arguments")
        sub.set_defaults(command=command_submit)


def _add_submit_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", help=f"job server URL (default: RAY_ADDRESS, else {DEFAULT_JOB_SERVER})")
    parser.add_argument("--submission-id", help="the job's id; an id that exists already is reported, "
                                                "not submitted again")
    parser.add_argument("--wait", action="store_true",
                        help="follow the job's logs and exit with its outcome: 0 succeeded, the job's own "
                             f"exit status if it failed ({EXIT_PARTIAL}: some pairs failed), 1 if it failed "
                             "without one or was stopped")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--working-dir", help="project folder to upload (default: this checkout)")
    where.add_argument("--image", help="container image holding the project at its working directory "
                                       "(runtime_env image_uri; needs podman on the nodes)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME[=VALUE]",
                        help="environment variable for the job, VALUE or else this shell's (repeatable; "
                             "names that look like secrets are refused)")
    parser.add_argument("--entrypoint-num-cpus", type=_non_negative_float, help="CPUs reserved for the job's driver")
    parser.add_argument("--entrypoint-num-gpus", type=_non_negative_float, help="GPUs reserved for the job's driver")
    parser.add_argument("--entrypoint-memory", type=_non_negative_int,
                        help="memory reserved for the job's driver, bytes")


def command_submit(args: argparse.Namespace) -> int:
    """Submit the job unless its id exists; with --wait, follow it and return its outcome."""
    from ray.exceptions import AuthenticationError

    job_args = _pinned_job_args(args.kind, args.job_args)
    submission_id = args.submission_id or _default_submission_id(args.kind, job_args)
    # Everything checkable here is checked before the cluster is contacted.
    job = {"entrypoint": _entrypoint(args.kind, job_args), "runtime_env": _runtime_env(args),
           "metadata": _job_metadata(args.kind, job_args),
           **{name: getattr(args, name) for name in ("entrypoint_num_cpus", "entrypoint_num_gpus",
                                                     "entrypoint_memory") if getattr(args, name) is not None}}
    _check_job_args(args.kind, job_args)
    address = args.address or os.environ.get("RAY_ADDRESS") or DEFAULT_JOB_SERVER
    try:
        client = _job_client(address)
        existing = _job_info(client, submission_id) if submission_id else None
        if existing is None:
            submission_id, existing = _submit(client, job, submission_id)
        if existing is not None:
            print(f"job {submission_id} already exists ({existing.status}): not submitted again")
        if not args.wait:
            return EXIT_OK
        if existing is None or not existing.status.is_terminal():
            _print_logs(client, submission_id)
        return _outcome(_finished_job(client, submission_id))
    except AuthenticationError as error:
        raise CommandError(f"{address}: {str(error).strip().splitlines()[0]} (the cluster's token goes in "
                           "RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH)") from None
    except (ConnectionError, RuntimeError) as error:
        # The server's answer may be a whole traceback: its last line names the cause.
        raise CommandError(f"{address}: {str(error).strip().splitlines()[-1]}") from None


def _check_job_args(kind: str, job_args: list[str]) -> None:
    """Judge the job's arguments as its script will, so that a bad value is refused here, in one
    line with exit status 2, rather than by a job on the cluster. The job's files are not looked
    at: they are where the cluster sees them, not necessarily here."""
    from amnst.batch import storage

    if kind == "nightly":
        parser, argv = build_nightly_parser(), job_args
    else:
        parser, argv = build_parser(), [{"nst": "run", "train": "train"}[kind], *job_args]
    refusal = io.StringIO()
    try:
        with contextlib.redirect_stderr(refusal):
            job = parser.parse_args(argv)
    except SystemExit as exit_:
        if not exit_.code:  # -- --help: the job's own help was printed
            raise
        reason = refusal.getvalue().strip().partition(": error: ")[2] or refusal.getvalue().strip()
        raise CommandError(f"{JOB_SCRIPTS[kind]}: {reason}", EXIT_USAGE) from None
    try:
        if kind == "train":
            train_options_from_args(job)
        else:
            run_options_from_args(job)
        if kind == "nightly":
            storage.check_uri(job.manifests)
    except (CommandError, storage.StorageError) as error:
        raise CommandError(f"{JOB_SCRIPTS[kind]}: {error}", EXIT_USAGE) from None


def _entrypoint(kind: str, job_args: list[str]) -> str:
    import shlex

    return shlex.join(["python", JOB_SCRIPTS[kind], *job_args])


def _submit(client: Any, job: dict[str, Any], submission_id: str | None) -> tuple[str, Any]:
    """Submit the job; returns its id, and its info if the server already had that id."""
    try:
        submitted = client.submit_job(submission_id=submission_id, **job)
    except RuntimeError as error:
        # Another submitter may have taken the id since we looked: report theirs.
        if submission_id is None or "already exists" not in str(error):
            raise
        return submission_id, client.get_job_info(submission_id)
    print(f"submitted job {submitted}: {job['entrypoint']}")
    return submitted, None


def _job_client(address: str) -> Any:
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address, headers=_auth_headers())


def _auth_headers() -> dict[str, str]:
    """The cluster's token as a bearer header, looked up where Ray itself looks for it.

    Ray's client sends its token only when RAY_AUTH_MODE=token is set here
    too; a user holding just the token (the usual case with the token file)
    would be refused, so the header is built explicitly.
    """
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return {}
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    token_path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if not token and token_path:
        try:
            token = Path(token_path).read_text().strip()
        except OSError as error:
            raise CommandError(f"RAY_AUTH_TOKEN_PATH={token_path}: {error.strerror}") from None
    elif not token:
        default = Path.home() / ".ray" / "auth_token"
        token = default.read_text().strip() if default.is_file() else ""
    return {"Authorization": f"Bearer {token}"} if token else {}


def _job_info(client: Any, submission_id: str) -> Any:
    """The job's info, or None if the server has no job with that id."""
    try:
        return client.get_job_info(submission_id)
    except RuntimeError as error:
        if "does not exist" in str(error) or "status code 404" in str(error):
            return None
        raise


def _runtime_env(args: argparse.Namespace) -> dict[str, Any]:
    env: dict[str, Any] = {}
    if args.image:
        env["image_uri"] = args.image
    else:
        env["working_dir"] = str(_working_dir(args.working_dir, JOB_SCRIPTS[args.kind]))
        env["excludes"] = WORKING_DIR_EXCLUDES
    env_vars = dict(_env_var(item) for item in args.env)
    if env_vars:
        env["env_vars"] = env_vars
    return env


def _working_dir(given: str | None, script: str) -> Path:
    """The folder to upload: ``given``, or the checkout this package runs from; it must hold ``script``."""
    folder = Path(given) if given else Path(__file__).resolve().parents[1]
    if not (folder / script).is_file():
        hint = "" if given else ": pass --working-dir (a project checkout) or --image"
        raise CommandError(f"{folder} has no {script}{hint}", EXIT_USAGE)
    return folder


def _env_var(item: str) -> tuple[str, str]:
    import re

    name, given, value = item.partition("=")
    if not name or re.search(_SECRET_NAME, name, re.IGNORECASE):
        raise CommandError(f"--env {name!r}: not passed to a job (a secret belongs in the cluster's "
                           "own environment, not in the job's record)", EXIT_USAGE)
    if not given:
        if name not in os.environ:
            raise CommandError(f"--env {name}: not set in this environment", EXIT_USAGE)
        value = os.environ[name]
    return name, value


def _job_metadata(kind: str, job_args: list[str]) -> dict[str, str]:
    """Who submitted what: shown by the dashboard and ``ray job list``."""
    manifest = _option_value(job_args, "--manifests") if kind == "nightly" else _first_positional(job_args)
    found = {"manifest": manifest, "output": _option_value(job_args, "--output"),
             "date": _option_value(job_args, "--date")}
    return {"who": _user(), "kind": kind, **{key: value for key, value in found.items() if value}}


def _user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container user with no passwd entry
        return "unknown"


def _pinned_job_args(kind: str, job_args: list[str]) -> list[str]:
    """A nightly job is given its date now, so that id and job agree even if it starts after midnight."""
    if kind == "nightly" and _option_value(job_args, "--date") is None:
        return [*job_args, "--date", time.strftime("%Y-%m-%d", time.gmtime())]
    return job_args


def _default_submission_id(kind: str, job_args: list[str]) -> str | None:
    """``amnst-nightly-<date>`` for a night, so that a retried schedule never runs it twice; else Ray's."""
    return f"amnst-nightly-{_option_value(job_args, '--date')}" if kind == "nightly" else None


def _option_value(job_args: list[str], name: str) -> str | None:
    """The value given to ``name`` (``--name V`` or ``--name=V``) among the job's arguments."""
    for index, arg in enumerate(job_args):
        if arg.startswith(name + "="):
            return arg[len(name) + 1:]
        if arg == name and index + 1 < len(job_args):
            return job_args[index + 1]
    return None


def _first_positional(job_args: list[str]) -> str | None:
    """The first argument that is not an option; every option of ``amnst run`` takes one value."""
    skip = False
    for arg in job_args:
        if skip:
            skip = False
        elif arg.startswith("--"):
            skip = "=" not in arg
        else:
            return arg
    return None


def _print_logs(client: Any, submission_id: str) -> None:
    """Print the job's logs as they come, until the job ends or the stream breaks."""
    import asyncio

    import aiohttp

    async def follow() -> None:
        async for chunk in client.tail_job_logs(submission_id):
            print(chunk, end="", flush=True)

    try:
        asyncio.run(follow())
    except (RuntimeError, aiohttp.ClientError) as error:  # the job's status still tells its outcome
        print(f"amnst: the log stream ended early: {error}", file=sys.stderr)


def _finished_job(client: Any, submission_id: str, poll_seconds: float = 1.0) -> Any:
    """The job's info once it has ended (its logs may close a moment before its status)."""
    while True:
        info = client.get_job_info(submission_id)
        if info.status.is_terminal():
            return info
        time.sleep(poll_seconds)


def _outcome(info: Any) -> int:
    """The exit status for a finished job: 0 succeeded, else its driver's exit status, else 1."""
    from ray.job_submission import JobStatus

    code = info.driver_exit_code
    if info.status == JobStatus.SUCCEEDED:
        status = EXIT_OK
    elif info.status == JobStatus.FAILED and code is not None and 0 < code < 256:
        status = code
    else:  # stopped, killed by a signal, or failed before its driver ran
        status = EXIT_INPUT
    print(f"job {info.submission_id} {info.status}: {info.message}", file=sys.stderr)
    return status


# --- jobs/nightly.py: a night's batches ------------------------------------------------------


def build_nightly_parser() -> argparse.ArgumentParser:
    """The command line of jobs/nightly.py: ``amnst run``'s options, the manifests and the date."""
    parser = OneLineParser(
        prog="jobs/nightly.py",
        description="Run every manifest due on DATE under --manifests into its own prefix under "
                    "--output, skipping pairs already done, and record the night under "
                    "OUTPUT/_amnst/nightly/. Due: manifests directly under the prefix every night, "
                    "those under PREFIX/YYYY-MM-DD/ on that date. Exit status: 0 all ok or skipped, "
                    f"{EXIT_PARTIAL} some pairs or manifests failed, {EXIT_INPUT} the night could not start.")
    parser.add_argument("--manifests", required=True, help="URI prefix holding the manifests")
    parser.add_argument("--date", type=_date, help="the night, YYYY-MM-DD (default: today in UTC)")
    add_run_options(parser, metrics_job="amnst_nightly")
    return parser


def nightly_main(argv: list[str] | None = None) -> int:
    """jobs/nightly.py: parse its arguments, run the night on Ray, print its outcome; return the exit status."""
    import ray

    from amnst.ops import metrics
    from amnst.batch import storage
    from amnst.batch.nightly import run_night
    from amnst.batch.ray_runner import connect

    try:
        args = build_nightly_parser().parse_args(argv)
    except SystemExit as exit_:  # a refused command line (its line is printed), or --help
        return _exit_status(exit_)
    date = args.date or datetime.datetime.now(datetime.timezone.utc).date()
    # Every option, then the local paths, before Ray starts (as `amnst run` does).
    try:
        options = run_options_from_args(args)
        storage.check_uri(args.manifests)
        check_folder(args.manifests)
        check_batch_paths(args)
    except (storage.StorageError, CommandError) as error:
        print(f"nightly: error: {error}", file=sys.stderr)
        return error.status if isinstance(error, CommandError) else EXIT_USAGE
    if args.metrics_port is not None:
        metrics.serve(args.metrics_port)
    connect(args.address)
    try:
        summary = run_night(args.manifests, options, date, _progress_printer())
    except storage.StorageError as error:
        print(f"nightly: error: {error}", file=sys.stderr)
        return EXIT_INPUT
    finally:
        ray.shutdown()
    print(_describe_night(summary))
    if args.pushgateway:
        # A manifest that could not run counts as a failure: the night is not a success.
        failed = summary.total("failed") + sum(1 for m in summary.manifests if m.error)
        seconds = ((summary.finished_at or datetime.datetime.now(datetime.timezone.utc)) - summary.started_at).total_seconds()
        metrics.push_batch_outcome(args.pushgateway, args.metrics_job, summary.total("ok"), failed,
                                   summary.total("skipped"), seconds)
    return summary.exit_status


def _date(text: str) -> datetime.date:
    try:
        return datetime.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date YYYY-MM-DD") from None


def _describe_night(summary: Any) -> str:
    """A few lines for the job's log: one per manifest, then the night's totals."""
    lines = []
    for m in summary.manifests:
        result = (f"could not run: {m.error}" if m.error else f"{m.ok} ok, {m.skipped} skipped, "
                  f"{m.failed} failed of {m.pairs} pairs in {m.seconds:.1f} s")
        lines.append(f"{m.manifest} -> {m.output}: {result}")
    if not summary.manifests:
        lines.append("no manifest is due on this date")
    lines.append(f"night {summary.date}: {summary.status}, {len(summary.manifests)} manifests, "
                 f"{summary.total('ok')} ok, {summary.total('skipped')} skipped, "
                 f"{summary.total('failed')} failed; recorded at {summary.record_uri}")
    return "\n".join(lines)


# --- option values ------------------------------------------------------------------------
# The NST options (--iterations, the weights, --strength, --lr, --seed, the layer lists) are
# parsed as plain numbers and judged by NSTConfig, the one place their rules live, for the
# command line, the manifest's overrides and the jobs alike (preset_from_args). These types
# judge the options that set no NST parameter, as argparse errors: one line, exit status 2.

def _number(text: str) -> float:
    """A finite float: NaN and the infinities are no count, rate, share or duration."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number")
    return value


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def _checked(parse: Callable[[str], Any], ok: Callable[[Any], bool], reason: str) -> Callable[[str], Any]:
    """An argparse type: ``parse(text)``, refused with ``"<text> <reason>"`` unless ``ok`` holds."""
    def check(text: str) -> Any:
        value = parse(text)
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{text} {reason}")
        return value
    return check


def _int_at_least(minimum: int) -> Callable[[str], int]:
    return _checked(_integer, lambda v: v >= minimum, f"is below {minimum}")


_positive_int = _checked(_integer, lambda v: v > 0, "is not positive")
_non_negative_int = _checked(_integer, lambda v: v >= 0, "is negative")
_positive_float = _checked(_number, lambda v: v > 0, "is not positive")
_non_negative_float = _checked(_number, lambda v: v >= 0, "is negative")
# A share strictly between 0 and 1 (e.g. of tracks held out), and one above 0 and at most 1
# (e.g. of a GPU's peak rate).
_open_fraction = _checked(_number, lambda v: 0 < v < 1, "is not in (0, 1)")
_unit_fraction = _checked(_number, lambda v: 0 < v <= 1, "is not in (0, 1]")
# A seed as NSTConfig takes it: NumPy's RandomState accepts [0, 2**32).
_seed = _checked(_integer, lambda v: 0 <= v < SEED_LIMIT, "is not in [0, 2**32)")
_port = _checked(_integer, lambda v: 0 <= v <= 65535, "is not a port (0 to 65535)")


# --- paths ---------------------------------------------------------------------------------
# Local paths are looked at before any work (decoding, Ray); S3 URIs are checked where
# they are read, as before, so that checking costs no request.

def _local_path(uri: str, status: int) -> str | None:
    """The local path that ``uri`` names (a plain path or file://), or None for an S3 URI."""
    from amnst.batch import storage

    try:
        normal = storage.check_uri(uri)
    except storage.StorageError as error:
        raise CommandError(str(error), status) from None
    if normal.startswith("s3://"):
        return None
    return normal[len("file://"):] if normal.startswith("file://") else normal


def check_input_file(uri: str | os.PathLike[str] | None, missing: str = "no such file") -> None:
    """Refuse a local input that is a directory or is not there (exit status 1)."""
    if uri is None:
        return
    uri = os.fspath(uri)
    path = _local_path(uri, EXIT_INPUT)
    if path is None:
        return
    if os.path.isdir(path):
        raise CommandError(f"{uri}: is a directory", EXIT_INPUT)
    if not os.path.exists(path):
        raise CommandError(f"{uri}: {missing}", EXIT_INPUT)


def check_output_file(uri: str | os.PathLike[str] | None) -> None:
    """Refuse a local output file that is a directory (exit status 2): it could never be written."""
    if uri is None:
        return
    uri = os.fspath(uri)
    path = _local_path(uri, EXIT_USAGE)
    if path is not None and os.path.isdir(path):
        raise CommandError(f"{uri}: is a directory", EXIT_USAGE)


def check_folder(uri: str | os.PathLike[str] | None, status: int = EXIT_USAGE) -> None:
    """Refuse a local folder (an output prefix, a dataset) that is a file."""
    if uri is None:
        return
    uri = os.fspath(uri)
    path = _local_path(uri, status)
    if path is not None and os.path.exists(path) and not os.path.isdir(path):
        raise CommandError(f"{uri}: is not a directory", status)


if __name__ == "__main__":
    sys.exit(main())
