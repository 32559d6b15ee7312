"""The buffer mode of a log: chosen from ``buffer.mode`` at creation, recorded in its metadata."""

from __future__ import annotations

from tests.conftest import ConfigFactory
from woodpecker import admin
from woodpecker.client import Client


def test_a_log_records_its_mode_at_creation_and_keeps_it(make_config: ConfigFactory) -> None:
    with Client(make_config()) as client:
        client.create_log("kept")
        assert client.meta_store().get_log("kept").buffer_mode == "memory"
        assert admin.show_log(client, "kept")["buffer_mode"] == "memory"

    with Client(make_config(buffer_mode="quorum")) as client:
        client.create_log("quorum-log")
        client.open_log("implicit", create=True)
        for name in ("quorum-log", "implicit"):
            assert client.meta_store().get_log(name).buffer_mode == "quorum"
            assert admin.show_log(client, name)["buffer_mode"] == "quorum"
        # a log keeps the mode it was created in, whatever buffer.mode says now
        assert client.meta_store().get_log("kept").buffer_mode == "memory"
