"""Runners that compose the stages: analyse, optimise, render.

The stages are plain functions over arrays; this module's in-process runner
(``transfer_pair``) is what ``amnst transfer`` and the tests use.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from amnst import audio, invert
from amnst.config import AudioConfig, NSTConfig, Preset
from amnst.nst import NSTResult, StyleTransfer, optimise_piece


@dataclass(frozen=True)
class Analysis:
    """A piece cut into CNN inputs: ``segments`` is ``(n_segments, n_mels, segment_frames)``."""

    segments: np.ndarray
    n_frames: int
    n_samples: int


@dataclass
class PairOutcome:
    """One transferred pair: the output waveform, the NST record and stage timings (s)."""

    audio: np.ndarray
    mel: np.ndarray
    result: NSTResult
    stage_seconds: dict[str, float] = field(default_factory=dict)


def analyse(y: np.ndarray, config: AudioConfig) -> Analysis:
    """Mel spectrogram of a validated waveform, cut into segments."""
    mel = audio.mel_spectrogram(y, config)
    return Analysis(audio.segment(mel, config), mel.shape[1], len(y))


def render(segments: np.ndarray, n_frames: int, n_samples: int, audio_config: AudioConfig,
           nst_config: NSTConfig) -> tuple[np.ndarray, np.ndarray]:
    """Stitch optimised segments and invert the whole piece at once.

    Returns ``(waveform (n_samples,), stitched mel (n_mels, n_frames))``; the
    waveform is scaled down only if it would clip.
    """
    # A linearly parameterised target (the seed preset) can step below zero,
    # which no spectrum has.
    mel = np.maximum(audio.stitch(segments, n_frames, audio_config), 0.0)
    if nst_config.inversion == "fast":
        y = invert.mel_to_audio(mel, audio_config, n_iter=nst_config.griffin_lim_iters,
                                length=n_samples, seed=nst_config.seed)
    else:
        y = invert.reference_mel_to_audio(mel, audio_config, n_iter=nst_config.griffin_lim_iters,
                                          length=n_samples, seed=nst_config.seed)
    return audio.prevent_clipping(np.asarray(y, np.float32)), mel


def transfer_pair(content: np.ndarray, style: np.ndarray, preset: Preset, transfer: StyleTransfer,
                  progress: Callable[[int], None] | None = None) -> PairOutcome:
    """Transfer the style waveform's texture onto the content waveform, in this process.

    Both inputs are validated mono waveforms at ``preset.audio.sample_rate``.
    ``progress`` receives segment-iterations done.
    """
    seconds: dict[str, float] = {}
    clock = time.perf_counter()
    content_piece = analyse(content, preset.audio)
    style_piece = analyse(style, preset.audio)
    targets = transfer.style_targets(style_piece.segments)
    seconds["mel"] = time.perf_counter() - clock

    clock = time.perf_counter()
    result = optimise_piece(transfer, content_piece.segments, targets, progress)
    seconds["optimise"] = time.perf_counter() - clock

    clock = time.perf_counter()
    y, mel = render(result.mels, content_piece.n_frames, content_piece.n_samples,
                    preset.audio, preset.nst)
    seconds["invert"] = time.perf_counter() - clock
    return PairOutcome(y, mel, result, seconds)
