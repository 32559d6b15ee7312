"""Uploader process: makes block jobs durable, reading their bytes straight out of shm.

The coordinator sends each uploader the producers' arenas (memfds) once, then
block jobs naming byte ranges of those arenas. A job's object is the Arrow IPC
stream header, the batch messages (zero-copy views into the arenas) and the
stream footer; the uploader checksums it, PUTs it (multipart with parts in
parallel above ``uploader.multipart_threshold``) and reports size + checksum.
Several jobs run at once on a thread pool; the store retries within its deadline.

On the local backend a block goes instead at the end of this uploader's append file
of its segment (``SegmentFiles``): one fdatasync, and the reply names the file and
the block's offset in it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections import OrderedDict
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
from woodpecker.storage.local import AppendFile, LocalObjectStore
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


MAX_OPEN_SEGMENT_FILES = 64


class SegmentFiles:
    """This uploader's append files on the local backend, one per segment directory.

    A file left unused for a quarter of ``retention.orphan_grace`` is never appended to
    again: the orphan sweep deletes a file that no committed block names once it is
    older than the grace (by mtime, the last append), and it must never delete one that
    may still take a block. Names are unique per file, so no two writers (uploaders,
    logstores, fenced sessions) ever share one.
    """

    def __init__(self, store: LocalObjectStore, orphan_grace: float) -> None:
        self._store = store
        self._max_idle = orphan_grace / 4
        self._files: OrderedDict[str, AppendFile] = OrderedDict()
        self._lock = threading.Lock()

    def append(self, block_key: str, data: Sequence[Buffer]) -> tuple[str, int]:
        """Append a block named ``<log>/<segment>/<block>`` to its segment's file:
        the file's key and the block's offset in it."""
        segment = block_key.rsplit("/", 1)[0]
        file = self._file(segment)
        try:
            return file.key, file.append(data)
        except BaseException:
            with self._lock:
                if self._files.get(segment) is file:
                    del self._files[segment]
            file.close()
            raise

    def _file(self, segment: str) -> AppendFile:
        with self._lock:
            file = self._files.get(segment)
            fresh = file is not None and time.monotonic() - file.last_append < self._max_idle
            if file is not None and fresh and not file.broken:
                self._files.move_to_end(segment)
                return file
            if file is not None:
                file.close()
            file = self._store.open_append(f"{segment}/blocks-{uuid.uuid4().hex[:16]}.arrows")
            self._files[segment] = file
            while len(self._files) > MAX_OPEN_SEGMENT_FILES:
                self._files.popitem(last=False)[1].close()
            return file


class Uploader:
    """The state of one uploader process: its store, the arenas it mapped, its jobs."""

    def __init__(self, config: Config, sock: socket.socket) -> None:
        self.config = config
        self.sock = sock
        self.requests = metrics.RequestTally()
        store = open_store(config)
        self.store = metrics.MeteredStore(store, self.requests.count)
        self.segment_files = (
            SegmentFiles(store, config.retention.orphan_grace)
            if isinstance(store, LocalObjectStore)
            else None
        )
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
            key, offset = job["key"], 0
            if self.segment_files is not None:
                self.requests.count("append")
                key, offset = self.segment_files.append(key, buffers)
            else:
                upload(
                    self.store,
                    key,
                    buffers,
                    multipart_threshold=self.config.uploader.multipart_threshold,
                    part_size=self.config.uploader.part_size,
                    pool=self.parts,
                )
            reply = wire.encode(
                protocol.DONE,
                {
                    "job": job["job"],
                    "key": key,
                    "offset": offset,
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
