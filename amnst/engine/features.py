"""The seed CNN's feature maps as plain TensorFlow ops, for NST.

NST differentiates features with respect to the input only, never the
weights, so the stack below is the Keras model's inference path written out
with its weights as constants, and its input gradients written by hand: the
first convolution has a single input channel, and TensorFlow's generic input
gradient for it is the most expensive op of a whole step; the others'
gradients are forward convolutions (:func:`relu_conv`). A test holds these
features equal to the Keras model's. The maps compute in float32 or bfloat16
(``amnst.engine.precision``). Their Gram matrices, what the style loss and the
quality measures' independent network match, are here too, in float32.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

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

    def __init__(self, model: keras.Model, indices: tuple[int, ...], dtype: tf.DType = tf.float32) -> None:
        """``dtype``: the convolutions' and their maps' type. Under bfloat16 the
        first batch normalisation still runs in float32 (on the input's full
        precision) and the maps come out in bfloat16; callers cast what they
        accumulate."""
        for index in indices:
            if index not in FEATURE_MAP_LAYERS:
                raise ValueError(f"layer {index} is not a feature-map layer {FEATURE_MAP_LAYERS}")
        self.indices = tuple(indices)
        self.deepest = max(indices)
        self._bn1 = _batchnorm_affine(model.layers[1])
        self.dtype = tf.as_dtype(dtype)
        # NumPy constants (bfloat16 through ml_dtypes), so they fold into traced graphs.
        as_dtype = self.dtype.as_numpy_dtype
        self._convs = [(np.asarray(model.layers[i].kernel).astype(as_dtype),
                        np.asarray(model.layers[i].bias).astype(as_dtype)) for i in _CONV_LAYERS]
        self._bn2 = tuple(v.astype(as_dtype) for v in _batchnorm_affine(model.layers[18]))
        self._pool_strides = [model.layers[i + 1].strides[0] for i in _CONV_LAYERS]

    def __call__(self, x: tf.Tensor) -> dict[int, tf.Tensor]:
        outputs = {0: x}
        h = tf.cast(x * self._bn1[0] + self._bn1[1], self.dtype)
        outputs[1] = h
        for block, index in enumerate(_CONV_LAYERS):
            if index > self.deepest:
                break
            kernel, bias = self._convs[block]
            stride = self._pool_strides[block]
            if block == 0 and index not in self.indices and self.deepest > index:
                # conv1's own maps are not read: convolution, ReLU and pool as one op.
                h = outputs[index + 1] = _first_block(h, kernel, bias, stride)
                continue
            h = _first_conv(h, kernel, bias) if block == 0 else relu_conv(h, kernel, bias)
            outputs[index] = h
            h = tf.nn.max_pool2d(h, 2, stride, "SAME")
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
    into the 4 kernel taps, then four shifted adds (:func:`_taps_to_input`).
    """
    @tf.custom_gradient
    def conv(x: tf.Tensor) -> tuple[tf.Tensor, object]:
        y = tf.nn.relu(tf.nn.bias_add(tf.nn.conv2d(x, kernel, 1, "VALID"), bias))

        def grad(dy: tf.Tensor) -> tf.Tensor:
            return _taps_to_input(tf.raw_ops.ReluGrad(gradients=dy, features=y), kernel)

        return y, grad

    return conv(x)


def _first_block(x: tf.Tensor, kernel: np.ndarray, bias: np.ndarray, stride: int) -> tf.Tensor:
    """``max_pool(relu(conv2d(x, kernel) + bias))``, 2x2 windows, for one input channel.

    Computed as ``relu(max_pool(conv2d(x, kernel)) + bias)``, the same values
    (a per-channel constant and a rising function both commute with a maximum),
    so that the ReLU, the bias and the ReLU's gradient touch the pooled maps, a
    quarter of the convolution's and the largest of the step. Where a window's
    pooled value is positive its maximum passes the gradient; where not, every
    ReLU in the window is closed.
    """
    @tf.custom_gradient
    def block(x: tf.Tensor) -> tuple[tf.Tensor, object]:
        z = tf.nn.conv2d(x, kernel, 1, "VALID")
        peaks = tf.nn.max_pool2d(z, 2, stride, "SAME")
        pooled = tf.nn.relu(tf.nn.bias_add(peaks, bias))

        def grad(dpooled: tf.Tensor) -> tf.Tensor:
            open_windows = tf.raw_ops.ReluGrad(gradients=dpooled, features=pooled)
            dz = tf.raw_ops.MaxPoolGrad(orig_input=z, orig_output=peaks, grad=open_windows,
                                        ksize=[1, 2, 2, 1], strides=[1, stride, stride, 1], padding="SAME")
            return _taps_to_input(dz, kernel)

        return pooled, grad

    return block(x)


def relu_conv(x: tf.Tensor, kernel: np.ndarray, bias: np.ndarray | None = None,
              dilations: tuple[int, int] = (1, 1)) -> tf.Tensor:
    """``relu(conv2d(x, kernel, "VALID", dilations) + bias)`` for maps ``x`` ``(B, H, W, C)``
    and a kernel ``(kh, kw, C, F)``; no bias by default.

    Its input gradient is the forward convolution of the ReLU's gradient, padded
    by the kernel's dilated reach on every side, with the kernel flipped and its
    channels swapped: the same sums as TensorFlow's input-gradient op, whose
    oneDNN kernel costs several times a forward pass on one segment's small maps.
    """
    flipped = np.ascontiguousarray(np.transpose(kernel[::-1, ::-1], (0, 1, 3, 2)))
    reach = [(size - 1) * rate for size, rate in zip(kernel.shape[:2], dilations)]
    padding = [[0, 0], [reach[0], reach[0]], [reach[1], reach[1]], [0, 0]]
    rates = [1, *dilations, 1]

    @tf.custom_gradient
    def conv(x: tf.Tensor) -> tuple[tf.Tensor, object]:
        z = tf.nn.conv2d(x, kernel, 1, "VALID", dilations=rates)
        y = tf.nn.relu(z if bias is None else tf.nn.bias_add(z, bias))

        def grad(dy: tf.Tensor) -> tf.Tensor:
            return tf.nn.conv2d(tf.raw_ops.ReluGrad(gradients=dy, features=y), flipped, 1, padding, dilations=rates)

        return y, grad

    return conv(x)


def _taps_to_input(dz: tf.Tensor, kernel: np.ndarray) -> tf.Tensor:
    """The input gradient of a one-channel 2x2 ``VALID`` convolution from the gradient
    ``dz`` ``(B, H, W, C)`` of its pre-activation: ``(B, H + 1, W + 1, 1)``."""
    channels = kernel.shape[-1]
    taps = tf.matmul(tf.reshape(dz, [-1, channels]), tf.reshape(kernel, [4, channels]), transpose_b=True)
    shape = tf.shape(dz)
    taps = tf.reshape(taps, [shape[0], shape[1], shape[2], 4])
    dx = 0.0
    for tap, (di, dj) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
        dx += tf.pad(taps[..., tap:tap + 1], [[0, 0], [di, 1 - di], [dj, 1 - dj], [0, 0]])
    return dx


def gram_matrices(maps: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Each segment's Gram matrix ``F^T F`` over the positions of maps ``(B, ..., C)``:
    ``(B, C, C)``, and the number of positions per segment (a float32 scalar).

    Written with its gradient, ``F (dG + dG^T)``: one product over the maps where
    automatic differentiation takes two, and the maps are the step's largest.
    """
    channels = maps.shape[-1]
    flat = tf.reshape(maps, [tf.shape(maps)[0], -1, channels])

    @tf.custom_gradient
    def gram(flat: tf.Tensor) -> tuple[tf.Tensor, object]:
        def grad(dgram: tf.Tensor) -> tf.Tensor:
            return tf.matmul(flat, dgram + tf.linalg.matrix_transpose(dgram))

        return tf.matmul(flat, flat, transpose_a=True), grad

    return gram(flat), tf.cast(tf.shape(flat)[1], tf.float32)


def gram_style_error(maps: tf.Tensor, target: tf.Tensor, scale: tf.Tensor) -> tf.Tensor:
    """Per segment, ``scale[b] * sum((F_b^T F_b / n - target)^2)``: how far each segment's
    position-normalised Gram matrix of maps ``(B, ..., C)`` (``n`` positions) lies from
    ``target`` ``(C, C)``. ``(B,)`` float32.

    The Gram accumulates in float32 whatever the maps' type. Written with its
    gradient, ``4 scale F (G / n - target) / n`` (the difference is symmetric):
    one product, computed in the maps' own type, so a bfloat16 network's largest
    maps get their gradient without a float32 copy of them or of it.
    """
    channels = maps.shape[-1]
    flat = tf.reshape(maps, [tf.shape(maps)[0], -1, channels])
    positions = tf.cast(tf.shape(flat)[1], tf.float32)

    @tf.custom_gradient
    def error(flat: tf.Tensor) -> tuple[tf.Tensor, object]:
        wide = tf.cast(flat, tf.float32)
        difference = tf.matmul(wide, wide, transpose_a=True) / positions - target
        per_segment = scale * tf.reduce_sum(tf.square(difference), axis=[1, 2])

        def grad(upstream: tf.Tensor) -> tf.Tensor:
            weight = (4.0 / positions) * scale * upstream
            return tf.matmul(flat, tf.cast(difference * weight[:, None, None], flat.dtype))

        return per_segment, grad

    return error(flat)


def pooled_grams(maps_of: Callable[[np.ndarray], Sequence[tf.Tensor]], segments: np.ndarray,
                 batch_size: int) -> tuple[list[tf.Tensor], list[int]]:
    """Gram matrices summed over every position of every segment, one per map, in
    float32, and the positions summed: ``maps_of`` gives the maps ``(B, ..., C)`` of a
    batch of at most ``batch_size`` of ``segments``."""
    sums: list[tf.Tensor] = []
    positions: list[int] = []
    for start in range(0, len(segments), batch_size):
        for k, maps in enumerate(maps_of(segments[start:start + batch_size])):
            flat = tf.reshape(tf.cast(maps, tf.float32), [-1, maps.shape[-1]])
            gram = tf.matmul(flat, flat, transpose_a=True)
            if k == len(sums):
                sums.append(gram)
                positions.append(0)
            else:
                sums[k] += gram
            positions[k] += int(flat.shape[0])
    return sums, positions
