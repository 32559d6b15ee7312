"""Ring allocator for offsets inside a shared-memory arena.

Batches are written in order and mostly freed in order, so a ring (allocate at
the head, reclaim at the tail) is simple and fragmentation-free. Frees may
still arrive out of order (batches of different logs are acknowledged
independently): a freed region is reclaimed once every allocation older than
it has been freed as well.
"""

from __future__ import annotations

from collections import deque

ALIGN = 8  # Arrow IPC messages are 8-byte aligned.


def _align(n: int) -> int:
    return (n + ALIGN - 1) & ~(ALIGN - 1)


class RingAllocator:
    """Hands out 8-byte-aligned, contiguous ``[offset, offset + n)`` ranges.

    Space between the tail (the oldest allocation not yet reclaimed) and the
    head is in use; when the end of the ring is too small for a request, the
    allocation wraps to offset 0 and the skipped end is reclaimed with the
    tail. All operations are O(1) amortized. Not thread-safe: callers lock.
    """

    def __init__(self, size: int) -> None:
        """Manage ``size`` bytes (rounded down to a multiple of 8)."""
        self._capacity = size & ~(ALIGN - 1)
        if self._capacity <= 0:
            raise ValueError(f"allocator size must be at least {ALIGN} bytes, got {size}")
        self._head = 0  # next free offset
        self._tail = 0  # offset of the oldest unreclaimed allocation
        self._order: deque[int] = deque()  # unreclaimed offsets, oldest first
        self._live: set[int] = set()  # allocated, not yet freed
        self._freed: set[int] = set()  # freed, waiting for older ones

    @property
    def capacity(self) -> int:
        """Usable bytes."""
        return self._capacity

    @property
    def free_bytes(self) -> int:
        """Bytes not in use (possibly in two pieces: the end and the start)."""
        if not self._order:
            return self._capacity
        if self._head > self._tail:
            return self._capacity - self._head + self._tail
        return self._tail - self._head

    @property
    def used(self) -> int:
        """Bytes in use, including freed regions not yet reclaimed and padding."""
        return self._capacity - self.free_bytes

    def alloc(self, n: int) -> int | None:
        """Offset of ``n`` free contiguous bytes, or None when they do not fit now."""
        size = _align(n)
        if n <= 0 or size > self._capacity:
            raise ValueError(f"cannot allocate {n} bytes from a {self._capacity}-byte ring")
        if not self._order:
            offset = 0
        elif self._head > self._tail:  # in use: [tail, head); free: the end and the start
            if self._head + size <= self._capacity:
                offset = self._head
            elif size <= self._tail:
                offset = 0
            else:
                return None
        elif self._head + size <= self._tail:  # wrapped; free: [head, tail)
            offset = self._head
        else:
            return None
        # this order keeps the ring consistent whichever statement an interrupt
        # (KeyboardInterrupt) stops before: a skipped head is reclaimed when the ring
        # empties, a live offset not in the order is harmless, and the append commits
        self._head = offset + size
        self._live.add(offset)
        self._order.append(offset)
        return offset

    @property
    def allocations(self) -> int:
        """How many allocations are not reclaimed yet; a mark for ``undo``."""
        return len(self._order)

    def undo(self, mark: int) -> None:
        """Free the allocation made since ``allocations`` was ``mark``, if any.

        For a caller interrupted between ``alloc`` returning and it keeping the
        offset; nothing else may allocate or free in between (callers lock).
        """
        if len(self._order) > mark:
            self.free(self._order[-1])

    def free(self, offset: int) -> None:
        """Release the allocation at ``offset``; reclaims space once older ones are freed."""
        try:
            self._live.remove(offset)
        except KeyError:
            raise ValueError(f"offset {offset} is not allocated") from None
        order = self._order
        if offset != order[0]:
            self._freed.add(offset)
            return
        order.popleft()
        while order and order[0] in self._freed:
            self._freed.remove(order.popleft())
        if order:
            self._tail = order[0]
        else:
            self._head = self._tail = 0
