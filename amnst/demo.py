"""Example inputs the project makes itself: a short piece of music and an ambience."""

from __future__ import annotations

from pathlib import Path

from amnst import audio, synth
from amnst.storage import write_bytes

DEMO_SAMPLE_RATE = 22050


def write_demo_inputs(directory: str | Path, seconds: float = 12.0, seed: int = 7) -> tuple[Path, Path]:
    """Synthesize ``content.wav`` (chords and melody) and ``style.wav`` (rain) into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    content = synth.music(seconds, seed=seed, key="D", mode="major", timbre="piano", tempo=96.0)
    style = synth.rain(min(seconds, 10.0), seed=seed)
    paths = directory / "content.wav", directory / "style.wav"
    for path, y in zip(paths, (content, style)):
        write_bytes(path, audio.encode(y, DEMO_SAMPLE_RATE, "wav"))
    return paths
