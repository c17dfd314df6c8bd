"""The NST feature stack equals the Keras model, in values and in input gradients."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from amnst.engine import model
from amnst.config import FEATURE_MAP_LAYERS
from amnst.engine.features import FeatureStack, gram_style_error, relu_conv
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


@pytest.mark.parametrize("dilations, with_bias", [((1, 1), True), ((1, 4), False)])
def test_relu_conv_gradient_equals_automatic_differentiation(dilations, with_bias):
    """The forward-convolution input gradient of :func:`relu_conv`, on maps shaped
    like conv2's input (no dilation) and like a random network's (dilated along time)."""
    shape, kernel_shape = ((2, 24, 31, 8), (2, 2, 8, 5)) if dilations == (1, 1) else ((2, 1, 60, 12), (1, 3, 12, 7))
    x = tf.random.stateless_normal(shape, seed=[1, 2])
    kernel = tf.random.stateless_normal(kernel_shape, seed=[3, 4]).numpy()
    bias = tf.random.stateless_normal(kernel_shape[-1:], seed=[5, 6]).numpy() if with_bias else None

    def plain(v: tf.Tensor) -> tf.Tensor:
        z = tf.nn.conv2d(v, kernel, 1, "VALID", dilations=[1, *dilations, 1])
        return tf.nn.relu(z if bias is None else tf.nn.bias_add(z, bias))

    def value_and_gradient(conv):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = conv(x)
            loss = tf.reduce_sum(tf.random.stateless_normal(y.shape, seed=[7, 8]) * y)
        return y.numpy(), tape.gradient(loss, x).numpy()

    ours, ours_gradient = value_and_gradient(lambda v: relu_conv(v, kernel, bias, dilations))
    theirs, theirs_gradient = value_and_gradient(plain)
    np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_allclose(ours_gradient, theirs_gradient, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [tf.float32, tf.bfloat16])
def test_gram_style_error_and_gradient(dtype):
    """The per-segment distance of position-normalised Grams, and its hand-written
    gradient, against the same expression differentiated by TensorFlow in float32."""
    maps = tf.cast(tf.nn.relu(tf.random.stateless_normal([3, 9, 11, 6], seed=[1, 1])), dtype)
    target = tf.abs(tf.random.stateless_normal([6, 6], seed=[2, 2]))
    target = (target + tf.transpose(target)) / 2.0
    scale = tf.constant([0.5, 1.0, 2.0])

    def reference(f: tf.Tensor) -> tf.Tensor:
        flat = tf.reshape(f, [3, -1, 6])
        gram = tf.matmul(flat, flat, transpose_a=True) / 99.0
        return scale * tf.reduce_sum(tf.square(gram - target), axis=[1, 2])

    wide = tf.cast(maps, tf.float32)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([maps, wide])
        ours, theirs = gram_style_error(maps, target, scale), reference(wide)
        weighted = [tf.reduce_sum(tf.constant([1.0, -2.0, 3.0]) * e) for e in (ours, theirs)]
    assert ours.dtype == tf.float32 and ours.shape == (3,)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5)
    ours_gradient, theirs_gradient = tape.gradient(weighted[0], maps), tape.gradient(weighted[1], wide)
    assert ours_gradient.dtype == dtype
    # In bfloat16 the gradient comes out rounded to its 8 bits.
    tolerance = 1e-5 if dtype == tf.float32 else 1e-2
    np.testing.assert_allclose(tf.cast(ours_gradient, tf.float32), theirs_gradient, rtol=tolerance,
                               atol=tolerance * np.abs(theirs_gradient).max())
