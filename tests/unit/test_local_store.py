"""Fast checks of the local backend and the storage helpers, no services needed.

Key validation (nothing escapes the root, bad keys fail before any I/O), crash
safety of a put, hidden temp / staging files, and the bounded retry helper that
the S3 and etcd layers share.
"""

from __future__ import annotations

import errno
import mmap
import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from woodpecker.config import RetryConfig
from woodpecker.errors import ObjectNotFoundError, StorageUnavailableError
from woodpecker.storage import LocalObjectStore
from woodpecker.storage import local as local_module
from woodpecker.storage.base import buffer_views, validate_key, validate_prefix
from woodpecker.storage.retry import call_with_retry

BAD_KEYS = [
    "../x",
    "/abs",
    "a/../../b",
    "a\x00b",
    "..",
    ".",
    "./a",
    "a/./b",
    "a//b",
    "a/",
    "",
    "a\\b",
    "..\\x",
    ".wp-tmp-1234",
    "a/.wp-staging/x",
    "x" * 1025,
]
GOOD_KEYS = ["a", "a/b/c", "1/2/00000000000000000001.blk", ".hidden", "a..b", "a/.b", "é/ü"]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "root" / "data"


@pytest.fixture
def store(root: Path) -> LocalObjectStore:
    return LocalObjectStore(root)


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


# ------------------------------------------------------------ key validation


@pytest.mark.parametrize("key", BAD_KEYS)
def test_validate_key_rejects_and_names_the_key(key: str) -> None:
    with pytest.raises(ValueError, match="invalid key") as info:
        validate_key(key)
    assert repr(key)[:20] in str(info.value)


@pytest.mark.parametrize("key", GOOD_KEYS)
def test_validate_key_accepts(key: str) -> None:
    assert validate_key(key) == key


def test_validate_key_rejects_non_strings() -> None:
    with pytest.raises(ValueError, match="must be a str"):
        validate_key(b"a/b")  # type: ignore[arg-type]


@pytest.mark.parametrize("prefix", ["", "a", "a/", "a/b/", "a/b/blk-0"])
def test_validate_prefix_accepts(prefix: str) -> None:
    assert validate_prefix(prefix) == prefix


@pytest.mark.parametrize("prefix", ["/", "/a", "../", "a/../", "a//", "a\x00", ".wp-staging/"])
def test_validate_prefix_rejects(prefix: str) -> None:
    with pytest.raises(ValueError, match="invalid prefix"):
        validate_prefix(prefix)


@pytest.mark.parametrize("key", BAD_KEYS)
def test_bad_keys_fail_before_any_io(
    store: LocalObjectStore, root: Path, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    outside = root.parent / "x"
    outside.write_bytes(b"outside")
    before = files_under(root.parent)

    def no_io(*args: object, **kwargs: object) -> None:
        raise AssertionError("I/O attempted for a malformed key")

    monkeypatch.setattr(local_module.os, "open", no_io)
    monkeypatch.setattr(local_module.os, "mkdir", no_io)
    monkeypatch.setattr(local_module.os, "unlink", no_io)
    calls = [
        lambda: store.put(key, b"evil"),
        lambda: store.put_if_absent(key, b"evil"),
        lambda: store.get(key),
        lambda: store.stat(key),
        lambda: store.delete_many(["fine", key]),
        lambda: store.create_multipart(key),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="invalid key"):
            call()
    monkeypatch.undo()
    assert files_under(root.parent) == before
    assert outside.read_bytes() == b"outside"


def test_symlink_out_of_the_root_is_rejected(store: LocalObjectStore, root: Path) -> None:
    outside = root.parent / "elsewhere"
    outside.mkdir()
    (outside / "secret").write_bytes(b"do not read")
    (root / "evil").symlink_to(outside)
    for call in (
        lambda: store.get("evil/secret"),
        lambda: store.put("evil/new", b"x"),
        lambda: store.list("evil/"),
    ):
        with pytest.raises(ValueError, match="outside the store root"):
            call()
    assert sorted(os.listdir(outside)) == ["secret"]


def test_negative_ranges_are_rejected(store: LocalObjectStore) -> None:
    store.put("k", b"abc")
    with pytest.raises(ValueError, match="invalid range"):
        store.get("k", -1, 2)


# -------------------------------------------------------------- crash safety


def test_crash_mid_put_leaves_no_temp_file_and_no_partial_object(
    store: LocalObjectStore, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.put("seg/old", b"old bytes")
    real_writev = os.writev

    def crash_after_some_bytes(fd: int, buffers: list[memoryview]) -> int:
        real_writev(fd, [buffers[0][:3]])
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr(local_module.os, "writev", crash_after_some_bytes)
    with pytest.raises(RuntimeError, match="killed"):
        store.put("seg/new", [b"abcdef", b"ghi"])
    with pytest.raises(RuntimeError, match="killed"):
        store.put("seg/old", b"replacement")
    monkeypatch.undo()
    assert files_under(root / "seg") == ["old"]
    assert store.get("seg/old") == b"old bytes"
    with pytest.raises(ObjectNotFoundError):
        store.get("seg/new")
    assert [i.key for i in store.list()] == ["seg/old"]


def test_failed_fsync_is_storage_unavailable_and_cleans_up(
    store: LocalObjectStore, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.put("seg/a", b"a")

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(local_module.os, "fsync", no_space)
    with pytest.raises(StorageUnavailableError, match=r"seg/b.*No space left"):
        store.put("seg/b", b"b")
    with pytest.raises(StorageUnavailableError):
        store.put_if_absent("seg/c", b"c")
    monkeypatch.undo()
    assert files_under(root / "seg") == ["a"]


def test_partial_writev_is_continued(
    store: LocalObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_writev = os.writev

    def three_bytes_at_a_time(fd: int, buffers: list[memoryview]) -> int:
        return real_writev(fd, [bytes(b"".join(bytes(b) for b in buffers)[:3])])

    monkeypatch.setattr(local_module.os, "writev", three_bytes_at_a_time)
    store.put("k", [b"ab", memoryview(b"cdefg"), b"", b"h"])
    monkeypatch.undo()
    assert store.get("k") == b"abcdefgh"


def test_more_buffers_than_iov_max(store: LocalObjectStore) -> None:
    buffers = [bytes([i % 256]) * 3 for i in range(3000)]
    store.put("many", buffers)
    assert store.get("many") == b"".join(buffers)


def test_buffer_views_do_not_copy() -> None:
    shared = bytearray(b"abcdef")
    with buffer_views([shared, memoryview(shared)[2:4]]) as views:
        shared[0:1] = b"X"
        assert [bytes(v) for v in views] == [b"Xbcdef", b"cd"]
    with buffer_views(b"one") as views:
        assert [bytes(v) for v in views] == [b"one"]


def test_a_failed_put_does_not_pin_the_callers_shared_memory(
    store: LocalObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The uploader keeps failures in futures; their tracebacks must not keep
    # exports of the arena alive, or the arena could never be closed.
    arena = mmap.mmap(-1, 4096)
    arena[:5] = b"hello"
    real_writev = os.writev

    def partial_then_fail(fd: int, buffers: list[memoryview]) -> int:
        if len(buffers[0]) == 5:
            return real_writev(fd, [buffers[0][:2]])
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(local_module.os, "writev", partial_then_fail)
    views = [memoryview(arena)[:5], memoryview(arena)[5:9]]
    try:
        with pytest.raises(StorageUnavailableError) as kept:
            store.put("k", views)
    finally:
        for view in views:  # a well-behaved caller releases its own views
            view.release()
    assert kept.value.__traceback__ is not None
    arena.close()  # BufferError if a view made by the store were still alive


# ------------------------------------------------------------ permissions


def test_everything_the_store_creates_is_owner_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Objects, temp files, staged parts 0600 and directories 0700, even with umask 000."""
    real_writev = os.writev
    temp_modes: set[int] = set()

    def spy(fd: int, buffers: list[memoryview]) -> int:
        temp_modes.add(stat.S_IMODE(os.fstat(fd).st_mode))  # the temp file, before its rename
        return real_writev(fd, buffers)

    monkeypatch.setattr(local_module.os, "writev", spy)
    old_umask = os.umask(0)
    try:
        root = tmp_path / "shared" / "data"
        store = LocalObjectStore(root)
        store.put("1/0/0-e1.arrow", b"block")
        assert store.put_if_absent("1/1/0-e1.arrow", b"block")
        upload = store.create_multipart("3/0/0-e1.arrow")
        part = store.upload_part("3/0/0-e1.arrow", upload, 1, b"part")
        staged = sorted(p for p in (root / ".wp-staging").rglob("*"))
        assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in staged if p.is_file()} == {"0o600"}
        assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in staged if p.is_dir()} == {"0o700"}
        store.complete_multipart("3/0/0-e1.arrow", upload, [part])
    finally:
        os.umask(old_umask)
    assert temp_modes == {0o600}
    created = [tmp_path / "shared", *sorted((tmp_path / "shared").rglob("*"))]
    loose = {
        str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.stat().st_mode))
        for p in created
        if stat.S_IMODE(p.stat().st_mode) != (0o700 if p.is_dir() else 0o600)
    }
    assert loose == {}
    assert len([p for p in created if p.is_file()]) == 3


# ----------------------------------------------------------- hidden files


def test_leftover_temp_files_are_never_listed(store: LocalObjectStore, root: Path) -> None:
    store.put("seg/a", b"a")
    (root / "seg" / ".wp-tmp-deadbeef").write_bytes(b"left by kill -9")
    assert [i.key for i in store.list()] == ["seg/a"]
    assert [i.key for i in store.list("seg/")] == ["seg/a"]


def test_temp_files_of_dead_and_zombie_writers_are_removed(
    store: LocalObjectStore, root: Path
) -> None:
    """A killed writer may stay an unreaped zombie for long: it writes nothing more."""
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])  # never waited for below
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait()
    deadline = time.monotonic() + 10
    while psutil.Process(zombie.pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the child did not exit"
        time.sleep(0.01)
    (root / "seg").mkdir()
    names = {pid: f".wp-tmp-{pid}-0123456789abcdef" for pid in (os.getpid(), zombie.pid)}
    names[exited.pid] = f".wp-tmp-{exited.pid}-fedcba9876543210"
    for name in names.values():
        (root / "seg" / name).write_bytes(b"half-written")
    try:
        assert store.remove_orphaned_temp_files() == 2
    finally:
        zombie.wait()
    assert sorted(os.listdir(root / "seg")) == [names[os.getpid()]]


def test_list_order_is_plain_string_order(store: LocalObjectStore) -> None:
    written = ["a/b", "a.c", "a0", "ab/x", "a/a/z", "b"]
    for key in written:
        store.put(key, b"")
    assert [i.key for i in store.list()] == sorted(written)
    assert [i.key for i in store.list("a")] == sorted(k for k in written if k.startswith("a"))
    assert [i.key for i in store.list("a/")] == ["a/a/z", "a/b"]


def test_delete_prunes_empty_directories(store: LocalObjectStore, root: Path) -> None:
    store.put("log/seg/blk", b"x")
    store.put("log/other", b"x")
    store.delete_many(["log/seg/blk"])
    assert not (root / "log" / "seg").exists()
    assert (root / "log" / "other").exists()
    store.delete_many(["log/other"])
    assert sorted(os.listdir(root)) == [".wp-staging"]
    store.put("log/seg/blk", b"again")  # directories come back on demand
    assert store.get("log/seg/blk") == b"again"


def test_directories_are_not_objects(store: LocalObjectStore) -> None:
    store.put("dir/file", b"x")
    with pytest.raises(ObjectNotFoundError):
        store.get("dir")
    with pytest.raises(ObjectNotFoundError):
        store.stat("dir")
    store.delete_many(["dir"])
    assert store.get("dir/file") == b"x"


# ------------------------------------------------------------------ multipart


def test_multipart_staging_is_cleaned_on_complete_and_abort(
    store: LocalObjectStore, root: Path
) -> None:
    done = store.create_multipart("k")
    store.complete_multipart("k", done, [store.upload_part("k", done, 1, b"abc")])
    dropped = store.create_multipart("j")
    store.upload_part("j", dropped, 1, b"abc")
    store.abort_multipart("j", dropped)
    assert os.listdir(root / ".wp-staging") == []
    assert [i.key for i in store.list()] == ["k"]


def test_multipart_rejects_forged_ids_and_etags(store: LocalObjectStore) -> None:
    with pytest.raises(ValueError, match="upload id"):
        store.upload_part("k", "../../../etc", 1, b"x")
    upload_id = store.create_multipart("k")
    with pytest.raises(ObjectNotFoundError):
        store.upload_part("other-key", upload_id, 1, b"x")
    with pytest.raises(ValueError, match="part number"):
        store.upload_part("k", upload_id, 0, b"x")
    part = store.upload_part("k", upload_id, 1, b"x")
    forged = type(part)(1, "../../escape", part.size)
    with pytest.raises(ValueError, match="bad etag"):
        store.complete_multipart("k", upload_id, [forged])
    with pytest.raises(ValueError, match="wrong size"):
        store.complete_multipart("k", upload_id, [type(part)(1, part.etag, 99)])


def test_put_if_absent_has_one_winner(store: LocalObjectStore, root: Path) -> None:
    wins: list[int] = []
    barrier = threading.Barrier(8)

    def race(i: int) -> None:
        barrier.wait()
        if store.put_if_absent("fence", str(i).encode()):
            wins.append(i)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    assert store.get("fence") == str(wins[0]).encode()
    assert files_under(root) == ["fence"]


def test_describe_is_a_file_url(store: LocalObjectStore, root: Path) -> None:
    assert store.describe() == root.as_uri()
    assert repr(store) == f"LocalObjectStore({root.as_uri()})"


# ---------------------------------------------------------------------- retry


class Flaky(Exception):
    pass


class GaveUp(Exception):
    pass


def _failing(times: int, error: Exception) -> tuple[list[int], Callable[[], str]]:
    calls: list[int] = []

    def fn() -> str:
        calls.append(1)
        if len(calls) <= times:
            raise error
        return "ok"

    return calls, fn


def _retry(fn: Callable[[], str], policy: RetryConfig) -> str:
    return call_with_retry(
        fn,
        policy=policy,
        is_transient=lambda e: isinstance(e, Flaky),
        on_give_up=lambda e: GaveUp(f"gave up: {e}"),
        what="test op",
    )


def test_retry_recovers_from_transient_failures() -> None:
    calls, fn = _failing(2, Flaky("blip"))
    policy = RetryConfig(deadline=5, max_attempts=5, backoff_initial=0.001, backoff_max=0.01)
    assert _retry(fn, policy) == "ok"
    assert len(calls) == 3


def test_retry_does_not_retry_permanent_failures() -> None:
    calls, fn = _failing(5, KeyError("permanent"))
    with pytest.raises(KeyError):
        _retry(fn, RetryConfig(deadline=5, max_attempts=5, backoff_initial=0.001))
    assert len(calls) == 1


def test_retry_gives_up_after_max_attempts_with_the_cause_chained() -> None:
    calls, fn = _failing(100, Flaky("down"))
    policy = RetryConfig(deadline=5, max_attempts=3, backoff_initial=0.001, backoff_max=0.01)
    with pytest.raises(GaveUp, match="gave up: down") as info:
        _retry(fn, policy)
    assert len(calls) == 3
    assert isinstance(info.value.__cause__, Flaky)
    assert "test op: gave up after 3 attempt(s)" in info.value.__notes__[0]


def test_retry_respects_the_deadline() -> None:
    calls, fn = _failing(10_000, Flaky("down"))
    policy = RetryConfig(deadline=0.3, max_attempts=10_000, backoff_initial=0.01, backoff_max=0.05)
    start = time.monotonic()
    with pytest.raises(GaveUp):
        _retry(fn, policy)
    assert 0.3 <= time.monotonic() - start < 0.5
    assert 3 < len(calls) < 100


# --------------------------------------------------------------------------- append files


def test_an_append_file_takes_blocks_at_its_end_each_synced(tmp_path: Path, monkeypatch) -> None:
    store = LocalObjectStore(str(tmp_path))
    synced: list[int] = []
    real_fdatasync = os.fdatasync
    monkeypatch.setattr(
        local_module.os, "fdatasync", lambda fd: (synced.append(fd), real_fdatasync(fd))
    )
    f = store.open_append("1/0/blocks-a.arrows")
    assert f.append([b"abc", memoryview(b"de")]) == 0
    assert f.append(b"xyz") == 5
    assert len(synced) == 2  # one sync per block, before append returns
    assert store.get("1/0/blocks-a.arrows", 5, 3) == b"xyz"
    assert store.get("1/0/blocks-a.arrows") == b"abcdexyz"
    assert [i.key for i in store.list("1/")] == ["1/0/blocks-a.arrows"]
    with pytest.raises(StorageUnavailableError, match="open_append"):
        store.open_append("1/0/blocks-a.arrows")  # never two writers of one file
    f.close()
    with pytest.raises(StorageUnavailableError, match="closed"):
        f.append(b"late")


def test_a_failed_append_breaks_the_file(tmp_path: Path, monkeypatch) -> None:
    store = LocalObjectStore(str(tmp_path))
    f = store.open_append("1/0/blocks-b.arrows")
    f.append(b"first")

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(local_module.os, "fdatasync", no_space)
    with pytest.raises(StorageUnavailableError, match="No space left"):
        f.append(b"second")
    assert f.broken  # its end is unknown: it takes nothing more
