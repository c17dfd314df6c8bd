"""What a mel spectrogram's music is, blind to its timbre: pitch classes and onsets.

The content loss of ``NSTConfig.pitch_weight`` and ``onset_weight`` matches
these instead of (or beside) the CNN's early layers, which pin every mel bin
to the content's level and so to its timbre. Both are differentiable
TensorFlow functions of a batch of mels ``(B, n_mels, frames)``, magnitude or
power.

- :func:`pitch_classes`: a fixed projection of the mel bands onto the 12
  pitch classes, each frame scaled to unit length, so that neither the level
  nor the octave a note sounds in counts, only which notes sound.
- :func:`onset_envelope`: the mean over bands of the rise of the log-mel from
  one frame to the next, the spectral flux that onset detectors read.
"""

from __future__ import annotations

import functools

import librosa
import numpy as np
import tensorflow as tf

from amnst.config import AudioConfig

# Mel bands whose centre lies in this range (Hz) feed the pitch classes: below
# it one STFT bin spans more than a semitone, above it partials are dense.
PITCH_FMIN, PITCH_FMAX = 150.0, 5000.0
# Width (semitones, standard deviation) of a band's pull on its pitch class.
PITCH_SPREAD = 0.5
# Offset of the onset envelope's log-mel, relative to each segment's mean level
# (-40 dB): quieter changes are no onsets.
ONSET_FLOOR = 1e-2
# Keeps a silent frame's pitch-class vector finite.
_TINY = 1e-12


@functools.lru_cache(maxsize=8)
def pitch_class_matrix(config: AudioConfig) -> np.ndarray:
    """``(12, n_mels)`` float32: row ``c`` weighs each mel band by how close its
    centre frequency lies to pitch class ``c`` (0 is C), a Gaussian over the
    circular distance in semitones; bands outside ``[PITCH_FMIN, PITCH_FMAX]`` weigh 0."""
    fmax = config.fmax or config.sample_rate / 2
    centres = librosa.mel_frequencies(config.n_mels + 2, fmin=config.fmin, fmax=fmax)[1:-1]
    used = (centres >= PITCH_FMIN) & (centres <= PITCH_FMAX)
    pitch = 12.0 * np.log2(np.maximum(centres, 1e-6) / 440.0) + 9.0  # semitones above C
    distance = np.abs((pitch[None, :] - np.arange(12)[:, None] + 6.0) % 12.0 - 6.0)
    weights = np.exp(-0.5 * (distance / PITCH_SPREAD) ** 2) * used[None, :]
    return weights.astype(np.float32)


def pitch_classes(mels: tf.Tensor, matrix: tf.Tensor) -> tf.Tensor:
    """Unit-length pitch-class vectors per frame, ``(B, 12, frames)``, from mels
    ``(B, n_mels, frames)`` and :func:`pitch_class_matrix`."""
    classes = tf.matmul(tf.convert_to_tensor(matrix)[None], mels)
    return classes / tf.sqrt(tf.reduce_sum(tf.square(classes), axis=1, keepdims=True) + _TINY)


def onset_envelope(mels: tf.Tensor) -> tf.Tensor:
    """Spectral flux ``(B, 1, frames - 1)``: the mean over bands of the rise of
    ``log(mel + ONSET_FLOOR * mean level)`` between consecutive frames."""
    level = tf.reduce_mean(mels, axis=[1, 2], keepdims=True)
    log_mel = tf.math.log(mels + ONSET_FLOOR * level + _TINY)
    return tf.reduce_mean(tf.nn.relu(_frame_rise(log_mel)), axis=1, keepdims=True)


@tf.custom_gradient
def _frame_rise(x: tf.Tensor) -> tuple[tf.Tensor, object]:
    """``x[..., 1:] - x[..., :-1]`` of ``(B, n_mels, frames)``, with its gradient as two
    shifted copies: the slices' own gradients each fill a zeroed target first."""
    def grad(rise: tf.Tensor) -> tf.Tensor:
        return tf.pad(rise, [[0, 0], [0, 0], [1, 0]]) - tf.pad(rise, [[0, 0], [0, 0], [0, 1]])

    return x[:, :, 1:] - x[:, :, :-1], grad


def frame_weights(mels: tf.Tensor) -> tf.Tensor:
    """Each frame's share of its segment's mel energy, ``(B, 1, frames)``, summing to
    1 per segment: the pitch classes of quiet frames, where there are no notes,
    count for little."""
    energy = tf.reduce_sum(mels, axis=1, keepdims=True)
    return energy / (tf.reduce_sum(energy, axis=2, keepdims=True) + _TINY)
