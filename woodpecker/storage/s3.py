"""The S3 backend (MinIO, SeaweedFS, AWS or any S3-compatible store), on the minio client.

Every request runs under ``call_with_retry``: 5xx, throttling, timeouts and
connection errors are retried with backoff until ``retry.deadline``, then surface
as ``StorageUnavailableError``; the HTTP pool itself never retries. Writes of
block data (PUT, UploadPart) are sent by ``_send`` straight from the caller's
memoryviews: minio's own ``put_object`` would first copy them into one bytes
object. ``_send`` reuses minio's URL building and SigV4 signer (minio 7.2.x).

How a PUT body is protected in transit is ``s3.payload_checksum``: its SHA-256
signed into SigV4 (the default), or ``UNSIGNED-PAYLOAD`` plus an
``x-amz-checksum-crc32c`` / ``-crc32`` header that the store verifies before it
stores the object; hashing 1 MiB with SHA-256 costs ~15x the CPU of CRC32C.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import http.client
import threading
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlunsplit

import certifi
import crc32c
import urllib3
from minio import Minio
from minio import time as amz_time
from minio.datatypes import Part
from minio.deleteobjects import DeleteObject
from minio.error import InvalidResponseError, MinioException, S3Error, ServerError
from minio.signer import sign_v4_s3

from woodpecker.config import Config
from woodpecker.errors import (
    ConfigError,
    ObjectNotFoundError,
    StorageUnavailableError,
)
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
from woodpecker.storage.retry import call_with_retry

T = TypeVar("T")

_NOT_FOUND = frozenset({"NoSuchKey", "NoSuchUpload"})
_TRANSIENT_CODES = frozenset(
    {"InternalError", "OperationAborted", "RequestTimeout", "ServiceUnavailable", "SlowDown"}
)
_DELETE_BATCH = 1000  # the most keys one DeleteObjects request may carry
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"


@dataclass(frozen=True)
class PayloadChecksum:
    """An ``x-amz-checksum-*`` header: a CRC of the body that S3 verifies on receipt."""

    header: str
    crc: Callable[[memoryview, int], int]

    def of(self, views: Sequence[memoryview]) -> str:
        """The header's value: the base64 of the big-endian 32-bit CRC of the whole body."""
        value = 0
        for view in views:
            value = self.crc(view, value)
        return base64.b64encode(value.to_bytes(4, "big")).decode()


PAYLOAD_CHECKSUMS: dict[str, PayloadChecksum] = {
    "crc32c": PayloadChecksum("x-amz-checksum-crc32c", crc32c.crc32c),
    "crc32": PayloadChecksum("x-amz-checksum-crc32", zlib.crc32),
}
"""``s3.payload_checksum`` values other than ``sha256`` (the SigV4-signed body)."""


def _status(e: MinioException) -> int:
    if isinstance(e, S3Error):
        return getattr(e.response, "status", 0) or 0
    if isinstance(e, ServerError):
        return e.status_code
    if isinstance(e, InvalidResponseError):
        return getattr(e, "_code", 0) or 0
    return 0


def is_transient(e: BaseException) -> bool:
    """Worth retrying: the network failed, the server failed (5xx) or asked us to slow down."""
    if isinstance(e, MinioException):
        status = _status(e)
        return status >= 500 or status == 429 or getattr(e, "code", None) in _TRANSIENT_CODES
    return isinstance(e, urllib3.exceptions.HTTPError | http.client.HTTPException | OSError)


def _explain(e: BaseException) -> str:
    if isinstance(e, S3Error):
        return f"{e.code}: {e.message}"
    return f"{type(e).__name__}: {e}"


def _raise_for_status(response: urllib3.BaseHTTPResponse) -> None:
    """Raise minio's own error types for a failed raw request, as minio would."""
    if response.status in (200, 204, 206):
        return
    if response.data and "xml" in response.headers.get("content-type", ""):
        raise S3Error.fromxml(response)
    raise ServerError(f"server failed with HTTP status code {response.status}", response.status)


class S3ObjectStore(ObjectStore):
    """All keys live under ``s3.prefix`` in ``s3.bucket``; one HTTP pool per store."""

    def __init__(self, config: Config) -> None:
        s3 = config.s3
        try:
            prefix = validate_prefix(s3.prefix.strip("/"))
        except ValueError as e:
            raise ConfigError(f"s3.prefix: {e}") from None
        self._root = f"{prefix}/" if prefix else ""
        self._bucket = s3.bucket
        self._endpoint = s3.endpoint
        self._secure = s3.secure
        self._retry = config.retry
        self._part_size = config.uploader.part_size
        self._checksum = PAYLOAD_CHECKSUMS.get(s3.payload_checksum)
        # Uploaders run ``max_inflight`` jobs plus as many parallel parts: keep
        # that many connections alive instead of reconnecting.
        self._http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=s3.timeout, read=s3.timeout),
            maxsize=max(10, 2 * config.uploader.max_inflight),
            retries=False,
            cert_reqs="CERT_REQUIRED",
            ca_certs=s3.ca_file or certifi.where(),
        )
        try:
            self._mc = Minio(
                s3.endpoint,
                access_key=s3.access_key or None,
                secret_key=s3.secret_key or None,
                secure=s3.secure,
                region=s3.region or None,
                http_client=self._http,
            )
        except ValueError as e:
            raise ConfigError(f"s3.endpoint: invalid value {s3.endpoint!r} ({e})") from None
        self._probe_lock = threading.Lock()
        self._conditional: bool | None = None

    # ------------------------------------------------------------- plumbing

    def _name(self, key: str) -> str:
        return self._root + validate_key(key)

    def _call(self, op: str, key: str, fn: Callable[[], T]) -> T:
        """Run one request with retries; translate failures into the project's errors."""
        what = f"s3 {op} {key!r}"

        def give_up(e: BaseException) -> Exception:
            return StorageUnavailableError(
                f"{what} at {self._endpoint} (bucket {self._bucket!r}) still failing when "
                f"its retries ran out (deadline {self._retry.deadline:g}s, at most "
                f"{self._retry.max_attempts} attempts); last error: {_explain(e)}"
            )

        try:
            return call_with_retry(
                fn, policy=self._retry, is_transient=is_transient, on_give_up=give_up, what=what
            )
        except MinioException as e:
            code = getattr(e, "code", None)
            if code in _NOT_FOUND:
                raise ObjectNotFoundError(
                    f"{key!r} not found in {self.describe()} ({code})"
                ) from None
            raise StorageUnavailableError(
                f"{what} at {self._endpoint} (bucket {self._bucket!r}) failed: {_explain(e)}"
            ) from e

    def _send(
        self,
        name: str,
        views: Sequence[memoryview],
        headers: dict[str, str],
        query: dict[str, str] | None = None,
    ) -> urllib3.BaseHTTPResponse:
        """A signed PUT whose body is sent view by view, never joined into one buffer.

        Multipart parts (``query`` set) keep the signed SHA-256 whatever the option: a
        checksum on parts must be declared when the upload is created and repeated in
        its completion, and blocks are below ``uploader.multipart_threshold`` by default.
        """
        mc = self._mc
        region = mc._get_region(self._bucket)
        url = mc._base_url.build(
            method="PUT",
            region=region,
            bucket_name=self._bucket,
            object_name=name,
            query_params=query,
        )
        headers = {
            **headers,
            "Host": url.netloc,
            "User-Agent": mc._user_agent,
            "Content-Length": str(sum(len(v) for v in views)),
        }
        creds = mc._provider.retrieve() if mc._provider else None
        checksum = self._checksum if query is None else None
        if checksum is not None:  # sent signed when there are credentials
            headers[checksum.header] = checksum.of(views)
        if creds:
            # Over TLS the transport protects the body; in clear text the
            # signature covers it, as minio does, unless a CRC header does.
            if self._secure or checksum is not None:
                sha256 = UNSIGNED_PAYLOAD
            else:
                hasher = hashlib.sha256()
                for view in views:
                    hasher.update(view)
                sha256 = hasher.hexdigest()
            date = amz_time.utcnow()
            headers["x-amz-content-sha256"] = sha256
            headers["x-amz-date"] = amz_time.to_amz_date(date)
            headers = sign_v4_s3(
                method="PUT",
                url=url,
                region=region,
                headers=headers,
                credentials=creds,
                content_sha256=sha256,
                date=date,
            )
        response = self._http.urlopen("PUT", urlunsplit(url), body=views, headers=headers)
        _raise_for_status(response)
        return response

    # ------------------------------------------------------------ operations

    def put(self, key: str, data: Data) -> None:
        """One PUT streamed from the buffers; S3 makes it durable before answering."""
        name = self._name(key)
        headers = {"Content-Type": "application/octet-stream"}
        with buffer_views(data) as views:
            self._call("put", key, lambda: self._send(name, views, headers))

    def _conditional_put(self, op: str, key: str, name: str, views: list[memoryview]) -> bool:
        """PUT with ``If-None-Match: *``: False when the server answers 412.

        A retry after an attempt whose outcome is unknown (a timeout may hide a
        success) can meet our own object; then the stored bytes decide.
        """
        uncertain = False

        def attempt() -> bool:
            nonlocal uncertain
            try:
                self._send(name, views, {"If-None-Match": "*"})
                return True
            except Exception as e:
                if isinstance(e, MinioException) and _status(e) == 412:  # PreconditionFailed
                    return uncertain and self._holds(name, views)
                uncertain = uncertain or is_transient(e)
                raise

        return self._call(op, key, attempt)

    def _holds(self, name: str, views: list[memoryview]) -> bool:
        response = self._mc.get_object(self._bucket, name)
        try:
            stored = response.read()
        finally:
            response.close()
            response.release_conn()
        offset = 0
        for view in views:
            if stored[offset : offset + len(view)] != view:
                return False
            offset += len(view)
        return offset == len(stored)

    def put_if_absent(self, key: str, data: Data) -> bool:
        """Atomic where the store honours ``If-None-Match: *``; else a racy HEAD + PUT.

        Whether it is honoured is probed once per store (``supports_conditional_put``).
        """
        name = self._name(key)
        if not self.supports_conditional_put():
            with contextlib.suppress(ObjectNotFoundError):
                self.stat(key)
                return False
        with buffer_views(data) as views:
            return self._conditional_put("put_if_absent", key, name, views)

    def supports_conditional_put(self) -> bool:
        """Probe once: a second conditional PUT of a fresh object must be refused."""
        with self._probe_lock:
            if self._conditional is None:
                key = f"{RESERVED_PREFIX}probe-{uuid.uuid4().hex}"
                name = self._root + key
                try:
                    first = self._conditional_put("probe", key, name, [memoryview(b"1")])
                    second = self._conditional_put("probe", key, name, [memoryview(b"2")])
                finally:
                    self._call(
                        "probe cleanup", key, lambda: self._mc.remove_object(self._bucket, name)
                    )
                self._conditional = first and not second
            return self._conditional

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        """A (ranged) GET; a range past the end is cut at the end, as on the local store."""
        check_range(offset, length)
        name = self._name(key)
        if length == 0:
            self.stat(key)
            return b""

        def fetch() -> bytes:
            try:
                response = self._mc.get_object(self._bucket, name, offset, length or 0)
            except S3Error as e:
                if e.code == "InvalidRange":  # offset at or past the end of an existing object
                    return b""
                raise
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

        return self._call("get", key, fetch)

    def stat(self, key: str) -> ObjectInfo:
        """HEAD the object."""
        name = self._name(key)
        info = self._call("stat", key, lambda: self._mc.stat_object(self._bucket, name))
        mtime = info.last_modified.timestamp() if info.last_modified else 0.0
        return ObjectInfo(key, info.size or 0, mtime)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """The whole listing, fetched then sorted.

        Sorting is ours because SeaweedFS lists in directory-walk order
        (``a/b`` before ``a.c``), not in the key order S3 specifies.
        """
        validate_prefix(prefix)
        start = len(self._root)

        def fetch() -> list[ObjectInfo]:
            found = []
            for obj in self._mc.list_objects(self._bucket, self._root + prefix, recursive=True):
                key = obj.object_name[start:]
                if obj.is_dir or f"/{RESERVED_PREFIX}" in f"/{key}":
                    continue
                mtime = obj.last_modified.timestamp() if obj.last_modified else 0.0
                found.append(ObjectInfo(key, obj.size or 0, mtime))
            found.sort(key=lambda info: info.key)
            return found

        return iter(self._call("list", prefix, fetch))

    def delete_many(self, keys: Iterable[str]) -> None:
        """DeleteObjects in batches of 1000; S3 reports missing keys as deleted."""
        keys = list(keys)
        names = [self._name(key) for key in keys]
        for first in range(0, len(names), _DELETE_BATCH):
            batch = names[first : first + _DELETE_BATCH]
            self._call("delete_many", keys[first], functools.partial(self._delete_batch, batch))

    def _delete_batch(self, names: list[str]) -> None:
        for error in self._mc.remove_objects(self._bucket, [DeleteObject(n) for n in names]):
            if error.code != "NoSuchKey":
                raise StorageUnavailableError(
                    f"s3 delete of {error.name!r} failed: {error.code}: {error.message}"
                )

    # ------------------------------------------------------------- multipart

    def create_multipart(self, key: str) -> str:
        """CreateMultipartUpload."""
        name = self._name(key)
        return self._call(
            "create_multipart",
            key,
            lambda: self._mc._create_multipart_upload(
                self._bucket, name, {"Content-Type": "application/octet-stream"}
            ),
        )

    def upload_part(self, key: str, upload_id: str, part_number: int, data: Data) -> PartInfo:
        """UploadPart streamed from the buffers like ``put``."""
        name = self._name(key)
        query = {"partNumber": str(part_number), "uploadId": upload_id}
        with buffer_views(data) as views:
            size = sum(len(v) for v in views)
            response = self._call("upload_part", key, lambda: self._send(name, views, {}, query))
        etag = response.headers.get("etag", "").strip('"')
        return PartInfo(part_number, etag, size)

    def complete_multipart(self, key: str, upload_id: str, parts: Sequence[PartInfo]) -> None:
        """CompleteMultipartUpload with the parts in ascending order."""
        name = self._name(key)
        numbers = [p.part_number for p in parts]
        if not parts or numbers != sorted(set(numbers)):
            raise ValueError(f"parts of {key!r} must be non-empty and in ascending order")
        listed = [Part(p.part_number, p.etag) for p in parts]
        self._call(
            "complete_multipart",
            key,
            lambda: self._mc._complete_multipart_upload(self._bucket, name, upload_id, listed),
        )

    def abort_multipart(self, key: str, upload_id: str) -> None:
        """AbortMultipartUpload; an unknown upload is already gone."""
        name = self._name(key)
        with contextlib.suppress(ObjectNotFoundError):
            self._call(
                "abort_multipart",
                key,
                lambda: self._mc._abort_multipart_upload(self._bucket, name, upload_id),
            )

    def list_multipart(self, prefix: str = "") -> Iterator[UploadInfo]:
        """ListMultipartUploads, every page (continued from the last upload seen: the
        client leaves NextUploadIdMarker unset)."""
        validate_prefix(prefix)
        start = len(self._root)

        def fetch() -> list[UploadInfo]:
            found: list[UploadInfo] = []
            key_marker = upload_id_marker = None
            while True:
                page = self._mc._list_multipart_uploads(
                    self._bucket,
                    prefix=self._root + prefix,
                    key_marker=key_marker,
                    upload_id_marker=upload_id_marker,
                )
                for up in page.uploads:
                    started = up.initiated_time.timestamp() if up.initiated_time else 0.0
                    found.append(UploadInfo(up.object_name[start:], up.upload_id or "", started))
                if not page.is_truncated or not page.uploads:
                    break
                key_marker, upload_id_marker = (
                    page.uploads[-1].object_name,
                    page.uploads[-1].upload_id,
                )
            found.sort(key=lambda u: (u.key, u.upload_id))
            return found

        return iter(self._call("list_multipart", prefix, fetch))

    def describe(self) -> str:
        """``s3://bucket/prefix at host:port``."""
        tls = " (TLS)" if self._secure else ""
        return f"s3://{self._bucket}/{self._root} at {self._endpoint}{tls}"

    def close(self) -> None:
        """Close the pooled connections."""
        self._http.clear()
