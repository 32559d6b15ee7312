"""kill -9 at random instants of a producer, the logstore (where the coordinator
lives), an uploader, or the whole pool (the logstore's process group).

Producers (spawned processes and a thread) keep writing one log on both backends
while the targets are killed again and again, in a random order. After every kill the producers must
recover by themselves (each gets a new ack), the history checked so far must
hold, and the victim must leave nothing behind: its arena is dropped by every
survivor, the dead logstore's uploaders exit and no survivor holds its lock,
a killed uploader is replaced. At the end the whole log is read back and
checked, the clients close, the logstore idles out, and no memfd arena, temp
file, lock or process of the run remains.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import psutil
import pytest

import woodpecker as wp
from chaos.history import Tail, assert_valid, check, read_back
from chaos.processes import (
    arena_inodes,
    arenas_held,
    family,
    holders,
    logstore_pid,
    uploader_pids,
    wait_logstore,
    wait_until,
)
from chaos.scale import pick
from chaos.workload import Fleet, Plan
from woodpecker.config import Config
from woodpecker.producer import logstore_running

RECOVERY = 45.0  # seconds producers get to be acked again after a kill
SETTLE = 20.0  # seconds for a victim's resources to be released


def crash_config(make_config, backend: str) -> Config:
    """Small blocks, segments and arenas: many of each are in flight at any kill instant."""
    return make_config(
        backend,
        uploader_max_block_bytes="64KiB",
        segment_max_bytes="2MiB",
        segment_max_blocks=64,
        writer_arena_size="8MiB",
        writer_max_batch_bytes="256KiB",
        logstore_idle_exit=1.0,
    )


def temp_files(config: Config) -> set[Path]:
    """Temp files of local puts (hidden ``.wp-tmp-*`` names) under the data directory."""
    data = Path(config.storage.root) / "data"
    return set(data.rglob(".wp-tmp-*")) if data.exists() else set()


class Loop:
    """One crash loop: the fleet, the reader checking as it goes, and the leak checks."""

    def __init__(self, config: Config, fleet: Fleet, rng, log: wp.LogHandle) -> None:
        self.config = config
        self.fleet = fleet
        self.rng = rng
        self.tail = Tail(log)
        # every logstore of the run, with its start time: over a long run pids are reused
        self.logstores: dict[int, float] = {}
        self.replacements = 0

    def _record(self, store: int) -> None:
        with contextlib.suppress(psutil.Error):
            self.logstores.setdefault(store, psutil.Process(store).create_time())

    def _logstores(self) -> list[int]:
        """The run's logstores still alive (not other processes that got their pids)."""
        alive = []
        for pid, started in self.logstores.items():
            with contextlib.suppress(psutil.Error):
                if psutil.Process(pid).create_time() == started:
                    alive.append(pid)
        return alive

    def pipeline(self) -> set[int]:
        """This test's processes: itself, its producers, every logstore of the run."""
        store = logstore_pid(self.config)
        if store is not None:
            self._record(store)
        return family([os.getpid(), *self._logstores()])

    def kill_producer(self) -> None:
        victims = [n for n, p in self.fleet.processes.items() if p.is_alive()]
        name = self.rng.choice(victims)
        proc = self.fleet.processes[name]
        arenas = arena_inodes(proc.pid)
        assert arenas, f"producer {name} holds no arena before the kill"
        self.fleet.kill(name)
        self.replacements += 1
        self.fleet.start_process(f"{name.split('.')[0]}.{self.replacements}")

        def dropped() -> bool:
            return not any(arenas & held for held in arenas_held(self.pipeline()).values())

        wait_until(dropped, SETTLE, f"the arena of killed producer {name} is still held")

    def kill_logstore(self, *, with_uploaders: bool = False) -> None:
        """SIGKILL the logstore (the coordinator lives in it), or its whole process group."""
        store = wait_logstore(self.config)
        self._record(store)
        uploaders = uploader_pids(store)
        if with_uploaders:
            os.killpg(store, signal.SIGKILL)  # a logstore leads its own session and group
        else:
            os.kill(store, signal.SIGKILL)
        wait_until(
            lambda: not [p for p in uploaders if _alive(p)],
            SETTLE,
            f"uploaders {uploaders} of the killed logstore {store} did not exit",
        )
        fresh = wait_logstore(self.config, RECOVERY, other_than=store)
        # a child forked by a logstore holds the lock fd until its exec closes it, so a
        # holder may show up for an instant; one that stays is a leak
        stale = lambda: set(holders(self.config.logstore_lock)) - {fresh}  # noqa: E731
        try:
            wait_until(lambda: not stale(), SETTLE, "the lock is still held")
        except AssertionError:
            raise AssertionError(
                f"processes still hold the lock of the killed logstore {store}: "
                f"{_describe(stale())}"
            ) from None

    def kill_pool(self) -> None:
        self.kill_logstore(with_uploaders=True)

    def kill_uploader(self) -> None:
        store = wait_logstore(self.config)
        wait_until(lambda: uploader_pids(store), SETTLE, f"logstore {store} has no uploader")
        victims = uploader_pids(store)
        victim = self.rng.choice(victims)
        os.kill(victim, signal.SIGKILL)
        expected = self.config.uploader.processes
        wait_until(
            lambda: len(set(uploader_pids(store)) - {victim}) == expected,
            SETTLE,
            f"logstore {store} did not replace killed uploader {victim}",
        )

    def check_so_far(self) -> None:
        acked = [op.id for op in self.fleet.ops() if op.id is not None]
        entries = self.tail.poll(until=max(acked, default=None))
        # the ops snapshot is taken after the read: every entry read was invoked before it
        report = check(self.fleet.ops(), entries, complete=False)
        assert_valid(report)

    def assert_clean(self) -> None:
        """After the last client closed and the logstore idled out: nothing of the run remains
        (no logstore, lock, socket, process, arena or temp file)."""
        wait_until(
            lambda: logstore_pid(self.config) is None,
            SETTLE,
            "the logstore did not idle out after its last client closed",
        )
        assert not logstore_running(self.config), "the logstore lock is still held"
        assert not self.config.logstore_socket.exists(), "the logstore left its socket behind"
        survivors = lambda: {p for p in family(self._logstores()) if _alive(p)}  # noqa: E731
        try:
            wait_until(lambda: not survivors(), SETTLE, "processes of the run still alive")
        except AssertionError as e:
            raise AssertionError(f"{e}: {_describe(survivors())}") from None
        wait_until(
            lambda: not arenas_held(family([os.getpid()])),
            SETTLE,
            "memfd arenas still held by this process or its children",
        )
        left = temp_files(self.config)
        assert not left, f"temp files left behind: {sorted(p.name for p in left)}"


def _describe(pids: set[int]) -> list[str]:
    """pid, parent, state and command of each live process (evidence for a leak)."""
    found = []
    for pid in sorted(pids):
        with contextlib.suppress(psutil.Error):
            p = psutil.Process(pid)
            found.append(f"{pid} (parent {p.ppid()}, {p.status()}): {' '.join(p.cmdline())[:80]}")
    return found


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


TARGETS = ("producer", "logstore", "pool", "uploader")


def test_kill9_loop(backend, make_config, fleet_factory, rng):
    """Each target is killed ``per_target`` times, in a random order, while 3 producers write."""
    # WOODPECKER_CHAOS_KILLS overrides the kills per target (a long run sized to the time at hand)
    per_target = int(os.environ.get("WOODPECKER_CHAOS_KILLS", "0")) or pick(3, 500)
    check_every = pick(1, 10)  # the history check reads everything so far: O(appends)
    schedule = [t for t in TARGETS for _ in range(per_target)]
    rng.shuffle(schedule)
    config = crash_config(make_config, backend)
    with wp.Client(config) as client:
        log = client.create_log("crash")
    fleet = fleet_factory(config, log.name, Plan(pause=0.002, seed=rng.randrange(1 << 30)))
    for p in range(2):
        fleet.start_process(f"p{p}")
    fleet.start_thread("t0")
    stalls: dict[str, float] = dict.fromkeys(TARGETS, 0.0)
    with wp.Client(config) as reader_client:
        loop = Loop(config, fleet, rng, reader_client.open_log(log.name))
        fleet.wait_progress(fleet.acked(), RECOVERY, "start-up")
        for k, target in enumerate(schedule):
            time.sleep(rng.uniform(0.05, 0.5))
            start = time.monotonic()
            getattr(loop, f"kill_{target}")()
            # acks after the kill only: one in flight at the kill proves no recovery
            fleet.wait_progress(fleet.acked(), RECOVERY, f"recovery after kill {k + 1} ({target})")
            stalls[target] = max(stalls[target], time.monotonic() - start)
            if (k + 1) % check_every == 0:
                loop.check_so_far()
            if (k + 1) % 100 == 0:  # a long run's progress (seen with -s)
                print(f"kill9 loop {backend}: {k + 1} of {len(schedule)} kills, all recovered")
        fleet.stop()
        loop.tail.close()
        report = check(fleet.ops(), read_back(reader_client.open_log(log.name)))
        worst = ", ".join(f"{t} {s:.1f}s" for t, s in stalls.items())
        print(
            f"kill9 loop {backend}: {len(schedule)} kills ({per_target} per target); "
            f"{report.summary()}; longest kill-to-all-acked: {worst}"
        )
        assert_valid(report)
        assert report.ok > 0
    loop.assert_clean()


def catch_a_block_in_flight(config: Config, writer: wp.LogWriter, payload: bytes) -> list:
    """Append large entries until a block is being written (an append file grows while
    appends are pending); the futures."""
    data = Path(config.storage.root) / "data"
    futures = [writer.write_async(payload) for _ in range(8)]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if any(not f.done() for f in futures) and any(
            p.stat().st_size > len(payload) for p in data.rglob("*.arrows")
        ):
            return futures
        time.sleep(0.001)
    raise RuntimeError("no block was caught in flight within 20s")


@pytest.mark.parametrize("victim", ["uploader", "pool"])
def test_a_block_torn_by_a_kill_is_never_read(make_config, victim):
    """A block half-written when its uploader (or the whole pool) is killed stays an
    uncommitted tail of its append file: the redone job goes to a new file, every
    acknowledged entry reads back whole, and no temp file is left behind.

    Regression (temp files): the killed pool's uploaders can stay unreaped zombies for
    seconds; they once counted as alive, so their temp files survived the next
    logstore's sweeps."""
    config = make_config("local", logstore_idle_exit=1.0)
    payload = os.urandom(4 << 20)  # a block long enough to be caught in the act
    with wp.Client(config) as client:
        log = client.create_log("killed-put")
        writer = log.open_writer()
        writer.write(b"warm-up")
        store = wait_logstore(config)
        futures = catch_a_block_in_flight(config, writer, payload)
        if victim == "uploader":
            for pid in uploader_pids(store):
                os.kill(pid, signal.SIGKILL)
            acked = [f.result(60) for f in futures]  # the restarted uploaders redo the jobs
            writer.close()
        else:
            os.killpg(store, signal.SIGKILL)
            acked = []
            for f in futures:
                with contextlib.suppress(wp.OutcomeUnknownError):
                    acked.append(f.result(60))
            with contextlib.suppress(wp.LogstoreUnavailableError):
                writer.close()
            with log.open_writer() as writer:  # a new logstore
                acked.append(writer.write(payload, timeout=60))
        read = {}
        with log.open_reader(wp.EARLIEST) as reader:
            while (message := reader.read_next(timeout=5)) is not None:
                read[message.id] = message.payload
        assert acked, "nothing was acknowledged"
        assert all(read.get(i) == payload for i in acked), "an acknowledged entry is wrong"
    wait_until(lambda: logstore_pid(config) is None, SETTLE, "the logstore did not idle out")
    left = temp_files(config)
    assert not left, f"killed writes left {sorted(p.name for p in left)}"
