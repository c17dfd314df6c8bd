"""Reading and writing inputs and outputs by path.

Writes are atomic: the bytes go to a temporary file beside the destination,
which is then renamed over it, so a reader never sees half an output.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def read_bytes(path: str | Path) -> bytes:
    """The whole content of a local file."""
    return Path(path).read_bytes()


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
