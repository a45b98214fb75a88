"""The one error a request fails with inside the server; each protocol maps ``kind`` to its
status (grpc_service.CODES, rest.STATUS)."""

from __future__ import annotations


class ServeError(Exception):
    """A request failed; ``kind`` picks the protocol status (see grpc_service / rest)."""

    INVALID = "invalid"          # INVALID_ARGUMENT / 400
    NOT_FOUND = "not_found"      # NOT_FOUND / 404
    UNAVAILABLE = "unavailable"  # UNAVAILABLE / 503 (queue full, draining)
    TOO_LARGE = "too_large"      # RESOURCE_EXHAUSTED / 413
    INTERNAL = "internal"        # INTERNAL / 500

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
