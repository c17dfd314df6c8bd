"""A training's options, and its learning-rate schedule and progress as plain values.

The options are what ``amnst train`` validates and what the training's
fingerprint hashes (:meth:`TrainOptions.recipe`), so a resume with another
recipe is refused. The schedule and the progress are frozen values, stepped
by pure functions, so that every worker steps them the same way from the
same all-reduced accuracy, and a checkpoint carries them as JSON: a resumed
run goes on exactly where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any


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
