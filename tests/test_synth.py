"""Tests for amnst.synth: reproducibility, shape, level, and what each signal sounds like."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import scipy.stats
from scipy import signal

from amnst import synth
from amnst.bench import evaluation

SR = synth.DEFAULT_SAMPLE_RATE
GENERATORS = {"music": synth.music, **synth.STYLES}


def _spectrum(y: np.ndarray, sample_rate: int = SR) -> tuple[np.ndarray, np.ndarray]:
    """Frequencies (Hz) and magnitudes of the whole signal's spectrum."""
    return np.fft.rfftfreq(y.size, 1 / sample_rate), np.abs(np.fft.rfft(y))


def _band_energy(y: np.ndarray, low: float, high: float) -> float:
    """Fraction of the signal's energy between ``low`` and ``high`` Hz."""
    freqs, magnitude = _spectrum(y)
    power = magnitude**2
    return float(power[(freqs >= low) & (freqs < high)].sum() / power.sum())


@pytest.mark.parametrize("name", GENERATORS)
def test_same_seed_same_signal_other_seed_other_signal(name):
    generate = GENERATORS[name]
    y = generate(2.0, seed=3)
    np.testing.assert_array_equal(y, generate(2.0, seed=3))
    assert not np.allclose(y, generate(2.0, seed=4))


@pytest.mark.parametrize("name", GENERATORS)
@pytest.mark.parametrize(("seconds", "sample_rate", "peak"),
                         [(1.0, 22050, synth.DEFAULT_PEAK), (1.23456, 44100, 0.5),
                          (1 / 3, 16000, 1.0), (0.7, 8000, 0.25)])
def test_length_dtype_finite_and_peak(name, seconds, sample_rate, peak):
    y = GENERATORS[name](seconds, 0, sample_rate, peak=peak)
    assert y.dtype == np.float32
    assert y.shape == (round(seconds * sample_rate),)
    assert np.all(np.isfinite(y))
    assert np.max(np.abs(y)) == pytest.approx(peak, rel=1e-6)


@pytest.mark.parametrize(("generate", "kwargs", "parameter"), [
    (synth.music, dict(seconds=0.0), "seconds"),
    (synth.music, dict(seconds=1.0, sample_rate=4000), "sample_rate"),
    (synth.music, dict(seconds=1.0, peak=1.5), "peak"),
    (synth.music, dict(seconds=1.0, tempo=0), "tempo"),
    (synth.music, dict(seconds=1.0, key="H"), "key"),
    (synth.music, dict(seconds=1.0, mode="lydian"), "mode"),
    (synth.music, dict(seconds=1.0, timbre="kazoo"), "timbre"),
    (synth.music, dict(seconds=1.0, rhythm="swing"), "rhythm"),
    (synth.music, dict(seconds=1.0, beats_per_bar=1), "beats_per_bar"),
    (synth.music, dict(seconds=1.0, progression=(1, 8)), "progression"),
    (synth.rain, dict(seconds=1.0, drops_per_second=0), "drops_per_second"),
    (synth.wind, dict(seconds=1.0, high_hz=20000.0), "high_hz"),
    (synth.drone, dict(seconds=1.0, root_hz=5.0), "root_hz"),
    (synth.choir, dict(seconds=1.0, vowel="y"), "vowel"),
    (synth.hum, dict(seconds=1.0, mains_hz=0.0), "mains_hz"),
])
def test_invalid_parameters_raise_naming_them(generate, kwargs, parameter):
    with pytest.raises(ValueError, match=parameter):
        generate(**kwargs)


@pytest.mark.parametrize(("key", "mode", "drums"),
                         [("C", "major", False), ("F#", "major", True),
                          ("A", "minor", False), ("Eb", "dorian", False)])
def test_music_chroma_picks_out_its_key(key, mode, drums):
    # Among the twelve transpositions of the mode's scale, the requested key's
    # pitch classes must hold the most chroma energy.
    y = synth.music(8.0, 0, key=key, mode=mode, drums=drums)
    chroma = librosa.feature.chroma_stft(y=y, sr=SR).sum(axis=1)
    scores = [chroma[[(tonic + step) % 12 for step in synth.MODES[mode]]].sum()
              for tonic in range(12)]
    assert int(np.argmax(scores)) == synth._pitch_class(key)
    assert max(scores) / chroma.sum() > 0.7


@pytest.mark.parametrize(("rhythm", "notes_per_beat"),
                         [("quarter", 1), ("eighth", 2), ("triplet", 3)])
@pytest.mark.parametrize("timbre", ["piano", "organ"])
def test_music_onsets_follow_tempo_and_rhythm(rhythm, notes_per_beat, timbre):
    seconds, tempo = 8.0, 100.0
    y = synth.music(seconds, 0, tempo=tempo, rhythm=rhythm, timbre=timbre, drums=False)
    expected = seconds * tempo / 60 * notes_per_beat
    found = len(librosa.onset.onset_detect(y=y, sr=SR))
    assert abs(found - expected) <= 0.1 * expected + 1


def test_music_timbres_differ_in_attack():
    # Plucked notes start abruptly, pads swell in: the onset envelope shows it.
    strength = {timbre: librosa.onset.onset_strength(
        y=synth.music(6.0, 0, timbre=timbre, drums=False), sr=SR).mean()
        for timbre in ("pluck", "pad")}
    assert strength["pluck"] > 3 * strength["pad"]


def test_rain_is_impulsive_and_denser_rain_has_more_transients():
    y = synth.rain(8.0, 0)
    assert scipy.stats.kurtosis(y) > 15  # Gaussian noise has 0
    strength = {name: librosa.onset.onset_strength(y=synth.STYLES[name](8.0, 0), sr=SR).mean()
                for name in ("rain", "wind", "drone", "hum")}
    assert all(strength["rain"] > 1.5 * strength[other] for other in ("wind", "drone", "hum"))
    light, heavy = (librosa.onset.onset_strength(y=synth.rain(8.0, 0, drops_per_second=rate),
                                                 sr=SR).mean() for rate in (10.0, 160.0))
    assert heavy > 1.3 * light


@pytest.mark.parametrize("seed", [0, 1])
def test_wind_gusts_are_smooth_and_louder_when_brighter(seed):
    y = synth.wind(10.0, seed)
    rms = librosa.feature.rms(y=y)[0]
    centroid = librosa.feature.spectral_centroid(y=y, sr=SR)[0]
    assert rms.std() / rms.mean() > 0.15  # it gusts
    assert np.corrcoef(rms[:-1], rms[1:])[0, 1] > 0.95  # slowly
    assert np.corrcoef(rms, centroid)[0, 1] > 0.8


def test_wind_is_broadband_noise_and_hum_is_not():
    def peakiness(y):
        freqs, power = signal.welch(y, SR, nperseg=4096)
        band = (freqs > 200) & (freqs < 2000)
        return power[band].max() / np.median(power[band])

    assert peakiness(synth.wind(8.0, 0)) < 20
    assert peakiness(synth.hum(8.0, 0)) > 1000


@pytest.mark.parametrize(("mains_hz", "other_hz"), [(50.0, 60.0), (60.0, 50.0)])
def test_hum_has_peaks_at_mains_harmonics(mains_hz, other_hz):
    y = synth.hum(4.0, 0, mains_hz=mains_hz, harmonics=8)
    freqs, magnitude = _spectrum(y)
    floor = np.median(magnitude)

    def at(hz):
        return magnitude[np.argmin(np.abs(freqs - hz))]

    assert all(at(k * mains_hz) > 100 * floor for k in range(1, 9))
    assert at(other_hz) < 10 * floor
    assert at(9 * mains_hz) < 10 * floor


@pytest.mark.parametrize("root_hz", [55.0, 73.4])
def test_drone_is_low_and_centred_on_its_root(root_hz):
    y = synth.drone(10.0, 0, root_hz=root_hz, detune_hz=0.6)
    assert _band_energy(y, 0, 8 * root_hz) > 0.95
    freqs, magnitude = _spectrum(y)
    below = freqs < 1.2 * root_hz
    strongest = freqs[below][np.argmax(magnitude[below])]
    assert abs(strongest - root_hz) <= 0.6 + 0.1  # detuning plus one 0.1 Hz bin


@pytest.mark.parametrize("root_hz", [110.0, 196.0, 261.63])
def test_choir_sings_a_major_chord_on_its_root(root_hz):
    y = synth.choir(4.0, 0, root_hz=root_hz)
    chroma = librosa.feature.chroma_cqt(y=y, sr=SR, tuning=0.0).sum(axis=1)
    root = round(librosa.hz_to_midi(root_hz)) % 12
    assert set(np.argsort(chroma)[-3:]) == {root, (root + 4) % 12, (root + 7) % 12}


def test_choir_vowels_have_their_formants():
    vowels = {v: synth.choir(4.0, 0, vowel=v) for v in ("a", "i", "u")}
    # /i/ has its second formant near 2300 Hz, /u/ near 700 Hz.
    assert _band_energy(vowels["i"], 2100, 2500) > 10 * _band_energy(vowels["u"], 2100, 2500)
    # /a/ has its first formant near 800 Hz, /i/ near 270 Hz.
    assert _band_energy(vowels["a"], 700, 900) > 10 * _band_energy(vowels["i"], 700, 900)


def test_evaluation_pairs_are_varied_and_cover_every_style():
    pairs = evaluation.EVALUATION_PAIRS
    assert len(pairs) >= 8
    assert len({pair.name for pair in pairs}) == len(pairs)
    assert {pair.style for pair in pairs} == set(synth.STYLES)
    for field in ("key", "timbre", "rhythm", "tempo"):
        assert len({pair.content[field] for pair in pairs}) >= 5, field
    assert len({pair.content["mode"] for pair in pairs}) >= 3


@pytest.mark.parametrize("name", [pair.name for pair in evaluation.EVALUATION_PAIRS])
def test_evaluation_pair_synthesizes_content_and_style(name):
    content, style = evaluation.evaluation_pair(name, 1.5, sample_rate=16000)
    for y in (content, style):
        assert y.dtype == np.float32 and y.shape == (24000,) and np.all(np.isfinite(y))
    assert not np.allclose(content, style)


def test_evaluation_pair_unknown_name():
    with pytest.raises(ValueError, match="no-such-pair"):
        evaluation.evaluation_pair("no-such-pair", 1.0)
