"""Objective measures of a transfer's output, against its content and style.

All take mono waveforms at the audio configuration's sample rate. Each
measure documents its formula, range and direction:

- ``chroma_similarity``: mean over frames of the cosine similarity of the
  output's and the content's chroma vectors (12 pitch classes, from the
  STFT). In [0, 1]; higher keeps more of the content's harmony and melody.
- ``onset_correlation``: Pearson correlation of the onset-strength envelopes
  of output and content. In [-1, 1]; higher keeps more of the content's rhythm.
- ``mfcc_distance``: Euclidean distance between the per-coefficient means and
  standard deviations of 20 MFCCs (a timbre summary) of two signals. >= 0;
  lower is closer. ``mfcc_progress`` turns it into how far the output moved
  from the content toward the style: ``(d(content, style) - d(output, style))
  / d(content, style)``; 0 is no move, 1 reaches the style, < 0 moved away.
- ``gram_distance`` / ``gram_progress``: the same, with the relative
  Frobenius distance of position-normalised Gram matrices at layers 4, 8, 12
  and 16 of an independent, randomly initialised seed CNN (seed 2016): not
  the network that was optimised, so the transfer cannot game it.
- ``texture_distance`` / ``texture_progress``: the same, with the distance
  between two sets of auditory texture statistics (McDermott & Simoncelli
  2011, :func:`texture_statistics`): of the compressed envelopes of 30
  ERB-spaced subbands (50 Hz to 8 kHz), their moments (mean, coefficient of
  variation, skewness, log kurtosis), their cross-band correlations, and their
  power in octave modulation bands (0.5 to 32 Hz) as fractions of their
  variance. :func:`texture_distance` is the mean over those three families of
  the RMS difference within each (moments: the mean of the four moments'), so
  that no family counts for more because it holds more numbers; >= 0, lower
  is closer. A measure of another family than every loss: no network, no mel
  (half-cosine ERB filters, not the optimised Slaney mel), and statistics of
  how band envelopes vary and co-vary over time, not Gram matrices of
  features at one instant; the transfer cannot game it.
- ``spectral_convergence`` (reconstruction error): ``||mel(output) - M||_F /
  ||M||_F`` against the optimised mel ``M``. >= 0; lower is better.
- ``noise_ratio``: mean spectral flatness of the output over the content's.
  > 0; 1 is as noisy as the content, higher is noisier.
- ``peak``: the output's largest absolute sample; 1.0 or more is clipping.

All but ``peak`` and ``spectral_convergence`` ignore the output's gain: the
spectra they read are levelled first (:func:`power_spectrogram`).

Reference rows put a transfer's measures in context: the content itself
(what doing nothing scores) and a plain mix of content and style (what the
cheapest move toward the style scores); a transfer has to beat the mix.
``amnst bench quality`` adds the content equalised to the style's long-term
spectrum (:func:`equalised`): how far a timbre move that keeps every note gets.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import librosa
import numpy as np

from amnst.engine import audio
from amnst.config import AudioConfig

INDEPENDENT_NETWORK_SEED = 2016
GRAM_LAYERS = (4, 8, 12, 16)
N_MFCC = 20
# The plain mix reference: this much content, the rest style (amnst bench quality's too).
MIX_CONTENT_GAIN = 0.7
# The largest sample of a reference made here (the equalised content, bench
# frontier's moves), where it would otherwise clip.
CLIP_HEADROOM = 0.99
# Bins this far below a spectrum's peak (-100 dB) count as that level, not as -inf.
SPECTRUM_FLOOR = 1e-10
# Auditory texture statistics (McDermott & Simoncelli 2011): subbands, the envelope's
# compressive exponent, and the centres of the octave-wide modulation bands.
TEXTURE_BANDS = 30
TEXTURE_FMIN = 50.0
TEXTURE_FMAX = 8000.0
TEXTURE_COMPRESSION = 0.3
MODULATION_HZ = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
# A subband's power counts as at least this much per unit filter weight (-80 dB below the
# levelled spectrum's mean bin): compression would otherwise make rounding noise a texture.
TEXTURE_POWER_FLOOR = 1e-8
# An envelope's variance counts as at least (this x its mean) squared in the normalised
# statistics: a constant band (silence, a held tone) has skewness, correlation and
# modulation 0, not rounding noise divided by ~0. Shifts a real texture's (CV >~ 0.1) by < 1e-4.
TEXTURE_RELATIVE_SPREAD = 1e-3
_TINY = 1e-30


def _texture_layout() -> dict[str, slice]:
    """Where each statistic lies in a :func:`texture_statistics` vector."""
    pairs = TEXTURE_BANDS * (TEXTURE_BANDS - 1) // 2
    sizes = {"mean": TEXTURE_BANDS, "cv": TEXTURE_BANDS, "skewness": TEXTURE_BANDS,
             "log_kurtosis": TEXTURE_BANDS, "correlation": pairs,
             "modulation": TEXTURE_BANDS * len(MODULATION_HZ)}
    ends = np.cumsum(list(sizes.values()))
    return {name: slice(int(end - size), int(end)) for (name, size), end in zip(sizes.items(), ends)}


# Slices of a texture vector: per band (``TEXTURE_BANDS``, low to high) the envelope's
# mean, coefficient of variation, skewness and log kurtosis; the upper triangle of the
# bands' correlation matrix (row-major, off-diagonal); and ``(bands, modulation bands)``
# modulation power fractions, row-major.
TEXTURE_SLICES = _texture_layout()
# The families that texture_distance gives an equal say, and the statistics in each.
TEXTURE_FAMILIES = {"moments": ("mean", "cv", "skewness", "log_kurtosis"),
                    "correlation": ("correlation",), "modulation": ("modulation",)}
TEXTURE_SIZE = TEXTURE_SLICES["modulation"].stop


@dataclasses.dataclass(frozen=True)
class Timbre:
    """A signal's timbre summaries: MFCC statistics ``(40,)``, Gram signature and
    auditory texture statistics ``(TEXTURE_SIZE,)`` (:func:`texture_statistics`)."""

    mfcc: np.ndarray
    gram: list[np.ndarray]
    texture: np.ndarray


@dataclasses.dataclass(frozen=True)
class Signature:
    """Everything the measures read of one signal, each computed once.

    ``chroma`` ``(12, frames)``; ``onset`` the onset-strength envelope
    ``(frames,)``; ``flatness`` the mean spectral flatness; ``peak`` the
    largest absolute sample.
    """

    chroma: np.ndarray
    onset: np.ndarray
    flatness: float
    peak: float
    timbre: Timbre


def power_spectrogram(y: np.ndarray, config: AudioConfig) -> np.ndarray:
    """``|STFT|^2`` of ``y``, ``(1 + n_fft // 2, frames)``, at unit mean power: the one
    STFT chroma, MFCCs, flatness, the Gram signature and the texture statistics share
    (centred, Hann, as librosa's defaults).

    Levelling makes the measures ignore gain: MFCCs are taken from decibels
    relative to a fixed reference, so their first coefficient's mean is the
    signal's level; the CNN is positively homogeneous, so Grams scale with the
    square of it; flatness floors quiet bins at a fixed power. Unlevelled, the
    content at half its level moved "0.2 of the way" to a quieter style:
    playback level is not timbre. A silent signal stays all zeros.
    """
    power = np.abs(librosa.stft(y, n_fft=config.n_fft, hop_length=config.hop_length, center=True)) ** 2
    level = float(np.mean(power))
    return power / level if level > 0 else power


def mfcc_statistics(power: np.ndarray, config: AudioConfig) -> np.ndarray:
    """Means and standard deviations of 20 MFCCs over time, ``(40,)``, from a power spectrogram."""
    mel = librosa.feature.melspectrogram(S=power, sr=config.sample_rate, n_fft=config.n_fft)
    coefficients = librosa.feature.mfcc(S=librosa.power_to_db(mel), n_mfcc=N_MFCC)
    return np.concatenate([coefficients.mean(axis=1), coefficients.std(axis=1)])


def gram_signature(power: np.ndarray, config: AudioConfig) -> list[np.ndarray]:
    """Position-normalised Gram matrices of the magnitude mel of a power spectrogram at
    ``GRAM_LAYERS`` of the independent random network, pooled over all segments."""
    magnitude = dataclasses.replace(config, mel_power=1.0)
    mel = (audio.mel_basis(magnitude) @ np.sqrt(power)).astype(np.float32)
    from amnst.engine.features import pooled_grams

    segments = audio.segment(mel, magnitude)
    maps_of = _independent_maps()
    sums, positions = pooled_grams(lambda batch: maps_of(batch[..., None]), segments, 4)
    return [np.asarray(s) / n for s, n in zip(sums, positions)]


def erb_number(hz: np.ndarray | float) -> np.ndarray:
    """Glasberg & Moore's (1990) ERB-number of a frequency in Hz: ``21.4 log10(1 + 0.00437 f)``."""
    return 21.4 * np.log10(1.0 + 0.00437 * np.asarray(hz, dtype=np.float64))


def erb_frequency(erbs: np.ndarray | float) -> np.ndarray:
    """The frequency in Hz of an ERB-number, the inverse of :func:`erb_number`."""
    return (10.0 ** (np.asarray(erbs, dtype=np.float64) / 21.4) - 1.0) / 0.00437


@functools.lru_cache(maxsize=8)
def texture_filters(sample_rate: int, n_fft: int) -> np.ndarray:
    """Power weights of the texture subbands on the STFT bins, ``(TEXTURE_BANDS, 1 + n_fft // 2)``.

    ``TEXTURE_BANDS`` half-cosine filters with centres equally spaced in
    ERB-number from ``TEXTURE_FMIN`` to ``TEXTURE_FMAX`` (or Nyquist), each
    reaching to its neighbours' centres: filter ``k``'s amplitude response is
    ``cos(pi/2 (E(f) - c_k) / spacing)`` within one spacing of its centre
    ``c_k``, 0 beyond, so adjacent filters overlap half-way and their squared
    responses, returned here, sum to 1 between the outer centres (McDermott &
    Simoncelli's cosine filter bank). Built once per rate and size; read-only.
    """
    bins = np.arange(1 + n_fft // 2) * sample_rate / n_fft
    centres = np.linspace(erb_number(TEXTURE_FMIN), erb_number(min(TEXTURE_FMAX, sample_rate / 2)),
                          TEXTURE_BANDS)
    spacing = centres[1] - centres[0]
    offset = (erb_number(bins)[None, :] - centres[:, None]) / spacing
    weights = np.where(np.abs(offset) < 1.0, np.cos(0.5 * np.pi * offset) ** 2, 0.0)
    weights.setflags(write=False)
    return weights


@functools.lru_cache(maxsize=8)
def _texture_supports(sample_rate: int, n_fft: int, dtype: str) -> tuple[tuple[int, int, np.ndarray], ...]:
    """Per texture subband, ``(start, stop, weights)``: the bins its filter covers and its
    power weights there, in ``dtype`` (the spectrogram's)."""
    supports = []
    for weights in texture_filters(sample_rate, n_fft):
        covered = np.flatnonzero(weights)
        start, stop = (int(covered[0]), int(covered[-1]) + 1) if len(covered) else (0, 0)
        supports.append((start, stop, weights[start:stop].astype(dtype)))
    return tuple(supports)


def modulation_weights(frames: int, frame_rate: float) -> np.ndarray:
    """Power weights of the modulation bands on an envelope's rFFT bins,
    ``(len(MODULATION_HZ), frames // 2 + 1)``.

    Octave-wide raised-cosine bands on a log-frequency axis, centred at
    ``MODULATION_HZ``: ``cos^2(pi/2 log2(f / centre))`` within an octave of
    the centre, 0 beyond (and at 0 Hz); adjacent bands' weights sum to 1.
    ``frame_rate`` in frames per second.
    """
    hz = np.arange(frames // 2 + 1) * frame_rate / max(frames, 1)
    octaves = np.log2(np.maximum(hz, _TINY))[None, :] - np.log2(MODULATION_HZ)[:, None]
    return np.where((np.abs(octaves) < 1.0) & (hz > 0), np.cos(0.5 * np.pi * octaves) ** 2, 0.0)


def texture_statistics(power: np.ndarray, config: AudioConfig) -> np.ndarray:
    """Auditory texture statistics (McDermott & Simoncelli 2011) of a levelled power
    spectrogram ``(1 + n_fft // 2, frames)``, as one float64 vector ``(TEXTURE_SIZE,)``
    laid out as :data:`TEXTURE_SLICES`.

    Each subband's (:func:`texture_filters`) envelope, per frame, is the square
    root of its power, compressed with exponent ``TEXTURE_COMPRESSION``:
    ``e = (P_band + floor) ** (0.3 / 2)`` (dimensionless: the spectrum is at
    unit mean power, so gain does not count). Per band, of ``e`` over frames:
    its mean; its coefficient of variation ``std / mean``; its skewness
    ``E[d^3] / s^3`` and log kurtosis ``log(max(E[d^4] / s^4, 1))``, with
    ``d = e - mean``, ``s^2 = var + (TEXTURE_RELATIVE_SPREAD mean)^2``; the
    correlation ``E[d_i d_j] / (s_i s_j)`` of every pair of bands; and the
    power of the Hann-windowed ``d`` in each modulation band
    (:func:`modulation_weights`, the frame rate is ``sample_rate /
    hop_length``) as a fraction of its total power (the envelope's variance),
    from its FFT: each in [0, 1], their sum at most 1. A silent signal gives
    finite statistics (constant envelopes: all but the mean 0).
    """
    # Each band over its own bins only: a few % of a dense product's work, and no
    # multi-threaded BLAS call to stall on a busy machine.
    band_power = np.stack([weights @ power[start:stop] for start, stop, weights
                           in _texture_supports(config.sample_rate, config.n_fft, power.dtype.str)])
    totals = texture_filters(config.sample_rate, config.n_fft).sum(axis=1, keepdims=True)
    band_power = np.maximum(band_power.astype(np.float64), 0.0) + TEXTURE_POWER_FLOOR * totals
    envelope = band_power ** (TEXTURE_COMPRESSION / 2)
    frames = envelope.shape[1]

    mean = envelope.mean(axis=1)
    deviation = envelope - mean[:, None]
    squared = deviation * deviation  # products, not **: np.power's cubes cost 40x more
    variance = np.mean(squared, axis=1)
    spread = variance + (TEXTURE_RELATIVE_SPREAD * mean) ** 2 + _TINY
    cv = np.sqrt(variance) / (mean + _TINY)
    skewness = np.mean(squared * deviation, axis=1) / spread ** 1.5
    log_kurtosis = np.log(np.maximum(np.mean(squared * squared, axis=1) / spread ** 2, 1.0))
    correlation = (deviation @ deviation.T / frames) / np.sqrt(np.outer(spread, spread))

    window = np.hanning(frames)
    windowed = deviation * window
    spectrum = np.abs(np.fft.rfft(windowed, axis=1)) ** 2
    spectrum[:, 1:(frames + 1) // 2] *= 2  # one-sided: all but 0 Hz and Nyquist count twice
    # Parseval: the full spectrum sums to frames x the windowed envelope's energy.
    total = frames * (np.sum(windowed * windowed, axis=1)
                      + np.sum(window ** 2) * (spread - variance))
    modulation = spectrum @ modulation_weights(frames, config.sample_rate / config.hop_length).T
    modulation /= np.maximum(total, _TINY)[:, None]

    upper = np.triu_indices(TEXTURE_BANDS, k=1)
    return np.concatenate([mean, cv, skewness, log_kurtosis, correlation[upper], modulation.ravel()])


def texture_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Distance between two :func:`texture_statistics` vectors, >= 0:
    ``(rms_moments + rms(a_corr - b_corr) + rms(a_mod - b_mod)) / 3``, with
    ``rms_moments`` the mean of ``rms(a_s - b_s)`` over the four moments ``s``
    and ``rms(x) = sqrt(mean(x^2))``: each family of :data:`TEXTURE_FAMILIES`
    (and each moment within its family) has an equal say, however many
    numbers it holds."""
    rms = {name: float(np.sqrt(np.mean((a[part] - b[part]) ** 2))) for name, part in TEXTURE_SLICES.items()}
    return float(np.mean([np.mean([rms[name] for name in names]) for names in TEXTURE_FAMILIES.values()]))


def timbre(y: np.ndarray, config: AudioConfig, power: np.ndarray | None = None) -> Timbre:
    """``y``'s :class:`Timbre`; ``power`` is its :func:`power_spectrogram`, when already computed."""
    power = power_spectrogram(y, config) if power is None else power
    return Timbre(mfcc_statistics(power, config), gram_signature(power, config),
                  texture_statistics(power, config))


def signature(y: np.ndarray, config: AudioConfig) -> Signature:
    """``y``'s :class:`Signature`."""
    power = power_spectrogram(y, config)
    return Signature(**_librosa_features(y, power, config), peak=float(np.max(np.abs(y))),
                     timbre=timbre(y, config, power))


def _librosa_features(y: np.ndarray, power: np.ndarray, config: AudioConfig) -> dict[str, Any]:
    """Chroma, onset envelope and mean flatness of ``y`` from its power spectrogram."""
    return {
        "chroma": librosa.feature.chroma_stft(S=power, sr=config.sample_rate, n_fft=config.n_fft).astype(np.float64),
        # Onset strength keeps librosa's own analysis (2048-point STFT, 128 mels).
        "onset": librosa.onset.onset_strength(y=y, sr=config.sample_rate, hop_length=config.hop_length),
        "flatness": float(np.mean(librosa.feature.spectral_flatness(S=np.sqrt(power), n_fft=config.n_fft))),
    }


def chroma_similarity(output: Signature, content: Signature) -> float:
    a, b = _common_length(output.chroma, content.chroma)
    norms = np.linalg.norm(a, axis=0) * np.linalg.norm(b, axis=0)
    voiced = norms > 1e-12
    return float(np.mean(np.sum(a * b, axis=0)[voiced] / norms[voiced])) if voiced.any() else 0.0


def onset_correlation(output: Signature, content: Signature) -> float:
    a, b = _common_length(output.onset[None], content.onset[None])
    if a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a[0], b[0])[0, 1])


def noise_ratio(output: Signature, content: Signature) -> float:
    return output.flatness / max(content.flatness, 1e-12)


def progress(distance_content_style: float, distance_output_style: float) -> float:
    """How far the output moved from the content toward the style (1: all the way)."""
    if distance_content_style <= 0:
        return 0.0
    return (distance_content_style - distance_output_style) / distance_content_style


def gram_distance(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    """Mean over layers of ``||Ga - Gb||_F / ||Gb||_F``."""
    return float(np.mean([np.linalg.norm(x - y) / max(np.linalg.norm(y), 1e-12) for x, y in zip(a, b)]))


@dataclasses.dataclass(frozen=True)
class Anchors:
    """The content's signature and the style's timbre, computed once: every
    output (a transfer, the reference rows) is measured against them."""

    content: Signature
    style: Timbre

    @classmethod
    def of(cls, content: np.ndarray, style: np.ndarray, config: AudioConfig) -> "Anchors":
        return cls(signature(content, config), timbre(style, config))


def compare(output: Signature, anchors: Anchors) -> dict[str, float]:
    """Every measure of an output's signature against ``anchors`` (all but
    ``spectral_convergence``, which needs the optimised mel)."""
    content, style = anchors.content.timbre, anchors.style
    mfcc_content = float(np.linalg.norm(content.mfcc - style.mfcc))
    mfcc_output = float(np.linalg.norm(output.timbre.mfcc - style.mfcc))
    gram_content = gram_distance(content.gram, style.gram)
    gram_output = gram_distance(output.timbre.gram, style.gram)
    texture_content = texture_distance(content.texture, style.texture)
    texture_output = texture_distance(output.timbre.texture, style.texture)
    return {
        "chroma_similarity": chroma_similarity(output, anchors.content),
        "onset_correlation": onset_correlation(output, anchors.content),
        "mfcc_distance": mfcc_output,
        "mfcc_progress": progress(mfcc_content, mfcc_output),
        "gram_distance": gram_output,
        "gram_progress": progress(gram_content, gram_output),
        "texture_distance": texture_output,
        "texture_progress": progress(texture_content, texture_output),
        "noise_ratio": noise_ratio(output, anchors.content),
        "peak": output.peak,
    }


def measure(output: np.ndarray, anchors: Anchors, config: AudioConfig,
            optimised_mel: np.ndarray | None = None) -> dict[str, float]:
    """Every measure of one output against ``anchors``; ``spectral_convergence``
    only when the optimised mel is given."""
    from amnst.engine import invert

    measures = compare(signature(output, config), anchors)
    if optimised_mel is not None:
        measures["spectral_convergence"] = invert.spectral_convergence(output, optimised_mel, config)
    return measures


def assess(output: np.ndarray, content: np.ndarray, style: np.ndarray, config: AudioConfig,
           optimised_mel: np.ndarray | None = None) -> dict[str, float]:
    """Every measure of one output; ``spectral_convergence`` only when the optimised mel is given."""
    return measure(output, Anchors.of(content, style, config), config, optimised_mel)


def plain_mix(content: np.ndarray, style: np.ndarray, style_share: float = 1.0 - MIX_CONTENT_GAIN) -> np.ndarray:
    """``1 - style_share`` of the content plus ``style_share`` of the style (looped or cut
    to the content's length), scaled down only where it would clip: the cheapest move
    toward the style, and the curve (``amnst.bench.frontier``) a transfer has to beat."""
    if not 0.0 <= style_share <= 1.0:
        raise ValueError(f"style_share must be in [0, 1], got {style_share}")
    mixed = (1.0 - style_share) * content + style_share * np.resize(style, content.shape)
    return audio.prevent_clipping(mixed, CLIP_HEADROOM)


def equalised(content: np.ndarray, style: np.ndarray, config: AudioConfig,
              smoothing_bins: int = 9, strength: float = 1.0) -> np.ndarray:
    """The content filtered to the style's long-term spectrum: a reference for the
    cheapest move toward the style's timbre that keeps the content's notes and timing.

    Every STFT bin of the content is scaled by ``(P_style / P_content) **
    (strength / 2)``, the two signals' power spectra averaged over time, the
    ratio's logarithm smoothed over ``smoothing_bins`` neighbouring bins (a
    spectral envelope, not single partials): ``strength`` 1 reaches the style's
    spectrum, 0 leaves the content as it is. The result is scaled down only
    where it would clip. Same length as ``content``.
    """
    if smoothing_bins < 1:
        raise ValueError(f"smoothing_bins must be >= 1, got {smoothing_bins}")
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    spectrum = librosa.stft(content, n_fft=config.n_fft, hop_length=config.hop_length)
    content_power, style_power = np.mean(np.abs(spectrum) ** 2, axis=1), long_term_power(style, config)
    # Floors relative to each spectrum's peak: a louder style is the same filter, louder.
    log_ratio = (np.log(style_power + SPECTRUM_FLOOR * style_power.max() + 1e-30)
                 - np.log(content_power + SPECTRUM_FLOOR * content_power.max() + 1e-30))
    padded = np.pad(log_ratio, (smoothing_bins // 2, (smoothing_bins - 1) // 2), mode="edge")
    log_ratio = np.convolve(padded, np.ones(smoothing_bins) / smoothing_bins, mode="valid")
    y = librosa.istft(spectrum * np.exp(strength * log_ratio / 2)[:, None], hop_length=config.hop_length,
                      length=len(content))
    return audio.prevent_clipping(y, CLIP_HEADROOM)


def stationary_texture(style: np.ndarray, n_samples: int, config: AudioConfig, seed: int = 0) -> np.ndarray:
    """Noise with the style's long-term power spectrum and no change over time,
    ``(n_samples,)``: the smoothest texture of the style's colour, which adds no
    onsets of its own. Random STFT phases, seeded."""
    power = long_term_power(style, config)
    frames = 1 + n_samples // config.hop_length
    phases = np.random.default_rng(seed).uniform(0.0, 2 * np.pi, (len(power), frames))
    return librosa.istft(np.sqrt(power)[:, None] * np.exp(1j * phases), hop_length=config.hop_length,
                         length=n_samples)


def long_term_power(y: np.ndarray, config: AudioConfig) -> np.ndarray:
    """``y``'s STFT power averaged over time, ``(1 + n_fft // 2,)``, at ``y``'s own level
    (unlike :func:`power_spectrogram`): the colour the references move toward."""
    return np.mean(np.abs(librosa.stft(y, n_fft=config.n_fft, hop_length=config.hop_length)) ** 2, axis=1)


def assess_with_references(output: np.ndarray, content: np.ndarray, style: np.ndarray,
                           config: AudioConfig, optimised_mel: np.ndarray | None = None) -> dict[str, Any]:
    """The output's measures, and as reference rows those of the content itself
    (``reference_content``) and of its :func:`plain_mix` with the style
    (``reference_mix``): what a transfer has to beat, per pair."""
    anchors = Anchors.of(content, style, config)
    return {**measure(output, anchors, config, optimised_mel),
            "reference_content": compare(anchors.content, anchors),
            "reference_mix": measure(plain_mix(content, style), anchors, config)}


def first_seconds(seconds: float | None, config: AudioConfig, output: np.ndarray, content: np.ndarray,
                  style: np.ndarray, optimised_mel: np.ndarray) -> tuple[np.ndarray, ...]:
    """The first ``seconds`` of an output, its content and its style (all of them
    where None), and the frames of the output's optimised mel ``(n_mels, frames)``
    that cover them: what :func:`assess_with_references` measures of a long piece."""
    if seconds is None:
        return output, content, style, optimised_mel
    if not seconds > 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    samples = int(round(seconds * config.sample_rate))
    frames = 1 + samples // config.hop_length
    return output[:samples], content[:samples], style[:samples], optimised_mel[:, :frames]


def compile_kernels() -> None:
    """Compile, and cache on disk, the numba kernels librosa runs in these
    measures and in the reference inversion, once, in this process.

    librosa caches its kernels beside its own sources. Processes compiling the
    same kernel at once (Ray workers on a fresh install) can load each other's
    half-written cache and die of SIGSEGV; after this, they only read it. The
    project's set-up and its image run it once.
    """
    from amnst.engine import invert

    config = AudioConfig(mel_power=1.0)
    # Any sound runs the same kernels: two seconds of a seeded tone in noise.
    t = np.arange(2 * config.sample_rate) / config.sample_rate
    music = (0.5 * np.sin(2 * np.pi * 440.0 * t)
             + 0.05 * np.random.default_rng(0).standard_normal(t.size)).astype(np.float32)
    power = power_spectrogram(music, config)
    _librosa_features(music, power, config)
    mfcc_statistics(power, config)
    invert.reference_mel_to_audio(audio.mel_spectrogram(music, config), config, n_iter=1)


@functools.lru_cache(maxsize=1)
def _independent_maps() -> Callable[[np.ndarray], list[Any]]:
    """The independent network as one compiled function: segments ``(B, n_mels,
    frames, 1)`` to its maps at ``GRAM_LAYERS``."""
    import tensorflow as tf

    from amnst.engine.features import FeatureStack
    from amnst.engine.model import build_model

    stack = FeatureStack(build_model(seed=INDEPENDENT_NETWORK_SEED), GRAM_LAYERS)

    @tf.function(reduce_retracing=True)
    def maps(x: tf.Tensor) -> list[tf.Tensor]:
        features = stack(x)
        return [features[layer] for layer in GRAM_LAYERS]

    return maps


def _common_length(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    frames = min(a.shape[-1], b.shape[-1])
    return a[..., :frames], b[..., :frames]
