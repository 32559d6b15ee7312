"""Uploader helpers: part splitting and the PUT / multipart choice, on the local store."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from woodpecker.storage import LocalObjectStore
from workers.uploader import split_parts, upload


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
