"""Processes of the reliability scenarios: finding, killing and measuring this process's
descendants (Ray's workers among them), and ``amnst run`` as a driver process of its own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any


def descendants_named(prefix: bytes) -> list[int]:
    """PIDs of this process's descendants whose command line starts with ``prefix``.

    Only descendants: other sessions' Ray workers on this machine are not ours to kill.
    """
    children: dict[int, list[int]] = {}
    commands = {}
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            commands[int(entry.name)] = (entry / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found, queue = [], [os.getpid()]
    while queue:
        for child in children.get(queue.pop(), []):
            queue.append(child)
            if commands.get(child, b"").startswith(prefix):
                found.append(child)
    return found


class _Sampler:
    """A context manager that calls ``_sample()`` every ``interval`` seconds on a
    thread of its own while entered, until ``_sample()`` returns True."""

    interval = 0.1

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "_Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval) and not self._sample():
            pass

    def _sample(self) -> bool:
        raise NotImplementedError


class ProcessKiller(_Sampler):
    """While entered, SIGKILLs the first descendant named ``prefix``, not in ``spare``,
    seen once ``armed()`` holds.

    It looks every ``interval`` seconds (20 ms by default, so it catches a task
    of a fraction of a second); ``armed`` is asked as often.
    """

    def __init__(self, prefix: bytes, armed: Callable[[], bool], count: int = 1,
                 spare: Collection[int] = (), interval: float = 0.02) -> None:
        super().__init__()
        self.prefix, self.armed, self.count, self.spare, self.interval = prefix, armed, count, set(spare), interval
        self.killed: list[int] = []

    def _sample(self) -> bool:
        if self.armed():
            targets = [pid for pid in descendants_named(self.prefix) if pid not in self.spare]
            for pid in targets[:self.count - len(self.killed)]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:  # it finished meanwhile
                    continue
                self.killed.append(pid)
        return len(self.killed) >= self.count


def _status_kb(pid: int, field_name: str) -> int:
    """A ``/proc/PID/status`` memory field in kB (0 if the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class MemoryWatch(_Sampler):
    """While entered, the peak memory of this (driver) process above its start, and of Ray's workers.

    Sampled every 0.1 s by a thread; a worker's figure is its own high-water
    mark (VmHWM), so a peak between two samples is not missed.
    """

    def __init__(self) -> None:
        super().__init__()
        self.driver_start_kb = self.driver_peak_kb = _status_kb(os.getpid(), "VmRSS")
        self.worker_peak_kb = 0

    def _sample(self) -> bool:
        self.driver_peak_kb = max(self.driver_peak_kb, _status_kb(os.getpid(), "VmRSS"))
        peaks = (_status_kb(pid, "VmHWM") for pid in descendants_named(b"ray::"))
        self.worker_peak_kb = max(self.worker_peak_kb, *peaks, 0)
        return False

    def figures(self) -> dict[str, float]:
        return {"driver_growth_mb": round((self.driver_peak_kb - self.driver_start_kb) / 1024, 1),
                "worker_peak_mb": round(self.worker_peak_kb / 1024, 1)}


class Driver:
    """``amnst run ARGS`` as a separate driver process joining the cluster at ``address``.

    Its output goes to temporary files: a pipe nobody reads until the end
    could fill and stall it.
    """

    def __init__(self, args: list[str], address: str, env: dict[str, str] | None = None) -> None:
        self._output = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        self.process = subprocess.Popen([sys.executable, "-m", "amnst.cli", "run", *args],
                                        env={**os.environ, **(env or {}), "RAY_ADDRESS": address},
                                        stdout=self._output[0], stderr=self._output[1], text=True)

    def wait(self, timeout: float | None = None) -> tuple[int, str, str]:
        """Its exit status, standard output and standard error, once it has ended."""
        status = self.process.wait(timeout)
        texts = []
        for stream in self._output:
            stream.seek(0)
            texts.append(stream.read())
            stream.close()
        return status, texts[0], texts[1]
