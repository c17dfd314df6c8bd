"""The `amnst` command end to end: transfer, demo, help, and one-line errors for bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from amnst import synth
from amnst.cli import nightly as cli
from amnst.cli import build_parser, main
from amnst.cli.options import CommandError, preset_from_args, run_options_from_args
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


def test_transfer_warns_of_a_truncated_input_and_uses_it(inputs, tmp_path, capsys):
    content, style = inputs
    cut = tmp_path / "cut.wav"
    cut.write_bytes(content.read_bytes()[:content.stat().st_size // 2])
    out = tmp_path / "out.wav"
    assert main(["transfer", str(cut), str(style), "-o", str(out), "--iterations", "1"]) == 0
    err = capsys.readouterr().err
    assert f"warning: {cut}: truncated: its header promises 132300 frames (6.00 s)" in err
    assert len(sf.read(out)[0]) < 132300


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


def _status_and_errors(argv, capsys, run=main):
    """The exit status of ``run(argv)`` (an argparse refusal exits) and its stderr lines."""
    try:
        status = run(argv)
    except SystemExit as exit_:
        status = exit_.code
    return status, capsys.readouterr().err.strip().splitlines()


@pytest.fixture
def no_decoding(monkeypatch):
    """Fails the test if any audio is decoded or any Ray instance is started."""
    import amnst.engine.audio
    import amnst.batch.ray_runner

    def refuse(*args, **kwargs):
        raise AssertionError("work began before every option was judged")
    monkeypatch.setattr(amnst.engine.audio, "decode", refuse)
    monkeypatch.setattr(amnst.batch.ray_runner, "connect", refuse)


BAD_NST_OPTIONS = [
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
    # Issue 17: each once ran (or failed late) instead of being refused here.
    (["--seed", "-5"], "seed=-5 must be an integer in [0, 2**32)"),
    (["--seed", "4294967296"], "seed=4294967296 must be an integer in [0, 2**32)"),
    (["--content-weight", "inf"], "content_weight=inf must be finite"),
    (["--style-weight", "nan"], "style_weight=nan must be finite"),
    (["--spectral-style-weight=-inf"], "spectral_style_weight=-inf must be finite"),
    (["--lr", "inf"], "learning_rate=inf must be finite"),
    (["--strength", "inf"], "strength=inf must be in [0, 1]"),
    (["--preset", "seed", "--style-layers", ""], "style_layers=() leaves no style loss"),
    (["--style-layers", ""], "style_layers=() and content_layers=() cannot both be empty"),
    (["--preset", "seed", "--content-weight", "0", "--style-weight", "0"], "no loss to optimise"),
    (["--content-layers", "0,20"], "content_layers=(0, 20) holds 20"),
    (["--style-layers", "-1"], "style_layers=(-1,) holds -1"),
    (["--style-layers", "4,4"], "style_layers=(4, 4) has duplicates"),
    (["--iterations", "1.5"], "argument --iterations: invalid int value: '1.5'"),
    (["--seed", "x"], "argument --seed: invalid int value: 'x'"),
]


@pytest.mark.parametrize("content_exists", [True, False], ids=["content", "missing-content"])
@pytest.mark.parametrize("option, message", BAD_NST_OPTIONS)
def test_bad_option_values_are_refused_before_any_work(inputs, tmp_path, capsys, no_decoding, option, message,
                                                       content_exists):
    content, style = inputs
    content = content if content_exists else tmp_path / "missing.wav"
    out = tmp_path / "out.wav"
    status, err = _status_and_errors(["transfer", str(content), str(style), "-o", str(out), *option], capsys)
    # The option is named, not the missing file: it is judged before any file is looked at.
    assert status == 2 and len(err) == 1 and message in err[0], err
    assert not out.exists()


@pytest.mark.parametrize("option, message", [
    (["--seed", "-5"], "seed=-5"), (["--content-weight", "inf"], "content_weight=inf"),
    (["--strength", "nan"], "strength=nan"), (["--preset", "seed", "--style-layers", ""], "no style loss"),
    (["--segments-per-task", "0"], "argument --segments-per-task: 0 is not positive"),
    (["--num-gpus-per-task", "-1"], "argument --num-gpus-per-task: -1 is negative"),
    (["--num-cpus-per-task", "nan"], "argument --num-cpus-per-task: nan is not a finite number"),
    (["--num-cpus-per-task", "0"], "argument --num-cpus-per-task: 0 is not positive"),
    (["--max-in-flight", "1"], "argument --max-in-flight: 1 is below 2"),
    (["--metadata-flush-seconds", "inf"], "argument --metadata-flush-seconds: inf is not a finite number"),
    (["--metrics-port", "70000"], "argument --metrics-port: 70000 is not a port"),
    (["--metrics-port", "-1"], "argument --metrics-port: -1 is not a port"),
])
def test_run_and_nightly_refuse_bad_values_before_ray(tmp_path, capsys, no_decoding, option, message):
    missing = tmp_path / "missing.csv"  # the option is reported, not the manifest
    out = tmp_path / "out"
    status, err = _status_and_errors(["run", str(missing), "--output", str(out), *option], capsys)
    assert status == 2 and len(err) == 1 and message in err[0], err
    status, err = _status_and_errors(["--manifests", str(tmp_path), "--output", str(out), *option], capsys,
                                     cli.nightly_main)
    assert status == 2 and len(err) == 1 and message in err[0], err
    assert not out.exists()


@pytest.mark.parametrize("argv, message", [
    (["train", "--workers", "0"], "argument --workers: 0 is not positive"),
    (["train", "--epochs", "-1"], "argument --epochs: -1 is not positive"),
    (["train", "--gpus-per-worker", "nan"], "argument --gpus-per-worker: nan is not a finite number"),
    (["train", "--cpus-per-worker", "0"], "argument --cpus-per-worker: 0 is not positive"),
    (["train", "--batch-size", "0"], "argument --batch-size: 0 is not positive"),
    (["train", "--lr", "inf"], "argument --lr: inf is not a finite number"),
    (["train", "--val-fraction", "1"], "argument --val-fraction: 1 is not in (0, 1)"),
    (["train", "--seed", "-1"], "argument --seed: -1 is not in [0, 2**32)"),
    (["evaluate", "--weights", "w.npz", "--val-fraction", "nan"], "argument --val-fraction: nan is not a finite"),
    (["evaluate", "--weights", "w.npz", "--seed", "4294967296"], "argument --seed: 4294967296 is not in"),
    (["bench", "e2e", "--workers", "-1"], "argument --workers: -1 is negative"),
    (["bench", "e2e", "--segments-per-task", "0"], "argument --segments-per-task: 0 is not positive"),
    (["bench", "e2e", "--seconds", "10", "inf"], "argument --seconds: inf is not a finite number"),
    (["bench", "e2e", "--rounds", "0"], "argument --rounds: 0 is not positive"),
    (["bench", "capacity", "--pairs", "0"], "argument --pairs: 0 is not positive"),
    (["bench", "capacity", "--pair-seconds", "nan"], "argument --pair-seconds: nan is not a finite number"),
    (["bench", "capacity", "--window-hours", "-1"], "argument --window-hours: -1 is not positive"),
    (["bench", "capacity", "--gpu-fraction", "2"], "argument --gpu-fraction: 2 is not in (0, 1]"),
    (["bench", "quality", "--seconds", "nan"], "argument --seconds: nan is not a finite number"),
    (["bench", "export-xla", "xla", "--batch", "0"], "argument --batch: 0 is not positive"),
    (["demo", "--seconds", "inf"], "argument --seconds: inf is not a finite number"),
    (["submit", "nst", "--entrypoint-num-cpus", "-1", "--", "m.csv"], "argument --entrypoint-num-cpus: -1 is negative"),
    (["submit", "nst", "--entrypoint-memory", "-5", "--", "m.csv"], "argument --entrypoint-memory: -5 is negative"),
    # A job's own arguments are judged as its script will judge them, before any server is asked.
    (["submit", "nst", "--", "m.csv", "--output", "out", "--seed", "-5"],
     "jobs/nst_batch.py: seed=-5 must be an integer in [0, 2**32)"),
    (["submit", "nst", "--", "m.csv", "--output", "out", "--max-in-flight", "0"],
     "jobs/nst_batch.py: argument --max-in-flight: 0 is below 2"),
    (["submit", "train", "--", "--data", "d", "--output", "o", "--epochs", "0"],
     "jobs/train_cnn.py: argument --epochs: 0 is not positive"),
    (["submit", "nightly", "--", "--manifests", "m", "--output", "o", "--strength", "2"],
     "jobs/nightly.py: strength=2.0 must be in [0, 1]"),
])
def test_every_numeric_option_refuses_nan_inf_and_meaningless_values(tmp_path, capsys, no_decoding, argv, message):
    if argv[0] in ("train", "evaluate"):
        argv = [*argv[:1], "--data", str(tmp_path / "data"), *(["--output", str(tmp_path / "o")]
                                                                 if argv[0] == "train" else []), *argv[1:]]
    if argv[0] == "submit":  # nothing listens there: the refusal must come first
        argv = [*argv[:2], "--address", "http://127.0.0.1:9", *argv[2:]]
    status, err = _status_and_errors(argv, capsys)
    assert status == 2 and len(err) == 1 and message in err[0], err


def test_a_bad_bench_variant_is_refused_before_measuring(tmp_path, capsys, no_decoding):
    status, err = _status_and_errors(["bench", "quality", "--variant", "default:seed=-1"], capsys)
    assert status == 2 and err == ["amnst: error: variant 'default:seed=-1': seed=-1 must be an integer in [0, 2**32)"]
    json_dir = tmp_path / "figures.json"
    json_dir.mkdir()
    status, err = _status_and_errors(["bench", "e2e", "--json", str(json_dir)], capsys)
    assert status == 2 and err == [f"amnst: error: {json_dir}: is a directory"]


def test_directories_and_missing_files_are_named_before_any_work(inputs, tmp_path, capsys, no_decoding):
    content, style = inputs
    folder = tmp_path / "folder.wav"
    folder.mkdir()
    out = tmp_path / "out.wav"
    for args in ([folder, style], [content, folder]):
        status, err = _status_and_errors(["transfer", *map(str, args), "-o", str(out)], capsys)
        assert (status, err) == (1, [f"amnst: error: {folder}: is a directory"])
    status, err = _status_and_errors(["transfer", str(content), str(style), "-o", str(folder)], capsys)
    assert (status, err) == (2, [f"amnst: error: {folder}: is a directory"])
    status, err = _status_and_errors(["transfer", str(content), str(style), "-o", str(out), "--weights",
                                      str(tmp_path)], capsys)
    assert (status, err) == (1, [f"amnst: error: {tmp_path}: is a directory"])
    status, err = _status_and_errors(["assess", str(folder), str(content), str(style)], capsys)
    assert (status, err) == (1, [f"amnst: error: {folder}: is a directory"])
    assert not out.exists()

    # A batch's manifest, output and weights, before Ray starts (no_decoding refuses connect).
    manifest = tmp_path / "m.csv"
    manifest.write_text("content,style\na.wav,b.wav\n")
    batch_out = tmp_path / "batch"
    for argv, expected in [
        ([str(tmp_path / "absent.csv")], (1, f"manifest {tmp_path / 'absent.csv'}: no such file")),
        ([str(tmp_path)], (1, f"manifest {tmp_path}: is a directory")),
        ([str(folder.with_name("m-folder.csv"))], None),
        ([str(manifest), "--weights", str(tmp_path / "w.npz")], (1, f"{tmp_path / 'w.npz'}: no such weight file")),
    ]:
        if expected is None:
            Path(argv[0]).mkdir()
            expected = (1, f"manifest {argv[0]}: is a directory")
        status, err = _status_and_errors(["run", *argv, "--output", str(batch_out)], capsys)
        assert (status, err) == (expected[0], [f"amnst: error: {expected[1]}"])
    status, err = _status_and_errors(["run", str(manifest), "--output", str(manifest)], capsys)
    assert (status, err) == (2, [f"amnst: error: {manifest}: is not a directory"])
    status, err = _status_and_errors(["--manifests", str(manifest), "--output", str(batch_out)], capsys, cli.nightly_main)
    assert (status, err) == (2, [f"nightly: error: {manifest}: is not a directory"])
    assert not batch_out.exists()


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


@pytest.mark.parametrize("command", [["transfer", "c.wav", "s.wav", "-o", "o.wav"],
                                     ["run", "m.csv", "--output", "out"]])
def test_griffin_lim_iterations_reach_the_preset(command, capsys):
    parser = build_parser()
    assert preset_from_args(parser.parse_args(command)).nst.griffin_lim_iters == 16
    assert preset_from_args(parser.parse_args([*command, "--griffin-lim-iters", "32"])).nst.griffin_lim_iters == 32
    with pytest.raises(CommandError, match="griffin_lim_iters=-1 must be >= 0"):
        preset_from_args(parser.parse_args([*command, "--griffin-lim-iters", "-1"]))


def test_run_and_nightly_carry_strength_into_their_options(tmp_path):
    run = build_parser().parse_args(["run", "m.csv", "--output", str(tmp_path), "--strength", "0.5"])
    assert run_options_from_args(run).preset.nst.strength == 0.5
    night = cli.build_nightly_parser().parse_args(["--manifests", str(tmp_path), "--output", str(tmp_path),
                                               "--strength", "0.75"])
    assert run_options_from_args(night).preset.nst.strength == 0.75


def test_run_and_nightly_refuse_a_bad_strength_before_starting(tmp_path, capsys):
    manifest = tmp_path / "m.csv"
    manifest.write_text("content,style\na.wav,b.wav\n")
    out = tmp_path / "out"
    assert main(["run", str(manifest), "--output", str(out), "--strength", "1.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["amnst: error: strength=1.5 must be in [0, 1]"]
    assert cli.nightly_main(["--manifests", str(tmp_path), "--output", str(out), "--strength", "-0.1"]) == 2
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
