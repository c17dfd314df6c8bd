"""The engine's compiled programs as XLA HLO, to run where TensorFlow is not.

TensorFlow lowers a ``tf.function`` to XLA HLO (the IR its ``jit_compile``
path hands to XLA). This module writes that HLO for the two GPU stages of a
pair, the ``default`` NST step and the fast inversion, with the inputs of a
synthesized pair and the outputs TensorFlow computes from them, so that
:mod:`amnst.bench.xla_replay` (which needs only NumPy and jaxlib) can compile the
same programs for any XLA device, check them against TensorFlow and time
them. It is how GPU figures are measured on a machine whose image has XLA but
no TensorFlow build for its CUDA.

A folder holds ``programs.json`` (what each program is and how to feed it),
``NAME.hlo.pb`` per program (a serialised ``HloModuleProto``), ``pair.npz``
(the pair's content segments, starting mels where they differ, and style
Grams), ``check.npz`` (TensorFlow's target and losses after a few steps) and
``invert_LENGTH.npz`` (the inversion's inputs and the mel basis). Step
programs are written per batch size: XLA's shapes are static.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from amnst.bench import evaluation
from amnst.engine.audio import mel_basis, mel_spectrogram, segment
from amnst.config import Preset, get_preset
from amnst.engine.invert import DEFAULT_MOMENTUM, initial_phase, fast_inversion, spectral_convergence
from amnst.engine.model import build_model
from amnst.engine.nst import StyleTransfer

EXPORT_PAIR = "pop-piano_rain"
# One segment; one 30 s pair (7 segments); then larger batches.
DEFAULT_BATCHES = (1, 7, 14, 28, 56)


def export_programs(folder: Path, batches: tuple[int, ...] = DEFAULT_BATCHES,
                    seconds: float = 30.0, check_iterations: int = 3,
                    tf32: bool = True, invert: bool = True, precision: str = "fp32") -> dict[str, Any]:
    """Write the ``default`` preset's programs for each batch size, and the
    inversion of the content, into ``folder``; return the manifest.

    The pair is ``EXPORT_PAIR`` of the evaluation set, ``seconds`` long.

    Per batch size ``B``: ``prepare_bB`` maps content segments and starting
    mels ``(B, n_mels, frames)`` to the step's state and content targets
    (:meth:`StyleTransfer.prepare_graph`), and ``step_bB`` is one update
    (:meth:`StyleTransfer.step_graph`), whose first inputs and outputs are the
    state. A batch repeats the pair's segments as far as it needs
    (``numpy.resize``). TensorFlow's results are recorded for the first batch
    size after ``check_iterations`` steps (the target and the losses), and for
    the inversion (left out if not ``invert``). ``tf32=False`` forbids
    TensorFloat-32 in the lowered convolutions and products (full fp32 on GPUs
    that have it); the process's setting is restored afterwards. ``precision``:
    the CNN's (``NSTConfig.precision``, ``"fp32"`` or ``"bf16"``), as the manifest records.
    """
    allowed = tf.config.experimental.tensor_float_32_execution_enabled()
    tf.config.experimental.enable_tensor_float_32_execution(tf32)
    try:
        return _export(folder, batches, seconds, check_iterations, tf32, invert, precision)
    finally:
        tf.config.experimental.enable_tensor_float_32_execution(allowed)


def _export(folder: Path, batches: tuple[int, ...], seconds: float, check_iterations: int,
            tf32: bool, invert: bool, precision: str) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    preset = get_preset("default").with_overrides(precision=precision)
    content, style = evaluation.evaluation_pair(EXPORT_PAIR, seconds, preset.audio.sample_rate)
    content_mel = mel_spectrogram(content, preset.audio)
    transfer = StyleTransfer(build_model(), preset.nst)
    targets = transfer.style_targets(segment(mel_spectrogram(style, preset.audio), preset.audio))
    segments = segment(content_mel, preset.audio)
    start = transfer.initial_target(segments, targets, np.arange(len(segments)))
    grams = tuple(tf.constant(g) for g in targets.grams)
    # The starting mels are stored only where they are not the content itself.
    np.savez_compressed(folder / "pair.npz", segments=segments,
                        **({} if np.array_equal(start, segments) else {"start": start}),
                        **{f"gram_{i}": g for i, g in enumerate(targets.grams)})
    # One traced function each, lowered once per batch size.
    prepare = tf.function(transfer.prepare_graph, jit_compile=True)
    step = tf.function(transfer.step_graph, jit_compile=True)
    programs, first_inputs = [], None
    for batch in batches:
        inputs = (_repeat(segments, batch), _repeat(start, batch))
        _write_hlo(folder / f"prepare_b{batch}.hlo.pb", prepare, inputs)
        state, content_targets = transfer.prepare_graph(*inputs)
        step_inputs = (state, content_targets, grams, tf.constant(0.0))
        _write_hlo(folder / f"step_b{batch}.hlo.pb", step, step_inputs)
        programs.append({"batch": batch, "prepare": f"prepare_b{batch}", "step": f"step_b{batch}",
                         "state_size": len(tf.nest.flatten(state))})
        first_inputs = first_inputs or step_inputs
    # TensorFlow's own result for the first batch size, from its plain (non-XLA) graph.
    state, content_targets, _, _ = first_inputs
    reference = tf.function(transfer.step_graph)
    for iteration in range(check_iterations):
        state, loss, content_loss, style_loss, _ = reference(state, content_targets, grams,
                                                             tf.constant(float(iteration)))
    np.savez_compressed(folder / "check.npz", x=np.asarray(state[0]), loss=np.asarray(loss),
                        content_loss=np.asarray(content_loss), style_loss=np.asarray(style_loss))
    inversion = _export_inversion(folder, preset, content_mel, len(content)) if invert else None
    manifest = {"preset": preset.name, "pair": EXPORT_PAIR, "tf32": tf32, "precision": precision,
                "tensorflow": tf.__version__,
                # How far each of the pair's (fitted) segments advances the piece.
                "segment_hop_seconds": (segments.shape[2] - preset.audio.overlap_frames)
                * preset.audio.hop_length / preset.audio.sample_rate,
                "iterations": preset.nst.iterations,
                "check": {"batch": programs[0]["batch"], "iterations": check_iterations},
                "steps": programs, "inversion": inversion}
    (folder / "programs.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def _export_inversion(folder: Path, preset: Preset, mel: np.ndarray, length: int) -> dict[str, Any]:
    """The fast inversion of one stitched mel ``(n_mels, frames)`` to ``length`` samples."""
    audio, iterations = preset.audio, preset.nst.griffin_lim_iters

    def invert(mel_frames: tf.Tensor, phase: tf.Tensor) -> tf.Tensor:
        return fast_inversion(mel_frames, phase, audio, iterations, length, DEFAULT_MOMENTUM)

    frames = mel.T[None].astype(np.float32)
    phase = initial_phase(audio.n_fft // 2 + 1, frames.shape[1], 1, 0)
    inputs = (tf.constant(frames), tf.constant(phase))
    name = f"invert_{length}"
    _write_hlo(folder / f"{name}.hlo.pb", tf.function(invert, jit_compile=True), inputs)
    # Griffin-Lim's phases drift apart under any rounding difference, so the
    # replay is judged by its spectral convergence, not sample by sample.
    convergence = spectral_convergence(np.asarray(invert(*inputs))[0], mel, audio)
    np.savez_compressed(folder / f"{name}.npz", mel_frames=frames, phase=phase, mel_basis=mel_basis(audio))
    return {"name": name, "audio_seconds": length / audio.sample_rate, "griffin_lim_iters": iterations,
            "n_fft": audio.n_fft, "hop_length": audio.hop_length, "mel_power": audio.mel_power,
            "tensorflow_spectral_convergence": convergence}


def _repeat(segments: np.ndarray, batch: int) -> tf.Tensor:
    """``batch`` segments: ``segments`` cut short or repeated."""
    return tf.constant(np.resize(segments, (batch, *segments.shape[1:])))


def _write_hlo(path: Path, function: Any, inputs: Any) -> None:
    captured = function.get_concrete_function(*inputs).captured_inputs
    if captured:
        # A captured tensor becomes an extra parameter the replay cannot feed.
        raise ValueError(f"{path.name}: the function captures {len(captured)} tensors; make them constants")
    path.write_bytes(function.experimental_get_compiler_ir(*inputs)(stage="hlo_serialized"))
