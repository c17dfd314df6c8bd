"""The NST feature stack equals the Keras model, in values and in input gradients."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from amnst.engine import model
from amnst.config import FEATURE_MAP_LAYERS
from amnst.engine.features import FeatureStack
from tests.conftest import segments_of


@pytest.fixture(scope="module")
def cnns(seed_weights_npy, tmp_path_factory):
    trained = model.import_original_weights(seed_weights_npy, tmp_path_factory.mktemp("w") / "seed.npz")
    return {"random": model.build_model(seed=4), "trained": trained}


@pytest.mark.parametrize("weights", ["random", "trained"])
def test_features_equal_the_keras_model(cnns, music_and_rain, weights):
    cnn = cnns[weights]
    x = tf.constant(segments_of(music_and_rain[0], "default", 2, full=True)[..., None])
    stack = FeatureStack(cnn, FEATURE_MAP_LAYERS)(x)
    reference = model.feature_extractor(cnn, FEATURE_MAP_LAYERS)(x, training=False)
    for index, expected in zip(FEATURE_MAP_LAYERS, reference):
        # 1e-4: the inference batch norm is folded to one multiply-add in float64.
        np.testing.assert_allclose(stack[index], expected, rtol=1e-4, atol=1e-5, err_msg=f"layer {index}")


def test_input_gradients_equal_the_keras_model(cnns, music_and_rain):
    cnn = cnns["trained"]
    layers = (0, 2, 4, 8, 12, 16)
    x = tf.constant(segments_of(music_and_rain[0], "default", 2, full=True)[..., None])
    weights = [tf.random.stateless_normal(s, seed=[i, 0]) for i, s in
               enumerate(f.shape for f in FeatureStack(cnn, layers)(x).values())]

    def gradient(features):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = sum(tf.reduce_sum(w * f) for w, f in zip(weights, features(x)))
        return tape.gradient(loss, x).numpy()

    ours = gradient(lambda v: list(FeatureStack(cnn, layers)(v).values()))
    keras_extractor = model.feature_extractor(cnn, layers)
    theirs = gradient(lambda v: keras_extractor(v, training=False))
    # Rounding differences of 1e-7 can flip which of two near-equal values a
    # max-pool window picks, routing that window's gradient elsewhere: allow a
    # handful of such positions, nothing systematic.
    off = ~np.isclose(ours, theirs, rtol=1e-4, atol=1e-5 * np.abs(theirs).max())
    assert off.mean() < 1e-4
    assert np.linalg.norm(ours - theirs) < 1e-2 * np.linalg.norm(theirs)


def test_dense_layers_are_refused():
    with pytest.raises(ValueError, match="feature-map"):
        FeatureStack(model.build_model(), (21,))
