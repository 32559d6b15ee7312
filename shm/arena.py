"""A shared-memory arena backed by an anonymous ``memfd``.

Why memfd: it has no name in ``/dev/shm`` or any other file system, so nothing
can be left behind. The kernel frees the memory when the last file descriptor
and the last mapping go away, which also happens when every holder is killed
with ``kill -9``. Other processes get access only by receiving the descriptor
over a Unix socket (SCM_RIGHTS, see :mod:`shm.fdpass`).
"""

from __future__ import annotations

import fcntl
import mmap
import os
import warnings
from types import TracebackType
from typing import Self

# Size is fixed for the arena's life: a peer that shrank the file would make
# every other process's reads of the lost pages die with SIGBUS.
_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL


class Arena:
    """A fixed-size region of shared memory, mapped into this process.

    The producer creates it (:meth:`create`), sends :attr:`fd` to other
    processes, which :meth:`attach`. Views are zero-copy ``memoryview`` slices
    of the mapping.

    Callers must release the views they took (``view.release()`` or drop every
    reference) before :meth:`close`; a view still alive at close time keeps the
    mapping (not the descriptor) alive until it is released.
    """

    def __init__(self, fd: int, size: int, mapping: mmap.mmap, writable: bool) -> None:
        """Wrap an already mapped descriptor; use :meth:`create` or :meth:`attach`."""
        self._fd = fd
        self._size = size
        self._mmap: mmap.mmap | None = mapping
        self._writable = writable
        self._rw: memoryview | None = memoryview(mapping) if writable else None
        self._ro: memoryview | None = memoryview(mapping).toreadonly()

    @classmethod
    def create(cls, size: int, name: str = "woodpecker-arena") -> Arena:
        """Create a new arena of ``size`` bytes, readable and writable.

        The memfd is close-on-exec (children get it only when it is sent to
        them), mode 0600 (only this user; it is in no file system anyway, so it
        is reachable only through a holder's descriptor), and sealed against
        resizing so peers can trust its size.
        """
        if size <= 0:
            raise ValueError(f"arena size must be positive, got {size}")
        fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.fchmod(fd, 0o600)
            os.ftruncate(fd, size)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
            mapping = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, size, mapping, writable=True)

    @classmethod
    def attach(cls, fd: int, size: int, *, writable: bool = False) -> Arena:
        """Map an arena descriptor received from another process.

        Takes ownership of ``fd``: it is closed by :meth:`close`, or right away
        if attaching fails. The descriptor must be a memfd sealed against
        shrinking (as :meth:`create` makes it), so a peer can never truncate
        the memory under this process's reads.
        """
        try:
            if size <= 0:
                raise ValueError(f"arena size must be positive, got {size}")
            try:
                seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
            except OSError as e:
                raise ValueError(f"fd {fd} is not a memfd arena ({e})") from None
            if not seals & fcntl.F_SEAL_SHRINK:
                raise ValueError(f"fd {fd} is not sealed against shrinking; refusing to map it")
            actual = os.fstat(fd).st_size
            if actual < size:
                raise ValueError(f"arena fd {fd} holds {actual} bytes, fewer than {size}")
            prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
            mapping = mmap.mmap(fd, size, mmap.MAP_SHARED, prot)
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, size, mapping, writable=writable)

    @property
    def fd(self) -> int:
        """The memfd, to send to other processes (still owned by this arena)."""
        return self._fd

    @property
    def size(self) -> int:
        """Mapped size in bytes."""
        return self._size

    @property
    def writable(self) -> bool:
        """Whether :meth:`writable_view` is allowed."""
        return self._writable

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has run."""
        return self._mmap is None

    def view(self, offset: int, length: int) -> memoryview:
        """A read-only zero-copy view of ``[offset, offset + length)``."""
        self._check(offset, length)
        assert self._ro is not None
        return self._ro[offset : offset + length]

    def writable_view(self, offset: int, length: int) -> memoryview:
        """A writable zero-copy view of ``[offset, offset + length)``."""
        self._check(offset, length)
        if self._rw is None:
            raise ValueError("arena is attached read-only")
        return self._rw[offset : offset + length]

    def _check(self, offset: int, length: int) -> None:
        if self._mmap is None:
            raise ValueError("arena is closed")
        if offset < 0 or length < 0 or offset + length > self._size:
            raise ValueError(
                f"range [{offset}, {offset}+{length}) is outside the arena [0, {self._size})"
            )

    def close(self) -> None:
        """Unmap and close the descriptor. Idempotent.

        If views handed out earlier are still alive the mapping cannot be
        unmapped now: :attr:`fd` is closed anyway, a ``ResourceWarning`` is
        issued, and the mapping (with the copy of the descriptor that ``mmap``
        keeps) is freed when the last such view is released.
        """
        if self._mmap is None:
            return
        mapping, self._mmap = self._mmap, None
        for base in (self._ro, self._rw):
            if base is not None:
                base.release()
        self._ro = self._rw = None
        try:
            mapping.close()
        except BufferError:
            warnings.warn(
                "Arena closed while views are still exported; the mapping is freed "
                "when they are released",
                ResourceWarning,
                stacklevel=2,
            )
        finally:
            os.close(self._fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
