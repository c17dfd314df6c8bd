"""The GTZAN-layout dataset the CNN learns from: its tracks, their labels and segments, the split.

Training (:mod:`amnst.train.cnn`) and evaluation (:mod:`amnst.train.evaluate`)
both read a dataset through this module, so both see the same tracks, the
same segments and the same validation split. A dataset (a local folder,
``file://`` or ``s3://``) is laid out as GTZAN is::

    {data}/features_30_sec.csv             optional; its columns filename, label name the genres
    {data}/genres_original/<genre>/<file>  one audio file per track

Without the CSV a track's genre is its folder's name. Each track becomes
``round(n_frames / 431)`` segments (at least one) of the magnitude mel the
``default`` NST preset feeds the CNN: a 30 s GTZAN track gives 6, as in the
original, which padded or cut every track to 2587 frames. For training, audio
is decoded once per track, by Ray tasks; the segments stay in the object store
for the whole run, restarted workers included. An undecodable track is skipped
and recorded. Tracks, not segments, are split between training and
validation, seeded and stratified by genre.

Ray's decoding tasks load this module, so it imports no TensorFlow or Keras.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray

from amnst.engine import audio
from amnst.batch import storage
from amnst import synth
from amnst.config import AudioConfig, get_preset

GENRES_FOLDER = "genres_original"
LABELS_FILE = "features_30_sec.csv"

# The CNN's input: the default preset's magnitude mel, cut without overlap as the original was.
TRAIN_AUDIO = dataclasses.replace(get_preset("default").audio, overlap_frames=0, fit_segments=False)


class DatasetError(ValueError):
    """A dataset that cannot be trained on or evaluated; the message names it."""


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
