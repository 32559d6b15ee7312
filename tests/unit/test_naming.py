"""Log-name rules, and that a bad name is refused before any I/O."""

from __future__ import annotations

import time

import pytest

from woodpecker.config import Config
from woodpecker.errors import InvalidLogNameError
from woodpecker.meta import MetaStore
from woodpecker.naming import validate_log_name

VALID = ["a", "A", "0", "orders", "orders.v2", "my_log-1", "...", ".hidden", "-", "x" * 255]
INVALID = ["", ".", "..", "x" * 256, "a/b", "/", "a b", "tab\t", "new\nline", "é", "a:b", "a*"]


@pytest.mark.parametrize("name", VALID)
def test_valid_names_pass(name: str) -> None:
    assert validate_log_name(name) == name


@pytest.mark.parametrize("name", INVALID)
def test_invalid_names_are_named_in_the_error(name: str) -> None:
    with pytest.raises(InvalidLogNameError) as info:
        validate_log_name(name)
    assert repr(name) in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("name", [None, 5, b"bytes", ["a"]])
def test_non_strings_are_invalid(name: object) -> None:
    with pytest.raises(InvalidLogNameError, match="invalid log name"):
        validate_log_name(name)


@pytest.mark.parametrize("method", ["create_log", "get_log", "delete_log"])
def test_store_rejects_bad_names_before_any_io(method: str) -> None:
    # an unreachable etcd with a long retry deadline: any I/O would take 30 s
    meta = MetaStore(Config(env={}, etcd_endpoints="127.0.0.1:1", retry_deadline=30))
    start = time.monotonic()
    with pytest.raises(InvalidLogNameError, match=r"'a/b'"):
        getattr(meta, method)("a/b")
    assert time.monotonic() - start < 0.5
    meta.close()
