"""The buffer mode of a log: chosen from ``buffer.mode`` at creation, recorded in its metadata."""

from __future__ import annotations

import pytest

from tests.conftest import ConfigFactory
from woodpecker import admin
from woodpecker.client import Client
from woodpecker.errors import ConfigError, LogNotFoundError


def test_a_log_records_its_mode_and_quorum_is_refused_until_the_writer_side_exists(
    make_config: ConfigFactory,
) -> None:
    with Client(make_config()) as client:
        client.create_log("kept")
        assert client.meta_store().get_log("kept").buffer_mode == "memory"
        assert admin.show_log(client, "kept")["buffer_mode"] == "memory"

    with Client(make_config(buffer_mode="quorum")) as client:
        for create in (client.create_log, lambda name: client.open_log(name, create=True)):
            with pytest.raises(ConfigError, match=r"^buffer.mode: quorum is not available yet"):
                create("quorum-log")
        with pytest.raises(LogNotFoundError):
            client.open_log("quorum-log")  # refused before anything was written
        assert client.open_log("kept").log_id  # logs of either mode still open
