"""A real S3 endpoint for tests: moto's standalone server on a free loopback port.

Tests talk to it over HTTP exactly as they would to MinIO or AWS; nothing in
boto3 is patched in-process.
"""

from __future__ import annotations

import contextlib

import os
import random
import socket
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import answers, background

FAKE_ACCESS_KEY = "AKIAAMNSTTESTKEY0000"
FAKE_SECRET_KEY = "amnst-test-secret-key-not-a-real-one"
BUCKET = "amnst-test"
STARTUP_SECONDS = 20.0


# Ports handed out by this process, so two servers about to start never get the same one.
_HANDED_OUT: set[int] = set()
# Ray takes its worker ports from 10002-19999 and its other ports from the ephemeral range.
_FIRST_PORT = 20000


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A loopback TCP port that nothing listens on right now, below the ephemeral range.

    A port from ``bind(0)`` is an ephemeral one, which any outgoing connection (a
    Ray cluster opens hundreds) may take as its local port before the server it
    was meant for binds it: Ray's dashboard once failed to start that way.
    """
    low, _ = _ephemeral_range()
    candidates = list(range(_FIRST_PORT, low)) if low > _FIRST_PORT + 1000 else []
    random.SystemRandom().shuffle(candidates)
    for port in candidates[:200]:
        if port in _HANDED_OUT:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    with socket.socket() as probe:  # no room below the ephemeral range: take the kernel's choice
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def aws_environment(endpoint: str) -> dict[str, str]:
    """The variables that point boto3 and pyarrow at ``endpoint`` with the fake
    credentials, as production points them at S3; Ray workers inherit them."""
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": FAKE_ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": FAKE_SECRET_KEY, "AWS_DEFAULT_REGION": "us-east-1"}


@contextlib.contextmanager
def aws_endpoint(endpoint: str) -> Iterator[None]:
    """:func:`aws_environment` set for the block; the environment as it was afterwards."""
    with pytest.MonkeyPatch.context() as env:
        for name, value in aws_environment(endpoint).items():
            env.setenv(name, value)
        yield


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory) -> Iterator[str]:
    """Start ``moto_server`` for the session and yield its endpoint URL."""
    script = Path(sys.executable).parent / "moto_server"
    if not script.is_file():
        pytest.skip(f"moto[server] is not installed ({script} missing)")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("moto") / "server.log"
    # Any reply is up: moto has no readiness endpoint.
    with background([str(script), "-H", "127.0.0.1", "-p", str(port)], log, f"{endpoint}/moto-api/",
                    STARTUP_SECONDS, up=answers):
        yield endpoint


@pytest.fixture
def s3_env(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Point boto3 at a freshly reset moto server with fake credentials; yield the endpoint."""
    for name, value in aws_environment(moto_server).items():
        monkeypatch.setenv(name, value)
    # A developer's own AWS set-up must not leak into the tests.
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_REGION",
                 "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    reset = urllib.request.Request(f"{moto_server}/moto-api/reset", method="POST")
    urllib.request.urlopen(reset, timeout=10).close()
    yield moto_server


@pytest.fixture
def s3_bucket(s3_env: str) -> Iterator[str]:
    """An empty bucket on the moto server, as ``s3://amnst-test``."""
    import boto3

    boto3.session.Session().client("s3").create_bucket(Bucket=BUCKET)
    yield f"s3://{BUCKET}"
