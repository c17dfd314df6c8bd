"""What every command shares: errors and exit statuses, the option types, the run
and NST options (judged by ``amnst.config``, the one place their rules live), and
the checks of local paths made before any work."""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any, NoReturn

from amnst.config import PRECISIONS, SEED_LIMIT


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


def _exit_status(exit_: SystemExit) -> int:
    return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE if exit_.code else EXIT_OK


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
    parser.add_argument("--quality-seconds", type=_positive_float,
                        help="measure each pair's quality over its first this many seconds (default 20)")
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
                          metadata_flush_seconds=args.metadata_flush_seconds,
                          **({} if args.quality_seconds is None else {"quality_seconds": args.quality_seconds}))
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
    parser.add_argument("--precision", choices=PRECISIONS,
                        help="the CNN's arithmetic; auto: bf16 where the CPU or GPU computes it natively "
                             "(default: the preset's)")
    parser.add_argument("--griffin-lim-iters", type=int,
                        help="phase-retrieval iterations of the inversion (default: the preset's)")
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
    for name in ("iterations", "content_weight", "style_weight", "spectral_style_weight", "strength", "precision",
                 "griffin_lim_iters", "init", "learning_rate", "seed"):
        if getattr(args, name, None) is not None:
            overrides[name] = getattr(args, name)
    try:
        for name in ("content_layers", "style_layers"):
            if getattr(args, name, None) is not None:
                overrides[name] = parse_layers(getattr(args, name))
        return get_preset(args.preset).with_overrides(**overrides)
    except ConfigError as error:
        raise CommandError(str(error), EXIT_USAGE) from None


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


def train_options_from_args(args: argparse.Namespace) -> Any:
    """The TrainOptions of ``amnst train``'s arguments; bad values raise CommandError (looks at no file)."""
    from amnst.batch import storage
    from amnst.train.recipe import TrainOptions

    try:
        return TrainOptions(args.data, storage.check_uri(args.output), args.workers, args.epochs,
                            args.batch_size, args.learning_rate, args.val_fraction, args.seed,
                            args.cpus_per_worker, args.gpus_per_worker)
    except (ValueError, storage.StorageError) as error:
        raise CommandError(str(error), EXIT_USAGE) from None
