"""CNN training: the dataset reader, the split, the recipe, and Ray Train on a real moto S3 endpoint."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import boto3
import numpy as np
import pytest

from amnst.engine import audio
from amnst.batch import storage
from amnst import synth
from amnst.train.cnn import CARD_NAME, RUN_NAME, SPLIT_NAME, train
from amnst.train.dataset import (GENRES_FOLDER, LABELS_FILE, TRAIN_AUDIO, DatasetError, class_order, list_tracks,
                                 segments_per_track, split_by_track, track_segments, write_synthetic_gtzan)
from amnst.train.loop import WEIGHTS_NAME, epoch_batches, replica_slice
from amnst.train.recipe import Plateau, TrainOptions, TrainState, advance, plateau_step
from amnst.train.records import TRAINING_SCHEMA_VERSION, read_epochs
from amnst.cli import main
from amnst.cli.options import EXIT_USAGE
from amnst.config import AudioConfig
from amnst.engine.model import GENRES
from amnst.bench.processes import ProcessKiller, descendants_named
from tests.conftest import local_ray_instance, write_wav

BUCKET = "amnst-train"
GENRE_SET = ("classical", "disco", "reggae")
CORRUPT = "reggae.00001.wav"
# Small enough for two contended cores: 3 genres x 6 tracks x 2 segments, 2 of each genre held out;
# 4 segments per replica keep BatchNorm's batch statistics usable.
OPTIONS = dict(workers=2, batch_size=8, val_fraction=0.25)
EPOCHS = 5


# --- the dataset, the split and the recipe, without Ray ---------------------------------------


@pytest.mark.parametrize("seconds, expected", [(30.0, 6), (29.93, 6), (30.65, 6), (10.0, 2), (7.0, 1), (1.0, 1)])
def test_segments_per_track_as_the_original_for_30_s(seconds, expected):
    n_frames = audio.num_frames(round(seconds * 22050), TRAIN_AUDIO)
    assert segments_per_track(n_frames, TRAIN_AUDIO) == expected


def test_track_segments_are_the_magnitude_mel_cut_without_overlap():
    wav = audio.encode(synth.music(13.0, seed=2), 22050, "wav")
    segments = track_segments(wav, TRAIN_AUDIO, "x.wav")
    assert segments.shape == (3, 384, 431) and segments.dtype == np.float32
    magnitude = AudioConfig(mel_power=1.0)
    mel = audio.mel_spectrogram(audio.load(wav, magnitude), magnitude)
    assert np.allclose(segments[1], mel[:, 431:862])
    # 13 s is 1120 frames, 2.6 segments: the third is padded with silence past the end.
    assert np.all(segments[2][:, 1120 - 862:] == 0) and segments[2][:, :1120 - 862].any()


def test_split_is_by_track_seeded_and_stratified():
    labels = ["blues"] * 10 + ["jazz"] * 7 + ["rock"] * 2 + ["pop"]
    train_tracks, val_tracks = split_by_track(labels, 0.2, seed=3)
    assert not set(train_tracks) & set(val_tracks)
    assert sorted([*train_tracks, *val_tracks]) == list(range(len(labels)))
    held_out = [labels[i] for i in val_tracks]
    # round(0.2 * n), at least one and never all of a genre; a lone track always trains.
    assert {g: held_out.count(g) for g in set(labels)} == {"blues": 2, "jazz": 1, "rock": 1, "pop": 0}
    again = split_by_track(labels, 0.2, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(again, (train_tracks, val_tracks)))
    others = [tuple(split_by_track(labels, 0.2, seed=s)[1]) for s in range(5)]
    assert len(set(others)) > 1


def test_plateau_matches_keras_reduce_lr_on_plateau():
    import keras

    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    callback = keras.callbacks.ReduceLROnPlateau(monitor="val_accuracy", mode="max", factor=0.5, patience=2,
                                                 min_delta=0.005)
    callback.set_model(model)
    callback.on_train_begin()
    state = Plateau(1e-3)
    accuracies = [0.40, 0.60, 0.603, 0.604, 0.61, 0.612, 0.70, 0.70, 0.69, 0.71, 0.705, 0.7, 0.9]
    for epoch, accuracy in enumerate(accuracies):
        callback.on_epoch_end(epoch, {"val_accuracy": accuracy})
        state = plateau_step(state, accuracy, factor=0.5, patience=2, min_delta=0.005)
        assert state.learning_rate == pytest.approx(float(model.optimizer.learning_rate)), epoch
    assert state.learning_rate < 1e-3 / 4


def test_best_epoch_is_the_strictly_best_validation_accuracy():
    options = TrainOptions("d", "o")
    state = TrainState(0, Plateau(1e-3))
    marks = []
    for epoch, accuracy in enumerate([0.5, 0.8, 0.8, 0.7]):
        state, improved = advance(state, epoch, accuracy, (accuracy,), options)
        marks.append(improved)
    assert marks == [True, True, False, False]
    assert (state.best_epoch, state.best_val_accuracy, state.next_epoch) == (1, 0.8, 4)
    assert TrainState.from_json(state.to_json()) == state


def test_batches_cover_each_segment_at_most_once_and_split_over_replicas():
    batches = epoch_batches(10, 4, seed=0, epoch=3)
    assert batches.shape == (2, 4) and len(set(batches.ravel())) == 8
    assert np.array_equal(batches, epoch_batches(10, 4, seed=0, epoch=3))
    assert not np.array_equal(batches, epoch_batches(10, 4, seed=0, epoch=4))
    shares = [range(5)[replica_slice(5, 3, r)] for r in range(3)]
    assert [list(s) for s in shares] == [[0], [1, 2], [3, 4]]


def test_labels_come_from_the_csv_when_present_else_from_folders(tmp_path):
    root = tmp_path / "data"
    for relative in ("blues/blues.00000.wav", "blues/blues.00001.wav", "jazz/jazz.00000.wav",
                     "jazz/.DS_Store", "jazz/deeper/x.wav"):
        (root / GENRES_FOLDER / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / GENRES_FOLDER / relative).write_bytes(b"x")
    tracks, skipped = list_tracks(str(root))
    assert [(t.id, t.label) for t in tracks] == [
        ("blues/blues.00000.wav", "blues"), ("blues/blues.00001.wav", "blues"), ("jazz/jazz.00000.wav", "jazz")]
    assert skipped == []
    # The CSV wins over folders: a file it does not list, and a row without a file, are recorded.
    (root / LABELS_FILE).write_text("filename,length,label\nblues.00000.wav,30,rock\n"
                                          "jazz.00000.wav,30,jazz\njazz.00099.wav,30,jazz\n")
    tracks, skipped = list_tracks(str(root))
    assert [(t.id, t.label) for t in tracks] == [
        ("blues/blues.00000.wav", "rock"), ("jazz/jazz.00000.wav", "jazz")]
    assert [(s.track, s.reason) for s in skipped] == [
        ("blues/blues.00001.wav", "not listed in features_30_sec.csv"),
        ("jazz.00099.wav", "listed in features_30_sec.csv but not found")]
    assert class_order(["rock", "jazz"]) == GENRES
    assert class_order(["techno", "ambient"]) == ("ambient", "techno")


def test_evaluate_runs_the_original_imported_weights(seed_weights_npy, tmp_path, capsys):
    data = str(tmp_path / "data")
    write_synthetic_gtzan(data, tracks_per_genre=2, seconds=5.0, genres=GENRE_SET[:2],
                                corrupt="disco.00001.wav")
    weights = tmp_path / "seed.weights.h5"
    assert main(["weights", "import", str(seed_weights_npy), str(weights)]) == 0
    assert main(["evaluate", "--data", data, "--weights", str(weights)]) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "over 3 segments" in out and "confusion matrix" in out
    assert "classical" in out and "skipped disco/disco.00001.wav: cannot decode" in out


def test_train_checks_its_options_before_starting_ray(capsys):
    assert main(["train", "--data", "d", "--output", "o", "--workers", "0"]) == EXIT_USAGE
    assert capsys.readouterr().err == "amnst train: error: argument --workers: 0 is not positive\n"


def test_the_ray_job_entrypoint_takes_the_train_options():
    done = subprocess.run([sys.executable, "jobs/train_cnn.py", "--help"], capture_output=True, text=True,
                          timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0 and "--gpus-per-worker" in done.stdout and "--workers" in done.stdout


# --- Ray Train against S3 ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(moto_server):
    """Ray on two CPUs whose workers reach the moto endpoint; a bucket of its own.

    Module-scoped, so the S3 fixtures that reset moto per test are not used here.
    """
    with local_ray_instance(moto_server):
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        data = f"s3://{BUCKET}/gtzan"
        write_synthetic_gtzan(data, tracks_per_genre=6, seconds=10.0, genres=GENRE_SET, corrupt=CORRUPT)
        yield data


@pytest.fixture(scope="module")
def trained(cluster):
    """One training on 2 workers; returns (options, model card)."""
    options = TrainOptions(cluster, f"s3://{BUCKET}/out", epochs=EPOCHS, **OPTIONS)
    return options, train(options)


def test_two_workers_learn_well_above_chance(trained):
    options, card = trained
    assert card["val_accuracy"] >= 0.75, card  # chance is 1/3
    assert card["classes"] == list(GENRES) and card["audio"]["mel_power"] == 1.0
    assert set(card["val_accuracy_per_class"]) == set(GENRE_SET)
    assert card["dataset"]["tracks_train"] + card["dataset"]["tracks_val"] == 17
    assert card["dataset"]["segments_val"] == 2 * card["dataset"]["tracks_val"]
    [skipped] = card["dataset"]["skipped"]
    assert skipped["track"] == f"reggae/{CORRUPT}" and "cannot decode" in skipped["reason"]
    assert len(card["dataset"]["fingerprint"]) == 16 and card["epochs"] == EPOCHS and card["workers"] == 2
    assert json.loads(storage.read_bytes(f"{options.output}/{CARD_NAME}")) == card


def test_no_track_is_on_both_sides(trained):
    options, card = trained
    split = json.loads(storage.read_bytes(f"{options.output}/{SPLIT_NAME}"))
    assert not set(split["train"]) & set(split["val"])
    held_out = [track.split("/")[0] for track in split["val"]]
    # Two of each genre's six tracks, drawn before decoding: the corrupt one may be among them.
    assert all(held_out.count(genre) in (1, 2) for genre in GENRE_SET) and len(held_out) >= 5
    assert len(split["train"]) + len(split["val"]) == 17 and split["skipped"] == card["dataset"]["skipped"]
    assert split["dataset_fingerprint"] == card["dataset"]["fingerprint"]


def test_one_parquet_row_per_epoch(trained):
    options, card = trained
    rows = read_epochs(options.output).to_pylist()
    assert [r["epoch"] for r in rows] == list(range(EPOCHS))
    assert len({r["run_id"] for r in rows}) == 1 and not any(r["resumed"] for r in rows)
    for row in rows:
        assert row["schema_version"] == TRAINING_SCHEMA_VERSION and row["date"]
        assert row["workers"] == 2 and row["replicas"] == 2 and row["global_batch"] == options.batch_size
        assert row["samples_per_second"] > 0 and row["seconds"] >= row["train_seconds"] > 0
        assert row["train_samples"] == card["dataset"]["segments_train"] // options.batch_size * options.batch_size
        assert row["val_samples"] == card["dataset"]["segments_val"]
        assert 0 <= row["val_accuracy"] <= 1 and np.isfinite(row["train_loss"])
    best = rows[card["best_epoch"]]
    assert best["val_accuracy"] == card["val_accuracy"] == max(r["val_accuracy"] for r in rows)
    assert rows[0]["learning_rate"] == 1e-3 and rows[-1]["best_epoch"] == card["best_epoch"]


def test_evaluate_reproduces_the_validation_accuracy_of_the_exported_weights(trained, capsys):
    options, card = trained
    assert main(["evaluate", "--data", options.data, "--weights", f"{options.output}/{WEIGHTS_NAME}",
                 "--split", "val", "--val-fraction", str(options.val_fraction)]) == 0
    out = capsys.readouterr().out
    assert f"accuracy {card['val_accuracy']:.3f} over {card['dataset']['segments_val']} segments" in out


def test_exported_weights_drive_transfer(trained, tmp_path):
    options, _ = trained
    weights = tmp_path / WEIGHTS_NAME
    weights.write_bytes(storage.read_bytes(f"{options.output}/{WEIGHTS_NAME}"))
    content = write_wav(tmp_path / "music.wav", synth.music(6.0, seed=5))
    style = write_wav(tmp_path / "rain.wav", synth.rain(5.0, seed=5))
    out = tmp_path / "out.wav"
    assert main(["transfer", str(content), str(style), "-o", str(out), "--weights", str(weights),
                 "--iterations", "1"]) == 0
    assert out.stat().st_size > 44


def test_another_dataset_is_refused_in_a_used_output(trained, tmp_path):
    options, _ = trained
    other = str(tmp_path / "other")
    write_synthetic_gtzan(other, tracks_per_genre=2, seconds=1.0, genres=GENRE_SET[:2])
    with pytest.raises(DatasetError, match="holds another training"):
        train(TrainOptions(other, options.output, batch_size=2, val_fraction=0.5))


MORE = 6


@pytest.mark.slow
def test_a_rerun_resumes_and_a_killed_worker_restarts_from_a_checkpoint(trained):
    finished_options, _ = trained
    # A copy of the finished training, trained on for more epochs; a worker dies on the way, once
    # Ray Train has registered a checkpoint of the rerun's own. Registration lags the worker's report
    # (the controller polls for it), so the epoch rows alone do not show it: the controller's snapshot
    # does. Several epochs remain after that one, so on a loaded machine the kill still lands
    # mid-training, not after the last report.
    options = dataclasses.replace(finished_options, output=f"s3://{BUCKET}/resumed", epochs=EPOCHS + MORE)
    for uri in storage.list_uris(finished_options.output):
        storage.write_bytes(options.output + uri[len(finished_options.output):], storage.read_bytes(uri))
    snapshot = f"{options.output}/checkpoints/{RUN_NAME}/checkpoint_manager_snapshot.json"
    last = f"epoch-{EPOCHS + MORE - 1:05d}"

    def the_rerun_has_a_checkpoint_and_epochs_remain() -> bool:
        latest = json.loads(storage.read_bytes(snapshot)).get("latest_checkpoint_result") or {}
        registered = int(latest.get("metrics", {}).get("epoch", -1))
        rows = " ".join(storage.list_uris(f"{options.output}/_amnst/training"))
        return registered >= EPOCHS and last not in rows

    # Workers of the earlier training may outlive it for a while: only the rerun's are fair game.
    with ProcessKiller(b"ray::RayTrainWorker", armed=the_rerun_has_a_checkpoint_and_epochs_remain,
                       spare=descendants_named(b"ray::RayTrainWorker"), interval=0.2) as killer:
        card = train(options)
    assert killer.killed, "no training worker was killed"
    rows = read_epochs(options.output).to_pylist()
    assert [r["epoch"] for r in rows] == list(range(EPOCHS + MORE)) and card["epochs"] == EPOCHS + MORE
    first_run, rerun = rows[0]["run_id"], rows[-1]["run_id"]
    assert [r["run_id"] for r in rows] == [first_run] * EPOCHS + [rerun] * MORE and rerun != first_run
    # The rerun started from the first run's last checkpoint, and after the kill from one of its own.
    restarts = [r["epoch"] for r in rows if r["resumed"]]
    assert len(restarts) == 2 and restarts[0] == EPOCHS and restarts[1] > EPOCHS
