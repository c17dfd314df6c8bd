"""The CNN's precision: bfloat16 where the device has it, float32 otherwise, and
bfloat16's results within the quality tolerance of float32's."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from amnst.bench import evaluation
from amnst.config import ConfigError, get_preset
from amnst.engine import model, precision, quality
from amnst.engine.nst import StyleTransfer
from amnst.batch.pipeline import transfer_pair

# How far bf16 may move a quality measure from fp32's (issue: 0.01 on the evaluation set).
TOLERANCE = 0.01
MEASURES = ("chroma_similarity", "onset_correlation", "mfcc_progress", "gram_progress", "texture_progress")


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16\n\nprocessor\t: 1\nflags\t: fpu\n")
    assert precision.cpu_flags(cpuinfo) == {"fpu", "sse", "avx512f", "avx512_bf16"}
    assert precision.cpu_flags(tmp_path / "absent") == frozenset()


def test_auto_is_bf16_only_where_the_cpu_has_it():
    # No GPU in the test run: the CPU's flags decide.
    assert precision.native_bf16(frozenset({"avx512f", "amx_bf16"}))
    assert not precision.native_bf16(frozenset({"avx512f", "avx2"}))
    assert precision.resolve("fp32") == "fp32"
    assert precision.resolve("auto") == ("bf16" if precision.native_bf16() else "fp32")
    assert precision.resolve("auto", frozenset({"avx512f", "avx2"})) == "fp32"


def test_bf16_is_refused_on_a_cpu_without_avx512():
    # oneDNN has no bfloat16 convolution below AVX-512: a step would fail inside TensorFlow.
    assert precision.resolve("bf16", precision.CPU_BF16_MINIMUM_FLAGS) == "bf16"
    with pytest.raises(ValueError, match="precision=bf16 needs a GPU or a CPU with AVX-512"):
        precision.resolve("bf16", frozenset({"avx2", "fma"}))
    with pytest.raises(ValueError, match="must be fp32, bf16 or auto"):
        precision.resolve("fp16")


def test_precision_is_validated_and_seed_stays_fp32():
    assert get_preset("seed").nst.precision == "fp32"
    assert get_preset("default").nst.precision == "auto"
    with pytest.raises(ConfigError, match="precision"):
        get_preset("default").with_overrides(precision="fp16")


@pytest.mark.skipif(not precision.CPU_BF16_MINIMUM_FLAGS <= precision.cpu_flags(),
                    reason="this CPU has no AVX-512, so oneDNN has no bfloat16 convolution and the service "
                           "refuses bf16 here (test_bf16_is_refused_on_a_cpu_without_avx512); with AVX-512 "
                           "it runs, natively or emulated")
def test_bf16_results_are_fp32_results_within_the_tolerance():
    content, style = evaluation.evaluation_pair("pop-piano_rain", 8.0)
    preset = get_preset("default")
    cnn = model.build_model(seed=preset.nst.seed)
    measured = {}
    for name in ("fp32", "bf16"):
        chosen = dataclasses.replace(preset, nst=dataclasses.replace(preset.nst, precision=name))
        transfer = StyleTransfer(cnn, chosen.nst, audio=chosen.audio)
        assert transfer.precision == name
        outcome = transfer_pair(content, style, chosen, transfer)
        assert np.all(outcome.result.loss[-1] < outcome.result.loss[0])
        measured[name] = quality.assess(outcome.audio, content, style, chosen.audio, outcome.mel)
    moves = {m: abs(measured["bf16"][m] - measured["fp32"][m]) for m in MEASURES}
    assert max(moves.values()) <= TOLERANCE, moves
