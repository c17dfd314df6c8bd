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


@pytest.mark.parametrize("weights", ["random", "trained"])
def test_pooled_first_block_equals_convolution_then_pool(cnns, weights):
    """Without conv1's maps read, its ReLU and bias act on the pooled maps
    (``features._first_block``): the same features and input gradients.

    On a random input: silence makes a window's values exactly equal, and
    then which of them a max-pool credits is arbitrary, in either order."""
    cnn = cnns[weights]
    x = tf.random.stateless_uniform([2, 384, 431, 1], seed=[7, 0])
    layers = (3, 4, 8, 16)
    weights_of = {layer: tf.random.stateless_normal(f.shape, seed=[layer, 1])
                  for layer, f in FeatureStack(cnn, layers)(x).items()}

    def features_and_gradient(indices):
        with tf.GradientTape() as tape:
            tape.watch(x)
            features = FeatureStack(cnn, indices)(x)
            loss = sum(tf.reduce_sum(w * features[layer]) for layer, w in weights_of.items())
        return [features[layer].numpy() for layer in layers], tape.gradient(loss, x).numpy()

    pooled, pooled_gradient = features_and_gradient(layers)
    plain, plain_gradient = features_and_gradient((2, *layers))
    for a, b in zip(pooled, plain):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(pooled_gradient, plain_gradient, rtol=1e-5, atol=1e-6 * np.abs(plain_gradient).max())


def test_dense_layers_are_refused():
    with pytest.raises(ValueError, match="feature-map"):
        FeatureStack(model.build_model(), (21,))
