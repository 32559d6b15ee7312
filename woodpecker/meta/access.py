"""How a configuration reaches etcd, in one line without secrets.

``woodpecker doctor`` and ``woodpecker config`` print it, so that an operator sees
at a glance who else could reach the metadata: the embedded etcd is reachable
only through owner-only Unix sockets; a configured etcd is as private as its
transport (TLS or not) and its authentication make it.
"""

from __future__ import annotations

from woodpecker.config import UNIX_SCHEME, Config
from woodpecker.meta.embedded import EmbeddedEtcd


def etcd_access(config: Config) -> str:
    """Where etcd is and what protects the way there (file paths and user names, no secrets)."""
    etcd = config.etcd
    if not etcd.endpoints:
        endpoint = EmbeddedEtcd(config.storage.root, config.etcd.binary).endpoint
        return (
            f"embedded etcd at {endpoint}: Unix sockets only (client and peer) "
            "in an owner-only directory, no TCP listener"
        )
    if all(e.strip().startswith(UNIX_SCHEME) for e in etcd.endpoints):
        transport = "Unix socket (as private as its directory)"
    elif etcd.ca_file or etcd.cert_file:
        transport = f"TLS (CA {etcd.ca_file or 'from the system'})"
        if etcd.cert_file:
            transport += f", client certificate {etcd.cert_file}"
    else:
        transport = "plaintext TCP"
    auth = f"user {etcd.user!r}" if etcd.user else "no authentication"
    return f"{','.join(etcd.endpoints)}: {transport}, {auth}"
