"""Domain errors. HTTP-free: the API layer maps each class to one status code."""

from __future__ import annotations


class ServiceError(Exception):
    """Base class; `code` is the stable machine-readable error code."""

    code = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(ServiceError):
    code = "invalid_request"


class NotFound(ServiceError):
    code = "not_found"


class Conflict(ServiceError):
    code = "conflict"


class InvalidAdapter(ServiceError):
    code = "invalid_adapter"


class Unavailable(ServiceError):
    code = "unavailable"


class StorageFull(ServiceError):
    """No space left for a write; it changed nothing and can be retried once space is freed."""

    code = "insufficient_storage"


class Overloaded(ServiceError):
    """The request queue is full; the client should retry after a short pause."""

    code = "overloaded"


class EncoderFailed(ServiceError):
    """The exact encoder path failed (no shortcut was involved, or its fallback failed too)."""

    code = "encoder_failed"
