"""Server programs the tests run beside themselves (moto, Prometheus, a Pushgateway,
a Ray head): how a test knows one is up, and one way to start, await and stop one.

One home, so that every fixture waits for its server and cleans up after it
alike: a server that never answers fails the test with its own log, and one
left behind is terminated, then killed.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


def answers(url: str) -> bool:
    """Whether anything serves HTTP at ``url``: any reply counts, an error status
    (401 without a token, 404 on a path it lacks) included."""
    try:
        urllib.request.urlopen(url, timeout=2).close()
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False
    return True


def ready(url: str) -> bool:
    """Whether ``url``, a readiness endpoint, says 200: Prometheus answers 503 while it loads."""
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return reply.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def background(command: list[str], log: Path, ready_url: str, seconds: float = 60.0,
               env: dict[str, str] | None = None, cwd: Path | None = None,
               up: Callable[[str], bool] = ready) -> Iterator[subprocess.Popen]:
    """A server process, its output in ``log``, waited for until ``up(ready_url)``;
    the test fails with the log's tail if it exits or ``seconds`` pass first.
    Stopped by :func:`stop` on leaving."""
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    try:
        deadline = time.monotonic() + seconds
        while not up(ready_url):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{Path(command[0]).name} did not answer on {ready_url}:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        yield process
    finally:
        stop(process)


def stop(process: subprocess.Popen) -> None:
    """Terminate ``process`` if it still runs; kill it if it outlives 15 s of that."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
