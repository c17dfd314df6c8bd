"""The seed CNN's feature maps as plain TensorFlow ops, for NST.

NST differentiates features with respect to the input only, never the
weights, so the stack below is the Keras model's inference path written out
with its weights as constants, and one gradient written by hand: the first
convolution has a single input channel, and TensorFlow's generic input
gradient for it is the most expensive op of a whole step. A test holds these
features equal to the Keras model's.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from amnst.config import FEATURE_MAP_LAYERS

# model.layers indices of the convolutions; each is followed by its pool.
_CONV_LAYERS = (2, 4, 6, 8, 10, 12, 14, 16)


class FeatureStack:
    """``stack(x)`` maps CNN inputs ``(B, 384, 431, 1)`` to ``{index: features}``.

    Only the layers up to the deepest requested index are evaluated. Indices
    are those of ``model.layers`` (see ``amnst.engine.model.LAYER_TABLE``); layers
    past 19 (the dense head) are not feature maps and are refused.
    """

    def __init__(self, model: keras.Model, indices: tuple[int, ...]) -> None:
        for index in indices:
            if index not in FEATURE_MAP_LAYERS:
                raise ValueError(f"layer {index} is not a feature-map layer {FEATURE_MAP_LAYERS}")
        self.indices = tuple(indices)
        self.deepest = max(indices)
        self._bn1 = _batchnorm_affine(model.layers[1])
        self._bn2 = _batchnorm_affine(model.layers[18])
        self._convs = [(np.asarray(model.layers[i].kernel), np.asarray(model.layers[i].bias))
                       for i in _CONV_LAYERS]
        self._pool_strides = [model.layers[i + 1].strides[0] for i in _CONV_LAYERS]

    def __call__(self, x: tf.Tensor) -> dict[int, tf.Tensor]:
        outputs = {0: x}
        h = x * self._bn1[0] + self._bn1[1]
        outputs[1] = h
        for block, index in enumerate(_CONV_LAYERS):
            if index > self.deepest:
                break
            kernel, bias = self._convs[block]
            h = _first_conv(h, kernel, bias) if block == 0 else tf.nn.relu(
                tf.nn.conv2d(h, kernel, 1, "VALID") + bias)
            outputs[index] = h
            h = tf.nn.max_pool2d(h, 2, self._pool_strides[block], "SAME")
            outputs[index + 1] = h
        if self.deepest >= 18:
            outputs[18] = outputs[19] = h * self._bn2[0] + self._bn2[1]  # dropout is inert at inference
        return {i: outputs[i] for i in self.indices}


def _batchnorm_affine(layer: keras.layers.BatchNormalization) -> tuple[np.ndarray, np.ndarray]:
    """Inference-mode batch normalisation as ``x * scale + shift``."""
    gamma, beta, mean, variance = (np.asarray(w, np.float64) for w in (
        layer.gamma, layer.beta, layer.moving_mean, layer.moving_variance))
    scale = gamma / np.sqrt(variance + layer.epsilon)
    return scale.astype(np.float32), (beta - mean * scale).astype(np.float32)


def _first_conv(x: tf.Tensor, kernel: np.ndarray, bias: np.ndarray) -> tf.Tensor:
    """``relu(conv2d(x, kernel) + bias)`` for one input channel and a 2x2 kernel.

    Its input gradient is computed as one matmul that folds the 32 channels
    into the 4 kernel taps, then four shifted adds.
    """
    @tf.custom_gradient
    def conv(x: tf.Tensor) -> tuple[tf.Tensor, object]:
        y = tf.nn.relu(tf.nn.conv2d(x, kernel, 1, "VALID") + bias)

        def grad(dy: tf.Tensor) -> tf.Tensor:
            dz = tf.raw_ops.ReluGrad(gradients=dy, features=y)
            channels = kernel.shape[-1]
            taps = tf.matmul(tf.reshape(dz, [-1, channels]), tf.reshape(kernel, [4, channels]),
                             transpose_b=True)
            shape = tf.shape(dz)
            taps = tf.reshape(taps, [shape[0], shape[1], shape[2], 4])
            dx = 0.0
            for tap, (di, dj) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
                dx += tf.pad(taps[..., tap:tap + 1], [[0, 0], [di, 1 - di], [dj, 1 - dj], [0, 0]])
            return dx

        return y, grad

    return conv(x)
