"""The timbre-blind content features: pitch classes and onsets of a mel."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from amnst.engine import audio, musical
from amnst import synth
from amnst.config import AudioConfig

CONFIG = AudioConfig(mel_power=1.0)


def _tone(hz: float, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(seconds * CONFIG.sample_rate)) / CONFIG.sample_rate
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def _classes(y: np.ndarray) -> np.ndarray:
    mel = audio.mel_spectrogram(y, CONFIG)[None]
    return musical.pitch_classes(tf.constant(mel), musical.pitch_class_matrix(CONFIG)).numpy()[0]


def test_a_tone_lands_on_its_pitch_class_in_every_octave():
    for hz, pitch_class in ((440.0, 9), (261.63, 0), (1046.5, 0), (1567.98, 7)):
        assert int(np.argmax(_classes(_tone(hz)).mean(axis=1))) == pitch_class, hz


def test_pitch_classes_ignore_level_and_octave():
    c4, e4, g4 = _tone(261.63), _tone(329.63), _tone(392.0)
    chord = c4 + e4 + g4
    np.testing.assert_allclose(_classes(3.0 * chord), _classes(chord), atol=1e-5)
    # The same notes an octave apart stay close; another note does not.
    octave_up = _tone(523.25) + e4 + g4
    other_note = _tone(293.66) + e4 + g4

    def similarity(a, b):
        return float(np.mean(np.sum(_classes(a) * _classes(b), axis=0)))

    assert similarity(octave_up, chord) > 0.95
    assert similarity(other_note, chord) < similarity(octave_up, chord) - 0.05


def test_the_onset_envelope_rises_where_notes_start():
    y = np.zeros(CONFIG.sample_rate, np.float32)
    y[CONFIG.sample_rate // 2:] = _tone(440.0, 0.5)
    mel = tf.constant(audio.mel_spectrogram(y, CONFIG)[None])
    envelope = musical.onset_envelope(mel).numpy()[0, 0]
    onset_frame = CONFIG.sample_rate // 2 // CONFIG.hop_length
    assert abs(int(np.argmax(envelope)) - onset_frame) <= 2
    assert envelope.shape == (mel.shape[2] - 1,)


def test_frame_weights_sum_to_one_and_follow_loudness():
    mel = audio.mel_spectrogram(synth.music(2.0, seed=3), CONFIG)
    mel[:, :20] *= 0.0
    weights = musical.frame_weights(tf.constant(mel[None])).numpy()[0, 0]
    assert abs(weights.sum() - 1.0) < 1e-5
    assert np.all(weights[:20] == 0)


def test_frame_rise_has_the_slices_gradient():
    x = tf.random.stateless_uniform([2, 6, 9], seed=[3, 1])
    weights = tf.random.stateless_normal([2, 6, 8], seed=[4, 1])

    def gradient(rise):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(weights * rise(x))
        return tape.gradient(loss, x).numpy()

    np.testing.assert_allclose(gradient(musical._frame_rise), gradient(lambda v: v[:, :, 1:] - v[:, :, :-1]),
                               rtol=1e-6, atol=1e-6)
