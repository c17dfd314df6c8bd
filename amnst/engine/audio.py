"""Audio in and out: decode, mono, resample, validate, mel, segment, stitch, encode.

Arrays are float32. A waveform is ``(n_samples,)`` in [-1, 1]; a mel
spectrogram is ``(n_mels, n_frames)``; a piece's segments are
``(n_segments, n_mels, width)``, where ``width`` is ``segment_frames`` or,
with ``fit_segments``, the piece's fitted width (:func:`segment_layout`).
"""

from __future__ import annotations

import functools
import io
import math
import warnings
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf

from amnst.config import FITTED_FRAMES_QUANTUM, MIN_FITTED_SEGMENT_FRAMES, AudioConfig

# ogg (Vorbis, lossy) is for previews, such as the run report's; outputs are wav or flac.
ENCODINGS = {"wav": ("WAV", "PCM_16"), "flac": ("FLAC", "PCM_16"), "ogg": ("OGG", "VORBIS")}
# Below this peak (about -100 dBFS) a signal is treated as silence.
SILENCE_PEAK = 1e-5


class AudioError(ValueError):
    """Input audio that cannot be used; the message starts with the input's name."""


class AudioWarning(UserWarning):
    """Input audio that is used, with something its owner should know (a truncated
    file); the message starts with the input's name. Raised with ``warnings.warn``:
    callers that record warnings catch it (``pipeline.render_pair``, ``amnst transfer``)."""


def decode(source: str | Path | bytes, name: str | None = None) -> tuple[np.ndarray, int]:
    """Decode wav, flac, ogg or mp3 from a path or from the file's bytes.

    Returns ``(samples, sample_rate)`` with samples of shape
    ``(n_channels, n_samples)``, float32.
    """
    label = name or (str(source) if not isinstance(source, bytes) else "<bytes>")
    if isinstance(source, bytes):
        if not source:
            raise AudioError(f"{label}: empty file (0 bytes)")
        handle: io.BytesIO | str = io.BytesIO(source)
    else:
        path = Path(source)
        if path.is_dir():
            raise AudioError(f"{label}: is a directory")
        if not path.is_file():
            raise AudioError(f"{label}: no such file")
        if path.stat().st_size == 0:
            raise AudioError(f"{label}: empty file (0 bytes)")
        handle = str(path)
    try:
        data, sample_rate = sf.read(handle, dtype="float32", always_2d=True)
    except sf.LibsndfileError as error:
        # Its str() names the handle it was given: a temporary path or a BytesIO's address.
        raise AudioError(f"{label}: cannot decode audio ({error.error_string})") from None
    except (RuntimeError, TypeError, ValueError) as error:
        raise AudioError(f"{label}: cannot decode audio ({error})") from None
    promised = _promised_wav_frames(source)
    if promised is not None and promised > len(data):
        warnings.warn(AudioWarning(
            f"{label}: truncated: its header promises {promised} frames ({promised / sample_rate:.2f} s), "
            f"the file holds {len(data)} ({len(data) / sample_rate:.2f} s)"), stacklevel=2)
    return np.ascontiguousarray(data.T), int(sample_rate)


def _promised_wav_frames(source: str | Path | bytes) -> int | None:
    """The frames a RIFF/WAVE file's ``data`` chunk header declares; None for another
    format, an unreadable header, or a streaming writer's unknown length (0 or 2**32 - 1).

    libsndfile reads a truncated WAV up to where its bytes end without a word:
    only the header still says how long it was meant to be.
    """
    with (io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")) as handle:
        head = handle.read(12)
        if len(head) < 12 or head[:4] not in (b"RIFF", b"RF64") or head[8:12] != b"WAVE":
            return None
        block_align = None
        while len(chunk := handle.read(8)) == 8:
            kind, size = chunk[:4], int.from_bytes(chunk[4:], "little")
            if kind == b"fmt ":
                block_align = int.from_bytes(handle.read(16)[12:14], "little")
                handle.seek(size - 16 + (size & 1), io.SEEK_CUR)
            elif kind == b"data":
                if not block_align or size in (0, 0xFFFFFFFF) or head[:4] == b"RF64":
                    return None
                return size // block_align
            else:
                handle.seek(size + (size & 1), io.SEEK_CUR)
    return None


def to_mono(samples: np.ndarray) -> np.ndarray:
    """Average ``(n_channels, n_samples)`` down to ``(n_samples,)``."""
    if samples.ndim == 1:
        return samples
    return samples.mean(axis=0, dtype=np.float32)


def resample(y: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample a mono waveform (band-limited, soxr high quality)."""
    if orig_sr == target_sr:
        return y
    return librosa.resample(y, orig_sr=orig_sr, target_sr=target_sr, res_type="soxr_hq").astype(np.float32)


def validate(y: np.ndarray, config: AudioConfig, name: str) -> np.ndarray:
    """Raise AudioError if ``y`` is empty, too short, non-finite or silent."""
    if y.size == 0:
        raise AudioError(f"{name}: no audio samples")
    if not np.all(np.isfinite(y)):
        raise AudioError(f"{name}: audio holds NaN or infinite samples")
    if y.size < config.n_fft:
        raise AudioError(f"{name}: too short ({y.size / config.sample_rate:.3f} s; "
                         f"at least {config.n_fft / config.sample_rate:.3f} s needed)")
    if float(np.max(np.abs(y))) < SILENCE_PEAK:
        raise AudioError(f"{name}: audio is silent")
    return y


def load(source: str | Path | bytes, config: AudioConfig, name: str | None = None) -> np.ndarray:
    """Decode, mix to mono, resample to ``config.sample_rate`` and validate."""
    label = name or (str(source) if not isinstance(source, bytes) else "<bytes>")
    samples, sample_rate = decode(source, label)
    if not np.all(np.isfinite(samples)):
        raise AudioError(f"{label}: audio holds NaN or infinite samples")
    y = resample(to_mono(samples), sample_rate, config.sample_rate)
    return validate(y, config, label)


@functools.lru_cache(maxsize=8)
def mel_basis(config: AudioConfig) -> np.ndarray:
    """The Slaney mel filter bank, ``(n_mels, 1 + n_fft // 2)``.

    With n_fft 1024 and 384 bands some filters are empty; the seed CNN was
    trained with them, so they are kept.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Empty filters detected", UserWarning)
        basis = librosa.filters.mel(sr=config.sample_rate, n_fft=config.n_fft, n_mels=config.n_mels,
                                    fmin=config.fmin, fmax=config.fmax)
    basis.setflags(write=False)
    return basis


def stft(y: np.ndarray, config: AudioConfig) -> np.ndarray:
    """The complex STFT of ``y``, ``(1 + n_fft // 2, n_frames)``: centred, Hann,
    ``n_frames = 1 + len(y) // hop_length``."""
    return librosa.stft(y, n_fft=config.n_fft, hop_length=config.hop_length, center=True)


def mel_from_stft(spectrum: np.ndarray, config: AudioConfig) -> np.ndarray:
    """The mel spectrogram ``(n_mels, n_frames)`` of a complex STFT (:func:`stft`)."""
    return (mel_basis(config) @ np.abs(spectrum) ** config.mel_power).astype(np.float32)


def mel_spectrogram(y: np.ndarray, config: AudioConfig) -> np.ndarray:
    """Mel spectrogram of ``y`` as librosa computes it, ``(n_mels, n_frames)``.

    ``config.mel_power`` 2 gives the power mel, 1 the magnitude mel (the mel
    filter bank applied to ``|STFT|``). Frames are centred, so
    ``n_frames = 1 + len(y) // hop_length``.
    """
    return mel_from_stft(stft(y, config), config)


def blend(content_mel: np.ndarray, transferred_mel: np.ndarray, strength: float) -> np.ndarray:
    """``content_mel ** (1 - strength) * transferred_mel ** strength``, bin by bin.

    A dry/wet control for spectra: the geometric mean weighs each band's level
    in decibels, so ``strength`` 0.5 lands halfway in loudness, not in power.
    0 returns the content's mel exactly and 1 the transferred one. Both mels
    ``(n_mels, n_frames)``, non-negative.
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    return (np.power(content_mel, 1.0 - strength) * np.power(transferred_mel, strength)).astype(np.float32)


def num_frames(n_samples: int, config: AudioConfig) -> int:
    """Frames of a centred STFT of ``n_samples`` samples."""
    return 1 + n_samples // config.hop_length


def num_segments(n_frames: int, config: AudioConfig) -> int:
    """Segments needed to cover ``n_frames`` frames; at least one."""
    step = config.segment_frames - config.overlap_frames
    return max(1, math.ceil((n_frames - config.overlap_frames) / step))


def segment_layout(n_frames: int, config: AudioConfig) -> tuple[int, int]:
    """``(count, width)`` of the segments that cover ``n_frames`` frames.

    ``count`` is :func:`num_segments`; ``width`` is ``segment_frames``, or
    with ``config.fit_segments`` the narrowest width that lets ``count``
    segments cover the frames (see ``AudioConfig``).
    """
    count = num_segments(n_frames, config)
    if not config.fit_segments:
        return count, config.segment_frames
    needed = math.ceil((n_frames + (count - 1) * config.overlap_frames) / count)
    width = math.ceil(needed / FITTED_FRAMES_QUANTUM) * FITTED_FRAMES_QUANTUM
    return count, min(config.segment_frames, max(MIN_FITTED_SEGMENT_FRAMES, width))


def segment(mel: np.ndarray, config: AudioConfig) -> np.ndarray:
    """Cut ``(n_mels, n_frames)`` into ``(count, n_mels, width)`` (:func:`segment_layout`).

    Consecutive segments share ``overlap_frames`` frames. The tail is padded
    with zeros (silence), so no frame is dropped and a mel shorter than one
    segment gives one padded segment.
    """
    n_mels, n_frames = mel.shape
    count, width = segment_layout(n_frames, config)
    step = width - config.overlap_frames
    padded = np.zeros((n_mels, (count - 1) * step + width), dtype=np.float32)
    padded[:, :n_frames] = mel
    return np.stack([padded[:, s:s + width] for s in np.arange(count) * step])


def stitch(segments: np.ndarray, n_frames: int, config: AudioConfig) -> np.ndarray:
    """Inverse of :func:`segment`: overlap-add with linear crossfades.

    ``segments`` is ``(count, n_mels, width)`` as :func:`segment_layout` lays
    out ``n_frames`` frames. Inside each overlap the earlier segment fades out
    as the later fades in, with gains that sum to one. Returns
    ``(n_mels, n_frames)``.
    """
    count, n_mels, length = segments.shape
    expected = segment_layout(n_frames, config)
    if (count, length) != expected:
        raise ValueError(f"{n_frames} frames are {expected[0]} segments of {expected[1]} frames, "
                         f"got {count} of {length}")
    overlap = config.overlap_frames
    step = length - overlap
    out = np.zeros((n_mels, (count - 1) * step + length), dtype=np.float32)
    fade_in = (np.arange(overlap, dtype=np.float32) + 0.5) / max(overlap, 1)
    for index, seg in enumerate(segments):
        gain = np.ones(length, dtype=np.float32)
        if overlap and index > 0:
            gain[:overlap] = fade_in
        if overlap and index < count - 1:
            gain[-overlap:] = 1.0 - fade_in
        start = index * step
        out[:, start:start + length] += seg * gain
    return out[:, :n_frames]


def prevent_clipping(y: np.ndarray, ceiling: float = 0.98) -> np.ndarray:
    """Scale ``y`` down so its peak is at most ``ceiling``; quieter audio is untouched."""
    peak = float(np.max(np.abs(y))) if y.size else 0.0
    return y * (ceiling / peak) if peak > ceiling else y


def encode(y: np.ndarray, sample_rate: int, fmt: str = "wav") -> bytes:
    """Encode a mono waveform in [-1, 1] as 16-bit ``wav`` or ``flac``, or Vorbis ``ogg``, bytes."""
    if fmt not in ENCODINGS:
        raise ValueError(f"unsupported output format {fmt!r}: choose one of {sorted(ENCODINGS)}")
    if not np.all(np.isfinite(y)):
        raise ValueError("cannot encode non-finite samples")
    container, subtype = ENCODINGS[fmt]
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(y, -1.0, 1.0), sample_rate, format=container, subtype=subtype)
    return buffer.getvalue()
