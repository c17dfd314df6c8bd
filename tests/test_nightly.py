"""Nightly batches on a real local Ray: which manifests are due, two nights, a rerun of a night."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest

from amnst.engine import audio
from amnst.batch import metadata
from amnst import synth
from amnst.config import get_preset
from amnst.batch.nightly import RECORD_FOLDER, due_manifests, run_night
from amnst.batch.ray_runner import RunOptions
from tests.conftest import local_ray_instance

PRESET = get_preset("default").with_overrides(iterations=2)
NIGHT_1, NIGHT_2 = datetime.date(2026, 1, 1), datetime.date(2026, 1, 2)


@pytest.fixture(scope="module")
def local_ray():
    with local_ray_instance():
        yield


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def manifest(rows: list[str]) -> str:
    return "pair_id,content,style\n" + "\n".join(rows) + "\n"


@pytest.fixture
def prefix(tmp_path: Path) -> Path:
    """Manifests for every night, for night 1 and for night 2, and files that are not manifests.

    Night 2's second pair names content that does not exist yet.
    """
    sounds = tmp_path / "sounds"
    for index in range(3):
        write(sounds / f"music{index}.wav", audio.encode(synth.music(5.0, seed=index), 22050, "wav"))
    write(sounds / "rain.wav", audio.encode(synth.rain(5.0, seed=1), 22050, "wav"))
    root = tmp_path / "manifests"
    write(root / "every.csv", manifest([f"a,{sounds}/music0.wav,{sounds}/rain.wav"]))
    # The same pair id as every.csv's: a manifest's own output prefix keeps them apart.
    write(root / "2026-01-01" / "first.csv", manifest([f"a,{sounds}/music1.wav,{sounds}/rain.wav"]))
    write(root / "2026-01-02" / "second.csv", manifest([f"b,{sounds}/music2.wav,{sounds}/rain.wav",
                                                        f"c,{sounds}/later.wav,{sounds}/rain.wav"]))
    for ignored in ("_draft.csv", ".hidden.csv", "notes.txt", "2026-01-01/old/deeper.csv", "monday/x.csv"):
        write(root / ignored, manifest([]))
    return root


def statuses(output: Path) -> list[dict[str, str]]:
    """Each run's pair statuses under one manifest's output, oldest run first."""
    rows = metadata.read_table(str(output), "pairs").to_pylist()
    runs: dict[str, dict[str, str]] = {}
    for row in sorted(rows, key=lambda r: r["run_id"]):
        runs.setdefault(row["run_id"], {})[row["pair_id"]] = row["status"]
    return list(runs.values())


def test_due_manifests_follow_the_folder_convention(prefix: Path, tmp_path: Path):
    out = tmp_path / "out"
    due = {Path(m.uri).relative_to(prefix).as_posix(): m.output
           for m in due_manifests(str(prefix), str(out), NIGHT_2)}
    assert due == {"every.csv": f"{out}/every.csv", "2026-01-02/second.csv": f"{out}/2026-01-02/second.csv"}
    assert [Path(m.uri).name for m in due_manifests(str(prefix), str(out), datetime.date(2026, 3, 1))] == [
        "every.csv"]


def test_two_nights_and_a_rerun_compute_only_what_is_left(local_ray, prefix: Path, tmp_path: Path):
    out = tmp_path / "out"
    options = RunOptions(str(out), PRESET, max_in_flight=8)

    first = run_night(str(prefix), options, NIGHT_1)
    assert first.exit_status == 0 and (first.total("ok"), first.total("failed")) == (2, 0)
    assert statuses(out / "every.csv") == [{"a": "ok"}]
    assert statuses(out / "2026-01-01" / "first.csv") == [{"a": "ok"}]

    broken = write(prefix / "2026-01-02" / "broken.csv", "title,artist\nx,y\n")
    second = run_night(str(prefix), options, NIGHT_2)
    assert second.exit_status == 3 and second.status == "partial"
    assert statuses(out / "every.csv")[-1] == {"a": "skipped"}  # done last night, unchanged
    assert statuses(out / "2026-01-02" / "second.csv") == [{"b": "ok", "c": "failed"}]
    unreadable = next(m for m in second.manifests if m.manifest == str(broken))
    assert "neither a 'content' nor a 'style' column" in unreadable.error

    # The missing input arrives and the broken manifest goes: the rerun does only pair c.
    write(prefix.parent / "sounds" / "later.wav", audio.encode(synth.music(5.0, seed=9), 22050, "wav"))
    broken.unlink()
    rerun = run_night(str(prefix), options, NIGHT_2)
    assert rerun.exit_status == 0 and (rerun.total("ok"), rerun.total("skipped")) == (1, 2)
    assert statuses(out / "2026-01-02" / "second.csv")[-1] == {"b": "skipped", "c": "ok"}
    assert len(statuses(out / "2026-01-01" / "first.csv")) == 1  # not due on night 2

    records = out.joinpath(*RECORD_FOLDER)
    night_2 = sorted((json.loads(p.read_text()) for p in (records / "date=2026-01-02").glob("*.json")),
                     key=lambda record: record["started_at"])
    assert [(r["status"], r["exit_status"], r["ok"], r["skipped"], r["failed"]) for r in night_2] == [
        ("partial", 3, 1, 1, 1), ("completed", 0, 1, 2, 0)]
    assert [m["manifest"] for m in night_2[0]["manifests"]] == [
        str(broken), f"{prefix}/2026-01-02/second.csv", f"{prefix}/every.csv"]
    assert len(list((records / "date=2026-01-01").glob("*.json"))) == 1
