"""Thin kopf handlers: adapt kopf's events to reconcile.py and canary.py; the operator's wiring.

- ``configure`` (startup): kopf's settings from :class:`OperatorSettings` and the kinds registry.
- ``pms_reconcile`` (resume + create + update): the full reconcile. A blocking problem (a missing
  Secret or PVC) is recorded in status (``ReconcileError=True``, ``Ready=False``) with a Warning
  event, and the handler ends: the rollout loop reconciles blocked resources again every
  ``blocked_recheck_s`` (docs/operator.md says why this is not kopf's delayed retry).
- ``pms_index``: an in-memory index of PaddleModelServices, so child events find their owner without
  an API call.
- ``pod_failures``: an index of our pods whose model fetch failed (a watch filtered server-side by
  the managed-by label; healthy pods are not kept), read by the truth pass: no pod list per resource.
- ``child_event`` on every watched child kind (kinds.WATCHED): restores drifted or deleted children
  and refreshes the status when the Deployment or HPA changes.
- ``RolloutLoop``: one asyncio task (started in ``@kopf.on.startup``) that walks the index every
  ``rollout_tick_s`` and advances rollouts, refreshes ``status.sla`` and rechecks blocked resources;
  idle resources cost nothing per tick (no timer per resource).
- Deletion needs no handler and no finalizer: children carry a controller owner reference and the
  garbage collector removes them.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import quote

import kopf

from . import canary, memory
from . import reconcile as rc
from .kinds import OBSERVED, WATCHED
from .kube import Kube, KubeError
from .pool import ElasticPool
from .prometheus import PrometheusQuerier
from .rollout import Unreachable
from .settings import OperatorSettings
from .spec import FIELD_MANAGER, GROUP, LABEL_MANAGED_BY, LABEL_SERVICE, MANAGED_BY, PLURAL, VERSION
from .status import ready_status
from .truth import PodFailure, Reports, pod_failure

log = logging.getLogger(__name__)

# Exponential retry when the API server fails a reconcile: 10 s, 20 s, 40 s ... capped at 5 minutes.
BACKOFF_BASE_S = 10
BACKOFF_MAX_S = 300
# kopf's wait for the event of its own patch (configure below).
CONSISTENCY_TIMEOUT_S = 60.0

_settings: OperatorSettings | None = None
_kube: Kube | None = None


def use_settings(settings: OperatorSettings) -> None:
    """Use these settings in this process (the CLI passes the ones it read); before the first call."""
    global _settings
    _settings = settings


def operator_settings() -> OperatorSettings:
    """This process's settings: those passed to :func:`use_settings`, else read from the environment."""
    global _settings
    if _settings is None:
        _settings = OperatorSettings()
    return _settings


def kube() -> Kube:
    """One API client per process, created lazily (after kopf's login and our settings)."""
    global _kube
    if _kube is None:
        s = operator_settings()
        _kube = Kube(
            kubeconfig=s.kubeconfig,
            apply_workers=s.apply_workers,
            timeout=(s.api_connect_timeout_s, s.api_timeout_s),
            thread_idle_s=s.thread_idle_s,
        )
    return _kube


def backoff(retry: int) -> float:
    """Delay before kopf retries a reconcile the API server failed."""
    return float(min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** max(0, retry)))


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    """kopf's settings: our domain for what it writes, watch timeouts, filters, worker threads."""
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    # After its own patch (the diff base above) kopf waits this long for the patch's watch event before
    # it trusts an older event again. kopf's 5 s was too short in a burst: events written during the
    # reconcile (our status) still queued behind it, lacked the diff base, and ran the create
    # handler a second and third time (2.6 reconciles per resource in a 200-resource burst).
    settings.persistence.consistency_timeout = CONSISTENCY_TIMEOUT_S
    ours = operator_settings()
    # Watches: the server ends each one (server_timeout) before the client gives up (client_timeout),
    # so no events are lost at the hand-over; a stream silent past inactivity_timeout (not even a
    # bookmark) is a connection that died without closing, and is reopened. kopf's own requests get
    # the same bounded timeouts as ours, so a silent connection fails a request instead of hanging it.
    settings.watching.server_timeout = ours.watch_server_timeout_s
    settings.watching.client_timeout = ours.watch_client_timeout_s
    settings.watching.connect_timeout = ours.watch_connect_timeout_s
    settings.watching.inactivity_timeout = ours.watch_inactivity_timeout_s
    settings.networking.request_timeout = ours.api_timeout_s
    settings.networking.connect_timeout = ours.api_connect_timeout_s
    # Child watches only stream objects we manage: server-side filtering keeps every other ConfigMap,
    # Service and Deployment in the cluster out of this process.
    for k in WATCHED + OBSERVED:
        settings.watching.label_selectors[k.plural] = f"{LABEL_MANAGED_BY}={MANAGED_BY}"
    # kopf's handler threads exit when idle, as ours do (pool.py): a burst's threads do not stay.
    settings.execution.executor = ElasticPool(ours.workers, thread_name_prefix="handler", idle_s=ours.thread_idle_s)
    settings.execution.max_workers = ours.workers
    # A burst's memory: objects in process at once, each idle worker's slot released soon.
    settings.queueing.worker_limit = ours.kopf_worker_limit or None
    settings.queueing.idle_timeout = ours.kopf_idle_timeout_s
    # Events are for people: the explicit kopf.info()/kopf.warn() calls, not every log line.
    settings.posting.level = logging.INFO
    settings.posting.loggers = False
    settings.posting.reporting_component = FIELD_MANAGER
    # One replica, no peering: peering is not leader election, and a second replica would not help.
    settings.peering.standalone = True
    settings.peering.mandatory = False


# The metadata the reconcile and event posting need. The index keeps only these, not annotations
# (kubectl's last-applied and kopf's diff base repeat the whole spec) or managedFields: at 1000
# resources that is most of the operator's memory.
_META_KEYS = ("name", "namespace", "uid", "generation", "resourceVersion", "deletionTimestamp", "labels")


def _plain(body: Any) -> dict[str, Any]:
    """A plain dict copy of a kopf body (identity metadata, spec, status)."""
    meta = body.get("metadata") or {}
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {k: meta[k] for k in _META_KEYS if k in meta},
        "spec": dict(body.get("spec") or {}),
        "status": dict(body.get("status") or {}),
    }


def _blocked(status: dict[str, Any] | None) -> bool:
    """The last reconcile found a blocking problem (ReconcileError=True)."""
    return any(
        c.get("type") == "ReconcileError" and c.get("status") == "True"
        for c in (status or {}).get("conditions") or []
    )


def rollout_fingerprint(body: dict[str, Any]) -> tuple[Any, ...]:
    """Everything a rollout tick reads that can change while the resource is idle."""
    meta, status = body.get("metadata") or {}, body.get("status") or {}
    rollout = json.dumps(status.get("rollout"), sort_keys=True, default=str)
    return (meta.get("uid"), meta.get("generation"), status.get("stableTag"), rollout)


def has_sla(body: dict[str, Any]) -> bool:
    """The spec names an SLA target the evaluator can measure."""
    sla = (body.get("spec") or {}).get("sla") or {}
    return sla.get("latencyP99Ms") is not None or sla.get("availability") is not None


@dataclass(frozen=True, slots=True)
class Indexed:
    """A PaddleModelService as ``pms_index`` keeps it: the plain body as one compact JSON string, and
    the few fields the rollout loop reads every tick for every resource.

    Kept as dicts, the bodies of 1000 resources were ~10 MB of small objects, made during a burst in
    between its short-lived ones, each pinning the pymalloc arena it sits in (benchmarks/README.md).
    A string is a fifth of that and lives in glibc's heap, which the operator trims. Decoded where a
    resource has work: a child event, a due rollout tick, the truth pass (``body()``, a fresh dict).
    """

    doc: str
    fingerprint: tuple[Any, ...]
    deleting: bool
    blocked: bool
    sla: bool
    sla_status: bool
    prometheus_url: str | None  # spec.rollout.analysis.prometheusURL

    @classmethod
    def of(cls, body: Any) -> Indexed:
        """The entry for a kopf body (or any dict shaped like one)."""
        plain = _plain(body)
        return cls(
            doc=memory.compact_json(plain),
            fingerprint=rollout_fingerprint(plain),
            deleting=bool(plain["metadata"].get("deletionTimestamp")),
            blocked=_blocked(plain["status"]),
            sla=has_sla(plain),
            sla_status=canary.has_sla_status(plain),
            prometheus_url=((plain["spec"].get("rollout") or {}).get("analysis") or {}).get("prometheusURL"),
        )

    def body(self) -> dict[str, Any]:
        """The plain body (a new dict on every call)."""
        body: dict[str, Any] = json.loads(self.doc)
        return body


@kopf.index(GROUP, VERSION, PLURAL)
def pms_index(*, body: kopf.Body, namespace: str | None, name: str, **_: Any) -> dict[tuple[str, str], Indexed]:
    """Index entry: (namespace, name) -> the resource, compact (:class:`Indexed`)."""
    return {(namespace or "default", name): Indexed.of(body)}


@kopf.index("", "v1", "pods", labels={LABEL_MANAGED_BY: MANAGED_BY})
def pod_failures(
    *, body: kopf.Body, namespace: str | None, labels: kopf.Labels, **_: Any
) -> dict[tuple[str, str], PodFailure]:
    """Index entry: (namespace, service) -> the pod's failed model fetch; nothing for a healthy pod.

    An empty answer drops whatever the pod had in the index (kopf replaces an object's entries), and
    a deleted pod is dropped by kopf: a failure is kept only while the pod exists and still fails.
    """
    service = labels.get(LABEL_SERVICE)
    failure = pod_failure(dict(body)) if service else None
    return {} if failure is None or service is None else {(namespace or "default", service): failure}


@kopf.on.resume(GROUP, VERSION, PLURAL, retries=None)
@kopf.on.create(GROUP, VERSION, PLURAL, retries=None)
@kopf.on.update(GROUP, VERSION, PLURAL, retries=None)
def pms_reconcile(*, body: kopf.Body, reason: str, retry: int, logger: kopf.Logger, **_: Any) -> None:
    """The full reconcile; API failures are retried by kopf, blocking problems by the rollout loop."""
    plain = _plain(body)
    meta = plain["metadata"]
    if reason == "create" and rc.reconciled_generation(
        meta.get("namespace") or "default", meta["name"], meta.get("uid", "")
    ) == meta.get("generation"):
        # A second "create" of an object this process reconciled already, at this generation: kopf
        # took an event written during the first reconcile (before its diff-base annotation) for a
        # new object, because the event of its own patch came later than its consistency timeout (a
        # burst of 1000). Nothing to do; the first reconcile applied this generation.
        return
    before = ready_status(plain["status"])
    try:
        result = rc.reconcile(kube(), plain)
    except KubeError as e:
        delay = backoff(retry)
        kopf.warn(body, reason="ReconcileFailed", message=f"{e} (retry in {delay:.0f}s)")
        raise kopf.TemporaryError(str(e), delay=delay) from e
    if result.problems:
        # Recorded in status; the rollout loop reconciles it again every blocked_recheck_s. Not a
        # TemporaryError: that retry lives in kopf's per-object worker (docs/operator.md).
        message = "; ".join(p.message for p in result.problems)
        every = operator_settings().blocked_recheck_s
        kopf.warn(body, reason=result.problems[0].reason, message=f"{message} (rechecked every {every:.0f}s)")
        return
    after = ready_status(result.status)
    if after != before and after == "True":
        kopf.info(body, reason="Ready", message=f"serving at {result.svc.url}")
    if result.pruned:
        logger.info("pruned %s", ", ".join(result.pruned))
    # Nothing returned: kopf would store a result under status.<handler>, which our schema prunes.


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)
def pms_delete(*, namespace: str | None, name: str, uid: str, **_: Any) -> None:
    """Forget per-object memory; ``optional`` means no finalizer is added for this handler."""
    rc.forget(namespace or "default", name, uid)
    memory.forget(namespace or "default", name, uid)
    canary.forget_truth((namespace or "default", name, uid))


def post_event(involved: dict[str, Any], type_: str, reason: str, message: str) -> None:
    """Create a core/v1 Event about a resource, as ``kopf.event`` would.

    For the shared rollout loop, which runs outside kopf's per-object handlers (where kopf's event
    queue lives). Events are informational: a failure is logged, never raised.
    """
    meta = involved.get("metadata") or {}
    namespace = meta.get("namespace") or "default"
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta.get('name', 'paddle')}.", "namespace": namespace},
        "involvedObject": {
            "apiVersion": involved.get("apiVersion"),
            "kind": involved.get("kind"),
            "name": meta.get("name"),
            "namespace": namespace,
            "uid": meta.get("uid"),
        },
        "type": type_,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": FIELD_MANAGER},
        "reportingComponent": FIELD_MANAGER,
        "reportingInstance": FIELD_MANAGER,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
    try:
        # Only ever created (RBAC: events create/patch), never read.
        kube().request("POST", f"/api/v1/namespaces/{quote(namespace)}/events", body=event)
    except Exception as e:  # an event must never fail the work it reports on
        log.warning("event %s on %s/%s not posted: %s", reason, namespace, meta.get("name"), e)


@dataclass(frozen=True)
class Work:
    """What the rollout loop does for one resource this period."""

    key: tuple[str, str]
    body: dict[str, Any]
    tick: bool = False  # advance its rollout
    sla: bool = False  # refresh status.sla (or clear it once the spec has no SLA targets)
    recheck: bool = False  # reconcile again: it is blocked (ReconcileError=True)


@dataclass(frozen=True)
class Done:
    """What one piece of work found: idle (nothing to time), SLA evaluated, recheck done."""

    idle: bool = False
    evaluated: bool = False
    rechecked: bool = False


class RolloutLoop:
    """One loop for the rollouts, SLA status and blocked resources of every resource.

    A kopf timer is an asyncio task and per-object state for each resource, ticking whether or not
    anything is happening: at 1000 resources that was most of the operator's memory (and kopf adds a
    finalizer for every timer). Instead, every ``rollout_tick_s`` one task walks ``pms_index``
    (already in memory for child events) and works only on:

    - resources whose rollout is in progress, or whose rollout inputs (uid, generation,
      ``status.stableTag``, ``status.rollout``) changed since they were last found idle: an idle
      resource costs one dict lookup per tick;
    - resources with SLA targets, every ``sla_period_s`` (the ``status.sla`` refresh);
    - blocked resources (``ReconcileError=True``), every ``blocked_recheck_s``: the reconcile again.

    The work (blocking API and Prometheus calls) runs in a small thread pool; a resource still being
    worked on is skipped, so one slow Prometheus does not hold the others up.

    Every ``truth_period_s`` one more piece of work reads what the pods report for *all* resources
    (one Prometheus query per distinct Prometheus URL, normally one) and applies each resource's
    truth fields where they changed (:meth:`truth_pass`).
    """

    INITIAL_DELAY_S = 1.0

    def __init__(self, settings: OperatorSettings) -> None:
        self.settings = settings
        self._idle: dict[tuple[str, str], tuple[Any, ...]] = {}  # fingerprint when last found idle
        self._next_sla: dict[tuple[str, str], float] = {}
        self._next_recheck: dict[tuple[str, str], float] = {}
        self._sla_cleared: set[tuple[str, str]] = set()  # once per process: older writers' fields stay
        self._busy: set[tuple[str, str]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._pool: ElasticPool | None = None
        self._next_truth = 0.0
        self._truth_task: asyncio.Task[None] | None = None

    def due(self, index: Any, now: float) -> list[Work]:
        """The work of this period, one entry per resource that has any."""
        work = []
        seen = set()
        for key, store in list(index.items()):
            seen.add(key)
            entries: list[Indexed] = list(store)
            if key in self._busy or not entries:
                continue
            entry = entries[-1]
            if entry.deleting:
                continue
            tick = self._idle.get(key) != entry.fingerprint
            if entry.sla:
                self._sla_cleared.discard(key)
                sla = now >= self._next_sla.get(key, 0.0)
            else:
                sla = key not in self._sla_cleared and entry.sla_status
            recheck = False
            if entry.blocked:
                # First seen blocked: the reconcile that found it just ran; recheck one period later.
                first = self._next_recheck.setdefault(key, now + self.settings.blocked_recheck_s)
                recheck = now >= first
            else:
                self._next_recheck.pop(key, None)
            if tick or sla or recheck:
                work.append(Work(key, entry.body(), tick, sla, recheck))
        for gone in (set(self._idle) | set(self._next_sla) | set(self._next_recheck)) - seen:
            self._sla_cleared.discard(gone)
            self._idle.pop(gone, None)
            self._next_sla.pop(gone, None)
            self._next_recheck.pop(gone, None)
        return work

    def run_one(self, w: Work, now: float) -> Done:
        """In a worker thread: do one resource's work."""
        meta = w.body["metadata"]
        idle = evaluated = rechecked = False
        try:
            if w.recheck:
                rechecked = True
                result = rc.reconcile(kube(), w.body)
                if not result.problems:
                    post_event(w.body, "Normal", "Reconciled", "blocking problem resolved; children applied")
            if w.tick:
                tick = canary.tick(kube(), w.body, self.settings)
                for ev in tick.events:
                    # Events carry the measured figures; status.rollout is the durable record.
                    post_event(w.body, ev.type, ev.reason, ev.message)
                idle = not (tick.status or tick.applied or tick.events) and memory.settled(
                    meta["namespace"], meta["name"], meta.get("uid", "")
                )
            if w.sla and has_sla(w.body):
                canary.evaluate_sla(kube(), w.body, self.settings, now=now)
                evaluated = True
            elif w.sla:
                canary.clear_sla(kube(), w.body)
                self._sla_cleared.add(w.key)
        except KubeError as e:  # the next period tries again
            log.warning("rollout %s/%s: %s", meta.get("namespace"), meta.get("name"), e)
        except Exception:  # keep the loop alive whatever one resource does
            log.exception("rollout %s/%s", meta.get("namespace"), meta.get("name"))
        return Done(idle, evaluated, rechecked)

    async def work(self, w: Work, now: float) -> None:
        """Run one resource's work in the pool and record what it found."""
        self._busy.add(w.key)
        try:
            loop = asyncio.get_running_loop()
            done = await loop.run_in_executor(self._pool, self.run_one, w, now)
            if w.tick:
                if done.idle:
                    self._idle[w.key] = rollout_fingerprint(w.body)
                else:
                    self._idle.pop(w.key, None)
            if done.evaluated:
                self._next_sla[w.key] = now + self.settings.sla_period_s
            if w.recheck:
                self._next_recheck[w.key] = now + self.settings.blocked_recheck_s
        finally:
            self._busy.discard(w.key)

    def truth_pass(
        self, entries: list[Indexed], failures: dict[tuple[str, str], list[PodFailure]] | None = None
    ) -> dict[str, int]:
        """In a worker thread: read the pods' reports once per Prometheus and apply every resource's
        truth fields that changed, posting an event per transition. ``failures``: the pods whose
        model fetch failed, per resource (from ``pod_failures``). Returns counts (for tests)."""
        failures = failures or {}
        by_url: dict[str | None, list[Indexed]] = {}
        for entry in entries:
            by_url.setdefault(entry.prometheus_url or self.settings.prometheus_url, []).append(entry)
        counts = {"queries": 0, "written": 0, "events": 0, "skipped": 0}
        for url, group in by_url.items():
            reports: Reports | None = None
            if url is not None:
                counts["queries"] += 1
                with PrometheusQuerier(url, self.settings.prometheus_timeout_s) as prom:
                    got = prom.runtime_reports()
                if isinstance(got, Unreachable):
                    # Keep the last truth rather than flip every resource to Unknown on a blip.
                    log.warning("pod reports not read: %s", got.reason)
                    counts["skipped"] += len(group)
                    continue
                reports = got
            for entry in group:
                body = entry.body()  # one resource decoded at a time
                meta = body["metadata"]
                key = (meta.get("namespace") or "default", meta["name"])
                try:
                    tracks = None if reports is None else reports.get(key, {})
                    no_data = "NoPrometheus" if url is None else "NoPodsReporting"
                    written, moved = canary.apply_truth(kube(), body, tracks, no_data, failures.get(key, []))
                except KubeError as e:
                    log.warning("truth %s/%s: %s", key[0], key[1], e)
                    continue
                except Exception:  # one resource must not stop the others
                    log.exception("truth %s/%s", key[0], key[1])
                    continue
                counts["written"] += written
                for ev in moved:
                    post_event(body, ev.type, ev.reason, ev.message)
                    counts["events"] += 1
        return counts

    async def _truth(self, entries: list[Indexed], failures: dict[tuple[str, str], list[PodFailure]]) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._pool, self.truth_pass, entries, failures)
        except Exception:  # noqa: BLE001 - the next period tries again
            log.exception("truth pass")

    def start_truth(self, index: Any, now: float, failures_index: Any = None) -> None:
        """Start a truth pass when one is due and none is running (both indexes copied here, in the
        event loop that kopf updates them in; the failure index holds failing pods only)."""
        if now < self._next_truth or (self._truth_task is not None and not self._truth_task.done()):
            return
        self._next_truth = now + self.settings.truth_period_s
        entries: list[Indexed] = [
            store[-1] for store in (list(s) for s in list(index.values())) if store and not store[-1].deleting
        ]
        failures = {key: list(store) for key, store in list((failures_index or {}).items())}
        self._truth_task = asyncio.create_task(self._truth(entries, failures), name="truth pass")

    def start_pool(self) -> None:
        """Create the worker threads (run() does; tests call it directly)."""
        self._pool = ElasticPool(self.settings.rollout_workers, thread_name_prefix="rollout", idle_s=self.settings.thread_idle_s)

    def stop_pool(self) -> None:
        """Stop the worker threads."""
        if self._pool is not None:
            self._pool.shutdown(wait=False)

    async def run(self, index: Any, failures_index: Any = None) -> None:
        """Walk the index every ``rollout_tick_s`` until cancelled."""
        self.start_pool()
        await asyncio.sleep(self.INITIAL_DELAY_S)
        while True:
            started = time.monotonic()
            try:
                for w in self.due(index, time.time()):
                    task = asyncio.create_task(self.work(w, time.time()))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                self.start_truth(index, time.time(), failures_index)
            except Exception:  # noqa: BLE001 - a bad pass must not end rollouts for good
                log.exception("rollout loop")
            await asyncio.sleep(max(0.1, self.settings.rollout_tick_s - (time.monotonic() - started)))


_rollout_task: asyncio.Task[None] | None = None


@kopf.on.startup()
async def start_rollout_loop(**kwargs: Any) -> None:
    """Start the shared rollout loop; the index it walks fills as kopf lists the resources."""
    global _rollout_task
    loop = RolloutLoop(operator_settings())
    _rollout_task = asyncio.create_task(loop.run(kwargs["pms_index"], kwargs["pod_failures"]), name="rollout loop")


@kopf.on.cleanup()
async def stop_rollout_loop(**_: Any) -> None:
    """Stop the shared rollout loop."""
    if _rollout_task is not None:
        _rollout_task.cancel()


@kopf.on.probe(id="indexed")
def indexed_count(**kwargs: Any) -> int:
    """Exposed on the liveness endpoint: how many PaddleModelServices this process knows."""
    return len(kwargs["pms_index"])


_child_pool: ElasticPool | None = None


def child_pool() -> ElasticPool:
    """The threads child events are handled in (``child_workers``), apart from kopf's handler threads."""
    global _child_pool
    if _child_pool is None:
        s = operator_settings()
        _child_pool = ElasticPool(s.child_workers, thread_name_prefix="child", idle_s=s.thread_idle_s)
    return _child_pool


async def child_event(
    *,
    event: kopf.RawEvent,
    body: kopf.Body,
    namespace: str | None,
    labels: kopf.Labels,
    logger: kopf.Logger,
    **kwargs: Any,
) -> None:
    """A managed child changed: restore drift, refresh status from the Deployment/HPA.

    Async only to run the work in :func:`child_pool`, not in kopf's handler threads: there, in a burst,
    a Deployment turning Available waited behind every reconcile still applying children (Ready was
    written minutes after the Deployment was available).
    """
    pms_index: kopf.Index[tuple[str, str], Indexed] = kwargs["pms_index"]
    owner = labels.get(LABEL_SERVICE)
    if not owner or namespace is None:
        return
    found = list(pms_index.get((namespace, owner), []))
    if not found:
        return  # owner gone (garbage collection in progress) or not yet indexed: its reconcile will apply
    pms_body = found[-1].body()
    # kopf.info() reads only apiVersion, kind and metadata: the plain indexed body serves as one.
    event_body = cast(kopf.Body, pms_body)
    child: dict[str, Any] = {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": dict(body.get("metadata") or {}),
        "spec": dict(body.get("spec") or {}),
        "data": dict(body.get("data") or {}),
        "status": dict(body.get("status") or {}),
    }
    if body.get("kind") != "ConfigMap":
        child.pop("data")
    before = ready_status(pms_body.get("status"))
    loop = asyncio.get_running_loop()
    try:
        restored, _written = await loop.run_in_executor(
            child_pool(), rc.on_child_event, kube(), pms_body, event.get("type"), child
        )
    except KubeError as e:
        # Not retried here: the next event of this child, or the owner's next reconcile, repairs it.
        logger.warning("child %s %s/%s: %s", child["kind"], namespace, child["metadata"].get("name"), e)
        return
    if restored:
        kopf.info(event_body, reason="DriftRestored",
                  message=f"{child['kind']} {child['metadata'].get('name')} put back to the spec")
    after = ready_status(rc.last_status(namespace, owner, pms_body["metadata"].get("uid", "")))
    if after == "True" and before != "True":
        kopf.info(event_body, reason="Ready", message="Deployment available")


# Watch every child kind we own whose API always exists (kinds.WATCHED); the managed-by label is
# also filtered server-side (configure above).
for _kind in WATCHED:
    kopf.on.event(
        group=_kind.group,
        version=_kind.api_version.rpartition("/")[2],
        plural=_kind.plural,
        id=f"child_event_{_kind.plural}",
        labels={LABEL_MANAGED_BY: MANAGED_BY},
    )(child_event)
