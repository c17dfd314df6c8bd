"""Training the seed CNN on a GTZAN-layout dataset, as a Ray Train job.

A dataset (a local folder, ``file://`` or ``s3://``) is laid out as GTZAN is::

    {data}/features_30_sec.csv             optional; its columns filename, label name the genres
    {data}/genres_original/<genre>/<file>  one audio file per track

Without the CSV a track's genre is its folder's name. Each track becomes
``round(n_frames / 431)`` segments (at least one) of the magnitude mel the
``default`` NST preset feeds the CNN: a 30 s GTZAN track gives 6, as in the
original, which padded or cut every track to 2587 frames. Audio is decoded
once per track, by Ray tasks; the segments stay in the object store for the
whole run, restarted workers included. An undecodable track is skipped and
recorded. Tracks, not segments, are split between training and validation,
seeded and stratified by genre.

A training output holds::

    {output}/split.json                    the tracks on each side, skipped tracks, fingerprints
    {output}/checkpoints/cnn/...           Ray Train checkpoints, one per epoch
    {output}/_amnst/training/date=YYYY-MM-DD/run_id={run_id}/epoch-NNNNN.parquet
    {output}/model.weights.h5              the weights of the best validation epoch
    {output}/model_card.json               written last

The epoch rows follow :mod:`amnst.batch.metadata`'s conventions: hive partitions
``date`` and ``run_id`` in the path only, a ``schema_version`` column,
one atomic put per file. Training a second time into the same output resumes
from its latest checkpoint, provided the dataset and recipe are the same.

TensorFlow and Keras are imported where they are used: Ray's decoding tasks
and the Train controller load this module too, and need neither.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray

from amnst.engine import audio
from amnst.batch import metadata, storage
from amnst import synth
from amnst.config import AudioConfig, get_preset

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

GENRES_FOLDER = "genres_original"
LABELS_FILE = "features_30_sec.csv"
WEIGHTS_NAME = "model.weights.h5"
CARD_NAME = "model_card.json"
SPLIT_NAME = "split.json"
RUN_NAME = "cnn"  # Ray Train's run name: a fixed one is what lets a rerun find its checkpoints
TRAINING_SCHEMA_VERSION = 1

# The CNN's input: the default preset's magnitude mel, cut without overlap as the original was.
TRAIN_AUDIO = dataclasses.replace(get_preset("default").audio, overlap_frames=0, fit_segments=False)


class DatasetError(ValueError):
    """A dataset that cannot be trained on or evaluated; the message names it."""


# --- the dataset -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Track:
    """One audio file: ``id`` is its path under ``genres_original`` (``"jazz/jazz.00054.wav"``)."""

    id: str
    uri: str
    label: str


@dataclass(frozen=True)
class Skipped:
    """A track left out of training, and why."""

    track: str
    reason: str


def list_tracks(data_uri: str) -> tuple[list[Track], list[Skipped]]:
    """The tracks of a GTZAN-layout dataset, sorted by id, and the files left out.

    With ``features_30_sec.csv`` present its rows are the labels: a file it
    does not list, or a row whose file is missing, is skipped. Without it
    each file's folder is its label. Only files exactly one folder deep
    count; hidden files are ignored.
    """
    root = storage.join(data_uri, GENRES_FOLDER)
    files = {}
    for uri in storage.list_uris(root):
        relative = uri[len(root) + 1:]
        name = relative.partition("/")[2]
        if name and "/" not in name and not name.startswith("."):
            files[relative] = uri
    if not files:
        raise DatasetError(f"{root}: no audio files in <genre>/ folders")
    labels_uri = storage.join(data_uri, LABELS_FILE)
    if not storage.exists(labels_uri):
        return [Track(i, files[i], i.partition("/")[0]) for i in sorted(files)], []

    labels = _read_labels(labels_uri)
    tracks, skipped = [], []
    for track_id in sorted(files):
        name = track_id.partition("/")[2]
        if name in labels:
            tracks.append(Track(track_id, files[track_id], labels[name]))
        else:
            skipped.append(Skipped(track_id, f"not listed in {LABELS_FILE}"))
    found = {i.partition("/")[2] for i in files}
    skipped += [Skipped(name, f"listed in {LABELS_FILE} but not found") for name in sorted(set(labels) - found)]
    return tracks, skipped


def _read_labels(uri: str) -> dict[str, str]:
    """``filename -> label`` from a CSV with (at least) those two columns."""
    reader = csv.DictReader(io.StringIO(storage.read_bytes(uri).decode("utf-8-sig")))
    if not {"filename", "label"} <= set(reader.fieldnames or ()):
        raise DatasetError(f"{uri}: needs the columns filename and label")
    return {row["filename"].strip(): row["label"].strip() for row in reader}


def class_order(labels: Sequence[str]) -> tuple[str, ...]:
    """The genre of each CNN output unit.

    GTZAN's order (:data:`amnst.engine.model.GENRES`) whenever every label is a
    GTZAN genre, so that weights stay interchangeable with the original's;
    otherwise the labels sorted, as long as the ten outputs suffice.
    """
    from amnst.engine.model import GENRES

    names = set(labels)
    if names <= set(GENRES):
        return GENRES
    if len(names) > len(GENRES):
        raise DatasetError(f"{len(names)} genres, but the CNN has {len(GENRES)} outputs")
    return tuple(sorted(names))


def segments_per_track(n_frames: int, config: AudioConfig) -> int:
    """Segments a track of ``n_frames`` frames gives: the nearest whole number, at least 1.

    At most half a segment is padded with silence or dropped; a 30 s track
    (2584 frames) gives 6, as the original's 2587-frame padding did.
    """
    return max(1, round(n_frames / config.segment_frames))


def track_segments(data: bytes, config: AudioConfig, name: str) -> np.ndarray:
    """Decode a track and cut its mel into ``(n, n_mels, segment_frames)`` float32.

    Raises :class:`amnst.engine.audio.AudioError` for audio that cannot be used.
    """
    mel = audio.mel_spectrogram(audio.load(data, config, name=name), config)
    count = segments_per_track(mel.shape[1], config)
    # audio.segment pads the last segment; cutting first drops a remainder under half a segment.
    return audio.segment(mel[:, :count * config.segment_frames], config)


@dataclass(frozen=True)
class PreparedTrack:
    """What decoding a track found: ``segments`` made, or the ``error`` that skipped it."""

    track: Track
    sha256: str
    segments: int
    error: str | None = None


@ray.remote(num_returns=2)
def _prepare(track: Track, config: AudioConfig) -> tuple[PreparedTrack, np.ndarray | None]:
    data = storage.read_bytes(track.uri)
    digest = hashlib.sha256(data).hexdigest()
    try:
        segments = track_segments(data, config, track.id)
    except audio.AudioError as error:
        return PreparedTrack(track, digest, 0, _reason(error, track)), None
    return PreparedTrack(track, digest, len(segments)), segments


def _reason(error: audio.AudioError, track: Track) -> str:
    """An audio error's message without the track's name, which it starts with."""
    return str(error).removeprefix(f"{track.id}: ")


def split_by_track(labels: Sequence[str], val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the training and the validation tracks.

    Per genre, ``round(val_fraction * n)`` of its ``n`` tracks (at least one,
    and never all) go to validation, drawn with ``seed``. A track's segments
    all follow it, so no track is on both sides.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    val = []
    for label in sorted(set(labels.tolist())):
        members = np.flatnonzero(labels == label)
        if len(members) >= 2:
            count = min(len(members) - 1, max(1, round(val_fraction * len(members))))
            val.extend(rng.permutation(members)[:count].tolist())
    val_indices = np.array(sorted(val), dtype=np.int64)
    return np.setdiff1d(np.arange(len(labels)), val_indices), val_indices


def dataset_fingerprint(prepared: Sequence[PreparedTrack]) -> str:
    """A hash of every track's id, label and bytes, undecodable ones included."""
    lines = sorted(f"{p.track.id}\t{p.track.label}\t{p.sha256}" for p in prepared)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


# --- the recipe ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainOptions:
    """A training run. The defaults are the original's recipe.

    ``batch_size`` is the global batch, split over all replicas. The learning
    rate is multiplied by ``lr_factor`` when validation accuracy has not risen
    by ``lr_min_delta`` for ``lr_patience`` epochs.
    """

    data: str
    output: str
    workers: int = 1
    epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 1e-3
    val_fraction: float = 0.1
    seed: int = 0
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    # Worker-group restarts from the latest checkpoint before the run fails.
    max_failures: int = 3
    lr_factor: float = 0.5
    lr_patience: int = 2
    lr_min_delta: float = 0.005

    def __post_init__(self) -> None:
        checks = {
            "workers": self.workers >= 1, "epochs": self.epochs >= 1, "batch_size": self.batch_size >= 1,
            "learning_rate": self.learning_rate > 0, "val_fraction": 0 < self.val_fraction < 1,
            "cpus_per_worker": self.cpus_per_worker > 0, "gpus_per_worker": self.gpus_per_worker >= 0,
            "max_failures": self.max_failures >= -1, "lr_factor": 0 < self.lr_factor <= 1,
            "lr_patience": self.lr_patience >= 1, "lr_min_delta": self.lr_min_delta >= 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(", ".join(f"{name}={getattr(self, name)!r}" for name in bad) + " out of range")

    def recipe(self) -> dict[str, Any]:
        """What the trained weights depend on besides the data; resuming requires it unchanged."""
        return {name: getattr(self, name) for name in ("batch_size", "learning_rate", "val_fraction", "seed",
                                                       "lr_factor", "lr_patience", "lr_min_delta")}


@dataclass(frozen=True)
class Plateau:
    """Keras's ``ReduceLROnPlateau(monitor="val_accuracy", mode="max")`` as a value.

    ``best`` is the last accuracy that counted as an improvement, ``wait`` the
    epochs since. Every worker steps it with the same all-reduced accuracy,
    so every worker holds the same learning rate.
    """

    learning_rate: float
    best: float = -math.inf
    wait: int = 0


def plateau_step(state: Plateau, accuracy: float, factor: float, patience: int, min_delta: float) -> Plateau:
    """The plateau state after an epoch with validation ``accuracy``.

    An improvement is a rise of more than ``min_delta`` over ``best``; after
    ``patience`` epochs without one the rate is multiplied by ``factor`` and
    the count starts again (no cooldown, no floor), as Keras does.
    """
    if accuracy - min_delta > state.best:
        return Plateau(state.learning_rate, accuracy, 0)
    if state.wait + 1 >= patience:
        return Plateau(state.learning_rate * factor, state.best, 0)
    return Plateau(state.learning_rate, state.best, state.wait + 1)


@dataclass(frozen=True)
class TrainState:
    """What a checkpoint carries besides the weights: enough to go on exactly where it stopped."""

    next_epoch: int
    plateau: Plateau
    best_epoch: int = -1
    best_val_accuracy: float = -1.0
    # Accuracy per class index at the best epoch; None where validation has no segment of it.
    best_per_class: tuple[float | None, ...] = ()

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "TrainState":
        fields = json.loads(text)
        return cls(**{**fields, "plateau": Plateau(**fields["plateau"]),
                      "best_per_class": tuple(fields["best_per_class"])})


def advance(state: TrainState, epoch: int, val_accuracy: float, per_class: tuple[float | None, ...],
            options: TrainOptions) -> tuple[TrainState, bool]:
    """The state after ``epoch``, and whether that epoch is the best so far (strictly; ties keep the earlier)."""
    plateau = plateau_step(state.plateau, val_accuracy, options.lr_factor, options.lr_patience,
                           options.lr_min_delta)
    improved = val_accuracy > state.best_val_accuracy
    if not improved:
        return dataclasses.replace(state, next_epoch=epoch + 1, plateau=plateau), False
    return TrainState(epoch + 1, plateau, epoch, val_accuracy, per_class), True


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


# --- epoch rows ------------------------------------------------------------------------------

TRAINING_SCHEMA = metadata.table_schema(
    pa.field("epoch", pa.int32(), nullable=False),
    ("learning_rate", pa.float64()),
    ("train_loss", pa.float64()),
    ("train_accuracy", pa.float64()),
    ("val_loss", pa.float64()),
    ("val_accuracy", pa.float64()),
    ("best_epoch", pa.int32()),
    ("seconds", pa.float64()),  # training and validation
    ("train_seconds", pa.float64()),
    ("samples_per_second", pa.float64()),  # training segments per second of train_seconds
    ("train_samples", pa.int64()),
    ("val_samples", pa.int64()),
    ("workers", pa.int32()),
    ("replicas", pa.int32()),
    ("global_batch", pa.int32()),
    ("resumed", pa.bool_()),  # the first epoch after restoring a checkpoint
    ("fingerprint", pa.string()),
    ("finished_at", metadata.TIMESTAMP),
)
# Inside the files: everything but the partition columns, which live in the path.
_FILE_SCHEMA = pa.schema([f for f in TRAINING_SCHEMA if f.name not in metadata.PARTITIONING.names])


def training_partition(output_uri: str, run_id: str, started_at: datetime) -> str:
    """The folder of one run's epoch rows; ``started_at`` (UTC) gives its date."""
    day = started_at.astimezone(timezone.utc)
    return storage.join(output_uri, "_amnst", "training", f"date={day:%Y-%m-%d}", f"run_id={run_id}")


def write_epoch_row(output_uri: str, run_id: str, started_at: datetime, row: dict[str, Any]) -> None:
    """Write one epoch's row as its own Parquet file, atomically.

    The file is named after the epoch, so a redone epoch replaces its row.
    """
    table = pa.Table.from_pylist([{**row, "schema_version": TRAINING_SCHEMA_VERSION}], schema=_FILE_SCHEMA)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    uri = storage.join(training_partition(output_uri, run_id, started_at), f"epoch-{row['epoch']:05d}.parquet")
    storage.write_bytes(uri, sink.getvalue().to_pybytes())


def read_epochs(output_uri: str) -> pa.Table:
    """Every epoch row under ``output_uri``, all runs, oldest first; ``date`` and ``run_id`` come from the path."""
    fs, base = storage.filesystem(storage.join(output_uri, "_amnst", "training"))
    selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
    paths = [info.path for info in fs.get_file_info(selector)
             if info.type == pafs.FileType.File and info.base_name.endswith(".parquet")
             and not info.base_name.startswith(("_", "."))]
    dataset = ds.dataset(paths, schema=TRAINING_SCHEMA, format="parquet", filesystem=fs,
                         partitioning=ds.partitioning(metadata.PARTITIONING, flavor="hive"), partition_base_dir=base)
    return dataset.to_table().sort_by("finished_at")


# --- the driver ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreparedDataset:
    """A dataset decoded into Ray's object store and split by track."""

    classes: tuple[str, ...]
    usable: list[PreparedTrack]
    segments: list[Any]  # ObjectRefs, one per usable track
    skipped: list[Skipped]
    train: np.ndarray  # indices into usable
    val: np.ndarray
    fingerprint: str


def prepare(data_uri: str, val_fraction: float, seed: int, config: AudioConfig = TRAIN_AUDIO) -> PreparedDataset:
    """List, decode (one Ray task per track) and split a dataset.

    The split is drawn over the listed tracks before decoding, so it does
    not depend on which ones decode; an undecodable track just leaves its side.
    """
    tracks, skipped = list_tracks(data_uri)
    classes = class_order([t.label for t in tracks])
    train_tracks, val_tracks = split_by_track([t.label for t in tracks], val_fraction, seed)
    refs = [_prepare.remote(track, config) for track in tracks]
    prepared = ray.get([info for info, _ in refs])
    usable = [i for i, p in enumerate(prepared) if p.error is None]
    skipped = skipped + [Skipped(p.track.id, p.error) for p in prepared if p.error is not None]
    if not usable:
        raise DatasetError(f"{data_uri}: no track could be decoded")
    position = {track: index for index, track in enumerate(usable)}
    return PreparedDataset(
        classes, [prepared[i] for i in usable], [refs[i][1] for i in usable], skipped,
        np.array([position[i] for i in train_tracks if i in position], dtype=np.int64),
        np.array([position[i] for i in val_tracks if i in position], dtype=np.int64),
        dataset_fingerprint(prepared))


def train(options: TrainOptions) -> dict[str, Any]:
    """Train on Ray (already initialised), export the best epoch's weights; returns the model card.

    Raises :class:`DatasetError` for a dataset that cannot be used and
    :class:`amnst.batch.storage.StorageError` for storage that cannot be read or
    written; a training that fails past ``max_failures`` raises Ray Train's
    error.
    """
    from amnst.engine.model import GENRES

    started_at = datetime.now(timezone.utc)
    dataset = prepare(options.data, options.val_fraction, options.seed)
    counts = np.array([p.segments for p in dataset.usable])
    train_segments = int(counts[dataset.train].sum())
    if train_segments < options.batch_size or not len(dataset.val):
        raise DatasetError(f"{options.data}: {train_segments} training segments and {len(dataset.val)} "
                           f"validation tracks; at least one global batch ({options.batch_size}) and one "
                           "validation track are needed")
    fingerprint = _training_fingerprint(dataset.fingerprint, options)
    _claim_output(options.output, fingerprint, dataset)

    plan = _Plan(options, metadata.new_run_id(started_at), started_at, fingerprint, tuple(dataset.segments),
                 counts, np.array([dataset.classes.index(p.track.label) for p in dataset.usable]),
                 dataset.train, dataset.val, len(GENRES))
    result = _trainer(plan).fit()
    if result.metrics:
        _publish_metrics(result.metrics)
    with result.checkpoint.as_directory() as folder:
        state, weights = _read_outcome(Path(folder))
    storage.write_bytes(storage.join(options.output, WEIGHTS_NAME), weights)
    card = model_card(options, plan, dataset, state)
    storage.write_bytes(storage.join(options.output, CARD_NAME), json.dumps(card, indent=2).encode())
    return card


def _trainer(plan: _Plan) -> Any:
    """Ray Train's TensorflowTrainer for a plan, checkpointing under ``{output}/checkpoints``."""
    import ray.train
    from ray.train.tensorflow import TensorflowTrainer

    options = plan.options
    fs, path = storage.filesystem(storage.join(options.output, "checkpoints"))
    resources = {"CPU": options.cpus_per_worker}
    if options.gpus_per_worker:
        resources["GPU"] = options.gpus_per_worker
    return TensorflowTrainer(
        _train_loop, train_loop_config={"plan": plan},
        scaling_config=ray.train.ScalingConfig(num_workers=options.workers, use_gpu=options.gpus_per_worker > 0,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=RUN_NAME, storage_path=path, storage_filesystem=fs,
            failure_config=ray.train.FailureConfig(max_failures=options.max_failures),
            # The latest checkpoint carries the best epoch's weights, so older ones can go.
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2)))


def _publish_metrics(last_epoch: dict[str, Any]) -> None:
    """Set the metrics registry's training gauges to the last epoch's figures.

    The driver hears of epochs only when the training ends, so the gauges
    hold the final epoch's values, not a live series.
    """
    from amnst.ops import metrics

    metrics.TRAIN_EPOCH.set(last_epoch["epoch"])
    for split in ("train", "val"):
        metrics.TRAIN_LOSS.labels(split).set(last_epoch[f"{split}_loss"])
        metrics.TRAIN_ACCURACY.labels(split).set(last_epoch[f"{split}_accuracy"])


def _training_fingerprint(dataset_fingerprint: str, options: TrainOptions) -> str:
    body = json.dumps([dataset_fingerprint, options.recipe(), dataclasses.asdict(TRAIN_AUDIO)], sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def _claim_output(output_uri: str, fingerprint: str, dataset: PreparedDataset) -> None:
    """Write ``split.json``, or check that the output's is this training's (a resume).

    Resuming another dataset's or recipe's checkpoints would silently mix
    two trainings, so a different fingerprint is refused.
    """
    uri = storage.join(output_uri, SPLIT_NAME)
    if storage.exists(uri):
        found = json.loads(storage.read_bytes(uri))["fingerprint"]
        if found != fingerprint:
            raise DatasetError(f"{output_uri} holds another training (fingerprint {found}, this one "
                               f"{fingerprint}: different data or recipe); choose a new output")
        return
    split = {
        "fingerprint": fingerprint, "dataset_fingerprint": dataset.fingerprint, "classes": list(dataset.classes),
        "train": [dataset.usable[i].track.id for i in dataset.train],
        "val": [dataset.usable[i].track.id for i in dataset.val],
        "skipped": [dataclasses.asdict(s) for s in dataset.skipped],
    }
    storage.write_bytes(uri, json.dumps(split, indent=2).encode())


def model_card(options: TrainOptions, plan: _Plan, dataset: PreparedDataset, state: TrainState) -> dict[str, Any]:
    """What the exported weights are: classes, input representation, data, recipe and results."""
    present = sorted(set(plan.labels.tolist()))
    return {
        "weights": WEIGHTS_NAME,
        "classes": list(dataset.classes),
        "audio": dataclasses.asdict(TRAIN_AUDIO),
        "dataset": {
            "uri": options.data, "fingerprint": dataset.fingerprint,
            "tracks_train": len(dataset.train), "tracks_val": len(dataset.val),
            "segments_train": int(plan.counts[dataset.train].sum()),
            "segments_val": int(plan.counts[dataset.val].sum()),
            "skipped": [dataclasses.asdict(s) for s in dataset.skipped],
        },
        "recipe": {**options.recipe(), "optimizer": "adam", "loss": "categorical_crossentropy"},
        "fingerprint": plan.fingerprint,
        "epochs": state.next_epoch,
        "best_epoch": state.best_epoch,
        "val_accuracy": state.best_val_accuracy,
        "val_accuracy_per_class": {dataset.classes[c]: state.best_per_class[c] for c in present},
        "workers": options.workers,
        "created_at": datetime.now(timezone.utc).isoformat(),
    }


# --- evaluation ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Evaluation:
    """Predictions over a dataset: ``confusion[i, j]`` counts segments of class i predicted as j.

    ``confusion`` covers all the CNN's outputs; ``classes`` names the first
    ``len(classes)`` of them (all ten for GTZAN's genres).
    """

    classes: tuple[str, ...]
    confusion: np.ndarray
    tracks: int
    tracks_correct: int
    skipped: list[Skipped]

    @property
    def accuracy(self) -> float:
        return float(np.trace(self.confusion) / self.confusion.sum())

    @property
    def track_accuracy(self) -> float:
        return self.tracks_correct / self.tracks


def evaluate(data_uri: str, weights_uri: str, split: str = "all", val_fraction: float = 0.1,
             seed: int = 0, batch_size: int = 32) -> Evaluation:
    """Classify every segment of a dataset (``split="val"``: of its validation tracks) in this process.

    ``val_fraction`` and ``seed`` must be the training's to select the same
    validation tracks. A track's prediction is the argmax of its segments'
    mean probabilities.
    """
    from amnst.engine.model import GENRES

    if split not in ("all", "val"):
        raise ValueError(f"split={split!r} must be all or val")
    tracks, skipped = list_tracks(data_uri)
    classes = class_order([t.label for t in tracks])
    if split == "val":
        tracks = [tracks[i] for i in split_by_track([t.label for t in tracks], val_fraction, seed)[1]]
    model = _load_model(weights_uri)
    confusion = np.zeros((len(GENRES), len(GENRES)), dtype=np.int64)
    tracks_correct = evaluated = 0
    for track in tracks:
        try:
            segments = track_segments(storage.read_bytes(track.uri), TRAIN_AUDIO, track.id)
        except audio.AudioError as error:
            skipped.append(Skipped(track.id, _reason(error, track)))
            continue
        probs = model.predict(segments[..., None], batch_size=batch_size, verbose=0)
        truth = classes.index(track.label)
        np.add.at(confusion, (truth, probs.argmax(axis=1)), 1)
        tracks_correct += int(probs.mean(axis=0).argmax() == truth)
        evaluated += 1
    if not evaluated:
        raise DatasetError(f"{data_uri}: no track could be decoded")
    return Evaluation(classes, confusion, evaluated, tracks_correct, skipped)


def _load_model(weights_uri: str) -> keras.Model:
    """The seed CNN with weights from a URI."""
    from amnst.engine.model import load_model_from_bytes

    return load_model_from_bytes(storage.read_bytes(weights_uri), weights_uri)


def format_evaluation(evaluation: Evaluation) -> str:
    """Accuracy, the confusion matrix (rows: true genre, columns: predicted) and skipped tracks, as text."""
    confusion = evaluation.confusion
    shown = [i for i in range(len(confusion)) if confusion[i].any() or confusion[:, i].any()]
    names = {i: evaluation.classes[i] if i < len(evaluation.classes) else f"output{i}" for i in shown}
    width = max(len(name) for name in names.values()) + 2
    lines = [f"accuracy {evaluation.accuracy:.3f} over {evaluation.confusion.sum()} segments; "
             f"track accuracy {evaluation.track_accuracy:.3f} over {evaluation.tracks} tracks",
             "confusion matrix (rows: true genre, columns: predicted)",
             " " * width + "".join(f"{names[i]:>{width}}" for i in shown)]
    for i in shown:
        lines.append(f"{names[i]:<{width}}" + "".join(f"{confusion[i, j]:>{width}}" for j in shown))
    lines += [f"skipped {s.track}: {s.reason}" for s in evaluation.skipped]
    return "\n".join(lines)


# --- a synthetic dataset ---------------------------------------------------------------------

# Four genres told apart by timbre, rhythm and drums, for tests, benchmarks and demos.
SYNTHETIC_GENRES: dict[str, dict[str, Any]] = {
    "classical": dict(timbre="strings", rhythm="quarter", drums=False, tempo=70.0),
    "disco": dict(timbre="organ", rhythm="sixteenth", drums=True, tempo=120.0),
    "jazz": dict(timbre="piano", rhythm="triplet", drums=False, tempo=100.0),
    "reggae": dict(timbre="pluck", rhythm="syncopated", drums=True, tempo=80.0),
}


def write_synthetic_gtzan(data_uri: str, tracks_per_genre: int, seconds: float, seed: int = 0,
                          genres: Sequence[str] = tuple(SYNTHETIC_GENRES), corrupt: str | None = None) -> None:
    """Write a GTZAN-layout dataset of :func:`amnst.synth.music` tracks and its ``features_30_sec.csv``.

    Each track draws its key, mode and tempo (within 10 % of its genre's)
    from ``seed``. ``corrupt`` names one file (``"jazz.00003.wav"``) written
    as random bytes, as GTZAN's ``jazz.00054.wav`` is unreadable.
    """
    rng = np.random.default_rng(seed)
    rows = ["filename,label"]
    for genre in genres:
        for index in range(tracks_per_genre):
            name = f"{genre}.{index:05d}.wav"
            recipe = {**SYNTHETIC_GENRES[genre], "tempo": SYNTHETIC_GENRES[genre]["tempo"] * rng.uniform(0.9, 1.1)}
            recipe.update(key=str(rng.choice(list(synth.PITCH_CLASSES))), mode=str(rng.choice(list(synth.MODES))))
            y = synth.music(seconds, seed=int(rng.integers(2**31)), **recipe)
            data = rng.bytes(4096) if name == corrupt else audio.encode(y, synth.DEFAULT_SAMPLE_RATE, "wav")
            storage.write_bytes(storage.join(data_uri, GENRES_FOLDER, genre, name), data)
            rows.append(f"{name},{genre}")
    storage.write_bytes(storage.join(data_uri, LABELS_FILE), ("\n".join(rows) + "\n").encode())
