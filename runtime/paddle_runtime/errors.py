"""Typed runtime errors, each carrying its HTTP status.

Every error the runtime raises on purpose is a :class:`RuntimeError_` subclass with a ``status``
and a message that names the problem.  The HTTP layer (``server.py``) maps them to
``{"error": "..."}`` in exactly one place, so handlers never build error responses themselves and
nothing a client sends can turn into an unhandled exception.  Bad input is 4xx; only engine faults
are 5xx.
"""

from __future__ import annotations


class RuntimeError_(Exception):  # noqa: N801 - trailing underscore avoids shadowing the builtin
    """Base class: an error with an HTTP status and optional extra response headers."""

    status: int = 500

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class BadRequest(RuntimeError_):
    """The request cannot be understood (malformed JSON, bad framing, missing fields)."""

    status = 400


class InvalidInput(BadRequest):
    """A tensor does not fit the model: unknown/missing name, dtype, shape, data length, empty."""


class NotFound(RuntimeError_):
    """Unknown route, model name or model version."""

    status = 404


class MethodNotAllowed(RuntimeError_):
    status = 405


class PayloadTooLarge(RuntimeError_):
    """The body is over ``max_body_bytes``."""

    status = 413


class UnsupportedMediaType(RuntimeError_):
    status = 415


class Unauthorized(RuntimeError_):
    """Missing or wrong bearer token (used by auth, added by the resilience layer)."""

    status = 401


class TooManyRequests(RuntimeError_):
    """Client-side rate limit hit."""

    status = 429

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, round(retry_after_s)))})


class Unavailable(RuntimeError_):
    """Not ready, shutting down, or the batch queue is full: retry later."""

    status = 503

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, round(retry_after_s)))})


class QueueFull(Unavailable):
    """The bounded batch queue is full; the request was not admitted."""


class EngineError(RuntimeError_):
    """Paddle failed while running a batch (an engine fault, not the caller's fault)."""

    status = 500


class ModelLoadError(Exception):
    """The model directory is invalid or the predictor cannot be created (a start-up failure)."""
