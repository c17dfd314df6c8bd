"""Deterministic synthetic audio: music-like contents and ambience-like styles.

Every generator returns a float32 mono waveform of shape ``(n_samples,)`` with
``n_samples = round(seconds * sample_rate)``, peak-normalised to ``peak``.
Randomness comes only from ``np.random.default_rng(seed)``, so a call is
reproducible bit for bit, and nothing is ever downloaded: tests, demos and
evaluation runs use these signals in place of recordings.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import signal

DEFAULT_SAMPLE_RATE = 22050
DEFAULT_PEAK = 0.8

PITCH_CLASSES = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
# Semitones of the seven scale degrees above the tonic.
MODES: dict[str, tuple[int, ...]] = {
    "major": (0, 2, 4, 5, 7, 9, 11),
    "minor": (0, 2, 3, 5, 7, 8, 10),
    "dorian": (0, 2, 3, 5, 7, 9, 10),
    "mixolydian": (0, 2, 4, 5, 7, 9, 10),
}
# Chord roots as 1-based scale degrees, one chord per bar: I-V-vi-IV,
# i-VI-III-VII, i-IV-i-VII and I-bVII-IV-I.
PROGRESSIONS: dict[str, tuple[int, ...]] = {
    "major": (1, 5, 6, 4),
    "minor": (1, 6, 3, 7),
    "dorian": (1, 4, 1, 7),
    "mixolydian": (1, 7, 4, 1),
}
# Melody note durations in beats, repeated to fill each bar.
RHYTHMS: dict[str, tuple[float, ...]] = {
    "half": (2.0,),
    "quarter": (1.0,),
    "eighth": (0.5,),
    "sixteenth": (0.25,),
    "triplet": (1 / 3,),
    "dotted": (0.75, 0.25),
    "syncopated": (0.5, 1.0, 0.5),
}


@dataclass(frozen=True)
class Timbre:
    """An additive instrument: harmonic amplitudes and an envelope.

    ``partials[k]`` is the amplitude of harmonic ``k + 1``. ``attack`` and
    ``release`` are linear ramps in seconds; ``decay`` is the time constant in
    seconds of an exponential fall after the attack (``None`` sustains).
    ``damping`` (1/s) makes each partial above the first decay that much
    faster than the one below it, so plucked notes start bright and dull.
    """

    partials: tuple[float, ...]
    attack: float
    decay: float | None
    release: float
    damping: float = 0.0


TIMBRES: dict[str, Timbre] = {
    "organ": Timbre((1.0, 0.8, 0.6, 0.3, 0.4, 0.0, 0.2, 0.15), 0.01, None, 0.05),
    "piano": Timbre(tuple(1 / k**1.5 for k in range(1, 9)), 0.005, 0.8, 0.3, damping=2.0),
    "pluck": Timbre(tuple(1 / k for k in range(1, 11)), 0.002, 0.3, 0.05, damping=6.0),
    "strings": Timbre(tuple(1 / k for k in range(1, 11)), 0.25, None, 0.3),
    "pad": Timbre((1.0, 0.4, 0.2, 0.1), 0.8, None, 0.8),
}

# Formant frequencies (Hz) and relative gains of sung vowels, adult voice.
VOWELS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "a": ((800.0, 1150.0, 2900.0), (1.0, 0.5, 0.25)),
    "e": ((400.0, 1600.0, 2700.0), (1.0, 0.4, 0.25)),
    "i": ((270.0, 2300.0, 3000.0), (1.0, 0.3, 0.2)),
    "o": ((450.0, 800.0, 2830.0), (1.0, 0.6, 0.1)),
    "u": ((325.0, 700.0, 2530.0), (1.0, 0.3, 0.05)),
}


# --------------------------------------------------------------------------
# Content: music


def music(seconds: float, seed: int = 0, sample_rate: int = DEFAULT_SAMPLE_RATE, *,
          tempo: float = 100.0, key: str = "C", mode: str = "major", timbre: str = "piano",
          rhythm: str = "eighth", beats_per_bar: int = 4,
          progression: Sequence[int] | None = None, drums: bool = True,
          peak: float = DEFAULT_PEAK) -> np.ndarray:
    """A chord progression with a bass line, a melody and optional drums.

    One diatonic triad per bar cycles through ``progression`` (1-based scale
    degrees of ``key`` in ``mode``; default from :data:`PROGRESSIONS`), its
    root doubled two octaves down. The melody is a seeded random walk over
    the scale, landing on a chord tone at each bar start, with note lengths
    from :data:`RHYTHMS`. Drums put a kick on beats 1 and 3 (beat 1 in odd
    meters) and a hi-hat on every half beat, giving clear onsets.

    ``tempo`` is in beats per minute; ``key`` is a pitch class such as
    ``"F#"`` or ``"Bb"``. Returns ``(n_samples,)`` float32.
    """
    n = _num_samples(seconds, sample_rate)
    _check_peak(peak)
    _require(20 <= tempo <= 300, "tempo", tempo, "must be in [20, 300] beats per minute")
    tonic = _pitch_class(key)
    _require(mode in MODES, "mode", mode, f"must be one of {sorted(MODES)}")
    _require(timbre in TIMBRES, "timbre", timbre, f"must be one of {sorted(TIMBRES)}")
    _require(rhythm in RHYTHMS, "rhythm", rhythm, f"must be one of {sorted(RHYTHMS)}")
    _require(2 <= beats_per_bar <= 8, "beats_per_bar", beats_per_bar, "must be in [2, 8]")
    roots = tuple(progression) if progression is not None else PROGRESSIONS[mode]
    _require(len(roots) > 0 and all(d in range(1, 8) for d in roots), "progression", progression,
             "must be a non-empty sequence of scale degrees 1..7")

    rng = np.random.default_rng(seed)
    scale, sound = MODES[mode], TIMBRES[timbre]
    beat = 60.0 / tempo
    bar = beats_per_bar * beat
    # Progressions and melodies repeat pitches and lengths: render each
    # distinct (frequency, duration) once.
    notes: dict[tuple[float, float], np.ndarray] = {}

    def play(hz: float, start: float, duration: float, amplitude: float) -> None:
        if (hz, duration) not in notes:
            notes[hz, duration] = _note(hz, duration, sound, sample_rate)
        _place(y, amplitude * notes[hz, duration], round(start * sample_rate))

    y = np.zeros(n)
    degree = 7  # the melody starts on the tonic, two octaves above the chords' roots
    for index in range(math.ceil(n / (bar * sample_rate))):
        start = index * bar
        root = int(roots[index % len(roots)]) - 1
        chord = (root, root + 2, root + 4)
        for tone in chord:
            play(_midi_hz(tonic, scale, tone, 3), start, bar, 0.18)
        play(_midi_hz(tonic, scale, root, 2), start, bar, 0.3)
        for onset, length in _bar_rhythm(RHYTHMS[rhythm], beats_per_bar):
            degree = _next_degree(degree, rng, chord if onset == 0 else None)
            accent = 1.0 if onset == int(onset) else 0.8
            play(_midi_hz(tonic, scale, degree, 4), start + onset * beat, 0.9 * length * beat,
                 0.5 * accent)
    if drums:
        y += _drum_track(n, beat, beats_per_bar, rng, sample_rate)
    return _normalise(y, peak)


def _pitch_class(key: str) -> int:
    letter, accidental = key[:1].upper(), key[1:]
    _require(letter in PITCH_CLASSES and accidental in ("", "#", "b"), "key", key,
             "must be a pitch class such as 'C', 'F#' or 'Bb'")
    return (PITCH_CLASSES[letter] + {"": 0, "#": 1, "b": -1}[accidental]) % 12


def _midi_hz(tonic: int, scale: tuple[int, ...], degree: int, octave: int) -> float:
    """Frequency of 0-based scale ``degree`` counted from the tonic in ``octave`` (C4 = MIDI 60)."""
    midi = 12 * (octave + 1) + tonic + 12 * (degree // 7) + scale[degree % 7]
    return 440.0 * 2 ** ((midi - 69) / 12)


def _bar_rhythm(pattern: tuple[float, ...], beats_per_bar: int) -> list[tuple[float, float]]:
    """``(onset, length)`` pairs in beats filling one bar; the last note is cut at the bar line."""
    notes, onset, index = [], 0.0, 0
    while onset < beats_per_bar - 1e-9:
        length = min(pattern[index % len(pattern)], beats_per_bar - onset)
        notes.append((onset, length))
        onset, index = onset + length, index + 1
    return notes


def _next_degree(degree: int, rng: np.random.Generator, chord: tuple[int, ...] | None) -> int:
    """One step of the melody's random walk, kept within about an octave and a half."""
    step = rng.choice((-2, -1, 0, 1, 2), p=(0.15, 0.3, 0.1, 0.3, 0.15))
    degree = int(np.clip(degree + step, 4, 14))
    if chord is not None:
        # Bar starts land on the nearest chord tone so melody and harmony agree.
        candidates = [d for d in range(4, 15) if d % 7 in {c % 7 for c in chord}]
        degree = min(candidates, key=lambda d: abs(d - degree))
    return degree


def _note(hz: float, duration: float, sound: Timbre, sample_rate: int) -> np.ndarray:
    """One note of ``sound`` held for ``duration`` s, then released; first partial's amplitude 1."""
    n = round((duration + sound.release) * sample_rate)
    t = np.arange(n) / sample_rate
    envelope = np.minimum(1.0, t / sound.attack)
    envelope *= np.clip(1.0 - (t - duration) / sound.release, 0.0, 1.0)
    if sound.decay is not None:
        envelope *= np.exp(-t / sound.decay)
    # Partial k decays by damping**(k - 1): one exp, then running products.
    damping = np.exp(-sound.damping * t) if sound.damping else 1.0
    tone, fade = np.zeros(n), 1.0
    for k, weight in enumerate(sound.partials, start=1):
        if weight and k * hz < 0.45 * sample_rate:  # stay clear of aliasing
            tone += weight * fade * _sine(k * hz, n, sample_rate)
        fade = fade * damping
    return envelope * tone


def _drum_track(n: int, beat: float, beats_per_bar: int, rng: np.random.Generator,
                sample_rate: int) -> np.ndarray:
    """Kick and hi-hat for ``n`` samples at ``beat`` seconds per beat, ``(n,)``."""
    t = np.arange(round(0.3 * sample_rate)) / sample_rate
    # Kick: a sine swept down from ~145 Hz to 45 Hz under a fast decay.
    sweep_hz = 45.0 + 100.0 * np.exp(-t / 0.04)
    kick = np.sin(2 * np.pi * np.cumsum(sweep_hz) / sample_rate) * np.exp(-t / 0.12)
    # Hi-hat: a 50 ms burst of high-passed noise.
    burst = rng.standard_normal(round(0.05 * sample_rate))
    hat = _filter(burst, "highpass", min(6000.0, 0.35 * sample_rate), sample_rate)
    hat *= np.exp(-t[:burst.size] / 0.012) / np.max(np.abs(hat))
    kick_beats = (0, 2) if beats_per_bar % 2 == 0 else (0,)
    drums = np.zeros(n)
    for half_beat in range(math.ceil(2 * n / (beat * sample_rate))):
        start = round(half_beat * beat / 2 * sample_rate)
        if half_beat % 2 == 0 and (half_beat // 2) % beats_per_bar in kick_beats:
            _place(drums, 0.6 * kick, start)
        _place(drums, 0.12 * hat, start)
    return drums


# --------------------------------------------------------------------------
# Styles: ambiences


def rain(seconds: float, seed: int = 0, sample_rate: int = DEFAULT_SAMPLE_RATE, *,
         drops_per_second: float = 40.0, bed_level: float = 0.15,
         peak: float = DEFAULT_PEAK) -> np.ndarray:
    """Rain: a band-passed noise bed under many short drop transients.

    Drops arrive as a Poisson process of rate ``drops_per_second``, each its
    own ~4 ms decaying noise burst band-passed into one of four bands between
    1.2 and 6 kHz (lower below 20 kHz sampling), with log-normal peak
    amplitudes (median 1). ``bed_level`` is the bed's RMS on that scale.
    Returns ``(n_samples,)`` float32.
    """
    n = _num_samples(seconds, sample_rate)
    _check_peak(peak)
    _require(drops_per_second > 0, "drops_per_second", drops_per_second, "must be positive")
    _require(bed_level > 0, "bed_level", bed_level, "must be positive")
    rng = np.random.default_rng(seed)
    bed = _filter(rng.standard_normal(n), "bandpass", (300.0, min(5000.0, 0.4 * sample_rate)),
                  sample_rate)
    y = bed_level * bed / np.sqrt(np.mean(bed**2))

    # Uniform times given a Poisson count make a Poisson process.
    count = rng.poisson(drops_per_second * n / sample_rate)
    positions = rng.integers(0, n, size=count)
    amplitudes = rng.lognormal(0.0, 0.8, size=count)
    bands = rng.integers(0, 4, size=count)
    t = np.arange(round(0.03 * sample_rate)) / sample_rate
    bursts = rng.standard_normal((count, t.size)) * np.exp(-t / 0.004)
    for band, centre in enumerate(np.geomspace(1200.0, min(6000.0, 0.3 * sample_rate), 4)):
        chosen = bands == band
        edges = (centre / 1.3, centre * 1.3)
        bursts[chosen] = _filter(bursts[chosen], "bandpass", edges, sample_rate)
    bursts *= (amplitudes / np.max(np.abs(bursts), axis=1))[:, None]
    for start, burst in zip(positions, bursts):
        _place(y, burst, start)
    return _normalise(y, peak)


def wind(seconds: float, seed: int = 0, sample_rate: int = DEFAULT_SAMPLE_RATE, *,
         gust_rate: float = 0.25, low_hz: float = 150.0, high_hz: float = 2500.0,
         peak: float = DEFAULT_PEAK) -> np.ndarray:
    """Wind: noise through a slowly sweeping band-pass, with gusts.

    A smooth random gust curve with about ``gust_rate`` turns per second
    drives both loudness and the pass band's centre, which moves between
    ``low_hz`` and ``high_hz``: like real wind, gusts are louder and brighter.
    Returns ``(n_samples,)`` float32.
    """
    n = _num_samples(seconds, sample_rate)
    _check_peak(peak)
    _require(gust_rate > 0, "gust_rate", gust_rate, "must be positive")
    _require(low_hz > 0, "low_hz", low_hz, "must be positive")
    _require(low_hz < high_hz < 0.4 * sample_rate, "high_hz", high_hz,
             "must exceed low_hz and stay below 0.4 * sample_rate")
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(n)
    gust = _smooth_random(n, gust_rate, sample_rate, rng)
    # A moving band-pass as a crossfade over a fixed filter bank: cheaper than
    # time-varying coefficients and free of their switching artefacts.
    centres = np.geomspace(low_hz, high_hz, 8)
    position = gust * (centres.size - 1)
    y = np.zeros(n)
    for index, centre in enumerate(centres):
        # A smooth bump two bands wide either side of the moving centre.
        distance = np.minimum(np.abs(index - position) / 2, 1.0)
        band = _filter(noise, "bandpass", (centre / 1.4, centre * 1.4), sample_rate)
        y += band * (1 - distance**2) ** 2
    return _normalise(y * (0.15 + 0.85 * gust), peak)


def drone(seconds: float, seed: int = 0, sample_rate: int = DEFAULT_SAMPLE_RATE, *,
          root_hz: float = 55.0, detune_hz: float = 0.6,
          peak: float = DEFAULT_PEAK) -> np.ndarray:
    """Drone: root, fifth and octave held throughout, each a pair of detuned voices.

    Each voice is off ``root_hz`` multiples by up to ``detune_hz``, so pairs
    beat slowly; six harmonics falling as ``1/k**1.5`` keep it dark, and a
    slow random swell keeps it alive. Returns ``(n_samples,)`` float32.
    """
    n = _num_samples(seconds, sample_rate)
    _check_peak(peak)
    _require(20 <= root_hz <= 500, "root_hz", root_hz, "must be in [20, 500] Hz")
    _require(0 <= detune_hz <= 5, "detune_hz", detune_hz, "must be in [0, 5] Hz")
    rng = np.random.default_rng(seed)
    y = np.zeros(n)
    for ratio, level in ((1.0, 1.0), (1.5, 0.6), (2.0, 0.5)):
        for hz in root_hz * ratio + rng.uniform(-detune_hz, detune_hz, size=2):
            for k in range(1, 7):
                phase = rng.uniform(0, 2 * np.pi)
                if k * hz < 0.45 * sample_rate:  # stay clear of aliasing
                    y += level / k**1.5 * _sine(k * hz, n, sample_rate, phase)
    swell = 0.7 + 0.3 * _smooth_random(n, 0.1, sample_rate, rng)
    return _normalise(y * swell, peak)


def choir(seconds: float, seed: int = 0, sample_rate: int = DEFAULT_SAMPLE_RATE, *,
          root_hz: float = 196.0, vowel: str = "a", singers_per_part: int = 2,
          peak: float = DEFAULT_PEAK) -> np.ndarray:
    """Choir: an open chord sung on one vowel.

    Four parts (root, fifth, octave, tenth above ``root_hz``), each of
    ``singers_per_part`` band-limited sawtooth voices, a few cents apart with
    their own 4.5-6 Hz vibrato and breathing swell, plus a little breath
    noise, shaped by the formant resonances of ``vowel`` (:data:`VOWELS`).
    The sawtooth's -6 dB/octave is what a voice radiates: the glottal
    source's -12 dB/octave plus +6 dB/octave from the lips.
    Returns ``(n_samples,)`` float32.
    """
    n = _num_samples(seconds, sample_rate)
    _check_peak(peak)
    _require(50 <= root_hz <= 500, "root_hz", root_hz, "must be in [50, 500] Hz")
    _require(vowel in VOWELS, "vowel", vowel, f"must be one of {sorted(VOWELS)}")
    _require(1 <= singers_per_part <= 8, "singers_per_part", singers_per_part, "must be in [1, 8]")
    rng = np.random.default_rng(seed)
    source = np.zeros(n)
    for semitones in (0, 7, 12, 16):
        for _ in range(singers_per_part):
            cents = rng.uniform(-10, 10)
            vibrato = _sine(rng.uniform(4.5, 6.0), n, sample_rate, rng.uniform(0, 2 * np.pi))
            hz = root_hz * 2 ** ((100 * semitones + cents) / 1200) * (1 + 0.01 * vibrato)
            swell = 0.5 + 0.5 * _smooth_random(n, 0.2, sample_rate, rng)
            source += swell * _sawtooth(hz, sample_rate, rng.uniform())
    source += 0.05 * np.std(source) * rng.standard_normal(n)
    formants, gains = VOWELS[vowel]
    y = sum(gain * _resonator(source, hz, 60.0 + 0.05 * hz, sample_rate)
            for hz, gain in zip(formants, gains))
    return _normalise(y, peak)


def hum(seconds: float, seed: int = 0, sample_rate: int = DEFAULT_SAMPLE_RATE, *,
        mains_hz: float = 50.0, harmonics: int = 8, noise_level: float = 0.05,
        peak: float = DEFAULT_PEAK) -> np.ndarray:
    """Electrical hum: ``harmonics`` harmonics of ``mains_hz`` over faint noise.

    Odd harmonics are twice as strong as even ones, which gives mains hum its
    buzz; phases are random and levels spread by ±30%, both seeded. ``noise_level``
    is the white noise's RMS relative to the hum's. Returns ``(n_samples,)``
    float32.
    """
    n = _num_samples(seconds, sample_rate)
    _check_peak(peak)
    _require(harmonics >= 1, "harmonics", harmonics, "must be >= 1")
    _require(0 < mains_hz * harmonics < 0.45 * sample_rate, "mains_hz", mains_hz,
             "times harmonics must be positive and below 0.45 * sample_rate")
    _require(noise_level >= 0, "noise_level", noise_level, "must be >= 0")
    rng = np.random.default_rng(seed)
    y = np.zeros(n)
    for k in range(1, harmonics + 1):
        level = (1.0 if k % 2 else 0.5) / k * rng.uniform(0.7, 1.3)
        y += level * _sine(k * mains_hz, n, sample_rate, rng.uniform(0, 2 * np.pi))
    y += noise_level * np.sqrt(np.mean(y**2)) * rng.standard_normal(n)
    return _normalise(y, peak)


STYLES: dict[str, Callable[..., np.ndarray]] = {
    "rain": rain, "wind": wind, "drone": drone, "choir": choir, "hum": hum,
}


# --------------------------------------------------------------------------
# Shared helpers


def _num_samples(seconds: float, sample_rate: int) -> int:
    # Rain drops, hi-hats and vowel formants need up to 4 kHz of bandwidth.
    _require(sample_rate >= 8000, "sample_rate", sample_rate, "must be >= 8000 Hz")
    _require(math.isfinite(seconds) and round(seconds * sample_rate) >= 1, "seconds", seconds,
             "must be long enough for at least one sample")
    return round(seconds * sample_rate)


def _check_peak(peak: float) -> None:
    _require(0 < peak <= 1, "peak", peak, "must be in (0, 1]")


def _normalise(y: np.ndarray, peak: float) -> np.ndarray:
    """Scale ``y`` so its largest absolute sample is ``peak``; float32."""
    return (y * (peak / np.max(np.abs(y)))).astype(np.float32)


def _place(y: np.ndarray, sound: np.ndarray, start: int) -> None:
    """Add ``sound`` into ``y`` from sample ``start``, dropping what runs past the end."""
    stop = min(y.size, start + sound.size)
    if start < stop:
        y[start:stop] += sound[:stop - start]


def _filter(x: np.ndarray, kind: str, cutoff: float | tuple[float, float],
            sample_rate: int, order: int = 2) -> np.ndarray:
    """Butterworth ``lowpass``, ``highpass`` or ``bandpass`` (cutoffs in Hz)."""
    sos = signal.butter(order, cutoff, btype=kind, fs=sample_rate, output="sos")
    return signal.sosfilt(sos, x)


def _resonator(x: np.ndarray, hz: float, bandwidth: float, sample_rate: int) -> np.ndarray:
    """Two-pole resonance at ``hz`` with ``bandwidth`` Hz and unit gain at ``hz``."""
    radius = math.exp(-math.pi * bandwidth / sample_rate)
    theta = 2 * math.pi * hz / sample_rate
    # The pole pair alone has gain 1 / ((1 - r) |1 - r e^{-2i theta}|) at theta.
    gain = (1 - radius) * math.sqrt(1 - 2 * radius * math.cos(2 * theta) + radius**2)
    return signal.lfilter([gain], [1.0, -2 * radius * math.cos(theta), radius**2], x)


def _sine(hz: float, n: int, sample_rate: int, phase: float = 0.0) -> np.ndarray:
    """``sin(2 pi hz t + phase)`` at the first ``n`` sample times, ``(n,)``.

    Uses ``sin(a + b) = sin a cos b + cos a sin b`` over blocks of 1024
    samples: ``np.sin`` runs only on the block starts and one block's
    offsets, several times cheaper than on every sample and exact to rounding.
    """
    block = 1024
    omega = 2 * np.pi * hz / sample_rate
    starts = omega * block * np.arange(-(-n // block)) + phase
    offsets = omega * np.arange(block)
    out = np.outer(np.sin(starts), np.cos(offsets)) + np.outer(np.cos(starts), np.sin(offsets))
    return out.ravel()[:n]


def _smooth_random(n: int, rate: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth random curve in [0, 1], ``(n,)``.

    Uniform random values ``rate`` times a second, joined by smoothsteps.
    """
    length = max(1, round(sample_rate / rate))
    fraction = np.arange(length) / length
    weight = fraction * fraction * (3 - 2 * fraction)
    points = rng.uniform(size=-(-n // length) + 1)
    return (np.outer(points[:-1], 1 - weight) + np.outer(points[1:], weight)).ravel()[:n]


def _sawtooth(hz: np.ndarray, sample_rate: int, phase: float) -> np.ndarray:
    """Sawtooth of time-varying frequency ``hz`` (per sample), band-limited by polyBLEP.

    A naive sawtooth aliases audibly at these pitches; polyBLEP smooths each
    wrap with a two-sample polynomial, which removes most of it.
    """
    step = hz / sample_rate
    cycle = phase + np.cumsum(step)
    cycle -= np.floor(cycle)
    wave = 2 * cycle - 1
    after = cycle < step
    x = cycle[after] / step[after]
    wave[after] -= 2 * x - x * x - 1
    before = cycle > 1 - step
    x = (cycle[before] - 1) / step[before]
    wave[before] -= x * x + 2 * x + 1
    return wave


def _require(ok: Any, name: str, value: Any, reason: str) -> None:
    if not ok:
        raise ValueError(f"{name}={value!r} {reason}")
