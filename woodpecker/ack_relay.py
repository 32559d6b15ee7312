"""Acks to event loops: one wakeup per pass of the ack thread, not one per append.

The producer link's ack thread resolves every append of a batch in one pass
and marks it (``ack_pass``); an ``AckRelay`` per event loop collects the appends
resolved during the pass and wakes its loop once when the pass ends. The
producer (which marks passes and lets an ``AppendFuture`` be awaited) and the
asyncio API (``woodpecker.aio``) both use this module; it imports neither.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from woodpecker.producer import AppendFuture

_ack_pass = threading.local()  # .active: this thread is resolving a pass of acks
_pass_listeners: weakref.WeakSet[Any] = weakref.WeakSet()
_pass_listeners_lock = threading.Lock()


def in_ack_pass() -> bool:
    """Whether the calling thread is resolving a pass of acks (one or more batches)."""
    return getattr(_ack_pass, "active", False)


def listen_to_ack_passes(listener: Any) -> None:
    """Call ``listener.ack_pass_ended()`` on the ack thread after each pass of acks; held
    weakly. Lets an event loop be woken once per batch rather than once per append."""
    with _pass_listeners_lock:
        _pass_listeners.add(listener)


def ack_pass_ended() -> None:
    """Tell every listener that the pass of acks on the calling thread has ended."""
    with _pass_listeners_lock:
        listeners = list(_pass_listeners)
    for listener in listeners:
        listener.ack_pass_ended()


@contextlib.contextmanager
def ack_pass() -> Iterator[None]:
    """Mark the calling thread as resolving a pass of acks; listeners hear its end."""
    _ack_pass.active = True
    try:
        yield
    finally:
        _ack_pass.active = False


class AckRelay:
    """Hands resolved appends to one event loop, one ``call_soon_threadsafe`` per ack pass.

    The ack thread resolves every append of a batch (of several batches, when
    they arrive together) in one pass; the relay collects them and wakes the
    loop once when the pass ends. An append resolved anywhere else (a failure
    found on another thread) wakes the loop at once.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._ready: list[tuple[AppendFuture[Any], asyncio.Future[Any]]] = []
        self._scheduled = False
        self.wakeups = 0  # call_soon_threadsafe calls so far (tests, benchmarks)
        listen_to_ack_passes(self)

    def watch(self, append: AppendFuture[Any]) -> asyncio.Future[Any]:
        """An asyncio future of this loop that gets the append's id(s) or error."""
        future = self.loop.create_future()
        if append.done():
            _settle(append, future)
        else:
            append.add_done_callback(lambda a: self._arrived(a, future))
        return future

    def _arrived(self, append: AppendFuture[Any], future: asyncio.Future[Any]) -> None:
        """Queue the result; the end of the ack pass wakes the loop (or now, off the pass)."""
        with self._lock:
            self._ready.append((append, future))
        if not in_ack_pass():
            self.ack_pass_ended()

    def ack_pass_ended(self) -> None:
        """Wake the loop if results wait and no drain is pending."""
        with self._lock:
            if self._scheduled or not self._ready:
                return
            self._scheduled = True
            self.wakeups += 1
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is left to tell
            self.loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        with self._lock:
            ready, self._ready = self._ready, []
            self._scheduled = False
        for append, future in ready:
            _settle(append, future)


def _settle(append: AppendFuture[Any], future: asyncio.Future[Any]) -> None:
    if future.done():  # the waiter was cancelled: the append itself went on
        return
    error = append.exception(0)
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(append.result(0))


_relays: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AckRelay] = (
    weakref.WeakKeyDictionary()
)
_relays_lock = threading.Lock()


def relay_for_running_loop() -> AckRelay:
    """The relay of the running event loop (made on first use)."""
    loop = asyncio.get_running_loop()
    with _relays_lock:
        relay = _relays.get(loop)
        if relay is None:
            relay = _relays[loop] = AckRelay(loop)
    return relay
