"""The writer <-> quorum node wire contract: the frames both sides speak.

A neutral home, like ``woodpecker.wire``: the node daemon (``workers.node``) and the
library's node client both import it, and it imports neither. Over TCP every message is
one frame, a 4-byte little-endian length then that many bytes, whose first byte is its
type. The handshake carries orjson bodies; requests and replies are fixed ``struct``
layouts, and an append's batch travels as one bytes field (one Arrow record batch
message), never one message per entry. Every request names ``(log_id, segment_id,
epoch)``; every reply carries the node's incarnation and what it holds of the segment.
The protocol and its rules: docs/quorum.md.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any, NamedTuple

import orjson

from woodpecker.deployment import Deployment

VERSION = 3
"""The protocol between a writer and a quorum node; another version is refused at HELLO.

Version 2 added the long-poll wait of READ; version 3 the sealed flag of LAC (the
segment is sealed at that LAC: the node flushes it at once and forgets it once flushed)."""

LENGTH = struct.Struct("<I")

# handshake (orjson bodies)
HELLO = 1  # writer -> node {protocol, deployment, describes}
WELCOME = 2  # node -> writer {protocol, deployment, node_id, incarnation}
REFUSED = 3  # node -> writer {error, message}, then the node closes the connection
# requests (REQUEST_HEAD, then the body of their type)
APPEND = 10  # APPEND_BODY + the batch message
FENCE = 11  # nothing more
READ = 12  # READ_BODY (a long-poll: answered once the LAC reaches the entry, or at the wait)
LAC = 13  # LAC_BODY
REQUESTS = frozenset({APPEND, FENCE, READ, LAC})
# node -> writer
REPLY = 20  # REPLY_HEAD, then (READ) BATCH_HEAD + batch message, repeated

# type, request id, log id, segment id, epoch
REQUEST_HEAD = struct.Struct("<BQQQQ")
# first entry id, entry count, the writer's LAC, xxh3_64 of the batch message
APPEND_BODY = struct.Struct("<qIqQ")
# first entry id wanted, byte budget of the reply, milliseconds to wait for it to be acked
READ_BODY = struct.Struct("<qII")
# the writer's LAC (-1: only asking), flags (LAC_SEALED)
LAC_BODY = struct.Struct("<qB")
LAC_SEALED = 1  # the segment is sealed at this LAC: it is the segment's last entry
# type, request id, status, node incarnation, last entry held, LAC known, fence epoch
REPLY_HEAD = struct.Struct("<BQBQqqQ")
# first entry id, entry count, bytes of the batch message that follows
BATCH_HEAD = struct.Struct("<qII")


class Status:
    """What a node answered; docs/quorum.md gives each one's rule."""

    OK = 0
    FENCED = 1  # the request's epoch is below the log's fence epoch on this node
    UNKNOWN = 2  # the node holds nothing of this segment (never got it, or restarted)
    GAP = 3  # the append does not continue what the node holds
    BUSY = 4  # the node holds node.max_buffer_bytes already
    REJECTED = 5  # the batch is not what its header says (checksum, structure, count)
    FLUSHED = 6  # the entries read were flushed and dropped: read them from object storage

    NAMES = {0: "OK", 1: "FENCED", 2: "UNKNOWN", 3: "GAP", 4: "BUSY", 5: "REJECTED", 6: "FLUSHED"}


class Request(NamedTuple):
    kind: int
    request_id: int
    log_id: int
    segment_id: int
    epoch: int


class Batch(NamedTuple):
    """Consecutive entries as one Arrow record batch message."""

    first: int
    count: int
    data: bytes | memoryview


class Reply(NamedTuple):
    request_id: int
    status: int
    incarnation: int
    last: int  # last entry id the node holds of the segment (-1: none)
    lac: int  # the segment's LAC as the node knows it
    fence_epoch: int  # the log's fence epoch on the node
    batches: tuple[Batch, ...] = ()


class MalformedFrame(ValueError):
    """A frame that does not parse: its connection is dropped, never half-understood."""


def frame(*parts: bytes | memoryview) -> list[bytes | memoryview]:
    """The parts of one frame, length first, for ``writelines`` (no join of the payload)."""
    return [LENGTH.pack(sum(len(p) for p in parts)), *parts]


async def read_frame(reader: asyncio.StreamReader, max_bytes: int) -> bytes:
    """One frame's bytes; MalformedFrame for an empty one or one over ``max_bytes``.

    ``asyncio.IncompleteReadError`` when the peer closed mid-frame or before one.
    """
    (size,) = LENGTH.unpack(await reader.readexactly(LENGTH.size))
    if size == 0 or size > max_bytes:
        raise MalformedFrame(f"a frame of {size} bytes (at most {max_bytes} are read)")
    return await reader.readexactly(size)


def encode_control(kind: int, body: dict[str, Any]) -> bytes:
    return bytes((kind,)) + orjson.dumps(body)


def decode_control(data: bytes) -> tuple[int, dict[str, Any]]:
    try:
        body = orjson.loads(memoryview(data)[1:])
    except orjson.JSONDecodeError as e:
        raise MalformedFrame(f"a control frame that is not JSON ({e})") from None
    if not isinstance(body, dict):
        raise MalformedFrame("a control frame whose body is not an object")
    return data[0], body


def hello(deployment: Deployment) -> bytes:
    """A writer's HELLO: the protocol it speaks and the deployment it expects."""
    return encode_control(
        HELLO,
        {"protocol": VERSION, "deployment": deployment.fingerprint, "describes": str(deployment)},
    )


def request(kind: int, request_id: int, log_id: int, segment_id: int, epoch: int) -> bytes:
    return REQUEST_HEAD.pack(kind, request_id, log_id, segment_id, epoch)


def append(
    request_id: int,
    log_id: int,
    segment_id: int,
    epoch: int,
    batch: Batch,
    lac: int,
    checksum: int,
) -> list[bytes | memoryview]:
    """An APPEND frame's parts; the batch bytes are not copied."""
    head = request(APPEND, request_id, log_id, segment_id, epoch)
    body = APPEND_BODY.pack(batch.first, batch.count, lac, checksum)
    return frame(head + body, batch.data)


def lac_body(lac: int, *, sealed: bool = False) -> bytes:
    """A LAC request's body: the writer's LAC, and whether the segment is sealed there."""
    return LAC_BODY.pack(lac, LAC_SEALED if sealed else 0)


def decode_request(data: bytes) -> tuple[Request, memoryview]:
    """The head of a request and the rest of its bytes; MalformedFrame if it is not one."""
    if len(data) < REQUEST_HEAD.size or data[0] not in REQUESTS:
        raise MalformedFrame(f"not a request (type {data[0]}, {len(data)} bytes)")
    head = Request(*REQUEST_HEAD.unpack_from(data))
    rest = memoryview(data)[REQUEST_HEAD.size :]
    fixed = {APPEND: APPEND_BODY.size, FENCE: 0, READ: READ_BODY.size, LAC: LAC_BODY.size}
    need = fixed[head.kind]
    if len(rest) < need or (head.kind != APPEND and len(rest) != need):
        raise MalformedFrame(f"a request of type {head.kind} with a {len(rest)}-byte body")
    return head, rest


def encode_reply(reply: Reply) -> list[bytes | memoryview]:
    head = REPLY_HEAD.pack(
        REPLY,
        reply.request_id,
        reply.status,
        reply.incarnation,
        reply.last,
        reply.lac,
        reply.fence_epoch,
    )
    parts: list[bytes | memoryview] = [head]
    for batch in reply.batches:
        parts += [BATCH_HEAD.pack(batch.first, batch.count, len(batch.data)), batch.data]
    return frame(*parts)


def decode_reply(data: bytes) -> Reply:
    if len(data) < REPLY_HEAD.size or data[0] != REPLY:
        raise MalformedFrame(f"not a reply (type {data[0]}, {len(data)} bytes)")
    _, *fields = REPLY_HEAD.unpack_from(data)
    view = memoryview(data)
    at = REPLY_HEAD.size
    batches: list[Batch] = []
    while at < len(data):
        if at + BATCH_HEAD.size > len(data):
            raise MalformedFrame("a reply cut inside a batch header")
        first, count, size = BATCH_HEAD.unpack_from(data, at)
        at += BATCH_HEAD.size
        if at + size > len(data):
            raise MalformedFrame("a reply cut inside a batch")
        batches.append(Batch(first, count, view[at : at + size]))
        at += size
    return Reply(*fields, batches=tuple(batches))


def status_name(status: int) -> str:
    return Status.NAMES.get(status, f"status {status}")
