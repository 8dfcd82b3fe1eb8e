from __future__ import annotations

import pickle
from typing import TypeVar

import grpc
import pytest
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2

from museserve import errors
from museserve.api.grpc_status import GRPC_CODES, STATUS_DETAILS_KEY, to_grpc_status
from museserve.errors import ErrorCode, MuseError

ERROR_CLASSES: list[type[MuseError]] = [
    errors.InvalidArgument,
    errors.Unimplemented,
    errors.FailedPrecondition,
    errors.ResourceExhausted,
    errors.Unauthenticated,
    errors.DeadlineExceeded,
    errors.Cancelled,
    errors.Unavailable,
    errors.Internal,
    MuseError,
]


def error_for(code: ErrorCode) -> type[MuseError]:
    """A MuseError class carrying `code` (some codes have no named subclass)."""
    return type(f"Error_{code.name}", (MuseError,), {"code": code})


def trailers(error: MuseError, request_id: str = "req-1") -> dict[str, str | bytes]:
    return dict(to_grpc_status(error, request_id).trailing_metadata)


def rpc_status(error: MuseError) -> status_pb2.Status:
    raw = trailers(error)[STATUS_DETAILS_KEY]
    assert isinstance(raw, bytes)
    return status_pb2.Status.FromString(raw)


def details_of(error: MuseError) -> dict[str, any_pb2.Any]:
    status = rpc_status(error)
    by_type = {d.TypeName(): d for d in status.details}
    assert len(by_type) == len(status.details), "each detail type appears once"
    return by_type


M = TypeVar("M", bound=Message)


def unpack(packed: any_pb2.Any, message: M) -> M:
    assert packed.Unpack(message)
    return message


@pytest.mark.parametrize("code", list(ErrorCode))
def test_every_code_maps_to_the_status_of_the_same_name(code: ErrorCode) -> None:
    status = to_grpc_status(error_for(code)("boom"), "r")
    assert status.code is grpc.StatusCode[code.name]
    assert GRPC_CODES[code] is status.code


def test_code_table_is_complete() -> None:
    assert set(GRPC_CODES) == set(ErrorCode)


@pytest.mark.parametrize("code", list(ErrorCode))
def test_details_trailer_parses_as_rpc_status(code: ErrorCode) -> None:
    error = error_for(code)("something broke", field="a.b")
    status = rpc_status(error)
    assert status.code == getattr(code_pb2, code.name)
    assert status.code == grpc.StatusCode[code.name].value[0]
    assert status.message == "a.b: something broke"


def test_details_string_names_the_field() -> None:
    status = to_grpc_status(errors.InvalidArgument("must be between 0 and 2", field="sampling.temperature"), "r")
    assert status.details == "sampling.temperature: must be between 0 and 2"
    assert to_grpc_status(errors.Internal("oops"), "r").details == "oops"


def test_bad_request_only_with_a_field() -> None:
    details = details_of(errors.InvalidArgument("content must not be empty", field="messages[1].content"))
    bad = unpack(details["google.rpc.BadRequest"], error_details_pb2.BadRequest())
    assert len(bad.field_violations) == 1
    assert bad.field_violations[0].field == "messages[1].content"
    assert bad.field_violations[0].description == "content must not be empty"
    assert "google.rpc.BadRequest" not in details_of(errors.InvalidArgument("no field"))


def test_retry_info_only_with_a_delay() -> None:
    details = details_of(errors.ResourceExhausted("busy", retry_after_s=1.5))
    retry = unpack(details["google.rpc.RetryInfo"], error_details_pb2.RetryInfo())
    assert retry.retry_delay.seconds == 1
    assert retry.retry_delay.nanos == 500_000_000
    assert "google.rpc.RetryInfo" not in details_of(errors.ResourceExhausted("busy"))


def test_zero_retry_delay_is_still_sent() -> None:
    details = details_of(errors.Unavailable("restarting", retry_after_s=0.0))
    retry = unpack(details["google.rpc.RetryInfo"], error_details_pb2.RetryInfo())
    assert retry.retry_delay.ToNanoseconds() == 0


@pytest.mark.parametrize("error_class", ERROR_CLASSES)
def test_error_info_always(error_class: type[MuseError]) -> None:
    details = details_of(error_class("x"))
    info = unpack(details["google.rpc.ErrorInfo"], error_details_pb2.ErrorInfo())
    assert info.domain == "museserve"
    assert info.reason == error_class.code.name


def test_all_details_together() -> None:
    error = error_for(ErrorCode.INVALID_ARGUMENT)("bad", field="f", retry_after_s=2.0)
    assert set(details_of(error)) == {"google.rpc.ErrorInfo", "google.rpc.BadRequest", "google.rpc.RetryInfo"}


def test_only_error_info_without_field_or_delay() -> None:
    assert set(details_of(errors.Internal("x"))) == {"google.rpc.ErrorInfo"}


def test_request_id_trailer() -> None:
    metadata = to_grpc_status(errors.Cancelled("gone"), "req-42").trailing_metadata
    assert ("x-request-id", "req-42") in metadata
    assert [key for key, _ in metadata] == [STATUS_DETAILS_KEY, "x-request-id"]


def test_trailer_keys_are_valid_grpc_metadata() -> None:
    for key, value in to_grpc_status(errors.Internal("x"), "r").trailing_metadata:
        assert key == key.lower()
        assert isinstance(value, bytes) == key.endswith("-bin")


# ---- MuseError values ----


@pytest.mark.parametrize("error_class", ERROR_CLASSES)
def test_errors_survive_pickling(error_class: type[MuseError]) -> None:
    error = error_class("too many", field="messages", retry_after_s=0.25)
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is error_class
    assert copy.message == "too many"
    assert copy.field == "messages"
    assert copy.retry_after_s == 0.25
    assert copy.code is error_class.code
    assert str(copy) == "messages: too many"


def test_pickling_keeps_unset_fields() -> None:
    copy = pickle.loads(pickle.dumps(errors.Unavailable("down")))
    assert (copy.message, copy.field, copy.retry_after_s) == ("down", "", None)


def test_str_with_and_without_field() -> None:
    assert str(errors.InvalidArgument("must not be negative", field="sampling.top_k")) == (
        "sampling.top_k: must not be negative"
    )
    assert str(errors.Internal("model crashed")) == "model crashed"


def test_error_codes() -> None:
    assert errors.InvalidArgument.code is ErrorCode.INVALID_ARGUMENT
    assert errors.ResourceExhausted.code is ErrorCode.RESOURCE_EXHAUSTED
    assert errors.DeadlineExceeded.code is ErrorCode.DEADLINE_EXCEEDED
    assert errors.Cancelled.code is ErrorCode.CANCELLED
    assert MuseError.code is ErrorCode.INTERNAL
    assert all(issubclass(c, Exception) for c in ERROR_CLASSES)
