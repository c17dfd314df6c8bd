"""``amnst submit``: a job (``jobs/*.py``) on a Ray cluster's job server, with its
arguments judged here first."""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import time
from pathlib import Path
from typing import Any

from amnst.cli.options import (CommandError, EXIT_INPUT, EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, _non_negative_float, _non_negative_int, run_options_from_args, train_options_from_args)
from amnst.cli.nightly import build_nightly_parser


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
        from amnst.cli import build_parser  # the package imports this module: not at its top

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
    folder = Path(given) if given else Path(__file__).resolve().parents[2]
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
