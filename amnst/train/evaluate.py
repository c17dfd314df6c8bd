"""Scoring trained weights on a dataset, for ``amnst evaluate``.

Evaluation runs in the calling process, without Ray: it decodes the tracks
itself, one at a time, into the segments training cuts
(:func:`amnst.train.dataset.track_segments`), and classifies them. Given the
training's ``val_fraction`` and ``seed`` it selects the validation tracks the
training held out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from amnst.engine import audio
from amnst.batch import storage
from amnst.train.dataset import (TRAIN_AUDIO, DatasetError, Skipped, _reason, class_order, list_tracks,
                                 split_by_track, track_segments)

if TYPE_CHECKING:
    import keras


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
