"""What each Ray Train worker runs: a custom loop under MultiWorkerMirroredStrategy, and its checkpoints.

The loop draws its batches from the segments in Ray's object store, seeded
by epoch so that a resumed epoch sees the same ones, and pads every
replica's share of a validation batch to one shape, so that every replica
runs the same steps. After each epoch the chief writes the epoch's row
(:mod:`amnst.train.records`) and then a checkpoint: the model, the
optimiser, the best epoch's weights and the :class:`~amnst.train.recipe.TrainState`,
everything a restarted worker group needs to go on.

TensorFlow and Keras are imported where they are used: the Train controller
loads this module too, and needs neither.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from amnst.train.recipe import Plateau, TrainOptions, TrainState, advance
from amnst.train.records import write_epoch_row

if TYPE_CHECKING:
    import keras
    import tensorflow as tf


# --- batches ---------------------------------------------------------------------------------


def segment_pairs(counts: Sequence[int], tracks: Sequence[int]) -> np.ndarray:
    """``(n, 2)`` rows ``(track, segment)`` for every segment of ``tracks``, in order."""
    rows = [(t, s) for t in tracks for s in range(counts[t])]
    return np.array(rows, dtype=np.int64).reshape(-1, 2)


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> np.ndarray:
    """``(steps, batch_size)`` positions into ``n`` training segments for one epoch.

    A permutation seeded by ``(seed, epoch)``, so a resumed epoch sees the
    same batches; the remainder under one batch is dropped (a different one
    each epoch), so every step has the full global batch.
    """
    order = np.random.default_rng([seed, epoch]).permutation(n)
    steps = n // batch_size
    return order[:steps * batch_size].reshape(steps, batch_size)


def replica_slice(size: int, replicas: int, replica: int) -> slice:
    """Replica ``replica``'s share of a global batch of ``size``: contiguous, sizes differing by at most one."""
    return slice(replica * size // replicas, (replica + 1) * size // replicas)


def gather(arrays: Sequence[np.ndarray], pairs: np.ndarray) -> np.ndarray:
    """The CNN input ``(len(pairs), n_mels, frames, 1)`` for ``(track, segment)`` rows."""
    return np.stack([arrays[t][s] for t, s in pairs])[..., None]


# --- one worker's training loop ---------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """Everything a training worker needs; the segments stay in Ray's object store."""

    options: TrainOptions
    run_id: str
    started_at: datetime
    fingerprint: str
    segments: tuple[Any, ...]  # an ObjectRef of (n, n_mels, frames) per usable track
    counts: np.ndarray  # segments per usable track
    labels: np.ndarray  # class index per usable track
    train: np.ndarray  # indices of usable tracks
    val: np.ndarray
    num_classes: int


Step = Callable[[Any], "tf.Tensor"]


def make_steps(model: keras.Model, optimizer: keras.optimizers.Optimizer, strategy: tf.distribute.Strategy,
               global_batch: int, num_classes: int) -> tuple[Step, Step]:
    """Compiled ``(train_step, eval_step)`` over per-replica inputs.

    ``train_step((x, y))`` applies one update and returns the all-reduced
    ``[sum of losses, correct]``; ``eval_step((x, y, w))`` returns
    ``[weighted loss sum, count per class (C), correct per class (C)]``,
    where padding has weight 0. ``x`` is ``(b, n_mels, frames, 1)``, ``y``
    int32 class indices. Losses are categorical cross-entropy.
    """
    import keras
    import tensorflow as tf

    def replica_train(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            probs = model(x, training=True)
            losses = keras.losses.sparse_categorical_crossentropy(y, probs)
            # Divided by the global batch: the optimiser sums gradients over replicas.
            loss = tf.nn.compute_average_loss(losses, global_batch_size=global_batch)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        correct = tf.cast(tf.argmax(probs, axis=-1, output_type=tf.int32) == y, tf.float32)
        return tf.stack([tf.reduce_sum(losses), tf.reduce_sum(correct)])

    def replica_eval(x: tf.Tensor, y: tf.Tensor, w: tf.Tensor) -> tf.Tensor:
        probs = model(x, training=False)
        losses = keras.losses.sparse_categorical_crossentropy(y, probs) * w
        correct = tf.cast(tf.argmax(probs, axis=-1, output_type=tf.int32) == y, tf.float32) * w
        return tf.concat([tf.reduce_sum(losses)[None], tf.math.unsorted_segment_sum(w, y, num_classes),
                          tf.math.unsorted_segment_sum(correct, y, num_classes)], axis=0)

    @tf.function
    def train_step(inputs: Any) -> tf.Tensor:
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(replica_train, args=inputs), axis=None)

    @tf.function
    def eval_step(inputs: Any) -> tf.Tensor:
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(replica_eval, args=inputs), axis=None)

    return train_step, eval_step


def make_stats_sync(model: keras.Model, strategy: tf.distribute.Strategy) -> Callable[[], None]:
    """A compiled function that sets every replica's BatchNorm moving statistics to their mean.

    Keras 3 updates them from each replica's own batches only, so replicas
    drift apart; averaging after each epoch makes the model every worker
    validates the one the checkpoint saves.
    """
    import keras
    import tensorflow as tf

    stats = [v for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)
             for v in layer.non_trainable_variables]

    @tf.function
    def sync() -> None:
        local = strategy.run(lambda: [tf.identity(v.value) for v in stats])
        for variable, value in zip(stats, local):
            variable.assign(strategy.reduce(tf.distribute.ReduceOp.MEAN, value, axis=None))
    return sync


def _train_loop(config: dict[str, Any]) -> None:
    """Ray Train's per-worker function: a custom loop under MultiWorkerMirroredStrategy."""
    import keras
    import ray.train
    import tensorflow as tf

    from amnst.ops.devices import prepare_tensorflow
    from amnst.engine.model import build_model

    plan: _Plan = config["plan"]
    options = plan.options
    context = ray.train.get_context()
    is_chief = context.get_world_rank() == 0
    # Ray sets OMP_NUM_THREADS only; TensorFlow would otherwise use every core of the node (the
    # intra-op pool only, as training always sized it). Memory growth on every GPU: two workers
    # can then share one (--gpus-per-worker 0.5).
    prepare_tensorflow(options.cpus_per_worker, inter_op=False)
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        model = build_model(options.seed)
        optimizer = keras.optimizers.Adam(options.learning_rate)
        optimizer.build(model.trainable_variables)
    state, best_weights = TrainState(0, Plateau(options.learning_rate)), b""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state, best_weights = _restore(Path(folder), model, optimizer)

    first_epoch = state.next_epoch
    arrays = ray.get(list(plan.segments))
    train_pairs = segment_pairs(plan.counts, plan.train)
    val_pairs = segment_pairs(plan.counts, plan.val)
    train_step, eval_step = make_steps(model, optimizer, strategy, options.batch_size, plan.num_classes)
    sync_stats = make_stats_sync(model, strategy)

    for epoch in range(state.next_epoch, options.epochs):
        optimizer.learning_rate = state.plateau.learning_rate
        clock = time.perf_counter()
        train_loss, train_accuracy, trained = _train_epoch(train_step, strategy, arrays, train_pairs, plan, epoch)
        sync_stats()
        train_seconds = time.perf_counter() - clock
        val_loss, per_class_counts, per_class_correct = _validate(eval_step, strategy, arrays, val_pairs, plan)
        val_accuracy = float(per_class_correct.sum() / per_class_counts.sum())
        per_class = tuple(float(c / n) if n else None for c, n in zip(per_class_correct, per_class_counts))
        learning_rate = state.plateau.learning_rate
        state, improved = advance(state, epoch, val_accuracy, per_class, options)
        row = {
            "epoch": epoch, "learning_rate": learning_rate, "train_loss": train_loss,
            "train_accuracy": train_accuracy, "val_loss": val_loss, "val_accuracy": val_accuracy,
            "best_epoch": state.best_epoch, "seconds": time.perf_counter() - clock,
            "train_seconds": train_seconds, "samples_per_second": trained / train_seconds,
            "train_samples": trained, "val_samples": len(val_pairs), "workers": context.get_world_size(),
            "replicas": strategy.num_replicas_in_sync, "global_batch": options.batch_size,
            "resumed": checkpoint is not None and epoch == first_epoch, "fingerprint": plan.fingerprint,
            "finished_at": datetime.now(timezone.utc),
        }
        if not is_chief:
            ray.train.report(_metrics(row))
            continue
        if improved:
            best_weights = _weights_bytes(model)
        # The row first: if this worker dies before the checkpoint, the epoch is
        # redone and its row (same name) replaced, so there is one row per epoch.
        write_epoch_row(options.output, plan.run_id, plan.started_at, row)
        with tempfile.TemporaryDirectory() as folder:
            _save(Path(folder), model, optimizer, state, best_weights)
            ray.train.report(_metrics(row), checkpoint=ray.train.Checkpoint.from_directory(folder))


def _per_replica(strategy: tf.distribute.Strategy, batch_for: Callable[[int], Any]) -> Any:
    """Per-replica inputs: ``batch_for(global replica id)`` for each of this worker's replicas."""
    return strategy.experimental_distribute_values_from_function(
        lambda context: batch_for(context.replica_id_in_sync_group))


def _train_epoch(train_step: Step, strategy: tf.distribute.Strategy,
                 arrays: Sequence[np.ndarray], train_pairs: np.ndarray, plan: _Plan,
                 epoch: int) -> tuple[float, float, int]:
    """One epoch of updates; returns its mean loss and accuracy and the segments it trained on."""
    replicas = strategy.num_replicas_in_sync
    batches = epoch_batches(len(train_pairs), plan.options.batch_size, plan.options.seed, epoch)
    totals = np.zeros(2)
    for positions in batches:
        def replica_batch(replica: int) -> tuple[np.ndarray, np.ndarray]:
            pairs = train_pairs[positions[replica_slice(len(positions), replicas, replica)]]
            return gather(arrays, pairs), plan.labels[pairs[:, 0]].astype(np.int32)
        totals += train_step(_per_replica(strategy, replica_batch)).numpy()
    trained = batches.size
    return float(totals[0] / trained), float(totals[1] / trained), trained


def _validate(eval_step: Step, strategy: tf.distribute.Strategy, arrays: Sequence[np.ndarray],
              val_pairs: np.ndarray, plan: _Plan) -> tuple[float, np.ndarray, np.ndarray]:
    """Mean validation loss, and segments and correct ones per class, over all workers.

    Every global batch is split over the replicas and each share padded with
    weight-0 segments to one size: every replica runs the same number of
    steps on the same shape, whatever the remainder.
    """
    replicas = strategy.num_replicas_in_sync
    batch = plan.options.batch_size
    width = -(-batch // replicas)
    totals = np.zeros(1 + 2 * plan.num_classes)
    for start in range(0, len(val_pairs), batch):
        chunk = val_pairs[start:start + batch]

        def replica_batch(replica: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            pairs = chunk[replica_slice(len(chunk), replicas, replica)]
            x = np.zeros((width, *arrays[0].shape[1:], 1), np.float32)
            y = np.zeros(width, np.int32)
            w = np.zeros(width, np.float32)
            if len(pairs):
                x[:len(pairs)] = gather(arrays, pairs)
                y[:len(pairs)] = plan.labels[pairs[:, 0]]
                w[:len(pairs)] = 1.0
            return x, y, w
        totals += eval_step(_per_replica(strategy, replica_batch)).numpy()
    counts = totals[1:1 + plan.num_classes]
    return float(totals[0] / counts.sum()), counts, totals[1 + plan.num_classes:]


def _metrics(row: dict[str, Any]) -> dict[str, Any]:
    """The row as Ray Train metrics (plain numbers, no timestamp)."""
    return {k: v for k, v in row.items() if k not in ("finished_at", "fingerprint")}


# --- checkpoints -----------------------------------------------------------------------------

# The exported weights' name, {output}/model.weights.h5; Keras needs the .weights.h5 suffix.
WEIGHTS_NAME = "model.weights.h5"
_CHECKPOINT_FILES = ("model.weights.h5", "optimizer.npz", "best.weights.h5", "state.json")


def _weights_bytes(model: keras.Model) -> bytes:
    """The model's weights as the bytes of a ``.weights.h5`` file."""
    from amnst.engine.model import save_weights

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / WEIGHTS_NAME
        save_weights(model, path)
        return path.read_bytes()


def _save(folder: Path, model: keras.Model, optimizer: keras.optimizers.Optimizer, state: TrainState,
          best_weights: bytes) -> None:
    """Write a checkpoint: the model, the optimiser's variables, the best epoch's weights, the state."""
    from amnst.engine.model import save_weights

    model_file, optimizer_file, best_file, state_file = (folder / name for name in _CHECKPOINT_FILES)
    save_weights(model, model_file)
    np.savez(optimizer_file, *[v.numpy() for v in optimizer.variables])
    best_file.write_bytes(best_weights)
    state_file.write_text(state.to_json())


def _restore(folder: Path, model: keras.Model, optimizer: keras.optimizers.Optimizer) -> tuple[TrainState, bytes]:
    """Load a checkpoint written by :func:`_save` into a built model and optimiser."""
    model_file, optimizer_file, _, _ = (folder / name for name in _CHECKPOINT_FILES)
    model.load_weights(model_file)
    with np.load(optimizer_file) as saved:
        for variable, key in zip(optimizer.variables, saved.files):
            variable.assign(saved[key])
    return _read_outcome(folder)


def _read_outcome(folder: Path) -> tuple[TrainState, bytes]:
    """A checkpoint's state and best epoch's weights."""
    _, _, best_file, state_file = (folder / name for name in _CHECKPOINT_FILES)
    return TrainState.from_json(state_file.read_text()), best_file.read_bytes()
