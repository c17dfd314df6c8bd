"""Neural style transfer over mel segments.

A target mel is optimised so that its CNN features match the content's at
the content layers, and its Gram matrices match the style's at the style
layers. Shapes: mel segments ``(B, n_mels, frames)``; a layer's features
``(B, H, W, C)``; a Gram matrix ``(C, C)``.

Two Gram conventions (``NSTConfig.gram_norm``):

- ``"none"`` (the original): ``G = F F^T`` pooled over every segment of the
  batch, un-normalised; style loss ``sum((Gs - Gt)^2) / (B*H*W*C)``. The
  pooled target Gram couples the batch's segments.
- ``"positions"``: per segment ``G_b = F_b F_b^T / (H*W)``, the style Gram is
  the mean over style segments, and the style loss is the mean squared
  difference of the ``C x C`` entries. Every segment's loss depends on that
  segment alone, so any batching gives the same result.

Content loss per layer is the mean squared feature difference,
``sum((Fc - Ft)^2) / (B*H*W*C)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import keras
import numpy as np
import tensorflow as tf

from amnst.engine import musical, precision
from amnst.config import AudioConfig, NSTConfig
from amnst.engine.features import FeatureStack, gram_matrices, gram_style_error, pooled_grams, relu_conv

# Smallest mel value a log-parameterised target can represent (log of zero
# is -inf; the mel has empty filter rows and zero padding).
LOG_FLOOR = 1e-8
# Offset of the log CNN input: 60 dB below a mel magnitude of 1, about the
# loudest partials' level at unit-peak audio.
LOG_INPUT_OFFSET = 1e-3
# Keeps relative losses finite for an all-zero reference (silence, dead layers).
RELATIVE_FLOOR = 1e-12
ADAM_BETA1, ADAM_BETA2, ADAM_EPSILON = 0.9, 0.999, 1e-8
# The random shallow networks of ``random_style_weight``: one per dilation, each
# a 3-tap convolution over frames (receptive fields of 3, 9 and 33 frames: 35
# to 380 ms) from the log-mel's bands to this many ReLU filters. Seeded apart
# from the quality measures' independent network (``quality.INDEPENDENT_NETWORK_SEED``).
RANDOM_NET_DILATIONS = (1, 4, 16)
RANDOM_NET_FILTERS = 64
RANDOM_NET_SEED = 2019


@dataclass(frozen=True)
class StyleTargets:
    """The style's Gram matrix at every style layer, pooled over all its segments."""

    grams: tuple[np.ndarray, ...]
    # The style's own segments: the starting point of ``init="style"``.
    segments: np.ndarray


@dataclass(frozen=True)
class NSTResult:
    """Optimised segments and their loss record.

    ``loss``, ``content_loss`` and ``style_loss`` are ``(iterations + 1, B)``:
    row ``i`` is the (weighted) loss of the target before update ``i``; the
    last row is the returned target's. Under coupled Grams every column holds
    the batch's loss. ``rollbacks`` counts non-finite steps per segment;
    ``gave_up`` marks segments that hit ``max_retries`` in a row.
    """

    mels: np.ndarray
    loss: np.ndarray
    content_loss: np.ndarray
    style_loss: np.ndarray
    rollbacks: np.ndarray
    gave_up: np.ndarray


class Snapshot(NamedTuple):
    """What a rollback restores, per segment: the target ``x`` (``(B, n_mels, frames)``,
    in the parameterisation's units), Adam's moments ``m`` and ``v`` (same shape)
    and its step count ``t`` ``(B,)``."""

    x: tf.Tensor
    m: tf.Tensor
    v: tf.Tensor
    t: tf.Tensor


class OptimiserState(NamedTuple):
    """The compiled step's state, per segment (:meth:`StyleTransfer.step_graph`): the
    current :class:`Snapshot`'s fields; the learning rate ``lr`` and whether the
    decay schedule still sets it (``scheduled``); rollbacks in a row (``retries``),
    whether the last step restored one (``restored``), whether the segment is still
    optimised (``active``); and the snapshots of one and two steps back."""

    x: tf.Tensor
    m: tf.Tensor
    v: tf.Tensor
    t: tf.Tensor
    lr: tf.Tensor
    scheduled: tf.Tensor
    retries: tf.Tensor
    restored: tf.Tensor
    active: tf.Tensor
    prev1: Snapshot
    prev2: Snapshot

    @property
    def snapshot(self) -> Snapshot:
        return Snapshot(self.x, self.m, self.v, self.t)


class StyleTransfer:
    """The compiled optimisation for one CNN and one NST configuration.

    Build it once per process: the feature extractor and the compiled step
    are reused by every call.
    """

    def __init__(self, model: keras.Model, config: NSTConfig, jit_compile: bool | None = None,
                 audio: AudioConfig = AudioConfig()) -> None:
        """``audio``: the mels' parameters (the pitch-class projection reads their
        bands' frequencies). ``jit_compile``: compile the step with XLA; by default, where TensorFlow
        sees a GPU. There XLA fuses the step's element-wise work into few kernels
        (the program ``amnst bench export-xla`` writes is this step, so GPU
        figures measure it); on the CPU it was no faster than TensorFlow's own
        kernels (docs/performance.md)."""
        self.config = config
        # Resolved once: the step is traced for one type.
        self.precision = precision.resolve(config.precision)
        if jit_compile is None:
            jit_compile = bool(tf.config.list_physical_devices("GPU"))
        # One feature stack per CNN input, holding every layer read from it:
        # a single forward pass when content and style share their input.
        wanted: dict[str, set[int]] = {}
        wanted.setdefault(config.content_input, set()).update(config.content_layers)
        wanted.setdefault(config.style_input, set()).update(config.style_layers)
        self._dtype = precision.compute_dtype(self.precision)
        self._stacks = {name: FeatureStack(model, tuple(sorted(layers)), self._dtype)
                        for name, layers in wanted.items()}
        self._pitch_matrix = musical.pitch_class_matrix(audio)
        self._random_kernels = tuple(kernel.astype(self._dtype.as_numpy_dtype)
                                     for kernel in _random_net_kernels(audio.n_mels)) if config.random_style_weight else ()
        self._step = _TracedForAnyBatchAndWidth(self.step_graph, jit_compile=jit_compile)
        self._losses = _TracedForAnyBatchAndWidth(self._losses_graph)

    # --- features -----------------------------------------------------------

    def features(self, mels: np.ndarray | tf.Tensor, cnn_input: str = "mel") -> dict[int, tf.Tensor]:
        """Features of ``(B, n_mels, frames)`` mels, in inference mode, at every
        layer read from the CNN input ``cnn_input`` (see ``NSTConfig``), in the
        CNN's precision: what reads them (Grams, losses) accumulates in float32."""
        x = tf.convert_to_tensor(mels, tf.float32)
        if cnn_input == "log":
            x = tf.math.log(x + LOG_INPUT_OFFSET)
        return self._stacks[cnn_input](tf.expand_dims(x, -1))

    def _content_and_style_features(self, mels: tf.Tensor) -> tuple[dict[int, tf.Tensor], dict[int, tf.Tensor]]:
        cfg = self.config
        content = self.features(mels, cfg.content_input)
        return content, content if cfg.style_input == cfg.content_input else self.features(mels, cfg.style_input)

    def _batched_features(self, mels: np.ndarray, layers: tuple[int, ...], cnn_input: str) -> list[tf.Tensor]:
        size = self.config.segments_per_batch
        chunks = [self.features(mels[i:i + size], cnn_input) for i in range(0, len(mels), size)]
        return [tf.cast(tf.concat([chunk[layer] for chunk in chunks], axis=0), tf.float32) for layer in layers]

    def style_targets(self, style_segments: np.ndarray) -> StyleTargets:
        """Gram matrices of the style pooled over all its segments, computed once."""
        _check_segments(style_segments, "style segments")
        sums, positions = pooled_grams(
            lambda batch: self._style_maps(self.features(batch, self.config.style_input), batch),
            style_segments, self.config.segments_per_batch)
        if self.config.gram_norm == "positions":
            grams = [s / n for s, n in zip(sums, positions)]
        else:
            grams = sums
        return StyleTargets(tuple(np.asarray(g, np.float32) for g in grams),
                            np.asarray(style_segments, np.float32))

    def _style_maps(self, style_features: dict[int, tf.Tensor], mels: np.ndarray | tf.Tensor) -> list[tf.Tensor]:
        """The maps whose Grams the style loss matches, ``(B, ..., C)`` each: every style
        layer's ``(B, H, W, C)``; then, with a spectral style weight, the log-mel
        ``(B, frames, n_mels)`` (float32); then, with a random style weight, each random
        network's ``(B, 1, frames', filters)``. The networks' maps are in the CNN's precision."""
        cfg = self.config
        maps = [style_features[layer] for layer in cfg.style_layers]
        if cfg.spectral_style_weight or cfg.random_style_weight:
            log_mel = tf.math.log(tf.transpose(tf.convert_to_tensor(mels, tf.float32), [0, 2, 1]) + LOG_INPUT_OFFSET)
            if cfg.spectral_style_weight:
                maps.append(log_mel)
            # The random networks compute at the CNN's precision, their Grams in float32.
            net_input = tf.cast(log_mel, self._dtype)[:, None]
            for kernel, dilation in zip(self._random_kernels, RANDOM_NET_DILATIONS):
                maps.append(relu_conv(net_input, kernel[None], dilations=(1, dilation)))
        return maps

    def _style_weights(self) -> list[float]:
        """The weight of each of :meth:`_style_maps`'s maps."""
        cfg = self.config
        return ([cfg.style_weight] * len(cfg.style_layers) + [cfg.spectral_style_weight] * bool(cfg.spectral_style_weight)
                + [cfg.random_style_weight] * len(self._random_kernels))

    # --- losses -------------------------------------------------------------

    def content_targets(self, content_segments: np.ndarray) -> tuple[tuple[tf.Tensor, tf.Tensor], ...]:
        """Per content layer: the content's features and each segment's loss scale;
        then, with a pitch weight, the content's pitch classes ``(B, 12, frames)``
        and their frame weights, and with an onset weight, its onset envelope
        ``(B, 1, frames - 1)`` and its scale (:mod:`amnst.engine.musical`).

        The scale folds the weight and the loss's denominator into one factor,
        so a step's content loss is a plain sum of squares.
        """
        cfg = self.config
        features = self._batched_features(content_segments, cfg.content_layers, cfg.content_input)
        batch = len(content_segments)
        targets = []
        for f in features:
            scale = cfg.content_weight / float(np.prod(f.shape[1:]))
            if cfg.relative_loss:
                scale /= tf.reduce_mean(tf.square(f), axis=[1, 2, 3]) + RELATIVE_FLOOR
            if cfg.couples_segments:
                scale /= batch
            targets.append((f, tf.broadcast_to(tf.cast(scale, tf.float32), [batch])))
        mels = tf.convert_to_tensor(content_segments, tf.float32)
        if cfg.pitch_weight:
            # Unit vectors differ by at most 2 in squared norm, and the frame weights sum to 1.
            weights = cfg.pitch_weight * musical.frame_weights(mels)
            targets.append((musical.pitch_classes(mels, self._pitch_matrix), weights))
        if cfg.onset_weight:
            onsets = musical.onset_envelope(mels)
            scale = cfg.onset_weight / ((tf.reduce_sum(tf.square(onsets), axis=[1, 2]) + RELATIVE_FLOOR))
            targets.append((onsets, scale))
        return tuple(targets)

    def _music_loss(self, mel: tf.Tensor, targets: tuple[tuple[tf.Tensor, tf.Tensor], ...]) -> tf.Tensor:
        """The pitch and onset content losses per segment, ``(B,)`` (see :meth:`content_targets`)."""
        cfg, loss, k = self.config, 0.0, 0
        if cfg.pitch_weight:
            classes, weights = targets[k]
            loss += tf.reduce_sum(weights * tf.square(musical.pitch_classes(mel, self._pitch_matrix) - classes),
                                  axis=[1, 2])
            k += 1
        if cfg.onset_weight:
            onsets, scale = targets[k]
            loss += scale * tf.reduce_sum(tf.square(musical.onset_envelope(mel) - onsets), axis=[1, 2])
        return loss

    def _segment_losses(self, mel: tf.Tensor, content: tuple[tuple[tf.Tensor, tf.Tensor], ...],
                        grams: tuple[tf.Tensor, ...]) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """Weighted content and style loss per segment, each ``(B,)``, and the objective.

        The objective is the sum of the segments' losses (the batch's loss under
        coupled Grams, which every segment then reports).
        """
        cfg = self.config
        content_features, style_features = self._content_and_style_features(mel)
        batch = tf.shape(mel)[0]
        content_loss = tf.zeros([batch])
        for layer, (target, scale) in zip(cfg.content_layers, content):
            content_loss += _weighted_squared_error(tf.cast(content_features[layer], tf.float32), target, scale)
        if cfg.pitch_weight or cfg.onset_weight:
            content_loss += self._music_loss(mel, content[len(cfg.content_layers):])
        objective = tf.reduce_sum(content_loss)
        style_loss = tf.zeros([batch])
        for f, gram, weight in zip(self._style_maps(style_features, mel), grams, self._style_weights()):
            c = f.shape[-1]
            if cfg.couples_segments:
                # Positions are dynamic: a compiled step serves every fitted segment width.
                per_segment, positions = gram_matrices(tf.cast(f, tf.float32))
                n = tf.cast(batch, tf.float32) * positions * float(c)
                error = weight * tf.reduce_sum(tf.square(gram - tf.reduce_sum(per_segment, 0))) / n
                objective += error
            else:
                scale = weight / float(c * c)
                if cfg.relative_loss:
                    scale /= tf.reduce_mean(tf.square(gram)) + RELATIVE_FLOOR
                error = gram_style_error(f, gram, tf.fill([batch], scale))
                objective += tf.reduce_sum(error)
            style_loss += error
        if cfg.couples_segments:
            content_loss = tf.fill([batch], tf.reduce_sum(content_loss))
        return tf.stop_gradient(content_loss), tf.stop_gradient(style_loss), objective

    def _to_mel(self, x: tf.Tensor) -> tf.Tensor:
        return tf.exp(x) if self.config.parameterization == "log" else x

    def _from_mel(self, mel: tf.Tensor) -> tf.Tensor:
        if self.config.parameterization == "log":
            return tf.math.log(tf.maximum(mel, LOG_FLOOR))
        return mel

    def _losses_graph(self, x, content, grams):
        content_loss, style_loss, _ = self._segment_losses(self._to_mel(x), content, grams)
        return content_loss + style_loss, content_loss, style_loss

    def loss(self, target: np.ndarray, content_segments: np.ndarray,
             targets: StyleTargets) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Total, content and style loss per segment of target mels ``(B, n_mels, frames)``."""
        content = self.content_targets(content_segments)
        grams = tuple(tf.constant(g) for g in targets.grams)
        return tuple(np.asarray(t) for t in self._losses(
            self._from_mel(tf.constant(target, tf.float32)), content, grams))

    # --- optimisation -------------------------------------------------------

    def step_graph(self, state: OptimiserState, content, grams, iteration):
        """One guarded update of every active segment (:class:`OptimiserState`).

        A segment whose loss or gradient is not finite is
        rolled back to ``prev2`` with its learning rate halved (and the decay
        schedule dropped). The restored target itself evaluates finite, so
        rollbacks count as "in a row" until an update made after the restored
        step succeeds; after ``max_retries`` in a row the segment stops.
        """
        cfg = self.config
        x, m, v, t = state.snapshot
        lr, retries, restored, active = state.lr, state.retries, state.restored, state.active
        with tf.GradientTape() as tape:
            tape.watch(x)
            content_loss, style_loss, objective = self._segment_losses(self._to_mel(x), content, grams)
        loss = content_loss + style_loss
        grad = tape.gradient(objective, x)

        finite = tf.math.is_finite(loss) & tf.reduce_all(tf.math.is_finite(grad), axis=[1, 2])
        if cfg.couples_segments:
            finite = tf.fill(tf.shape(finite), tf.reduce_all(finite))
        grad = tf.where(finite[:, None, None], grad, 0.0)

        decayed = cfg.learning_rate * cfg.decay_rate ** (iteration / cfg.decay_steps)
        rate = tf.where(state.scheduled, decayed, lr)
        t_next = t + 1.0
        if cfg.optimizer == "adam":
            m_next = ADAM_BETA1 * m + (1 - ADAM_BETA1) * grad
            v_next = ADAM_BETA2 * v + (1 - ADAM_BETA2) * tf.square(grad)
            m_hat = m_next / (1 - ADAM_BETA1 ** t_next)[:, None, None]
            v_hat = v_next / (1 - ADAM_BETA2 ** t_next)[:, None, None]
            x_next = x - rate[:, None, None] * m_hat / (tf.sqrt(v_hat) + ADAM_EPSILON)
        else:
            m_next, v_next = m, v
            x_next = x - rate[:, None, None] * grad

        ok = finite & active
        failed = ~finite & active
        retries = tf.where(failed, retries + 1, tf.where(ok & ~restored, 0, retries))
        restored = tf.where(active, failed, restored)
        # The rollback restores the whole optimiser state of two steps back.
        current, prev1, prev2 = state.snapshot, state.prev1, state.prev2
        updated = Snapshot(x_next, m_next, v_next, t_next)

        def per_segment() -> tuple[Snapshot, Snapshot, Snapshot]:
            return (Snapshot(*(_select(ok, u, _select(failed, p2, c)) for u, p2, c in zip(updated, prev2, current))),
                    Snapshot(*(_select(ok, c, _select(failed, p2, p1)) for c, p2, p1 in zip(current, prev2, prev1))),
                    Snapshot(*(_select(ok, p1, p2) for p1, p2 in zip(prev1, prev2))))

        # Every segment updated, the usual case: the snapshots shift without the
        # nine selects over whole targets and moments.
        new, new_prev1, new_prev2 = tf.cond(tf.reduce_all(ok), lambda: (updated, current, prev1), per_segment)
        state = OptimiserState(*new, lr=tf.where(failed, rate * 0.5, lr), scheduled=state.scheduled & ~failed,
                               retries=retries, restored=restored, active=active & (retries <= cfg.max_retries),
                               prev1=new_prev1, prev2=new_prev2)
        return state, loss, content_loss, style_loss, failed

    def initial_target(self, content_segments: np.ndarray, targets: StyleTargets,
                       indices: np.ndarray) -> np.ndarray:
        """The starting mels ``(B, n_mels, frames)`` for ``config.init``.

        Random starts are seeded by ``(seed, segment index)``, so a segment
        starts the same whatever batch it is optimised in.
        """
        init = self.config.init
        if init == "content":
            return content_segments.astype(np.float32)
        if init in ("style", "mix"):
            style = _fit_frames(targets.segments[indices % len(targets.segments)], content_segments.shape[2])
            if init == "style":
                return style
            # At the content's level, segment by segment: a style far louder or
            # quieter than the content would otherwise swamp it or vanish.
            level = content_segments.mean(axis=(1, 2), keepdims=True) / (style.mean(axis=(1, 2), keepdims=True)
                                                                          + RELATIVE_FLOOR)
            # As a plain mix of the waveforms would: for uncorrelated sounds, magnitude mels add about so.
            share = self.config.init_style_share
            return ((1.0 - share) * content_segments + share * level * style).astype(np.float32)
        if init == "zero":
            return np.zeros_like(content_segments, dtype=np.float32)
        noise = [np.random.default_rng([self.config.seed, int(i)]).standard_normal(
            content_segments.shape[1:], dtype=np.float32) for i in indices]
        stacked = np.stack(noise)
        return np.abs(stacked) if self.config.parameterization == "log" else stacked

    def initial_state(self, content_segments: np.ndarray, targets: StyleTargets,
                      indices: np.ndarray | None = None) -> tuple[OptimiserState, tuple, tuple[tf.Tensor, ...]]:
        """The compiled step's inputs before the first update: the optimiser
        state (see :meth:`step_graph`), the content targets and the style Grams."""
        _check_segments(content_segments, "content segments")
        indices = np.arange(len(content_segments)) if indices is None else np.asarray(indices)
        start = self.initial_target(content_segments, targets, indices)
        state, content = self.prepare_graph(tf.constant(content_segments, tf.float32), tf.constant(start))
        return state, content, tuple(tf.constant(g) for g in targets.grams)

    def prepare_graph(self, content_segments: tf.Tensor, start: tf.Tensor) -> tuple[OptimiserState, tuple]:
        """The optimiser state before the first update from starting mels ``start``
        and the content targets of ``content_segments``, both ``(B, n_mels, frames)``."""
        batch = content_segments.shape[0]
        x = self._from_mel(start)
        zeros = tf.zeros_like(x)
        snapshot = Snapshot(x, zeros, zeros, tf.zeros([batch]))
        state = OptimiserState(*snapshot, lr=tf.fill([batch], float(self.config.learning_rate)),
                               scheduled=tf.ones([batch], tf.bool), retries=tf.zeros([batch], tf.int32),
                               restored=tf.zeros([batch], tf.bool), active=tf.ones([batch], tf.bool),
                               prev1=snapshot, prev2=snapshot)
        return state, self.content_targets(content_segments)

    def optimise(self, content_segments: np.ndarray, targets: StyleTargets,
                 indices: np.ndarray | None = None,
                 progress: Callable[[int], None] | None = None) -> NSTResult:
        """Optimise one batch of target segments against content and style.

        ``content_segments`` is ``(B, n_mels, frames)``; ``indices`` are the
        segments' positions in their piece (default ``0..B-1``), used to seed
        random starts. ``progress`` is called with the iteration number after
        every update.
        """
        cfg = self.config
        state, content, grams = self.initial_state(content_segments, targets, indices)
        batch = len(content_segments)
        history, failures = [], []
        for iteration in range(cfg.iterations):
            state, *losses, failed = self._step(state, content, grams, tf.constant(iteration, tf.float32))
            history.append(losses)
            failures.append(failed)
            if progress is not None:
                progress(iteration + 1)
        x = state.x
        history.append(list(self._losses(x, content, grams)))
        # A final target with a non-finite loss is replaced by its rollback point.
        final_ok = tf.math.is_finite(history[-1][0])
        x = _select(final_ok, x, state.prev2.x)
        if not bool(tf.reduce_all(final_ok)):
            history[-1] = list(self._losses(x, content, grams))
        loss, content_loss, style_loss = (np.stack([np.asarray(h[k]) for h in history]) for k in range(3))
        rollbacks = np.sum([np.asarray(f) for f in failures], axis=0).astype(np.int32) if failures \
            else np.zeros(batch, np.int32)
        return NSTResult(np.asarray(self._to_mel(x)), loss, content_loss, style_loss,
                         rollbacks, ~np.asarray(state.active))


def optimise_piece(transfer: StyleTransfer, content_segments: np.ndarray, targets: StyleTargets,
                   progress: Callable[[int], None] | None = None) -> NSTResult:
    """Optimise all segments of one piece, batching as the configuration allows.

    Coupled Grams need the whole piece in one batch; otherwise segments go in
    batches of ``segments_per_batch``. ``progress`` gets segment-iterations done.
    """
    cfg = transfer.config
    size = len(content_segments) if cfg.couples_segments else cfg.segments_per_batch
    results, done = [], 0
    for start in range(0, len(content_segments), size):
        batch = content_segments[start:start + size]
        step = None if progress is None else _segment_iterations(progress, done, len(batch))
        results.append(transfer.optimise(batch, targets, np.arange(start, start + len(batch)), step))
        done += len(batch) * cfg.iterations
    return concat_results(results)


def _segment_iterations(progress: Callable[[int], None], done: int, width: int) -> Callable[[int], None]:
    """A batch's per-iteration callback reporting the piece's segment-iterations done."""
    return lambda iteration: progress(done + iteration * width)


def concat_results(results: list[NSTResult]) -> NSTResult:
    """Join results of consecutive batches along the segment axis."""
    return NSTResult(
        np.concatenate([r.mels for r in results]),
        *(np.concatenate([getattr(r, name) for r in results], axis=1)
          for name in ("loss", "content_loss", "style_loss")),
        np.concatenate([r.rollbacks for r in results]),
        np.concatenate([r.gave_up for r in results]),
    )


def piece_loss_curve(result: NSTResult) -> np.ndarray:
    """The piece's loss per iteration: the mean over segments, ``(iterations + 1,)``."""
    return result.loss.mean(axis=1)


def _weighted_squared_error(features: tf.Tensor, target: tf.Tensor, scale: tf.Tensor) -> tf.Tensor:
    """``scale[b] * sum((features[b] - target[b])^2)`` per segment, ``(B,)``.

    Written with its gradient because the feature maps are the largest tensors
    of a step: this touches them three times where automatic differentiation
    of the same expression took six passes.
    """
    @tf.custom_gradient
    def error(f: tf.Tensor) -> tuple[tf.Tensor, object]:
        difference = f - target
        per_segment = scale * tf.reduce_sum(tf.square(difference), axis=[1, 2, 3])

        def grad(upstream: tf.Tensor) -> tf.Tensor:
            return difference * (2.0 * scale * upstream)[:, None, None, None]

        return per_segment, grad

    return error(features)


def _random_net_kernels(n_mels: int) -> tuple[np.ndarray, ...]:
    """The random networks' kernels, ``(3, n_mels, RANDOM_NET_FILTERS)`` each, He-scaled."""
    rng = np.random.default_rng(RANDOM_NET_SEED)
    scale = np.sqrt(2.0 / (3 * n_mels))
    return tuple((scale * rng.standard_normal((3, n_mels, RANDOM_NET_FILTERS))).astype(np.float32)
                 for _ in RANDOM_NET_DILATIONS)


def _fit_frames(segments: np.ndarray, frames: int) -> np.ndarray:
    """``(B, n_mels, w)`` segments cut or repeated along time to ``frames`` frames
    (a style's fitted segments need not be as wide as the content's)."""
    repeats = -(-frames // segments.shape[2])
    return np.tile(segments, (1, 1, repeats))[:, :, :frames]


class _TracedForAnyBatchAndWidth:
    """``fn(state_or_target, content, grams, ...)`` as a ``tf.function`` traced once, at
    its first call, for any number of segments and any segment width.

    Traced for its first call's shapes instead, as TensorFlow does until it has
    seen two, a step computed other floats than the trace for any width (2e-4 of
    the mel's norm after 10 iterations), so a segment's result depended on what
    its worker had run before; and each new width or batch size cost a trace.
    """

    BATCHED_ARGUMENTS = 2  # the target (or optimiser state) and the content targets

    def __init__(self, fn: Callable[..., Any], **options: Any) -> None:
        self._function = tf.function(fn, **options)
        self._traced = False

    def __call__(self, *args: Any) -> Any:
        if not self._traced:
            batched, rest = args[:self.BATCHED_ARGUMENTS], args[self.BATCHED_ARGUMENTS:]
            specs = (*tf.nest.map_structure(_any_batch_and_width, batched),
                     *tf.nest.map_structure(tf.TensorSpec.from_tensor, rest))
            self._function.get_concrete_function(*specs)
            self._traced = True
        return self._function(*args)

    def tracing_count(self) -> int:
        return self._function.experimental_get_tracing_count()


def _any_batch_and_width(tensor: tf.Tensor) -> tf.TensorSpec:
    """The spec of a tensor of segments, ``(B,)``, ``(B, n_mels, frames)`` or
    ``(B, h, w, C)``, with its batch (axis 0) and time (axis 2) sizes left open."""
    shape = [None if axis in (0, 2) else size for axis, size in enumerate(tensor.shape)]
    return tf.TensorSpec(shape, tensor.dtype)


def _select(mask: tf.Tensor, a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """Per segment: ``a`` where ``mask`` (shape ``(B,)``) holds, else ``b``."""
    shape = tf.concat([tf.shape(mask), tf.ones([tf.rank(a) - 1], tf.int32)], axis=0)
    return tf.where(tf.reshape(mask, shape), a, b)


def _check_segments(segments: np.ndarray, name: str) -> None:
    if segments.ndim != 3 or len(segments) == 0:
        raise ValueError(f"{name} must be a non-empty (B, n_mels, frames) array, got {segments.shape}")
    if not np.all(np.isfinite(segments)):
        raise ValueError(f"{name} hold non-finite values")



