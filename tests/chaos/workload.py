"""Producers that keep appending while faults strike, recording every outcome in a History.

A producer is one ordered stream of appends (one thread, one writer at a time):
pipelined ``write_async`` calls with a bounded window, now and then a
synchronous ``write_batch``. When its writer breaks (logstore killed, session
fenced, backend down) it settles what was in flight, opens a new writer and
goes on, so the history shows every append's outcome across the fault. It runs
as a thread of the test or as a ``spawn``ed process recording to a file (which
survives a ``kill -9`` of the producer).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import random
import signal
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import woodpecker as wp
from chaos.history import History, HistoryFile, Op
from woodpecker.config import Config

ACK_TIMEOUT = 60.0  # an ack later than this is recorded unknown; it is never a hang
BATCH_EVERY = 16  # one synchronous write_batch every this many appends


class Flag(Protocol):
    def is_set(self) -> bool: ...


class StopFlag:
    """A stop flag shared with producer processes that survives their ``kill -9``.

    A ``multiprocessing.Event`` takes a shared lock on every ``is_set``: a producer
    killed while holding it deadlocks every other producer and the test. One byte of
    shared memory, read and written without a lock, cannot be left locked.
    """

    def __init__(self, ctx: Any) -> None:
        self._value = ctx.RawValue("b", 0)

    def set(self) -> None:
        self._value.value = 1

    def is_set(self) -> bool:
        return bool(self._value.value)


@dataclass
class Plan:
    """What a producer writes: payload sizes (bytes), pipelining window, pacing."""

    sizes: tuple[int, ...] = (32, 200, 1000, 4000)
    big: int = 48_000  # one append in 32 has this size
    window: int = 8
    pause: float = 0.0  # seconds between appends (0: as fast as the pipeline allows)
    seed: int = 0


def settle(history: History, op: Op, future: Any) -> None:
    """Wait (bounded) for an append's outcome and record it."""
    try:
        history.ok(op, future.result(ACK_TIMEOUT))
    except Exception as e:
        history.failed(op, e)


def produce(
    config: Config,
    log_name: str,
    producer: str,
    history: History,
    stop: Flag,
    plan: Plan,
    events: list[str] | None = None,
) -> None:
    """Append until ``stop`` is set; reopen the client's writer after every failure."""
    rng = random.Random(plan.seed)
    seq = 0
    with wp.Client(config) as client:
        while not stop.is_set():
            inflight: deque[tuple[Op, Any]] = deque()
            try:
                log = client.open_log(log_name)
                with log.open_writer() as writer:
                    while not stop.is_set():
                        if seq % BATCH_EVERY == BATCH_EVERY - 1:
                            ops = [history.invoke(producer, seq + i, 64) for i in range(4)]
                            seq += len(ops)
                            try:
                                ids = writer.write_batch([o.payload for o in ops], ACK_TIMEOUT)
                            except Exception as e:
                                for o in ops:
                                    history.failed(o, e)
                                raise
                            for o, mid in zip(ops, ids, strict=True):
                                history.ok(o, mid)
                            continue
                        size = plan.big if rng.random() < 1 / 32 else rng.choice(plan.sizes)
                        op = history.invoke(producer, seq, size)
                        seq += 1
                        try:
                            inflight.append((op, writer.write_async(op.payload)))
                        except Exception as e:
                            history.failed(op, e)
                            raise
                        while len(inflight) >= plan.window:
                            settle(history, *inflight.popleft())
                        if plan.pause:
                            time.sleep(plan.pause)
                    while inflight:
                        settle(history, *inflight.popleft())
            except (wp.WoodpeckerError, TimeoutError) as e:
                while inflight:
                    settle(history, *inflight.popleft())
                if events is not None:
                    events.append(f"{producer}: {type(e).__name__}: {e}")
                time.sleep(0.05)


def produce_in_process(
    config: Config, log_name: str, producer: str, path: str, stop: Any, plan: Plan
) -> None:
    """Entry point of a ``spawn``ed producer: records to the JSON-lines file ``path``."""
    history = History(Path(path), keep=False)  # the parent reads the file
    try:
        produce(config, log_name, producer, history, stop, plan)
    finally:
        history.close()


@dataclass
class Fleet:
    """Producer threads (in this process) and producer processes writing one log."""

    config: Config
    log_name: str
    directory: Path
    plan: Plan = field(default_factory=Plan)
    threads: dict[str, threading.Thread] = field(default_factory=dict)
    processes: dict[str, multiprocessing.process.BaseProcess] = field(default_factory=dict)
    histories: dict[str, History] = field(default_factory=dict)  # thread producers
    events: list[str] = field(default_factory=list)  # errors producers recovered from
    killed: set[str] = field(default_factory=set)  # processes the test killed on purpose

    def __post_init__(self) -> None:
        self._ctx = multiprocessing.get_context("spawn")
        self._stop = StopFlag(self._ctx)
        self._files: list[HistoryFile] = []
        self._seeds = iter(range(self.plan.seed, self.plan.seed + 1_000_000))

    def _plan(self) -> Plan:
        return Plan(**{**self.plan.__dict__, "seed": next(self._seeds)})

    def start_thread(self, name: str) -> None:
        history = self.histories[name] = History()
        plan = self._plan()

        def run() -> None:
            try:
                produce(self.config, self.log_name, name, history, self._stop, plan, self.events)
            except BaseException as e:
                self.events.append(f"{name}: CRASHED: {type(e).__name__}: {e}")
                raise

        thread = threading.Thread(target=run, name=f"producer-{name}", daemon=True)
        self.threads[name] = thread
        thread.start()

    def start_process(self, name: str) -> None:
        path = self.directory / f"history-{name}.jsonl"
        self._files.append(HistoryFile(path))
        proc = self._ctx.Process(
            target=produce_in_process,
            args=(self.config, self.log_name, name, str(path), self._stop, self._plan()),
            name=f"producer-{name}",
            daemon=True,
        )
        proc.start()
        self.processes[name] = proc

    def kill(self, name: str) -> None:
        """SIGKILL a producer process, as a fault (not counted as a crash)."""
        proc = self.processes[name]
        self.killed.add(name)
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(10)

    def crashes(self) -> list[str]:
        """Producers that died of an error they do not recover from (anything but a
        WoodpeckerError or a timeout): a thread's exception, a process's non-zero exit."""
        found = [e for e in self.events if ": CRASHED: " in e]
        for name, proc in self.processes.items():
            if name not in self.killed and proc.exitcode not in (None, 0):
                found.append(f"{name}: CRASHED: process exited with code {proc.exitcode}")
        return found

    def ops(self) -> list[Op]:
        """Every append recorded so far, by threads and by processes (alive or killed)."""
        ops = [op for h in self.histories.values() for op in list(h.ops)]
        return ops + [op for f in self._files for op in f.ops()]

    def live(self) -> list[str]:
        """Producers still running (killed processes excluded)."""
        threads = [n for n, t in self.threads.items() if t.is_alive()]
        return threads + [n for n, p in self.processes.items() if p.is_alive()]

    def acked(self) -> Counter[str]:
        """Acknowledged appends per producer, so far (cheap: only new history lines are read)."""
        acked: Counter[str] = Counter()
        for h in self.histories.values():
            acked.update(h.acked_counts())
        for f in self._files:
            f.refresh()
            acked.update(f.acked)
        return acked

    def wait_progress(self, since: Counter[str], timeout: float, what: str) -> None:
        """Wait until every live producer got an ack after ``since`` (a snapshot of ``acked``)."""
        deadline = time.monotonic() + timeout
        while True:
            crashes = self.crashes()
            assert not crashes, f"{what}: {crashes}"
            now = self.acked()
            stuck = [n for n in self.live() if now[n] <= since[n]]
            if not stuck:
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{what}: producers {stuck} got no ack for {timeout}s; "
                    f"recent producer errors: {self.events[-5:]}"
                )
            time.sleep(0.05)

    def stop(self, timeout: float = 90.0) -> None:
        """Ask every producer to finish; they settle what is in flight and close."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for name, thread in self.threads.items():
            thread.join(max(0.1, deadline - time.monotonic()))
            assert not thread.is_alive(), f"producer thread {name} did not stop in {timeout}s"
        for name, proc in self.processes.items():
            proc.join(max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                raise AssertionError(f"producer process {name} did not stop in {timeout}s")
        for history in self.histories.values():
            history.close()
        crashes = self.crashes()
        assert not crashes, f"producers crashed: {crashes}"

    def kill_all(self) -> None:
        """Teardown: no producer outlives its test."""
        self._stop.set()
        for proc in self.processes.values():
            with contextlib.suppress(Exception):
                proc.kill()
                proc.join(5)
