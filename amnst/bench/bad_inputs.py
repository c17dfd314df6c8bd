"""The inputs the reliability scenarios try: bad and unusual audio, bad manifest rows,
and bad command-line options and paths, each with what must become of it.

:mod:`amnst.bench.reliability` runs them and audits the result.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np

from amnst.engine import audio
from amnst import synth

SAMPLE_RATE = 22050
GOOD_SECONDS = 6.0  # two segments a pair


@dataclass(frozen=True)
class Case:
    """One manifest row of the bad-input batch and what must become of it.

    ``reason`` is a fragment of the failed pair's error; None means the pair
    must succeed (its input is unusual, not bad).
    """

    name: str
    row: dict[str, Any]
    reason: str | None = None


def wav(y: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """``y`` (``(n,)`` or ``(n, channels)``) as 16-bit WAV bytes, as the service writes its outputs."""
    return audio.encode(y, sample_rate, "wav")


def _float_wav(y: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """``y`` as 32-bit float WAV bytes, which keep NaN: :func:`audio.encode` refuses to write it."""
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, y, sample_rate, format="WAV", subtype="FLOAT")
    return buffer.getvalue()


def bad_input_files() -> dict[str, bytes]:
    """The bad and unusual inputs, synthesized with fixed seeds, by file name."""
    music = synth.music(3.0, seed=21)
    nan = music.copy()
    nan[1000:1010] = np.nan
    header = wav(music)
    return {
        "music-a.wav": wav(synth.music(GOOD_SECONDS, seed=1)),
        "music-b.wav": wav(synth.music(GOOD_SECONDS, seed=2)),
        "rain.wav": wav(synth.rain(5.0, seed=1)),
        "drone.wav": wav(synth.drone(5.0, seed=1)),
        "empty.wav": b"",
        "truncated-header.wav": header[:30],  # cut inside the 44-byte RIFF header
        "random-bytes.mp3": np.random.default_rng(7).bytes(4000),
        "silence.wav": wav(np.zeros(2 * SAMPLE_RATE, np.float32)),
        "short.wav": wav(synth.music(0.1, seed=22)),
        "nan.wav": _float_wav(nan),
        "rate-8k.wav": wav(synth.music(3.0, seed=23, sample_rate=8000), 8000),
        "rate-96k.wav": wav(synth.music(3.0, seed=24, sample_rate=96000), 96000),
        "stereo.wav": wav(np.stack([music, np.roll(music, 100)], axis=1)),
        "six-channels.wav": wav(np.stack([np.roll(music, 50 * c) * (1 - c / 8) for c in range(6)], axis=1)),
        # A folder holding a recording: a row naming the folder must say so, not "no such object".
        "music-folder/music.wav": header,
    }


def bad_input_cases() -> list[Case]:
    """Good pairs, unusual inputs that must work, and bad inputs and rows that must fail alone."""
    def pair(pair_id: str, content: str, style: str = "rain.wav", **more: Any) -> dict[str, Any]:
        return {"pair_id": pair_id, "content": content, "style": style, **more}

    return [
        Case("good pair", pair("good-1", "music-a.wav")),
        Case("good pair", pair("good-2", "music-b.wav", "drone.wav")),
        Case("8 kHz audio", pair("rate-8k", "rate-8k.wav")),
        Case("96 kHz audio", pair("rate-96k", "rate-96k.wav")),
        Case("stereo audio", pair("stereo", "stereo.wav")),
        Case("6-channel audio", pair("six-channels", "music-b.wav", "six-channels.wav")),
        Case("missing object", pair("missing", "music-a.wav", "missing.wav"), "missing.wav: no such object"),
        Case("zero-byte file", pair("empty", "empty.wav"), "empty.wav: empty file (0 bytes)"),
        Case("truncated WAV header", pair("truncated", "truncated-header.wav"),
             "truncated-header.wav: cannot decode audio"),
        Case("random bytes as .mp3", pair("random-mp3", "music-a.wav", "random-bytes.mp3"),
             "random-bytes.mp3: cannot decode audio"),
        Case("silence", pair("silence", "silence.wav"), "silence.wav: audio is silent"),
        Case("0.1 s of audio", pair("short", "short.wav")),
        Case("float WAV holding NaN", pair("nan", "nan.wav"), "nan.wav: audio holds NaN"),
        Case("missing column", {"pair_id": "no-style", "content": "music-a.wav"}, "missing column 'style'"),
        Case("unknown override", pair("unknown-override", "music-a.wav", learning_rate=0.5),
             "unknown column 'learning_rate'"),
        Case("layer index out of range", pair("bad-layer", "music-a.wav", style_layers=[4, 99]),
             "style_layers=(4, 99) holds 99"),
        Case("negative weight", pair("negative-weight", "music-a.wav", content_weight=-1),
             "content_weight=-1.0 must be >= 0"),
        # One row per class of override value that NSTConfig refuses, as it refuses the options.
        Case("negative seed", pair("negative-seed", "music-a.wav", seed=-5),
             "seed=-5 must be an integer in [0, 2**32)"),
        Case("seed of 2**32", pair("huge-seed", "music-a.wav", seed=2**32),
             "seed=4294967296 must be an integer in [0, 2**32)"),
        Case("infinite weight", pair("inf-weight", "music-a.wav", style_weight="inf"),
             "style_weight='inf' is not a finite number"),
        Case("NaN strength", pair("nan-strength", "music-a.wav", strength="nan"),
             "strength='nan' is not a finite number"),
        Case("empty layer list", pair("no-style-layers", "music-a.wav", style_layers=[]),
             "style_layers=() and content_layers=() cannot both be empty"),
        Case("negative layer index", pair("negative-layer", "music-a.wav", content_layers=[-1]),
             "content_layers=(-1,) holds -1"),
        Case("negative iteration count", pair("negative-iterations", "music-a.wav", iterations=-1),
             "iterations=-1 must be >= 0"),
        Case("fractional iteration count", pair("fractional-iterations", "music-a.wav", iterations=2.5),
             "iterations=2.5 is not an integer"),
        Case("unknown init", pair("bad-init", "music-a.wav", init="sideways"), "init='sideways' must be one of"),
        Case("a folder as content", pair("folder-content", "music-folder/"),
             "content: music-folder/: is a directory"),
        Case("duplicate pair_id", pair("good-1", "music-b.wav"), "duplicate pair_id 'good-1' (first at row 1)"),
        Case("pair_id ../../x", pair("../../x", "music-a.wav"), "pair_id '../../x' is not a plain name"),
        Case("pair_id /tmp/x", pair("/tmp/x", "music-a.wav"), "pair_id '/tmp/x' is not a plain name"),
        Case("unsupported URI scheme", pair("http-content", "http://127.0.0.1:9/a.wav"),
             "unsupported URI scheme 'http'"),
        Case("unsupported URI scheme", pair("gs-style", "music-a.wav", "gs://bucket/rain.wav"),
             "unsupported URI scheme 'gs'"),
    ]


@dataclass(frozen=True)
class OptionCase:
    """A command line with one bad option or path, which ``amnst`` must refuse before any work.

    ``argv`` may hold ``{missing}`` (a file that is not there: were it decoded
    first, its error would be reported instead), ``{folder}`` (a directory),
    ``{out}`` (an output file) and ``{out_dir}`` (an output folder); neither
    output may exist afterwards. ``reason`` is a fragment of the one error
    line, ``status`` the exit status.
    """

    name: str
    argv: tuple[str, ...]
    reason: str
    status: int = 2


def bad_option_cases() -> list[OptionCase]:
    """One command line per class of bad option value and bad local path.

    Each would fail at a path check even if its option were wrongly accepted,
    so a regression shows in the audit without decoding audio or touching Ray.
    """
    transfer = ("transfer", "{missing}", "{missing}", "-o", "{out}")
    run = ("run", "{missing}.csv", "--output", "{out_dir}")
    return [
        OptionCase("negative seed", (*transfer, "--seed", "-5"), "seed=-5 must be an integer in [0, 2**32)"),
        OptionCase("infinite weight", (*transfer, "--content-weight", "inf"), "content_weight=inf must be finite"),
        OptionCase("NaN strength", (*transfer, "--strength", "nan"), "strength=nan must be in [0, 1]"),
        OptionCase("empty layer list", (*transfer, "--preset", "seed", "--style-layers", ""),
                   "style_layers=() leaves no style loss"),
        OptionCase("layer index out of range", (*transfer, "--content-layers", "0,20"),
                   "content_layers=(0, 20) holds 20"),
        OptionCase("no loss at all", (*transfer, "--preset", "seed", "--content-weight", "0", "--style-weight", "0"),
                   "no loss to optimise"),
        OptionCase("fractional iteration count", (*transfer, "--iterations", "1.5"),
                   "argument --iterations: invalid int value"),
        OptionCase("zero segments per task", (*run, "--segments-per-task", "0"),
                   "argument --segments-per-task: 0 is not positive"),
        OptionCase("NaN CPUs per task", (*run, "--num-cpus-per-task", "nan"),
                   "argument --num-cpus-per-task: nan is not a finite number"),
        OptionCase("a folder as content", ("transfer", "{folder}", "{missing}", "-o", "{out}"),
                   "{folder}: is a directory", 1),
        OptionCase("a folder as output", ("transfer", "{missing}", "{missing}", "-o", "{folder}"),
                   "{folder}: is a directory"),
        OptionCase("a folder as manifest", ("run", "{folder}", "--output", "{out_dir}"),
                   "manifest {folder}: is a directory", 1),
    ]
