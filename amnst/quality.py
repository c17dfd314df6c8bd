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
- ``spectral_convergence`` (reconstruction error): ``||mel(output) - M||_F /
  ||M||_F`` against the optimised mel ``M``. >= 0; lower is better.
- ``noise_ratio``: mean spectral flatness of the output over the content's.
  > 0; 1 is as noisy as the content, higher is noisier.
- ``peak``: the output's largest absolute sample; 1.0 or more is clipping.

Reference rows put a transfer's measures in context: the content itself
(what doing nothing scores) and a plain mix of content and style (what the
cheapest move toward the style scores); a transfer has to beat the mix.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import librosa
import numpy as np

from amnst.config import AudioConfig

INDEPENDENT_NETWORK_SEED = 2016
GRAM_LAYERS = (4, 8, 12, 16)
N_MFCC = 20
# The plain mix reference: this much content, the rest style (amnst bench quality's too).
MIX_CONTENT_GAIN = 0.7


def chroma_similarity(output: np.ndarray, content: np.ndarray, config: AudioConfig) -> float:
    a, b = (librosa.feature.chroma_stft(y=y, sr=config.sample_rate, n_fft=config.n_fft,
                                        hop_length=config.hop_length).astype(np.float64)
            for y in (output, content))
    a, b = _common_length(a, b)
    norms = np.linalg.norm(a, axis=0) * np.linalg.norm(b, axis=0)
    voiced = norms > 1e-12
    return float(np.mean(np.sum(a * b, axis=0)[voiced] / norms[voiced])) if voiced.any() else 0.0


def onset_correlation(output: np.ndarray, content: np.ndarray, config: AudioConfig) -> float:
    a, b = (librosa.onset.onset_strength(y=y, sr=config.sample_rate, hop_length=config.hop_length)
            for y in (output, content))
    a, b = _common_length(a[None], b[None])
    if a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a[0], b[0])[0, 1])


def mfcc_statistics(y: np.ndarray, config: AudioConfig) -> np.ndarray:
    """Means and standard deviations of 20 MFCCs over time, ``(40,)``."""
    coefficients = librosa.feature.mfcc(y=y, sr=config.sample_rate, n_mfcc=N_MFCC, n_fft=config.n_fft,
                                        hop_length=config.hop_length)
    return np.concatenate([coefficients.mean(axis=1), coefficients.std(axis=1)])


def progress(distance_content_style: float, distance_output_style: float) -> float:
    """How far the output moved from the content toward the style (1: all the way)."""
    if distance_content_style <= 0:
        return 0.0
    return (distance_content_style - distance_output_style) / distance_content_style


def gram_signature(y: np.ndarray, config: AudioConfig) -> list[np.ndarray]:
    """Position-normalised Gram matrices of ``y``'s magnitude mel at ``GRAM_LAYERS``
    of the independent random network, pooled over all segments."""
    from amnst import audio

    magnitude = dataclasses.replace(config, mel_power=1.0)
    segments = audio.segment(audio.mel_spectrogram(y, magnitude), magnitude)
    stack = _independent_stack()
    sums: list[Any] = [0.0] * len(GRAM_LAYERS)
    positions = [0] * len(GRAM_LAYERS)
    for start in range(0, len(segments), 4):
        features = stack(segments[start:start + 4, ..., None])
        for k, layer in enumerate(GRAM_LAYERS):
            f = np.asarray(features[layer]).reshape(-1, features[layer].shape[-1])
            sums[k] = sums[k] + f.T @ f
            positions[k] += len(f)
    return [s / n for s, n in zip(sums, positions)]


def gram_distance(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    """Mean over layers of ``||Ga - Gb||_F / ||Gb||_F``."""
    return float(np.mean([np.linalg.norm(x - y) / max(np.linalg.norm(y), 1e-12) for x, y in zip(a, b)]))


def noise_ratio(output: np.ndarray, content: np.ndarray, config: AudioConfig) -> float:
    flatness = [float(np.mean(librosa.feature.spectral_flatness(y=y, n_fft=config.n_fft,
                                                                hop_length=config.hop_length)))
                for y in (output, content)]
    return flatness[0] / max(flatness[1], 1e-12)


@dataclasses.dataclass(frozen=True)
class Anchors:
    """A content and a style with their timbre signatures, computed once.

    Every output (a transfer, the reference rows) is measured against the
    same two signals; their MFCC statistics and Gram signatures are the
    costly part of a measure, so they are not recomputed per output.
    """

    content: np.ndarray
    style: np.ndarray
    mfcc_content: np.ndarray
    mfcc_style: np.ndarray
    gram_content: list[np.ndarray]
    gram_style: list[np.ndarray]

    @classmethod
    def of(cls, content: np.ndarray, style: np.ndarray, config: AudioConfig) -> "Anchors":
        return cls(content, style, mfcc_statistics(content, config), mfcc_statistics(style, config),
                   gram_signature(content, config), gram_signature(style, config))


def measure(output: np.ndarray, anchors: Anchors, config: AudioConfig,
            optimised_mel: np.ndarray | None = None) -> dict[str, float]:
    """Every measure of one output against ``anchors``; ``spectral_convergence``
    only when the optimised mel is given."""
    from amnst import invert

    mfcc_content = float(np.linalg.norm(anchors.mfcc_content - anchors.mfcc_style))
    mfcc_output = float(np.linalg.norm(mfcc_statistics(output, config) - anchors.mfcc_style))
    gram_content = gram_distance(anchors.gram_content, anchors.gram_style)
    gram_output = gram_distance(gram_signature(output, config), anchors.gram_style)
    measures = {
        "chroma_similarity": chroma_similarity(output, anchors.content, config),
        "onset_correlation": onset_correlation(output, anchors.content, config),
        "mfcc_distance": mfcc_output,
        "mfcc_progress": progress(mfcc_content, mfcc_output),
        "gram_distance": gram_output,
        "gram_progress": progress(gram_content, gram_output),
        "noise_ratio": noise_ratio(output, anchors.content, config),
        "peak": float(np.max(np.abs(output))),
    }
    if optimised_mel is not None:
        measures["spectral_convergence"] = invert.spectral_convergence(output, optimised_mel, config)
    return measures


def assess(output: np.ndarray, content: np.ndarray, style: np.ndarray, config: AudioConfig,
           optimised_mel: np.ndarray | None = None) -> dict[str, float]:
    """Every measure of one output; ``spectral_convergence`` only when the optimised mel is given."""
    return measure(output, Anchors.of(content, style, config), config, optimised_mel)


def plain_mix(content: np.ndarray, style: np.ndarray) -> np.ndarray:
    """``MIX_CONTENT_GAIN`` of the content plus the rest of the style (looped or cut to the
    content's length): a reference that keeps the content and already moves toward the style."""
    return MIX_CONTENT_GAIN * content + (1.0 - MIX_CONTENT_GAIN) * np.resize(style, content.shape)


def assess_with_references(output: np.ndarray, content: np.ndarray, style: np.ndarray,
                           config: AudioConfig, optimised_mel: np.ndarray | None = None) -> dict[str, Any]:
    """The output's measures, and as reference rows those of the content itself
    (``reference_content``) and of its :func:`plain_mix` with the style
    (``reference_mix``): what a transfer has to beat, per pair."""
    anchors = Anchors.of(content, style, config)
    return {**measure(output, anchors, config, optimised_mel),
            "reference_content": measure(content, anchors, config),
            "reference_mix": measure(plain_mix(content, style), anchors, config)}


def compile_kernels() -> None:
    """Compile, and cache on disk, the numba kernels librosa runs in these
    measures and in the reference inversion, once, in this process.

    librosa caches its kernels beside its own sources. Processes compiling the
    same kernel at once (Ray workers on a fresh install) can load each other's
    half-written cache and die of SIGSEGV; after this, they only read it. The
    project's set-up and its image run it once.
    """
    from amnst import audio, invert, synth

    config = AudioConfig(mel_power=1.0)
    music, rain = synth.music(2.0, seed=0), synth.rain(2.0, seed=0)
    chroma_similarity(music, rain, config)
    onset_correlation(music, rain, config)
    mfcc_statistics(music, config)
    noise_ratio(music, rain, config)
    invert.reference_mel_to_audio(audio.mel_spectrogram(music, config), config, n_iter=1)


@functools.lru_cache(maxsize=1)
def _independent_stack() -> Any:
    from amnst.features import FeatureStack
    from amnst.model import build_model

    return FeatureStack(build_model(seed=INDEPENDENT_NETWORK_SEED), GRAM_LAYERS)


def _common_length(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    frames = min(a.shape[-1], b.shape[-1])
    return a[..., :frames], b[..., :frames]
