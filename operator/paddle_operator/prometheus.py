"""Ask Prometheus for canary analysis and SLA figures (the client side of ``promql.py``).

A thin wrapper over ``prometheus-api-client`` that (1) bounds every call with a timeout and no
retry storm, so a dead Prometheus costs one short timeout per tick instead of stalling a handler,
and (2) returns typed figures or :class:`~paddle_operator.rollout.Unreachable`, never raises on
network trouble: the rollout state machine turns "unreachable" into "hold the weight".
"""

from __future__ import annotations

import math
import re

import requests
from prometheus_api_client import PrometheusApiClientException, PrometheusConnect
from urllib3.util.retry import Retry

from paddle_operator import promql, truth
from paddle_operator.rollout import Figures, SLAFigures, Unreachable

DEFAULT_TIMEOUT_S = 5.0


def _short(exc: BaseException) -> str:
    """A one-line reason for status messages: no query text, no urllib3 retry boilerplate."""
    text = str(exc)
    if "Connection refused" in text:
        return "connection refused"
    if isinstance(exc, requests.Timeout):
        return "timed out"
    text = re.sub(r"with url: \S+", "", text)
    return f"{type(exc).__name__}: {text}"[:200]


class _QueryFailed(Exception):
    """Any reason a query gave no usable answer (network, HTTP status, malformed result)."""


class PrometheusQuerier:
    """Typed queries against one Prometheus."""

    def __init__(self, url: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.url = str(url).rstrip("/")
        self.timeout_s = timeout_s
        # No retries: the caller runs again next interval; retrying with backoff inside one tick would
        # turn a dead Prometheus into a handler that hangs for tens of seconds.
        self._conn = PrometheusConnect(url=self.url, retry=Retry(total=0), timeout=timeout_s)

    def close(self) -> None:
        """Release the HTTP session."""
        self._conn.close()

    def __enter__(self) -> PrometheusQuerier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def scalar(self, query: str) -> float | None:
        """One number from an instant query; ``None`` for an empty result or NaN (no data)."""
        try:
            result = self._conn.custom_query(query)
        except (requests.RequestException, PrometheusApiClientException, ValueError, KeyError) as exc:
            raise _QueryFailed(_short(exc)) from exc
        if not isinstance(result, list):
            raise _QueryFailed(f"unexpected result type {type(result).__name__}")
        if not result:
            return None
        if len(result) > 1:
            raise _QueryFailed(f"query returned {len(result)} series, expected one: {query}")
        try:
            value = float(result[0]["value"][1])
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise _QueryFailed(f"malformed sample: {result[0]!r}") from exc
        return None if math.isnan(value) or math.isinf(value) else value

    def vector(self, query: str) -> list[dict]:
        """The samples of an instant query, as Prometheus returns them (``metric``, ``value``)."""
        try:
            result = self._conn.custom_query(query)
        except (requests.RequestException, PrometheusApiClientException, ValueError, KeyError) as exc:
            raise _QueryFailed(_short(exc)) from exc
        if not isinstance(result, list):
            raise _QueryFailed(f"unexpected result type {type(result).__name__}")
        return result

    def runtime_reports(self) -> truth.Reports | Unreachable:
        """What every pod of every resource reports (served version, fallback, reload error)."""
        try:
            return truth.index_samples(self.vector(promql.runtime_truth()))
        except _QueryFailed as exc:
            return Unreachable(f"{self.url}: {exc}")

    def canary_figures(self, target: promql.Target, window_s: float) -> Figures | Unreachable:
        """p99, error rate, request count and QPS of one track over ``window_s``."""
        q = promql.analysis_queries(target, window_s)
        try:
            p99_s = self.scalar(q.p99_seconds)
            err = self.scalar(q.error_rate)
            requests_seen = self.scalar(q.requests)
            qps = self.scalar(q.qps)
        except _QueryFailed as exc:
            return Unreachable(f"{self.url}: {exc}")
        return Figures(
            requests=requests_seen or 0.0,
            p99_ms=None if p99_s is None else p99_s * 1000.0,
            error_rate=err,
            qps=qps,
        )

    def sla_figures(
        self, target: promql.Target, window_s: float, availability_target: float, rate_window_s: float
    ) -> SLAFigures | Unreachable:
        """The figures behind ``status.sla`` and the ``SLAMet`` condition."""
        q = promql.sla_queries(target, window_s, availability_target, rate_window_s)
        try:
            p99_s = self.scalar(q.p99_seconds)
            return SLAFigures(
                p99_ms=None if p99_s is None else p99_s * 1000.0,
                error_rate=self.scalar(q.error_rate),
                availability=self.scalar(q.availability),
                qps=self.scalar(q.qps),
                error_budget_remaining=self.scalar(q.error_budget_remaining),
            )
        except _QueryFailed as exc:
            return Unreachable(f"{self.url}: {exc}")
