"""The exported XLA programs compute what TensorFlow computes, run without TensorFlow."""

import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from amnst.bench import evaluation
from amnst.engine.audio import mel_basis, mel_spectrogram
from amnst.config import get_preset
from amnst.engine.invert import mel_to_audio, spectral_convergence
from amnst.bench.xla_export import _write_hlo, export_programs
from amnst.bench.xla_replay import spectral_convergence as numpy_spectral_convergence

PRESET = get_preset("default")


@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    """Programs for batches 1 and 3 of a 6 s pair, replayed by jaxlib's CPU
    backend in a process that never imports TensorFlow."""
    folder = tmp_path_factory.mktemp("xla")
    manifest = export_programs(folder, batches=(1, 3), seconds=6.0, check_iterations=2)
    figures = folder / "figures.json"
    code = ("import sys, runpy; sys.argv = sys.argv[1:]; runpy.run_module('amnst.bench.xla_replay', run_name='__main__');"
            "assert 'tensorflow' not in sys.modules, 'the replay imported TensorFlow'")
    subprocess.run([sys.executable, "-c", code, "xla_replay", str(folder), "--repeats", "1",
                    "--iterations", "2", "--json", str(figures)], check=True, timeout=600)
    return manifest, json.loads(figures.read_text())


def test_the_replayed_step_matches_tensorflow(replayed):
    manifest, figures = replayed
    assert figures["platform"] == "cpu"
    assert [row["batch"] for row in figures["optimise"]] == [1, 3]
    check = figures["optimise"][0]["check"]
    for loss in ("loss", "content_loss", "style_loss"):
        assert check[f"{loss}_relative_error"] < 1e-5
    assert check["x_mean_absolute_difference"] < 1e-3
    for row in figures["optimise"]:
        assert row["segment_iterations_per_second"] > 0
        assert row["per_audio_second"] == pytest.approx(
            row["optimise_seconds"] / (row["batch"] * manifest["segment_hop_seconds"]))


def test_the_replayed_inversion_reconstructs_as_well_as_tensorflow(replayed):
    _, figures = replayed
    invert = figures["invert"]
    assert invert["audio_seconds"] == pytest.approx(6.0)
    assert invert["spectral_convergence"] == pytest.approx(invert["tensorflow_spectral_convergence"], abs=1e-3)
    assert invert["spectral_convergence"] < 0.2


def test_the_numpy_spectral_convergence_is_the_engines():
    content, _ = evaluation.evaluation_pair("waltz-pluck_choir", 3.0, PRESET.audio.sample_rate)
    mel = mel_spectrogram(content, PRESET.audio)
    y = mel_to_audio(mel, PRESET.audio, n_iter=4, length=len(content))
    stft = {"n_fft": PRESET.audio.n_fft, "hop_length": PRESET.audio.hop_length, "mel_power": PRESET.audio.mel_power}
    assert numpy_spectral_convergence(y, mel.T, mel_basis(PRESET.audio), stft) == pytest.approx(
        spectral_convergence(y, mel, PRESET.audio), rel=1e-4)


def test_a_function_that_captures_a_tensor_is_refused(tmp_path):
    captured = tf.constant(np.ones(3, np.float32))
    function = tf.function(lambda x: x * captured, jit_compile=True)
    with pytest.raises(ValueError, match="captures 1 tensors"):
        _write_hlo(tmp_path / "f.hlo.pb", function, (tf.ones(3),))
