"""Config: layering, typed parsing, error messages, secret redaction, YAML files.

Every ``Config`` here is built with an explicit ``env=`` mapping so that the
developer's own ``WOODPECKER_*`` variables never leak into a test.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from woodpecker import cli
from woodpecker.config import S3_LINGER_MS, Config, config_table
from woodpecker.errors import ConfigError, WoodpeckerError

KiB = 1024
MiB = 1024 * 1024
GiB = 1024 * MiB

SECRET = "s3cr3t-Vq7ZkP"  # distinctive, so a leak is easy to spot
ACCESS = "AKIA-Xw9RtL4"
PASSWORD = "pw-Hn3QmY8"
SECRETS = (SECRET, ACCESS, PASSWORD)


def write(tmp_path: Path, text: str, name: str = "woodpecker.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def config_error(**kwargs: Any) -> str:
    """Build a Config that must fail; return the message."""
    kwargs.setdefault("env", {})
    with pytest.raises(ConfigError) as info:
        Config(**kwargs)
    return str(info.value)


def with_secrets(**kwargs: Any) -> Config:
    return Config(
        env={}, s3_secret_key=SECRET, s3_access_key=ACCESS, etcd_password=PASSWORD, **kwargs
    )


# --------------------------------------------------------------------------- defaults


def test_defaults() -> None:
    c = Config(env={})
    assert c.storage.type == "local"
    assert c.storage.root == str(Path.home() / ".local" / "share" / "woodpecker")
    assert c.s3.endpoint == "127.0.0.1:8333"
    assert c.s3.bucket == "woodpecker"
    assert c.s3.secure is False
    assert c.s3.access_key == c.s3.secret_key == ""
    assert c.etcd.endpoints == []
    assert c.etcd.prefix == "/woodpecker"
    assert c.etcd.lease_ttl == 10
    assert c.retry.deadline == 30.0
    assert c.writer.max_entry_size == 16 * MiB
    assert c.writer.arena_size == 64 * MiB
    assert c.uploader.part_size == 8 * MiB
    assert c.logstore_socket.parent == Path(c.storage.root)
    assert c.logstore_socket.name.startswith("logstore-")


def test_list_default_is_not_shared_between_configs() -> None:
    a = Config(env={})
    a.etcd.endpoints.append("10.0.0.1:2379")
    assert Config(env={}).etcd.endpoints == []


def test_config_errors_are_woodpecker_errors() -> None:
    assert issubclass(ConfigError, WoodpeckerError)


def test_logstore_socket_explicit() -> None:
    c = Config(env={}, logstore_socket="/tmp/x.sock", storage_root="/srv/wp")
    assert c.logstore_socket == Path("/tmp/x.sock")
    assert Config(env={}, storage_root="/srv/wp").logstore_socket.parent == Path("/srv/wp")


def test_default_socket_is_per_deployment() -> None:
    """Two configurations differing in any place of their deployment get two sockets."""

    def socket(**kw: object) -> Path:
        kw.setdefault("storage_root", "/srv/wp")
        return Config(env={}, **kw).logstore_socket

    embedded = socket()
    s3 = socket(storage_type="s3", etcd_endpoints="10.0.0.1:2379")
    assert (
        len(
            {embedded, s3, socket(storage_type="s3", etcd_endpoints="10.0.0.1:2379", s3_prefix="b")}
        )
        == 3
    )
    assert socket(etcd_prefix="/other") != embedded
    assert socket(storage_root="/srv/wp/") == embedded  # same place, same socket
    assert socket(etcd_endpoints="b:1,a:2") == socket(etcd_endpoints="a:2,b:1")
    # settings that do not change where metadata and data live keep the socket
    assert socket(writer_arena_size="2MiB", s3_prefix="ignored-for-local") == embedded


# --------------------------------------------------------------------------- layering


@pytest.mark.parametrize(
    ("in_file", "in_env", "in_kwargs", "expected"),
    [
        (False, False, False, 30.0),  # default
        (True, False, False, 5.0),  # file beats default
        (True, True, False, 6.0),  # env beats file
        (False, True, False, 6.0),
        (True, True, True, 7.0),  # keywords beat everything
        (True, False, True, 7.0),
        (False, True, True, 7.0),
    ],
)
def test_layer_precedence(
    tmp_path: Path, in_file: bool, in_env: bool, in_kwargs: bool, expected: float
) -> None:
    path = write(tmp_path, "retry:\n  deadline: 5\n")
    env = {"WOODPECKER_RETRY_DEADLINE": "6"} if in_env else {}
    kwargs: dict[str, Any] = {"retry_deadline": 7} if in_kwargs else {}
    c = Config(config_file=path if in_file else None, env=env, **kwargs)
    assert c.retry.deadline == expected


def test_layers_merge_key_by_key(tmp_path: Path) -> None:
    path = write(tmp_path, "s3:\n  bucket: from-file\n  region: file-region\n")
    c = Config(
        config_file=path,
        env={"WOODPECKER_S3_REGION": "env-region", "WOODPECKER_S3_PREFIX": "env/prefix"},
        s3_prefix="kw/prefix",
    )
    assert c.s3.bucket == "from-file"
    assert c.s3.region == "env-region"
    assert c.s3.prefix == "kw/prefix"
    assert c.s3.endpoint == "127.0.0.1:8333"  # untouched default


def test_config_file_from_env_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "storage:\n  type: s3\n")
    c = Config(env={"WOODPECKER_CONFIG": str(path)})
    assert c.storage.type == "s3"


def test_config_file_argument_beats_woodpecker_config(tmp_path: Path) -> None:
    env_file = write(tmp_path, "s3:\n  bucket: from-env-file\n", "env.yaml")
    arg_file = write(tmp_path, "s3:\n  bucket: from-arg-file\n", "arg.yaml")
    c = Config(config_file=arg_file, env={"WOODPECKER_CONFIG": str(env_file)})
    assert c.s3.bucket == "from-arg-file"


def test_empty_woodpecker_config_means_no_file() -> None:
    assert Config(env={"WOODPECKER_CONFIG": ""}) == Config(env={})


def test_env_variable_names_map_to_keys() -> None:
    c = Config(
        env={
            "WOODPECKER_S3_ACCESS_KEY": "ak",
            "WOODPECKER_WRITER_MAX_ENTRY_SIZE": "1MiB",
            "WOODPECKER_ETCD_LEASE_TTL": "20",
            "WOODPECKER_RETENTION_ORPHAN_GRACE": "60",
            "WOODPECKER_RETRY_BACKOFF_MAX": "0.5",
        }
    )
    assert c.s3.access_key == "ak"
    assert c.writer.max_entry_size == MiB
    assert c.etcd.lease_ttl == 20
    assert c.retention.orphan_grace == 60.0
    assert c.retry.backoff_max == 0.5


def test_unrelated_env_variables_are_ignored() -> None:
    env = {"HOME": "/nowhere", "WOODPECKER_CONFIG": "", "WOODPECKER_NOSUCHSECTION_X": "1"}
    assert Config(env=env) == Config(env={})


def test_env_mapping_replaces_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WOODPECKER_S3_BUCKET", "from-os-environ")
    monkeypatch.delenv("WOODPECKER_CONFIG", raising=False)
    assert Config(env={}).s3.bucket == "woodpecker"
    assert Config(env={"WOODPECKER_S3_BUCKET": "given"}).s3.bucket == "given"
    # only without env= is the process environment read
    assert Config(s3_bucket="kw").s3.bucket == "kw"
    assert Config().s3.bucket == "from-os-environ"


def test_a_bad_value_fails_even_when_a_higher_layer_overrides_it() -> None:
    msg = config_error(env={"WOODPECKER_RETRY_DEADLINE": "soon"}, retry_deadline=1)
    assert "retry.deadline" in msg and "'soon'" in msg


# --------------------------------------------------------------------------- types


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1", True),
        ("0", False),
        ("true", True),
        ("false", False),
        ("TRUE", True),
        ("False", False),
        (" yes ", True),
        ("no", False),
        ("on", True),
        ("off", False),
        ("", False),
        (True, True),
        (False, False),
        (1, True),
        (0, False),
    ],
)
def test_bool(raw: Any, expected: bool) -> None:
    assert Config(env={}, s3_secure=raw).s3.secure is expected


def test_bool_from_env_and_file(tmp_path: Path) -> None:
    assert Config(env={"WOODPECKER_S3_SECURE": "1"}).s3.secure is True
    assert Config(env={"WOODPECKER_S3_SECURE": "false"}).s3.secure is False
    path = write(tmp_path, "s3:\n  secure: true\n")
    assert Config(config_file=path, env={}).s3.secure is True


@pytest.mark.parametrize("raw", ["2", "maybe", "tru", 2, -1, [True]])
def test_bad_bool(raw: Any) -> None:
    msg = config_error(s3_secure=raw)
    assert msg.startswith("s3.secure: invalid value ")
    assert repr(raw) in msg
    assert "0/1/true/false" in msg


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("8MiB", 8 * MiB),
        ("8mib", 8 * MiB),
        ("8 MiB", 8 * MiB),
        (" 8MiB ", 8 * MiB),
        ("8M", 8 * MiB),
        ("8MB", 8 * MiB),
        ("64KiB", 64 * KiB),
        ("64k", 64 * KiB),
        ("1GiB", GiB),
        ("2g", 2 * GiB),
        ("4096", 4096),
        ("4096b", 4096),
        (4096, 4096),
    ],
)
def test_size(raw: Any, expected: int) -> None:
    c = Config(env={}, uploader_max_block_bytes=raw)
    assert c.uploader.max_block_bytes == expected
    assert isinstance(c.uploader.max_block_bytes, int)


def test_size_from_env_and_file(tmp_path: Path) -> None:
    c = Config(env={"WOODPECKER_WRITER_ARENA_SIZE": "128MiB"})
    assert c.writer.arena_size == 128 * MiB
    path = write(tmp_path, "writer:\n  arena_size: 32MiB\n  max_batch_bytes: 65536\n")
    c = Config(config_file=path, env={})
    assert c.writer.arena_size == 32 * MiB
    assert c.writer.max_batch_bytes == 64 * KiB


@pytest.mark.parametrize("raw", ["8XB", "1.5MiB", "-1", "MiB", "", "eight", 1.5, True, [1]])
def test_bad_size(raw: Any) -> None:
    msg = config_error(uploader_max_block_bytes=raw)
    assert msg.startswith("uploader.max_block_bytes: invalid value ")
    assert repr(raw) in msg
    assert "a size such as 4096, 64KiB or 8MiB" in msg


def test_size_below_minimum() -> None:
    msg = config_error(writer_arena_size="512KiB")
    assert msg == "writer.arena_size: invalid value '512KiB'; must be >= 1048576"
    msg = config_error(uploader_part_size="4MiB")
    assert "uploader.part_size" in msg and "'4MiB'" in msg and f">= {5 * MiB}" in msg


@pytest.mark.parametrize(("raw", "expected"), [("3", 3), (" 12 ", 12), (3, 3), (3.0, 3)])
def test_int(raw: Any, expected: int) -> None:
    c = Config(env={}, segment_max_blocks=raw)
    assert c.segment.max_blocks == expected
    assert type(c.segment.max_blocks) is int


@pytest.mark.parametrize("raw", ["3.5", 3.5, "ten", "", True, None, [3]])
def test_bad_int(raw: Any) -> None:
    msg = config_error(segment_max_blocks=raw)
    assert msg.startswith("segment.max_blocks: invalid value ")
    assert repr(raw) in msg
    assert "an integer" in msg


@pytest.mark.parametrize(
    ("raw", "expected"), [("1.5", 1.5), ("2", 2.0), (2, 2.0), (0.25, 0.25), ("1e-1", 0.1)]
)
def test_float(raw: Any, expected: float) -> None:
    c = Config(env={}, s3_timeout=raw)
    assert c.s3.timeout == expected
    assert type(c.s3.timeout) is float


@pytest.mark.parametrize("raw", ["fast", "", True, None, [1.0], "1,5"])
def test_bad_float(raw: Any) -> None:
    msg = config_error(s3_timeout=raw)
    assert msg.startswith("s3.timeout: invalid value ")
    assert repr(raw) in msg
    assert "a number" in msg


@pytest.mark.parametrize("raw", ["nan", "inf", "-nan"])
def test_non_finite_float_rejected(raw: str) -> None:
    msg = config_error(retry_deadline=raw)
    assert "retry.deadline" in msg and repr(raw) in msg


@pytest.mark.parametrize(
    ("key", "raw", "minimum"),
    [
        ("retry_deadline", "-1", "0.0"),
        ("s3_timeout", 0.05, "0.1"),
        ("etcd_lease_ttl", 1, "2"),
        ("retry_max_attempts", "0", "1"),
        ("reader_read_ahead", -1, "0"),
    ],
)
def test_below_minimum(key: str, raw: Any, minimum: str) -> None:
    msg = config_error(**{key: raw})
    section, _, name = key.partition("_")
    assert msg == f"{section}.{name}: invalid value {raw!r}; must be >= {minimum}"


def test_minimum_is_inclusive() -> None:
    c = Config(env={}, retry_deadline=0, etcd_lease_ttl=2, reader_read_ahead=0)
    assert (c.retry.deadline, c.etcd.lease_ttl, c.reader.read_ahead) == (0.0, 2, 0)


def test_choices() -> None:
    assert Config(env={}, storage_type="s3").storage.type == "s3"
    assert Config(env={"WOODPECKER_STORAGE_TYPE": "local"}).storage.type == "local"
    for bad in ("gcs", "S3", ""):
        msg = config_error(storage_type=bad)
        assert msg == f"storage.type: invalid value {bad!r}; allowed: local, s3"


def test_s3_payload_checksum_is_validated() -> None:
    assert Config(env={}).s3.payload_checksum == "sha256"
    env = {"WOODPECKER_S3_PAYLOAD_CHECKSUM": "crc32c"}
    assert Config(env=env).s3.payload_checksum == "crc32c"
    msg = config_error(s3_payload_checksum="md5")
    assert msg == "s3.payload_checksum: invalid value 'md5'; allowed: sha256, crc32c, crc32"


def test_str_fields_accept_scalars_from_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, "s3:\n  region: 12\n  bucket: logs\n")
    c = Config(config_file=path, env={})
    assert c.s3.region == "12"
    assert c.s3.bucket == "logs"


@pytest.mark.parametrize("raw", [["a"], {"a": 1}, None, True])
def test_bad_str(raw: Any) -> None:
    msg = config_error(s3_bucket=raw)
    assert msg == f"s3.bucket: invalid value {raw!r}; expected a string"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("10.0.0.1:2379", ["10.0.0.1:2379"]),
        ("a:1,b:2,c:3", ["a:1", "b:2", "c:3"]),
        (" a:1 , b:2 ,", ["a:1", "b:2"]),
        ("", []),
        (",", []),
        (["a:1", " b:2 "], ["a:1", "b:2"]),
        (("a:1",), ["a:1"]),
    ],
)
def test_endpoints_list(raw: Any, expected: list[str]) -> None:
    assert Config(env={}, etcd_endpoints=raw).etcd.endpoints == expected


def test_endpoints_from_env_and_file(tmp_path: Path) -> None:
    c = Config(env={"WOODPECKER_ETCD_ENDPOINTS": "h1:2379,h2:2379"})
    assert c.etcd.endpoints == ["h1:2379", "h2:2379"]
    path = write(tmp_path, "etcd:\n  endpoints: [h1:2379, h2:2379]\n")
    assert Config(config_file=path, env={}).etcd.endpoints == ["h1:2379", "h2:2379"]
    path = write(tmp_path, "etcd:\n  endpoints: h3:2379, h4:2379\n", "b.yaml")
    assert Config(config_file=path, env={}).etcd.endpoints == ["h3:2379", "h4:2379"]


@pytest.mark.parametrize("raw", [5, None, True])
def test_bad_endpoints(raw: Any) -> None:
    msg = config_error(etcd_endpoints=raw)
    assert msg == f"etcd.endpoints: invalid value {raw!r}; expected a comma-separated list"


def test_typed_yaml_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
storage:
  type: s3
  root: /srv/woodpecker
s3:
  secure: 1
  timeout: 2.5
etcd:
  lease_ttl: 15
writer:
  max_entry_size: 8MiB
  linger_ms: 0
""",
    )
    c = Config(config_file=path, env={})
    assert c.storage.type == "s3"
    assert c.storage.root == "/srv/woodpecker"
    assert c.s3.secure is True
    assert c.s3.timeout == 2.5
    assert c.etcd.lease_ttl == 15
    assert c.writer.max_entry_size == 8 * MiB
    assert c.writer.linger_ms == 0.0


def test_bad_value_from_file_or_env(tmp_path: Path) -> None:
    path = write(tmp_path, "s3:\n  timeout: soon\n")
    assert "s3.timeout" in config_error(config_file=path)
    assert "s3.timeout" in config_error(env={"WOODPECKER_S3_TIMEOUT": "soon"})


# --------------------------------------------------------------------------- unknown keys


def test_unknown_keyword_key() -> None:
    assert config_error(s3_bogus=1) == "s3.bogus: unknown key (from keyword arguments)"


@pytest.mark.parametrize("flat", ["nosuch_key", "storage", "s3_", "bucket", "S3_bucket"])
def test_unknown_keyword_setting(flat: str) -> None:
    msg = config_error(**{flat: "x"})
    assert flat in msg
    assert "unknown" in msg


def test_unknown_env_key() -> None:
    msg = config_error(env={"WOODPECKER_S3_BOGUS": "1"})
    assert msg == "s3.bogus: unknown key (from environment)"


def test_unknown_file_section(tmp_path: Path) -> None:
    path = write(tmp_path, "s3:\n  bucket: b\nnosuch:\n  key: 1\n")
    msg = config_error(config_file=path)
    assert msg == f"unknown section 'nosuch' (from file {path})"


def test_unknown_file_key(tmp_path: Path) -> None:
    path = write(tmp_path, "s3:\n  bucket: b\n  buckets: c\n")
    msg = config_error(config_file=path)
    assert msg == f"s3.buckets: unknown key (from file {path})"


def test_unknown_key_message_never_shows_the_value() -> None:
    msg = config_error(s3_secretkey=SECRET)
    assert SECRET not in msg


# --------------------------------------------------------------------------- secrets


def test_secrets_are_kept() -> None:
    c = with_secrets()
    assert c.s3.secret_key == SECRET
    assert c.s3.access_key == ACCESS
    assert c.etcd.password == PASSWORD


def test_secrets_not_in_repr_or_str() -> None:
    c = with_secrets()
    for text in (repr(c), str(c), f"{c}", f"{c!r}"):
        for secret in SECRETS:
            assert secret not in text
    assert "<redacted>" in repr(c)


def test_secrets_not_in_section_repr() -> None:
    c = with_secrets()
    for text in (repr(c.s3), repr(c.etcd), str(c.s3)):
        for secret in SECRETS:
            assert secret not in text


def test_as_dict_redacts_secrets() -> None:
    c = with_secrets()
    d = c.as_dict()
    assert d["s3"]["secret_key"] == "<redacted>"
    assert d["s3"]["access_key"] == "<redacted>"
    assert d["etcd"]["password"] == "<redacted>"
    for secret in SECRETS:
        assert secret not in repr(d)
    # non-secret values are shown as they are
    assert d["s3"]["bucket"] == "woodpecker"
    assert set(d["s3"]) == {f.name for f in dataclasses.fields(type(c.s3))}


def test_as_dict_leaves_unset_secrets_empty() -> None:
    d = Config(env={}).as_dict()
    assert d["s3"]["secret_key"] == ""
    assert d["etcd"]["password"] == ""


def test_as_dict_unredacted_on_request() -> None:
    d = with_secrets().as_dict(redact=False)
    assert (d["s3"]["secret_key"], d["s3"]["access_key"]) == (SECRET, ACCESS)
    assert d["etcd"]["password"] == PASSWORD


def test_only_the_three_secret_keys_are_redacted() -> None:
    d = Config(env={}, **{k: "x" for k in _string_keys()}).as_dict()
    redacted = sorted(f"{s}.{k}" for s, kv in d.items() for k, v in kv.items() if v == "<redacted>")
    assert redacted == ["etcd.password", "s3.access_key", "s3.secret_key"]


def _string_keys() -> list[str]:
    out = []
    for s, kv in Config(env={}).as_dict().items():
        for k, v in kv.items():
            choice = (s, k) in (
                ("storage", "type"),
                ("logging", "format"),
                ("s3", "payload_checksum"),
                ("buffer", "mode"),
                ("quorum", "durability"),
                ("node", "listen"),  # host:port, checked
                ("node", "advertise"),  # host:port, checked
                ("node", "id"),  # a name for keys and objects, checked
            )
            if isinstance(v, str) and not choice:
                out.append(f"{s}_{k}")
    return out


@pytest.mark.parametrize(
    ("key", "raw"),
    [
        ("s3_secret_key", [SECRET]),
        ("s3_secret_key", {"v": SECRET}),
        ("s3_access_key", [ACCESS]),
        ("etcd_password", {"pw": PASSWORD}),
    ],
)
def test_bad_secret_value_is_redacted_in_error(key: str, raw: Any) -> None:
    with pytest.raises(ConfigError) as info:
        Config(env={}, **{key: raw})
    section, _, name = key.partition("_")
    assert str(info.value) == f"{section}.{name}: invalid value <redacted>; expected a string"
    assert info.value.__cause__ is None
    for secret in SECRETS:
        assert secret not in str(info.value)
        assert secret not in repr(info.value)


def test_bad_secret_from_yaml_is_redacted(tmp_path: Path) -> None:
    path = write(tmp_path, f"etcd:\n  password:\n    - {PASSWORD}\n")
    msg = config_error(config_file=path)
    assert msg == "etcd.password: invalid value <redacted>; expected a string"


@pytest.mark.parametrize(
    "text",
    [
        f's3:\n  secret_key: "{SECRET}\n',  # unterminated quote
        f"s3:\n  secret_key: {SECRET}: x\n",  # mapping value where none is allowed
        f"etcd:\n  password: a\t{PASSWORD}\n  - x\n",
    ],
)
def test_yaml_syntax_error_does_not_quote_secrets(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    msg = config_error(config_file=path)
    assert "not valid YAML" in msg
    for secret in SECRETS:
        assert secret not in msg


def test_cli_config_prints_redacted(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import os

    for var in [v for v in os.environ if v.startswith("WOODPECKER_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("WOODPECKER_S3_SECRET_KEY", SECRET)
    monkeypatch.setenv("WOODPECKER_ETCD_PASSWORD", PASSWORD)
    path = write(tmp_path, f"s3:\n  access_key: {ACCESS}\n")
    assert cli.main(["--config", str(path), "config"]) == 0
    out, err = capsys.readouterr()
    for secret in SECRETS:
        assert secret not in out + err
    assert out.count("<redacted>") == 3


def test_cli_config_says_how_etcd_is_reached(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import os

    import orjson

    for var in [v for v in os.environ if v.startswith("WOODPECKER_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("WOODPECKER_STORAGE_ROOT", str(tmp_path))
    assert cli.main(["config"]) == 0
    resolved = orjson.loads(capsys.readouterr().out)["resolved"]
    assert resolved["etcd"] == (
        f"embedded etcd at unix://{tmp_path}/etcd/client.sock:0: Unix sockets only "
        "(client and peer) in an owner-only directory, no TCP listener"
    )
    assert resolved["logstore_socket"] == str(
        Config(env={}, storage_root=str(tmp_path)).logstore_socket
    )

    monkeypatch.setenv("WOODPECKER_ETCD_ENDPOINTS", "etcd1:2379,etcd2:2379")
    monkeypatch.setenv("WOODPECKER_ETCD_USER", "wal")
    monkeypatch.setenv("WOODPECKER_ETCD_PASSWORD", PASSWORD)
    monkeypatch.setenv("WOODPECKER_ETCD_CA_FILE", "/etc/wp/ca.pem")
    monkeypatch.setenv("WOODPECKER_ETCD_CERT_FILE", "/etc/wp/client.pem")
    assert cli.main(["config"]) == 0
    out = capsys.readouterr().out
    assert PASSWORD not in out
    assert orjson.loads(out)["resolved"]["etcd"] == (
        "etcd1:2379,etcd2:2379: TLS (CA /etc/wp/ca.pem), client certificate /etc/wp/client.pem, "
        "user 'wal'"
    )


def test_uploader_linger_default_depends_on_the_backend(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """S3 lingers by default (a PUT is billed), local does not; a set value always wins."""
    import orjson

    assert Config(env={}).uploader.linger_ms == 0.0
    assert Config(env={}, storage_type="s3").uploader.linger_ms == S3_LINGER_MS > 0
    env = {"WOODPECKER_STORAGE_TYPE": "s3", "WOODPECKER_UPLOADER_LINGER_MS": "0"}
    assert Config(env=env).uploader.linger_ms == 0.0
    path = write(tmp_path, "storage:\n  type: s3\nuploader:\n  linger_ms: 5\n")
    assert Config(config_file=path, env={}).uploader.linger_ms == 5.0
    s3 = Config(env={}, storage_type="s3")
    assert Config(env={}, **s3.overrides()) == s3
    row = next(line for line in config_table().splitlines() if "`uploader.linger_ms`" in line)
    assert f"| `0.0`; s3: `{S3_LINGER_MS}` |" in row

    assert cli.main(["--config", str(write(tmp_path, "storage:\n  type: s3\n")), "config"]) == 0
    uploads = orjson.loads(capsys.readouterr().out)["resolved"]["uploads"]
    assert uploads.startswith(f"uploader.linger_ms={S3_LINGER_MS:g} (s3): a block that is not")
    assert "QuorumBuffer mode (buffer.mode: quorum)" in uploads


# --------------------------------------------------------------------------- overrides / equality


def test_overrides_round_trip() -> None:
    c = with_secrets(
        storage_type="s3",
        storage_root="/srv/wp",
        s3_secure="1",
        s3_timeout="2.5",
        etcd_endpoints="a:1,b:2",
        etcd_lease_ttl=30,
        writer_arena_size="128MiB",
        retry_deadline=0,
    )
    flat = c.overrides()
    assert flat["s3_secret_key"] == SECRET  # secrets included, unredacted
    assert flat["etcd_endpoints"] == ["a:1", "b:2"]
    assert flat["writer_arena_size"] == 128 * MiB
    again = Config(env={}, **flat)
    assert again == c
    assert again.as_dict(redact=False) == c.as_dict(redact=False)
    assert again.overrides() == flat


def test_overrides_cover_every_key() -> None:
    c = Config(env={})
    flat = c.overrides()
    expected = {f"{s}_{k}" for s, kv in c.as_dict().items() for k in kv}
    assert set(flat) == expected


def test_overrides_round_trip_through_env() -> None:
    """Every value, rendered as an environment string, parses back to itself."""
    c = with_secrets(etcd_endpoints=["h1:1", "h2:2"], s3_secure=True, retry_backoff_initial=0.125)

    def render(v: Any) -> str:
        return ",".join(v) if isinstance(v, list) else str(v)

    env = {f"WOODPECKER_{k.upper()}": render(v) for k, v in c.overrides().items()}
    assert Config(env=env) == c


def test_overrides_are_independent_of_the_config() -> None:
    c = Config(env={}, etcd_endpoints="a:1")
    c.overrides()["etcd_endpoints"].append("b:2")
    c.as_dict()["etcd"]["endpoints"].append("c:3")
    assert c.etcd.endpoints == ["a:1"]


def test_equality() -> None:
    assert Config(env={}) == Config(env={})
    assert Config(env={}) != Config(env={}, s3_bucket="other")
    assert with_secrets() != Config(env={})  # secrets count, even if redacted in as_dict()
    assert Config(env={}, s3_secret_key="a") != Config(env={}, s3_secret_key="b")
    assert Config(env={}) != "Config"
    with pytest.raises(TypeError):
        hash(Config(env={}))


# --------------------------------------------------------------------------- YAML files


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    msg = config_error(config_file=path)
    assert msg.startswith(f"config file {path}: cannot read")
    msg = config_error(env={"WOODPECKER_CONFIG": str(path)})
    assert msg.startswith(f"config file {path}: cannot read")


def test_directory_as_file(tmp_path: Path) -> None:
    msg = config_error(config_file=tmp_path)
    assert msg.startswith(f"config file {tmp_path}: cannot read")


@pytest.mark.parametrize("text", ["s3: [unclosed\n", "a: b: c\n", "s3:\n  bucket: 'x\n"])
def test_invalid_yaml(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    msg = config_error(config_file=path)
    assert msg.startswith(f"config file {path}: not valid YAML")


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("s3:\n  region: r\u00e9gion\n".encode("latin-1"))
    msg = config_error(config_file=path)
    assert msg.startswith(f"config file {path}:")


@pytest.mark.parametrize(
    "text",
    [
        "- a\n- b\n",  # a list
        "just a string\n",  # a scalar
        "42\n",
        "s3: 5\n",  # a section that is not a mapping
        "s3:\n  - bucket\n",
        "s3:\n",  # an empty section is null, not a mapping
    ],
)
def test_file_not_a_mapping(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    msg = config_error(config_file=path)
    assert msg == f"config file {path}: expected a mapping of sections to mappings"


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n", "---\n"])
def test_empty_file_means_defaults(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    assert Config(config_file=path, env={}) == Config(env={})


def test_file_errors_are_one_line_for_simple_cases(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    assert "\n" not in config_error(config_file=path)
    assert "\n" not in config_error(config_file=write(tmp_path, "- a\n"))


# --------------------------------------------------------------------------- reference table


def test_config_table() -> None:
    table = config_table()
    lines = table.splitlines()
    assert lines[0] == "| YAML key | environment | default | meaning |"
    assert lines[1] == "|---|---|---|---|"
    keys = [(s, k) for s, kv in Config(env={}).as_dict().items() for k in kv]
    assert len(lines) == 2 + len(keys)
    for (section, key), line in zip(keys, lines[2:], strict=True):
        assert line.startswith(
            f"| `{section}.{key}` | `WOODPECKER_{section.upper()}_{key.upper()}` | "
        )
        assert line.endswith(" |")
        assert line.count("|") == 5
    assert "| `~/.local/share/woodpecker` |" in table
    assert str(Path.home()) not in table or str(Path.home()) == "/"
    assert "One of: local, s3." in table
    assert f"| `{64 * MiB}` |" in table  # writer.arena_size default
    row = next(line for line in lines if line.startswith("| `etcd.endpoints`"))
    assert "| `` |" in row  # empty list default


def test_config_table_env_names_parse() -> None:
    """Every environment variable the table documents is accepted, with its default value."""
    names = re.findall(r"`(WOODPECKER_[A-Z0-9_]+)`", config_table())
    defaults = Config(env={}).overrides()
    assert len(names) == len(defaults)
    for name in names:
        default = defaults[name.removeprefix("WOODPECKER_").lower()]
        value = ",".join(default) if isinstance(default, list) else str(default)
        assert Config(env={name: value}) == Config(env={}), name


@pytest.mark.parametrize(
    "env", [{"WOODPECKER_STORAGE_ROOT": ""}, {"WOODPECKER_STORAGE_ROOT": "  "}]
)
def test_empty_storage_root_rejected(env: dict[str, str]) -> None:
    # an empty root would put data, etcd and the socket in the current directory
    with pytest.raises(ConfigError) as info:
        Config(env=env)
    assert str(info.value) == "storage.root: must not be empty"


@pytest.mark.parametrize("key", ["storage_root", "logstore_socket", "etcd_ca_file"])
@pytest.mark.parametrize("raw", [123, 1.5, ["/tmp"]])
def test_paths_must_be_strings(key: str, raw: Any) -> None:
    section, _, name = key.partition("_")
    msg = config_error(**{key: raw})
    assert msg == f"{section}.{name}: invalid value {raw!r}; expected a path (a string)"


@pytest.mark.parametrize(
    "raw", ["localhost", "h:", ":2379", "h:port", "h:0", "h:65536", "h:\u0663"]
)
def test_endpoint_without_a_valid_port_rejected_at_load(raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config(env={"WOODPECKER_ETCD_ENDPOINTS": f"ok:2379,{raw}"})
    assert str(info.value).startswith(
        f"etcd.endpoints: invalid endpoint {raw!r}; expected host:port"
    )


def test_endpoints_with_scheme_or_ipv6_accepted() -> None:
    raw = "http://h1:2379,https://h2:2380,[::1]:2379"
    assert Config(env={}, etcd_endpoints=raw).etcd.endpoints == raw.split(",")


def test_overlong_logstore_socket_is_a_config_error() -> None:
    """A Unix socket path holds 107 bytes: a deep storage.root is refused with the fix."""
    deep = "/srv/" + "d" * 90
    with pytest.raises(ConfigError, match=r"storage\.root.*logstore\.socket"):
        _ = Config(env={}, storage_root=deep).logstore_socket
    assert Config(env={}, storage_root=deep, logstore_socket="/tmp/ls.sock").logstore_socket


def test_quorum_ack_above_replicas_names_the_key() -> None:
    with pytest.raises(ConfigError) as info:
        Config(env={}, quorum_replicas=3, quorum_ack=4)
    assert str(info.value).startswith("quorum.ack: invalid value 4; must be <= quorum.replicas (3)")
    assert Config(env={}, quorum_replicas=5, quorum_ack=5).quorum.ack == 5  # control


def test_buffer_mode_comes_from_the_environment() -> None:
    assert Config(env={}).buffer.mode == "memory"
    assert Config(env={"WOODPECKER_BUFFER_MODE": "quorum"}).buffer.mode == "quorum"
    with pytest.raises(ConfigError, match=r"^buffer.mode: invalid value 'disk'; allowed"):
        Config(env={"WOODPECKER_BUFFER_MODE": "disk"})


@pytest.mark.parametrize("listen", ["7870", "host:", "host:0", "host:70000", ":7870"])
def test_node_listen_must_be_host_and_port(listen: str) -> None:
    with pytest.raises(ConfigError, match=r"^node.listen: invalid value"):
        Config(env={}, node_listen=listen)
    assert Config(env={}, node_listen="[::1]:7870").node_listen == ("::1", 7870)


def test_node_id_names_keys_and_objects_so_it_is_checked() -> None:
    with pytest.raises(ConfigError, match=r"^node.id: invalid value 'a/b'"):
        Config(env={}, node_id="a/b")
    assert Config(env={}, node_id="host-1.rack_2").node.id == "host-1.rack_2"


@pytest.mark.parametrize("advertise", ["7870", "host:", "host:0"])
def test_node_advertise_must_be_host_and_port(advertise: str) -> None:
    with pytest.raises(ConfigError, match=r"^node.advertise: invalid value"):
        Config(env={}, node_advertise=advertise)
    assert (
        Config(env={}, node_advertise="proxy.example:17870").node.advertise == "proxy.example:17870"
    )
    assert Config(env={}).node.advertise == ""  # registers its listen address
