"""Uploader process: makes block jobs durable, reading their bytes straight out of shm.

The coordinator sends each uploader the producers' arenas (memfds) once, then
block jobs naming byte ranges of those arenas. A job's object is the Arrow IPC
stream header, the batch messages (zero-copy views into the arenas) and the
stream footer; the uploader checksums it, PUTs it (multipart with parts in
parallel above ``uploader.multipart_threshold``) and reports size + checksum.
Several jobs run at once on a thread pool; the store retries within its deadline.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson

from shm import Arena, recv_msg, send_msg
from woodpecker import wire
from woodpecker.config import Config
from woodpecker.errors import StorageUnavailableError, WoodpeckerError, to_wire
from woodpecker.format import STREAM_FOOTER, STREAM_HEADER, check_batch_message, checksum
from woodpecker.storage import ObjectStore, open_store
from workers import metrics, protocol

Buffer = bytes | memoryview


def split_parts(buffers: Sequence[Buffer], part_size: int) -> list[list[Buffer]]:
    """Cut a list of buffers into consecutive groups of ``part_size`` bytes (last one shorter)."""
    parts: list[list[Buffer]] = [[]]
    room = part_size
    for buf in buffers:
        view = memoryview(buf)
        while len(view):
            if room == 0:
                parts.append([])
                room = part_size
            take = view[:room]
            parts[-1].append(take)
            room -= len(take)
            view = view[len(take) :]
    return parts


def upload(
    store: ObjectStore,
    key: str,
    buffers: Sequence[Buffer],
    *,
    multipart_threshold: int,
    part_size: int,
    pool: ThreadPoolExecutor | None,
) -> None:
    """PUT ``buffers`` as one object, in parallel parts when it is large."""
    size = sum(len(b) for b in buffers)
    if size <= multipart_threshold or pool is None:
        store.put(key, buffers)
        return
    upload_id = store.create_multipart(key)
    try:
        futures = [
            pool.submit(store.upload_part, key, upload_id, n, part)
            for n, part in enumerate(split_parts(buffers, part_size), start=1)
        ]
        store.complete_multipart(key, upload_id, [f.result() for f in futures])
    except BaseException:
        store.abort_multipart(key, upload_id)
        raise


class Uploader:
    """The state of one uploader process: its store, the arenas it mapped, its jobs."""

    def __init__(self, config: Config, sock: socket.socket) -> None:
        self.config = config
        self.sock = sock
        self.requests = metrics.RequestTally()
        self.store = metrics.MeteredStore(open_store(config), self.requests.count)
        self.arenas: dict[int, Arena] = {}
        self.send_lock = threading.Lock()
        self.jobs = ThreadPoolExecutor(config.uploader.max_inflight, "upload")
        self.parts = ThreadPoolExecutor(config.uploader.max_inflight, "part")

    def run(self) -> None:
        while True:
            try:
                frame, fds = recv_msg(self.sock)
            except (EOFError, ConnectionError):
                return  # the coordinator is gone: nobody to report to
            kind = frame[0]
            if kind == protocol.ARENA:
                _, producer, size = protocol.ARENA_FMT.unpack(frame)
                # refused (not a sealed memfd of that size): its jobs fail with KeyError
                with contextlib.suppress(OSError, ValueError):
                    self.arenas[producer] = Arena.attach(fds[0], size)
            elif kind == protocol.DROP_ARENA:
                _, producer = protocol.DROP_FMT.unpack(frame)
                arena = self.arenas.pop(producer, None)
                if arena is not None:
                    arena.close()
            elif kind == protocol.JOB:
                _, job = wire.decode(frame)
                self.jobs.submit(self._run_job, job)

    def _run_job(self, job: dict[str, Any]) -> None:
        views: list[memoryview] = []
        try:
            for p, off, n, count in job["parts"]:
                views.append(self.arenas[p].view(off, n))
                check_batch_message(views[-1], count, f"{job['key']}: producer {p} batch")
            buffers = [STREAM_HEADER, *views, STREAM_FOOTER]
            digest = checksum(buffers)
            upload(
                self.store,
                job["key"],
                buffers,
                multipart_threshold=self.config.uploader.multipart_threshold,
                part_size=self.config.uploader.part_size,
                pool=self.parts,
            )
            reply = wire.encode(
                protocol.DONE,
                {
                    "job": job["job"],
                    "checksum": digest,
                    "size": sum(len(b) for b in buffers),
                    "requests": self.requests.take(),
                },
            )
        except Exception as e:  # every failure goes back to the coordinator, typed
            kind = type(e) if isinstance(e, WoodpeckerError) else StorageUnavailableError
            reply = wire.encode(
                protocol.FAILED,
                {
                    "job": job["job"],
                    **to_wire(kind(f"{job['key']}: {e}")),
                    "requests": self.requests.take(),
                },
            )
        finally:
            for v in views:
                v.release()
        with self.send_lock:
            try:
                send_msg(self.sock, reply)
            except OSError:
                os._exit(0)  # coordinator gone


def main() -> None:
    """Entry point: ``python -m workers.uploader FD`` with the config as JSON on stdin."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the logstore decides when we stop
    config = Config(env={}, **orjson.loads(sys.stdin.buffer.read()))
    sock = socket.socket(fileno=int(sys.argv[1]))
    Uploader(config, sock).run()
    os._exit(0)


if __name__ == "__main__":
    main()
