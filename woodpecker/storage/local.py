"""The local file-system backend (a local disk, or a shared one such as NFS / EFS).

An object is a regular file under the root; its key is its relative path. Every
write goes to a hidden temp file in the target directory, is fsynced, then
renamed (or hard-linked, for ``put_if_absent``) into place and the directory is
fsynced, so a reader sees a whole object or none and a returned write survives
power loss. Hidden names (``.wp-*``) are never listed and never valid keys.

Small blocks take a cheaper path: an ``AppendFile`` created once (with one directory
fsync) takes whole blocks at its end, each made durable by one ``fdatasync`` before
``append`` returns. Its creator is its only writer, and readers read only the byte
ranges of it that a committed block record names, so a torn or uncommitted tail is
never read.

Objects are created ``0600`` and directories ``0700`` (see
``woodpecker.private_files``), also under a shared root such as NFS: every
process that writes or reads a deployment's data runs as its one owner.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import stat as stat_mod
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import psutil

from woodpecker.errors import ObjectNotFoundError, StorageUnavailableError
from woodpecker.private_files import DIR_MODE, FILE_MODE, make_private_dirs, private_opener
from woodpecker.storage.base import (
    RESERVED_PREFIX,
    Data,
    ObjectInfo,
    ObjectStore,
    PartInfo,
    UploadInfo,
    buffer_views,
    check_range,
    validate_key,
    validate_prefix,
)

_IOV_MAX = os.sysconf("SC_IOV_MAX")
_COPY_CHUNK = 8 * 1024 * 1024
_UPLOAD_ID = re.compile(r"[0-9a-f]{32}")
_STAGING = RESERVED_PREFIX + "staging"
_MAX_PART_NUMBER = 10_000
# A concurrent delete_many may prune a directory between our mkdir and our
# create; a few retries always win that race (the pruner only removes empty dirs).
_CREATE_ATTEMPTS = 3


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_views(fd: int, views: Sequence[memoryview]) -> None:
    """Write every view in order with as few syscalls as possible (writev may be partial)."""
    pending = [v for v in views if len(v)]
    rests: list[memoryview] = []  # our slices after partial writes, released on exit
    first = 0
    try:
        while first < len(pending):
            written = os.writev(fd, pending[first : first + _IOV_MAX])
            while written:
                head = pending[first]
                if written >= len(head):
                    written -= len(head)
                    first += 1
                else:
                    pending[first] = head[written:]
                    rests.append(pending[first])
                    written = 0
    finally:
        for rest in rests:
            rest.release()


def _copy_fd(src: int, dst: int) -> None:
    """Append all of ``src`` to ``dst`` in the kernel where possible (copy_file_range)."""
    try:
        while os.copy_file_range(src, dst, _COPY_CHUNK):
            pass
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
            raise
        while chunk := os.read(src, _COPY_CHUNK):
            _write_views(dst, [memoryview(chunk)])


def _part_name(part_number: int) -> str:
    return f"part-{part_number:05d}"


def _concatenate(sources: Sequence[int]) -> Callable[[int], None]:
    """A writer for ``_create_durably`` that appends every source file in order."""

    def write(dst: int) -> None:
        for src in sources:
            _copy_fd(src, dst)

    return write


def _pread_all(fd: int, length: int, offset: int) -> bytes:
    chunks: list[bytes] = []
    while length > 0:
        chunk = os.pread(fd, length, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
        length -= len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class AppendFile:
    """A file that takes whole blocks at its end, each durable before ``append`` returns.

    One ``fdatasync`` per block, against a temp file, a rename and a directory fsync
    for ``put``: the sync is the latency floor of a synchronous append. After a failed
    write its end is unknown, so it is ``broken`` and takes nothing more.
    """

    def __init__(self, key: str, fd: int) -> None:
        self.key = key
        self._fd: int | None = fd
        self._size = 0
        self._lock = threading.Lock()
        self.last_append = time.monotonic()

    @property
    def broken(self) -> bool:
        return self._fd is None

    def append(self, data: Data) -> int:
        """Write ``data`` at the end and fdatasync; the offset it was written at."""
        with self._lock, buffer_views(data) as views:
            if self._fd is None:
                raise StorageUnavailableError(f"local append to {self.key!r}: the file is closed")
            try:
                _write_views(self._fd, views)
                os.fdatasync(self._fd)
            except OSError as e:
                self._close()
                raise StorageUnavailableError(f"local append to {self.key!r} failed: {e}") from e
            offset = self._size
            self._size += sum(len(v) for v in views)
            self.last_append = time.monotonic()
            return offset

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class LocalObjectStore(ObjectStore):
    """Objects as files under ``root``; multipart parts staged under ``root/.wp-staging``."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self._root = os.path.abspath(root)
        self._staging = os.path.join(self._root, _STAGING)
        try:
            self._makedirs(self._staging)
        except OSError as e:
            raise StorageUnavailableError(f"cannot create the store root {self._root}: {e}") from e
        self._real_root = os.path.realpath(self._root)

    # ----------------------------------------------------------------- paths

    def _path(self, key: str) -> str:
        """The file of ``key``: checked lexically, then resolved, to stay inside the root."""
        validate_key(key)
        path = os.path.join(self._root, key)
        if not self._inside(path):
            raise ValueError(f"invalid key {key!r}: resolves outside the store root")
        return path

    def _inside(self, path: str) -> bool:
        real = os.path.realpath(path)
        return real == self._real_root or real.startswith(self._real_root + os.sep)

    def _makedirs(self, directory: str) -> None:
        """Create ``directory`` and missing parents (``0700``), fsyncing each new entry's parent."""
        for path in make_private_dirs(directory):
            _fsync_dir(os.path.dirname(path))

    @contextlib.contextmanager
    def _os_errors(self, op: str, key: str, *, missing_is_not_found: bool) -> Iterator[None]:
        """Turn OSError into the project's errors (``ObjectNotFoundError`` for reads)."""
        try:
            yield
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as e:
            if missing_is_not_found:
                raise ObjectNotFoundError(f"{key!r} not found in {self.describe()}") from None
            raise StorageUnavailableError(f"local {op} of {key!r} failed: {e}") from e
        except OSError as e:
            raise StorageUnavailableError(f"local {op} of {key!r} failed: {e}") from e

    def _create_durably(self, path: str, write: Callable[[int], None], *, replace: bool) -> bool:
        """Write a temp file with ``write``, fsync, move it to ``path``, fsync the directory.

        With ``replace=False`` the move is a hard link, which fails atomically when
        ``path`` exists (then nothing changes and False is returned). The temp file
        is removed on every failure path.
        """
        directory = os.path.dirname(path)
        for attempt in range(1, _CREATE_ATTEMPTS + 1):
            self._makedirs(directory)
            # the pid lets a supervisor remove what a killed process left behind
            name = f"{RESERVED_PREFIX}tmp-{os.getpid()}-{secrets.token_hex(8)}"
            tmp = os.path.join(directory, name)
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
                break
            except FileNotFoundError:
                if attempt == _CREATE_ATTEMPTS:
                    raise
        tmp_exists = True
        try:
            try:
                write(fd)
                os.fsync(fd)
            finally:
                os.close(fd)
            if replace:
                os.rename(tmp, path)
                tmp_exists = False
                created = True
            else:
                try:
                    os.link(tmp, path)
                    created = True
                except FileExistsError:
                    created = False
        finally:
            if tmp_exists:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        if created:
            _fsync_dir(directory)
        return created

    def remove_orphaned_temp_files(self) -> int:
        """Delete temp files whose writing process is dead; returns how many.

        A process killed inside ``put`` leaves its temp file behind; readers never
        see it (``list`` hides reserved names), but it would take space forever.
        The writer's pid is in the name; a live pid (even a reused one) is kept.
        """
        marker = f"{RESERVED_PREFIX}tmp-"
        removed = 0
        for directory, _, files in os.walk(self._root):
            for name in files:
                pid = name[len(marker) :].split("-", 1)[0] if name.startswith(marker) else ""
                if pid.isdigit() and not _pid_alive(int(pid)):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(directory, name))
                        removed += 1
        return removed

    # ------------------------------------------------------------ operations

    def put(self, key: str, data: Data) -> None:
        """Create or replace ``key`` atomically and durably (temp + fsync + rename)."""
        path = self._path(key)
        with buffer_views(data) as views, self._os_errors("put", key, missing_is_not_found=False):
            self._create_durably(path, lambda fd: _write_views(fd, views), replace=True)

    def put_if_absent(self, key: str, data: Data) -> bool:
        """Create ``key`` unless it exists; the hard link makes the check atomic (also on NFS)."""
        path = self._path(key)
        with (
            buffer_views(data) as views,
            self._os_errors("put_if_absent", key, missing_is_not_found=False),
        ):
            return self._create_durably(path, lambda fd: _write_views(fd, views), replace=False)

    def supports_conditional_put(self) -> bool:
        """Always: ``link(2)`` never replaces an existing name."""
        return True

    def open_append(self, key: str) -> AppendFile:
        """Create ``key`` (it must not exist) as an ``AppendFile``; its name is durable."""
        path = self._path(key)
        directory = os.path.dirname(path)
        with self._os_errors("open_append", key, missing_is_not_found=False):
            for attempt in range(1, _CREATE_ATTEMPTS + 1):
                self._makedirs(directory)
                try:
                    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
                    fd = os.open(path, flags, FILE_MODE)
                    break
                except FileNotFoundError:  # a concurrent delete_many pruned the directory
                    if attempt == _CREATE_ATTEMPTS:
                        raise
            try:
                _fsync_dir(directory)
            except OSError:
                os.close(fd)
                raise
        return AppendFile(key, fd)

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        """Read a byte range with ``pread``; a range past the end is cut at the end."""
        check_range(offset, length)
        path = self._path(key)
        with self._os_errors("get", key, missing_is_not_found=True):
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if length is None:
                    length = max(0, os.fstat(fd).st_size - offset)
                return _pread_all(fd, length, offset)
            finally:
                os.close(fd)

    def stat(self, key: str) -> ObjectInfo:
        """Size and mtime of the file; a directory is not an object."""
        path = self._path(key)
        with self._os_errors("stat", key, missing_is_not_found=True):
            st = os.stat(path)
        if not stat_mod.S_ISREG(st.st_mode):
            raise ObjectNotFoundError(f"{key!r} not found in {self.describe()}")
        return ObjectInfo(key, st.st_size, st.st_mtime)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Walk only the directory the prefix names, yielding keys in sorted order lazily."""
        validate_prefix(prefix)
        base = prefix.rpartition("/")[0]
        directory = os.path.join(self._root, base) if base else self._root
        if not self._inside(directory):
            raise ValueError(f"invalid prefix {prefix!r}: resolves outside the store root")
        return self._walk(directory, base + "/" if base else "", prefix)

    def _walk(self, directory: str, key_prefix: str, want: str) -> Iterator[ObjectInfo]:
        try:
            with os.scandir(directory) as it:
                entries = [e for e in it if not e.name.startswith(RESERVED_PREFIX)]
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as e:
            raise StorageUnavailableError(f"local list of {want!r} failed: {e}") from e
        # A directory sorts as "name/" so that the walk yields keys in plain string
        # order ("a.c" < "a/b" < "a0"), the order S3 lists in.
        items: list[tuple[str, bool, os.DirEntry[str]]] = []
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                items.append((key_prefix + entry.name + "/", True, entry))
            elif entry.is_file(follow_symlinks=False):
                items.append((key_prefix + entry.name, False, entry))
        items.sort(key=lambda item: item[0])
        for key, is_dir, entry in items:
            if not key.startswith(want):
                continue
            if is_dir:
                yield from self._walk(entry.path, key, want)
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            yield ObjectInfo(key, st.st_size, st.st_mtime)

    def delete_many(self, keys: Iterable[str]) -> None:
        """Unlink each file, then prune directories left empty (up to the root).

        Deletes are not fsynced: an object that reappears after a crash is
        unreferenced in etcd, so readers never see it and GC removes it again.
        """
        paths = [(key, self._path(key)) for key in keys]
        emptied: set[str] = set()
        for key, path in paths:
            with self._os_errors("delete", key, missing_is_not_found=False):
                try:
                    os.unlink(path)
                except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                    continue
            emptied.add(os.path.dirname(path))
        for directory in sorted(emptied, reverse=True):
            while directory != self._root:
                try:
                    os.rmdir(directory)
                except OSError:
                    break
                directory = os.path.dirname(directory)

    # ------------------------------------------------------------- multipart

    def _upload_dir(self, key: str, upload_id: str) -> str:
        validate_key(key)
        if not isinstance(upload_id, str) or not _UPLOAD_ID.fullmatch(upload_id):
            raise ValueError(f"invalid upload id {upload_id!r}")
        directory = os.path.join(self._staging, upload_id)
        try:
            with open(os.path.join(directory, "key"), encoding="utf-8") as f:
                owner = f.read()
        except FileNotFoundError:
            owner = None
        if owner != key:
            raise ObjectNotFoundError(f"no multipart upload {upload_id} of {key!r}")
        return directory

    def create_multipart(self, key: str) -> str:
        """A staging directory named by a random upload id, recording its key."""
        self._path(key)
        upload_id = secrets.token_hex(16)
        directory = os.path.join(self._staging, upload_id)
        with self._os_errors("create_multipart", key, missing_is_not_found=False):
            os.mkdir(directory, DIR_MODE)
            key_file = os.path.join(directory, "key")
            with open(key_file, "w", encoding="utf-8", opener=private_opener) as f:
                f.write(key)
        return upload_id

    def upload_part(self, key: str, upload_id: str, part_number: int, data: Data) -> PartInfo:
        """Stage one part (a re-upload of the same number replaces it).

        Parts are not fsynced: ``complete_multipart`` copies them into a new file
        that is, and an upload whose process dies is never resumed.
        """
        if not 1 <= part_number <= _MAX_PART_NUMBER:
            raise ValueError(f"invalid part number {part_number}: must be 1..{_MAX_PART_NUMBER}")
        directory = self._upload_dir(key, upload_id)
        name = _part_name(part_number)
        tmp = os.path.join(directory, f"{name}.{secrets.token_hex(4)}")
        with (
            buffer_views(data) as views,
            self._os_errors("upload_part", key, missing_is_not_found=False),
        ):
            size = sum(len(v) for v in views)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
            try:
                try:
                    _write_views(fd, views)
                finally:
                    os.close(fd)
                os.rename(tmp, os.path.join(directory, name))
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
        return PartInfo(part_number, name, size)

    def complete_multipart(self, key: str, upload_id: str, parts: Sequence[PartInfo]) -> None:
        """Concatenate the parts into ``key`` durably, then drop the staging directory."""
        directory = self._upload_dir(key, upload_id)
        numbers = [p.part_number for p in parts]
        if not parts or numbers != sorted(set(numbers)):
            raise ValueError(f"parts of {key!r} must be non-empty and in ascending order")
        path = self._path(key)
        with self._os_errors("complete_multipart", key, missing_is_not_found=False):
            fds: list[int] = []
            try:
                for part in parts:
                    name = _part_name(part.part_number)
                    if part.etag != name:
                        raise ValueError(f"part {part.part_number} of {key!r}: bad etag")
                    fds.append(os.open(os.path.join(directory, name), os.O_RDONLY | os.O_CLOEXEC))
                    if os.fstat(fds[-1]).st_size != part.size:
                        raise ValueError(f"part {part.part_number} of {key!r}: wrong size")
                self._create_durably(path, _concatenate(fds), replace=True)
            finally:
                for fd in fds:
                    os.close(fd)
        shutil.rmtree(directory, ignore_errors=True)

    def abort_multipart(self, key: str, upload_id: str) -> None:
        """Remove the staging directory; an unknown upload is already gone."""
        try:
            directory = self._upload_dir(key, upload_id)
        except ObjectNotFoundError:
            return
        shutil.rmtree(directory, ignore_errors=True)

    def list_multipart(self, prefix: str = "") -> Iterator[UploadInfo]:
        """The staging directories, with the key each records (started = its creation)."""
        validate_prefix(prefix)
        uploads = []
        with self._os_errors("list_multipart", prefix, missing_is_not_found=False):
            for upload_id in os.listdir(self._staging):
                try:
                    path = os.path.join(self._staging, upload_id, "key")
                    with open(path, encoding="utf-8") as f:
                        key = f.read()
                    initiated = os.stat(path).st_mtime
                except (FileNotFoundError, NotADirectoryError):
                    continue  # completed or aborted meanwhile, or not an upload
                if _UPLOAD_ID.fullmatch(upload_id) and key.startswith(prefix):
                    uploads.append(UploadInfo(key, upload_id, initiated))
        yield from sorted(uploads, key=lambda u: (u.key, u.upload_id))

    def describe(self) -> str:
        """The root as a ``file://`` URL."""
        return Path(self._root).as_uri()

    def close(self) -> None:
        """Nothing to release: every operation opens and closes its own descriptors."""


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` may still write: a zombie cannot (killed writers can stay unreaped)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True  # exists, owned by someone else
