"""Errors as values the caller can act on.

Every refusal the platform makes is a `MuseError` carrying a transport-neutral code and,
where a client field is at fault, that field's path (`messages[1].content[0].text`). The
API edge maps codes to gRPC status codes and HTTP statuses; code below the edge never
imports grpc.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.StrEnum):
    INVALID_ARGUMENT = "invalid_argument"
    NOT_FOUND = "not_found"
    FAILED_PRECONDITION = "failed_precondition"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    UNAUTHENTICATED = "unauthenticated"
    PERMISSION_DENIED = "permission_denied"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    CANCELLED = "cancelled"
    UNAVAILABLE = "unavailable"
    UNIMPLEMENTED = "unimplemented"
    INTERNAL = "internal"


class MuseError(Exception):
    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(
        self,
        message: str,
        *,
        field: str = "",
        retry_after_s: float | None = None,
        metadata: tuple[tuple[str, str], ...] = (),
    ):
        super().__init__(message)
        self.message = message
        self.field = field
        self.retry_after_s = retry_after_s
        self.metadata = metadata  # extra response metadata, e.g. the remaining quota

    def __reduce__(self):  # survives pickling across Ray actors with its fields intact
        return (_rebuild, (type(self), self.message, self.field, self.retry_after_s, self.metadata))

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


def _rebuild(
    cls: type[MuseError], message: str, field: str, retry_after_s: float | None, metadata: tuple[tuple[str, str], ...]
):
    return cls(message, field=field, retry_after_s=retry_after_s, metadata=metadata)


class InvalidArgument(MuseError):
    code = ErrorCode.INVALID_ARGUMENT


class NotFound(MuseError):
    code = ErrorCode.NOT_FOUND


class Unimplemented(MuseError):
    code = ErrorCode.UNIMPLEMENTED


class FailedPrecondition(MuseError):
    code = ErrorCode.FAILED_PRECONDITION


class ResourceExhausted(MuseError):
    code = ErrorCode.RESOURCE_EXHAUSTED


class Unauthenticated(MuseError):
    code = ErrorCode.UNAUTHENTICATED


class PermissionDenied(MuseError):
    code = ErrorCode.PERMISSION_DENIED


class DeadlineExceeded(MuseError):
    code = ErrorCode.DEADLINE_EXCEEDED


class Cancelled(MuseError):
    code = ErrorCode.CANCELLED


class Unavailable(MuseError):
    code = ErrorCode.UNAVAILABLE


class Internal(MuseError):
    code = ErrorCode.INTERNAL
