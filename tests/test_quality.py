"""Quality measures: their fixed points, their directions, and the pair-row contract."""

from __future__ import annotations

import json

import librosa
import numpy as np
import pytest

from amnst.engine import audio, quality
from amnst.batch import metadata
from amnst import synth
from amnst.bench import evaluation
from amnst.cli import main
from amnst.config import get_preset
from tests.conftest import write_wav

CONFIG = get_preset("default").audio


@pytest.fixture(scope="module")
def pair():
    return synth.music(6.0, seed=2, key="D"), synth.rain(6.0, seed=2)


def test_the_content_itself_keeps_everything_and_moves_nowhere(pair):
    content, style = pair
    measures = quality.assess(content, content, style, CONFIG)
    assert measures["chroma_similarity"] == pytest.approx(1.0)
    assert measures["onset_correlation"] == pytest.approx(1.0)
    assert measures["mfcc_progress"] == pytest.approx(0.0)
    assert measures["gram_progress"] == pytest.approx(0.0)
    assert measures["noise_ratio"] == pytest.approx(1.0)


def test_the_style_itself_is_all_the_way(pair):
    content, style = pair
    measures = quality.assess(style, content, style, CONFIG)
    assert measures["mfcc_progress"] == pytest.approx(1.0)
    assert measures["gram_progress"] == pytest.approx(1.0)
    assert measures["chroma_similarity"] < 0.9


def test_gain_is_not_timbre(pair):
    # A quieter or louder copy of the content has moved nowhere toward the style;
    # the mix keeps its progress at any playback level.
    content, style = pair
    for gain in (0.25, 2.0):
        measures = quality.assess(gain * content, content, style, CONFIG)
        assert measures["mfcc_progress"] == pytest.approx(0.0, abs=1e-6)
        assert measures["gram_progress"] == pytest.approx(0.0, abs=1e-6)
    mix = quality.plain_mix(content, style)
    assert quality.assess(0.5 * mix, content, style, CONFIG) == pytest.approx(
        {**quality.assess(mix, content, style, CONFIG), "peak": 0.5 * np.max(np.abs(mix))}, abs=1e-6)


def test_directions(pair):
    content, style = pair
    mix = 0.7 * content + 0.3 * style
    measures = quality.assess(mix, content, style, CONFIG)
    assert 0 < measures["mfcc_progress"] < 1 and 0 < measures["gram_progress"] < 1
    other_key = synth.music(6.0, seed=2, key="F#")
    noise = np.random.default_rng(0).uniform(-0.5, 0.5, len(content)).astype(np.float32)
    other_key, noise, content = (quality.signature(y, CONFIG) for y in (other_key, noise, content))
    assert quality.chroma_similarity(other_key, content) < measures["chroma_similarity"]
    assert quality.noise_ratio(noise, content) > 5
    assert quality.onset_correlation(noise, content) < 0.5


def test_measures_fill_the_pair_row_columns(pair):
    content, style = pair
    mel = audio.mel_spectrogram(content, CONFIG)
    measures = quality.assess(content, content, style, CONFIG, optimised_mel=mel)
    assert set(measures) == set(metadata.QUALITY_COLUMNS)
    assert measures["spectral_convergence"] == pytest.approx(0.0, abs=1e-6)


def test_assess_command(pair, tmp_path, capsys):
    paths = [write_wav(tmp_path / f"{name}.wav", y) for name, y in
             (("output", 0.7 * pair[0] + 0.3 * pair[1]), ("content", pair[0]), ("style", pair[1]))]
    assert main(["assess", *map(str, paths)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed) == set(metadata.QUALITY_COLUMNS) - {"spectral_convergence"}
    assert main(["assess", str(tmp_path / "missing.wav"), *map(str, paths[1:])]) == 1


def test_reference_rows_are_the_content_and_the_plain_mix_measured_alike(pair):
    content, style = pair
    output = 0.5 * content + 0.5 * style
    measures = quality.assess_with_references(output, content, style, CONFIG)
    assert {k: v for k, v in measures.items() if not k.startswith("reference_")} == \
        pytest.approx(quality.assess(output, content, style, CONFIG))
    assert measures["reference_mix"] == pytest.approx(
        quality.assess(quality.plain_mix(content, style), content, style, CONFIG))
    assert measures["reference_content"]["mfcc_progress"] == pytest.approx(0.0)
    assert np.allclose(quality.plain_mix(content, style[:100]), 0.7 * content + 0.3 * np.resize(style[:100], content.shape))


def test_equalising_reaches_the_styles_spectrum_and_never_clips(pair):
    content, _ = pair
    # The content is its own long-term spectrum, and a quieter copy is a uniform -6 dB.
    np.testing.assert_allclose(quality.equalised(content, content, CONFIG), content, atol=1e-4)
    np.testing.assert_allclose(quality.equalised(content, 0.5 * content, CONFIG), 0.5 * content, atol=1e-4)
    louder = quality.equalised(content, 10.0 * content, CONFIG)
    assert np.max(np.abs(louder)) == pytest.approx(quality.CLIP_HEADROOM)
    with pytest.raises(ValueError, match="smoothing_bins"):
        quality.equalised(content, content, CONFIG, smoothing_bins=0)


def test_equalising_strength_goes_from_the_content_to_the_styles_spectrum(pair):
    content, style = pair
    np.testing.assert_allclose(quality.equalised(content, style, CONFIG, strength=0.0), content, atol=1e-4)
    spectrum = lambda y: np.mean(np.abs(librosa.stft(y, n_fft=CONFIG.n_fft, hop_length=CONFIG.hop_length)) ** 2, 1)
    distances = [np.mean(np.abs(np.log(spectrum(quality.equalised(content, 0.1 * content, CONFIG, strength=s)))
                                - np.log(spectrum(0.1 * content)))) for s in (0.0, 0.5, 1.0)]
    assert distances[0] > distances[1] > distances[2]
    with pytest.raises(ValueError, match="strength"):
        quality.equalised(content, style, CONFIG, strength=1.5)


def test_a_stationary_texture_has_the_styles_colour_and_no_onsets_of_its_own(pair):
    _, style = pair
    texture = quality.stationary_texture(style, 50_000, CONFIG, seed=3)
    assert texture.shape == (50_000,)
    np.testing.assert_array_equal(texture, quality.stationary_texture(style, 50_000, CONFIG, seed=3))
    power = lambda y: np.abs(librosa.stft(y, n_fft=CONFIG.n_fft, hop_length=CONFIG.hop_length)) ** 2
    bands = lambda p: np.add.reduceat(p, np.arange(0, p.shape[0], 32), axis=0)  # 16 coarse bands
    colour = lambda y: bands(power(y)).mean(axis=1) / bands(power(y)).mean(axis=1).sum()
    np.testing.assert_allclose(colour(texture), colour(style), rtol=0.25, atol=1e-4)
    # Rain's clicks make its band levels swing from frame to frame; the texture's hold still.
    swing = lambda y: np.median(np.std(np.log(bands(power(y))[:, 4:-4] + 1e-12), axis=1))
    assert swing(texture) < 0.5 * swing(style)


def test_compile_kernels_caches_the_kernel_that_crashed_racing_workers():
    # chroma_stft's tuning estimate (piptrack) is the kernel two fresh Ray workers compiled at
    # once and crashed on; after compile_kernels a worker only reads it from librosa's cache.
    from pathlib import Path

    import librosa

    quality.compile_kernels()
    cache = Path(librosa.__file__).parent / "core" / "__pycache__"
    assert any(path.name.startswith("pitch._pi_wrapper") for path in cache.glob("*.nbi"))


def test_bench_summary_counts_each_target_against_the_pairs_own_mix():
    from amnst.bench.preset_quality import _quality_summary, quality_table

    def row(pair, method, chroma, onset, mfcc, noise, **extra):
        return {"pair": pair, "method": method, "chroma_similarity": chroma, "onset_correlation": onset,
                "mfcc_progress": mfcc, "noise_ratio": noise, "peak": 0.5, **extra}

    rows = [row("a", "mix", 0.97, 0.79, 0.20, 5.0), row("b", "mix", 0.97, 0.90, 0.50, 1.0),
            # Beats a's mix everywhere; on b its MFCC progress clears 0.3 but not the mix's.
            row("a", "t", 0.96, 0.85, 0.35, 4.0, loss_start=2.0, loss_end=1.0),
            row("b", "t", 0.94, 0.85, 0.40, 1.5, loss_start=2.0, loss_end=1.0)]
    summary = _quality_summary(rows)
    assert summary["t"]["pairs_ok"] == {"chroma": 1, "onset": 2, "mfcc": 1, "noise": 1,
                                        "no clipping": 2, "loss falls": 2}
    assert not summary["t"]["targets_met"]
    assert summary["t"]["mfcc_progress"] == pytest.approx(0.375)
    assert "1/2/1/1/2/2" in quality_table({"summary": summary})


# --- auditory texture statistics -------------------------------------------------------------------

@pytest.fixture(scope="module")
def texture_pair():
    """A short evaluation pair and its anchors (content: piano music; style: rain)."""
    content, style = evaluation.evaluation_pair("pop-piano_rain", 3.0)
    return content, style, quality.Anchors.of(content, style, CONFIG)


def test_texture_progress_is_0_for_the_content_and_1_for_the_style(texture_pair):
    content, style, anchors = texture_pair
    assert len(style) == len(content)
    itself = quality.compare(quality.signature(content, CONFIG), anchors)
    assert itself["texture_progress"] == pytest.approx(0.0, abs=1e-9)
    assert itself["texture_distance"] > 0
    styled = quality.compare(quality.signature(style, CONFIG), anchors)
    assert styled["texture_progress"] >= 0.99 and styled["texture_distance"] == pytest.approx(0.0, abs=1e-9)


def test_texture_ignores_gain(texture_pair):
    content, _, anchors = texture_pair
    distance = quality.compare(anchors.content, anchors)["texture_distance"]
    for gain in (0.25, 3.0):
        measures = quality.compare(quality.signature(gain * content, CONFIG), anchors)
        assert measures["texture_progress"] == pytest.approx(0.0, abs=1e-6)
        assert measures["texture_distance"] == pytest.approx(distance, rel=1e-6)


def test_a_mix_moves_the_texture_toward_the_style(texture_pair):
    content, style, anchors = texture_pair
    measures = quality.compare(quality.signature(quality.plain_mix(content, style), CONFIG), anchors)
    assert 0 < measures["texture_progress"] < 1


@pytest.mark.filterwarnings("ignore:Trying to estimate tuning:UserWarning")  # chroma of silence
def test_silence_has_finite_texture_statistics(texture_pair):
    content, _, anchors = texture_pair
    silence = np.zeros_like(content)
    statistics = quality.texture_statistics(quality.power_spectrogram(silence, CONFIG), CONFIG)
    assert statistics.shape == (quality.TEXTURE_SIZE,) and statistics.dtype == np.float64
    assert np.all(np.isfinite(statistics))
    # Constant envelopes: no spread, no correlation, no modulation.
    np.testing.assert_allclose(statistics[quality.TEXTURE_SLICES["mean"].stop:], 0.0, atol=1e-9)
    assert quality.texture_distance(statistics, statistics) == 0.0
    measures = quality.compare(quality.signature(silence, CONFIG), anchors)
    assert np.isfinite(measures["texture_distance"]) and np.isfinite(measures["texture_progress"])
    silent_anchors = quality.Anchors.of(silence, silence, CONFIG)
    assert quality.compare(silent_anchors.content, silent_anchors)["texture_progress"] == 0.0


def test_texture_statistics_are_in_their_ranges(texture_pair):
    _, style, _ = texture_pair
    statistics = quality.texture_statistics(quality.power_spectrogram(style, CONFIG), CONFIG)
    part = lambda name: statistics[quality.TEXTURE_SLICES[name]]
    assert np.all(part("mean") > 0) and np.all(part("cv") >= 0) and np.all(part("log_kurtosis") >= 0)
    assert np.all(np.abs(part("correlation")) <= 1 + 1e-9)
    modulation = part("modulation").reshape(quality.TEXTURE_BANDS, len(quality.MODULATION_HZ))
    assert np.all(modulation >= 0) and np.all(modulation.sum(axis=1) <= 1 + 1e-9)
    # Rain's envelopes move: most of their variance lies in the modulation bands.
    assert np.median(modulation.sum(axis=1)) > 0.5


def test_texture_filters_are_erb_spaced_half_cosines_apart_from_the_mel():
    weights = quality.texture_filters(CONFIG.sample_rate, CONFIG.n_fft)
    assert weights.shape == (quality.TEXTURE_BANDS, 1 + CONFIG.n_fft // 2)
    assert quality.texture_filters(CONFIG.sample_rate, CONFIG.n_fft) is weights  # built once
    hz = np.arange(weights.shape[1]) * CONFIG.sample_rate / CONFIG.n_fft
    centres = quality.erb_frequency(np.linspace(quality.erb_number(quality.TEXTURE_FMIN),
                                                quality.erb_number(quality.TEXTURE_FMAX), quality.TEXTURE_BANDS))
    assert quality.erb_frequency(quality.erb_number(1000.0)) == pytest.approx(1000.0)
    # Half-way overlap: squared responses sum to 1 between the outer centres, and each band
    # peaks at its centre, every band on at least one bin.
    inside = (hz >= centres[0]) & (hz <= centres[-1])
    np.testing.assert_allclose(weights[:, inside].sum(axis=0), 1.0, atol=1e-9)
    assert np.all(np.abs(hz[np.argmax(weights, axis=1)] - centres) <= CONFIG.sample_rate / CONFIG.n_fft)
    assert np.all((weights > 0).sum(axis=1) >= 2)
    assert weights.shape[0] != audio.mel_basis(CONFIG).shape[0]


def test_texture_distance_gives_each_family_an_equal_say():
    a = np.zeros(quality.TEXTURE_SIZE)

    def shifted(name: str, by: float) -> np.ndarray:
        b = a.copy()
        b[quality.TEXTURE_SLICES[name]] = by
        return b

    # Every correlation (435 numbers) off by 1 weighs as much as every modulation fraction
    # (210) off by 1: a third each; one of the four moments, a twelfth.
    assert quality.texture_distance(shifted("correlation", 1.0), a) == pytest.approx(1 / 3)
    assert quality.texture_distance(shifted("modulation", 1.0), a) == pytest.approx(1 / 3)
    assert quality.texture_distance(shifted("skewness", 1.0), a) == pytest.approx(1 / 12)
    b = np.random.default_rng(0).normal(size=a.size)
    assert quality.texture_distance(a, b) == pytest.approx(quality.texture_distance(b, a))


def test_first_seconds_cuts_every_signal_and_the_mel_alike():
    config = get_preset("default").audio
    rate, hop = config.sample_rate, config.hop_length
    y, content, style = (np.arange(n, dtype=np.float32) for n in (10 * rate, 10 * rate, 4 * rate))
    mel = np.ones((config.n_mels, 1 + len(y) // hop), np.float32)
    cut = quality.first_seconds(3.0, config, y, content, style, mel)
    assert [len(a) for a in cut[:3]] == [3 * rate, 3 * rate, 3 * rate]
    assert cut[3].shape == (config.n_mels, 1 + 3 * rate // hop)
    assert quality.first_seconds(None, config, y, content, style, mel)[0] is y
    shorter = quality.first_seconds(30.0, config, y, content, style, mel)
    assert [len(a) for a in shorter[:3]] == [10 * rate, 10 * rate, 4 * rate] and shorter[3].shape == mel.shape
    with pytest.raises(ValueError, match="seconds"):
        quality.first_seconds(0.0, config, y, content, style, mel)
