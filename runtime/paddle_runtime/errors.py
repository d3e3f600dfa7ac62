"""The runtime's one error tree: every class carries its ``kind`` and its HTTP ``status``.

Every error the runtime raises on purpose is a :class:`RuntimeError_` subclass with a message that
names the problem.  ``kind`` is a short stable word (logs, metrics, the admin answer, the ``fetch``
exit code); ``status`` is what an HTTP answer carries.  The HTTP layer (``app.py``) maps them to
``{"error": "..."}`` in exactly one place (:func:`error_body`), so handlers never build error
responses themselves.  Bad input is 4xx; only engine faults are 5xx.

Families:

* request errors (400-431): what a client sent is wrong;
* serving errors (5xx): not ready, overloaded, or the engine failed;
* model errors: :class:`ModelLoadError` (a start-up failure), :class:`IntegrityError` and its
  subclasses (a model directory failed a check), :class:`ModelRejected` (a reload candidate was
  refused; the served model is unchanged);
* :class:`FetchError` and its subclasses: ``paddle-runtime fetch`` could not get the model.
"""

from __future__ import annotations

from typing import Any


class RuntimeError_(Exception):  # noqa: N801 - trailing underscore avoids shadowing the builtin
    """Base class: an error with a ``kind``, an HTTP ``status`` and optional extra response headers.

    ``kind`` may be given per instance (a refused reload says which check refused it).
    """

    status: int = 500
    kind: str = "error"

    def __init__(self, message: str, *, kind: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if kind is not None:
            self.kind = kind
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """The JSON answer for this error (the one mapping every port uses)."""
        return {"error": self.message}


# ---- request errors ---------------------------------------------------------------------------------


class BadRequest(RuntimeError_):
    """The request cannot be understood (malformed JSON or HTTP, bad framing, missing fields)."""

    status = 400
    kind = "bad request"


class InvalidInput(BadRequest):
    """A tensor does not fit the model: unknown/missing name, dtype, shape, data length, empty."""

    kind = "invalid input"


class Unauthorized(RuntimeError_):
    """Missing or wrong bearer token."""

    status = 401
    kind = "unauthorized"


class NotFound(RuntimeError_):
    """Unknown route, model name or model version."""

    status = 404
    kind = "not found"


class MethodNotAllowed(RuntimeError_):
    """The route exists but not for this HTTP method."""

    status = 405
    kind = "method not allowed"


class PayloadTooLarge(RuntimeError_):
    """The body is over ``max_body_bytes``."""

    status = 413
    kind = "too large"


class UnsupportedMediaType(RuntimeError_):
    """The request's content type cannot be read."""

    status = 415
    kind = "unsupported media type"


class TooManyRequests(RuntimeError_):
    """Client-side rate limit hit."""

    status = 429
    kind = "rate limited"

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, round(retry_after_s)))})


class HeadersTooLarge(RuntimeError_):
    """The request line plus headers are over the parser's limit."""

    status = 431
    kind = "headers too large"


# ---- serving errors ---------------------------------------------------------------------------------


class Unavailable(RuntimeError_):
    """Not ready, shutting down, or the batch queue is full: retry later."""

    status = 503
    kind = "unavailable"

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, round(retry_after_s)))})


class QueueFull(Unavailable):
    """The bounded batch queue is full; the request was not admitted."""

    kind = "queue full"


class EngineError(RuntimeError_):
    """Paddle failed while running a batch (an engine fault, not the caller's fault)."""

    status = 500
    kind = "engine"


# ---- model errors -----------------------------------------------------------------------------------


class ModelLoadError(RuntimeError_):
    """The model directory is invalid or the predictor cannot be created (a start-up failure)."""

    status = 503
    kind = "load"


class ConfigError(RuntimeError_):
    """The settings cannot work together (e.g. a TLS certificate without its key); start-up fails."""

    status = 500
    kind = "config"


class ModelRejected(RuntimeError_):
    """A reload candidate failed a check; the served model is unchanged (422 on the admin port).

    ``kind`` names the check: an integrity kind, ``probe``, ``crash``, ``load``, ``contract``, ``missing``.
    """

    status = 422
    kind = "rejected"

    def body(self) -> dict[str, Any]:
        """The error plus which check refused the candidate."""
        return {"error": self.message, "kind": self.kind}


class IntegrityError(RuntimeError_):
    """A model directory failed an integrity check; the model must not be loaded.

    422: the request to load it (admin reload, fetch) was well formed, the model is not acceptable.
    """

    status = 422
    kind = "integrity"


class UnsignedModelError(IntegrityError):
    """No manifest, HMAC or signature where the configuration requires one."""

    kind = "unsigned"


class IncompleteModelError(IntegrityError):
    """A file listed in the manifest is missing or shorter than recorded (half-written, truncated)."""

    kind = "incomplete"


class TamperedModelError(IntegrityError):
    """A file's content differs from the manifest, or a file is present that the manifest omits."""

    kind = "checksum"


class BadSignatureError(IntegrityError):
    """The manifest's HMAC or the model-signing signature does not verify with the configured key."""

    kind = "signature"


class SigningUnavailableError(IntegrityError):
    """A public/private key is configured but unusable, or the optional ``model-signing`` package is missing."""

    status = 500
    kind = "config"


# ---- fetch errors -----------------------------------------------------------------------------------


class FetchError(RuntimeError_):
    """A fetch failed for a reason outside the model's content (502: the model source failed)."""

    status = 502
    kind = "error"


class SourceNotFoundError(FetchError):
    """The URI names nothing at the source."""

    status = 404
    kind = "not found"


class SourceAuthError(FetchError):
    """The source refused the credentials (or there were none)."""

    status = 403
    kind = "auth"


class SourceUnavailableError(FetchError):
    """The source kept failing (network, 5xx) after every retry."""

    status = 503
    kind = "unavailable"


class DiskFullError(FetchError):
    """The destination volume has no room for the model."""

    status = 507
    kind = "disk full"


class FetchConfigError(FetchError):
    """The fetch options or URI cannot work (bad scheme, unreadable token, unwritable destination)."""

    status = 400
    kind = "config"
