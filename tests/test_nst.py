"""Neural style transfer: the seed preset's exact loss, batching invariance, convergence, rollback."""

from __future__ import annotations

import numpy as np
import pytest

from amnst.engine import model
from amnst.bench import evaluation
from amnst.config import get_preset
from amnst.engine.nst import StyleTransfer, optimise_piece
from tests.conftest import segments_of


@pytest.fixture(scope="module")
def random_cnn():
    return model.build_model(seed=0)


def _numpy_seed_loss(features_target, features_content, features_style, cfg):
    """SEED_FACTS' formulas, written out in NumPy over extracted features.

    Content per layer: sum((Fc-Ft)^2)/(B*H*W*C). Gram: (B,H,W,C) -> (C, B*H*W),
    G = F F^T pooled over the batch. Style per layer: sum((Gs-Gt)^2)/(B*H*W*C)
    of the target's layer. Total: cw * sum(content) + sw * sum(style).
    """
    def gram(f):
        flat = np.moveaxis(f.astype(np.float64), -1, 0).reshape(f.shape[-1], -1)
        return flat @ flat.T

    content = sum(np.sum((features_content[l].astype(np.float64) - features_target[l]) ** 2)
                  / features_target[l].size for l in cfg.content_layers)
    style = sum(np.sum((gram(features_style[l]) - gram(features_target[l])) ** 2)
                / features_target[l].size for l in cfg.style_layers)
    return cfg.content_weight * content + cfg.style_weight * style


def test_seed_loss_equals_the_original_formulas(random_cnn, music_and_rain):
    cfg = get_preset("seed").nst
    transfer = StyleTransfer(random_cnn, cfg)
    content = segments_of(music_and_rain[0], "seed", 2)
    style = segments_of(music_and_rain[1], "seed")
    target = content * np.random.default_rng(0).uniform(0.5, 1.5, content.shape).astype(np.float32)

    total, content_part, style_part = transfer.loss(target, content, transfer.style_targets(style))
    expected = _numpy_seed_loss(*(
        {l: f.numpy() for l, f in transfer.features(x).items()} for x in (target, content, style)), cfg)
    # Coupled Grams: every segment reports the batch's loss.
    assert np.all(total == total[0])
    np.testing.assert_allclose(total[0], expected, rtol=1e-4)
    assert content_part[0] > 0 and style_part[0] > 0


def test_log_cnn_input_feeds_the_network_the_offset_log_mel(random_cnn, music_and_rain):
    from amnst.engine.nst import LOG_INPUT_OFFSET

    mel = segments_of(music_and_rain[0], "default", 1)
    plain = StyleTransfer(random_cnn, get_preset("seed").nst)  # the same layers, both read from the mel
    logged = StyleTransfer(random_cnn, get_preset("default").with_overrides(content_input="log", style_input="log",
                                                                            precision="fp32").nst)
    expected = plain.features(np.log(mel + LOG_INPUT_OFFSET))
    for layer, f in logged.features(mel, "log").items():
        np.testing.assert_allclose(f.numpy(), expected[layer].numpy(), rtol=1e-4, atol=1e-5)


def test_content_and_style_can_read_different_inputs(random_cnn, music_and_rain):
    hybrid = get_preset("default").with_overrides(content_layers=(0, 2), content_input="mel", style_input="log").nst
    transfer = StyleTransfer(random_cnn, hybrid)
    mel = segments_of(music_and_rain[0], "default", 1)
    assert set(transfer.features(mel, "mel")) == set(hybrid.content_layers)
    assert set(transfer.features(mel, "log")) == set(hybrid.style_layers)
    result = transfer.optimise(mel, transfer.style_targets(segments_of(music_and_rain[1], "default")))
    assert np.all(result.loss[-1] < result.loss[0])


@pytest.mark.parametrize("preset", ["default"])
def test_default_is_exact_under_any_batching(random_cnn, music_and_rain, preset):
    # In fp32. In bf16 oneDNN's choice of kernels by batch size moves a segment's
    # result by about 1 % of its norm: segments are still independent, not exact.
    cfg = get_preset(preset).with_overrides(iterations=6, init="random", precision="fp32").nst
    transfer = StyleTransfer(random_cnn, cfg)
    content = segments_of(music_and_rain[0], preset, 2)
    targets = transfer.style_targets(segments_of(music_and_rain[1], preset))
    together = transfer.optimise(content, targets)
    # A segment's result does not depend on its batch-mates: the same kernels
    # (same shapes) give the same floats whatever the other segment holds.
    other = transfer.optimise(np.stack([content[0], content[0][:, ::-1]]), targets)
    np.testing.assert_array_equal(other.mels[0], together.mels[0])
    # Another batch size changes float32 rounding only: oneDNN picks convolution
    # kernels by batch size, and where two values of a max-pool window are within
    # that rounding the gradient may take the other one, which later steps carry on.
    apart = [transfer.optimise(content[i:i + 1], targets, indices=[i]) for i in range(2)]
    apart_mels = np.concatenate([r.mels for r in apart])
    assert np.linalg.norm(together.mels - apart_mels) < 1e-3 * np.linalg.norm(apart_mels)
    np.testing.assert_allclose(together.loss, np.concatenate([r.loss for r in apart], axis=1), rtol=1e-3)


def test_optimisation_is_deterministic(random_cnn, music_and_rain):
    cfg = get_preset("default").with_overrides(iterations=3, init="random", seed=5).nst
    transfer = StyleTransfer(random_cnn, cfg)
    content = segments_of(music_and_rain[0], "default", 1)
    targets = transfer.style_targets(segments_of(music_and_rain[1], "default"))
    first, second = transfer.optimise(content, targets), transfer.optimise(content, targets)
    np.testing.assert_array_equal(first.mels, second.mels)


def test_the_xla_compiled_step_optimises_as_the_graph_does(random_cnn, music_and_rain):
    # The step compiles with XLA where there is a GPU; here XLA's CPU backend stands in (in fp32:
    # XLA's CPU bf16 convolutions round otherwise than oneDNN's).
    cfg = get_preset("default").with_overrides(iterations=3, precision="fp32").nst
    content = segments_of(music_and_rain[0], "default", 2)
    plain, xla = StyleTransfer(random_cnn, cfg, jit_compile=False), StyleTransfer(random_cnn, cfg, jit_compile=True)
    targets = plain.style_targets(segments_of(music_and_rain[1], "default"))
    expected, got = plain.optimise(content, targets), xla.optimise(content, targets)
    np.testing.assert_allclose(got.loss, expected.loss, rtol=1e-4)
    # Adam's first steps move entries with rounding-level gradients by about
    # lr * sign(gradient) either way (the normalised pitch classes give many
    # such entries); compare the mels on the whole.
    assert np.linalg.norm(got.mels - expected.mels) < 3e-3 * np.linalg.norm(expected.mels)


def test_one_compiled_step_serves_every_fitted_width(random_cnn, music_and_rain):
    # Fitted segments differ in width from pair to pair, and tasks in their number of
    # segments: one trace serves them all, and a segment's result does not depend on
    # what its worker optimised before.
    cfg = get_preset("default").with_overrides(iterations=3).nst
    mel = segments_of(music_and_rain[0], "default", 2)
    shared = StyleTransfer(random_cnn, cfg)
    targets = shared.style_targets(segments_of(music_and_rain[1], "default"))
    assert mel.shape[2] == 320  # 7 s: two fitted segments
    for batch, width in ((1, 320), (2, 240), (1, 272)):
        got = shared.optimise(mel[:batch, :, :width], targets)
        expected = StyleTransfer(random_cnn, cfg).optimise(mel[:batch, :, :width], targets)
        assert got.mels.shape == (batch, 384, width)
        np.testing.assert_array_equal(got.loss, expected.loss)
        np.testing.assert_array_equal(got.mels, expected.mels)
    assert (shared._step.tracing_count(), shared._losses.tracing_count()) == (1, 1)


def test_a_style_start_takes_the_contents_width(random_cnn, music_and_rain):
    cfg = get_preset("default").with_overrides(iterations=2, init="style").nst
    transfer = StyleTransfer(random_cnn, cfg)
    style = segments_of(music_and_rain[1], "default")[:, :, :200]
    targets = transfer.style_targets(style)
    content = segments_of(music_and_rain[0], "default", 2)
    start = transfer.initial_target(content, targets, np.arange(2))
    assert start.shape == content.shape
    # Narrower style segments repeat along time.
    assert content.shape[2] == 320
    np.testing.assert_array_equal(start[0, :, 200:], style[0, :, :120])
    assert np.all(np.isfinite(transfer.optimise(content, targets).loss))


@pytest.mark.parametrize("pair", [p.name for p in evaluation.EVALUATION_PAIRS[:5]])
def test_default_lowers_the_loss_on_every_pair(random_cnn, pair):
    cfg = get_preset("default").with_overrides(iterations=12).nst
    content, style = evaluation.evaluation_pair(pair, 5.0)
    transfer = StyleTransfer(random_cnn, cfg)
    result = transfer.optimise(segments_of(content, "default", 1),
                               transfer.style_targets(segments_of(style, "default")))
    assert np.all(np.isfinite(result.loss))
    assert result.loss[-1, 0] < 0.9 * result.loss[0, 0]
    assert result.rollbacks.sum() == 0


def test_rollback_restores_the_last_good_target(random_cnn, music_and_rain):
    # A learning rate this large makes the first update overflow; each retry
    # halves it, so after max_retries in a row the segment gives up, holding
    # the target from before the failed steps rather than the overflowed one.
    cfg = get_preset("seed").with_overrides(iterations=6, learning_rate=1e38, max_retries=2).nst
    transfer = StyleTransfer(random_cnn, cfg)
    content = segments_of(music_and_rain[0], "seed", 1)
    result = transfer.optimise(content, transfer.style_targets(segments_of(music_and_rain[1], "seed")))
    assert result.gave_up.all()
    assert result.rollbacks[0] == 3
    np.testing.assert_array_equal(result.mels, content)
    assert np.isfinite(result.loss[-1]).all()


def test_rollback_then_recovery_under_the_seed_preset(random_cnn, music_and_rain):
    # Large enough to overflow at first, small enough that a few halvings recover.
    cfg = get_preset("seed").with_overrides(iterations=12, learning_rate=1e30).nst
    transfer = StyleTransfer(random_cnn, cfg)
    content = segments_of(music_and_rain[0], "seed", 1)
    result = transfer.optimise(content, transfer.style_targets(segments_of(music_and_rain[1], "seed")))
    assert result.rollbacks[0] > 0 and not result.gave_up.any()
    assert np.all(np.isfinite(result.mels))
    assert np.isfinite(result.loss[-1]).all()


def test_optimise_piece_covers_every_segment(random_cnn, music_and_rain):
    cfg = get_preset("default").with_overrides(iterations=2, segments_per_batch=1).nst
    transfer = StyleTransfer(random_cnn, cfg)
    content = segments_of(music_and_rain[0], "default")
    ticks = []
    result = optimise_piece(transfer, content, transfer.style_targets(segments_of(music_and_rain[1], "default")),
                            progress=ticks.append)
    assert result.mels.shape == content.shape
    assert result.loss.shape == (3, len(content))
    assert ticks[-1] == 2 * len(content)


def test_non_finite_input_is_refused(random_cnn):
    transfer = StyleTransfer(random_cnn, get_preset("default").nst)
    bad = np.full((1, 384, 431), np.nan, np.float32)
    with pytest.raises(ValueError, match="non-finite"):
        transfer.style_targets(bad)


@pytest.mark.parametrize("field", ["content_input", "style_input"])
def test_an_unknown_cnn_input_is_refused(field):
    from amnst.config import ConfigError

    with pytest.raises(ConfigError, match=f"{field}='db' must be one of"):
        get_preset("default").with_overrides(**{field: "db"})


def test_the_spectral_style_loss_matches_the_log_mel_band_gram(random_cnn, music_and_rain):
    from amnst.engine.nst import LOG_INPUT_OFFSET

    # Only the spectral term weighs: content, music, layer and random-network style weights are zero.
    cfg = get_preset("default").with_overrides(content_weight=0.0, style_weight=0.0, spectral_style_weight=3.0,
                                               random_style_weight=0.0, pitch_weight=0.0, onset_weight=0.0,
                                               relative_loss=False).nst
    transfer = StyleTransfer(random_cnn, cfg)
    content, style = segments_of(music_and_rain[0], "default", 2), segments_of(music_and_rain[1], "default")
    targets = transfer.style_targets(style)
    assert len(targets.grams) == len(cfg.style_layers) + 1

    def band_grams(mels):  # per segment: bands as channels, frames as positions
        logs = np.log(mels.astype(np.float64) + LOG_INPUT_OFFSET)
        return np.einsum("bmt,bnt->bmn", logs, logs) / mels.shape[-1]

    expected_gram = band_grams(style).mean(axis=0)
    np.testing.assert_allclose(targets.grams[-1], expected_gram, rtol=1e-4)
    n_mels = content.shape[1]
    expected = 3.0 * np.sum((band_grams(content) - targets.grams[-1]) ** 2, axis=(1, 2)) / n_mels ** 2
    total, content_loss, style_loss = transfer.loss(content, content, targets)
    np.testing.assert_allclose(style_loss, expected, rtol=1e-3)
    assert np.all(content_loss == 0)


def test_the_spectral_style_loss_needs_per_position_grams():
    from amnst.config import ConfigError

    with pytest.raises(ConfigError, match='spectral_style_weight=1.0 needs gram_norm="positions"'):
        get_preset("seed").with_overrides(spectral_style_weight=1.0)
