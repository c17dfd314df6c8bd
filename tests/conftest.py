"""Shared fixtures: synthesized audio and the original research weights."""

from __future__ import annotations

import contextlib
import dataclasses

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from amnst.engine import audio
from amnst import synth
from amnst.config import get_preset

# Test clusters are private to this process: no token to hand around, no telemetry.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

SEED_WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "seed" / "GenreClassificationTrainedModelWeights.npy"


@pytest.fixture(scope="session")
def seed_weights_npy() -> Path:
    if not SEED_WEIGHTS.is_file():
        pytest.skip(f"the original research weights are not at {SEED_WEIGHTS}")
    return SEED_WEIGHTS


# Set by .ci/run: there `make test` has installed every system program, so a missing one
# is a broken set-up to report, not a test to skip.
REQUIRE_SYSTEM_PROGRAMS = os.environ.get("AMNST_REQUIRE_SYSTEM_PROGRAMS") == "1"


def system_program(program: str, package: str) -> str:
    """The path of a Debian system program a test runs.

    Where it is missing the test skips, saying why and how to install it;
    under ``AMNST_REQUIRE_SYSTEM_PROGRAMS=1`` (CI) it fails instead.
    """
    path = shutil.which(program)
    if path is None:
        reason = (f"{program} is not installed (Debian package {package}): `make test` installs it with "
                  f"apt-get when run as root; otherwise apt-get install {package}")
        if REQUIRE_SYSTEM_PROGRAMS:
            pytest.fail(reason + " (AMNST_REQUIRE_SYSTEM_PROGRAMS=1: no skipping)")
        pytest.skip(reason)
    return path


@pytest.fixture(scope="session")
def music_and_rain() -> tuple[np.ndarray, np.ndarray]:
    """7 s of synthesized music and 6 s of rain at 22050 Hz."""
    return synth.music(7.0, seed=3), synth.rain(6.0, seed=3)


def segments_of(y: np.ndarray, preset_name: str, count: int | None = None, full: bool = False) -> np.ndarray:
    """The preset's segments of ``y``; ``full``: the CNN's whole 431 frames, not fitted
    (the Keras model's input shape)."""
    config = get_preset(preset_name).audio
    if full:
        config = dataclasses.replace(config, fit_segments=False)
    return audio.segment(audio.mel_spectrogram(y, config), config)[:count]


def wav_bytes(y: np.ndarray, sample_rate: int = 22050) -> bytes:
    """``y`` as 16-bit WAV bytes, encoded as the service encodes its outputs."""
    return audio.encode(y, sample_rate, "wav")


def write_wav(path: Path, y: np.ndarray, sample_rate: int = 22050) -> Path:
    path.write_bytes(wav_bytes(y, sample_rate))
    return path
from tests.s3_server import aws_endpoint, moto_server, s3_bucket, s3_env  # noqa: F401


@contextlib.contextmanager
def local_ray_instance(endpoint: str | None = None, **options: Any) -> Iterator[str]:
    """A Ray of its own on this machine, started as ``amnst run`` starts one
    (``ray_runner.connect``), of 2 CPUs unless ``options`` say otherwise; its
    workers reach ``endpoint``, if given, through the standard AWS variables,
    which are restored afterwards. Yields its GCS address."""
    import ray

    from amnst.batch.ray_runner import connect

    with contextlib.ExitStack() as stack:
        if endpoint is not None:
            stack.enter_context(aws_endpoint(endpoint))
        connect("local", **{"num_cpus": 2, **options})
        stack.callback(ray.shutdown)
        yield ray.get_runtime_context().gcs_address


@pytest.fixture(scope="module")
def local_ray(moto_server: str) -> Iterator[str]:
    """A local Ray whose workers reach the moto endpoint; yields its address."""
    with local_ray_instance(moto_server) as address:
        yield address
