"""The fork rule: a Client, writer or reader inherited through ``fork`` refuses use.

A forked child shares its parent's logstore socket, shared-memory arena and etcd
channels, but none of the threads that serve them. Using them from the child
would interleave the child's frames with the parent's (the parent's ack thread
then meets acks it never asked for) and wait forever for replies nobody reads.
So every such object is registered here, and right after a fork the child marks
all of them unusable: their next use raises ``ForkedClientError``, and closing
them in the child releases nothing the parent still uses. A new ``Client`` in the
child works as usual.
"""

from __future__ import annotations

import os
import weakref
from typing import Protocol

from woodpecker.errors import ForkedClientError


class Inheritable(Protocol):
    def _forked(self, error: ForkedClientError) -> None:
        """Called in the child right after a fork (only one thread runs there then)."""


_LIVE: weakref.WeakSet[Inheritable] = weakref.WeakSet()


def track(obj: Inheritable) -> None:
    """Have ``obj._forked(error)`` called in every child forked while it lives."""
    _LIVE.add(obj)


def _after_fork_in_child() -> None:
    parent = os.getppid()
    error = ForkedClientError(
        f"this object was created in process {parent}, before a fork; it cannot be used "
        f"in the child (process {os.getpid()}): create a new Client after fork"
    )
    for obj in list(_LIVE):
        obj._forked(error)


os.register_at_fork(after_in_child=_after_fork_in_child)
