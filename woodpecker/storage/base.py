"""The ``ObjectStore`` contract every backend (local file system, S3) fulfils.

The write pipeline hands blocks over as lists of memoryviews into shared memory,
so every write method accepts one buffer or a sequence of buffers and never needs
them joined. Keys are ``/``-separated relative paths, checked the same way on every
backend so that a key valid on one store is valid on all of them.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Self

BytesLike = bytes | bytearray | memoryview
"""One contiguous buffer (anything supporting the buffer protocol works at run time)."""

Data = BytesLike | Sequence[BytesLike]
"""What the write methods accept: one buffer, or a list / tuple of buffers written in order."""

MIN_PART_SIZE = 5 * 1024 * 1024
"""S3 rejects multipart uploads whose parts but the last are smaller than this."""

RESERVED_PREFIX = ".wp-"
"""Key components starting with this are the stores' own (temp files, staging, probes)."""

MAX_KEY_BYTES = 1024
"""S3's limit on an object name; enforced everywhere so local keys stay portable."""


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object: its key (relative to the store), size in bytes, mtime in seconds."""

    key: str
    size: int
    mtime: float


@dataclass(frozen=True)
class UploadInfo:
    """A multipart upload started and neither completed nor aborted (it may be abandoned)."""

    key: str
    upload_id: str
    initiated: float  # seconds since the epoch


@dataclass(frozen=True)
class PartInfo:
    """An uploaded part of a multipart upload, handed back to ``complete_multipart``."""

    part_number: int
    etag: str
    size: int


@contextlib.contextmanager
def buffer_views(data: Data) -> Iterator[list[memoryview]]:
    """Byte views over ``data`` (one buffer or a list / tuple of them), without copying.

    The views are released on exit, even when an exception (which may be kept
    alive, e.g. in a future) still references them: a caller must always be able
    to close or reuse its shared-memory arena once the write returned or failed.
    """
    buffers = data if isinstance(data, list | tuple) else (data,)
    views = [memoryview(b).cast("B") for b in buffers]
    try:
        yield views
    finally:
        for view in views:
            view.release()


def _check_components(what: str, value: str, components: list[str]) -> None:
    for part in components:
        if part in ("", ".", ".."):
            raise ValueError(f"invalid {what} {value!r}: empty, '.' or '..' path component")
        if part.startswith(RESERVED_PREFIX):
            raise ValueError(
                f"invalid {what} {value!r}: components starting with {RESERVED_PREFIX!r} "
                "are reserved for the store"
            )


def _check_text(what: str, value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"invalid {what} {value!r}: must be a str")
    if "\x00" in value or "\\" in value:
        raise ValueError(f"invalid {what} {value!r}: NUL and backslash are not allowed")
    if value.startswith("/"):
        raise ValueError(f"invalid {what} {value!r}: must be relative (no leading '/')")
    if len(value.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise ValueError(f"invalid {what} {value[:64]!r}...: longer than {MAX_KEY_BYTES} bytes")
    return value


def validate_key(key: str) -> str:
    """Return ``key`` if it is a safe relative object key, else raise ``ValueError`` naming it.

    Rejected: empty keys, absolute keys, empty / ``.`` / ``..`` components (so
    ``a//b`` and a trailing ``/`` too), NUL, backslash, reserved components.
    """
    _check_text("key", key)
    if not key:
        raise ValueError("invalid key '': must not be empty")
    _check_components("key", key, key.split("/"))
    return key


def validate_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is ``""`` or a key prefix (may end in ``/``), else ``ValueError``."""
    _check_text("prefix", prefix)
    if prefix:
        _check_components("prefix", prefix, prefix.removesuffix("/").split("/"))
    return prefix


def check_range(offset: int, length: int | None) -> None:
    """Reject negative ranges before any I/O, with the same message on every backend."""
    if offset < 0 or (length is not None and length < 0):
        raise ValueError(f"invalid range: offset={offset}, length={length}")


class ObjectStore(abc.ABC):
    """Durable objects addressed by key: what the uploaders write and the readers read.

    Every method is safe to call from several threads. A store must not be shared
    across ``fork``: each process opens its own. Failures of the backend surface as
    ``StorageUnavailableError`` (after bounded retries where the backend is remote),
    missing objects as ``ObjectNotFoundError``, malformed keys as ``ValueError``.
    """

    @abc.abstractmethod
    def put(self, key: str, data: Data) -> None:
        """Create or replace ``key`` with ``data``; the object is durable when this returns."""

    @abc.abstractmethod
    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        """Bytes ``[offset, offset + length)`` of ``key`` (to the end when ``length`` is None).

        A range reaching past the end returns the bytes that exist (``b""`` when
        ``offset`` is at or past the end). Raises ``ObjectNotFoundError`` if missing.
        """

    @abc.abstractmethod
    def stat(self, key: str) -> ObjectInfo:
        """Size and mtime of ``key``; ``ObjectNotFoundError`` if missing."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix`` (plain string prefix), sorted by key."""

    @abc.abstractmethod
    def delete_many(self, keys: Iterable[str]) -> None:
        """Delete ``keys``; keys that do not exist are not an error."""

    @abc.abstractmethod
    def create_multipart(self, key: str) -> str:
        """Start a multipart upload of ``key``; returns its upload id."""

    @abc.abstractmethod
    def upload_part(self, key: str, upload_id: str, part_number: int, data: Data) -> PartInfo:
        """Upload part ``part_number`` (from 1). Every part but the last must be >= 5 MiB on S3."""

    @abc.abstractmethod
    def complete_multipart(self, key: str, upload_id: str, parts: Sequence[PartInfo]) -> None:
        """Assemble ``parts`` in the order given into ``key``; durable when this returns."""

    @abc.abstractmethod
    def abort_multipart(self, key: str, upload_id: str) -> None:
        """Drop an upload and its parts; aborting an unknown upload is not an error."""

    @abc.abstractmethod
    def list_multipart(self, prefix: str = "") -> Iterator[UploadInfo]:
        """Uploads of keys starting with ``prefix`` still open: a process killed mid-upload
        leaves one behind, holding (billed) parts until it is aborted."""

    @abc.abstractmethod
    def put_if_absent(self, key: str, data: Data) -> bool:
        """Create ``key`` only if it does not exist; True if this call created it."""

    @abc.abstractmethod
    def supports_conditional_put(self) -> bool:
        """Whether ``put_if_absent`` is atomic against concurrent writers on this store."""

    @abc.abstractmethod
    def describe(self) -> str:
        """Where the data lives, for logs and ``woodpecker doctor``; never contains a secret."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections and file handles; the store is unusable afterwards."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()})"
