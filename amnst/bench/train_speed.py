"""``amnst bench train``: CNN training samples per second on Ray Train with one and
two workers (and a GPU where there is one), against the same step in this process.
"""

from __future__ import annotations

import os
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from amnst.bench.measure import best_of, machine
from amnst.engine.model import build_model


def bench_train(quick: bool = False) -> dict[str, Any]:
    """Training segments per second of the CNN on Ray Train with 1 and with 2 workers
    (and 1 GPU where TensorFlow sees one), against the same compiled step in this
    process without Ray or a distribution strategy.

    Each configuration trains on one synthesized GTZAN-layout dataset (30 s
    tracks, the recipe's global batch of 32) into its own output; its figure
    is its fastest epoch after the first, which traces the step.
    """
    import tempfile

    import ray

    from amnst.train.cnn import train
    from amnst.train.dataset import write_synthetic_gtzan
    from amnst.train.recipe import TrainOptions
    from amnst.train.records import read_epochs

    tracks, epochs, repeats = (4, 2, 1) if quick else (8, 3, 3)
    batch = TrainOptions.batch_size  # the recipe's global batch
    cpus = os.cpu_count() or 1
    gpus = len(tf.config.list_physical_devices("GPU"))
    configurations = {"ray_1_worker": (1, cpus, 0), "ray_2_workers": (2, cpus / 2, 0)}
    if gpus:
        configurations["ray_1_worker_1_gpu"] = (1, cpus, 1)
    figures: dict[str, Any] = {"benchmark": "train", "machine": machine(), "global_batch": batch, "epochs": epochs,
                               "in_process_samples_per_s": _in_process_train_rate(batch, repeats)}
    with tempfile.TemporaryDirectory() as folder:
        data = os.path.join(folder, "data")
        write_synthetic_gtzan(data, tracks, seconds=30.0)
        ray.init(address="local", num_cpus=cpus, num_gpus=gpus, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
        try:
            for name, (workers, cpus_per_worker, gpus_per_worker) in configurations.items():
                options = TrainOptions(data, os.path.join(folder, name), workers=workers, epochs=epochs,
                                       cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker)
                card = train(options)
                rows = read_epochs(options.output).to_pylist()
                figures[f"{name}_samples_per_s"] = max(r["samples_per_second"] for r in rows if r["epoch"] > 0)
        finally:
            ray.shutdown()
    figures["segments_per_epoch"] = card["dataset"]["segments_train"] // batch * batch
    one, two = figures["ray_1_worker_samples_per_s"], figures["ray_2_workers_samples_per_s"]
    figures["speedup_2_vs_1_worker"] = two / one
    figures["ray_1_worker_vs_in_process"] = one / figures["in_process_samples_per_s"]
    if not gpus:
        figures["gpu"] = "not measured: TensorFlow sees no GPU on this machine"
    return figures


def _in_process_train_rate(batch: int, repeats: int) -> float:
    """Segments per second of the training step at ``batch`` in this process (the default strategy)."""
    from amnst.train.loop import make_steps

    model = build_model()
    train_step, _ = make_steps(model, keras.optimizers.Adam(1e-3), tf.distribute.get_strategy(), batch,
                               num_classes=model.output_shape[-1])
    rng = np.random.default_rng(0)
    inputs = (rng.random((batch, *model.input_shape[1:]), dtype=np.float32),
              rng.integers(0, model.output_shape[-1], batch).astype(np.int32))
    for _ in range(3):  # traces, then lets oneDNN settle: the first steps after tracing run slower
        train_step(inputs).numpy()
    return batch / best_of(repeats, lambda: train_step(inputs).numpy())
