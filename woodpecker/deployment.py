"""A deployment's identity: which etcd namespace and which storage location belong together.

A deployment is its etcd endpoints and prefix plus its storage type and location.
Metadata in one place and data in another only make sense together: a log id in
etcd names objects in exactly one store. So at first use a deployment claims an
id on both sides, each with create-only semantics (an etcd transaction that
creates ``<etcd.prefix>/deployment`` only if absent; a conditional PUT, or a hard
link locally, of ``MARKER_KEY`` at the storage prefix), and every process that
writes or deletes (a writing Client, a logstore, a maintenance pass) first checks
that both claims name the same id. The protocol, the migration of unclaimed
deployments and the alternatives considered are in ``docs/deployment.md``.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson

from woodpecker.errors import ConfigError, ObjectNotFoundError
from woodpecker.meta.records import now_ms

if TYPE_CHECKING:
    from woodpecker.config import Config
    from woodpecker.meta import MetaStore
    from woodpecker.storage import ObjectStore

MARKER_KEY = "woodpecker-deployment.json"
"""The storage-side claim, at the root of the store (outside every ``<log_id>/`` prefix)."""


@dataclass(frozen=True)
class Deployment:
    """Where a configuration keeps its metadata (``etcd``) and its data (``storage``)."""

    etcd: str
    storage: str

    @classmethod
    def of(cls, config: Config) -> Deployment:
        """The deployment ``config`` describes, normalised so equal places compare equal.

        No I/O: the socket path of the logstore is derived from it before anything runs.
        """
        prefix = config.etcd.prefix.rstrip("/") or "/"
        if config.etcd.endpoints:
            endpoints = sorted(
                e.strip().lower().removeprefix("http://").removeprefix("https://")
                for e in config.etcd.endpoints
            )
            etcd = f"etcd {','.join(endpoints)} prefix {prefix}"
        else:
            etcd = f"embedded etcd of {_real(config.storage.root)} prefix {prefix}"
        if config.storage.type == "s3":
            s3 = config.s3
            storage = f"s3://{s3.bucket}/{s3.prefix.strip('/')} at {s3.endpoint.lower()}"
        else:
            storage = f"local {os.path.join(_real(config.storage.root), 'data')}"
        return cls(etcd, storage)

    @property
    def fingerprint(self) -> str:
        """A short stable hash of both places: names the logstore socket, sent in HELLO."""
        return hashlib.sha256(f"{self.etcd}\n{self.storage}".encode()).hexdigest()[:16]

    def __str__(self) -> str:
        return f"{self.etcd} with data at {self.storage}"


def _real(path: str) -> str:
    return os.path.realpath(os.path.expanduser(path))


@dataclass(frozen=True)
class Claim:
    """What each side records: the deployment id and both places as they were at the claim."""

    id: str
    etcd: str
    storage: str

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {"id": self.id, "etcd": self.etcd, "storage": self.storage, "created_ms": now_ms()}
        )

    @classmethod
    def from_bytes(cls, raw: bytes, where: str) -> Claim:
        try:
            body = orjson.loads(raw)
            return cls(str(body["id"]), str(body["etcd"]), str(body["storage"]))
        except (orjson.JSONDecodeError, KeyError, TypeError) as e:
            raise ConfigError(
                f"the deployment claim at {where} is not readable ({e}); it was not written "
                "by Woodpecker: remove it only if you are sure no deployment owns this place"
            ) from None


def verify_deployment(
    config: Config, meta: MetaStore, store: ObjectStore, *, claim: bool = True
) -> str:
    """Claim the deployment where unclaimed and check both claims agree; returns its id.

    Raises ``ConfigError`` naming both sides when etcd and storage are claimed by
    different deployments, or when exactly one side is claimed for another place.
    ``claim=False`` only checks (a dry run): it creates no claim, and returns ``""``
    for a deployment that has none yet.
    """
    return _Verifier(Deployment.of(config), meta, store, claim).run()


class _Verifier:
    def __init__(
        self, deployment: Deployment, meta: MetaStore, store: ObjectStore, claim: bool
    ) -> None:
        self.claim = claim
        self.here = deployment
        self.meta = meta
        self.store = store
        self.key = meta.keys.deployment
        self.marker = f"{MARKER_KEY} in {deployment.storage}"
        self.created: bytes | None = None  # the etcd claim value this run created, if any

    def run(self) -> str:
        etcd_claim, storage_claim = self._etcd_claim(), self._storage_claim()
        if etcd_claim is None and storage_claim is None:
            self._refuse_foreign_data()
            if not self.claim:
                return ""
            etcd_claim = self._create_etcd_claim(Claim(uuid.uuid4().hex, *self._places()))
        if etcd_claim is None:
            assert storage_claim is not None
            if storage_claim.etcd != self.here.etcd:
                raise ConfigError(self._storage_taken(storage_claim))
            if not self.claim:
                return storage_claim.id
            etcd_claim = self._create_etcd_claim(storage_claim)
        if storage_claim is None:
            if etcd_claim.storage != self.here.storage:
                raise ConfigError(self._etcd_taken(etcd_claim))
            if not self.claim:
                return etcd_claim.id
            storage_claim = self._create_storage_claim(etcd_claim)
        if storage_claim.id != etcd_claim.id:
            raise ConfigError(
                f"deployment mismatch: {self.here.etcd} is claimed by deployment {etcd_claim.id}, "
                f"whose data lives at {etcd_claim.storage}; but {self.here.storage} is claimed "
                f"by deployment {storage_claim.id}, whose metadata lives in {storage_claim.etcd}. "
                "This configuration pairs the metadata of one deployment with the data of "
                "another: fix etcd.endpoints / etcd.prefix or the storage settings "
                "(storage.type, storage.root, s3.bucket, s3.prefix) so both name one deployment"
            )
        return etcd_claim.id

    def _places(self) -> tuple[str, str]:
        return self.here.etcd, self.here.storage

    def _etcd_claim(self) -> Claim | None:
        raw = self.meta.deployment_claim()
        return None if raw is None else Claim.from_bytes(raw, f"etcd key {self.key}")

    def _storage_claim(self) -> Claim | None:
        try:
            raw = self.store.get(MARKER_KEY)
        except ObjectNotFoundError:
            return None
        return Claim.from_bytes(raw, self.marker)

    def _create_etcd_claim(self, claim: Claim) -> Claim:
        """Create the etcd key unless present; the claim that is there afterwards."""
        ours = claim.to_bytes()
        there = self.meta.claim_deployment(ours)
        if there == ours:
            self.created = ours
            return claim
        return Claim.from_bytes(there, f"etcd key {self.key}")

    def _create_storage_claim(self, claim: Claim) -> Claim:
        """Create the marker unless present; the claim that is there afterwards."""
        if self.store.put_if_absent(MARKER_KEY, claim.to_bytes()):
            return claim
        won = self._storage_claim()
        assert won is not None  # claims are never deleted by Woodpecker
        if won.id != claim.id and self.created is not None:
            # another deployment took this store an instant before us: our fresh etcd
            # claim names a store we do not own; drop it so this prefix stays usable
            self.meta.drop_deployment_claim(self.created)
        return won

    def _refuse_foreign_data(self) -> None:
        """Neither side claimed: an upgrade (claim both), unless the data is not ours.

        A store that holds objects while this etcd prefix never created a log is the
        data of another deployment, whose metadata lives elsewhere: writing here
        would reuse its log ids and overwrite its objects.
        """
        if self.meta.ever_created_a_log():
            return
        # the marker is a claim, not data: one that appeared since we looked is another
        # process claiming this same place at once (the claims below settle it)
        objects = (o.key for o in self.store.list("") if o.key != MARKER_KEY)
        holds = list(itertools.islice(objects, 1))
        if holds:
            raise ConfigError(
                f"{self.here.storage} already holds objects (such as {holds[0]!r}) but "
                f"{self.here.etcd} has never created a log, and neither side is claimed by a "
                "deployment: the data most likely belongs to a deployment whose metadata lives "
                "elsewhere. Point etcd.endpoints / etcd.prefix at that deployment, or use an "
                "empty storage location (another s3.prefix or storage.root)"
            )

    def _storage_taken(self, claim: Claim) -> str:
        return (
            f"deployment mismatch: {self.here.storage} is claimed by deployment {claim.id}, "
            f"whose metadata lives in {claim.etcd}; this configuration's {self.here.etcd} holds "
            "no claim. Use the etcd.endpoints / etcd.prefix of that deployment, or another "
            "storage location for this one (another s3.prefix, s3.bucket or storage.root). If "
            "that deployment's metadata was moved here on purpose, put the content of "
            f"{self.marker} at etcd key {self.key}"
        )

    def _etcd_taken(self, claim: Claim) -> str:
        return (
            f"deployment mismatch: {self.here.etcd} is claimed by deployment {claim.id}, "
            f"whose data lives at {claim.storage}; this configuration's {self.here.storage} "
            "holds no claim. Point the storage settings (storage.type, storage.root, "
            "s3.bucket, s3.prefix) at that deployment's data, or use another etcd.prefix for "
            "this one. If that deployment's data was moved here on purpose, copy its "
            f"{MARKER_KEY} object here"
        )
