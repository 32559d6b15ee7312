"""Opening a log runs off the loop: the coordinator answers at once and holds the log's batches.

The metadata store is a fake whose ``acquire_writer`` blocks until the test lets it go, so
each step of the opening is observed from the loop's side (the etcd side of the protocol is
covered by the integration and chaos tests).
"""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

from woodpecker.config import Config
from woodpecker.errors import CommitNotAttemptedError, MetadataUnavailableError, WoodpeckerError
from workers.coordinator import MAX_HELD_BATCHES, Coordinator, Outbox


class FakeSession:
    epoch = 1
    name = "app"

    def recover(self, quorum_last: Any = None) -> list:
        return []

    def next_segment_id(self) -> int:
        return 0

    def create_segment(self, segment_id: int) -> None:
        pass

    def release(self) -> None:
        pass


class BlockingMeta:
    """``acquire_writer`` waits for ``proceed``; it then returns a session or raises ``error``."""

    def __init__(self, error: Exception | None = None) -> None:
        self.proceed = threading.Event()
        self.error = error

    def get_log(self, name: str) -> SimpleNamespace:
        return SimpleNamespace(buffer_mode="memory")

    def acquire_writer(self, log_id: int, owner: str, *, preempt: bool = False) -> FakeSession:
        if not self.proceed.wait(10):
            raise AssertionError("the opening was never let go")
        if self.error is not None:
            raise self.error
        return FakeSession()


class Recorder:
    def __init__(self) -> None:
        self.dispatched: list[list[list[int]]] = []
        self.nacks: list[tuple[int, int, WoodpeckerError]] = []
        self.replies: list[WoodpeckerError | None] = []
        self.woken = threading.Event()

    def outbox(self) -> Outbox:
        return Outbox(
            dispatch=lambda job, key, parts: self.dispatched.append(parts),
            ack=lambda *a: None,
            nack=lambda *a: self.nacks.append(a),
            wake=self.woken.set,
            read_batch=lambda *a: b"",
        )


def coordinator(meta: Any, recorder: Recorder) -> Coordinator:
    # linger past the test: held batches stay open, so their entry ids can be read
    config = Config(env={}, etcd_endpoints="127.0.0.1:1", uploader_linger_ms=60_000)
    return Coordinator(config, meta, "test-owner", recorder.outbox())


def finish_opening(coord: Coordinator, recorder: Recorder) -> None:
    """Let the loop apply results until the opening is over (as the logstore's loop does)."""
    deadline = time.monotonic() + 10
    while coord.opening and time.monotonic() < deadline:
        recorder.woken.wait(0.1)
        recorder.woken.clear()
        coord.run_results()
    assert not coord.opening


def test_batches_of_an_opening_log_are_held_then_replayed_in_order() -> None:
    meta, recorder = BlockingMeta(), Recorder()
    coord = coordinator(meta, recorder)
    coord.open_log(1, "app", 7, recorder.replies.append)
    coord.open_log(2, "app", 7, recorder.replies.append)  # waits for the same opening
    assert recorder.replies == []  # the loop was not held: the opening is still blocked
    for seq, count in ((1, 3), (2, 5), (3, 2)):
        coord.on_batch(1, 7, seq, offset=100 * seq, length=10, count=count)
    assert sum(coord.producer_batches.values()) == 3 and not recorder.nacks
    meta.proceed.set()
    finish_opening(coord, recorder)
    assert recorder.replies == [None, None]
    state = coord.logs[7]
    assert state.writers == {1: 1, 2: 1}
    assert [(b.seq, b.first_entry) for b in state.open_batches] == [(1, 0), (2, 3), (3, 8)]
    coord.close()


def test_a_failed_opening_fails_its_waiters_and_held_batches_with_its_error() -> None:
    meta = BlockingMeta(MetadataUnavailableError("etcd acquire_writer: no success"))
    recorder = Recorder()
    coord = coordinator(meta, recorder)
    coord.open_log(1, "app", 7, recorder.replies.append)
    coord.on_batch(1, 7, 1, offset=0, length=10, count=1)
    meta.proceed.set()
    finish_opening(coord, recorder)
    (error,) = recorder.replies
    assert isinstance(error, MetadataUnavailableError)
    ((producer, seq, nack),) = recorder.nacks
    assert (producer, seq) == (1, 1) and str(nack) == "etcd acquire_writer: no success"
    assert isinstance(nack, CommitNotAttemptedError)  # a MetadataUnavailableError, not written
    assert 7 not in coord.logs and not any(coord.producer_batches.values())
    coord.close()


def test_held_batches_are_bounded() -> None:
    meta, recorder = BlockingMeta(), Recorder()
    coord = coordinator(meta, recorder)
    coord.open_log(1, "app", 7, recorder.replies.append)
    for seq in range(MAX_HELD_BATCHES + 1):
        coord.on_batch(1, 7, seq, offset=0, length=10, count=1)
    assert sum(coord.producer_batches.values()) == MAX_HELD_BATCHES
    ((producer, seq, error),) = recorder.nacks
    assert (producer, seq) == (1, MAX_HELD_BATCHES) and isinstance(error, CommitNotAttemptedError)
    assert "'app' is still opening" in str(error)
    meta.proceed.set()
    finish_opening(coord, recorder)
    coord.close()
