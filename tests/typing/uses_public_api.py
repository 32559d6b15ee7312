"""A small typed program over the public API; the packaging test type-checks it with mypy."""

from collections.abc import Sequence
from typing import assert_type

import woodpecker as wp


def append_and_read(client: wp.Client, payloads: list[bytes]) -> list[bytes]:
    log: wp.LogHandle = client.open_log("typed-example", create=True)
    with log.open_writer() as writer:
        first: wp.LogMessageId = writer.write(payloads[0])
        rest: Sequence[wp.LogMessageId] = writer.write_batch(payloads[1:])
        assert first < rest[0] if rest else True
        # the future is typed by what it resolves to (Any would not pass assert_type)
        assert_type(writer.write_async(payloads[0]).result(), wp.LogMessageId)
    out: list[bytes] = []
    with log.open_reader(wp.EARLIEST) as reader:
        message: wp.LogMessage | None = reader.read_next(timeout=1.0)
        while message is not None:
            out.append(message.payload)
            message = reader.read_next(timeout=0.1)
    return out


VERSION: str = wp.__version__


async def append_async(payloads: list[bytes]) -> list[wp.LogMessageId]:
    async with wp.AsyncClient() as client:
        log: wp.AsyncLogHandle = await client.open_log("typed-example", create=True)
        async with log.open_writer() as writer:
            first: wp.LogMessageId = await writer.write(payloads[0])
            rest: Sequence[wp.LogMessageId] = await writer.write_batch(payloads[1:])
            pending: wp.AppendFuture[wp.LogMessageId] = writer.write_async(payloads[0])
            last: wp.LogMessageId = await pending
        async with log.open_reader(wp.EARLIEST) as reader:
            message: wp.LogMessage | None = await reader.read_next(timeout=1.0)
            assert message is None or message.id == first
        return [first, *rest, last]
