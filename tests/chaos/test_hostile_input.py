"""Hostile input: malformed frames and descriptors from a producer, fuzzed metadata,
swapped objects, hostile log names.

Covered elsewhere (not repeated here): block decoder fuzzing, bit flips and
truncations (tests/unit/test_block_format.py); frame reader fuzzing
(tests/unit/test_shm.py); corrupted, truncated and missing block objects through
the reader (tests/integration/test_reader.py::test_faults_corrupted_missing_and_deleted);
oversize and wrong-type payloads (tests/integration/test_write_pipeline.py::
test_bad_input_writes_nothing); config values and secrets (tests/unit/test_config.py).
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import woodpecker as wp
from chaos.processes import logstore_pid, wait_logstore
from chaos.scale import pick
from shm import MAX_FRAME, Arena, FrameReader, send_msg
from woodpecker import wire
from woodpecker.deployment import Deployment
from woodpecker.format import write_batch_message
from woodpecker.meta import MetaStore
from woodpecker.meta.records import (
    BlockRecord,
    LogRecord,
    PendingDeletion,
    SegmentIndex,
    SegmentRecord,
    TruncationPoint,
    WriterRecord,
    decode_counter,
)
from woodpecker.naming import validate_log_name
from woodpecker.storage import open_store

FUZZ = settings(
    max_examples=pick(1_000, 100_000),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


class RawProducer:
    """A producer speaking the wire protocol by hand, so it can say anything."""

    def __init__(self, config: wp.Config) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(config.logstore_socket))
        self.sock.settimeout(10)
        self.arena = Arena.create(1 << 20)
        self.reader = FrameReader()
        self.send(wire.hello(os.getpid(), 1 << 20, Deployment.of(config)))
        assert self.receive()[0] == wire.WELCOME

    def send(self, frame: bytes) -> None:
        fds = [self.arena.fd] if frame[:1] == bytes([wire.HELLO]) else []
        send_msg(self.sock, frame, fds)

    def receive(self) -> bytes:
        while True:
            for frame, _ in self.reader.feed_from(self.sock):
                return frame

    def batch(self, log_id: int, seq: int, data: bytes, count: int) -> bytes:
        """Put ``data`` in the arena and send a descriptor claiming ``count`` entries."""
        view = self.arena.writable_view(0, len(data))
        view[:] = data
        view.release()
        self.send(wire.BATCH_FMT.pack(wire.BATCH, log_id, seq, 0, len(data), count))
        return self.receive()

    def close(self) -> None:
        self.sock.close()
        self.arena.close()


@pytest.fixture(scope="module")
def served(services, tmp_path_factory) -> Iterator[tuple[wp.Client, wp.LogHandle]]:
    """One client and log for the module (a logstore launch per test would cost seconds)."""
    root = tmp_path_factory.mktemp("hostile")
    unique = uuid.uuid4().hex[:12]
    config = wp.Config(
        env={},
        storage_type="local",
        storage_root=str(root),
        etcd_endpoints=services["WOODPECKER_ETCD_ENDPOINTS"],
        etcd_prefix=f"/wp-test/{unique}",
        logstore_socket=f"/tmp/wp-test-{unique}/logstore.sock",
        logstore_idle_exit=1.0,
        retry_deadline=5.0,
    )
    with wp.Client(config) as client:
        yield client, client.create_log("hostile")


def write_then_store(log: wp.LogHandle, payload: bytes) -> int:
    """Append ``payload`` (launching the logstore if needed); the logstore's pid."""
    with log.open_writer() as writer:
        writer.write(payload, timeout=30)
    return wait_logstore(log._client.config)


def last_two(log: wp.LogHandle) -> list[bytes]:
    with log.open_reader(wp.EARLIEST) as reader:
        payloads = []
        while (message := reader.read_next(timeout=1)) is not None:
            payloads.append(message.payload)
    return payloads[-2:]


def framed(payload: bytes) -> bytes:
    """``payload`` as one frame on the wire (length header + payload), without fds."""
    return struct.pack("<I", len(payload)) + payload


MALFORMED = {
    "unknown kind": framed(bytes([99]) + b"{}"),
    "empty frame": framed(b""),
    "short batch": framed(bytes([wire.BATCH]) + b"abc"),
    "control frame not json": framed(bytes([wire.OPEN_LOG]) + b"{not json"),
    "open_log without keys": framed(wire.encode(wire.OPEN_LOG, {"req": 1})),
    "open_log wrong types": framed(wire.encode(wire.OPEN_LOG, {"req": 1, "name": 5, "log_id": []})),
    "hello without fd": framed(wire.encode(wire.HELLO, {"pid": 1, "arena_size": 10})),
    "frame length past the limit": struct.pack("<I", MAX_FRAME + 1) + b"x" * 64,
}


@pytest.mark.parametrize("variant", list(MALFORMED))
def test_a_malformed_frame_does_not_kill_the_logstore(served, variant):
    """Regression: each of these frames used to raise out of the logstore's loop."""
    client, log = served
    store = write_then_store(log, f"before {variant}".encode())
    raw = RawProducer(client.config)
    raw.sock.sendall(MALFORMED[variant])  # as is: even a HELLO goes without its fd
    time.sleep(0.5)  # the logstore reads the frame
    raw.close()
    assert logstore_pid(client.config) == store, f"the logstore died of a {variant!r} frame"
    write_then_store(log, f"after {variant}".encode())
    assert last_two(log) == [f"before {variant}".encode(), f"after {variant}".encode()]


@pytest.mark.parametrize("lie", ["garbage bytes", "wrong entry count"])
def test_a_descriptor_that_lies_is_refused(served, lie):
    """Regression: such a batch used to be committed, and poisoned the log for every reader."""
    client, log = served
    write_then_store(log, f"before {lie}".encode())
    raw = RawProducer(client.config)
    raw.send(wire.encode(wire.OPEN_LOG, {"req": 1, "name": log.name, "log_id": log.log_id}))
    assert wire.decode(raw.receive())[1]["ok"]
    if lie == "garbage bytes":
        reply = raw.batch(log.log_id, 1, os.urandom(4096), count=1)
    else:
        message = bytearray(4096)
        size = write_batch_message([b"one entry"], memoryview(message))
        reply = raw.batch(log.log_id, 1, bytes(message[:size]), count=5)
    raw.close()
    assert reply[0] == wire.NACK, f"a descriptor with {lie} was acknowledged"
    write_then_store(log, f"after {lie}".encode())
    assert last_two(log) == [f"before {lie}".encode(), f"after {lie}".encode()]


def test_a_producer_that_never_reads_its_replies_stalls_nobody(served):
    """Regression: the logstore wrote replies with a blocking send, so one producer that
    kept sending but never read made it wait on a full socket (10 s, then a drop) and
    stalled every other producer meanwhile. Replies now queue per producer; a producer
    whose queue passes the bound is disconnected."""
    client, log = served
    store = write_then_store(log, b"before the flood")
    raw = RawProducer(client.config)
    raw.sock.settimeout(60)  # it waits longer than the logstore would
    # each descriptor names a log this producer never opened: one NACK per frame
    flood = framed(wire.BATCH_FMT.pack(wire.BATCH, log.log_id + 10**6, 1, 0, 1, 1)) * 1000
    flooding = threading.Event()
    ended = []

    began = time.monotonic()

    def send_flood() -> None:
        flooding.set()
        try:
            for _ in range(400):  # 400k NACKs (~40 MB) that it never reads
                raw.sock.sendall(flood)
            ended.append("sent everything")
        except OSError as e:
            ended.append(f"disconnected: {type(e).__name__}")
        ended.append(f"after {time.monotonic() - began:.1f}s")

    sender = threading.Thread(target=send_flood, daemon=True)
    sender.start()
    flooding.wait()
    start = time.monotonic()
    with log.open_writer() as writer:
        worst, payloads = time.monotonic() - start, []
        deadline = time.monotonic() + 60
        while (sender.is_alive() or len(payloads) < 20) and time.monotonic() < deadline:
            payloads.append(f"during the flood {len(payloads)}".encode())
            start = time.monotonic()
            writer.write(payloads[-1], timeout=30)
            worst = max(worst, time.monotonic() - start)
            time.sleep(0.02)
    sender.join(1)
    raw.close()
    print(
        f"never-reading producer: {ended}; meanwhile another producer opened a "
        f"writer and made {len(payloads)} appends, the slowest step took {worst * 1000:.0f} ms"
    )
    assert logstore_pid(client.config) == store, "the logstore died"
    assert worst < 3.0, f"another producer's append waited {worst:.1f}s behind the flood"
    assert ended and ended[0].startswith("disconnected"), "the flooding producer was kept"
    with log.open_reader(wp.EARLIEST) as reader:
        read = [m.payload for m in iter(lambda: reader.read_next(timeout=1), None)]
    assert read[-len(payloads) :] == payloads


RECORDS = [
    LogRecord,
    WriterRecord,
    SegmentRecord,
    BlockRecord,
    SegmentIndex,
    TruncationPoint,
    PendingDeletion,
]
SCALARS = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text()
JSON_VALUES = SCALARS | st.lists(SCALARS, max_size=3) | st.dictionaries(st.text(), SCALARS)


@st.composite
def record_like(draw: st.DrawFn) -> tuple[type, bytes]:
    """Bytes close to a record: its field names with random values, or any bytes at all."""
    cls = draw(st.sampled_from(RECORDS))
    if draw(st.booleans()):
        return cls, draw(st.binary(max_size=200))
    names = list(cls.__dataclass_fields__)
    obj = draw(st.dictionaries(st.sampled_from(names) | st.text(max_size=8), JSON_VALUES))
    return cls, orjson.dumps(obj)


@FUZZ
@given(record_like())
def test_metadata_decoder_only_ever_raises_corrupted_data(case: tuple[type, bytes]):
    cls, data = case
    try:
        record = cls.from_bytes(data, "/fuzz/key")
    except wp.CorruptedDataError as e:
        assert "/fuzz/key" in str(e)
    else:
        assert cls.from_bytes(record.to_bytes(), "/fuzz/key") == record


@FUZZ
@given(st.binary(max_size=30))
def test_counter_decoder_only_ever_raises_corrupted_data(data: bytes):
    with contextlib.suppress(wp.CorruptedDataError):
        assert decode_counter(data, "/fuzz/counter") >= 0


def test_swapped_and_foreign_objects_are_caught(make_config, backend):
    config = make_config(backend)
    with wp.Client(config) as client, MetaStore(config) as meta, open_store(config) as store:
        log = client.create_log("swapped")
        other = client.create_log("other")
        with log.open_writer() as w:
            ids = [w.write_batch([b"a%d-%d" % (j, i) for i in range(5)]) for j in range(3)]
        with other.open_writer() as w:
            w.write_batch([b"x%d" % i for i in range(5)])
        a, b, _ = meta.list_blocks(log.log_id, ids[0][0].segment_id)
        foreign = meta.list_blocks(other.log_id, 0)[0]
        originals = {key: store.get(key) for key in {a.key, b.key}}
        if a.key == b.key:  # the local backend's append file holds both blocks
            assert a.length == b.length
            swapped = bytearray(originals[a.key])
            swapped[a.offset : a.offset + a.length] = store.get(b.key, b.offset, b.length)
            swapped[b.offset : b.offset + b.length] = store.get(a.key, a.offset, a.length)
            cases = {"swapped": {a.key: bytes(swapped)}, "foreign": {a.key: store.get(foreign.key)}}
        else:
            cases = {
                "swapped": {a.key: originals[b.key], b.key: originals[a.key]},
                "foreign": {a.key: store.get(foreign.key), b.key: originals[b.key]},
            }
        for what, objects in cases.items():
            for key, data in objects.items():
                store.put(key, data)
            with log.open_reader(wp.EARLIEST) as reader:
                with pytest.raises(wp.CorruptedDataError, match="block 0"):
                    reader.read_next(timeout=5)
                assert reader.position == ids[0][0], f"{what}: bad bytes were returned"
        for key, data in originals.items():
            store.put(key, data)
        with log.open_reader(wp.EARLIEST) as reader:
            assert [reader.read_next(5).payload for _ in range(15)][-1] == b"a2-4"


HOSTILE_NAMES = [
    "../etc",
    "..",
    "a/../../b",
    "a\x00b",
    "\x00",
    "orders\u200b",  # zero-width space
    "\u043erders",  # Cyrillic o
    "\uff4frders",  # fullwidth o
    "orders\u202e",  # right-to-left override
    "%2e%2e%2f",
    "C:\\x",
    "a" * 256,
    "",
    " orders",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_log_names_are_refused_end_to_end(make_config, name):
    config = make_config("local")
    with wp.Client(config) as client:
        for call in (client.create_log, client.open_log, client.delete_log):
            with pytest.raises(wp.InvalidLogNameError):
                call(name)
        assert client.list_logs() == []
    assert not any(Path(config.storage.root).rglob("*etc*"))


@FUZZ
@given(st.text(max_size=300))
def test_log_names_are_either_plain_ascii_or_refused(name: str):
    try:
        validate_log_name(name)
    except wp.InvalidLogNameError as e:
        assert repr(name)[:50] in str(e) or len(name) > 255
    else:
        assert name.isascii() and "/" not in name and "\x00" not in name
        assert name not in (".", "..") and 1 <= len(name) <= 255
