"""Object storage: the ``ObjectStore`` contract and its backends (local file system, S3).

``open_store(config)`` picks the backend from ``storage.type``. The S3 backend is
imported only when used, so local-only processes never load the minio client.
"""

from __future__ import annotations

import os

from woodpecker.config import Config
from woodpecker.storage.base import Data, ObjectInfo, ObjectStore, PartInfo, UploadInfo
from woodpecker.storage.local import LocalObjectStore

__all__ = [
    "Data",
    "LocalObjectStore",
    "ObjectInfo",
    "ObjectStore",
    "PartInfo",
    "UploadInfo",
    "open_store",
]


def open_store(config: Config) -> ObjectStore:
    """The store ``config`` describes: ``<storage.root>/data`` locally, or the S3 bucket."""
    if config.storage.type == "s3":
        from woodpecker.storage.s3 import S3ObjectStore

        return S3ObjectStore(config)
    return LocalObjectStore(os.path.join(config.storage.root, "data"))
