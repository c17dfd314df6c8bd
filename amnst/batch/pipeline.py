"""The stages of a transfer, and the in-process runner that composes them.

Stages are plain functions over arrays, bytes and URIs, with no Ray inside:
``analyse_pair`` (read, hash, decode, segment), ``style_targets_for``,
``optimise_segments``, and ``invert_pair`` (stitch, invert) then ``finish_pair``
(encode, measure, write), which ``render_pair`` composes.
``transfer_pair`` runs a pair in this process (``amnst transfer``); the Ray
runner (``amnst.batch.ray_runner``) runs the same stages as tasks.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from amnst.batch import storage
from amnst.config import AudioConfig, NSTConfig, Preset

# The stages import TensorFlow and librosa when first called, so that the Ray
# driver, which only schedules them, stays small and starts fast.
if TYPE_CHECKING:
    from amnst.engine.nst import NSTResult, StyleTargets, StyleTransfer


@dataclass(frozen=True)
class Analysis:
    """A piece cut into CNN inputs: ``segments`` is ``(n_segments, n_mels, width)`` (``audio.segment``)."""

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
    from amnst.engine import audio

    mel = audio.mel_spectrogram(y, config)
    return Analysis(audio.segment(mel, config), mel.shape[1], len(y))


def render(segments: np.ndarray, content: np.ndarray, audio_config: AudioConfig,
           nst_config: NSTConfig) -> tuple[np.ndarray, np.ndarray]:
    """Stitch optimised segments, blend them with the content's mel by the
    configured strength, and invert the whole piece at once.

    ``content`` is the content waveform the segments were cut from: the output
    has its length, and with ``phase="content"`` its phase. Returns
    ``(waveform (n_samples,), rendered mel (n_mels, n_frames))``; the waveform
    is scaled down only if it would clip.
    """
    from amnst.engine import audio, invert

    spectrum = audio.stft(content, audio_config)
    content_mel = audio.mel_from_stft(spectrum, audio_config)
    # A linearly parameterised target (the seed preset) can step below zero,
    # which no spectrum has.
    mel = np.maximum(audio.stitch(segments, content_mel.shape[1], audio_config), 0.0)
    mel = audio.blend(content_mel, mel, nst_config.strength)
    if nst_config.inversion == "fast":
        y = invert.mel_to_audio(mel, audio_config, n_iter=nst_config.griffin_lim_iters, length=len(content),
                                seed=nst_config.seed, reference=spectrum if nst_config.phase == "content" else None)
    else:
        y = invert.reference_mel_to_audio(mel, audio_config, n_iter=nst_config.griffin_lim_iters,
                                          length=len(content), seed=nst_config.seed)
    return audio.prevent_clipping(np.asarray(y, np.float32)), mel


def transfer_pair(content: np.ndarray, style: np.ndarray, preset: Preset, transfer: StyleTransfer,
                  progress: Callable[[int], None] | None = None) -> PairOutcome:
    """Transfer the style waveform's texture onto the content waveform, in this process.

    Both inputs are validated mono waveforms at ``preset.audio.sample_rate``.
    ``progress`` receives segment-iterations done.
    """
    from amnst.engine.nst import optimise_piece

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
    y, mel = render(result.mels, content, preset.audio, preset.nst)
    seconds["invert"] = time.perf_counter() - clock
    return PairOutcome(y, mel, result, seconds)


# --- the stages as the batch runner runs them --------------------------------

# A pair's quality measures read its first this many seconds (and the style's):
# measured whole, they would cost a long piece more than a tenth of its CPU work.
QUALITY_SECONDS = 20.0

@contextlib.contextmanager
def timed(stages: dict[str, float], name: str) -> Iterator[None]:
    """Add the wall-clock seconds the block takes to ``stages[name]``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        stages[name] = stages.get(name, 0.0) + time.perf_counter() - start


@contextlib.contextmanager
def noticed() -> Iterator[list[str]]:
    """Collect the :class:`amnst.engine.audio.AudioWarning` messages raised in the block, in order,
    instead of printing them; other warnings pass through."""
    from amnst.engine.audio import AudioWarning

    messages: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", AudioWarning)
        yield messages
    for warning in caught:
        if issubclass(warning.category, AudioWarning):
            messages.append(str(warning.message))
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)


@dataclass(frozen=True)
class Weights:
    """Where the CNN's weights come from: a URI (``None``: seeded random) and their id."""

    uri: str | None
    seed: int
    id: str

    @classmethod
    def locate(cls, uri: str | None, seed: int) -> "Weights":
        """Identify the weights by their bytes' hash (or the seed), without building the CNN."""
        if uri is None:
            return cls(None, seed, f"random-seed-{seed}")
        return cls(uri, seed, "sha256-" + hashlib.sha256(storage.read_bytes(uri)).hexdigest()[:16])


@dataclass(frozen=True)
class PairJob:
    """One manifest pair as the runner schedules it."""

    pair_id: str
    row: int
    content_uri: str
    style_uri: str
    preset: Preset
    output_uri: str
    # The fingerprint of this pair's last ``ok`` row, if any: resume skips it.
    done_fingerprint: str | None = None


@dataclass(frozen=True)
class AnalysisInfo:
    """What ``analyse_pair`` learnt; ``status`` is "ready", "skipped" or "failed"."""

    status: str
    content_sha256: str | None = None
    style_sha256: str | None = None
    fingerprint: str | None = None
    error: str | None = None
    n_frames: int = 0
    n_samples: int = 0
    n_segments: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class SegmentsResult:
    """Optimised segments ``start..start+len`` of a piece and where they ran."""

    start: int
    result: NSTResult
    seconds: float
    node: str = ""
    # The CNN's precision as the worker resolved it (NSTConfig.precision).
    precision: str = "fp32"


def pair_fingerprint(content_sha256: str, style_sha256: str, preset: Preset, weights: Weights,
                     output_uri: str) -> str:
    """What a pair's output depends on: inputs' bytes, configuration, network, destination."""
    body = json.dumps([content_sha256, style_sha256, preset.fingerprint(), weights.id, output_uri])
    return hashlib.sha256(body.encode()).hexdigest()[:32]


def analyse_pair(job: PairJob, weights: Weights,
                 stages: dict[str, float] | None = None) -> tuple[AnalysisInfo, np.ndarray | None]:
    """Read and hash both inputs; skip a pair already done, else decode and segment the content.

    Returns the analysis and the content segments ``(n, n_mels, frames)``
    (``None`` when skipped or failed). ``stages``, when given, gains the
    seconds spent in ``read`` (reading and hashing both inputs), ``decode``
    and ``mel`` (mel spectrogram and segments).
    """
    from amnst.engine import audio

    stages = {} if stages is None else stages
    clock = time.perf_counter()
    try:
        with timed(stages, "read"):
            content_bytes = storage.read_bytes(job.content_uri)
            style_bytes = storage.read_bytes(job.style_uri)
            hashes = hashlib.sha256(content_bytes).hexdigest(), hashlib.sha256(style_bytes).hexdigest()
    except storage.StorageError as error:
        return AnalysisInfo("failed", error=str(error), seconds=time.perf_counter() - clock), None
    fingerprint = pair_fingerprint(*hashes, job.preset, weights, job.output_uri)
    known = dict(content_sha256=hashes[0], style_sha256=hashes[1], fingerprint=fingerprint)
    if job.done_fingerprint == fingerprint and storage.exists(job.output_uri):
        return AnalysisInfo("skipped", **known, seconds=time.perf_counter() - clock), None
    try:
        with timed(stages, "decode"):
            content = audio.load(content_bytes, job.preset.audio, name=job.content_uri)
    except audio.AudioError as error:
        return AnalysisInfo("failed", **known, error=str(error), seconds=time.perf_counter() - clock), None
    with timed(stages, "mel"):
        piece = analyse(content, job.preset.audio)
    return AnalysisInfo("ready", **known, n_frames=piece.n_frames, n_samples=piece.n_samples,
                        n_segments=len(piece.segments), seconds=time.perf_counter() - clock), piece.segments


_TRANSFERS: dict[tuple[str, AudioConfig, NSTConfig], StyleTransfer] = {}


def cached_transfer(weights: Weights, preset: Preset) -> StyleTransfer:
    """The compiled NST for these weights and configuration, built once per process."""
    key = (weights.id, preset.audio, preset.nst)
    if key not in _TRANSFERS:
        from amnst.engine.model import load_model, load_model_from_bytes
        from amnst.engine.nst import StyleTransfer

        if weights.uri is None:
            model = load_model(None, seed=weights.seed)
        else:
            model = load_model_from_bytes(storage.read_bytes(weights.uri), weights.uri, weights.seed)
        _TRANSFERS[key] = StyleTransfer(model, preset.nst, audio=preset.audio)
    return _TRANSFERS[key]


def style_targets_for(style_uri: str, preset: Preset, weights: Weights) -> StyleTargets:
    """Decode a style recording and compute its pooled Gram targets."""
    from amnst.engine import audio

    y = audio.load(storage.read_bytes(style_uri), preset.audio, name=style_uri)
    return cached_transfer(weights, preset).style_targets(analyse(y, preset.audio).segments)


def optimise_segments(segments: np.ndarray, start: int, targets: StyleTargets,
                      preset: Preset, weights: Weights) -> SegmentsResult:
    """Optimise ``segments``, the piece's segments from index ``start`` on
    (their indices seed random starts)."""
    clock = time.perf_counter()
    transfer = cached_transfer(weights, preset)
    result = transfer.optimise(segments, targets, indices=np.arange(start, start + len(segments)))
    return SegmentsResult(start, result, time.perf_counter() - clock, precision=transfer.precision)


@dataclass(frozen=True)
class RenderedPair:
    """A pair's output before it is encoded and measured: the output audio ``y`` and
    the mel it was rendered from, the decoded content (which the inversion read for
    its phase), what decoding noticed, the seconds spent (``invert``, reading the content included),
    and the row's facts of the optimisation (``record``: losses, segment rows,
    precision). The optimised segments themselves stay behind."""

    y: np.ndarray
    mel: np.ndarray
    content: np.ndarray
    notices: list[str]
    seconds: dict[str, float]
    record: dict[str, Any]


def invert_pair(job: PairJob, parts: list[SegmentsResult]) -> RenderedPair:
    """Stitch a pair's optimised segments and invert them to audio: the GPU half of
    rendering (the inversion runs on TensorFlow's device)."""
    from amnst.engine import audio
    from amnst.engine.nst import concat_results

    seconds: dict[str, float] = {}
    parts = sorted(parts, key=lambda part: part.start)
    result = concat_results([part.result for part in parts])
    with timed(seconds, "invert"), noticed() as notices:
        # The content's own STFT gives the inversion its phase.
        content = audio.load(storage.read_bytes(job.content_uri), job.preset.audio, name=job.content_uri)
        y, mel = render(result.mels, content, job.preset.audio, job.preset.nst)
    record = {**loss_record(result), "segments": _segment_rows(parts),
              "precision": ",".join(sorted({part.precision for part in parts})),
              "seconds_optimise": sum(part.seconds for part in parts)}
    return RenderedPair(y, mel, content, notices, seconds, record)


def finish_pair(job: PairJob, rendered: RenderedPair, fmt: str = "wav", stages: dict[str, float] | None = None,
                quality_seconds: float | None = QUALITY_SECONDS) -> dict[str, Any]:
    """Encode, measure and write one rendered pair; returns the facts of its row: the
    CPU half of rendering.

    The output is written last, atomically, so a failure leaves no output.
    The returned dict holds the pair's loss record, its quality measures
    (``amnst.engine.quality``, measured against the decoded inputs over their
    first ``quality_seconds``, all of them if None) with those of its reference
    rows (the content itself, a plain mix), per-stage seconds, and
    ``"segments"``: one dict per segment. ``stages``, when given, gains the
    seconds spent in ``invert`` (reading the content, stitch and inversion),
    ``encode``, ``quality`` (reading the style included) and ``write``.
    """
    from amnst.engine import audio, quality

    seconds = dict(rendered.seconds)
    with timed(seconds, "encode"):
        encoded = audio.encode(rendered.y, job.preset.audio.sample_rate, fmt)
    with timed(seconds, "quality"), noticed() as notices:
        style = audio.load(storage.read_bytes(job.style_uri), job.preset.audio, name=job.style_uri)
        y, content, style, mel = quality.first_seconds(quality_seconds, job.preset.audio, rendered.y,
                                                       rendered.content, style, rendered.mel)
        measures = quality.assess_with_references(y, content, style, job.preset.audio, optimised_mel=mel)
    with timed(seconds, "write"):
        storage.write_bytes(job.output_uri, encoded)
    if stages is not None:
        for name, value in seconds.items():
            stages[name] = stages.get(name, 0.0) + value
    return {**rendered.record, **measures, "warnings": (rendered.notices + notices) or None,
            "quality_seconds": len(y) / job.preset.audio.sample_rate,
            "seconds_render": seconds["invert"] + seconds["encode"],
            "seconds_quality": seconds["quality"], "seconds_write": seconds["write"]}


def render_pair(job: PairJob, parts: list[SegmentsResult], fmt: str = "wav",
                stages: dict[str, float] | None = None,
                quality_seconds: float | None = QUALITY_SECONDS) -> dict[str, Any]:
    """:func:`invert_pair` then :func:`finish_pair`, in one process."""
    return finish_pair(job, invert_pair(job, parts), fmt, stages, quality_seconds)


def _segment_rows(parts: list[SegmentsResult]) -> list[dict[str, Any]]:
    """One dict per optimised segment: its losses, rollbacks, time and node."""
    segments = []
    for part in parts:
        for offset in range(len(part.result.mels)):
            column = part.result.loss[:, offset]
            segments.append({
                "segment_index": part.start + offset,
                "loss_start": float(column[0]), "loss_end": float(column[-1]),
                "content_loss_end": float(part.result.content_loss[-1, offset]),
                "style_loss_end": float(part.result.style_loss[-1, offset]),
                "rollbacks": int(part.result.rollbacks[offset]),
                "gave_up": bool(part.result.gave_up[offset]),
                "seconds": part.seconds / len(part.result.mels), "worker_node": part.node,
            })
    return segments


def loss_record(result: NSTResult) -> dict[str, Any]:
    """A piece's losses at the start and end (means over segments), its loss
    curve (``iterations + 1`` values, mean over segments) and its rollbacks."""
    from amnst.engine.nst import piece_loss_curve

    return {
        "loss_curve": piece_loss_curve(result).tolist(),
        "loss_start": float(result.loss[0].mean()), "loss_end": float(result.loss[-1].mean()),
        "content_loss_start": float(result.content_loss[0].mean()),
        "content_loss_end": float(result.content_loss[-1].mean()),
        "style_loss_start": float(result.style_loss[0].mean()),
        "style_loss_end": float(result.style_loss[-1].mean()),
        "rollbacks": int(result.rollbacks.sum()),
    }
