"""KeyboardInterrupt at any point of the write path leaves the writer consistent.

Two ways to interrupt:

- **injected** (deterministic): a profile function raises ``KeyboardInterrupt`` at the
  k-th point of the producer's code (``woodpecker/producer.py``, ``woodpecker/writer.py``,
  ``shm/allocator.py``) where CPython can deliver a signal, while a writer runs a small
  script of ``write_async`` / ``write`` / ``write_batch`` / ``flush`` / ``close``: entering
  any function it calls, returning into it, right after a C function it called returned
  (so after that call did its work, before its result is kept). k walks the script.
- **signals** (as a user does it): SIGINT to a process in a tight ``write_async`` loop
  inside ``with log.open_writer()``, after a random delay.

After each interrupt: ``close()`` ends within its timeout, every future is resolved
(result or error, none left pending), and at the end every acknowledged entry is read
back with its bytes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import Future
from pathlib import Path

import orjson

import woodpecker as wp
from chaos.scale import pick
from shm import allocator
from woodpecker import producer, writer
from woodpecker.producer import AppendFuture

TRACED = {producer.__file__, writer.__file__, allocator.__file__}
CLOSE_TIMEOUT = 10.0  # the writer's close() must finish (or fail) within this


class Interrupter:
    """Raises KeyboardInterrupt at the ``at``-th point of the write path (this thread) where
    CPython can deliver a signal: on entering a function called from it (RESUME), on
    returning into it, and after a C function it called returns (the end of CALL)."""

    def __init__(self, at: int) -> None:
        self.at = at
        self.seen = 0
        self.where = ""

    def __enter__(self) -> Interrupter:
        sys.setprofile(self._profile)
        return self

    def __exit__(self, *exc: object) -> None:
        sys.setprofile(None)

    def _profile(self, frame, event, arg):
        if event == "c_return":
            here = frame
        elif event in ("call", "return"):
            here = frame if frame.f_code.co_filename in TRACED else frame.f_back
        else:
            return
        if here is None or here.f_code.co_filename not in TRACED:
            return
        self.seen += 1
        if self.seen == self.at:
            name = getattr(arg, "__name__", "") if event == "c_return" else frame.f_code.co_name
            self.where = f"{Path(here.f_code.co_filename).name}:{here.f_lineno} {event} {name}"
            sys.setprofile(None)
            raise KeyboardInterrupt(self.where)


def _script(w: wp.LogWriter, run: int, futures: list[tuple[bytes, Future | AppendFuture]]) -> None:
    """The calls an interrupt may hit: each payload names its run and index."""
    for i in range(6):
        payload = b"r%d-a%d-" % (run, i) + b"x" * 3000
        futures.append((payload, w.write_async(payload)))
    batch = [b"r%d-b%d" % (run, i) for i in range(3)]
    ids = w.write_batch(batch, timeout=CLOSE_TIMEOUT)
    futures.extend((p, _done(i)) for p, i in zip(batch, ids, strict=True))
    payload = b"r%d-w" % run
    futures.append((payload, _done(w.write(payload, timeout=CLOSE_TIMEOUT))))
    w.flush(timeout=CLOSE_TIMEOUT)
    w.close(timeout=CLOSE_TIMEOUT)


def _done(mid: wp.LogMessageId) -> Future:
    future: Future = Future()
    future.set_result(mid)
    return future


def _count_events(log: wp.LogHandle) -> int:
    futures: list[tuple[bytes, Future | AppendFuture]] = []
    with Interrupter(at=-1) as counter:
        _script(log.open_writer(), -1, futures)
    return counter.seen


def test_injected_interrupt_at_every_step(make_config, rng):
    config = make_config("local", writer_arena_size="1MiB", writer_max_inflight_batches=2)
    runs = pick(60, 240)
    with wp.Client(config) as client:
        log = client.create_log("interrupted")
        total = _count_events(log)
        acked: dict[wp.LogMessageId, bytes] = {}
        places, slowest = set(), 0.0
        for run in range(runs):
            # walk the script evenly, with a random offset inside each stride
            at = 1 + (run * total) // runs + rng.randrange(max(1, total // runs))
            w = log.open_writer()
            futures: list[tuple[bytes, Future | AppendFuture]] = []
            with Interrupter(at) as interrupter, contextlib.suppress(KeyboardInterrupt):
                _script(w, run, futures)
            places.add(interrupter.where)
            started = time.monotonic()
            # what `with` does after the interrupt; a clear error is fine (say, the
            # interrupt broke the connection), a hang or a pending append is not
            with contextlib.suppress(wp.WoodpeckerError):
                w.close(timeout=CLOSE_TIMEOUT)
            took = time.monotonic() - started
            slowest = max(slowest, took)
            assert took < CLOSE_TIMEOUT + 1, (
                f"run {run}: close took {took:.1f}s after {interrupter.where}"
            )
            for payload, future in futures:
                assert future.done(), f"run {run}: an append left pending after {interrupter.where}"
                if future.exception(0) is None:
                    acked[future.result(0)] = payload
        table = log.read_table()
    got = dict(
        zip(
            [
                wp.LogMessageId(s, e)
                for s, e in zip(
                    table.column("segment_id").to_pylist(),
                    table.column("entry_id").to_pylist(),
                    strict=True,
                )
            ],
            table.column("payload").to_pylist(),
            strict=True,
        )
    )
    lost = {mid: p[:12] for mid, p in acked.items() if got.get(mid) != p}
    assert lost == {}, f"acknowledged but not read back: {lost}"
    print(
        f"{runs} injected interrupts over {total} events, {len(places)} distinct places, "
        f"{len(acked)} acked entries all read back, slowest close {slowest:.2f}s"
    )


SIGINT_CHILD = textwrap.dedent(
    """
    import sys, orjson, woodpecker as wp
    futures = []
    try:
        with wp.Client() as client, client.open_log("sigint").open_writer() as w:
            print("writing", flush=True)
            i = 0
            while True:
                futures.append(w.write_async(b"%d-" % i + b"x" * 1000))
                i += 1
    except KeyboardInterrupt:
        pass
    acked = [
        [f.result(0).segment_id, f.result(0).entry_id, n]
        for n, f in enumerate(futures) if f.done() and f.exception(0) is None
    ]
    pending = sum(1 for f in futures if not f.done())
    sys.stdout.write(orjson.dumps({"acked": acked, "pending": pending}).decode())
    """
)


def test_sigint_in_a_write_async_loop(make_config, rng):
    """The reported hang: Ctrl-C in a write_async loop with a small arena."""
    config = make_config("local", writer_arena_size="2MiB")
    env = dict(os.environ)
    for flat, value in config.overrides().items():
        env[f"WOODPECKER_{flat.upper()}"] = (
            ",".join(value) if isinstance(value, list) else str(value)
        )
    runs = pick(4, 40)
    acked: dict[tuple[int, int], bytes] = {}
    exits = []
    with wp.Client(config) as client:
        client.create_log("sigint")
        for _ in range(runs):
            proc = subprocess.Popen(
                [sys.executable, "-c", SIGINT_CHILD], env=env, stdout=subprocess.PIPE
            )
            assert proc.stdout is not None
            assert proc.stdout.readline() == b"writing\n"
            time.sleep(rng.uniform(0.05, 1.5))
            proc.send_signal(signal.SIGINT)
            started = time.monotonic()
            try:
                out, _ = proc.communicate(timeout=CLOSE_TIMEOUT + 60)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise AssertionError("the interrupted writer hung") from None
            exits.append(time.monotonic() - started)
            assert proc.returncode == 0, out
            result = orjson.loads(out)
            assert result["pending"] == 0, "appends left pending after close"
            for segment, entry, n in result["acked"]:
                acked[(segment, entry)] = b"%d-" % n + b"x" * 1000
        table = client.open_log("sigint").read_table()
    got = {
        (s, e): p
        for s, e, p in zip(*(table.column(c).to_pylist() for c in table.column_names), strict=True)
    }
    assert {k for k, v in acked.items() if got.get(k) != v} == set()
    print(
        f"{runs} SIGINTs: {len(acked)} acked entries all read back, exit within {max(exits):.2f}s"
    )
