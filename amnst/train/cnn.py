"""Training the seed CNN on a GTZAN-layout dataset, as a Ray Train job: :func:`train`.

The driver's side of a training: it decodes and splits the dataset
(:mod:`amnst.train.dataset`), claims the output, runs every worker's loop
(:mod:`amnst.train.loop`) under Ray Train and exports the best epoch. A
training output holds::

    {output}/split.json                    the tracks on each side, skipped tracks, fingerprints
    {output}/checkpoints/cnn/...           Ray Train checkpoints, one per epoch
    {output}/_amnst/training/...           one row per epoch (:mod:`amnst.train.records`)
    {output}/model.weights.h5              the weights of the best validation epoch
    {output}/model_card.json               written last

Training a second time into the same output resumes from its latest
checkpoint, provided the dataset and recipe are the same.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from amnst.batch import metadata, storage
from amnst.train.dataset import TRAIN_AUDIO, DatasetError, PreparedDataset, prepare
from amnst.train.loop import WEIGHTS_NAME, _Plan, _read_outcome, _train_loop
from amnst.train.recipe import TrainOptions, TrainState

CARD_NAME = "model_card.json"
SPLIT_NAME = "split.json"
RUN_NAME = "cnn"  # Ray Train's run name: a fixed one is what lets a rerun find its checkpoints


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
