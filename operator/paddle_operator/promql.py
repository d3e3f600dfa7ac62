"""PromQL for SLA status and canary analysis, built from the runtime's metric names.

Users of other tools write their own PromQL; ours is derived from the metric contract in
docs/contracts.md (``paddle_runtime_requests_total{model,version,role,code}`` and the
``paddle_runtime_request_duration_seconds`` histogram), so a ``PaddleModelService`` only states its
SLA. Pure string builders: no client, no kopf, unit-tested in ``tests/canary/``.

Series are selected by the labels Prometheus attaches when it scrapes our pods: ``namespace``,
``service`` (the ``serving.paddlesla.io/service`` pod label) and ``track`` (``stable|canary``). The
relabelling that produces them is documented in docs/canary.md (``kubernetes_sd_configs`` with
``labelmap``/``replace`` rules); the e2e test writes the same labels onto static targets.
"""

from __future__ import annotations

from dataclasses import dataclass

REQUESTS_TOTAL = "paddle_runtime_requests_total"
DURATION_BUCKET = "paddle_runtime_request_duration_seconds_bucket"
MODEL_INFO = "paddle_runtime_model_info"
FALLBACK_ACTIVE = "paddle_runtime_fallback_active"
RELOAD_FAILING = "paddle_runtime_reload_failing"
UP = "up"  # Prometheus's own series per scrape target: 1 when the last scrape worked

#: Label names the operator expects on every scraped runtime series.
LABEL_NAMESPACE = "namespace"
LABEL_SERVICE = "service"
LABEL_TRACK = "track"
LABEL_POD = "pod"

#: Server-side faults only: 4xx are the caller's problem and must not fail a canary.
ERROR_CODE_REGEX = "5.."

TRACKS = ("stable", "canary")


def _escape(value: str) -> str:
    """Escape a label value for a double-quoted PromQL string."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def duration(seconds: float) -> str:
    """A PromQL range duration (``30s``); Prometheus wants whole units, so round up to 1 s."""
    return f"{max(1, int(round(seconds)))}s"


@dataclass(frozen=True)
class Target:
    """Which runtime series a query covers: one service, optionally one track."""

    namespace: str
    service: str
    track: str | None = None

    def matchers(self, *extra: str) -> str:
        """The label matchers inside ``{...}``, plus any extra matchers given."""
        parts = [
            f'{LABEL_NAMESPACE}="{_escape(self.namespace)}"',
            f'{LABEL_SERVICE}="{_escape(self.service)}"',
        ]
        if self.track is not None:
            if self.track not in TRACKS:
                raise ValueError(f"track must be one of {TRACKS}, got {self.track!r}")
            parts.append(f'{LABEL_TRACK}="{self.track}"')
        parts.extend(extra)
        return ",".join(parts)


def latency_quantile(target: Target, window_s: float, quantile: float = 0.99) -> str:
    """The latency quantile in seconds over ``window_s``, across all pods of the target.

    ``sum by (le)`` first: quantiles of per-pod quantiles are meaningless, buckets add up.
    """
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    return (
        f"histogram_quantile({quantile:g}, sum by (le) "
        f"(rate({DURATION_BUCKET}{{{target.matchers()}}}[{duration(window_s)}])))"
    )


def latency_p99(target: Target, window_s: float) -> str:
    """p99 latency in seconds (multiply by 1000 for the SLA's milliseconds)."""
    return latency_quantile(target, window_s, 0.99)


def request_rate(target: Target, window_s: float) -> str:
    """Requests per second (QPS) over ``window_s``."""
    return f"sum(rate({REQUESTS_TOTAL}{{{target.matchers()}}}[{duration(window_s)}]))"


def error_request_rate(target: Target, window_s: float) -> str:
    """5xx responses per second; ``or vector(0)`` so that no errors reads 0, not "no data"."""
    sel = target.matchers(f'code=~"{ERROR_CODE_REGEX}"')
    return f"(sum(rate({REQUESTS_TOTAL}{{{sel}}}[{duration(window_s)}])) or vector(0))"


def error_rate(target: Target, window_s: float) -> str:
    """Fraction of requests answered with a 5xx over ``window_s`` (0..1).

    No traffic gives NaN (0/0) or an empty result (no series yet); callers read both as "no data"
    rather than as a perfect score.
    """
    return f"{error_request_rate(target, window_s)} / {request_rate(target, window_s)}"


def request_count(target: Target, window_s: float) -> str:
    """Requests seen in ``window_s``; the minimum-sample gate before any verdict."""
    return f"sum(increase({REQUESTS_TOTAL}{{{target.matchers()}}}[{duration(window_s)}]))"


def availability(target: Target, window_s: float) -> str:
    """Share of requests not answered with a 5xx over the SLA window (0..1)."""
    return f"1 - ({error_rate(target, window_s)})"


def error_budget_remaining(target: Target, window_s: float, availability_target: float) -> str:
    """Remaining share of the error budget over the SLA window (1 = untouched, <0 = overspent).

    ``availability_target`` is a fraction (0.999 for "99.9").
    """
    budget = allowed_error_ratio(availability_target)
    return f"1 - (({error_rate(target, window_s)}) / {budget:.10g})"


def allowed_error_ratio(availability_target: float) -> float:
    """The error budget as a ratio: 0.001 for a 99.9 % target."""
    if not 0 < availability_target < 1:
        raise ValueError(f"availability target must be in (0, 1), got {availability_target}")
    return 1.0 - availability_target


def budget_remaining(error_ratio: float, availability_target: float) -> float:
    """Python twin of :func:`error_budget_remaining`, for figures already fetched."""
    return 1.0 - error_ratio / allowed_error_ratio(availability_target)


def parse_availability(value: str | float) -> float:
    """Read the spec's ``availability`` ("99.9", 99.9 or 0.999) as a fraction."""
    number = float(value)
    fraction = number / 100.0 if number > 1 else number
    if not 0 < fraction < 1:
        raise ValueError(f"availability must be a percentage below 100, got {value!r}")
    return fraction


@dataclass(frozen=True)
class AnalysisQueries:
    """The queries one canary analysis runs against one track."""

    p99_seconds: str
    error_rate: str
    requests: str
    qps: str


def analysis_queries(target: Target, window_s: float) -> AnalysisQueries:
    """Everything a canary verdict needs for one track over one window."""
    return AnalysisQueries(
        p99_seconds=latency_p99(target, window_s),
        error_rate=error_rate(target, window_s),
        requests=request_count(target, window_s),
        qps=request_rate(target, window_s),
    )


@dataclass(frozen=True)
class SLAQueries:
    """The queries behind ``status.sla``: all tracks of the service over the SLA window."""

    p99_seconds: str
    error_rate: str
    availability: str
    qps: str
    error_budget_remaining: str


def sla_queries(
    target: Target, window_s: float, availability_target: float, rate_window_s: float
) -> SLAQueries:
    """SLA figures: p99 and QPS over a short ``rate_window_s`` (what users feel now);
    availability and error budget over the SLA ``window_s`` (what the SLA promises)."""
    return SLAQueries(
        p99_seconds=latency_p99(target, rate_window_s),
        error_rate=error_rate(target, rate_window_s),
        availability=availability(target, window_s),
        qps=request_rate(target, rate_window_s),
        error_budget_remaining=error_budget_remaining(target, window_s, availability_target),
    )


def runtime_truth() -> str:
    """Every pod's served version, fallback state and reload error, of *all* resources: one query.

    A plain selector on the names keeps each series' name and labels (``or`` would drop series
    whose labels collide); ``role!="fallback"`` drops the fallback's model_info but keeps the gauges
    that have no ``role`` label. ``up`` (one per scrape target, with the target's labels) tells a
    pod whose last scrape failed (its series are then stale, so absent here) from a pod that is
    gone (no ``up`` either). Cost grows with pods, not with queries: about four series a pod.
    """
    names = "|".join((MODEL_INFO, FALLBACK_ACTIVE, RELOAD_FAILING, UP))
    return f'{{__name__=~"{names}",{LABEL_SERVICE}!="",role!="fallback"}}'
