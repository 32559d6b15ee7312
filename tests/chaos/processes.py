"""The processes behind one logstore socket, and what they hold: the victims of fault tests.

A logstore may have been launched by any producer (even one killed since, which
reparents it to init), so it is found by the lock file it holds, not by
ancestry. Its uploaders are its children. What a process holds is read from
``/proc``: open descriptors and mappings of memfd arenas (by inode), and open
lock files.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable
from pathlib import Path

import psutil

from woodpecker.config import Config

ARENA_PREFIX = "/memfd:woodpecker"


def holders(path: Path) -> list[int]:
    """Pids of the processes with ``path`` open."""
    target = str(path)
    found = []
    for pid in psutil.pids():
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                        found.append(pid)
                        break
    return found


def logstore_pid(config: Config) -> int | None:
    """The live logstore serving ``config``'s socket (the holder of its lock), if any.

    A child the logstore is forking (an uploader before its exec) holds the lock's fd
    and the logstore's command line for an instant: the logstore is the holder whose
    parent is not a holder too.
    """
    found: dict[int, int] = {}  # pid -> parent pid
    for pid in holders(config.logstore_lock):
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            if proc.status() != psutil.STATUS_ZOMBIE and "workers.logstore" in proc.cmdline():
                found[pid] = proc.ppid()
    return next((pid for pid, parent in found.items() if parent not in found), None)


def wait_logstore(config: Config, timeout: float = 30.0, *, other_than: int | None = None) -> int:
    """The logstore's pid once one (other than ``other_than``) serves the socket."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = logstore_pid(config)
        if pid is not None and pid != other_than:
            return pid
        time.sleep(0.05)
    raise AssertionError(f"no logstore serves {config.logstore_socket} after {timeout}s")


def uploader_pids(logstore: int) -> list[int]:
    with contextlib.suppress(psutil.Error):
        return [
            c.pid
            for c in psutil.Process(logstore).children()
            if "workers.uploader" in c.cmdline() and c.status() != psutil.STATUS_ZOMBIE
        ]
    return []


def family(roots: Iterable[int]) -> set[int]:
    """The given processes and all their live descendants."""
    pids: set[int] = set()
    for pid in roots:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            pids.add(pid)
            pids.update(c.pid for c in proc.children(recursive=True))
    return pids


def arena_inodes(pid: int) -> set[int]:
    """Inodes of the memfd arenas a process holds, by descriptor or by mapping."""
    inodes: set[int] = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(ARENA_PREFIX):
                    inodes.add(os.stat(f"/proc/{pid}/fd/{fd}").st_ino)
    with contextlib.suppress(OSError), open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].startswith(ARENA_PREFIX):
                inodes.add(int(fields[4]))
    return inodes


def arenas_held(pids: Iterable[int]) -> dict[int, set[int]]:
    """``{pid: arena inodes}`` for the processes that hold any."""
    held = {pid: arena_inodes(pid) for pid in pids}
    return {pid: inodes for pid, inodes in held.items() if inodes}


def wait_until(predicate, timeout: float, what: str, interval: float = 0.1) -> None:
    """Poll ``predicate`` until true; fail naming ``what`` (and its last value) past the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} (still not true after {timeout}s)")
        time.sleep(interval)
