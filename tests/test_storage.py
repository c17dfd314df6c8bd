"""Storage by URI: local paths, file:// and s3:// against a real (moto) S3 endpoint."""

from __future__ import annotations

import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from amnst.batch import storage
from amnst.batch.storage import AlreadyExistsError, NotFoundError, StorageError
from tests.s3_server import FAKE_SECRET_KEY, free_port


@pytest.fixture(params=["local", "file", "s3"])
def root(request, tmp_path) -> str:
    """An empty folder to work in, on each kind of storage."""
    if request.param == "s3":
        return request.getfixturevalue("s3_bucket")
    return str(tmp_path) if request.param == "local" else f"file://{tmp_path}"


@pytest.fixture
def closed_endpoint(s3_env, monkeypatch) -> str:
    """AWS_ENDPOINT_URL at a loopback port nobody listens on, with two attempts per request."""
    endpoint = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AMNST_S3_MAX_ATTEMPTS", "2")
    return endpoint


def test_round_trip(root):
    uri = storage.join(root, "a", "b.bin")
    storage.write_bytes(uri, b"\x00amnst\xff")
    assert storage.read_bytes(uri) == b"\x00amnst\xff"
    assert storage.exists(uri) and storage.size(uri) == 7


def test_overwrite_is_whole_and_leaves_no_temporary_files(root):
    uri = storage.join(root, "out.wav")
    storage.write_bytes(uri, b"first, longer content")
    storage.write_bytes(uri, b"second")
    assert storage.read_bytes(uri) == b"second"
    assert list(storage.list_uris(root)) == [uri]


def test_paths_may_be_path_objects(tmp_path):
    storage.write_bytes(tmp_path / "deep" / "x.bin", b"x")
    assert storage.read_bytes(tmp_path / "deep" / "x.bin") == b"x"


@pytest.mark.parametrize("scheme", ["", "file://"])
def test_failed_local_write_raises_and_leaves_nothing(tmp_path, scheme):
    (tmp_path / "blocker").write_bytes(b"a file, not a folder")
    (tmp_path / "folder.wav").mkdir()
    for target in ("blocker/out.wav", "folder.wav"):  # fails before / after the bytes are written
        uri = f"{scheme}{tmp_path}/{target}"
        with pytest.raises(StorageError) as caught:
            storage.write_bytes(uri, b"data")
        assert str(caught.value).startswith(f"{uri}: ")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["blocker", "folder.wav"]
    assert (tmp_path / "blocker").read_bytes() == b"a file, not a folder"


def test_create_only_write_refuses_to_replace(root):
    uri = storage.join(root, "marker")
    storage.write_bytes(uri, b"one", if_absent=True)
    with pytest.raises(AlreadyExistsError, match="already exists") as caught:
        storage.write_bytes(uri, b"two", if_absent=True)
    assert str(caught.value).startswith(f"{uri}: ")
    assert storage.read_bytes(uri) == b"one"
    assert list(storage.list_uris(root)) == [uri]


def test_create_only_succeeds_once(root):
    uri = storage.join(root, "_amnst", "claims", "p0.json")
    assert storage.create_only(uri, b"first") is True
    assert storage.create_only(uri, b"second") is False
    assert storage.read_bytes(uri) == b"first"
    storage.delete(uri)
    assert storage.create_only(uri, b"third") is True
    assert list(storage.list_uris(root)) == [uri]  # no temporary files left


def test_create_only_among_racing_threads_has_one_winner(root):
    uri = storage.join(root, "raced")
    start = threading.Barrier(8)

    def attempt(index: int) -> bool:
        start.wait()
        return storage.create_only(uri, f"writer {index}".encode())

    with ThreadPoolExecutor(8) as pool:
        won = list(pool.map(attempt, range(8)))
    assert won.count(True) == 1
    assert storage.read_bytes(uri) == f"writer {won.index(True)}".encode()


def test_replace_and_delete_only_the_version_read(root):
    uri = storage.join(root, "claim.json")
    storage.write_bytes(uri, b"mine")
    data, tag = storage.read_versioned(uri)
    assert data == b"mine"
    assert storage.replace_if(uri, b"mine, renewed", tag) is True
    assert storage.read_bytes(uri) == b"mine, renewed"
    # The tag read before the renewal no longer matches: neither write nor delete happens.
    assert storage.replace_if(uri, b"stale", tag) is False
    assert storage.delete_if(uri, tag) is False
    assert storage.read_bytes(uri) == b"mine, renewed"
    data, tag = storage.read_versioned(uri)
    assert storage.delete_if(uri, tag) is True
    assert not storage.exists(uri)
    # Gone: nothing to replace or delete, and the calls say so rather than raising.
    assert storage.replace_if(uri, b"late", tag) is False and not storage.exists(uri)
    assert storage.delete_if(uri, tag) is False
    with pytest.raises(NotFoundError) as caught:
        storage.read_versioned(uri)
    assert str(caught.value).startswith(f"{uri}: ")
    assert list(storage.list_uris(root)) == []


def test_modified_is_when_it_was_written(root):
    uri = storage.join(root, "m.bin")
    before = datetime.now(timezone.utc) - timedelta(seconds=5)  # S3 keeps whole seconds
    storage.write_bytes(uri, b"x")
    assert before <= storage.modified(uri) <= datetime.now(timezone.utc) + timedelta(seconds=5)
    with pytest.raises(NotFoundError):
        storage.modified(storage.join(root, "absent"))


def test_exists_size_delete(root):
    uri = storage.join(root, "x", "y.bin")
    assert not storage.exists(uri)
    storage.delete(uri)  # nothing there is fine
    storage.write_bytes(uri, bytes(1000))
    assert storage.exists(uri) and storage.size(uri) == 1000
    storage.delete(uri)
    assert not storage.exists(uri)
    with pytest.raises(NotFoundError):
        storage.size(uri)


def test_missing_object_names_the_uri(root):
    uri = storage.join(root, "nothing", "here.wav")
    with pytest.raises(NotFoundError) as caught:
        storage.read_bytes(uri)
    assert str(caught.value) in (f"{uri}: no such object", f"{uri}: no such file")
    assert isinstance(caught.value, FileNotFoundError)  # callers catching the builtin still work


def test_missing_bucket_is_not_found(s3_env):
    with pytest.raises(NotFoundError, match=r"^s3://no-such-bucket/k: no such bucket"):
        storage.read_bytes("s3://no-such-bucket/k")


def test_list_is_recursive_sorted_and_stays_in_the_folder(root, monkeypatch):
    monkeypatch.setattr(storage, "_LIST_PAGE_SIZE", 2)  # several pages on S3
    names = ["b/2", "a/1", "a.txt", "a/c/3", "z"]
    for name in names:
        storage.write_bytes(storage.join(root, "data", name), name.encode())
    storage.write_bytes(storage.join(root, "data2", "outside"), b"")
    listed = list(storage.list_uris(storage.join(root, "data")))
    assert listed == sorted(storage.join(root, "data", name) for name in names)
    assert list(storage.list_uris(storage.join(root, "absent"))) == []


@pytest.mark.parametrize("base, relative, expected", [
    ("data/manifest.csv", "audio/a.wav", "data/audio/a.wav"),
    ("/srv/data/manifest.csv", "../music/a.wav", "/srv/music/a.wav"),
    ("manifest.csv", "a.wav", "a.wav"),
    ("file:///srv/data/m.jsonl", "a.wav", "file:///srv/data/a.wav"),
    ("file://localhost/srv/data/m.jsonl", "./x/../a.wav", "file:///srv/data/a.wav"),
    ("s3://bucket/runs/m.parquet", "audio/a.wav", "s3://bucket/runs/audio/a.wav"),
    ("s3://bucket/runs/m.parquet", "../a.wav", "s3://bucket/a.wav"),
    ("s3://bucket/m.csv", "a.wav", "s3://bucket/a.wav"),
])
def test_resolve_relative_against_the_manifest_folder(base, relative, expected):
    assert storage.resolve(relative, base) == expected


@pytest.mark.parametrize("absolute", ["/abs/a.wav", "file:///abs/a.wav", "s3://other/a.wav"])
@pytest.mark.parametrize("base", ["data/m.csv", "file:///srv/m.csv", "s3://bucket/runs/m.csv"])
def test_resolve_keeps_absolute_uris(absolute, base):
    assert storage.resolve(absolute, base) == absolute


def test_resolve_refuses_to_leave_the_bucket():
    with pytest.raises(StorageError, match=r"^\.\./\.\./a\.wav: leads outside the bucket"):
        storage.resolve("../../a.wav", "s3://bucket/runs/m.csv")


@pytest.mark.parametrize("prefix, parts, expected", [
    ("s3://b", ("audio", "p1.wav"), "s3://b/audio/p1.wav"),
    ("s3://b/out/", ("/audio/", "p1.wav"), "s3://b/out/audio/p1.wav"),
    ("out", ("_amnst", "runs/date=2026-01-01"), "out/_amnst/runs/date=2026-01-01"),
    ("/out/", ("a.wav",), "/out/a.wav"),
    ("file:///out", ("a.wav",), "file:///out/a.wav"),
    ("s3://b/out", (), "s3://b/out"),
])
def test_join(prefix, parts, expected):
    assert storage.join(prefix, *parts) == expected


@pytest.mark.parametrize("prefix", ["out", "s3://b/out"])
@pytest.mark.parametrize("name", ["../x.wav", "a/./x.wav", ".."])
def test_join_refuses_dot_segments(prefix, name):
    with pytest.raises(StorageError, match=f"^{prefix}: "):
        storage.join(prefix, "audio", name)


@pytest.mark.parametrize("uri", ["http://host/a.wav", "https://host/a.wav", "gs://b/a.wav",
                                 "ftp://host/a.wav", "HTTP://host/a.wav"])
def test_unsupported_schemes_are_refused(uri):
    scheme = uri.split(":")[0].lower()
    with pytest.raises(StorageError, match=f"unsupported URI scheme '{scheme}'") as caught:
        storage.read_bytes(uri)
    assert str(caught.value).startswith(f"{uri}: ")
    with pytest.raises(StorageError):
        storage.check_uri(uri)


@pytest.mark.parametrize("uri", ["", "s3://", "s3:///key", "s3://bucket", "s3://bucket/dir/",
                                 "file://host/x", "file://relative"])
def test_incomplete_uris_are_refused_where_an_object_is_needed(uri):
    with pytest.raises(StorageError):
        storage.check_uri(uri, key_required=True)


def test_check_uri_normalises():
    assert storage.check_uri("S3://bucket/k") == "s3://bucket/k"
    assert storage.check_uri("file://localhost/x/y") == "file:///x/y"
    assert storage.check_uri("relative/x") == "relative/x"
    assert storage.check_uri("s3://bucket") == "s3://bucket"


def test_unreachable_endpoint_fails_quickly(closed_endpoint):
    started = time.monotonic()
    with pytest.raises(StorageError, match="storage unreachable") as caught:
        storage.read_bytes("s3://amnst-test/k")
    assert time.monotonic() - started < 15
    assert str(caught.value).startswith("s3://amnst-test/k: ")
    assert closed_endpoint in str(caught.value)
    with pytest.raises(StorageError, match="storage unreachable"):
        storage.write_bytes("s3://amnst-test/k", b"x")


@pytest.mark.parametrize("fail", ["missing", "unreachable", "conflict", "bad-attempts"])
def test_credentials_never_appear_in_errors(s3_bucket, monkeypatch, fail):
    uri = f"{s3_bucket}/k"
    if fail == "conflict":
        storage.write_bytes(uri, b"x")
    elif fail == "unreachable":
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
        monkeypatch.setenv("AMNST_S3_MAX_ATTEMPTS", "1")
    elif fail == "bad-attempts":
        monkeypatch.setenv("AMNST_S3_MAX_ATTEMPTS", "many")
    with pytest.raises(StorageError) as caught:
        storage.write_bytes(uri, b"y", if_absent=True) if fail == "conflict" else storage.read_bytes(uri)
    shown = "".join(traceback.format_exception(caught.value))  # the chained causes included
    assert str(caught.value).startswith(f"{uri}: ")
    assert FAKE_SECRET_KEY not in shown and FAKE_SECRET_KEY not in repr(caught.value)


def test_pyarrow_and_boto3_see_the_same_objects(root):
    table = pa.table({"pair_id": ["a", "b"], "loss": [1.5, 0.25]})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    storage.write_bytes(storage.join(root, "by_storage", "part-0.parquet"), sink.getvalue().to_pybytes())

    fs, path = storage.filesystem(storage.join(root, "by_storage"))
    assert ds.dataset(path, filesystem=fs, format="parquet").to_table().equals(table)

    fs, path = storage.filesystem(storage.join(root, "by_pyarrow"))
    ds.write_dataset(table, path, filesystem=fs, format="parquet", basename_template="part-{i}.parquet")
    written = list(storage.list_uris(storage.join(root, "by_pyarrow")))
    assert written == [storage.join(root, "by_pyarrow", "part-0.parquet")]
    assert pq.read_table(pa.BufferReader(storage.read_bytes(written[0]))).equals(table)


def test_endpoint_url_s3_wins_over_endpoint_url(s3_bucket, moto_server, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # would fail
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_server)
    uri = f"{s3_bucket}/via-s3-endpoint"
    storage.write_bytes(uri, b"ok")
    assert storage.read_bytes(uri) == b"ok"
    fs, path = storage.filesystem(uri)
    with fs.open_input_stream(path) as stream:
        assert stream.read() == b"ok"
