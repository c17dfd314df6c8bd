"""Run and time the programs :mod:`amnst.bench.xla_export` wrote, on any XLA device.

Needs NumPy and jaxlib only, not TensorFlow: ``python -m amnst.bench.xla_replay
FOLDER [--json FIGURES.json]``. For each program it compiles the HLO for the
first device of jaxlib's default backend (a GPU where there is one), checks
its outputs against TensorFlow's from the same inputs, and times it:

- a step program: its set-up (content features and optimiser state), then
  ``iterations`` steps (the preset's), the state fed back on the device as
  :meth:`amnst.engine.nst.StyleTransfer.optimise` does; figures are
  segment-iterations per second and seconds per second of audio (a segment
  advances the piece by its hop: the segment less the overlap);
- the inversion: one run over its pair, judged by spectral convergence.

Times are the best of ``repeats`` after a warm-up run, or means over a
``duration``. HLO becomes StableHLO through jaxlib's own converter, an
internal API (``_xla.mlir.hlo_to_stablehlo``), seen working in jaxlib 0.10.2
and 0.11.2.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def compile_hlo(path: Path) -> tuple[Any, Any]:
    """Compile a serialised ``HloModuleProto`` for the default backend's first device."""
    import jax
    from jax._src.lib import xla_client

    device = jax.devices()[0]
    module = xla_client._xla.mlir.hlo_to_stablehlo(path.read_bytes())
    client = device.client
    return client.compile_and_load(module, xla_client.DeviceList((device,)), xla_client.CompileOptions()), device


def replay(folder: Path, repeats: int = 3, batches: tuple[int, ...] = (), invert: bool = True,
           iterations: int | None = None, duration: float | None = None) -> dict[str, Any]:
    """Check and time the programs of an export folder (the step programs of
    ``batches`` only, if given; the inversion if ``invert``) with ``iterations``
    steps per optimisation (default: the preset's); return the figures.
    Optimisations are timed as the best of ``repeats``, or, given a
    ``duration``, as the mean over that many seconds of back-to-back runs."""
    import jax

    manifest = json.loads((folder / "programs.json").read_text())
    pair = np.load(folder / "pair.npz")
    grams = [pair[f"gram_{i}"] for i in range(sum(k.startswith("gram_") for k in pair))]
    iterations = manifest["iterations"] if iterations is None else iterations
    hop = manifest["segment_hop_seconds"]
    rows = []
    for program in manifest["steps"]:
        if batches and program["batch"] not in batches:
            continue
        batch, size = program["batch"], program["state_size"]
        started = time.perf_counter()
        prepare, device = compile_hlo(folder / f"{program['prepare']}.hlo.pb")
        step, _ = compile_hlo(folder / f"{program['step']}.hlo.pb")
        compile_seconds = time.perf_counter() - started
        segments = pair["segments"]
        inputs = [jax.device_put(np.resize(a, (batch, *a.shape[1:])), device)
                  for a in (segments, pair["start"] if "start" in pair else segments)]
        constants = [jax.device_put(g, device) for g in grams]
        counters = [jax.device_put(np.float32(i), device)
                    for i in range(max(iterations, manifest["check"]["iterations"], 1))]

        def optimise(steps: int, prepare=prepare, step=step, inputs=inputs, constants=constants) -> list[Any]:
            prepared = prepare.execute(inputs)
            state, content = prepared[:size], prepared[size:]
            outputs = state
            for i in range(steps):
                outputs = step.execute([*state, *content, *constants, counters[i]])
                state = outputs[:size]
            return outputs

        row = {"batch": batch, "compile_seconds": compile_seconds}
        if batch == manifest["check"]["batch"]:
            outputs = optimise(manifest["check"]["iterations"])
            expected = np.load(folder / "check.npz")
            got = {"x": outputs[0], "loss": outputs[size], "content_loss": outputs[size + 1],
                   "style_loss": outputs[size + 2]}
            row["check"] = {f"{k}_relative_error": _relative_error(got[k], expected[k])
                            for k in ("loss", "content_loss", "style_loss")}
            # Adam's first updates are about lr * sign(gradient), so entries whose
            # gradient is at rounding level may step either way: compare means.
            row["check"]["x_mean_absolute_difference"] = float(np.mean(np.abs(np.asarray(got["x"]) - expected["x"])))
        seconds = (_mean_time(lambda: optimise(iterations), duration) if duration
                   else _best_time(lambda: optimise(iterations), repeats))
        rows.append({**row, "timing": f"mean over {duration:g} s" if duration else f"best of {repeats}",
                     "optimise_seconds": seconds,
                     "segment_iterations_per_second": batch * iterations / seconds,
                     "per_audio_second": seconds / (batch * hop)})
    figures = {"device": device.device_kind, "platform": device.platform, "jax": jax.__version__,
               "export": {k: v for k, v in manifest.items() if k not in ("steps", "inversion")},
               "optimise": rows}
    inversion = manifest.get("inversion")
    if not (invert and inversion):
        return figures
    executable, device = compile_hlo(folder / f"{inversion['name']}.hlo.pb")
    arrays = np.load(folder / f"{inversion['name']}.npz")
    buffers = [jax.device_put(arrays[k], device) for k in ("mel_frames", "phase")]
    audio = np.asarray(executable.execute(buffers)[0])[0]
    convergence = spectral_convergence(audio, arrays["mel_frames"][0], arrays["mel_basis"], inversion)
    seconds = _best_time(lambda: executable.execute(buffers), repeats)
    return {**figures, "invert": {**inversion, "spectral_convergence": convergence, "invert_seconds": seconds,
                                  "per_audio_second": seconds / inversion["audio_seconds"]}}


def spectral_convergence(audio: np.ndarray, mel_frames: np.ndarray, basis: np.ndarray,
                         stft: dict[str, Any]) -> float:
    """:func:`amnst.engine.invert.spectral_convergence` in NumPy alone.

    ``audio`` is ``(n_samples,)``, the target ``mel_frames`` ``(n_frames,
    n_mels)``, ``basis`` the mel filter bank ``(n_mels, n_bins)``; ``stft``
    gives ``n_fft``, ``hop_length`` and ``mel_power``. The STFT is
    librosa's: centred with zero padding, periodic Hann window.
    """
    n_fft, hop = stft["n_fft"], stft["hop_length"]
    padded = np.pad(audio.astype(np.float64), n_fft // 2)
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    mel = np.abs(np.fft.rfft(frames * window, axis=-1)) ** stft["mel_power"] @ basis.T
    n_frames = len(mel_frames)
    mel = np.pad(mel[:n_frames], [(0, max(0, n_frames - len(mel))), (0, 0)])
    return float(np.linalg.norm(mel - mel_frames) / np.linalg.norm(mel_frames))


def _relative_error(got: Any, want: np.ndarray) -> float:
    """``max|got - want| / max|want|``."""
    return float(np.max(np.abs(np.asarray(got) - want)) / max(float(np.max(np.abs(want))), 1e-30))


def _best_time(run: Callable[[], list[Any]], repeats: int) -> float:
    _wait(run())
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        _wait(run())
        times.append(time.perf_counter() - started)
    return min(times)


def _mean_time(run: Callable[[], list[Any]], duration: float) -> float:
    """Mean seconds per run over back-to-back runs for ``duration`` seconds:
    the throughput figure when several processes share the device."""
    _wait(run())
    started, runs = time.perf_counter(), 0
    while time.perf_counter() - started < duration:
        _wait(run())
        runs += 1
    return (time.perf_counter() - started) / runs


def _wait(outputs: list[Any]) -> None:
    for output in outputs:
        output.block_until_ready()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m amnst.bench.xla_replay", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a folder written by `amnst bench export-xla`")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per program (best is kept)")
    parser.add_argument("--batch", type=int, action="append", default=[],
                        help="time the step at this batch size only (repeatable)")
    parser.add_argument("--no-invert", action="store_true", help="leave the inversion out")
    parser.add_argument("--duration", type=float,
                        help="time each step program as the mean over this many seconds of runs "
                             "(for several processes sharing a device) instead of the best of --repeats")
    parser.add_argument("--iterations", type=int, help="steps per timed optimisation (default: the preset's)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    figures = replay(args.folder, args.repeats, tuple(args.batch), not args.no_invert, args.iterations,
                     args.duration)
    text = json.dumps(figures, indent=1)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
