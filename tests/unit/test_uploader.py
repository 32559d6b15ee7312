"""Uploader helpers: part splitting, the PUT / multipart choice and the local append files."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from woodpecker.storage import LocalObjectStore
from woodpecker.storage.local import AppendFile
from workers.uploader import SegmentFiles, split_parts, upload


@given(st.lists(st.binary(max_size=50), max_size=20), st.integers(min_value=1, max_value=40))
def test_split_parts_keeps_bytes_and_sizes(buffers: list[bytes], part_size: int) -> None:
    parts = split_parts(buffers, part_size)
    joined = [b"".join(bytes(v) for v in part) for part in parts]
    assert b"".join(joined) == b"".join(buffers)
    assert all(len(p) == part_size for p in joined[:-1])
    assert len(joined[-1]) <= part_size


class CountingStore(LocalObjectStore):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.calls: list[str] = []

    def put(self, key, data):  # type: ignore[no-untyped-def]
        self.calls.append("put")
        super().put(key, data)

    def upload_part(self, key, upload_id, part_number, data):  # type: ignore[no-untyped-def]
        self.calls.append("part")
        return super().upload_part(key, upload_id, part_number, data)


class OverlapSpyStore(LocalObjectStore):
    """Records how many parts are in flight at once; a part waits (up to 2 s) for company."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.in_flight = 0
        self.most_in_flight = 0
        self._cond = threading.Condition()

    def upload_part(self, key, upload_id, part_number, data):  # type: ignore[no-untyped-def]
        with self._cond:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            self._cond.notify_all()
            self._cond.wait_for(lambda: self.in_flight >= 2, timeout=2.0)
        try:
            return super().upload_part(key, upload_id, part_number, data)
        finally:
            with self._cond:
                self.in_flight -= 1


def test_multipart_parts_are_in_flight_at_the_same_time(tmp_path: Path) -> None:
    store = OverlapSpyStore(tmp_path)
    data = [os.urandom(3 << 20)]  # three parts of 1 MiB
    with ThreadPoolExecutor(4) as pool:
        upload(store, "a/big", data, multipart_threshold=1 << 20, part_size=1 << 20, pool=pool)
    assert store.most_in_flight >= 2, "the parts were uploaded one after another"
    assert store.get("a/big") == data[0]


def test_upload_uses_parallel_parts_above_threshold(tmp_path: Path) -> None:
    store = CountingStore(tmp_path)
    data = [os.urandom(3 * 1024 * 1024), memoryview(os.urandom(4 * 1024 * 1024))]
    with ThreadPoolExecutor(4) as pool:
        upload(store, "a/big", data, multipart_threshold=5 << 20, part_size=5 << 20, pool=pool)
        upload(
            store, "a/small", data[:1], multipart_threshold=5 << 20, part_size=5 << 20, pool=pool
        )
    assert store.calls == ["part", "part", "put"]
    assert store.get("a/big") == bytes(data[0]) + bytes(data[1])
    assert store.get("a/small") == data[0]


def test_blocks_of_a_segment_share_one_append_file_per_uploader(tmp_path: Path) -> None:
    store = LocalObjectStore(str(tmp_path))
    files = SegmentFiles(store, orphan_grace=3600)
    a = [files.append(f"1/0/{b}-e1.arrow", [b"block-%d" % b]) for b in range(3)]
    other = files.append("1/1/0-e1.arrow", [b"other"])
    assert {key for key, _ in a} == {a[0][0]} and a[0][0].startswith("1/0/blocks-")
    assert [offset for _, offset in a] == [0, 7, 14]
    assert other[0].startswith("1/1/") and other[1] == 0
    assert store.get(a[2][0], a[2][1], 7) == b"block-2"


def test_an_append_file_idle_for_a_quarter_of_the_orphan_grace_is_never_reused(
    tmp_path: Path,
) -> None:
    """The orphan sweep may judge a file unreferenced once its last append is older than
    the grace: appending to it then could put a block into a file about to be deleted."""
    store = LocalObjectStore(str(tmp_path))
    files = SegmentFiles(store, orphan_grace=0.4)
    first, _ = files.append("1/0/0-e1.arrow", [b"x"])
    again, _ = files.append("1/0/1-e1.arrow", [b"y"])
    time.sleep(0.15)  # past 0.4 / 4
    later, offset = files.append("1/0/2-e1.arrow", [b"z"])
    assert again == first and later != first and offset == 0


def test_a_failed_append_moves_the_segment_to_a_new_file(tmp_path: Path, monkeypatch) -> None:
    store = LocalObjectStore(str(tmp_path))
    files = SegmentFiles(store, orphan_grace=3600)
    first, _ = files.append("1/0/0-e1.arrow", [b"x"])
    monkeypatch.setattr(AppendFile, "append", lambda self, data: (_ for _ in ()).throw(OSError()))
    with pytest.raises(OSError):
        files.append("1/0/1-e1.arrow", [b"y"])
    monkeypatch.undo()
    later, offset = files.append("1/0/2-e1.arrow", [b"z"])
    assert later != first and offset == 0
