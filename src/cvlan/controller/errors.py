"""The one domain error of the controller, and its mapping to HTTP (done only in api/errors)."""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class Kind(StrEnum):
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    INVALID = "invalid"
    FORBIDDEN = "forbidden"
    UNAUTHENTICATED = "unauthenticated"
    PRECONDITION = "precondition"
    EXHAUSTED = "exhausted"
    UNAVAILABLE = "unavailable"
    TOO_LARGE = "too_large"


HTTP_STATUS: dict[Kind, int] = {
    Kind.NOT_FOUND: 404,
    Kind.CONFLICT: 409,
    Kind.INVALID: 422,
    Kind.FORBIDDEN: 403,
    Kind.UNAUTHENTICATED: 401,
    Kind.PRECONDITION: 412,
    Kind.EXHAUSTED: 409,
    Kind.UNAVAILABLE: 503,
    Kind.TOO_LARGE: 413,
}


class DomainError(Exception):
    """An expected failure with a kind, a message for the user and optional details."""

    def __init__(self, kind: Kind, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.details = details

    @property
    def status(self) -> int:
        return HTTP_STATUS[self.kind]


def not_found(what: str) -> DomainError:
    return DomainError(Kind.NOT_FOUND, f"{what} not found")
