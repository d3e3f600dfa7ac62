"""``OperatorSettings``: every knob of the operator process, read from the environment in one place.

Each field is ``PADDLE_OPERATOR_<FIELD>`` (e.g. ``PADDLE_OPERATOR_ROLLOUT_TICK_S``), except the two
variables other software defines (``KUBECONFIG``, ``MALLOC_ARENA_MAX``). The chart sets them from
``values.yaml`` (``operator.settings``). No other module reads ``os.environ``.
"""

from __future__ import annotations

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "PADDLE_OPERATOR_"


class OperatorSettings(BaseSettings):
    """The operator's settings; field docstrings are the reference (docs/operator.md lists them)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="ignore", frozen=True, use_attribute_docstrings=True
    )

    workers: int = Field(default=48, ge=1)
    """Threads kopf runs the sync handlers in. A reconcile mostly waits on the API server, so a burst
    of new resources is bounded by how many wait at once (16 queued 100 new resources for ~25 s)."""

    apply_workers: int = Field(default=32, ge=1)
    """Threads the children of one reconcile are applied in concurrently (shared by all reconciles;
    with ``workers`` it should stay near the API client's 64 connections)."""

    child_workers: int = Field(default=8, ge=1)
    """Threads the events of children (drift, Deployment and HPA readiness) are handled in, apart from
    ``workers``: a burst of reconciles must not hold back the status of resources already applied."""

    rollout_workers: int = Field(default=8, ge=1)
    """Threads the shared rollout loop runs its API and Prometheus calls in."""

    thread_idle_s: float = Field(default=30.0, gt=0)
    """A thread of any of the pools above that found no work for this long exits (started again on
    demand): a burst's threads and their stacks do not stay resident."""

    rollout_tick_s: float = Field(default=5.0, gt=0)
    """Period of the shared rollout loop: how late a rollout step or readiness change is seen.
    Analyses still run every ``spec.rollout.intervalSeconds``."""

    promotion_hold_s: float = Field(default=120.0, ge=0)
    """After a promotion, how long stable's HPA keeps the canary's size as its minimum (0: not at all).
    While promoting the canary carries the traffic, so stable's metrics read idle pods; they show the
    returned traffic only after the adapter's rate window plus a scrape and an HPA sync. Keep it above
    that sum (the chart's defaults: 1m + 15 s + 15 s)."""

    sla_period_s: float = Field(default=30.0, gt=0)
    """How often ``status.sla`` and the ``SLAMet`` condition are refreshed from Prometheus."""

    truth_period_s: float = Field(default=10.0, gt=0)
    """How often the pods' reports (served version, fallback, reload errors) are read from Prometheus
    into status: one query for all resources per period, writes only where something changed."""

    blocked_recheck_s: float = Field(default=20.0, gt=0)
    """How often a resource that is blocked (``ReconcileError=True``: a missing Secret or PVC) is
    reconciled again by the rollout loop, so a Secret created later is picked up."""

    prometheus_url: str | None = None
    """Prometheus for resources that name no ``spec.rollout.analysis.prometheusURL``."""

    prometheus_timeout_s: float = Field(default=5.0, gt=0)
    """Timeout of one Prometheus query; no retries inside one tick."""

    analysis_min_window_s: float = Field(default=60.0, gt=0)
    """Shortest rate window of a canary analysis or SLA query (keep it >= 4 scrape intervals)."""

    watch_server_timeout_s: int = Field(default=300, ge=1)
    """Each watch asks the API server to end it after this long (``timeoutSeconds``, whole seconds:
    the server refuses "300.0"): the server, not the client, normally ends a stream, so no event is
    lost at the hand-over to the next watch."""

    watch_client_timeout_s: float = Field(default=330.0, gt=0)
    """A watch request is abandoned by the client after this long (keep it above the server timeout)."""

    watch_connect_timeout_s: float = Field(default=10.0, gt=0)
    """Timeout of opening a watch connection."""

    watch_inactivity_timeout_s: float = Field(default=70.0, gt=0)
    """A watch that delivers nothing, not even a bookmark (the API server sends one about every
    minute), for this long is taken for dead and reopened: it catches a connection that went silent
    without closing (a proxy, NAT or load balancer dropping the flow). Keep it above 60 s in clusters."""

    api_timeout_s: float = Field(default=30.0, gt=0)
    """Read timeout of one API request (ours and kopf's own patches); a request on a silent connection
    fails after this long and is retried, instead of holding a worker thread."""

    api_connect_timeout_s: float = Field(default=5.0, gt=0)
    """Connect timeout of one API request."""

    kopf_worker_limit: int = Field(default=64, ge=0)
    """Most objects of one kind kopf processes at once (its ``queueing.worker_limit``); the others'
    events wait in their queues. It bounds a burst's memory: unbounded, 1000 new resources were all
    in process at once (458 MB peak) and Python kept most of that after (359 MB); with 64, 189 MB,
    and the burst was no slower (benchmarks/README.md). 0 = no limit."""

    kopf_idle_timeout_s: float = Field(default=0.5, gt=0)
    """How long kopf keeps an object's worker after its last event (its ``queueing.idle_timeout``,
    kopf's default 5 s): an idle worker holds one of ``kopf_worker_limit``'s slots this long."""

    kubeconfig: str | None = Field(default=None, validation_alias=AliasChoices("KUBECONFIG"))
    """Outside a pod: the kubeconfig file (``KUBECONFIG``, first entry); in a pod the service account."""

    malloc_arena_max: int | None = Field(default=None, validation_alias=AliasChoices("MALLOC_ARENA_MAX"))
    """glibc's own variable. Set: glibc applied it already. Unset: the operator caps malloc arenas at
    2 before its threads start, so freed memory of a burst returns (RSS comes back down)."""

    @model_validator(mode="after")
    def _client_outlasts_server(self) -> OperatorSettings:
        if self.watch_client_timeout_s <= self.watch_server_timeout_s:
            raise ValueError("watch_client_timeout_s must exceed watch_server_timeout_s")
        return self
