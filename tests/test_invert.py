"""Mel inversion: the fast TensorFlow path against librosa's reference."""

from __future__ import annotations

import librosa
import numpy as np
import pytest

from amnst.engine import invert
from amnst import synth
from amnst.engine.audio import mel_basis, mel_spectrogram
from amnst.config import AudioConfig

SR = 22050
HOP = 256


@pytest.fixture(scope="module")
def config() -> AudioConfig:
    return AudioConfig(mel_power=1.0)


@pytest.fixture(scope="module")
def short(config: AudioConfig) -> tuple[np.ndarray, np.ndarray]:
    y = synth.music(1.0, seed=1)
    return y, mel_spectrogram(y, config)


@pytest.mark.parametrize("length", [None, 22050, 20000, 22300, 30000])
def test_output_has_exact_length_and_is_finite(config, short, length):
    _, mel = short
    out = invert.mel_to_audio(mel, config, n_iter=4, length=length)
    expected = (mel.shape[1] - 1) * HOP if length is None else length
    assert out.shape == (expected,) and out.dtype == np.float32
    assert np.all(np.isfinite(out)) and np.abs(out).max() > 0
    if length == 30000:  # past the last frame: silence, not amplified edge noise
        assert np.all(out[mel.shape[1] * HOP:] == 0)
    batch = invert.mel_to_audio(np.stack([mel, mel]), config, n_iter=4, length=length)
    assert batch.shape == (2, expected)


def test_same_seed_same_audio(config, short):
    _, mel = short
    first = invert.mel_to_audio(mel, config, n_iter=8, seed=3)
    assert np.array_equal(first, invert.mel_to_audio(mel, config, n_iter=8, seed=3))
    assert not np.allclose(first, invert.mel_to_audio(mel, config, n_iter=8, seed=4))


def test_batch_matches_items_alone(config, short):
    _, mel = short
    other = mel_spectrogram(synth.music(1.0, seed=2), config)
    batch = invert.mel_to_audio(np.stack([mel, other]), config, n_iter=16, length=22050)
    for item, alone in zip(batch, (mel, other)):
        np.testing.assert_allclose(item, invert.mel_to_audio(alone, config, n_iter=16, length=22050),
                                   rtol=1e-4, atol=1e-5)


def test_griffin_lim_follows_librosa(config, short):
    """Same magnitudes, seed and iterations: librosa's output, scale included."""
    y, _ = short
    magnitudes = np.abs(librosa.stft(y, n_fft=config.n_fft, hop_length=HOP))
    for n_iter in (0, 3):
        expected = librosa.griffinlim(magnitudes, n_iter=n_iter, hop_length=HOP, n_fft=config.n_fft,
                                      length=y.size, random_state=5)
        out = invert.griffin_lim(magnitudes[None], config, n_iter, y.size, seed=5).numpy()[0]
        np.testing.assert_allclose(out, expected, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("mel_power", [1.0, 2.0])
def test_mel_to_linear_fits_the_mel(short, mel_power):
    y, _ = short
    config = AudioConfig(mel_power=mel_power)
    mel = mel_spectrogram(y, config)
    linear = invert.mel_to_linear(mel[None], config).numpy()[0]
    assert linear.shape == (1 + config.n_fft // 2, mel.shape[1]) and linear.min() >= 0
    residual = np.linalg.norm(mel_basis(config) @ linear**mel_power - mel) / np.linalg.norm(mel)
    assert residual < 2e-3
    # No absolute threshold inside: a quiet mel inverts to a scaled copy.
    quiet = invert.mel_to_linear(1e-6 * mel[None], config).numpy()[0]
    np.testing.assert_allclose(quiet, 1e-6 ** (1 / mel_power) * linear, rtol=1e-3,
                               atol=1e-6 * linear.max())


@pytest.mark.parametrize("mel_power", [1.0, 2.0])
def test_as_good_as_librosa(mel_power):
    config = AudioConfig(mel_power=mel_power)
    y = synth.music(5.0)
    mel = mel_spectrogram(y, config)
    fast = invert.mel_to_audio(mel, config, n_iter=32, length=y.size)
    reference = invert.reference_mel_to_audio(mel, config, n_iter=32, length=y.size)
    assert fast.shape == reference.shape == y.shape
    fast_sc = invert.spectral_convergence(fast, mel, config)
    reference_sc = invert.spectral_convergence(reference, mel, config)
    assert fast_sc <= reference_sc + 0.01, (fast_sc, reference_sc)
    assert fast_sc < 0.2


def test_spectral_convergence(config, short):
    y, mel = short
    assert invert.spectral_convergence(y, mel, config) == 0.0
    # A truncated signal is zero-padded to the target's frames and scores worse.
    assert 0 < invert.spectral_convergence(y[: y.size // 2], mel, config) <= 1.0 + 1e-6


def test_no_retracing_for_new_shapes(config, short):
    _, mel = short
    function = invert._griffin_lim_fn(config.n_fft, config.hop_length)
    invert.mel_to_audio(mel, config, n_iter=1)
    traces = function.experimental_get_tracing_count()
    invert.mel_to_audio(np.stack([mel[:, :40]] * 3), config, n_iter=2, length=9000)
    assert function.experimental_get_tracing_count() == traces


def _bad_calls(config, mel):
    magnitudes = np.ones((1, 513, 10), np.float32)
    negative, nan, inf = mel.copy(), mel.copy(), mel.copy()
    negative[0, 0], nan[0, 0], inf[0, 0] = -1.0, np.nan, np.inf
    return {
        "1-D mel": lambda: invert.mel_to_audio(mel[0], config),
        "4-D mel": lambda: invert.mel_to_audio(mel[None, None], config),
        "2-D mel to mel_to_linear": lambda: invert.mel_to_linear(mel, config),
        "wrong n_mels": lambda: invert.mel_to_audio(mel[:128], config),
        "no frames": lambda: invert.mel_to_audio(mel[:, :0], config),
        "negative": lambda: invert.mel_to_audio(negative, config),
        "nan": lambda: invert.mel_to_audio(nan, config),
        "inf": lambda: invert.mel_to_linear(inf[None], config),
        "complex": lambda: invert.mel_to_audio(mel + 1j, config),
        "negative n_iter": lambda: invert.mel_to_audio(mel, config, n_iter=-1),
        "float n_iter": lambda: invert.mel_to_audio(mel, config, n_iter=2.5),
        "negative nnls n_iter": lambda: invert.mel_to_linear(mel[None], config, n_iter=-1),
        "zero length": lambda: invert.mel_to_audio(mel, config, length=0),
        "negative length": lambda: invert.griffin_lim(magnitudes, config, 1, -5),
        "negative seed": lambda: invert.mel_to_audio(mel, config, seed=-1),
        "negative momentum": lambda: invert.griffin_lim(magnitudes, config, 1, 100, momentum=-0.5),
        "wrong bins": lambda: invert.griffin_lim(magnitudes[:, :100], config, 1, 100),
        "reference length": lambda: invert.reference_mel_to_audio(mel, config, 1, length=10),
        "reference n_mels": lambda: invert.reference_mel_to_audio(mel[:10], config, 1),
        "sc of 2-D audio": lambda: invert.spectral_convergence(np.ones((2, 100)), mel, config),
        "sc of nan audio": lambda: invert.spectral_convergence(np.full(100, np.nan), mel, config),
        "sc of zero mel": lambda: invert.spectral_convergence(np.ones(100), mel * 0, config),
    }


BAD_CALLS = list(_bad_calls(AudioConfig(), np.ones((384, 8), np.float32)))


@pytest.mark.parametrize("name", BAD_CALLS)
def test_bad_inputs_raise_value_error(config, short, name):
    call = _bad_calls(config, short[1])[name]
    with pytest.raises(ValueError):
        call()


def test_phase_hold_is_1_where_magnitudes_agree_and_0_far_away():
    reference = np.ones((1, 4, 3), np.float32)
    magnitudes = reference * np.array([1.0, 10 ** (6 / 20), 10 ** (-6 / 20), 10.0], np.float32)[None, :, None]
    hold = invert.phase_hold(magnitudes, reference, hold_db=12.0).numpy()
    np.testing.assert_allclose(hold[0, :, 0], [1.0, 0.5, 0.5, 0.0], atol=1e-3)


def test_the_content_phase_keeps_what_phase_retrieval_loses(config):
    y = synth.music(3.0, seed=2)
    spectrum = librosa.stft(y, n_fft=config.n_fft, hop_length=HOP)
    mel = mel_spectrogram(y, config)

    def error(output):
        return np.linalg.norm(output - y) / np.linalg.norm(y)

    held = invert.mel_to_audio(mel, config, n_iter=8, length=len(y), reference=spectrum)
    retrieved = invert.mel_to_audio(mel, config, n_iter=8, length=len(y))
    # The waveform itself comes back, not only its magnitude.
    assert error(held) < 0.35
    assert error(retrieved) > 0.9


def test_a_held_inversion_checks_its_reference(config, short):
    y, mel = short
    spectrum = librosa.stft(y, n_fft=config.n_fft, hop_length=HOP)
    with pytest.raises(ValueError, match="reference STFT has shape"):
        invert.mel_to_audio(mel, config, reference=spectrum[:, :-1])
    with pytest.raises(ValueError, match="NaN or infinite"):
        invert.mel_to_audio(mel, config, reference=spectrum * np.nan)
    batch = invert.mel_to_audio(np.stack([mel, mel]), config, n_iter=2, reference=np.stack([spectrum, spectrum]))
    np.testing.assert_allclose(batch[0], invert.mel_to_audio(mel, config, n_iter=2, reference=spectrum), atol=1e-5)
