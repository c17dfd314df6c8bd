"""``jobs/nightly.py``'s command line: a night's batches (``amnst.batch.nightly``)."""

from __future__ import annotations

import argparse
import datetime
import sys
from typing import Any

from amnst.cli.options import (CommandError, EXIT_INPUT, EXIT_PARTIAL, EXIT_USAGE, OneLineParser, _exit_status, _progress_printer, add_run_options, check_batch_paths, check_folder, run_options_from_args)


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
