"""Progress output: a redrawn bar on a terminal, plain lines elsewhere, nothing when quiet."""

from __future__ import annotations

import io

from woodpecker.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def run(stream: io.StringIO, quiet: bool = False) -> str:
    with Progress("write 1 KiB entries", 10_000, unit="entries", stream=stream, quiet=quiet) as p:
        for _ in range(1000):
            p.update(10)
        p.note("a failure worth keeping")
    return stream.getvalue()


def test_not_a_terminal_prints_plain_lines_without_carriage_returns() -> None:
    text = run(io.StringIO())
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert len(lines) == 12  # 0 % .. 100 % by tenths after the first update, and the note
    assert lines[0].startswith("write 1 KiB entries:   0% (10/10000 entries, 0m00s")
    assert lines[-2].startswith("write 1 KiB entries: 100% (10000/10000 entries")
    assert lines[-1] == "a failure worth keeping"


def test_a_terminal_gets_a_bar_redrawn_in_place() -> None:
    text = run(Terminal())
    assert "\r" in text  # the control: on a terminal the bar redraws
    assert "10000/10000" in text
    assert "a failure worth keeping" in text


def test_quiet_prints_only_notes() -> None:
    assert run(io.StringIO(), quiet=True) == "a failure worth keeping\n"
    assert run(Terminal(), quiet=True) == "a failure worth keeping\n"


def test_steps_print_one_line_each_off_a_terminal() -> None:
    stream = io.StringIO()
    p = Progress("bench", 10.0, unit="est. s", stream=stream)
    p.step("write local 1 KiB")
    p.update(4.0)
    p.step("read s3")
    p.close()
    lines = stream.getvalue().splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "write local 1 KiB",
        "write local 1 KiB",
        "read s3",
    ]
    assert "40%" in lines[2]
