"""Thin kopf handlers: adapt kopf's events to reconcile.py and turn outcomes into retries and events.

- ``pms_reconcile`` (resume + create + update): the full reconcile. Blocking problems (a missing
  Secret or PVC) set Ready=False, post a warning event and retry with exponential backoff.
- ``pms_index``: an in-memory index of PaddleModelServices, so child events find their owner without
  an API call.
- ``child_event`` on every managed child kind: restores drifted or deleted children and refreshes the
  status when the Deployment or HPA changes (Ready follows the Deployment's Available condition).
- Deletion needs no handler and no finalizer: children carry a controller owner reference and the
  garbage collector removes them.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import kopf

from . import canary
from . import reconcile as rc
from .kube import Kube, KubeError
from .spec import GROUP, LABEL_MANAGED_BY, LABEL_SERVICE, MANAGED_BY, PLURAL, VERSION

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


@kopf.timer(GROUP, VERSION, PLURAL, interval=canary.TICK_S, initial_delay=1.0, id="rollout")
def pms_rollout(body: kopf.Body, **_: Any) -> None:
    """Advance the canary (analysis only every spec.rollout.intervalSeconds) and refresh status.sla."""
    plain = _plain(body)
    if plain["metadata"].get("deletionTimestamp"):
        return
    try:
        result = canary.tick(kube(), plain)
        canary.evaluate_sla(kube(), plain)
    except KubeError as e:
        raise kopf.TemporaryError(str(e), delay=canary.TICK_S) from e
    for ev in result.events:
        # Events carry the measured figures; status.rollout is the durable record.
        kopf.event(body, type=ev.type, reason=ev.reason, message=ev.message)


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
