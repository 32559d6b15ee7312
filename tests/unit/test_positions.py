"""Parsing and checking entry positions (``SEGMENT:ENTRY``)."""

from __future__ import annotations

import pytest

import woodpecker as wp
from woodpecker.message import MAX_ID


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0:0", (0, 0)), (" 3:17 ", (3, 17)), (f"{MAX_ID}:{MAX_ID}", (MAX_ID, MAX_ID))],
)
def test_parse(text: str, expected: tuple[int, int]) -> None:
    assert wp.LogMessageId.parse(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "-1:0",
        "1:-1",
        "+1:0",
        "1",
        "1:",
        ":1",
        "1:2:3",
        "1_0:0",
        "\u0663:0",  # an Arabic-Indic digit three: str.isdigit() and int() accept it
        "\uff11:0",  # a full-width one
        f"{MAX_ID + 1}:0",
        "99999999999999999999999:0",
    ],
)
def test_parse_rejects(text: str) -> None:
    with pytest.raises(wp.InvalidPositionError, match="invalid position"):
        wp.LogMessageId.parse(text)
