"""Example inputs the project makes itself: music, ambiences and a manifest pairing them."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from amnst.engine import audio
from amnst import synth
from amnst.batch.storage import write_bytes

SAMPLE_RATE = 22050


def write_demo(directory: Path, seconds: float = 12.0, seed: int = 7) -> Path:
    """Synthesize two pieces of music and two ambiences, and ``manifest.csv`` pairing them.

    The manifest names the inputs relative to itself. Returns its path.
    """
    sounds = {
        "piano.wav": synth.music(seconds, seed=seed, key="D", mode="major", timbre="piano", tempo=96.0),
        "organ.wav": synth.music(seconds, seed=seed + 1, key="A", mode="minor", timbre="organ", tempo=72.0),
        "rain.wav": synth.rain(min(seconds, 10.0), seed=seed),
        "drone.wav": synth.drone(min(seconds, 10.0), seed=seed),
    }
    for name, y in sounds.items():
        write_bytes(directory / name, audio.encode(y, SAMPLE_RATE, "wav"))
    table = io.StringIO()
    rows = csv.writer(table)
    rows.writerow(["pair_id", "content", "style"])
    rows.writerow(["piano-in-rain", "piano.wav", "rain.wav"])
    rows.writerow(["organ-in-drone", "organ.wav", "drone.wav"])
    manifest = directory / "manifest.csv"
    write_bytes(manifest, table.getvalue().encode())
    return manifest
