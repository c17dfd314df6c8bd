"""Reading and writing inputs and outputs by URI: local paths, ``file://`` and ``s3://``.

A URI is a plain local path, ``file:///absolute/path`` or ``s3://bucket/key``.
Paths and keys are taken literally (no percent-decoding), as the AWS CLI does.

Writes are atomic: a reader never sees half an output. Locally the bytes go to
a temporary file beside the destination, which is then renamed over it; on S3
one PutObject is atomic by itself.

S3 uses boto3's standard configuration (environment, profile, config files,
``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3`` for any S3-compatible store)
with retries; ``AMNST_S3_MAX_ATTEMPTS`` bounds the attempts per request.
For coordination between processes there are create-only writes
(:func:`create_only`) and writes and deletes conditional on the version read
(:func:`read_versioned`, :func:`replace_if`, :func:`delete_if`).
Every failure is a :class:`StorageError` whose message starts with the URI and
never contains credentials.
"""

from __future__ import annotations

import functools
import os
import posixpath
import re
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from pyarrow.fs import FileSystem

SCHEMES = ("file", "s3")

_DEFAULT_MAX_ATTEMPTS = 8  # per S3 request, the first one included; AMNST_S3_MAX_ATTEMPTS overrides
_CONNECT_TIMEOUT = 10.0  # seconds, for boto3 and pyarrow alike
_READ_TIMEOUT = 60.0
_LIST_PAGE_SIZE = 1000  # the most S3 returns per ListObjectsV2 page

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")

_UriLike = str | os.PathLike


class StorageError(OSError):
    """A storage operation failed; the message starts with the URI."""


class NotFoundError(StorageError, FileNotFoundError):
    """No object or file at the URI."""


class AlreadyExistsError(StorageError, FileExistsError):
    """A create-only write found the object or file already there."""


@dataclass(frozen=True)
class _Location:
    """A parsed URI: ``scheme`` is "" for a plain local path, "file" or "s3"."""

    scheme: str
    path: str  # the local path, or the S3 key
    bucket: str = ""

    @property
    def uri(self) -> str:
        if self.scheme == "s3":
            return f"s3://{self.bucket}/{self.path}" if self.path else f"s3://{self.bucket}"
        return f"file://{self.path}" if self.scheme == "file" else self.path


def _parse(uri: _UriLike, *, key_required: bool = False) -> _Location:
    text = os.fspath(uri)
    if not isinstance(text, str):
        raise StorageError(f"{text!r}: a URI must be text")
    if not text:
        raise StorageError("'': empty URI")
    match = _SCHEME.match(text)
    if match is None:
        location = _Location("", text)
    else:
        location = _parse_scheme(text, match.group(1).lower(), text[match.end():])
    if key_required and (not location.path or location.path.endswith("/")):
        raise StorageError(f"{text}: names a folder, not an object")
    return location


def _parse_scheme(text: str, scheme: str, rest: str) -> _Location:
    if scheme not in SCHEMES:
        raise StorageError(f"{text}: unsupported URI scheme {scheme!r}")
    if scheme == "s3":
        bucket, _, key = rest.partition("/")
        if not bucket:
            raise StorageError(f"{text}: no bucket in the URI")
        return _Location("s3", key, bucket)
    # file:///x and file://localhost/x are the same local file; other hosts are not ours.
    path = rest[len("localhost"):] if rest.startswith("localhost/") else rest
    if not path.startswith("/"):
        raise StorageError(f"{text}: a file URI needs an absolute path (file:///...)")
    return _Location("file", path)


def check_uri(uri: _UriLike, *, key_required: bool = False) -> str:
    """Validate ``uri`` and return it normalised.

    Plain local paths are returned as given; the scheme is lower-cased and
    ``file://localhost/x`` becomes ``file:///x``. With ``key_required`` the URI
    must name an object (an S3 key, a file name), not a bucket or folder.
    Raises :class:`StorageError` for any other scheme.
    """
    return _parse(uri, key_required=key_required).uri


def resolve(uri: _UriLike, base: _UriLike) -> str:
    """Resolve ``uri`` against the folder holding ``base`` (a manifest's URI).

    Absolute URIs and absolute local paths are returned unchanged (after
    :func:`check_uri`); a relative one is taken relative to ``base``'s folder,
    with ``.`` and ``..`` resolved, in ``base``'s scheme.
    """
    target = os.fspath(uri)
    location = _parse(target)
    if location.scheme or os.path.isabs(target):
        return location.uri
    anchor = _parse(base)
    if anchor.scheme != "s3":
        path = os.path.normpath(os.path.join(os.path.dirname(anchor.path), target))
        return _Location(anchor.scheme, path).uri
    key = posixpath.normpath(posixpath.join(posixpath.dirname(anchor.path), target))
    if key == ".." or key.startswith("../"):
        raise StorageError(f"{target}: leads outside the bucket of {anchor.uri}")
    return _Location("s3", "" if key == "." else key, anchor.bucket).uri


def join(prefix: _UriLike, *parts: str) -> str:
    """The URI of ``parts`` (joined with "/") under ``prefix``, in ``prefix``'s scheme.

    Parts are appended literally; slashes at their ends are dropped so that
    ``join("s3://b/out/", "/audio", "x.wav")`` is ``s3://b/out/audio/x.wav``.
    "." and ".." segments are refused: a name taken from a manifest (a pair id)
    must not climb out of the output folder.
    """
    location = _parse(prefix)
    tail = "/".join(part.strip("/") for part in parts if part.strip("/"))
    if {".", ".."} & set(tail.split("/")):
        raise StorageError(f"{location.uri}: '.' or '..' in the name {tail!r}")
    if not tail:
        return location.uri
    if location.scheme != "s3":
        return _Location(location.scheme, os.path.join(location.path, tail)).uri
    head = location.path.rstrip("/")
    return _Location("s3", f"{head}/{tail}" if head else tail, location.bucket).uri


# Hears of every read and write: (operation, bytes moved, failed). amnst.ops.metrics
# sets it to the metrics of the process it runs in.
observer: Callable[[str, int, bool], None] | None = None


def _observed(operation: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Report a read or write (bytes moved, or a failure) to :data:`observer`.

    A read returns its bytes (or ``(bytes, tag)``); a write takes them as its
    first argument after the URI. A conditional write that answers False (the
    object was there, or changed) moved nothing and did not fail.
    """
    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def observed(uri: _UriLike, *args: Any, **kwargs: Any) -> Any:
            try:
                result = function(uri, *args, **kwargs)
            except StorageError:
                if observer is not None:
                    observer(operation, 0, True)
                raise
            if observer is not None:
                if operation == "read":
                    moved = len(result[0] if isinstance(result, tuple) else result)
                else:
                    moved = 0 if result is False else len(args[0])
                observer(operation, moved, False)
            return result
        return observed
    return decorate


@_observed("read")
def read_bytes(uri: _UriLike) -> bytes:
    """The whole content of the object or file at ``uri``."""
    location = _parse(uri, key_required=True)
    if location.scheme == "s3":
        with _s3_errors(location.uri):
            response = _s3(location.uri).client.get_object(Bucket=location.bucket, Key=location.path)
            return response["Body"].read()
    with _local_errors(location.uri):
        return Path(location.path).read_bytes()


@_observed("write")
def write_bytes(uri: _UriLike, data: bytes, *, if_absent: bool = False,
                content_type: str | None = None) -> None:
    """Write ``data`` to ``uri`` atomically, creating parent folders.

    With ``if_absent`` the write only creates: if something is already there,
    it is left as it was and :class:`AlreadyExistsError` is raised.
    ``content_type`` is the MIME type S3 serves the object with (a browser
    shows a page only if it is served as HTML); files have none.
    """
    _write_bytes(uri, data, if_absent=if_absent, content_type=content_type)


def _write_bytes(uri: _UriLike, data: bytes, *, if_absent: bool = False,
                 content_type: str | None = None) -> None:
    location = _parse(uri, key_required=True)
    if location.scheme == "s3":
        extra = {"IfNoneMatch": "*"} if if_absent else {}
        if content_type:
            extra["ContentType"] = content_type
        with _s3_errors(location.uri):
            _s3(location.uri).client.put_object(Bucket=location.bucket, Key=location.path,
                                                Body=bytes(data), **extra)
        return
    with _local_errors(location.uri):
        _write_local(Path(location.path), data, if_absent, location.uri)


@_observed("write")
def create_only(uri: _UriLike, data: bytes) -> bool:
    """Create the object or file at ``uri`` holding ``data``, only if nothing is there.

    True if this call created it; False if something was already there (it is
    left as it was). Of any number of concurrent callers, on any hosts, exactly
    one gets True: on S3 a conditional put (``If-None-Match: *``, answered 412
    on a conflict), locally a hard link of a finished temporary file, which
    fails if the name exists (so a reader never sees it half written).
    """
    try:
        _write_bytes(uri, data, if_absent=True)
    except AlreadyExistsError:
        return False  # an answer, not a failure
    return True


@_observed("read")
def read_versioned(uri: _UriLike) -> tuple[bytes, str]:
    """The content of the object or file at ``uri`` and a tag of that version.

    The tag (the S3 ETag; locally the file's inode, modification time and
    size, which every write of this module changes, as it renames a new file
    into place) is for :func:`replace_if` and :func:`delete_if`.
    """
    location = _parse(uri, key_required=True)
    if location.scheme == "s3":
        with _s3_errors(location.uri):
            response = _s3(location.uri).client.get_object(Bucket=location.bucket, Key=location.path)
            return response["Body"].read(), response["ETag"]
    with _local_errors(location.uri), open(location.path, "rb") as stream:
        # The open file's own status: the version read, whatever replaces the name meanwhile.
        tag = _local_tag(os.fstat(stream.fileno()))
        return stream.read(), tag


@_observed("write")
def replace_if(uri: _UriLike, data: bytes, tag: str) -> bool:
    """Replace the object or file at ``uri`` with ``data``, only if it is still the
    version ``tag`` (from :func:`read_versioned`).

    True if replaced; False if it was changed or removed meanwhile (then it is
    left as it is). On S3 a conditional put (``If-Match``), so the check and
    the write are one step; locally the check and the atomic rename happen
    under an exclusive lock of the folder.
    """
    def put(client: Any, location: _Location) -> None:
        client.put_object(Bucket=location.bucket, Key=location.path, Body=bytes(data), IfMatch=tag)

    def write(path: Path, location: _Location) -> bool:
        _write_local(path, data, False, location.uri)
        return True

    return _if_still(uri, tag, put, write)


def delete_if(uri: _UriLike, tag: str) -> bool:
    """Remove the object or file at ``uri``, only if it is still the version ``tag``
    (from :func:`read_versioned`).

    True if removed; False if it was changed or removed meanwhile. On S3 a
    conditional delete (``If-Match``); locally check and unlink happen under
    the folder's lock, as in :func:`replace_if`.
    """
    def delete(client: Any, location: _Location) -> None:
        client.delete_object(Bucket=location.bucket, Key=location.path, IfMatch=tag)

    def unlink(path: Path, location: _Location) -> bool:
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True

    return _if_still(uri, tag, delete, unlink)


def _if_still(uri: _UriLike, tag: str, on_s3: Callable[[Any, _Location], None],
              on_local: Callable[[Path, _Location], bool]) -> bool:
    """Act on ``uri`` only if it is still the version ``tag``: on S3, ``on_s3(client,
    location)`` makes a request conditional on ``IfMatch=tag``; locally, ``on_local(path,
    location)`` runs under the folder's lock once the file's tag is checked. True if it acted."""
    location = _parse(uri, key_required=True)
    if location.scheme == "s3":
        try:
            with _s3_errors(location.uri):
                on_s3(_s3(location.uri).client, location)
        except (AlreadyExistsError, NotFoundError):  # 412: another version; 404: gone
            return False
        return True
    path = Path(location.path)
    with _local_errors(location.uri), _folder_locked(path.parent):
        return _local_tag_of(path) == tag and on_local(path, location)


@contextmanager
def _folder_locked(folder: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``folder`` for the block: the local check-then-act
    of :func:`replace_if` and :func:`delete_if` is then one step for every process of
    this machine (two takers of one expired claim both passed the check otherwise)."""
    import fcntl

    descriptor = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


def exists(uri: _UriLike) -> bool:
    """Whether an object or file is at ``uri`` (a folder does not count)."""
    location = _parse(uri, key_required=True)
    if location.scheme != "s3":
        return os.path.isfile(location.path)
    try:
        _head(location)
    except NotFoundError:
        return False
    return True


def size(uri: _UriLike) -> int:
    """The size in bytes of the object or file at ``uri``."""
    location = _parse(uri, key_required=True)
    if location.scheme == "s3":
        return int(_head(location)["ContentLength"])
    with _local_errors(location.uri):
        if os.path.isdir(location.path):
            raise StorageError(f"{location.uri}: is a directory")
        return os.stat(location.path).st_size


def modified(uri: _UriLike) -> datetime:
    """When the object or file at ``uri`` was last written (UTC, by the store's clock)."""
    location = _parse(uri, key_required=True)
    if location.scheme == "s3":
        return _head(location)["LastModified"].astimezone(timezone.utc)
    with _local_errors(location.uri):
        if os.path.isdir(location.path):
            raise StorageError(f"{location.uri}: is a directory")
        return datetime.fromtimestamp(os.stat(location.path).st_mtime, timezone.utc)


def delete(uri: _UriLike) -> None:
    """Remove the object or file at ``uri``; nothing there is fine."""
    location = _parse(uri, key_required=True)
    if location.scheme == "s3":
        with _s3_errors(location.uri):
            _s3(location.uri).client.delete_object(Bucket=location.bucket, Key=location.path)
        return
    with _local_errors(location.uri):
        Path(location.path).unlink(missing_ok=True)


def list_uris(prefix: _UriLike) -> Iterator[str]:
    """Every object or file under the folder ``prefix``, recursively, as sorted full URIs.

    ``prefix`` is a folder on every scheme: ``s3://b/run`` lists ``run/...``,
    not ``run2/...``. A missing folder lists nothing.
    """
    location = _parse(prefix)
    if location.scheme == "s3":
        return _list_s3(location)
    with _local_errors(location.uri):
        names = sorted(_walk(location.path))
    return (_Location(location.scheme, os.path.join(location.path, name)).uri for name in names)


def filesystem(uri: _UriLike) -> tuple[FileSystem, str]:
    """The ``pyarrow.fs.FileSystem`` holding ``uri`` and the path within it.

    For S3 the filesystem is built from the settings boto3 resolves
    (credentials, region, ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``), so
    pyarrow and boto3 see the same store. Credentials are frozen at this call:
    ask again rather than keeping the filesystem past their expiry.
    """
    from pyarrow import fs

    location = _parse(uri)
    if location.scheme != "s3":
        return fs.LocalFileSystem(), os.path.abspath(location.path)
    with _s3_errors(location.uri):
        session = _s3(location.uri).session
        credentials = session.get_credentials()
        if credentials is None:
            keys: dict[str, Any] = {"anonymous": True}
        else:
            frozen = credentials.get_frozen_credentials()
            keys = {"access_key": frozen.access_key, "secret_key": frozen.secret_key,
                    "session_token": frozen.token}
    s3 = fs.S3FileSystem(
        region=session.region_name or "us-east-1",
        retry_strategy=fs.AwsStandardS3RetryStrategy(max_attempts=_max_attempts(location.uri)),
        connect_timeout=_CONNECT_TIMEOUT, request_timeout=_READ_TIMEOUT,
        **keys, **_pyarrow_endpoint(location.uri))
    return s3, f"{location.bucket}/{location.path}".rstrip("/")


# --- local files -----------------------------------------------------------------------------


def _write_local(path: Path, data: bytes, if_absent: bool, uri: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique name in the same folder, so the final rename cannot cross filesystems.
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.part")
    handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        if if_absent:
            try:
                os.link(temporary, path)  # fails if the name exists: create-only, still atomic
            except FileExistsError:
                raise AlreadyExistsError(f"{uri}: already exists") from None
        else:
            os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    _fsync_folder(path.parent)


def _local_tag(status: os.stat_result) -> str:
    return f"{status.st_dev}:{status.st_ino}:{status.st_mtime_ns}:{status.st_size}"


def _local_tag_of(path: Path) -> str | None:
    """The tag of the file at ``path`` now; None if there is none."""
    try:
        return _local_tag(os.stat(path))
    except FileNotFoundError:
        return None


def _fsync_folder(folder: Path) -> None:
    """Make the new name durable, not just the bytes."""
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def _walk(root: str) -> Iterator[str]:
    """The "/"-separated paths of all files under ``root``, relative to it."""
    for folder, _, files in os.walk(root, onerror=_reraise):
        relative = os.path.relpath(folder, root)
        for name in files:
            yield name if relative == "." else f"{relative}/{name}"


def _reraise(error: OSError) -> None:
    # os.walk skips unreadable folders silently by default, and a listing must not be
    # partial; a folder removed while we walk (or never there) simply holds nothing.
    if not isinstance(error, (FileNotFoundError, NotADirectoryError)):
        raise error


@contextmanager
def _local_errors(uri: str) -> Iterator[None]:
    try:
        yield
    except StorageError:
        raise
    except FileNotFoundError:
        raise NotFoundError(f"{uri}: no such file") from None
    except OSError as error:
        reason = (error.strerror or type(error).__name__).lower()
        raise StorageError(f"{uri}: {reason}") from error


# --- S3 --------------------------------------------------------------------------------------


class _S3(NamedTuple):
    session: Any  # boto3.session.Session
    client: Any  # its S3 client


def _max_attempts(uri: str) -> int:
    raw = os.environ.get("AMNST_S3_MAX_ATTEMPTS", "")
    if not raw:
        return _DEFAULT_MAX_ATTEMPTS
    if not raw.isdigit() or int(raw) < 1:
        raise StorageError(f"{uri}: AMNST_S3_MAX_ATTEMPTS must be a positive integer, not {raw!r}")
    return int(raw)


def _s3(uri: str) -> _S3:
    """This process's boto3 session and client for the current AWS environment."""
    settings = tuple(sorted((name, value) for name, value in os.environ.items()
                            if name.startswith("AWS_")))
    return _new_s3(os.getpid(), _max_attempts(uri), settings)


@functools.lru_cache(maxsize=1)
def _new_s3(pid: int, max_attempts: int, settings: tuple[tuple[str, str], ...]) -> _S3:
    # The arguments are only the cache key: a forked child or a changed environment
    # (another endpoint, other credentials) gets a client of its own.
    import boto3
    from botocore.config import Config

    # total_max_attempts counts the first try, as pyarrow's max_attempts does. "legacy" backs
    # off as pyarrow's AWS SDK does, rand(0, 1) * 2**n seconds, so 8 attempts ride out a store
    # that vanishes for tens of seconds; "standard" starts at 50 ms, and its 8 attempts gave up
    # within about 3 s of an outage, failing pairs (tests/test_reliability.py).
    config = Config(retries={"total_max_attempts": max_attempts, "mode": "legacy"},
                    connect_timeout=_CONNECT_TIMEOUT, read_timeout=_READ_TIMEOUT)
    session = boto3.session.Session()
    return _S3(session, session.client("s3", config=config))


def _head(location: _Location) -> dict[str, Any]:
    with _s3_errors(location.uri):
        return _s3(location.uri).client.head_object(Bucket=location.bucket, Key=location.path)


def _list_s3(location: _Location) -> Iterator[str]:
    folder = location.path.rstrip("/")
    with _s3_errors(location.uri):
        paginator = _s3(location.uri).client.get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=location.bucket, Prefix=f"{folder}/" if folder else "",
                                   PaginationConfig={"PageSize": _LIST_PAGE_SIZE})
        # S3 returns keys in UTF-8 byte order, which is the order of the strings.
        for page in pages:
            for item in page.get("Contents", ()):
                # Keys ending in "/" are folder markers (pyarrow makes them), not objects.
                if not item["Key"].endswith("/"):
                    yield _Location("s3", item["Key"], location.bucket).uri


def _pyarrow_endpoint(uri: str) -> dict[str, str]:
    """pyarrow's spelling of the endpoint boto3 takes from the environment."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if not endpoint:
        return {}
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise StorageError(f"{uri}: the S3 endpoint must be an http(s) URL")
    host = parts.netloc.rpartition("@")[2]  # never pass on user:password from the URL
    return {"scheme": parts.scheme, "endpoint_override": host}


@contextmanager
def _s3_errors(uri: str) -> Iterator[None]:
    """Turn botocore's exceptions into StorageErrors built from codes, never from credentials."""
    from botocore import exceptions

    transport = (exceptions.ConnectionError, exceptions.HTTPClientError,
                 exceptions.IncompleteReadError)
    try:
        yield
    except exceptions.ClientError as error:
        raise _client_error(uri, error) from error
    except transport as error:
        where = _endpoint_of(error)
        raise StorageError(f"{uri}: storage unreachable ({type(error).__name__}{where})") from error
    except exceptions.NoCredentialsError:
        raise StorageError(f"{uri}: no AWS credentials found") from None
    except exceptions.BotoCoreError as error:
        raise StorageError(f"{uri}: {type(error).__name__}: {error}") from error


def _client_error(uri: str, error: Any) -> StorageError:
    code = str(error.response.get("Error", {}).get("Code", ""))
    metadata = error.response.get("ResponseMetadata", {})
    status = metadata.get("HTTPStatusCode")
    if code in ("NoSuchKey", "NotFound", "404"):
        return NotFoundError(f"{uri}: no such object")
    if code == "NoSuchBucket":
        return NotFoundError(f"{uri}: no such bucket")
    if status == 412 or code == "PreconditionFailed":
        return AlreadyExistsError(f"{uri}: already exists")
    if metadata.get("MaxAttemptsReached"):
        attempts = metadata.get("RetryAttempts", 0) + 1
        return StorageError(f"{uri}: storage unreachable ({code or status} after {attempts} attempts)")
    if status == 403 or code == "AccessDenied":
        return StorageError(f"{uri}: access denied ({code or status})")
    return StorageError(f"{uri}: S3 error {code or '?'} (HTTP {status})")


def _endpoint_of(error: Any) -> str:
    """Where the failed request went (" at scheme://host:port"), if botocore recorded it."""
    url = getattr(error, "kwargs", {}).get("endpoint_url")
    if not url:
        return ""
    parts = urlsplit(url)
    return f" at {parts.scheme}://{parts.netloc.rpartition('@')[2]}"
