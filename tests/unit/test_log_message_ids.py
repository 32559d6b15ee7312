"""``LogMessageIds``, the ids of a ``write_batch``: a lazy sequence that behaves as the list
of the same ``LogMessageId``s in every way a read-only list can be used."""

from __future__ import annotations

import pickle
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from woodpecker.message import LogMessageId, LogMessageIds

index_or_none = st.none() | st.integers(-12, 12)


def pair(segment: int, first: int, count: int) -> tuple[LogMessageIds, list[LogMessageId]]:
    ids = LogMessageIds(segment, range(first, first + count))
    return ids, [LogMessageId(segment, e) for e in range(first, first + count)]


@given(st.integers(0, 5), st.integers(0, 2**63 - 20), st.integers(0, 10))
def test_reads_as_the_list_of_the_same_ids(segment: int, first: int, count: int) -> None:
    ids, expected = pair(segment, first, count)
    assert isinstance(ids, Sequence)
    assert len(ids) == len(expected)
    assert list(ids) == expected
    assert list(reversed(ids)) == list(reversed(expected))
    assert ids == expected and expected == ids
    assert (ids != expected) is False
    for i in range(-count - 2, count + 2):
        if -count <= i < count:
            got = ids[i]
            assert got == expected[i] and type(got) is LogMessageId
        else:
            with pytest.raises(IndexError):
                ids[i]
    assert all(type(x) is LogMessageId for x in ids)
    assert bool(ids) == bool(expected)


@given(
    st.integers(0, 10),
    st.integers(0, 10),
    index_or_none,
    index_or_none,
    st.none() | st.integers(-4, 4).filter(bool),
)
def test_slices_as_a_list_does(
    first: int, count: int, start: int | None, stop: int | None, step: int | None
) -> None:
    ids, expected = pair(3, first, count)
    part = ids[start:stop:step]
    assert part == expected[start:stop:step]
    assert list(part) == expected[start:stop:step]
    assert len(part) == len(expected[start:stop:step])


@given(st.integers(0, 6), st.integers(0, 12), st.integers(-1, 15), index_or_none, index_or_none)
def test_membership_index_and_count_as_a_list_does(
    first: int, count: int, probe: int, start: int | None, stop: int | None
) -> None:
    ids, expected = pair(2, first, count)
    for value in (LogMessageId(2, probe), (2, probe), LogMessageId(1, probe), "2:3", 2, (2,)):
        assert (value in ids) == (value in expected)
        assert ids.count(value) == expected.count(value)
        begin = 0 if start is None else start
        end = len(expected) if stop is None else stop
        try:
            want: int | None = expected.index(value, begin, end)
        except ValueError:
            want = None
        if want is None:
            with pytest.raises(ValueError):
                ids.index(value, begin, end)
        else:
            assert ids.index(value, begin, end) == want


def test_equality_follows_the_ids() -> None:
    ids, expected = pair(4, 10, 3)
    assert ids == LogMessageIds(4, range(10, 13))
    assert ids != LogMessageIds(5, range(10, 13))
    assert ids != LogMessageIds(4, range(10, 14))
    assert ids != expected[:2] and ids != [*expected[:2], LogMessageId(4, 99)]
    assert ids != tuple(expected)  # a list is never equal to a tuple either
    assert LogMessageIds(1, range(0)) == LogMessageIds(2, range(5, 5)) == []
    with pytest.raises(TypeError):
        hash(ids)  # as a list
    assert [*expected, *ids] == expected + expected  # unpacks and concatenates as a list


def test_survives_pickling_and_says_what_it_holds() -> None:
    ids, expected = pair(7, 100, 4)
    assert pickle.loads(pickle.dumps(ids)) == expected
    assert repr(ids) == "LogMessageIds(7, range(100, 104))"
