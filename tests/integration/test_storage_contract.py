"""The ObjectStore contract, run unchanged against both backends on real services.

The local backend runs on a temp directory, the S3 backend on the SeaweedFS server
of ``scripts/services`` under a per-test prefix. A behaviour the write pipeline or
the readers depend on belongs here, so that both backends are held to it.
"""

from __future__ import annotations

import base64
import hashlib
import mmap
import os
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterator

import crc32c
import pytest

from woodpecker.config import Config
from woodpecker.errors import ObjectNotFoundError, StorageUnavailableError
from woodpecker.storage import ObjectStore, PartInfo, open_store
from woodpecker.storage.s3 import PayloadChecksum

MiB = 1024 * 1024


@pytest.fixture
def store(make_config: Callable[..., Config], backend: str) -> Iterator[ObjectStore]:
    """A store of the parametrized backend; its objects are deleted afterwards."""
    with open_store(make_config(backend)) as s:
        yield s
        s.delete_many(info.key for info in s.list())


def keys(store: ObjectStore, prefix: str = "") -> list[str]:
    return [info.key for info in store.list(prefix)]


# ---------------------------------------------------------------- put / get


def test_put_bytes_then_get(store: ObjectStore) -> None:
    store.put("1/2/block", b"hello world")
    assert store.get("1/2/block") == b"hello world"


def test_put_list_of_memoryviews_writes_them_in_order(store: ObjectStore) -> None:
    shared = bytearray(os.urandom(64 * 1024))
    view = memoryview(shared)
    buffers = [view[:100], b"", view[100:40_000], bytes(view[40_000:]), memoryview(b"tail")]
    store.put("k", buffers)
    assert store.get("k") == bytes(shared) + b"tail"


def test_put_empty_object(store: ObjectStore) -> None:
    store.put("empty", b"")
    assert store.get("empty") == b""
    assert store.stat("empty").size == 0
    assert store.get("empty", 0, 10) == b""


def test_put_overwrites(store: ObjectStore) -> None:
    store.put("k", b"first version, long")
    store.put("k", [b"second"])
    assert store.get("k") == b"second"
    assert store.stat("k").size == 6
    assert keys(store) == ["k"]


@pytest.mark.parametrize(
    ("offset", "length", "expected"),
    [
        (0, 4, b"0123"),  # start
        (3, 4, b"3456"),  # middle
        (6, 4, b"6789"),  # end, exactly
        (8, 100, b"89"),  # past the end: what exists
        (4, None, b"456789"),  # to the end
        (10, None, b""),  # at the end
        (10, 5, b""),  # at the end, with a length
        (50, 5, b""),  # far past the end
        (5, 0, b""),  # empty range
    ],
)
def test_get_ranges(store: ObjectStore, offset: int, length: int | None, expected: bytes) -> None:
    store.put("digits", b"0123456789")
    assert store.get("digits", offset, length) == expected


def test_get_negative_range_is_rejected(store: ObjectStore) -> None:
    with pytest.raises(ValueError, match="invalid range"):
        store.get("digits", -1)
    with pytest.raises(ValueError, match="invalid range"):
        store.get("digits", 0, -5)


def test_missing_objects_raise_object_not_found(store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFoundError, match="nope"):
        store.get("nope")
    with pytest.raises(ObjectNotFoundError):
        store.get("a/nope", 10, 10)
    with pytest.raises(ObjectNotFoundError):
        store.get("nope", 0, 0)
    with pytest.raises(ObjectNotFoundError):
        store.stat("nope")


def test_stat_reports_size_and_mtime(store: ObjectStore) -> None:
    before = time.time()
    store.put("a/b", os.urandom(1234))
    info = store.stat("a/b")
    assert (info.key, info.size) == ("a/b", 1234)
    # S3 keeps whole seconds; allow for that and for a slightly skewed server clock.
    assert before - 5 <= info.mtime <= time.time() + 5


@pytest.mark.parametrize(
    "key", ["../x", "/abs", "a/../../b", "a\x00b", "..", "a//b", "a/", "", "a\\b"]
)
def test_malformed_keys_are_rejected(store: ObjectStore, key: str) -> None:
    with pytest.raises(ValueError, match="invalid key"):
        store.put(key, b"x")
    with pytest.raises(ValueError, match="invalid key"):
        store.get(key)


# ---------------------------------------------------------------------- list


def test_list_is_recursive_sorted_and_filtered_by_prefix(store: ObjectStore) -> None:
    written = ["logs/1/0/b", "logs/1/0/a", "logs/1/1/a", "logs/10/0/a", "logs/2/x", "top"]
    written += ["n/a.c", "n/a/b", "n/a0", "n/ab/x"]  # "." < "/" < "0": plain string order
    for i, key in enumerate(written):
        store.put(key, b"x" * i)
    assert keys(store) == sorted(written)
    assert keys(store, "n/") == ["n/a.c", "n/a/b", "n/a0", "n/ab/x"]
    assert keys(store, "logs/1/") == ["logs/1/0/a", "logs/1/0/b", "logs/1/1/a"]
    assert keys(store, "logs/1") == ["logs/1/0/a", "logs/1/0/b", "logs/1/1/a", "logs/10/0/a"]
    assert keys(store, "logs/1/0/b") == ["logs/1/0/b"]
    assert keys(store, "missing/") == []
    sizes = {info.key: info.size for info in store.list("logs/")}
    assert sizes["logs/2/x"] == written.index("logs/2/x")


def test_list_is_isolated_between_stores(
    make_config: Callable[..., Config], backend: str, tmp_path: os.PathLike[str], unique: str
) -> None:
    with (
        open_store(make_config(backend)) as mine,
        open_store(
            make_config(
                backend, s3_prefix=f"wp-test/{unique}-other", storage_root=f"{tmp_path}/other"
            )
        ) as other,
    ):
        try:
            mine.put("k", b"mine")
            other.put("k", b"other")
            other.put("only-other", b"x")
            assert keys(mine) == ["k"]
            assert mine.get("k") == b"mine"
        finally:
            mine.delete_many(["k"])
            other.delete_many(["k", "only-other"])


# ---------------------------------------------------------------------- delete


def test_delete_many_ignores_missing_keys(store: ObjectStore) -> None:
    for key in ("a/1", "a/2", "b"):
        store.put(key, b"x")
    store.delete_many(["a/1", "never-existed", "b", "a/never"])
    assert keys(store) == ["a/2"]
    with pytest.raises(ObjectNotFoundError):
        store.get("a/1")
    store.delete_many([])
    store.delete_many(iter(["a/2"]))
    assert keys(store) == []


# ------------------------------------------------------------------- multipart


def test_multipart_round_trip_with_three_parts(store: ObjectStore) -> None:
    first, second, last = os.urandom(5 * MiB), os.urandom(5 * MiB + 7), os.urandom(1000)
    view = memoryview(second)
    upload_id = store.create_multipart("big")
    parts = [
        store.upload_part("big", upload_id, 1, first),
        store.upload_part("big", upload_id, 2, [view[:MiB], view[MiB:]]),
        store.upload_part("big", upload_id, 3, [memoryview(last)]),
    ]
    assert [p.size for p in parts] == [5 * MiB, 5 * MiB + 7, 1000]
    assert keys(store) == []  # nothing visible before completion
    store.complete_multipart("big", upload_id, parts)
    assert store.stat("big").size == len(first) + len(second) + len(last)
    assert store.get("big") == first + second + last
    assert store.get("big", 5 * MiB - 2, 4) == first[-2:] + second[:2]
    assert keys(store) == ["big"]


def test_multipart_parts_may_be_uploaded_in_parallel(store: ObjectStore) -> None:
    chunks = [os.urandom(5 * MiB), os.urandom(5 * MiB), os.urandom(10)]
    upload_id = store.create_multipart("par")
    results: dict[int, PartInfo] = {}

    def send(n: int) -> None:
        results[n] = store.upload_part("par", upload_id, n, chunks[n - 1])

    threads = [threading.Thread(target=send, args=(n,)) for n in (3, 1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store.complete_multipart("par", upload_id, [results[n] for n in (1, 2, 3)])
    assert store.get("par") == b"".join(chunks)


def test_abort_multipart_leaves_nothing(store: ObjectStore) -> None:
    upload_id = store.create_multipart("gone")
    store.upload_part("gone", upload_id, 1, os.urandom(5 * MiB))
    store.abort_multipart("gone", upload_id)
    assert keys(store) == []
    with pytest.raises(ObjectNotFoundError):
        store.stat("gone")
    store.abort_multipart("gone", upload_id)  # twice is fine
    with pytest.raises(ObjectNotFoundError):
        store.upload_part("gone", upload_id, 2, b"late")


def test_open_multipart_uploads_are_listed_until_completed_or_aborted(store: ObjectStore) -> None:
    before = time.time()
    uploads = {key: store.create_multipart(key) for key in ("1/0/a", "1/0/b", "2/0/a")}
    store.upload_part("1/0/a", uploads["1/0/a"], 1, b"part")
    listed = list(store.list_multipart())
    assert [(u.key, u.upload_id) for u in listed] == sorted(uploads.items())
    assert all(before - 5 <= u.initiated <= time.time() + 5 for u in listed), listed
    assert [u.key for u in store.list_multipart("1/")] == ["1/0/a", "1/0/b"]
    store.abort_multipart("1/0/a", uploads["1/0/a"])
    done = store.upload_part("1/0/b", uploads["1/0/b"], 1, b"whole")
    store.complete_multipart("1/0/b", uploads["1/0/b"], [done])
    assert [(u.key, u.upload_id) for u in store.list_multipart()] == [("2/0/a", uploads["2/0/a"])]
    store.abort_multipart("2/0/a", uploads["2/0/a"])
    assert list(store.list_multipart()) == []


def test_complete_multipart_rejects_unordered_parts(store: ObjectStore) -> None:
    upload_id = store.create_multipart("k")
    try:
        one = store.upload_part("k", upload_id, 1, os.urandom(5 * MiB))
        two = store.upload_part("k", upload_id, 2, b"end")
        with pytest.raises(ValueError, match="ascending"):
            store.complete_multipart("k", upload_id, [two, one])
    finally:
        store.abort_multipart("k", upload_id)


# ------------------------------------------------------------- put_if_absent


def test_put_if_absent_creates_only_once(store: ObjectStore) -> None:
    assert store.supports_conditional_put()
    assert store.put_if_absent("fence", [b"first", memoryview(b"!")]) is True
    assert store.put_if_absent("fence", b"second") is False
    assert store.get("fence") == b"first!"
    store.delete_many(["fence"])
    assert store.put_if_absent("fence", b"third") is True
    assert store.get("fence") == b"third"


def test_put_if_absent_has_one_winner_under_contention(store: ObjectStore) -> None:
    wins: list[int] = []
    barrier = threading.Barrier(6)

    def race(i: int) -> None:
        barrier.wait()
        if store.put_if_absent("contended", f"writer {i}".encode()):
            wins.append(i)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    assert store.get("contended") == f"writer {wins[0]}".encode()


# ----------------------------------------------------------------- describe


def test_describe_and_repr_never_show_the_secret(
    store: ObjectStore, services: dict[str, str]
) -> None:
    secret = services["WOODPECKER_S3_SECRET_KEY"]
    assert store.describe()
    assert secret not in store.describe()
    assert secret not in repr(store)


# ---------------------------------------------------------- S3 unavailability


def _all_messages(e: BaseException) -> str:
    """The error and every error chained to it, as a user could print them."""
    out = []
    seen: BaseException | None = e
    while seen is not None:
        out.append(f"{seen!s} {seen!r} {getattr(seen, '__notes__', '')}")
        seen = seen.__cause__ or seen.__context__
    return "\n".join(out)


def test_s3_unreachable_gives_up_after_the_deadline_without_leaking_the_secret(
    make_config: Callable[..., Config], services: dict[str, str]
) -> None:
    secret = services["WOODPECKER_S3_SECRET_KEY"]
    config = make_config("s3", s3_endpoint="127.0.0.1:1", retry_deadline=1.0, s3_timeout=1.0)
    with open_store(config) as store:
        for op in (lambda: store.put("a/key", b"x"), lambda: store.get("a/key")):
            start = time.monotonic()
            with pytest.raises(StorageUnavailableError) as info:
                op()
            elapsed = time.monotonic() - start
            assert 0.5 <= elapsed <= 1.0 + 1.0 + 1.0, elapsed  # deadline + timeout + slack
            message = str(info.value)
            assert "a/key" in message and "127.0.0.1:1" in message
            assert "Connection refused" in message or "NewConnectionError" in message
            assert secret not in _all_messages(info.value)


def test_s3_silent_server_times_out_within_deadline_plus_timeout(
    make_config: Callable[..., Config],
) -> None:
    # A listener that never answers: every request hangs until s3.timeout.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        endpoint = f"127.0.0.1:{silent.getsockname()[1]}"
        config = make_config("s3", s3_endpoint=endpoint, retry_deadline=1.0, s3_timeout=0.5)
        with open_store(config) as store:
            start = time.monotonic()
            with pytest.raises(StorageUnavailableError, match="Timeout"):
                store.get("k")
            assert time.monotonic() - start <= 1.0 + 0.5 + 0.5


def test_s3_put_names_the_operation(
    make_config: Callable[..., Config],
) -> None:
    config = make_config("s3", s3_endpoint="127.0.0.1:1", retry_deadline=0.2)
    with open_store(config) as store, pytest.raises(StorageUnavailableError, match="s3 put 'blk'"):
        store.put("blk", b"x")


def test_s3_permanent_errors_fail_fast_without_the_secret(
    make_config: Callable[..., Config], services: dict[str, str]
) -> None:
    wrong_secret = "definitely-not-the-secret-" + services["WOODPECKER_S3_ACCESS_KEY"]
    cases = [
        make_config("s3", s3_bucket="wp-no-such-bucket"),
        make_config("s3", s3_secret_key=wrong_secret),
    ]
    for config in cases:
        with open_store(config) as store:
            start = time.monotonic()
            with pytest.raises(StorageUnavailableError) as info:
                store.put("k", b"x")
            assert time.monotonic() - start < 2.0  # not retried until the 5 s deadline
            assert wrong_secret not in _all_messages(info.value)
            assert services["WOODPECKER_S3_SECRET_KEY"] not in _all_messages(info.value)


def test_s3_failed_put_does_not_pin_the_callers_shared_memory(
    make_config: Callable[..., Config],
) -> None:
    arena = mmap.mmap(-1, 4096)
    views = [memoryview(arena)[:100], memoryview(arena)[100:200]]
    config = make_config("s3", s3_endpoint="127.0.0.1:1", retry_deadline=0.2)
    with open_store(config) as store:
        try:
            with pytest.raises(StorageUnavailableError) as kept:
                store.put("k", views)
        finally:
            for view in views:
                view.release()
    assert kept.value.__traceback__ is not None
    arena.close()  # BufferError if a view made by the store were still alive


# ---------------------------------------------------------------- s3.payload_checksum


def _spy_put_headers(store: ObjectStore) -> list[dict[str, str]]:
    """Record the headers of every PUT the store sends (its HTTP pool's ``urlopen``)."""
    sent: list[dict[str, str]] = []
    http = store._http  # type: ignore[attr-defined]
    urlopen = http.urlopen

    def spy(method: str, url: str, **kwargs: object) -> object:
        if method == "PUT":
            sent.append({k.lower(): v for k, v in kwargs["headers"].items()})  # type: ignore[union-attr]
        return urlopen(method, url, **kwargs)

    http.urlopen = spy
    return sent


@pytest.mark.parametrize(
    ("option", "header", "expected"),
    [
        # the CRCs of b"hello, world" split in two views, base64 of the big-endian value
        ("crc32c", "x-amz-checksum-crc32c", base64.b64encode(
            crc32c.crc32c(b"hello, world").to_bytes(4, "big")).decode()),
        ("crc32", "x-amz-checksum-crc32", base64.b64encode(
            zlib.crc32(b"hello, world").to_bytes(4, "big")).decode()),
    ],
)  # fmt: skip
def test_s3_crc_payload_checksum_replaces_the_signed_sha256(
    make_config: Callable[..., Config], option: str, header: str, expected: str
) -> None:
    with open_store(make_config("s3", s3_payload_checksum=option)) as store:
        sent = _spy_put_headers(store)
        store.put("k", [memoryview(b"hello, "), memoryview(b"world")])
        assert store.get("k") == b"hello, world"
        assert sent[-1]["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"
        assert sent[-1][header] == expected
        assert header in sent[-1]["authorization"]  # the checksum header itself is signed
        store.delete_many(["k"])


def test_s3_sha256_default_signs_the_payload_and_sends_no_crc(
    make_config: Callable[..., Config],
) -> None:
    with open_store(make_config("s3")) as store:
        sent = _spy_put_headers(store)
        store.put("k", b"hello, world")
        assert sent[-1]["x-amz-content-sha256"] == hashlib.sha256(b"hello, world").hexdigest()
        assert not any(k.startswith("x-amz-checksum-") for k in sent[-1])
        store.delete_many(["k"])


def test_s3_store_refuses_a_body_that_does_not_match_its_crc(
    make_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CRC is checked by the store: a body changed after the checksum was taken
    (as on a faulty network path) is refused, and nothing is stored."""
    honest = PayloadChecksum.of
    monkeypatch.setattr(PayloadChecksum, "of", lambda self, views: honest(self, [b"other"]))
    with open_store(make_config("s3", s3_payload_checksum="crc32c")) as store:
        with pytest.raises(StorageUnavailableError, match="BadDigest"):
            store.put("k", b"hello, world")
        assert keys(store) == []


def test_s3_multipart_parts_stay_sha256_signed_with_a_crc_option(
    make_config: Callable[..., Config],
) -> None:
    with open_store(make_config("s3", s3_payload_checksum="crc32c")) as store:
        sent = _spy_put_headers(store)
        upload = store.create_multipart("big")
        part = store.upload_part("big", upload, 1, b"p" * 10)
        store.complete_multipart("big", upload, [part])
        assert store.get("big") == b"p" * 10
        assert sent[-1]["x-amz-content-sha256"] == hashlib.sha256(b"p" * 10).hexdigest()
        assert not any(k.startswith("x-amz-checksum-") for k in sent[-1])
        store.delete_many(["big"])
