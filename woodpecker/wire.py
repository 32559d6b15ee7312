"""The producer <-> logstore wire contract: the frames both sides speak.

A neutral home: the library (``woodpecker.producer``) and the daemon
(``workers.logstore``) both import it, and it imports neither. Every message is
one frame of ``shm.fdpass`` whose first byte is its type. The hot messages (a
batch descriptor, its ack) are fixed ``struct`` layouts so the coordinator does
bookkeeping per batch without parsing JSON; control messages carry an orjson
body. The producer's arena rides on HELLO as SCM_RIGHTS. The handshake and the
launch/liveness protocol around it: docs/logstore-protocol.md.
"""

from __future__ import annotations

import struct
from typing import Any

import orjson

from woodpecker.deployment import Deployment
from woodpecker.errors import WoodpeckerError, from_wire, to_wire

VERSION = 3
"""The protocol spoken between a producer and its logstore (docs/logstore-protocol.md).

Version 1 (unversioned) had no deployment check; version 2 NACKed appends with the
transport error alone, where version 3 names what became of them (NotWrittenError or
OutcomeUnknownError classes, woodpecker/errors.py). A peer speaking another version
is refused at the handshake, never half-understood.
"""

# producer -> logstore
HELLO = 1  # orjson {pid, arena_size, protocol, deployment, describes} + arena fd
OPEN_LOG = 2  # orjson {req, name, log_id}
CLOSE_LOG = 3  # orjson {req, log_id}
BATCH = 4  # struct BATCH_FMT
# logstore -> producer
WELCOME = 10  # orjson {producer_id, protocol, deployment, serves, pid}
REPLY = 11  # orjson {req, ok, error, message}
ACK = 12  # struct ACK_FMT
NACK = 13  # struct NACK_HEAD + orjson {error, message}
REFUSED = 14  # orjson {error, message}: the HELLO was refused, the connection closes

# type, log_id, batch_seq, offset, length, count
BATCH_FMT = struct.Struct("<BQQQII")
# type, batch_seq, segment_id, first_entry_id
ACK_FMT = struct.Struct("<BQQQ")
# type, batch_seq
NACK_HEAD = struct.Struct("<BQ")


def encode(kind: int, body: dict[str, Any]) -> bytes:
    """A control message: type byte + orjson body."""
    return bytes((kind,)) + orjson.dumps(body)


def hello(pid: int, arena_size: int, deployment: Deployment) -> bytes:
    """A producer's HELLO: who it is, its arena, and what it expects the logstore to serve."""
    return encode(
        HELLO,
        {
            "pid": pid,
            "arena_size": arena_size,
            "protocol": VERSION,
            "deployment": deployment.fingerprint,
            "describes": str(deployment),
        },
    )


def decode(frame: bytes) -> tuple[int, dict[str, Any]]:
    """Split a control message into its type and body."""
    return frame[0], orjson.loads(memoryview(frame)[1:])


def encode_nack(batch_seq: int, error: WoodpeckerError) -> bytes:
    return NACK_HEAD.pack(NACK, batch_seq) + orjson.dumps(to_wire(error))


def decode_nack(frame: bytes) -> tuple[int, WoodpeckerError]:
    _, seq = NACK_HEAD.unpack_from(frame)
    return seq, from_wire(orjson.loads(memoryview(frame)[NACK_HEAD.size :]))
