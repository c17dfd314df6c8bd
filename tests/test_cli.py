"""The `amnst` command end to end: transfer, demo, help, and one-line errors for bad input."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from amnst import nightly, synth
from amnst.cli import build_parser, main, preset_from_args, run_options_from_args
from amnst.config import get_preset
from tests.conftest import write_wav


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    return (write_wav(folder / "music.wav", synth.music(6.0, seed=1)),
            write_wav(folder / "rain.wav", synth.rain(5.0, seed=1)))


@pytest.mark.parametrize("preset", ["default", "seed"])
def test_transfer_writes_audio_of_the_content_length(inputs, tmp_path, capsys, preset):
    content, style = inputs
    out = tmp_path / "out.flac"
    assert main(["transfer", str(content), str(style), "-o", str(out), "--preset", preset,
                 "--iterations", "2"]) == 0
    y, rate = sf.read(out)
    assert rate == 22050 and len(y) == len(sf.read(content)[0])
    assert np.all(np.isfinite(y)) and np.max(np.abs(y)) > 0.01
    summary = capsys.readouterr().out
    assert f"wrote {out}" in summary and "loss" in summary and "optimise" in summary


def test_transfer_as_a_subprocess(inputs, tmp_path):
    content, style = inputs
    out = tmp_path / "out.wav"
    done = subprocess.run([sys.executable, "-m", "amnst.cli", "transfer", str(content), str(style),
                           "-o", str(out), "--iterations", "1", "--style-layers", "4,8"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert out.is_file() and "seconds:" in done.stdout


def _bad_inputs(folder):
    empty = folder / "empty.wav"
    empty.write_bytes(b"")
    noise = folder / "noise.mp3"
    noise.write_bytes(np.random.default_rng(0).bytes(5000))
    silent = write_wav(folder / "silent.wav", np.zeros(22050 * 2, np.float32))
    truncated = folder / "truncated.wav"
    truncated.write_bytes(write_wav(folder / "whole.wav", synth.hum(1.0)).read_bytes()[:30])
    return {"missing": (folder / "missing.wav", "no such file"), "empty": (empty, "empty"),
            "noise": (noise, "cannot decode"), "silent": (silent, "silent"),
            "truncated": (truncated, "cannot decode")}


@pytest.mark.parametrize("case", ["missing", "empty", "noise", "silent", "truncated"])
@pytest.mark.parametrize("role", ["content", "style"])
def test_bad_input_gives_one_line_naming_it(inputs, tmp_path, capsys, case, role):
    bad, reason = _bad_inputs(tmp_path)[case]
    content, style = inputs
    args = [str(bad), str(style)] if role == "content" else [str(content), str(bad)]
    out = tmp_path / "out.wav"
    assert main(["transfer", *args, "-o", str(out), "--iterations", "1"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and reason in lines[0]
    assert not out.exists()


@pytest.mark.parametrize("option, message", [
    (["--style-layers", "4,99"], "style_layers"),
    (["--content-layers", "a,b"], "comma-separated"),
    (["--init", "sideways"], "init"),
    (["--iterations", "-3"], "iterations"),
    (["--preset", "loud"], "unknown preset"),
    (["--lr", "0"], "learning_rate"),
    (["--content-weight", "-1"], "content_weight"),
    (["--preset", "seed", "--spectral-style-weight", "1"], 'needs gram_norm="positions"'),
    (["--strength", "1.5"], "strength=1.5 must be in [0, 1]"),
    (["--strength", "-0.1"], "strength=-0.1 must be in [0, 1]"),
    (["--strength", "nan"], "strength=nan must be in [0, 1]"),
])
def test_bad_option_values_are_refused_before_any_work(inputs, tmp_path, capsys, option, message):
    content, style = inputs
    out = tmp_path / "out.wav"
    assert main(["transfer", str(content), str(style), "-o", str(out), *option]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not out.exists()


@pytest.mark.parametrize("command", [["transfer", "c.wav", "s.wav", "-o", "o.wav"],
                                     ["run", "m.csv", "--output", "out"]])
def test_strength_reaches_the_preset(command, capsys):
    parser = build_parser()
    assert preset_from_args(parser.parse_args(command)).nst.strength == get_preset("default").nst.strength
    assert preset_from_args(parser.parse_args([*command, "--strength", "0.25"])).nst.strength == 0.25
    assert preset_from_args(parser.parse_args([*command, "--preset", "seed", "--strength", "0"])).nst.strength == 0
    with pytest.raises(SystemExit):
        parser.parse_args([*command[:1], "--help"])
    assert "--strength" in capsys.readouterr().out


def test_run_and_nightly_carry_strength_into_their_options(tmp_path):
    run = build_parser().parse_args(["run", "m.csv", "--output", str(tmp_path), "--strength", "0.5"])
    assert run_options_from_args(run).preset.nst.strength == 0.5
    night = nightly.build_parser().parse_args(["--manifests", str(tmp_path), "--output", str(tmp_path),
                                               "--strength", "0.75"])
    assert run_options_from_args(night).preset.nst.strength == 0.75


def test_run_and_nightly_refuse_a_bad_strength_before_starting(tmp_path, capsys):
    manifest = tmp_path / "m.csv"
    manifest.write_text("content,style\na.wav,b.wav\n")
    out = tmp_path / "out"
    assert main(["run", str(manifest), "--output", str(out), "--strength", "1.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["amnst: error: strength=1.5 must be in [0, 1]"]
    assert nightly.main(["--manifests", str(tmp_path), "--output", str(out), "--strength", "-0.1"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == ["nightly: error: strength=-0.1 must be in [0, 1]"]
    assert not out.exists()


def test_bad_output_name_and_missing_weights(inputs, tmp_path, capsys):
    content, style = inputs
    assert main(["transfer", str(content), str(style), "-o", str(tmp_path / "out.mp4")]) == 2
    assert "out.mp4" in capsys.readouterr().err
    assert main(["transfer", str(content), str(style), "-o", str(tmp_path / "o.wav"),
                 "--weights", str(tmp_path / "nope.npz")]) == 1
    assert "nope.npz: no such weight file" in capsys.readouterr().err
    assert not (tmp_path / "o.wav").exists()


@pytest.mark.parametrize("command", [[], ["transfer"], ["run"], ["assess"], ["demo"], ["weights"], ["weights", "import"],
                                     ["bench"], ["bench", "nst"], ["bench", "invert"], ["bench", "pipeline"], ["bench", "quality"],
                                     ["bench", "e2e"], ["bench", "capacity"], ["report"]])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([*command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: amnst" in capsys.readouterr().out
