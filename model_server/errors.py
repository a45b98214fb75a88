"""The model server's errors: :class:`ModelServerError`, the root of every error the package
raises (each keeps the built-in base it had beside it), and :class:`ServeError`, the one error
a request fails with inside the server; each protocol maps ``kind`` to its status
(grpc_service.CODES, rest.STATUS)."""

from __future__ import annotations


class ModelServerError(Exception):
    """Root of every error the model server raises (configuration, keys, backends, requests)."""


class ServeError(ModelServerError):
    """A request failed; ``kind`` picks the protocol status (see grpc_service / rest)."""

    INVALID = "invalid"  # INVALID_ARGUMENT / 400
    NOT_FOUND = "not_found"  # NOT_FOUND / 404
    UNAVAILABLE = "unavailable"  # UNAVAILABLE / 503 (queue full, draining)
    TOO_LARGE = "too_large"  # RESOURCE_EXHAUSTED / 413
    INTERNAL = "internal"  # INTERNAL / 500

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class BudgetShort(ServeError):
    """The byte budget (``limits.max_buffered_bytes``) has no room for what a request needs:
    UNAVAILABLE (server busy), or TOO_LARGE when it never could."""
