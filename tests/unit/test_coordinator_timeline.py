"""The coordinator's timeline, step by step, against a fake outbox and a fake writer session.

No servers: the session records every metadata step and fails the ones a test scripts; uploads
are finished (or failed) by the test, in the order it chooses. The loop's side is played by
``Harness.settle``, which applies finished metadata steps as the logstore's loop does. The real
etcd side of each step is covered by the integration and chaos tests.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any

import pytest

from woodpecker.config import Config
from woodpecker.errors import (
    CommitNotAttemptedError,
    CommitOutcomeUnknownError,
    MetadataUnavailableError,
    NotDurableError,
    StorageUnavailableError,
    WoodpeckerError,
    WriterFencedError,
)
from woodpecker.meta import BlockRecord
from workers import coordinator as coordinator_module
from workers.coordinator import Coordinator, Outbox

LOG = 7


class FakeSession:
    """Records each metadata step; raises what ``failures`` scripts for it; commits may be held."""

    epoch = 3
    name = "app"

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.failures: dict[str, list[BaseException]] = {}
        self.commits_go = threading.Event()
        self.commits_go.set()
        self.released = False

    def _step(self, *call: Any) -> None:
        self.calls.append(call)
        if call[0] == "commit" and not self.commits_go.wait(5):
            raise AssertionError("a held commit was never let go")
        scripted = self.failures.get(call[0])
        if scripted:
            raise scripted.pop(0)

    def recover(self, quorum_last: Any = None) -> list:
        return []

    def next_segment_id(self) -> int:
        return 0

    def create_segment(self, segment_id: int) -> None:
        self._step("create", segment_id)

    def seal_segment(self, segment_id: int) -> None:
        self._step("seal", segment_id)

    def commit(self, segment_id: int, blocks: Sequence[BlockRecord], lac: int, size: int) -> None:
        self._step("commit", segment_id, [(b.block_id, b.first_entry_id) for b in blocks], lac)

    def release(self) -> None:
        self.released = True


class FakeMeta:
    def __init__(self, session: FakeSession) -> None:
        self.session = session

    def get_log(self, name: str) -> SimpleNamespace:
        return SimpleNamespace(buffer_mode="memory")

    def acquire_writer(self, log_id: int, owner: str, *, preempt: bool = False) -> FakeSession:
        return self.session


class Harness:
    """A coordinator wired to a recording outbox; jobs are numbered in dispatch order."""

    def __init__(self, **config: Any) -> None:
        self.session = FakeSession()
        self.jobs: list[int] = []
        self.acks: list[tuple[int, int, int, int]] = []  # producer, seq, segment, first entry
        self.nacks: list[tuple[int, int, WoodpeckerError]] = []
        self.woken = threading.Event()
        outbox = Outbox(
            dispatch=lambda job, key, parts: self.jobs.append(job),
            ack=lambda *ack: self.acks.append(ack),
            nack=lambda *nack: self.nacks.append(nack),
            wake=self.woken.set,
            read_batch=lambda *a: b"",
        )
        settings = {"uploader_linger_ms": 0, "uploader_max_inflight": 8, **config}
        cfg = Config(env={}, etcd_endpoints="127.0.0.1:1", **settings)
        self.coord = Coordinator(cfg, FakeMeta(self.session), "test-owner", outbox)
        self._seq: dict[int, int] = {}

    def open(self, producer: int) -> None:
        replies: list[WoodpeckerError | None] = []
        self.coord.open_log(producer, "app", LOG, replies.append)
        self.settle()
        assert replies == [None]

    def batch(self, producer: int, count: int = 1) -> int:
        """Send the producer's next batch; returns its job if it went out as a block at once."""
        seq = self._seq[producer] = self._seq.get(producer, 0) + 1
        self.coord.on_batch(producer, LOG, seq, offset=seq * 100, length=10, count=count)
        return self.jobs[-1] if self.jobs else 0

    def uploaded(self, *jobs: int) -> None:
        for job in jobs:
            self.coord.on_upload_done(job, key=f"block-{job}", offset=0, size=50, checksum=job)

    def run_until(self, done: Callable[[], bool]) -> None:
        """Apply finished metadata steps, as the loop does, until ``done()``."""
        deadline = time.monotonic() + 5
        while not done():
            assert time.monotonic() < deadline, "the coordinator never got there"
            self.woken.wait(0.05)
            self.woken.clear()
            self.coord.run_results()

    def settle(self) -> None:
        """Until no metadata step is in flight (nor any log opening)."""
        self.run_until(
            lambda: not self.coord.opening and not any(s.busy for s in self.coord.logs.values())
        )

    def nacked(self) -> list[tuple[int, int, type, str]]:
        return [(p, seq, type(e), str(e)) for p, seq, e in self.nacks]

    def steps(self) -> list[tuple[Any, ...]]:
        return self.session.calls

    def pending_batches(self) -> int:
        return sum(self.coord.producer_batches.values())


@pytest.fixture
def harness() -> Any:
    made: list[Harness] = []

    def make(**config: Any) -> Harness:
        made.append(Harness(**config))
        return made[-1]

    yield make
    for h in made:
        h.session.commits_go.set()
        h.coord.close()


def test_batches_of_several_producers_commit_and_ack_in_arrival_order(harness) -> None:
    h = harness()
    h.open(1)
    h.open(2)
    first = h.batch(1, count=2)
    second = h.batch(2, count=3)
    third = h.batch(1, count=1)
    h.uploaded(third, second)  # uploads finish out of order
    h.settle()
    assert h.acks == [] and h.steps() == [("create", 0)]  # nothing commits past an upload
    h.uploaded(first)
    h.settle()
    assert h.steps() == [("create", 0), ("commit", 0, [(0, 0), (1, 2), (2, 5)], 5)]
    assert h.acks == [(1, 1, 0, 0), (2, 1, 0, 2), (1, 2, 0, 5)]
    assert h.nacks == [] and h.pending_batches() == 0


def test_a_seal_that_failed_is_retried_and_nothing_after_it_commits_first(
    harness, monkeypatch
) -> None:
    monkeypatch.setattr(coordinator_module, "SEAL_RETRY_INTERVAL", 0.3)
    h = harness()
    h.open(1)
    h.uploaded(h.batch(1))
    h.settle()
    h.session.failures["seal"] = [MetadataUnavailableError("etcd is unreachable")]
    h.coord.close_log(1, LOG)  # the last writer closed: the segment is sealed
    h.settle()
    h.open(1)
    h.uploaded(h.batch(1))  # lands in the next segment
    h.settle()
    h.coord.tick()  # before the back-off has passed: nothing is retried
    h.settle()
    assert h.steps() == [("create", 0), ("commit", 0, [(0, 0)], 0), ("seal", 0)]
    assert h.acks == [(1, 1, 0, 0)]
    time.sleep(0.35)
    h.coord.tick()
    h.settle()
    assert h.steps()[3:] == [("seal", 0), ("create", 1), ("commit", 1, [(0, 0)], 0)]
    assert h.acks == [(1, 1, 0, 0), (1, 2, 1, 0)] and h.nacks == []


def test_a_failed_block_fails_the_rest_of_its_segment_and_rolls_it(harness) -> None:
    h = harness()
    h.open(1)
    jobs = [h.batch(1) for _ in range(3)]
    h.session.commits_go.clear()
    h.uploaded(jobs[0])
    h.run_until(lambda: any(step[0] == "commit" for step in h.steps()))
    h.coord.on_upload_failed(jobs[1], StorageUnavailableError("7/0/1-e3.arrow: PUT timed out"))
    h.session.commits_go.set()
    h.settle()
    # the commit in flight before the gap decides its block's fate (acked); the failed
    # block and every later one of its segment are NACKed as never written (still a
    # StorageUnavailableError), and the segment is sealed after that commit
    assert h.acks == [(1, 1, 0, 0)]
    assert h.nacked() == [
        (1, 2, NotDurableError, "7/0/1-e3.arrow: PUT timed out"),
        (1, 3, NotDurableError, "7/0/1-e3.arrow: PUT timed out"),
    ]
    assert isinstance(h.nacks[0][2], StorageUnavailableError)
    h.uploaded(jobs[2])  # a late result of a failed block is ignored
    h.uploaded(h.batch(1))
    h.settle()
    assert h.steps() == [
        ("create", 0),
        ("commit", 0, [(0, 0)], 0),
        ("seal", 0),
        ("create", 1),
        ("commit", 1, [(0, 0)], 0),
    ]
    assert h.acks[1:] == [(1, 4, 1, 0)] and h.pending_batches() == 0


def test_a_fence_during_a_commit_group_fails_everything_pending(harness) -> None:
    h = harness(uploader_max_inflight=2)
    h.open(1)
    h.open(2)
    group = [h.batch(1), h.batch(2)]
    h.session.commits_go.clear()
    h.uploaded(*group)
    h.run_until(lambda: any(step[0] == "commit" for step in h.steps()))
    assert h.steps() == [("create", 0), ("commit", 0, [(0, 0), (1, 1)], 1)]
    uploading = h.batch(1)  # behind the group, while its commit is in flight
    h.batch(2)  # no upload slot: stays in the open block
    h.session.failures["commit"] = [WriterFencedError("log app: epoch 4 took over")]
    h.session.commits_go.set()
    h.settle()
    fenced = "log app: epoch 4 took over"
    assert sorted(h.nacked()) == [
        (1, 1, WriterFencedError, fenced),
        (1, 2, WriterFencedError, fenced),
        (2, 1, WriterFencedError, fenced),
        (2, 2, WriterFencedError, fenced),
    ]
    assert h.acks == [] and h.pending_batches() == 0
    h.uploaded(uploading)  # ignored: the session is gone
    h.batch(1)  # refused at once
    h.settle()
    assert h.nacked()[-1] == (1, 3, WriterFencedError, fenced)
    h.run_until(lambda: h.session.released)
    assert h.acks == [] and len(h.steps()) == 2


def test_a_lost_commit_reply_is_an_unknown_outcome_and_rolls_the_segment(harness) -> None:
    h = harness()
    h.open(1)
    first, second, third = (h.batch(1) for _ in range(3))
    h.session.failures["commit"] = [MetadataUnavailableError("commit: no reply within 3s")]
    h.uploaded(first, second)
    h.settle()
    # the blocks of the commit that was sent may be in etcd; the one behind it is not
    unknown = "log app: metadata step failed: commit: no reply within 3s"
    assert h.nacked() == [
        (1, 1, CommitOutcomeUnknownError, unknown),
        (1, 2, CommitOutcomeUnknownError, unknown),
        (1, 3, CommitNotAttemptedError, unknown),
    ]
    assert all(isinstance(e, MetadataUnavailableError) for _, _, e in h.nacks)
    h.uploaded(third)  # ignored
    h.uploaded(h.batch(1))
    h.settle()
    assert h.steps() == [
        ("create", 0),
        ("commit", 0, [(0, 0), (1, 1)], 1),
        ("seal", 0),
        ("create", 1),
        ("commit", 1, [(0, 0)], 0),
    ]
    assert h.acks == [(1, 4, 1, 0)] and h.pending_batches() == 0


def test_failing_everything_at_shutdown_tells_sent_commits_from_the_rest(harness) -> None:
    h = harness(uploader_max_inflight=1)
    h.open(1)
    committing = h.batch(1)
    h.session.commits_go.clear()
    h.uploaded(committing)
    h.run_until(lambda: any(step[0] == "commit" for step in h.steps()))
    h.batch(1)  # uploading
    h.batch(1)  # open: no upload slot
    state = h.coord.logs[LOG]
    assert state.open_batches and state.open_bytes and state.open_since is not None
    h.coord.fail_all("the logstore stopped")
    assert h.nacked() == [
        (
            1,
            1,
            CommitOutcomeUnknownError,
            "the logstore stopped while this append's commit was in flight",
        ),
        (1, 2, NotDurableError, "the logstore stopped before this append was durable"),
        (1, 3, NotDurableError, "the logstore stopped before this append was durable"),
    ]
    assert (state.open_batches, state.open_bytes, state.open_since) == ([], 0, None)
    assert not state.timeline and h.pending_batches() == 0
