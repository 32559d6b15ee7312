"""The error taxonomy: a failed append says whether it was written, every error whether to retry.

The branch table below is the contract a caller of ``write()`` relies on; the wire pair is the
only way an error crosses from the uploader and the logstore to the producer.
"""

from __future__ import annotations

import inspect

import pytest

import woodpecker as wp
from woodpecker import errors

PUBLIC_ERRORS = sorted(
    (
        obj
        for obj in vars(wp).values()
        if inspect.isclass(obj) and issubclass(obj, wp.WoodpeckerError)
    ),
    key=lambda cls: cls.__name__,
)

# Every class an append (write, write_async, write_batch) can fail with, and what it promises.
APPEND_OUTCOMES: dict[type[wp.WoodpeckerError], type[wp.WoodpeckerError]] = {
    wp.EntryTooLargeError: wp.NotWrittenError,
    wp.WriterFencedError: wp.NotWrittenError,
    wp.WriterClosedError: wp.NotWrittenError,
    wp.ClientClosedError: wp.NotWrittenError,
    wp.ForkedClientError: wp.NotWrittenError,
    wp.BackpressureTimeout: wp.NotWrittenError,
    wp.BatchRejectedError: wp.NotWrittenError,
    wp.NotDurableError: wp.NotWrittenError,
    wp.CommitNotAttemptedError: wp.NotWrittenError,
    wp.CommitOutcomeUnknownError: wp.OutcomeUnknownError,
    wp.LogstoreUnavailableError: wp.OutcomeUnknownError,
    wp.QuorumUnavailableError: wp.OutcomeUnknownError,
}
BRANCHES = (wp.NotWrittenError, wp.OutcomeUnknownError)


def test_every_error_is_exported() -> None:
    defined = {
        cls
        for cls in vars(errors).values()
        if inspect.isclass(cls) and issubclass(cls, wp.WoodpeckerError)
    }
    assert defined == set(PUBLIC_ERRORS)


@pytest.mark.parametrize("cls", PUBLIC_ERRORS, ids=lambda cls: cls.__name__)
def test_every_error_says_whether_to_retry(cls: type[wp.WoodpeckerError]) -> None:
    assert isinstance(cls.retryable, bool)
    assert isinstance(cls("x").retryable, bool)


@pytest.mark.parametrize("cls", PUBLIC_ERRORS, ids=lambda cls: cls.__name__)
def test_no_error_is_in_both_branches(cls: type[wp.WoodpeckerError]) -> None:
    assert not (issubclass(cls, wp.NotWrittenError) and issubclass(cls, wp.OutcomeUnknownError))


@pytest.mark.parametrize(
    ("cls", "branch"), APPEND_OUTCOMES.items(), ids=lambda x: getattr(x, "__name__", "")
)
def test_every_append_error_is_in_exactly_one_branch(
    cls: type[wp.WoodpeckerError], branch: type[wp.WoodpeckerError]
) -> None:
    assert [b for b in BRANCHES if issubclass(cls, b)] == [branch]


def test_append_path_outages_stay_catchable_as_the_outage() -> None:
    """Callers that catch StorageUnavailableError / MetadataUnavailableError keep catching them."""
    assert issubclass(wp.NotDurableError, wp.StorageUnavailableError)
    assert issubclass(wp.CommitNotAttemptedError, wp.MetadataUnavailableError)
    assert issubclass(wp.CommitOutcomeUnknownError, wp.MetadataUnavailableError)
    # read and admin calls raise the plain outage: it promises nothing about appends
    for plain in (wp.StorageUnavailableError, wp.MetadataUnavailableError):
        assert not issubclass(plain, BRANCHES) and plain.retryable


def test_retryable_follows_the_cause() -> None:
    retryable = {cls.__name__ for cls in PUBLIC_ERRORS if cls.retryable}
    assert retryable == {
        "BackpressureTimeout",
        "StorageUnavailableError",
        "MetadataUnavailableError",
        "NotDurableError",
        "CommitNotAttemptedError",
        "CommitOutcomeUnknownError",
        "QuorumUnavailableError",
    }


@pytest.mark.parametrize(
    ("cause", "written", "unknown"),
    [
        (
            wp.StorageUnavailableError("s3 down"),
            wp.NotDurableError("s3 down"),
            wp.OutcomeUnknownError("StorageUnavailableError: s3 down"),
        ),
        (
            wp.MetadataUnavailableError("etcd down"),
            wp.CommitNotAttemptedError("etcd down"),
            wp.CommitOutcomeUnknownError("etcd down"),
        ),
        (
            wp.CorruptedDataError("bad batch"),
            wp.BatchRejectedError("CorruptedDataError: bad batch"),
            wp.OutcomeUnknownError("CorruptedDataError: bad batch"),
        ),
        (
            wp.WoodpeckerError("odd"),
            wp.BatchRejectedError("odd"),
            wp.OutcomeUnknownError("odd"),
        ),
    ],
    ids=["storage", "metadata", "other", "plain"],
)
def test_a_cause_becomes_the_outcome_of_the_appends_it_failed(
    cause: wp.WoodpeckerError, written: wp.WoodpeckerError, unknown: wp.WoodpeckerError
) -> None:
    for got, want in (
        (errors.not_written(cause), written),
        (errors.outcome_unknown(cause), unknown),
    ):
        assert (type(got), str(got)) == (type(want), str(want))


def test_a_cause_already_in_a_branch_is_kept() -> None:
    fenced = wp.WriterFencedError("taken over")
    lost = wp.LogstoreUnavailableError("gone")
    assert errors.not_written(fenced) is fenced
    assert errors.outcome_unknown(lost) is lost


@pytest.mark.parametrize("cls", PUBLIC_ERRORS, ids=lambda cls: cls.__name__)
def test_every_error_crosses_the_wire_as_itself(cls: type[wp.WoodpeckerError]) -> None:
    back = errors.from_wire(errors.to_wire(cls("why it failed")))
    assert type(back) is cls and str(back) == "why it failed"


def test_the_wire_names_what_is_outside_the_hierarchy() -> None:
    back = errors.from_wire(errors.to_wire(OSError("disk on fire")))
    assert type(back) is wp.WoodpeckerError and str(back) == "OSError: disk on fire"
    newer = errors.from_wire({"error": "ErrorOfANewerVersion", "message": "m"})
    assert type(newer) is wp.WoodpeckerError and str(newer) == "m"
    # a name of the module that is not an error class is no way to build anything else
    assert type(errors.from_wire({"error": "to_wire", "message": "m"})) is wp.WoodpeckerError


def test_the_module_docstring_draws_every_error() -> None:
    tree = errors.__doc__ or ""
    missing = [cls.__name__ for cls in PUBLIC_ERRORS if f" {cls.__name__}" not in tree]
    assert missing == []
