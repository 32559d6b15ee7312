"""Owner-only files: everything Woodpecker creates under its storage root.

The storage root holds the log data (local backend), the embedded etcd (its data
and Unix sockets), the logstore socket, locks and logs. Another local user must
not read or reach any of it, so each directory is created ``0700`` and each file
``0600``. The mode is given at creation (``mkdir``, ``open``), never fixed later
by a sweep: a umask can only remove bits, so no umask makes these readable by
others, and there is no window in which they are. Paths that already exist keep
their mode; ``woodpecker doctor`` names those that others can reach.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600
_OTHERS = stat.S_IRWXG | stat.S_IRWXO


def make_private_dirs(path: str | os.PathLike[str]) -> list[str]:
    """Create ``path`` and each missing parent ``0700`` (``os.makedirs`` would make parents
    with the umask's default mode); returns the directories that were missing, top first."""
    missing: list[str] = []
    current = os.path.abspath(path)
    while not os.path.isdir(current):
        missing.append(current)
        current = os.path.dirname(current)
    missing.reverse()
    for directory in missing:
        with contextlib.suppress(FileExistsError):  # a concurrent creator won
            os.mkdir(directory, DIR_MODE)
    return missing


def private_opener(path: str, flags: int) -> int:
    """An ``opener`` for ``open()`` that creates the file ``0600``."""
    return os.open(path, flags | os.O_CLOEXEC, FILE_MODE)


def loose_paths(root: str | os.PathLike[str]) -> list[tuple[Path, int]]:
    """The root and its direct entries that group or others may access, with their modes.

    Only the top level is looked at: a private root hides everything below it.
    """
    root = Path(root)
    try:
        entries = [root, *sorted(root.iterdir())]
    except (FileNotFoundError, NotADirectoryError):
        return []
    loose = []
    for path in entries:
        try:
            st = path.lstat()
        except FileNotFoundError:
            continue
        if not stat.S_ISLNK(st.st_mode) and st.st_mode & _OTHERS:
            loose.append((path, stat.S_IMODE(st.st_mode)))
    return loose
