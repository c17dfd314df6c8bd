"""Overlapping runs of one manifest into one output compute each pair once (issue 17).

Claims (amnst.batch.claims) on local paths and on a real S3 endpoint (moto's server),
then whole runs: two `amnst run` processes a second apart, a run meeting the
claims of a killed run, a run whose record of the output is stale.
"""

from __future__ import annotations

import collections
import os
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pytest

from amnst.batch import claims, metadata, storage
from amnst import synth
from amnst.batch.claims import Claim, ClaimKeeper, claim_uri
from amnst.config import get_preset
from amnst.batch.ray_runner import RunOptions, run_manifest
from amnst.bench.processes import Driver
from tests.conftest import local_ray_instance, wav_bytes

PRESET = get_preset("default").with_overrides(iterations=2)
SECONDS = 3.0  # one segment a pair


@pytest.fixture(params=["local", "s3"])
def output(request, tmp_path) -> str:
    if request.param == "s3":
        return f"{request.getfixturevalue('s3_bucket')}/out"
    return str(tmp_path / "out")


def dead_claim(output: str, pair_id: str, run_id: str, expires_in: float, pid: int = 999999) -> str:
    """A claim written by hand, as a run killed while holding it would have left it."""
    now = datetime.now(timezone.utc)
    uri = claim_uri(output, pair_id)
    claim = Claim(pair_id, run_id, "gone-host", pid, now - timedelta(minutes=10),
                  now + timedelta(seconds=expires_in))
    storage.write_bytes(uri, claim.to_bytes())
    return uri


def claims_left(output: str) -> list[str]:
    return list(storage.list_uris(storage.join(output, "_amnst", "claims")))


# --- claims -------------------------------------------------------------------------------------

def test_a_claim_is_held_once_and_free_again_when_released(output):
    first, second = ClaimKeeper(output, "run-a"), ClaimKeeper(output, "run-b")
    assert first.acquire("p0") is None
    holder = second.acquire("p0")
    assert holder is not None and holder.run_id == "run-a" and holder.pid == os.getpid()
    assert "held by run run-a" in holder.describe() and not holder.expired()
    assert holder.expires_at - holder.claimed_at == timedelta(seconds=300)
    second.release("p0")  # not second's: nothing happens
    assert Claim.from_bytes(storage.read_bytes(claim_uri(output, "p0"))).run_id == "run-a"
    first.release("p0")
    assert claims_left(output) == []
    assert second.acquire("p0") is None and second.held.keys() == {"p0"}


def test_an_expired_claim_is_taken_over_by_exactly_one_of_several_runs(output):
    dead_claim(output, "p0", "killed-run", expires_in=-1)
    keepers = [ClaimKeeper(output, f"run-{index}") for index in range(6)]
    start = threading.Barrier(len(keepers))

    def take(keeper: ClaimKeeper) -> Claim | None:
        start.wait()
        return keeper.acquire("p0")

    with ThreadPoolExecutor(len(keepers)) as pool:
        holders = list(pool.map(take, keepers))
    winners = [keeper.run_id for keeper, holder in zip(keepers, holders) if holder is None]
    assert len(winners) == 1
    assert {holder.run_id for holder in holders if holder is not None} == set(winners)
    assert Claim.from_bytes(storage.read_bytes(claim_uri(output, "p0"))).run_id == winners[0]


def test_a_claim_of_an_ended_process_on_this_host_is_taken_at_once(output):
    owner = subprocess.Popen(["sleep", "60"])
    try:
        # As the owner's keeper would have written it, with its lifetime still ahead.
        keeper = ClaimKeeper(output, "run-owner")
        keeper.pid, keeper.process = owner.pid, (claims._this_process()[0], claims._process_started(owner.pid))
        assert keeper.acquire("p0") is None and keeper.process[1]
        holder = ClaimKeeper(output, "run-b").acquire("p0")
        assert holder is not None and holder.run_id == "run-owner" and not holder.owner_gone()
    finally:
        owner.kill()
        owner.wait()
    assert Claim.from_bytes(storage.read_bytes(claim_uri(output, "p0"))).owner_gone()
    assert ClaimKeeper(output, "run-b").acquire("p0") is None


def test_an_unreadable_claim_counts_as_expired(output):
    storage.write_bytes(claim_uri(output, "p0"), b"{not json")
    assert ClaimKeeper(output, "run-a").acquire("p0") is None


def test_claims_are_renewed_while_held_and_released_at_the_end(output):
    with ClaimKeeper(output, "run-a", ttl_seconds=1.2) as keeper:
        assert keeper.acquire("p0") is None and keeper.acquire("p1") is None
        time.sleep(2.5)  # twice the lifetime: only renewals keep them
        for pair_id in ("p0", "p1"):
            claim = Claim.from_bytes(storage.read_bytes(claim_uri(output, pair_id)))
            assert not claim.expired() and claim.run_id == "run-a"
            assert claim.expires_at - claim.claimed_at > timedelta(seconds=1.2)  # claimed_at is kept
            assert ClaimKeeper(output, "run-b").acquire(pair_id) is not None
        # A run stalled past the expiry finds its claim taken: it never writes over or deletes it.
        storage.delete(claim_uri(output, "p1"))
        assert ClaimKeeper(output, "run-b").acquire("p1") is None
        keeper.renew_all()
        assert keeper.lost == {"p1"} and keeper.held.keys() == {"p0"}
    assert claims_left(output) == [claim_uri(output, "p1")]
    assert Claim.from_bytes(storage.read_bytes(claim_uri(output, "p1"))).run_id == "run-b"


# --- runs ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_address(moto_server):
    """A local Ray whose workers, and the drivers that join it, reach the moto endpoint."""
    with local_ray_instance(moto_server) as address:
        yield address


def write_pairs(output: str, count: int, seconds: float = SECONDS) -> str:
    """``count`` pairs of short music with one rain under OUTPUT/../inputs; the manifest's URI."""
    inputs = storage.join(output.rsplit("/", 1)[0], "inputs")
    storage.write_bytes(storage.join(inputs, "rain.wav"), wav_bytes(synth.rain(3.0, seed=1)))
    rows = ["pair_id,content,style"]
    for index in range(count):
        storage.write_bytes(storage.join(inputs, f"music{index}.wav"),
                            wav_bytes(synth.music(seconds, seed=index)))
        rows.append(f"p{index},music{index}.wav,rain.wav")
    manifest = storage.join(inputs, "manifest.csv")
    storage.write_bytes(manifest, ("\n".join(rows) + "\n").encode())
    return manifest


def pair_rows(output: str) -> list[dict]:
    return metadata.read_table(output, "pairs").sort_by("finished_at").to_pylist()


def assert_each_pair_computed_once(output: str, pair_ids: list[str]) -> dict[str, str]:
    """Exactly one ``ok`` row per pair across all runs, and every other row a skip that
    names the run that computed it; returns pair_id -> that run."""
    rows = pair_rows(output)
    computed = collections.Counter(row["pair_id"] for row in rows if row["status"] == "ok")
    assert computed == collections.Counter(pair_ids)
    by = {row["pair_id"]: row["run_id"] for row in rows if row["status"] == "ok"}
    computed_fingerprint = {row["pair_id"]: row["fingerprint"] for row in rows if row["status"] == "ok"}
    for row in rows:
        if row["status"] != "ok":
            assert row["status"] == "skipped", row
            assert by[row["pair_id"]] in row["error"], row
            if row["held_by"] is not None:  # met while the other run held it
                assert row["held_by"] == by[row["pair_id"]] and row["output_uri"] is None
            else:  # met once the other run had recorded it: a skip as done, as on resume
                assert row["fingerprint"] == computed_fingerprint[row["pair_id"]]
    segments = collections.Counter((s["pair_id"], s["segment_index"])
                                   for s in metadata.read_table(output, "segments").to_pylist())
    assert set(segments.values()) == {1}
    return by


def amnst_run(manifest: str, output: str, address: str, *options: str) -> Driver:
    """``amnst run`` as a process of its own, joining the cluster at ``address``."""
    return Driver([manifest, "--output", output, "--iterations", "2", "--max-in-flight", "2", *options],
                  address)


@pytest.mark.slow  # two drivers of their own, each starting its workers cold
# Records written at once, so claims are released at once (a later run may claim a pair the
# other finished, and must find its record), or every 30 s (a later run meets the claims).
@pytest.mark.parametrize("output, flush", [("s3", "0"), ("local", "30")], indirect=["output"])
def test_two_runs_started_a_second_apart_compute_each_pair_once(ray_address, output, flush):
    pairs = [f"p{index}" for index in range(4)]
    manifest = write_pairs(output, len(pairs))
    first = amnst_run(manifest, output, ray_address, "--metadata-flush-seconds", flush)
    time.sleep(1.0)
    second = amnst_run(manifest, output, ray_address, "--metadata-flush-seconds", flush)
    ended = [driver.wait(timeout=400) for driver in (first, second)]
    assert [status for status, _, _ in ended] == [0, 0], "\n".join(err[-3000:] for _, _, err in ended)
    assert all(" ok, " in out and "0 failed of 4 pairs" in out for _, out, _ in ended)
    by = assert_each_pair_computed_once(output, pairs)
    runs = {row["run_id"]: row for row in metadata.read_table(output, "runs", committed_only=True).to_pylist()}
    assert len(runs) == 2 and set(by.values()) <= set(runs)
    assert sum(run["pairs_ok"] for run in runs.values()) == len(pairs)
    assert all(run["pairs_ok"] + run["pairs_skipped"] == len(pairs) and run["status"] == "completed"
               for run in runs.values())
    for pair_id in pairs:
        assert storage.exists(storage.join(output, "audio", f"{pair_id}.wav"))
    assert claims_left(output) == []


def test_a_killed_runs_claims_hold_until_they_expire(ray_address, output):
    manifest = write_pairs(output, 3)
    dead_claim(output, "p0", "20260101T000000Z-dead00", expires_in=-5)   # its owner died long ago
    live = dead_claim(output, "p1", "20260101T000000Z-live00", expires_in=600)  # still renewed
    seen_claims: list[list[str]] = []

    def look(progress) -> None:
        if progress.in_flight:
            seen_claims.append(claims_left(output))

    summary = run_manifest(manifest, RunOptions(output, PRESET, claim_ttl_seconds=30), look)
    assert (summary.exit_status, summary.progress.ok, summary.progress.skipped) == (0, 2, 1)
    rows = {row["pair_id"]: row for row in pair_rows(output)}
    assert rows["p0"]["status"] == rows["p2"]["status"] == "ok"
    assert rows["p1"]["status"] == "skipped" and rows["p1"]["held_by"] == "20260101T000000Z-live00"
    assert "held by run 20260101T000000Z-live00 (host gone-host, pid 999999)" in rows["p1"]["error"]
    assert rows["p1"]["fingerprint"] is None and rows["p1"]["output_uri"] is None
    # The run held its own claims while it worked, and released them; the live one is untouched.
    assert any(claim_uri(output, "p0") in listed for listed in seen_claims)
    assert claims_left(output) == [live]
    # Once the holder is gone for good, the next run computes the pair, and only it.
    storage.delete(live)
    again = run_manifest(manifest, RunOptions(output, PRESET))
    assert (again.progress.ok, again.progress.skipped) == (1, 2)
    assert metadata.latest_pair_status(output)["p1"][0] == "ok"


def test_a_pair_stays_claimed_past_the_lifetime_while_it_runs(ray_address, output):
    manifest = write_pairs(output, 1, seconds=11.0)  # three segments
    ttl = 1.5
    attempts: list[tuple[float, Claim | None]] = []
    expiries = set()
    started = time.monotonic()

    def intrude(progress) -> None:
        if progress.pairs_done == 0:
            attempts.append((time.monotonic() - started, ClaimKeeper(output, "intruder").acquire("p0")))
            expiries.add(attempts[-1][1].expires_at)

    # Enough iterations that the pair outlives its claim's first expiry.
    options = RunOptions(output, PRESET.with_overrides(iterations=80), claim_ttl_seconds=ttl)
    summary = run_manifest(manifest, options, intrude)
    assert summary.progress.ok == 1
    assert attempts and max(elapsed for elapsed, _ in attempts) > ttl + 0.5, "the pair ran too briefly"
    assert all(holder is not None and holder.run_id == summary.run_id for _, holder in attempts)
    assert len(expiries) >= 2  # renewed
    assert claims_left(output) == []


def test_a_pair_another_run_finished_since_this_one_read_the_records_is_not_computed_again(
        ray_address, output, monkeypatch):
    manifest = write_pairs(output, 2)
    first = run_manifest(manifest, RunOptions(output, PRESET))
    assert first.progress.ok == 2
    # The second run read the records just before the first flushed them: its first read finds
    # nothing. The first run released its claims after writing its records, so the second
    # claims the pairs, sees their fresh outputs, reads the records again and skips them.
    real_refresh = metadata.PairStatusIndex.refresh
    reads = []

    def refresh(index) -> None:
        reads.append(index)
        if len(reads) > 1:
            real_refresh(index)

    monkeypatch.setattr(metadata.PairStatusIndex, "refresh", refresh)
    second = run_manifest(manifest, RunOptions(output, PRESET))
    assert (second.progress.ok, second.progress.skipped) == (0, 2)
    assert len(reads) >= 2
    by = assert_each_pair_computed_once(output, ["p0", "p1"])
    assert set(by.values()) == {first.run_id}
    later = [row for row in pair_rows(output) if row["run_id"] == second.run_id]
    assert all(row["error"] == f"done meanwhile by run {first.run_id}" and row["held_by"] is None
               for row in later)
