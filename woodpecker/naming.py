"""Log-name rules, checked before any I/O.

A name becomes part of an etcd key (``<prefix>/logs/<name>``) and is shown in
paths and messages, so it is limited to characters that need no escaping and
can never change the key hierarchy (no ``/``, not ``.`` or ``..``).
"""

from __future__ import annotations

import re

from woodpecker.errors import InvalidLogNameError

MAX_LOG_NAME_LENGTH = 255

_NAME = re.compile(rf"[A-Za-z0-9._-]{{1,{MAX_LOG_NAME_LENGTH}}}")


def validate_log_name(name: object) -> str:
    """Return ``name`` if it is a valid log name, else raise InvalidLogNameError."""
    if not isinstance(name, str) or name in (".", "..") or not _NAME.fullmatch(name):
        raise InvalidLogNameError(
            f"invalid log name {name!r}: use 1-{MAX_LOG_NAME_LENGTH} characters of "
            "A-Z a-z 0-9 . _ - (and not '.' or '..')"
        )
    return name
