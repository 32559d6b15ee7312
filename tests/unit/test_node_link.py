"""A ``NodeLink``'s deadline fails a node that does not answer, and only such a node: a
reply that came in time but is read in the same late pass of the event loop as the
deadline's timer keeps the link (a busy logstore must not evict a node that answered)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from woodpecker.quorum import wire
from woodpecker.quorum.client import EnsembleMember, NodeFailed, NodeLink

TIMEOUT = 0.2
MEMBER = EnsembleMember("n1", "127.0.0.1:0", 7)


def _exactly(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            return b""
        data += chunk
    return data


def _node(server: socket.socket, answer: bool) -> None:
    """A node stand-in on its own thread: answers every request OK at once, or never."""
    conn, _ = server.accept()
    with conn:
        while head := _exactly(conn, wire.LENGTH.size):
            (size,) = wire.LENGTH.unpack(head)
            request, _ = wire.decode_request(_exactly(conn, size))
            if answer:
                reply = wire.Reply(request.request_id, wire.Status.OK, MEMBER.incarnation, 0, 0, 0)
                conn.sendall(b"".join(wire.encode_reply(reply)))


@pytest.fixture(params=[True, False], ids=["answers", "silent"])
def node(request: pytest.FixtureRequest) -> Iterator[tuple[socket.socket, bool]]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        thread = threading.Thread(target=_node, args=(server, request.param), daemon=True)
        thread.start()
        yield server, request.param
        thread.join(5)


async def _ask_then_stall(server: socket.socket) -> list[wire.Reply | BaseException]:
    """Two LAC requests through a window of one (the second waits for the first's reply);
    then the loop is blocked past their deadline before it reads again."""
    reader, writer = await asyncio.open_connection(*server.getsockname())
    link = NodeLink(MEMBER, reader, writer, window=1, timeout=TIMEOUT)

    def lac(rid: int) -> list[bytes | memoryview]:
        return wire.frame(wire.request(wire.LAC, rid, 1, 0, 1) + wire.lac_body(-1))

    try:
        first = await link.send(lac)
        second = asyncio.ensure_future(link.send(lac))
        await asyncio.sleep(0)  # the second waits for the window
        time.sleep(3 * TIMEOUT)  # a reply (if any) waits in the socket past its deadline

        async def reply_to_second() -> wire.Reply:
            return await (await second)

        async with asyncio.timeout(10 * TIMEOUT):
            return await asyncio.gather(first, reply_to_second(), return_exceptions=True)
    finally:
        await link.close()


def test_only_a_node_that_did_not_answer_fails_at_the_deadline(
    node: tuple[socket.socket, bool],
) -> None:
    server, answers = node
    outcomes = asyncio.run(_ask_then_stall(server))
    if answers:
        assert [getattr(o, "status", o) for o in outcomes] == [wire.Status.OK] * 2
    else:
        assert all(isinstance(o, NodeFailed) for o in outcomes), outcomes
        assert f"no answer within {TIMEOUT:g}s" in str(outcomes[0])
