"""Claims: when runs of one manifest into one output overlap, each pair is computed once.

A run claims a pair before it starts on it by creating, create-only, the object
``{output}/_amnst/claims/{pair_id}.json`` (:func:`amnst.batch.storage.create_only`:
a conditional put on S3, a hard link locally), which names the run, its host
and process, and an expiry time. Of two runs that try at once exactly one
creates it; the other reads it and, while it has not expired, skips the pair
(the runner records it ``skipped``, ``held_by`` the holder's run id).

A claim whose owner is a process of this machine (same boot, same PID
namespace) that has ended counts as expired at once: a rerun right after a driver was killed (on
the same machine, or the same Ray head, where ``ray job submit`` runs
drivers) need not wait for its claims to expire. From another host only the
expiry tells.

The holder renews its claims on a thread of its own, every third of the
claim's lifetime, replacing each one only if it is still the version it
wrote (:func:`amnst.batch.storage.replace_if`). A claim whose expiry has passed
belongs to a run that died: the next run to meet it deletes that very
version (:func:`amnst.batch.storage.delete_if`) and creates its own, so of two
takers only one gets it. Claims are released (deleted, again only if still
the holder's) once the pair's record is written, and at the end of the run.

Expiry is judged by the reader's clock against the time the holder's clock
wrote: hosts' clocks must agree to well within the lifetime (minutes).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from amnst.batch import storage

CLAIM_FOLDER = ("_amnst", "claims")
DEFAULT_TTL_SECONDS = 300.0
FORMAT = 1
_ATTEMPTS = 5  # create, or take over, before giving the pair to whoever holds it

log = logging.getLogger(__name__)


def claim_uri(output_uri: str, pair_id: str) -> str:
    """Where the claim on ``pair_id`` lives under an output."""
    return storage.join(output_uri, *CLAIM_FOLDER, f"{pair_id}.json")


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class Claim:
    """Who computes a pair, and until when, unless renewed."""

    pair_id: str
    run_id: str
    host: str
    pid: int
    claimed_at: datetime
    expires_at: datetime
    # Which process, beyond its number (Linux): the machine's boot id with the PID namespace
    # the number belongs to, and the process's start time, so that a run in the same place
    # can tell that the owner has ended. "" where unknown.
    process_space: str = ""
    process_started: str = ""

    def expired(self, now: datetime | None = None) -> bool:
        return (now or _now()) >= self.expires_at

    def owner_gone(self) -> bool:
        """Whether the owner is a process of this boot of this machine, in this PID namespace,
        that has ended (or whose number another process now has). False where that cannot be
        told: another machine (hostnames alone may repeat), or no /proc."""
        if not self.process_space or (self.host, self.process_space) != (socket.gethostname(),
                                                                           _this_process()[0]):
            return False
        return _process_started(self.pid) != self.process_started

    def describe(self) -> str:
        """A line naming the holder, for the skipped pair's record."""
        return (f"held by run {self.run_id} (host {self.host}, pid {self.pid}) until "
                f"{self.expires_at:%Y-%m-%dT%H:%M:%SZ}")

    def to_bytes(self) -> bytes:
        body = {"format": FORMAT, **asdict(self)}
        for name in ("claimed_at", "expires_at"):
            body[name] = getattr(self, name).isoformat()
        return (json.dumps(body, sort_keys=True) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Claim | None:
        """The claim ``data`` holds; None if it is not one (then it counts as expired)."""
        try:
            body = json.loads(data)
            return cls(str(body["pair_id"]), str(body["run_id"]), str(body["host"]), int(body["pid"]),
                       _utc(body["claimed_at"]), _utc(body["expires_at"]),
                       str(body.get("process_space", "")), str(body.get("process_started", "")))
        except (ValueError, KeyError, TypeError):
            return None


def _process_started(pid: int) -> str:
    """The start time of process ``pid`` (clock ticks since boot), "" if there is no such
    live process (a zombie, killed but not yet reaped by its parent, has ended)."""
    try:
        with open(f"/proc/{pid}/stat") as stream:
            fields = stream.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return ""
    return "" if fields[0] in ("Z", "X") else fields[19]


def _this_process() -> tuple[str, str]:
    """This process's space (boot id and PID namespace) and start time; ("", "") where /proc
    does not tell."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as stream:
            boot = stream.read().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return "", ""
    return f"{boot} {namespace}", _process_started(os.getpid())


def _utc(text: Any) -> datetime:
    moment = datetime.fromisoformat(str(text))
    if moment.tzinfo is None:
        raise ValueError("naive time")
    return moment.astimezone(timezone.utc)


class ClaimKeeper:
    """One run's claims under an output: acquire, renew on a thread, release.

    Use as a context manager: entering starts the renewing thread; leaving
    stops it and releases every claim still held. Safe to call from the
    driver while the thread renews (one lock orders their storage calls).
    """

    def __init__(self, output_uri: str, run_id: str, ttl_seconds: float = DEFAULT_TTL_SECONDS,
                 clock: Callable[[], datetime] = _now) -> None:
        if ttl_seconds <= 0:
            raise ValueError(f"ttl_seconds={ttl_seconds} must be > 0")
        self.output_uri = output_uri
        self.run_id = run_id
        self.ttl = timedelta(seconds=ttl_seconds)
        self.clock = clock
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.process = _this_process()
        self.held: dict[str, datetime] = {}  # pair_id -> when this run claimed it
        # Claims found no longer ours at a renewal (this run stalled past their expiry).
        self.lost: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- the driver's side --------------------------------------------------------------

    def acquire(self, pair_id: str) -> Claim | None:
        """Claim ``pair_id``: None if this run now holds it, else the live claim of the run
        that does. An expired claim is taken over. Raises StorageError if the store fails."""
        uri = claim_uri(self.output_uri, pair_id)
        holder = None
        with self._lock:
            for _ in range(_ATTEMPTS):
                claim = self._claim(pair_id)
                if storage.create_only(uri, claim.to_bytes()):
                    self.held[pair_id] = claim.claimed_at
                    return None
                try:
                    data, tag = storage.read_versioned(uri)
                except storage.NotFoundError:
                    continue  # released between the two calls: try again
                holder = Claim.from_bytes(data)
                if holder is not None and not holder.expired(self.clock()) and not holder.owner_gone():
                    return holder
                # Its owner is gone. Delete that version only: if another taker got there
                # first, it changed or vanished, and the create decides between us.
                log.info("taking over the claim %s (%s)", uri, holder.describe() if holder else "unreadable")
                storage.delete_if(uri, tag)
        # Claims kept changing hands; whoever holds it now keeps it.
        return holder or Claim(pair_id, "unknown", "unknown", 0, self.clock(), self.clock())

    def release(self, pair_id: str) -> None:
        """Delete this run's claim on ``pair_id`` (only if it is still ours). Never raises:
        a claim left behind expires."""
        with self._lock:
            if pair_id not in self.held:
                return
            del self.held[pair_id]
            uri = claim_uri(self.output_uri, pair_id)
            try:
                data, tag = storage.read_versioned(uri)
                if self._mine(Claim.from_bytes(data)):
                    storage.delete_if(uri, tag)
            except storage.StorageError as error:
                if not isinstance(error, storage.NotFoundError):
                    log.warning("could not release the claim %s: %s", uri, error)

    def release_all(self) -> None:
        for pair_id in self._held_now():
            self.release(pair_id)

    # --- renewing -----------------------------------------------------------------------

    def renew_all(self) -> None:
        """Push the expiry of every claim held a lifetime ahead, if it is still ours."""
        for pair_id in self._held_now():
            self._renew(pair_id)

    def _renew(self, pair_id: str) -> None:
        with self._lock:
            if pair_id not in self.held:
                return  # released meanwhile
            uri = claim_uri(self.output_uri, pair_id)
            try:
                data, tag = storage.read_versioned(uri)
                ours = self._mine(Claim.from_bytes(data))
                if ours and storage.replace_if(uri, self._claim(pair_id).to_bytes(), tag):
                    return
            except storage.NotFoundError:
                pass
            except storage.StorageError as error:
                log.warning("could not renew the claim %s (tried again in %.0f s): %s",
                            uri, self.ttl.total_seconds() / 3, error)
                return
            # Expired and taken over, or deleted: another run may be computing it too.
            log.warning("the claim %s is no longer this run's", uri)
            del self.held[pair_id]
            self.lost.add(pair_id)

    def __enter__(self) -> ClaimKeeper:
        self._stop.clear()
        self._thread = threading.Thread(target=self._renew_loop, name="amnst-claims", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.release_all()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl.total_seconds() / 3):
            try:
                self.renew_all()
            except Exception:  # noqa: BLE001 - the thread must outlive any one failure
                log.exception("renewing claims failed")

    # --- helpers ------------------------------------------------------------------------

    def _held_now(self) -> list[str]:
        with self._lock:
            return sorted(self.held)

    def _claim(self, pair_id: str) -> Claim:
        now = self.clock()
        return Claim(pair_id, self.run_id, self.host, self.pid, self.held.get(pair_id, now), now + self.ttl,
                     *self.process)

    def _mine(self, claim: Claim | None) -> bool:
        return claim is not None and (claim.run_id, claim.host, claim.pid) == (self.run_id, self.host, self.pid)
