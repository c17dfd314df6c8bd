"""Mel spectrogram to audio: a fast batched TensorFlow path and librosa's reference.

A mel spectrogram here is what :func:`amnst.engine.audio.mel_spectrogram` computes:
the Slaney mel filter bank applied to ``|STFT| ** config.mel_power`` of a
centred, Hann-windowed STFT. Inverting it takes two steps:

1. :func:`mel_to_linear` undoes the filter bank with a non-negative
   least-squares solve, giving a linear-frequency magnitude spectrogram.
2. :func:`griffin_lim` estimates the phase that spectrogram lacks with fast
   Griffin-Lim (Perraudin, Balazs and Soendergaard, 2013) and returns audio.

:func:`mel_to_audio` composes the two; :func:`reference_mel_to_audio` is the
same computation as librosa does it (L-BFGS NNLS, then ``griffinlim``), kept
as the yardstick. :func:`spectral_convergence` scores either output.

Shapes: a mel batch is ``(batch, n_mels, n_frames)``, a magnitude batch
``(batch, 1 + n_fft // 2, n_frames)``, audio ``(batch, n_samples)``, all
float32. Frames are centred: frame ``t`` covers samples around
``t * hop_length``.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import librosa
import numpy as np
import tensorflow as tf

from amnst.engine.audio import mel_basis, mel_spectrogram
from amnst.config import AudioConfig

# Multiplicative NNLS updates after the pseudo-inverse start. With this mel
# basis librosa's L-BFGS ``nnls`` returns its own starting point, the clipped
# pseudo-inverse, to within 1e-7 (its gradient tolerance is met at once); a
# few updates fit the mel more closely than that, for about the cost of a
# Griffin-Lim iteration (`amnst bench invert` times both solves).
DEFAULT_NNLS_ITERS = 4
# librosa's default momentum for fast Griffin-Lim.
DEFAULT_MOMENTUM = 0.99
# The smallest normal float32: it guards the NNLS update's 0 / 0 in silent bins
# and a phasor's norm from dividing by zero, and below it a summed squared window
# counts as zero. So small that it biases nothing at any signal level (the NNLS
# solve is scale-invariant).
_TINY = float(np.finfo(np.float32).tiny)
# A phase-held inversion holds a bin's phase at the reference's in full where
# the magnitude is the reference's, less as it departs, and not at all this
# many decibels away (:func:`phase_hold`).
PHASE_HOLD_DB = 12.0


# --------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------


def _check_values(x: Any, what: str, ndims: tuple[int, ...]) -> tf.Tensor:
    """``x`` as a float32 tensor, or ValueError naming ``what``."""
    dtype = getattr(x, "dtype", None)
    # TensorFlow would drop an imaginary part with only a warning.
    if (dtype.is_complex if isinstance(dtype, tf.DType) else np.iscomplexobj(x)):
        raise ValueError(f"{what} must be real, got complex values")
    try:
        tensor = tf.convert_to_tensor(x, dtype=tf.float32)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{what} must be a real float array ({error})") from None
    if tensor.shape.rank not in ndims:
        expected = " or ".join(f"{n}-D" for n in ndims)
        raise ValueError(f"{what} must be {expected}, got shape {tuple(tensor.shape)}")
    if tensor.shape.num_elements() == 0:
        raise ValueError(f"{what} is empty (shape {tuple(tensor.shape)})")
    if not bool(tf.reduce_all(tf.math.is_finite(tensor))):
        raise ValueError(f"{what} holds NaN or infinite values")
    if float(tf.reduce_min(tensor)) < 0:
        raise ValueError(f"{what} holds negative values; it must be non-negative")
    return tensor


def _check_mels(mels: Any, config: AudioConfig, ndims: tuple[int, ...]) -> tf.Tensor:
    tensor = _check_values(mels, "mel spectrogram", ndims)
    if tensor.shape[-2] != config.n_mels:
        raise ValueError(f"mel spectrogram has {tensor.shape[-2]} bands, "
                         f"config.n_mels is {config.n_mels}")
    return tensor


def _check_count(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_length(length: Any, n_frames: int, config: AudioConfig) -> int:
    if length is None:
        # librosa's convention: centred frames 0..T-1 span (T - 1) hops.
        return max(1, (n_frames - 1) * config.hop_length)
    return _check_count(length, "length", 1)


def _check_seed(seed: Any) -> int:
    seed = _check_count(seed, "seed", 0)
    if seed >= 2**32:
        raise ValueError(f"seed must be < 2**32, got {seed}")
    return seed


def _check_momentum(momentum: Any) -> float:
    try:
        value = float(momentum)
    except (TypeError, ValueError):
        raise ValueError(f"momentum must be a number, got {momentum!r}") from None
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"momentum must be finite and >= 0, got {momentum!r}")
    return value


# --------------------------------------------------------------------------
# Mel -> linear magnitude
# --------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _nnls_operators(config: AudioConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(pinv(A).T, A, A.T @ A)`` for the mel basis ``A``, as float32 arrays.

    The pseudo-inverse is computed in float64: the basis has empty (all-zero)
    filters, and float32 SVD thresholds them less reliably. Arrays, not
    tensors, are cached: a tensor made by a first call inside a trace would
    belong to that graph and break every later call.
    """
    basis = mel_basis(config).astype(np.float64)  # (n_mels, n_bins)
    pinv_t = np.linalg.pinv(basis).T  # (n_mels, n_bins)
    gram = basis.T @ basis  # (n_bins, n_bins)
    return tuple(a.astype(np.float32) for a in (pinv_t, basis, gram))


@tf.function(input_signature=[
    tf.TensorSpec([None, None, None], tf.float32),  # mel frames (batch, frames, n_mels)
    tf.TensorSpec([None, None], tf.float32),  # pinv(A).T (n_mels, n_bins)
    tf.TensorSpec([None, None], tf.float32),  # A (n_mels, n_bins)
    tf.TensorSpec([None, None], tf.float32),  # A.T A (n_bins, n_bins)
    tf.TensorSpec([], tf.int32),  # n_iter
])
def _nnls_frames(mel_frames: tf.Tensor, pinv_t: tf.Tensor, basis: tf.Tensor,
                 gram: tf.Tensor, n_iter: tf.Tensor) -> tf.Tensor:
    """Non-negative ``x`` with ``x @ basis.T ~= mel_frames``, frames as rows.

    ``mel_frames`` is ``(batch, n_frames, n_mels)``; returns
    ``(batch, n_frames, n_bins)``. Rows are frames so each product is one
    large matrix multiply over every frame of the batch.
    """
    shape = tf.shape(mel_frames)
    rows = tf.reshape(mel_frames, [-1, shape[-1]])
    # The minimum-norm least-squares solution, projected onto x >= 0.
    x = tf.nn.relu(tf.matmul(rows, pinv_t))
    # Lee-Seung updates keep x >= 0 and never increase ||A x - b|| (A and b
    # are non-negative). A coefficient clipped to zero stays zero: the updates
    # only re-balance the bins the pseudo-inverse found energy in.
    target = tf.matmul(rows, basis)  # (A.T b) per row; gram is symmetric

    def update(i, x):
        return i + 1, x * target / (tf.matmul(x, gram) + _TINY)

    _, x = tf.while_loop(lambda i, _: i < n_iter, update, [tf.constant(0), x])
    return tf.reshape(x, [shape[0], shape[1], -1])


def _mel_to_linear_frames(mel_frames: tf.Tensor, config: AudioConfig, n_iter: int) -> tf.Tensor:
    """:func:`mel_to_linear` on ``(batch, n_frames, n_mels)``, frames as rows."""
    power = _nnls_frames(mel_frames, *_nnls_operators(config), tf.constant(n_iter))
    if config.mel_power == 1.0:
        return power
    return tf.pow(power, 1.0 / config.mel_power)


def mel_to_linear(mels: Any, config: AudioConfig, n_iter: int = DEFAULT_NNLS_ITERS) -> tf.Tensor:
    """Invert the mel filter bank: mel batch to linear-frequency magnitudes.

    Solves ``min ||A x - m||^2 subject to x >= 0`` for every frame ``m``,
    where ``A`` is :func:`amnst.engine.audio.mel_basis`, then returns
    ``x ** (1 / config.mel_power)``, the STFT magnitude. The solve starts
    from the clipped pseudo-inverse and takes ``n_iter`` multiplicative
    (Lee-Seung) updates: a few matrix multiplies over all frames at once.
    librosa's L-BFGS-B ``nnls`` starts from the same clipped pseudo-inverse
    and, on this basis, stops there at once, after about a second of setup
    per 170 frames; with the default ``n_iter`` the fit here is closer.

    Args:
        mels: ``(batch, n_mels, n_frames)``, non-negative and finite, in the
            units of :func:`amnst.engine.audio.mel_spectrogram` (filter bank applied
            to ``|STFT| ** config.mel_power``).
        config: the parameters the mel was computed with.
        n_iter: multiplicative updates after the pseudo-inverse, ``>= 0``.

    Returns:
        float32 tensor ``(batch, 1 + n_fft // 2, n_frames)``, non-negative
        STFT magnitudes (unnormalised ``rfft`` units, like ``librosa.stft``).
    """
    tensor = _check_mels(mels, config, (3,))
    n_iter = _check_count(n_iter, "n_iter", 0)
    frames = tf.transpose(tensor, [0, 2, 1])
    return tf.transpose(_mel_to_linear_frames(frames, config, n_iter), [0, 2, 1])


# --------------------------------------------------------------------------
# Griffin-Lim
# --------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _griffin_lim_fn(n_fft: int, hop_length: int) -> Any:
    """The compiled Griffin-Lim loop for one STFT geometry.

    One ``tf.function`` per ``(n_fft, hop_length)``; batch size, frame count,
    length and iteration count are tensors, so new values do not retrace.
    """
    # An array, not a tensor: the cached function must not hold a tensor of
    # whatever trace made the first call, and a trace embeds an array as a
    # constant where it would take an eager tensor as an extra input.
    with tf.init_scope():
        window = tf.signal.hann_window(n_fft, periodic=True).numpy()  # librosa's "hann"
    half = n_fft // 2
    spec = tf.TensorSpec

    @tf.function(input_signature=[
        spec([None, None, None], tf.float32),  # magnitudes (batch, frames, bins)
        spec([None, None, None], tf.float32),  # initial phase, radians
        spec([], tf.int32),  # n_iter
        spec([], tf.int32),  # length
        spec([], tf.float32),  # momentum
        spec([None, None, None], tf.complex64),  # held phase: weight * unit phasor
        spec([None, None, None], tf.float32),  # 1 - weight: how free each bin's phase is
    ])
    def run(magnitudes, phase, n_iter, length, momentum, held, free):
        gain = _istft_gain(window, hop_length, tf.shape(magnitudes)[1], length)

        def istft(spectrum):
            frames = tf.signal.irfft(spectrum, fft_length=[n_fft]) * window
            return tf.signal.overlap_and_add(frames, hop_length) * gain

        def stft(signal):
            frames = tf.signal.frame(signal, n_fft, hop_length)
            return tf.signal.rfft(frames * window, fft_length=[n_fft])

        def unit(estimate):
            # On the real and imaginary parts, which is cheaper than complex
            # division. Unit phasor first, as librosa does: a zero estimate (a
            # frame wholly outside `length`) then gives 0, where magnitude / tiny
            # would overflow to inf and 0 * inf to NaN.
            real, imag = tf.math.real(estimate), tf.math.imag(estimate)
            norm = tf.sqrt(real * real + imag * imag) + _TINY
            return real / norm, imag / norm

        def project(estimate):
            # Keep the estimate's phase, pulled toward the held phase where a bin
            # is held, and impose the target magnitude.
            real, imag = unit(estimate)
            real, imag = unit(tf.complex(free * real, free * imag) + held)
            return tf.complex(real * magnitudes, imag * magnitudes)

        angles = tf.complex(magnitudes * tf.cos(phase), magnitudes * tf.sin(phase))
        # With previous = 0 the first step has no momentum, as in librosa.
        previous = tf.zeros_like(angles)
        blend = momentum / (1.0 + momentum)

        def step(i, angles, previous):
            rebuilt = stft(istft(angles))
            accelerated = rebuilt - tf.cast(blend, tf.complex64) * previous
            return i + 1, project(accelerated), rebuilt

        _, angles, _ = tf.while_loop(lambda i, *_: i < n_iter, step,
                                     [tf.constant(0), angles, previous])
        signal = istft(angles)[:, half:half + length]
        # A length past the buffer's end is zero-padded, as librosa does.
        return tf.pad(signal, [[0, 0], [0, length - tf.shape(signal)[1]]])

    return run


def _istft_gain(window: np.ndarray, hop_length: int, n_frames: tf.Tensor, length: tf.Tensor) -> tf.Tensor:
    """Per sample of the overlap-add buffer of ``n_frames`` frames, what the inverse
    STFT multiplies by: one over the summed squared window inside the output's
    ``length`` samples, zero outside them."""
    n_fft = window.shape[0]
    half = n_fft // 2
    # The overlap-add buffer holds the centre-padded signal: sample s of
    # the output is buffer sample s + n_fft // 2, and frame t starts at
    # buffer sample t * hop, so framing the buffer yields exactly the
    # n_frames frames librosa.stft(center=True) would.
    buffer_len = n_fft + (n_frames - 1) * hop_length
    window_sq = tf.signal.overlap_and_add(
        tf.tile(tf.square(window)[None, :], [n_frames, 1]), hop_length)
    # librosa's istft divides by the summed squared window where it is not
    # ~0. Past n_frames * hop only the last frame's tail covers the signal,
    # so that quotient blows up; librosa's griffinlim cannot produce such
    # lengths, and here those samples are silence.
    support = tf.minimum(length, n_frames * hop_length)
    position = tf.range(buffer_len)
    inside = (position >= half) & (position < half + support) & (window_sq > _TINY)
    # Zeroing outside [0, length) is librosa's zero ("constant") centre
    # padding and its trim to `length`, in one multiply.
    return tf.where(inside, 1.0 / tf.where(inside, window_sq, 1.0), 0.0)


def initial_phase(n_bins: int, n_frames: int, batch: int, seed: int) -> np.ndarray:
    """Random phase ``(batch, n_frames, n_bins)`` in radians.

    Every item gets the draw librosa's ``griffinlim(random_state=seed)``
    makes for a single ``(n_bins, n_frames)`` spectrogram, so an item's
    output does not depend on the rest of its batch and starts from the same
    phases as :func:`reference_mel_to_audio` with the same seed.
    """
    draw = 2 * np.pi * np.random.RandomState(seed).random(size=(n_bins, n_frames))
    return np.broadcast_to(draw.T.astype(np.float32), (batch, n_frames, n_bins))


def _griffin_lim_frames(magnitudes: tf.Tensor, phase: Any, config: AudioConfig, n_iter: int, length: int,
                        momentum: float, hold: tf.Tensor | None = None) -> tf.Tensor:
    """:func:`griffin_lim` on ``(batch, n_frames, n_bins)``, frames as rows, from
    initial phases of the same shape. ``hold`` (same shape, in [0, 1]) holds each
    bin's phase at its initial value by that weight at every iteration; none by default."""
    run = _griffin_lim_fn(config.n_fft, config.hop_length)
    phase = tf.convert_to_tensor(phase, tf.float32)
    if hold is None:
        hold = tf.zeros_like(magnitudes)
    held = tf.complex(hold * tf.cos(phase), hold * tf.sin(phase))
    return run(magnitudes, phase, tf.constant(n_iter, tf.int32), tf.constant(length, tf.int32),
               tf.constant(momentum, tf.float32), held, 1.0 - hold)


def phase_hold(magnitudes: tf.Tensor, reference: tf.Tensor, hold_db: float = PHASE_HOLD_DB) -> tf.Tensor:
    """How firmly each bin's phase is held at the reference's, in [0, 1]: 1 where the
    magnitudes equal the reference's, falling linearly in decibels to 0 at
    ``hold_db`` away. Both ``(batch, n_frames, n_bins)``; bins more than 80 dB
    below an item's loudest reference bin count as that level."""
    floor = 1e-4 * tf.reduce_max(reference, axis=[1, 2], keepdims=True) + _TINY
    departure_db = (20.0 / np.log(10.0)) * tf.abs(tf.math.log(magnitudes + floor) - tf.math.log(reference + floor))
    return tf.clip_by_value(1.0 - departure_db / hold_db, 0.0, 1.0)


def griffin_lim(magnitudes: Any, config: AudioConfig, n_iter: int = 32, length: int | None = None,
                momentum: float = DEFAULT_MOMENTUM, seed: int = 0) -> tf.Tensor:
    """Fast Griffin-Lim: audio whose STFT magnitude approximates ``magnitudes``.

    Follows ``librosa.griffinlim`` step for step (centred Hann STFT with zero
    padding, librosa's ISTFT normalisation, the same momentum update and the
    same random initial phase for a given ``seed``), batched and compiled.

    Args:
        magnitudes: ``(batch, 1 + n_fft // 2, n_frames)`` STFT magnitudes,
            non-negative and finite, in ``librosa.stft`` units.
        config: supplies ``n_fft`` and ``hop_length``.
        n_iter: Griffin-Lim iterations, ``>= 0`` (0 returns the inverse STFT
            of the random-phase start).
        length: output samples, ``> 0``; default ``(n_frames - 1) * hop_length``.
            The signal is taken to be silent outside ``[0, length)``: frames
            past a short ``length`` are fitted with zeros, and samples past
            ``n_frames * hop_length`` are zeros.
        momentum: fast Griffin-Lim's momentum, ``>= 0``; 0 is plain
            Griffin-Lim, values near 1 converge faster.
        seed: seeds the initial phase; the same seed gives the same output.

    Returns:
        float32 tensor ``(batch, length)``.
    """
    tensor = _check_values(magnitudes, "magnitudes", (3,))
    n_bins = 1 + config.n_fft // 2
    if tensor.shape[1] != n_bins:
        raise ValueError(f"magnitudes have {tensor.shape[1]} frequency bins, "
                         f"1 + n_fft // 2 = {n_bins} expected")
    n_iter = _check_count(n_iter, "n_iter", 0)
    length = _check_length(length, tensor.shape[-1], config)
    frames = tf.transpose(tensor, [0, 2, 1])
    momentum = _check_momentum(momentum)
    phase = initial_phase(n_bins, frames.shape[1], frames.shape[0], _check_seed(seed))
    return _griffin_lim_frames(frames, phase, config, n_iter, length, momentum)


# --------------------------------------------------------------------------
# Mel -> audio
# --------------------------------------------------------------------------


def mel_to_audio(mels: Any, config: AudioConfig, n_iter: int = 32, length: int | None = None,
                 seed: int = 0, momentum: float = DEFAULT_MOMENTUM, reference: Any = None) -> np.ndarray:
    """Fast mel inversion: :func:`mel_to_linear`, then :func:`griffin_lim`.

    With a ``reference`` STFT (the content's, :func:`amnst.engine.audio.stft`), phase
    retrieval starts from the reference's phase instead of a random one, and
    holds each bin's phase there as firmly as :func:`phase_hold` says: where
    the mel kept the content's level, its notes keep their exact phase (phase
    retrieval from any start smears them); where the transfer changed the
    level, Griffin-Lim finds a phase consistent with the new magnitude.

    Args:
        mels: ``(n_mels, n_frames)`` or a batch ``(batch, n_mels, n_frames)``,
            non-negative and finite, as :func:`amnst.engine.audio.mel_spectrogram`
            computes it with ``config``.
        config: the parameters the mel was computed with.
        n_iter: Griffin-Lim iterations, ``>= 0``.
        length: output samples, ``> 0``; default ``(n_frames - 1) * hop_length``.
            Pass the content's real length to get exactly that many samples.
        seed: seeds the initial phase (per item, so batching does not change
            an item's audio).
        momentum: fast Griffin-Lim's momentum, ``>= 0``.
        reference: ``None`` (random initial phase from ``seed``), or a complex
            STFT ``(1 + n_fft // 2, n_frames)`` (a batch: ``(batch, ...)``) of
            the mel's frames to take phase from.

    Returns:
        float32 numpy array ``(length,)``, or ``(batch, length)`` for a batch.
    """
    tensor = _check_mels(mels, config, (2, 3))
    single = tensor.shape.rank == 2
    if single:
        tensor = tensor[None]
    n_iter = _check_count(n_iter, "n_iter", 0)
    length = _check_length(length, tensor.shape[-1], config)
    momentum = _check_momentum(momentum)
    seed = _check_seed(seed)
    frames = tf.transpose(tensor, [0, 2, 1])
    if reference is None:
        phase = initial_phase(1 + config.n_fft // 2, frames.shape[1], frames.shape[0], seed)
        audio = fast_inversion(frames, tf.constant(phase), config, n_iter, length, momentum)
    else:
        reference = _check_reference(reference, single, tuple(tensor.shape), config)
        audio = fast_inversion(frames, None, config, n_iter, length, momentum, reference)
    audio = audio.numpy()
    return audio[0] if single else audio


def fast_inversion(mel_frames: tf.Tensor, phase: tf.Tensor | None, config: AudioConfig, n_iter: int,
                   length: int, momentum: float, reference: tf.Tensor | None = None) -> tf.Tensor:
    """:func:`mel_to_audio`'s computation, unchecked and traceable.

    ``mel_frames`` is ``(batch, n_frames, n_mels)``; ``phase`` the initial
    phase ``(batch, n_frames, 1 + n_fft // 2)`` in radians, or, with a complex
    ``reference`` STFT of that shape, ``None``: the reference's phase, held
    (:func:`phase_hold`). Returns ``(batch, length)``.
    """
    magnitudes = _mel_to_linear_frames(mel_frames, config, DEFAULT_NNLS_ITERS)
    if reference is None:
        return _griffin_lim_frames(magnitudes, phase, config, n_iter, length, momentum)
    hold = phase_hold(magnitudes, tf.abs(reference))
    return _griffin_lim_frames(magnitudes, tf.math.angle(reference), config, n_iter, length, momentum, hold)


def _check_reference(reference: Any, single: bool, mel_shape: tuple[int, ...], config: AudioConfig) -> tf.Tensor:
    """A reference STFT as ``(batch, n_frames, n_bins)`` complex64, or ValueError."""
    array = np.asarray(reference)
    expected = (1 + config.n_fft // 2, mel_shape[-1])
    if not single:
        expected = (mel_shape[0], *expected)
    if array.shape != expected:
        raise ValueError(f"reference STFT has shape {array.shape}, {expected} expected")
    if not np.all(np.isfinite(array)):
        raise ValueError("reference STFT holds NaN or infinite values")
    frames = np.swapaxes(array.reshape((-1, *expected[-2:])), 1, 2)
    return tf.constant(frames.astype(np.complex64))


def reference_mel_to_audio(mel: Any, config: AudioConfig, n_iter: int = 32,
                           length: int | None = None, seed: int = 0) -> np.ndarray:
    """librosa's mel inversion: ``mel_to_stft`` (L-BFGS NNLS), then ``griffinlim``.

    The yardstick for :func:`mel_to_audio`, with the same arguments and
    momentum 0.99. Calls ``mel_to_stft`` and ``griffinlim`` directly because
    ``librosa.feature.inverse.mel_to_audio`` cannot be seeded. A batch is
    inverted item by item, each with ``seed``.

    ``length`` must lie in ``[(n_frames - 1) * hop, n_frames * hop)`` (or be
    None): librosa's Griffin-Lim re-analyses a ``length``-sample signal and
    needs it to give back ``n_frames`` frames.

    Returns:
        float32 numpy array ``(length,)``, or ``(batch, length)`` for a batch.
    """
    mels = _check_mels(mel, config, (2, 3)).numpy()
    n_iter = _check_count(n_iter, "n_iter", 0)
    n_frames = mels.shape[-1]
    length = _check_length(length, n_frames, config)
    if not (n_frames - 1) * config.hop_length <= length < n_frames * config.hop_length:
        raise ValueError(f"length={length} must be in [{(n_frames - 1) * config.hop_length}, "
                         f"{n_frames * config.hop_length}) for {n_frames} frames")
    seed = _check_seed(seed)
    if mels.ndim == 3:
        return np.stack([reference_mel_to_audio(m, config, n_iter, length, seed) for m in mels])
    with warnings.catch_warnings():
        # mel_to_stft rebuilds the filter bank, whose empty filters are expected
        # (see amnst.engine.audio.mel_basis).
        warnings.filterwarnings("ignore", "Empty filters detected", UserWarning)
        magnitudes = librosa.feature.inverse.mel_to_stft(
            mels, sr=config.sample_rate, n_fft=config.n_fft, power=config.mel_power,
            fmin=config.fmin, fmax=config.fmax)
    audio = librosa.griffinlim(magnitudes, n_iter=n_iter, hop_length=config.hop_length,
                               n_fft=config.n_fft, length=length, momentum=0.99,
                               random_state=seed)
    return audio.astype(np.float32)


# --------------------------------------------------------------------------
# Quality
# --------------------------------------------------------------------------


def spectral_convergence(y: Any, mel: Any, config: AudioConfig) -> float:
    """How far the mel of ``y`` is from the target ``mel``, relative to ``mel``.

    ``SC = ||mel(y) - mel||_F / ||mel||_F``, with ``mel(y)`` from
    :func:`amnst.engine.audio.mel_spectrogram` (same ``config``, so the same
    ``mel_power``), cut or zero-padded to ``mel``'s frame count. SC is
    ``>= 0``; lower is better and 0 is an exact match. Griffin-Lim at 32
    iterations reaches about 0.07 (magnitude mel) to 0.08 (power mel) on
    synthesized music (`amnst bench invert`).

    Args:
        y: ``(n_samples,)`` audio, finite.
        mel: ``(n_mels, n_frames)`` target, non-negative, finite, not all zero.
    """
    target = _check_mels(mel, config, (2,)).numpy()
    audio = np.asarray(y, dtype=np.float32)
    if audio.ndim != 1 or audio.size == 0:
        raise ValueError(f"y must be non-empty 1-D audio, got shape {audio.shape}")
    if not np.all(np.isfinite(audio)):
        raise ValueError("y holds NaN or infinite samples")
    norm = float(np.linalg.norm(target))
    if norm == 0:
        raise ValueError("mel is all zeros; spectral convergence is undefined")
    n_frames = target.shape[1]
    actual = mel_spectrogram(audio, config)[:, :n_frames]
    if actual.shape[1] < n_frames:
        actual = np.pad(actual, [(0, 0), (0, n_frames - actual.shape[1])])
    return float(np.linalg.norm(actual - target) / norm)
