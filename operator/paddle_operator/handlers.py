"""Thin kopf handlers: adapt kopf's events to reconcile.py and turn outcomes into retries and events.

- ``pms_reconcile`` (resume + create + update): the full reconcile. Blocking problems (a missing
  Secret or PVC) set Ready=False, post a warning event and retry with exponential backoff.
- ``pms_index``: an in-memory index of PaddleModelServices, so child events find their owner without
  an API call.
- ``child_event`` on every managed child kind: restores drifted or deleted children and refreshes the
  status when the Deployment or HPA changes (Ready follows the Deployment's Available condition).
- ``_RolloutLoop``: one asyncio task (started in ``@kopf.on.startup``) that walks the index every
  ``TICK_S`` and advances the rollouts in progress and refreshes ``status.sla``; idle resources cost
  nothing per tick (no timer per resource).
- Deletion needs no handler and no finalizer: children carry a controller owner reference and the
  garbage collector removes them.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import quote

import kopf

from . import canary
from . import reconcile as rc
from .kube import Kube, KubeError
from .spec import FIELD_MANAGER, GROUP, LABEL_MANAGED_BY, LABEL_SERVICE, MANAGED_BY, PLURAL, VERSION

log = logging.getLogger(__name__)

# Canary rollouts (canary.py): the plan builds both tracks and the router from status.rollout, and the
# router kinds are pruned like any other child (listing a kind whose CRD is absent finds nothing).
rc.plan = canary.plan
rc.MANAGED_KINDS.extend(k for k in canary.ROUTER_KINDS if k not in rc.MANAGED_KINDS)

# Exponential retry for a spec that cannot work yet: 10 s, 20 s, 40 s ... capped at 5 minutes, so a
# Secret created later is picked up soon without hot-looping the API server meanwhile.
BACKOFF_BASE_S = 10
BACKOFF_MAX_S = 300

_kube: Kube | None = None


def kube() -> Kube:
    """One API client per process, created lazily (after kopf's login and our settings)."""
    global _kube
    if _kube is None:
        _kube = Kube()
    return _kube


def backoff(retry: int) -> float:
    return float(min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** max(0, retry)))


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


def _ready(status: dict[str, Any] | None) -> str | None:
    for c in (status or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return c.get("status")
    return None


class _Recheck:
    """Safety net for blocked resources: every RECHECK_S, reconcile each one that last had a problem.

    kopf's delayed retry of the TemporaryError above is the main path; in long e2e sessions it was
    seen not to fire, leaving a resource Ready=False after its Secret appeared. One daemon thread,
    one GET plus the precondition checks per blocked resource per period: no hot loop.
    """

    RECHECK_S = 20.0

    def __init__(self) -> None:
        self._pending: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, namespace: str, name: str) -> None:
        with self._lock:
            self._pending.add((namespace, name))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="recheck", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(self.RECHECK_S)
            with self._lock:
                pending = list(self._pending)
            for namespace, name in pending:
                try:
                    body = kube().get(f"{GROUP}/{VERSION}", "PaddleModelService", namespace, name)
                    if body is None or rc.reconcile(kube(), body).problems == []:
                        with self._lock:
                            self._pending.discard((namespace, name))
                except Exception as e:  # keep the net alive; the next period tries again
                    log.warning("recheck %s/%s: %s", namespace, name, e)


_recheck = _Recheck()


@kopf.index(GROUP, VERSION, PLURAL)
def pms_index(body: kopf.Body, namespace: str, name: str, **_: Any) -> dict[tuple[str, str], dict[str, Any]]:
    return {(namespace, name): _plain(body)}


@kopf.on.resume(GROUP, VERSION, PLURAL, retries=None)
@kopf.on.create(GROUP, VERSION, PLURAL, retries=None)
@kopf.on.update(GROUP, VERSION, PLURAL, retries=None)
def pms_reconcile(body: kopf.Body, retry: int, logger: logging.Logger, **_: Any) -> None:
    plain = _plain(body)
    before = _ready(plain["status"])
    try:
        result = rc.reconcile(kube(), plain)
    except KubeError as e:
        delay = backoff(retry)
        kopf.warn(body, reason="ReconcileFailed", message=f"{e} (retry in {delay:.0f}s)")
        raise kopf.TemporaryError(str(e), delay=delay) from e
    if result.problems:
        _recheck.add(plain["metadata"]["namespace"], plain["metadata"]["name"])
        delay = backoff(retry)
        message = "; ".join(p.message for p in result.problems)
        kopf.warn(body, reason=result.problems[0].reason, message=f"{message} (retry in {delay:.0f}s)")
        raise kopf.TemporaryError(message, delay=delay)
    after = _ready(result.status)
    if after != before and after == "True":
        kopf.info(body, reason="Ready", message=f"serving at {result.svc.url}")
    if result.pruned:
        logger.info("pruned %s", ", ".join(result.pruned))
    # Nothing returned: kopf would store a result under status.<handler>, which our schema prunes.


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)
def pms_delete(namespace: str, name: str, uid: str, **_: Any) -> None:
    """Forget per-object memory; ``optional`` means no finalizer is added for this handler."""
    rc.forget(namespace, name, uid)
    canary.forget(namespace, name, uid)


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


class _RolloutLoop:
    """One loop for the rollouts and SLA status of every resource, instead of a kopf timer per resource.

    A kopf timer is an asyncio task and per-object state for each resource, ticking whether or not
    anything is happening: at 1000 resources that was most of the operator's memory. Instead, every
    ``TICK_S`` one task walks ``pms_index`` (already in memory for child events) and works only on:

    - resources whose rollout is in progress, or whose rollout inputs (uid, generation,
      ``status.stableTag``, ``status.rollout``) changed since they were last found idle: an idle
      resource costs one dict lookup per tick;
    - resources with SLA targets, every ``SLA_PERIOD_S`` (the ``status.sla`` refresh).

    The work (blocking API and Prometheus calls) runs in a small thread pool; a resource still being
    worked on is skipped, so one slow Prometheus does not hold the others up.
    """

    WORKERS = int(os.environ.get("PADDLE_OPERATOR_ROLLOUT_WORKERS", "8"))
    INITIAL_DELAY_S = 1.0

    def __init__(self) -> None:
        self._idle: dict[tuple[str, str], tuple[Any, ...]] = {}  # fingerprint when last found idle
        self._next_sla: dict[tuple[str, str], float] = {}
        self._busy: set[tuple[str, str]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._pool: ThreadPoolExecutor | None = None

    @staticmethod
    def fingerprint(body: dict[str, Any]) -> tuple[Any, ...]:
        """Everything a rollout tick reads that can change while the resource is idle."""
        meta, status = body.get("metadata") or {}, body.get("status") or {}
        rollout = json.dumps(status.get("rollout"), sort_keys=True, default=str)
        return (meta.get("uid"), meta.get("generation"), status.get("stableTag"), rollout)

    @staticmethod
    def has_sla(body: dict[str, Any]) -> bool:
        sla = (body.get("spec") or {}).get("sla") or {}
        return sla.get("latencyP99Ms") is not None or sla.get("availability") is not None

    def due(self, index: Any, now: float) -> list[tuple[tuple[str, str], dict[str, Any], bool, bool]]:
        """(key, body, tick?, sla?) for each resource with work this period."""
        work = []
        seen = set()
        for key, store in list(index.items()):
            seen.add(key)
            bodies = list(store)
            if key in self._busy or not bodies:
                continue
            body = bodies[-1]
            if body["metadata"].get("deletionTimestamp"):
                continue
            tick = self._idle.get(key) != self.fingerprint(body)
            sla = self.has_sla(body) and now >= self._next_sla.get(key, 0.0)
            if tick or sla:
                work.append((key, body, tick, sla))
        for gone in (set(self._idle) | set(self._next_sla)) - seen:  # deleted resources
            self._idle.pop(gone, None)
            self._next_sla.pop(gone, None)
        return work

    @staticmethod
    def run_one(body: dict[str, Any], tick: bool, sla: bool, now: float) -> tuple[bool, bool]:
        """In a worker thread: (found idle, SLA evaluated)."""
        meta = body["metadata"]
        idle = evaluated = False
        try:
            if tick:
                result = canary.tick(kube(), body)
                for ev in result.events:
                    # Events carry the measured figures; status.rollout is the durable record.
                    post_event(body, ev.type, ev.reason, ev.message)
                idle = (
                    not (result.status or result.applied or result.events)
                    and canary.settled(meta["namespace"], meta["name"], meta.get("uid", ""))
                )
            if sla:
                canary.evaluate_sla(kube(), body, now=now)
                evaluated = True
        except KubeError as e:  # the next period tries again
            log.warning("rollout %s/%s: %s", meta.get("namespace"), meta.get("name"), e)
        except Exception:  # keep the loop alive whatever one resource does
            log.exception("rollout %s/%s", meta.get("namespace"), meta.get("name"))
        return idle, evaluated

    async def _work(
        self, key: tuple[str, str], body: dict[str, Any], tick: bool, sla: bool, now: float
    ) -> None:
        self._busy.add(key)
        try:
            loop = asyncio.get_running_loop()
            idle, evaluated = await loop.run_in_executor(self._pool, self.run_one, body, tick, sla, now)
            if tick:
                if idle:
                    self._idle[key] = self.fingerprint(body)
                else:
                    self._idle.pop(key, None)
            if evaluated:
                self._next_sla[key] = now + canary.SLA_PERIOD_S
        finally:
            self._busy.discard(key)

    async def run(self, index: Any) -> None:
        self._pool = ThreadPoolExecutor(self.WORKERS, thread_name_prefix="rollout")
        await asyncio.sleep(self.INITIAL_DELAY_S)
        while True:
            started = time.monotonic()
            try:
                for key, body, tick, sla in self.due(index, time.time()):
                    task = asyncio.create_task(self._work(key, body, tick, sla, time.time()))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
            except Exception:  # noqa: BLE001 - a bad pass must not end rollouts for good
                log.exception("rollout loop")
            await asyncio.sleep(max(0.1, canary.TICK_S - (time.monotonic() - started)))


_rollout_loop = _RolloutLoop()
_rollout_task: asyncio.Task[None] | None = None


@kopf.on.startup()
async def start_rollout_loop(pms_index: kopf.Index, **_: Any) -> None:
    """Start the shared rollout loop; the index it walks fills as kopf lists the resources."""
    global _rollout_task
    _rollout_task = asyncio.create_task(_rollout_loop.run(pms_index), name="rollout loop")


@kopf.on.cleanup()
async def stop_rollout_loop(**_: Any) -> None:
    if _rollout_task is not None:
        _rollout_task.cancel()


def child_event(
    event: dict[str, Any],
    body: kopf.Body,
    namespace: str,
    labels: kopf.Labels,
    pms_index: kopf.Index,
    logger: logging.Logger,
    **_: Any,
) -> None:
    owner = labels.get(LABEL_SERVICE)
    if not owner:
        return
    found = list(pms_index.get((namespace, owner), []))
    if not found:
        return  # owner gone (garbage collection in progress) or not yet indexed: its reconcile will apply
    pms_body = found[-1]
    child = {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": dict(body.get("metadata") or {}),
        "spec": dict(body.get("spec") or {}),
        "data": dict(body.get("data") or {}),
        "status": dict(body.get("status") or {}),
    }
    if body.get("kind") != "ConfigMap":
        child.pop("data")
    before = _ready(pms_body.get("status"))
    try:
        restored, _written = rc.on_child_event(kube(), pms_body, event.get("type"), child)
    except KubeError as e:
        # Not retried here: the next event of this child, or the owner's next reconcile, repairs it.
        logger.warning("child %s %s/%s: %s", child["kind"], namespace, child["metadata"].get("name"), e)
        return
    if restored:
        kopf.info(pms_body, reason="DriftRestored",
                  message=f"{child['kind']} {child['metadata'].get('name')} put back to the spec")
    after = _ready(rc._last_written.get((namespace, owner, pms_body["metadata"].get("uid")), {}))
    if after == "True" and before != "True":
        kopf.info(pms_body, reason="Ready", message="Deployment available")


# Watch every child kind we own; the managed-by label is also applied server-side (settings.py).
CHILD_RESOURCES = [
    ("", "v1", "configmaps"),
    ("apps", "v1", "deployments"),
    ("", "v1", "services"),
    ("autoscaling", "v2", "horizontalpodautoscalers"),
    ("policy", "v1", "poddisruptionbudgets"),
]
for _group, _version, _plural in CHILD_RESOURCES:
    kopf.on.event(
        group=_group,
        version=_version,
        plural=_plural,
        id=f"child_event_{_plural}",
        labels={LABEL_MANAGED_BY: MANAGED_BY},
    )(child_event)
