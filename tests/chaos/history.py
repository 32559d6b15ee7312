"""The history checker: what every append was told, against what the log holds.

Each append is recorded as it happens: *invoke* before it is submitted, then
*ok* with its acknowledged id, *fail* when the error says it was definitely not
written, or *unknown* (timeouts, a lost logstore, a backend down, a crash
before the outcome was seen). Payloads encode ``(producer, seq)`` so every entry
read back can be attributed to the append that wrote it. ``check`` then proves:

- every ok'd entry is present exactly once, at its acknowledged id, with its bytes;
- ids strictly increase in append order per producer (acked and read ones);
- definitely-failed appends never appear; unknown ones appear at most once;
- nothing unattributable appears, and the reader returns ids in increasing order.

Producers in other processes record to a JSON-lines file (one ``os.write`` per
event, so a ``kill -9`` loses at most the outcome of the appends in flight,
which then count as unknown); ``HistoryFile`` reads such a file incrementally and
``History.load`` merges several.
"""

from __future__ import annotations

import bisect
import itertools
import os
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import xxhash

import woodpecker as wp

PENDING, OK, FAIL, UNKNOWN = "pending", "ok", "fail", "unknown"

# Errors that promise the append was not, and will never be, written: the library's
# NotWrittenError branch, and refusals of bad input before anything is sent.
DEFINITE_ERRORS: tuple[type[BaseException], ...] = (
    wp.NotWrittenError,
    TypeError,
    wp.InvalidLogNameError,
)

_MAGIC = b"wpchaos|"


def make_payload(producer: str, seq: int, size: int = 0) -> bytes:
    """``wpchaos|<producer>|<seq>|`` then deterministic filler up to ``size`` bytes."""
    head = _MAGIC + f"{producer}|{seq}|".encode()
    if size <= len(head):
        return head
    seed = xxhash.xxh3_128_digest(head)
    filler = (seed * ((size - len(head)) // len(seed) + 1))[: size - len(head)]
    return head + filler


def parse_payload(payload: bytes) -> tuple[str, int] | None:
    """The ``(producer, seq)`` a payload names, or None if it is not one of ours."""
    if not payload.startswith(_MAGIC):
        return None
    parts = payload[len(_MAGIC) :].split(b"|", 2)
    if len(parts) < 3 or not parts[1].isdigit():
        return None
    try:
        return parts[0].decode(), int(parts[1])
    except UnicodeDecodeError:
        return None


def classify(error: BaseException) -> str:
    """FAIL for errors that promise nothing was written, UNKNOWN for everything else."""
    return FAIL if isinstance(error, DEFINITE_ERRORS) else UNKNOWN


@dataclass
class Op:
    """One append: who, in which order, which bytes, and what it was told."""

    producer: str
    seq: int
    payload: bytes
    outcome: str = PENDING
    id: wp.LogMessageId | None = None
    error: str = ""
    invoked: float = 0.0  # time.monotonic() (one clock for every process of the host)
    completed: float = 0.0

    @property
    def name(self) -> str:
        return f"{self.producer}#{self.seq}"


class History:
    """Thread-safe recorder of appends; optionally mirrored to a JSON-lines file.

    With a file and ``keep=False`` the ops live only in the file (``load`` rebuilds them):
    a producer process of a long run would otherwise hold every payload it ever wrote.
    """

    def __init__(self, path: Path | None = None, *, keep: bool = True) -> None:
        self._lock = threading.Lock()
        self.ops: list[Op] = []
        self.acked: Counter[str] = Counter()  # acks per producer, cheap to poll
        self._keep = keep or path is None
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600) if path else None

    def _log(self, event: dict) -> None:
        if self._fd is not None:
            os.write(self._fd, orjson.dumps(event) + b"\n")

    def invoke(self, producer: str, seq: int, size: int = 0) -> Op:
        """Record an append about to be submitted; its payload comes from ``make_payload``."""
        op = Op(producer, seq, make_payload(producer, seq, size), invoked=time.monotonic())
        with self._lock:
            if self._keep:
                self.ops.append(op)
            self._log({"e": "invoke", "p": producer, "s": seq, "n": len(op.payload)})
        return op

    def ok(self, op: Op, message_id: wp.LogMessageId) -> None:
        with self._lock:
            op.outcome, op.id, op.completed = OK, wp.LogMessageId(*message_id), time.monotonic()
            self.acked[op.producer] += 1
            self._log({"e": OK, "p": op.producer, "s": op.seq, "id": list(op.id)})

    def failed(self, op: Op, error: BaseException) -> None:
        """Record an error outcome, definite or unknown according to ``classify``."""
        with self._lock:
            op.outcome, op.error = classify(error), f"{type(error).__name__}: {error}"[:200]
            op.completed = time.monotonic()
            self._log({"e": op.outcome, "p": op.producer, "s": op.seq, "err": op.error})

    def acked_counts(self) -> Counter[str]:
        with self._lock:
            return Counter(self.acked)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @staticmethod
    def load(paths: Iterable[Path]) -> list[Op]:
        """Ops recorded by other processes; an invoke without outcome is PENDING (unknown)."""
        return [op for path in paths for op in HistoryFile(path).ops()]


class HistoryFile:
    """The ops of one producer process's history file, read incrementally.

    Each call parses only the complete lines appended since the previous one, so a
    long run can poll its producers' progress without re-reading everything. A line
    torn by ``kill -9`` is never completed (its process is gone): its outcome stays
    unknown.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.acked: Counter[str] = Counter()
        self._offset = 0
        self._ops: dict[int, Op] = {}  # by seq: one file holds one producer

    def refresh(self) -> None:
        """Take in the complete lines written since the last call."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n") + 1
        self._offset += end
        for line in data[:end].splitlines():
            try:
                event = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            seq = event["s"]
            if event["e"] == "invoke":
                self._ops[seq] = Op(event["p"], seq, make_payload(event["p"], seq, event["n"]))
            elif seq in self._ops:
                op = self._ops[seq]
                op.outcome = event["e"]
                op.id = wp.LogMessageId(*event["id"]) if "id" in event else None
                op.error = event.get("err", "")
                if op.outcome == OK:
                    self.acked[op.producer] += 1

    def ops(self) -> list[Op]:
        self.refresh()
        return list(self._ops.values())


@dataclass
class Violation:
    kind: str  # lost | corrupted | duplicated | reordered | failed-visible | foreign | ...
    detail: str


@dataclass
class Report:
    """The outcome of one check, with the figures reported in docs/reliability.md."""

    ops: int = 0
    ok: int = 0
    failed: int = 0
    unknown: int = 0
    unknown_visible: int = 0
    entries_read: int = 0
    violations: list[Violation] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not self.violations

    def summary(self) -> str:
        return (
            f"{self.ops} appends: {self.ok} ok, {self.failed} failed, {self.unknown} unknown "
            f"({self.unknown_visible} of them visible); {self.entries_read} entries read; "
            f"{len(self.violations)} violations"
        )

    def evidence(self, limit: int = 5) -> str:
        """The first ``limit`` violations of each kind: which entry, where."""
        by_kind: dict[str, list[Violation]] = {}
        for v in self.violations:
            by_kind.setdefault(v.kind, []).append(v)
        lines = [self.summary()]
        for kind, found in by_kind.items():
            lines.append(f"  {kind}: {len(found)}")
            lines.extend(f"    - {v.detail}" for v in found[:limit])
        return "\n".join(lines)


def _describe_entry(entries: Sequence[wp.LogMessage], index: int) -> str:
    msg = entries[index]
    who = parse_payload(msg.payload)
    label = f"{who[0]}#{who[1]}" if who else f"{msg.payload[:24]!r}"
    return f"{msg.id} holds {label} ({len(msg.payload)} B, read position {index})"


def check(ops: Sequence[Op], entries: Sequence[wp.LogMessage], *, complete: bool = True) -> Report:
    """Check a history against the entries read from the log (in reader order).

    ``complete=False`` checks a prefix read while producers still run: an ok'd
    entry is then only required if its id is at or below the last id read.
    """
    report = Report(ops=len(ops), entries_read=len(entries))
    bad = report.violations
    by_name = {op.name: op for op in ops}
    at_id: dict[wp.LogMessageId, int] = {}
    seen: dict[str, list[int]] = {}
    for i, msg in enumerate(entries):
        if i and msg.id <= entries[i - 1].id:
            bad.append(
                Violation(
                    "reader-order",
                    f"{_describe_entry(entries, i)} follows {entries[i - 1].id}",
                )
            )
        if msg.id in at_id:
            bad.append(Violation("duplicate-id", f"{msg.id} returned twice by the reader"))
        at_id[msg.id] = i
        who = parse_payload(msg.payload)
        op = by_name.get(f"{who[0]}#{who[1]}") if who else None
        if op is None:
            bad.append(Violation("foreign", f"{_describe_entry(entries, i)}: no such append"))
            continue
        seen.setdefault(op.name, []).append(i)
        if msg.payload != op.payload:
            bad.append(
                Violation(
                    "corrupted",
                    f"{_describe_entry(entries, i)}: bytes differ from what {op.name} wrote "
                    f"({len(op.payload)} B) at offset {_first_difference(msg.payload, op.payload)}",
                )
            )
    last_read = entries[-1].id if entries else None
    read_ids = sorted(at_id)

    for op in ops:
        positions = seen.get(op.name, [])
        if len(positions) > 1:
            where = ", ".join(str(entries[i].id) for i in positions)
            bad.append(Violation("duplicated", f"{op.name} ({op.outcome}) appears at {where}"))
        if op.outcome == OK:
            report.ok += 1
            assert op.id is not None
            if op.id not in at_id:
                if complete or (last_read is not None and op.id <= last_read):
                    neighbour = _nearest(read_ids, op.id)
                    bad.append(Violation("lost", f"{op.name} acked at {op.id}: absent{neighbour}"))
            elif entries[at_id[op.id]].payload != op.payload:
                bad.append(
                    Violation(
                        "misplaced",
                        f"{op.name} acked at {op.id}, but {_describe_entry(entries, at_id[op.id])}",
                    )
                )
        elif op.outcome == FAIL:
            report.failed += 1
            if positions:
                bad.append(
                    Violation(
                        "failed-visible",
                        f"{op.name} failed definitely ({op.error}) yet "
                        f"{_describe_entry(entries, positions[0])}",
                    )
                )
        else:
            report.unknown += 1
            report.unknown_visible += bool(positions)

    _check_producer_order(ops, entries, seen, bad)
    return report


def _check_producer_order(
    ops: Sequence[Op],
    entries: Sequence[wp.LogMessage],
    seen: dict[str, list[int]],
    bad: list[Violation],
) -> None:
    """Per producer, acked ids and read ids must strictly increase with the append order."""
    per_producer: dict[str, list[Op]] = {}
    for op in ops:
        per_producer.setdefault(op.producer, []).append(op)
    for producer, mine in per_producer.items():
        mine.sort(key=lambda o: o.seq)
        acked = [o for o in mine if o.outcome == OK]
        for prev, cur in itertools.pairwise(acked):
            if cur.id <= prev.id:  # type: ignore[operator]
                bad.append(
                    Violation(
                        "reordered",
                        f"{producer}: {cur.name} acked at {cur.id} after {prev.name} at {prev.id}",
                    )
                )
        visible = [(o, entries[seen[o.name][0]].id) for o in mine if o.name in seen]
        for (prev, prev_id), (cur, cur_id) in itertools.pairwise(visible):
            if cur_id <= prev_id:
                bad.append(
                    Violation(
                        "reordered",
                        f"{producer}: {cur.name} read at {cur_id} before {prev.name} at {prev_id}",
                    )
                )


def _first_difference(a: bytes, b: bytes) -> int:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return min(len(a), len(b))


def _nearest(ids: Sequence[wp.LogMessageId], target: wp.LogMessageId) -> str:
    """Where the reader was around a missing id: the ids read just before and after it."""
    if not ids:
        return " (nothing was read)"
    i = bisect.bisect_left(ids, target)
    before = ids[i - 1] if i else "nothing"
    after = ids[i] if i < len(ids) else "nothing"
    return f" (read {before} before it, {after} after)"


def _last_committed(log: wp.LogHandle) -> wp.LogMessageId | None:
    committed = [wp.LogMessageId(seg.segment_id, seg.lac) for seg in log.segments() if seg.lac >= 0]
    return max(committed, default=None)


def read_back(
    log: wp.LogHandle, *, stall: float = 15.0, timeout: float = 300.0
) -> list[wp.LogMessage]:
    """Every committed entry of the log, from EARLIEST to the last committed one.

    Stops at the end the metadata shows (a slow backend does not end the read
    early), or when the reader makes no progress for ``stall`` seconds short of
    it (then the check reports what it could not reach, with evidence).
    """
    entries: list[wp.LogMessage] = []
    deadline = time.monotonic() + timeout
    progress = time.monotonic()
    with log.open_reader(wp.EARLIEST) as reader:
        while time.monotonic() < deadline:
            message = reader.read_next(timeout=0.5)
            if message is not None:
                entries.append(message)
                progress = time.monotonic()
                continue
            last = _last_committed(log)
            if last is None or reader.position > last or time.monotonic() - progress > stall:
                return entries
    raise AssertionError(f"reading {log.name!r} back took over {timeout}s ({len(entries)} read)")


def longest_stall(ops: Sequence[Op], start: float, end: float) -> float:
    """The longest time within ``[start, end]`` during which no append was acknowledged."""
    acks = sorted(op.completed for op in ops if op.outcome == OK and start <= op.completed <= end)
    marks = [start, *acks, end]
    return max(b - a for a, b in itertools.pairwise(marks))


def first_error(ops: Sequence[Op], after: float) -> Op | None:
    """The first append to fail (definitely or not) after ``after``."""
    failed = [op for op in ops if op.outcome in (FAIL, UNKNOWN) and op.completed >= after]
    return min(failed, key=lambda op: op.completed, default=None)


class Tail:
    """A reader kept open across faults: each ``poll`` appends what was committed since."""

    def __init__(self, log: wp.LogHandle) -> None:
        self._reader = log.open_reader(wp.EARLIEST)
        self.entries: list[wp.LogMessage] = []

    def poll(
        self, until: wp.LogMessageId | None = None, idle: float = 0.5, timeout: float = 60.0
    ) -> list[wp.LogMessage]:
        """Read on until an entry at or past ``until`` is read, or none comes for ``idle`` s."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if until is not None and self.entries and self.entries[-1].id >= until:
                break
            message = self._reader.read_next(timeout=idle)
            if message is None:
                break
            self.entries.append(message)
        return self.entries

    def close(self) -> None:
        self._reader.close()


def assert_valid(report: Report) -> None:
    """Fail the test with the minimal evidence of every violation kind."""
    assert report.valid, "history check failed:\n" + report.evidence()
