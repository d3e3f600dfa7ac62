"""Endpoint security: bearer tokens from files and a per-client rate limit.

Pure helpers with no HTTP framework in them: the wiring installs :meth:`Guard.check` as a hook of
the inference app (run once per request, before the body is parsed), whose one error mapping turns
the typed errors (401, 429 with ``Retry-After``) into answers; the admin app (``admin.py``) uses
:class:`TokenFile` with its own token.  TLS is ``tls.py``; the request size limit is
``max_body_bytes`` in the transport.

Tokens are files (a Kubernetes Secret volume) and are re-read when the file changes, so a rotated
Secret takes effect without a restart.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections import OrderedDict
from pathlib import Path

from .errors import TooManyRequests, Unauthorized
from .settings import RuntimeSettings

log = logging.getLogger("paddle_runtime.auth")

# Routes probes and scrapers reach without a token: kubelet probes and Prometheus carry none.
PUBLIC_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/health", "/metrics"})


class TokenFile:
    """A bearer token read from a file, re-read (at most once a second) when its mtime changes."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self._token: bytes | None = None
        self._mtime: int | None = None
        self._checked = 0.0
        self._lock = threading.Lock()

    def get(self) -> bytes:
        """The current token (re-read when the file changed; the previous one kept if unreadable)."""
        now = time.monotonic()
        with self._lock:
            if self._token is None or now - self._checked > 1.0:
                self._checked = now
                try:
                    mtime = self.path.stat().st_mtime_ns
                    if mtime != self._mtime:
                        token = self.path.read_bytes().strip()
                        if not token:
                            raise ValueError(f"token file {self.path} is empty")
                        self._token, self._mtime = token, mtime
                except OSError as exc:
                    if self._token is None:
                        raise ValueError(f"cannot read token file {self.path}: {exc.strerror}") from exc
                    log.warning(
                        "cannot re-read token file %s (%s); keeping the previous token",
                        self.path,
                        exc.strerror,
                    )
            assert self._token is not None  # set above, or the first read raised
            return self._token

    def check(self, authorization: str | None) -> bool:
        """True when ``authorization`` is ``Bearer <token>`` with the current token."""
        if not authorization or not authorization.startswith("Bearer "):
            return False
        # compare_digest: comparison time must not leak how many leading bytes were right.
        return hmac.compare_digest(authorization[7:].strip().encode(), self.get())


class RateLimiter:
    """Token bucket per client: ``rate`` requests per second, bursts up to ``burst``.

    Clients are bounded (LRU of ``max_clients``) so a scan from many addresses cannot grow memory.
    """

    def __init__(self, rate: float, burst: int = 0, max_clients: int = 10_000) -> None:
        self.rate = rate
        self.burst = float(burst or max(1.0, rate))
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def acquire(self, client: str) -> float:
        """0.0 when admitted, else the seconds until the client may send again."""
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.pop(client, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                wait, tokens = 0.0, tokens - 1.0
            else:
                wait = (1.0 - tokens) / self.rate
            self._buckets[client] = (tokens, now)
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
        return wait


class Guard:
    """The per-request checks of the inference port, in order: token, then rate limit."""

    def __init__(self, settings: RuntimeSettings) -> None:
        self.token = TokenFile(settings.auth_token_file) if settings.auth_token_file else None
        if self.token is not None:
            self.token.get()  # an unreadable token file fails the start, not the first request
        self.limiter = (
            RateLimiter(settings.rate_limit_rps, settings.rate_limit_burst)
            if settings.rate_limit_rps > 0
            else None
        )

    @property
    def active(self) -> bool:
        """Whether any check is configured (token or rate limit)."""
        return self.token is not None or self.limiter is not None

    def check(self, path: str, authorization: str | None, peer: str) -> None:
        """Raise :class:`Unauthorized` or :class:`TooManyRequests`; return when the request may proceed."""
        if path in PUBLIC_PATHS:
            return
        client = peer
        if self.token is not None:
            if not self.token.check(authorization):
                raise Unauthorized(
                    "missing or wrong bearer token (send 'Authorization: Bearer <token>')",
                    headers={"WWW-Authenticate": 'Bearer realm="paddle-runtime"'},
                )
        elif authorization:
            # Without auth the token still separates clients behind one proxy address.
            client = "tok:" + authorization[-16:]
        if self.limiter is not None:
            wait = self.limiter.acquire(client)
            if wait > 0:
                raise TooManyRequests(
                    f"rate limit of {self.limiter.rate:g} requests/s exceeded", retry_after_s=wait
                )
