"""The synthesized evaluation set: ten pairs of music and ambience that the quality
benchmarks (``amnst bench quality``) and tests measure transfers on, each synthesized
with a fixed seed by :mod:`amnst.synth`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from amnst.synth import DEFAULT_SAMPLE_RATE, STYLES, music

@dataclass(frozen=True)
class EvaluationPair:
    """A named (content, style) pair: :func:`music` and :data:`STYLES` arguments and a seed."""

    name: str
    content: Mapping[str, Any]
    style: str
    style_params: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0


def _pair(seed: int, content_name: str, content: dict[str, Any], style: str,
          **style_params: Any) -> EvaluationPair:
    return EvaluationPair(f"{content_name}_{style}", content, style, style_params, seed)


# Ten contents varying key, mode, tempo, meter, rhythm, timbre and drums;
# each ambience style appears twice, with different parameters.
EVALUATION_PAIRS: list[EvaluationPair] = [
    _pair(0, "pop-piano", dict(key="C", mode="major", tempo=100, rhythm="eighth",
                               timbre="piano"), "rain"),
    _pair(1, "ballad-strings", dict(key="A", mode="minor", tempo=72, rhythm="quarter",
                                    timbre="strings", drums=False), "wind"),
    _pair(2, "funk-organ", dict(key="G", mode="mixolydian", tempo=112, rhythm="syncopated",
                                timbre="organ"), "drone"),
    _pair(3, "waltz-pluck", dict(key="E", mode="minor", tempo=150, rhythm="quarter",
                                 beats_per_bar=3, timbre="pluck"), "choir"),
    _pair(4, "ambient-pad", dict(key="D", mode="dorian", tempo=60, rhythm="half",
                                 timbre="pad", drums=False), "hum"),
    _pair(5, "reel-pluck", dict(key="F", mode="major", tempo=132, rhythm="sixteenth",
                                timbre="pluck"), "rain", drops_per_second=120.0),
    _pair(6, "march-organ", dict(key="Bb", mode="major", tempo=120, rhythm="dotted",
                                 timbre="organ"), "wind", gust_rate=0.6, high_hz=4000.0),
    _pair(7, "nocturne-piano", dict(key="F#", mode="minor", tempo=66, rhythm="triplet",
                                    timbre="piano", drums=False), "drone", root_hz=73.4),
    _pair(8, "hymn-strings", dict(key="Eb", mode="major", tempo=84, rhythm="half",
                                  timbre="strings", drums=False), "choir", vowel="o"),
    _pair(9, "shuffle-pad", dict(key="B", mode="dorian", tempo=96, rhythm="triplet",
                                 timbre="pad"), "hum", mains_hz=60.0),
]


def evaluation_pair(name: str, seconds: float,
                    sample_rate: int = DEFAULT_SAMPLE_RATE) -> tuple[np.ndarray, np.ndarray]:
    """Synthesize the named pair of :data:`EVALUATION_PAIRS`.

    Returns ``(content, style)``, two ``(n_samples,)`` float32 waveforms.
    """
    for pair in EVALUATION_PAIRS:
        if pair.name == name:
            content = music(seconds, pair.seed, sample_rate, **pair.content)
            style = STYLES[pair.style](seconds, pair.seed, sample_rate, **pair.style_params)
            return content, style
    raise ValueError(f"unknown evaluation pair {name!r}: choose one of "
                     f"{[pair.name for pair in EVALUATION_PAIRS]}")
