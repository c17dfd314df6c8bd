"""The transfer's objectives and its strength knob: the seed preset kept exactly,
the music-only content loss and the random networks, strength's ends and its
direction, and the frontier's margins."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

from amnst.bench import frontier
from amnst.engine import model
from amnst import synth
from amnst.bench import evaluation
from amnst.config import AudioConfig, ConfigError, NSTConfig, get_preset
from amnst.engine.nst import StyleTransfer
from amnst.batch.pipeline import analyse, render, transfer_pair
from tests.conftest import segments_of


@pytest.fixture(scope="module")
def random_cnn():
    return model.build_model(seed=0)


@pytest.fixture(scope="module")
def pair() -> tuple[np.ndarray, np.ndarray]:
    return evaluation.evaluation_pair("pop-piano_rain", 4.0)


def test_the_seed_preset_is_the_original_algorithm_exactly():
    # SEED_FACTS: power mel, 431-frame segments cut without overlap, the UI's defaults,
    # pooled un-normalised Grams, SGD, librosa's inversion from random phase; nothing added.
    seed = get_preset("seed")
    assert seed.audio == AudioConfig(sample_rate=22050, n_fft=1024, hop_length=256, n_mels=384, fmin=0.0,
                                     fmax=None, segment_frames=431, overlap_frames=0, mel_power=2.0,
                                     fit_segments=False)
    expected = dict(content_layers=(0, 2), style_layers=(4, 8, 12, 16), content_weight=50.0, style_weight=10.0,
                    iterations=100, learning_rate=1e-3, decay_steps=10, decay_rate=1.0, optimizer="sgd",
                    init="content", parameterization="linear", content_input="mel", style_input="mel",
                    gram_norm="none", spectral_style_weight=0.0, random_style_weight=0.0, pitch_weight=0.0,
                    onset_weight=0.0, relative_loss=False, inversion="librosa", griffin_lim_iters=32,
                    phase="random", strength=1.0, precision="fp32")
    assert {name: getattr(seed.nst, name) for name in expected} == expected
    assert seed.nst == NSTConfig()


@pytest.mark.parametrize("overrides, message", [
    (dict(strength=1.5), "strength"), (dict(strength=-0.1), "strength"), (dict(strength=float("nan")), "strength"),
    (dict(phase="style"), "phase"), (dict(pitch_weight=-1.0), "pitch_weight"), (dict(onset_weight=-1.0), "onset_weight"),
    (dict(random_style_weight=-1.0), "random_style_weight"),
])
def test_new_settings_are_validated(overrides, message):
    with pytest.raises(ConfigError, match=message):
        get_preset("default").with_overrides(**overrides)
    with pytest.raises(ConfigError, match="needs"):
        get_preset("seed").with_overrides(random_style_weight=1.0)
    with pytest.raises(ConfigError, match="needs"):
        get_preset("seed").with_overrides(phase="content")


INF, NAN = float("inf"), float("nan")


@pytest.mark.parametrize("preset, overrides, message", [
    # Every numeric field is finite: one-sided bounds would let inf through, and NaN fails them silently.
    *[("default", {name: value}, f"{name}={value!r} must be finite")
      for name in ("content_weight", "style_weight", "spectral_style_weight", "random_style_weight", "pitch_weight",
                   "onset_weight", "learning_rate") for value in (INF, NAN)],
    ("default", dict(style_weight=-INF), "style_weight=-inf must be finite"),
    ("default", dict(decay_rate=NAN), "decay_rate=nan must be in (0, 1]"),
    ("default", dict(strength=INF), "strength=inf must be in [0, 1]"),
    # Seeds: NumPy's RandomState takes [0, 2**32).
    ("default", dict(seed=-5), "seed=-5 must be an integer in [0, 2**32)"),
    ("seed", dict(seed=2**32), "seed=4294967296 must be an integer in [0, 2**32)"),
    ("default", dict(seed=1.5), "seed=1.5 must be an integer"),
    ("default", dict(seed=True), "seed=True must be an integer"),
    # Counts are integers at or above their minimum.
    ("default", dict(iterations=2.0), "iterations=2.0 must be an integer"),
    ("default", dict(iterations=-1), "iterations=-1 must be >= 0"),
    ("default", dict(decay_steps=0), "decay_steps=0 must be >= 1"),
    ("default", dict(rollback_steps=0), "rollback_steps=0 must be >= 1"),
    ("default", dict(max_retries=-1), "max_retries=-1 must be >= 0"),
    ("default", dict(griffin_lim_iters=-1), "griffin_lim_iters=-1 must be >= 0"),
    ("default", dict(segments_per_batch=0), "segments_per_batch=0 must be >= 1"),
    ("default", dict(content_weight=True), "content_weight=True must be a number"),
    ("default", dict(relative_loss=1), "relative_loss=1 must be true or false"),
    # Layers: integer feature-map indices.
    ("default", dict(style_layers=(4.5,)), "style_layers=(4.5,) must be a sequence of integer layer indices"),
    ("default", dict(style_layers=(-1,)), "style_layers=(-1,) holds -1"),
    ("seed", dict(content_layers=(0, 20)), "content_layers=(0, 20) holds 20"),
    # Something to optimise: a style term, at least one CNN layer, some weight at all.
    ("seed", dict(style_layers=()), "style_layers=() leaves no style loss: style_layers is empty and "
                                    "spectral_style_weight and random_style_weight are 0"),
    ("default", dict(style_layers=()), "style_layers=() and content_layers=() cannot both be empty"),
    ("seed", dict(content_weight=0.0, style_weight=0.0), "no loss to optimise"),
    ("default", dict(style_weight=0.0, spectral_style_weight=0.0, random_style_weight=0.0, pitch_weight=0.0,
                     onset_weight=0.0), "no loss to optimise"),
])
def test_every_value_is_checked_in_one_place(preset, overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        get_preset(preset).with_overrides(**overrides)


@pytest.mark.parametrize("field, value, message", [
    ("sample_rate", 22050.0, "sample_rate=22050.0 must be an integer"), ("n_fft", 0, "n_fft=0 must be positive"),
    ("hop_length", 2048, "hop_length=2048 must be in (0, n_fft]"), ("fmin", NAN, "fmin=nan must be in"),
    ("fmax", INF, "fmax=inf must be in"), ("segment_frames", 1, "segment_frames=1 must be > 1"),
    ("overlap_frames", -1, "overlap_frames=-1 must be in"), ("mel_power", NAN, "mel_power=nan must be 1 or 2"),
])
def test_audio_values_are_checked(field, value, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        AudioConfig(**{field: value})


def test_edge_values_that_stay_valid():
    assert get_preset("seed").with_overrides(seed=2**32 - 1).nst.seed == 2**32 - 1
    assert get_preset("default").with_overrides(iterations=0, strength=0.0).nst.iterations == 0
    # Style from the log-mel alone, beside CNN content layers; CNN style alone, with no content term.
    assert get_preset("default").with_overrides(style_layers=(), content_layers=(0,)).nst.style_layers == ()
    assert get_preset("seed").with_overrides(content_weight=0.0).nst.content_weight == 0.0
    assert get_preset("default").with_overrides(style_layers=(np.int64(4),)).nst.style_layers == (4,)
    assert type(get_preset("default").with_overrides(style_layers=(np.int64(4),)).nst.style_layers[0]) is int


def test_the_music_loss_is_blind_to_level_and_binds_the_notes(random_cnn, music_and_rain):
    cfg = get_preset("default").with_overrides(style_weight=0.0, spectral_style_weight=0.0,
                                                random_style_weight=0.0).nst
    transfer = StyleTransfer(random_cnn, cfg)
    content = segments_of(music_and_rain[0], "default", 2)
    targets = transfer.style_targets(segments_of(music_and_rain[1], "default"))
    assert np.all(transfer.loss(content, content, targets)[1] < 1e-6)
    # A gain is no change of notes or onsets; another piece is.
    assert np.all(transfer.loss(4.0 * content, content, targets)[1] < 1e-4)
    other = segments_of(synth.music(7.0, seed=9), "default", 2)[:, :, :content.shape[2]]
    assert np.all(transfer.loss(other, content, targets)[1] > 1.0)


def test_random_networks_add_their_grams_and_the_loss_falls(random_cnn, music_and_rain):
    cfg = get_preset("default").with_overrides(iterations=8).nst
    transfer = StyleTransfer(random_cnn, cfg)
    targets = transfer.style_targets(segments_of(music_and_rain[1], "default"))
    assert len(targets.grams) == len(cfg.style_layers) + 1 + 3
    assert targets.grams[-1].shape == (64, 64)
    result = transfer.optimise(segments_of(music_and_rain[0], "default", 2), targets)
    assert np.all(result.loss[-1] < result.loss[0])


def test_strength_0_returns_the_contents_own_reconstruction(random_cnn, pair):
    content, style = pair
    preset = get_preset("default").with_overrides(iterations=3, strength=0.0)
    outcome = transfer_pair(content, style, preset, StyleTransfer(random_cnn, preset.nst))
    reconstruction, mel = render(analyse(content, preset.audio).segments, content, preset.audio, preset.nst)
    assert np.array_equal(outcome.audio, reconstruction)
    assert np.array_equal(outcome.mel, mel)


def test_progress_does_not_fall_as_strength_rises(random_cnn, pair):
    content, style = pair
    method = frontier.Method("default", get_preset("default"))
    transfer = StyleTransfer(random_cnn, method.preset.nst)
    rows = frontier.sweep_pair("pop-piano_rain", content, style, [method], lambda preset: transfer,
                               strengths=(0.0, 0.5, 1.0))
    mine = [row for row in rows if row["method"] == "default"]
    for measure in frontier.STYLE_MEASURES:
        progress = [row[measure] for row in mine]
        assert all(b >= a - 0.02 for a, b in zip(progress, progress[1:])), (measure, progress)
        assert progress[-1] > 0.05, (measure, progress)


def _row(method, level, chroma, onsets, progress):
    return {"pair": "p", "method": method, "level": level, "chroma_similarity": chroma,
            "onset_correlation": onsets, **{m: progress for m in frontier.STYLE_MEASURES}}


def test_the_margin_is_progress_beyond_the_best_mix_keeping_as_much():
    mixes = [_row("mix", 0.0, 1.0, 1.0, 0.0), _row("mix", 0.3, 0.98, 0.9, 0.2), _row("mix", 0.6, 0.9, 0.7, 0.5)]
    rows = frontier.with_margins(mixes + [_row("m", 1.0, 0.97, 0.85, 0.3), _row("m", 0.5, 0.99, 0.95, 0.1)])
    margins = {row["level"]: row["margin_mfcc_progress"] for row in rows if row["method"] == "m"}
    # At 0.97 / 0.85 the 0.3 mix qualifies (0.98 / 0.9), the 0.6 one does not: 0.3 - 0.2.
    assert margins[1.0] == pytest.approx(0.1)
    # At 0.99 / 0.95 only the content itself qualifies.
    assert margins[0.5] == pytest.approx(0.1)
    assert frontier.best_at_floors([_row("m", 1.0, 0.9, 0.9, 0.4)], "mfcc_progress") is None
    summary = frontier.summarise(rows)
    assert summary["curves"]["m"][-1]["pairs_beating_mix"] == 1
    assert summary["floors"]["mix"]["mfcc_progress"] == {"median": 0.2, "pairs_reaching_floors": 1}


def test_a_stopping_knob_scales_the_iterations():
    method = frontier.Method("b", get_preset("default"), knob="stop")
    assert method.at(0.4).nst.iterations == round(0.4 * 35)
    assert method.at(0.4).nst.strength == 1.0
    assert frontier.Method("a", get_preset("default")).at(0.4).nst.strength == 0.4
    with pytest.raises(ValueError, match="knob"):
        dataclasses.replace(method, knob="dial")


def test_precision_shift_reads_the_medians_and_every_pair():
    # Two pairs at two strengths; in bf16 pair b's every measure is 0.02 higher.
    measures = (*frontier.FLOORS, *frontier.STYLE_MEASURES)
    rows = [{"method": f"[{precision}] d", "pair": pair, "level": level,
             **{m: base + level / 10 + (0.02 if (precision, pair) == ("bf16", "b") else 0.0) for m in measures},
             **{f"margin_{m}": 0.0 for m in frontier.STYLE_MEASURES}}
            for precision in ("fp32", "bf16") for pair, base in (("a", 0.5), ("b", 0.7)) for level in (0.0, 1.0)]
    shift = frontier.precision_shift({"rows": rows, **frontier.summarise(rows)}, ("fp32", "bf16"))["d: fp32 -> bf16"]
    # The median of the two pairs moves by half of b's move; one pair by all of it.
    assert shift["median_gram_progress"] == pytest.approx(0.01)
    assert shift["pair_onset_correlation"] == pytest.approx(0.02)
