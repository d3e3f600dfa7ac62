"""The one idempotent reconcile: check what the spec needs, apply every child of the plan, prune the
rest, read the children back, apply the status fields it owns. Also the drift path for one child.

The plan is :func:`plan.build_children` over the rollout shape in memory.py (or ``status``), so
rollouts need no hook here. No kopf either: handlers.py adapts kopf's calls to these functions, so
they run the same from a handler, a child's watch event, the rollout loop, a test or the benchmark.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from . import memory
from .kinds import OWNED
from .kube import Kube
from .plan import build_children, shape_from_status
from .spec import (
    LABEL_MANAGED_BY,
    LABEL_SERVICE,
    MANAGED_BY,
    PaddleModelService,
    parse_pvc_uri,
)
from .status import STATUS_MANAGER, Observed, Problem, compute_status, ready_status, status_changed

log = logging.getLogger(__name__)

@dataclass
class Result:
    """What one reconcile did: the status patch it wrote (or would have) and any blocking problems."""

    svc: PaddleModelService
    status: dict[str, Any]
    problems: list[Problem] = field(default_factory=list)
    applied: list[str] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)
    status_written: bool = False


def check_preconditions(kube: Kube, svc: PaddleModelService) -> list[Problem]:
    """Things the schema cannot know: referenced Secrets (and keys) and PVCs must exist."""
    problems: list[Problem] = []
    spec = svc.spec
    refs: list[tuple[str, Any, str]] = []
    uris = [("spec.model.uri", spec.model.uri)]
    if spec.fallback is not None:
        uris.append(("spec.fallback.uri", spec.fallback.uri))
    signatures = [("spec.model.signature", spec.model.signature)]
    if spec.pipeline is not None:
        fields = {"det": "detection", "cls": "classifier"}
        for key, stage in spec.pipeline.stages().items():
            where = f"spec.pipeline.{fields[key]}"
            signatures.append((f"{where}.signature", stage.signature))
            uris.append((f"{where}.uri", stage.uri))
            if stage.fallback is not None:
                uris.append((f"{where}.fallback.uri", stage.fallback.uri))
    for where, sig in signatures:
        if sig is not None and sig.hmac_key_secret_ref is not None:
            refs.append((f"{where}.hmacKeySecretRef", sig.hmac_key_secret_ref, "hmac.key"))
        if sig is not None and sig.public_key_secret_ref is not None:
            refs.append((f"{where}.publicKeySecretRef", sig.public_key_secret_ref, "public.pem"))
    if spec.auth is not None and spec.auth.token_secret_ref is not None:
        refs.append(("spec.auth.tokenSecretRef", spec.auth.token_secret_ref, "token"))
    for path, ref, default_key in refs:
        secret = kube.get("v1", "Secret", svc.namespace, ref.name)
        key = ref.key or default_key
        if secret is None:
            problems.append(Problem("SecretNotFound", f"{path}: Secret {svc.namespace}/{ref.name} not found"))
        elif key not in (secret.get("data") or {}) and key not in (secret.get("stringData") or {}):
            problems.append(Problem("SecretKeyNotFound", f"{path}: Secret {ref.name} has no key {key!r}"))
    for path, uri in uris:
        pvc = parse_pvc_uri(uri)
        if pvc is not None and kube.get("v1", "PersistentVolumeClaim", svc.namespace, pvc[0]) is None:
            problems.append(
                Problem("PersistentVolumeClaimNotFound", f"{path}: PVC {svc.namespace}/{pvc[0]} not found")
            )
    return problems


def serving_tag(deployment: dict[str, Any] | None, svc: PaddleModelService) -> str | None:
    """The image tag the resource's own stable Deployment runs (None: no such Deployment)."""
    if not deployment:
        return None
    owners = (deployment.get("metadata") or {}).get("ownerReferences") or []
    if not any(o.get("uid") == svc.uid for o in owners):
        return None
    spec = deployment.get("spec") or {}
    for c in ((spec.get("template") or {}).get("spec") or {}).get("containers") or []:
        image = c.get("image") or ""
        if ":" in image.rsplit("/", 1)[-1]:
            return image.rsplit(":", 1)[1]
    return None


def first_sight(kube: Kube, svc: PaddleModelService) -> memory.Memory:
    """This process's rollout memory of the resource, seeded on first sight from what serves.

    ``status.stableTag`` is recorded by the rollout loop's first tick. Before it, the stable tag used
    to be taken from ``spec.tag``, so a tag change in that gap rolled the stable Deployment forward
    with no canary. Now, when neither memory nor status knows the stable tag, the stable Deployment is
    asked (one GET, once per resource and process); ``spec.tag`` is the stable tag only when no
    Deployment of ours exists yet, i.e. nothing serves another version.
    """
    key = memory.key(svc)
    mem = memory.get(key)
    if mem is not None:
        return mem
    running = None
    if not (svc.status or {}).get("stableTag"):
        running = serving_tag(kube.get("apps/v1", "Deployment", svc.namespace, svc.deployment_name), svc)
    shape, state = shape_from_status(svc, serving_tag=running)
    # The plan from this shape is (or is about to be) in place: nothing for the rollout loop to apply.
    return memory.setdefault(key, memory.Memory(shape, state, applied=shape))


def plan(svc: PaddleModelService) -> list[dict[str, Any]]:
    """The children for the resource's current rollout shape."""
    shape, _state = memory.current(svc)
    return build_children(svc, shape)


def child_key(obj: dict[str, Any]) -> tuple[str, str, str]:
    """(apiVersion, kind, name): how children are matched between plan and cluster."""
    return (obj["apiVersion"], obj["kind"], obj["metadata"]["name"])


# The set of children (child_key) each resource was last pruned against, as a hash: an unwanted
# child appears only when that set changes (a spec change, a canary starting or ending), or before this
# process pruned the resource once (after a restart). Otherwise the prune would LIST every owned kind on
# every reconcile: 8 requests, more than the applies themselves.
ROUTE_KINDS = frozenset({"HTTPRoute", "VirtualService"})  # applied after the Services they route to

_pruned_for: dict[tuple[str, str, str], int] = {}


def _children_hash(desired: list[dict[str, Any]]) -> int:
    return hash(frozenset(child_key(c) for c in desired))


def prune(kube: Kube, svc: PaddleModelService, desired: list[dict[str, Any]]) -> list[str]:
    """Delete children we own that the plan no longer wants (e.g. the HPA after autoscaling is off)."""
    wanted = {child_key(c) for c in desired}
    key, wanted_hash = (svc.namespace, svc.name, svc.uid), _children_hash(desired)
    if _pruned_for.get(key) == wanted_hash:
        return []
    selector = f"{LABEL_SERVICE}={svc.name},{LABEL_MANAGED_BY}={MANAGED_BY}"
    pruned = []
    for k in OWNED:
        api_version, kind = k.key
        for obj in kube.list(api_version, kind, svc.namespace, selector):
            owners = obj["metadata"].get("ownerReferences") or []
            if not any(o.get("uid") == svc.uid for o in owners):
                continue  # not ours (another object of the same name, or adopted elsewhere)
            if (api_version, kind, obj["metadata"]["name"]) not in wanted:
                kube.delete(api_version, kind, svc.namespace, obj["metadata"]["name"])
                pruned.append(f"{kind}/{obj['metadata']['name']}")
    _pruned_for[key] = wanted_hash
    return pruned


def carried_problems(svc: PaddleModelService, old_status: dict[str, Any] | None) -> list[Problem]:
    """A ReconcileError for this generation stays until the full reconcile clears it (drift path)."""
    for c in (old_status or {}).get("conditions") or []:
        if (
            c.get("type") == "ReconcileError"
            and c.get("status") == "True"
            and c.get("observedGeneration") == svc.generation
        ):
            return [Problem(c.get("reason") or "ReconcileError", c.get("message") or "")]
    return []


# Last status each object was given by this process. The watch-fed copy of an object can lag our own
# write by a moment; a write is skipped only when both copies already say the same thing.
_last_written = memory.Compact()


def last_status(namespace: str, name: str, uid: str) -> dict[str, Any]:
    """The status this process last applied to the resource ({} when none)."""
    return _last_written.get((namespace, name, uid)) or {}


def write_status(
    kube: Kube, svc: PaddleModelService, obs: Observed, old_status: dict[str, Any] | None
) -> tuple[dict[str, Any], bool]:
    """Apply the reconcile's status fields when they changed; (status, written)."""
    status = compute_status(svc, obs, old_status)
    key = (svc.namespace, svc.name, svc.uid)
    last = _last_written.get(key)
    if not status_changed(old_status, status) and (last is None or not status_changed(last, status)):
        return status, False
    kube.apply_status(svc.namespace, svc.name, status, STATUS_MANAGER)
    _last_written.put(key, status)
    return status, True


# Generation whose children were all applied by a full reconcile in this process. Until then the
# drift path leaves status alone, so Ready=True never appears while children are still missing.
_reconciled: dict[tuple[str, str, str], int] = {}


# The status of the resource's Deployment and HPA (status reads those two) as last seen by a child
# event that arrived before this generation's full reconcile wrote status (still applying, or
# blocked). When it differs from the child the reconcile applied (the Deployment may have become
# Available meanwhile, the HPA lost its metrics), the reconcile reads that child again before writing
# status; otherwise it saves the GET. Keyed by (resource key, kind).
_child_seen: dict[tuple[tuple[str, str, str], str], dict[str, Any]] = {}
STATUS_CHILDREN = {"Deployment": "apps/v1", "HorizontalPodAutoscaler": "autoscaling/v2"}  # kind -> apiVersion

# One lock per resource around "decide what the Deployment says, then write status". A full reconcile
# (kopf's thread or the blocked-recheck worker) and a child event (the child pool) run concurrently:
# without it, the reconcile's write from the Deployment it had just applied could land after a child
# event's write of the Available Deployment, and Ready stayed False with no later event to fix it.
_status_locks: dict[tuple[str, str, str], threading.Lock] = {}
_status_locks_guard = threading.Lock()


def _status_lock(key: tuple[str, str, str]) -> threading.Lock:
    with _status_locks_guard:
        return _status_locks.setdefault(key, threading.Lock())


def reconciled_generation(namespace: str, name: str, uid: str) -> int | None:
    """The generation whose children a full reconcile in this process applied, if any."""
    return _reconciled.get((namespace, name, uid))


def forget(namespace: str, name: str, uid: str) -> None:
    """Drop per-object memory when the resource is gone."""
    key = (namespace, name, uid)
    _last_written.pop(key)
    _reconciled.pop(key, None)
    _pruned_for.pop(key, None)
    for kind in STATUS_CHILDREN:
        _child_seen.pop((key, kind), None)
    with _status_locks_guard:
        _status_locks.pop(key, None)


def _fresh(
    kube: Kube, svc: PaddleModelService, kind: str, applied: dict[str, Any] | None, again: bool
) -> dict[str, Any] | None:
    """The status child ``applied`` by this reconcile, read again when a child event saw another
    status of it meanwhile, or when this generation was reconciled before (child events write status
    themselves then, and the apply's answer may be older than theirs)."""
    seen = _child_seen.pop(((svc.namespace, svc.name, svc.uid), kind), None)
    if applied is None or not (again or (seen is not None and seen != (applied.get("status") or {}))):
        return applied
    return kube.get(STATUS_CHILDREN[kind], kind, svc.namespace, svc.deployment_name) or applied


def reconcile(kube: Kube, body: dict[str, Any], *, do_prune: bool = True) -> Result:
    """Bring the children in line with the spec and report. Safe to run any number of times."""
    svc = PaddleModelService.from_body(body)
    old_status = dict(body.get("status") or {})
    problems = check_preconditions(kube, svc)
    result = Result(svc=svc, status={}, problems=problems)
    first_sight(kube, svc)
    deployment = hpa = None
    blocked = bool(problems)
    if not blocked:
        desired = plan(svc)
        # The children are independent objects: apply them concurrently, so a reconcile waits for one
        # API round trip instead of one per child. Results come back in plan order; any other error
        # is raised as before (kopf retries the whole reconcile).
        def read_back(child: dict[str, Any]) -> bool:  # status is computed from these two only
            return child["kind"] in ("Deployment", "HorizontalPodAutoscaler") and (
                child["metadata"]["name"] == svc.deployment_name
            )

        # Routes go last: a router that reads an HTTPRoute before its backend Services exist logs the
        # backend as missing, and Traefik did not always pick the Service up later (seen in CI).
        first = [c for c in desired if c["kind"] not in ROUTE_KINDS]
        routes = [c for c in desired if c["kind"] in ROUTE_KINDS]
        outcome = dict(zip(map(id, first), kube.apply_all(first, read_back), strict=True))
        if routes:
            outcome.update(zip(map(id, routes), kube.apply_all(routes, read_back), strict=True))
        for child in desired:
            applied, rejected = outcome[id(child)]
            if rejected is not None:
                # The API server refused a manifest built from this spec (e.g. a bad passthrough
                # toleration): a spec problem, reported, not retried fast.
                problems.append(Problem("ChildRejected", str(rejected)))
                continue
            result.applied.append(f"{child['kind']}/{child['metadata']['name']}")
            if child["kind"] == "Deployment" and child["metadata"]["name"] == svc.deployment_name:
                deployment = applied
            elif child["kind"] == "HorizontalPodAutoscaler" and child["metadata"]["name"] == svc.deployment_name:
                hpa = applied
        # A resource never reconciled before (no status yet) has no children from an older plan:
        # skipping the prune saves one LIST per managed kind on every create, and nothing is left to
        # prune for this set of children until it changes.
        if do_prune and not problems and old_status:
            result.pruned = prune(kube, svc, desired)
        elif do_prune and not problems:
            _pruned_for[(svc.namespace, svc.name, svc.uid)] = _children_hash(desired)
    key = (svc.namespace, svc.name, svc.uid)
    with _status_lock(key):
        if not problems:
            # Once this generation was reconciled, child events write status themselves: one may have
            # written a newer Deployment (Available) while this reconcile applied, and the answer of
            # the apply above would take Ready back. Before that, a Deployment event left to this
            # reconcile (see on_child_event) with another status than the one applied says the same.
            again = _reconciled.get(key) == svc.generation
            _reconciled[key] = svc.generation
            deployment = _fresh(kube, svc, "Deployment", deployment, again)
            hpa = _fresh(kube, svc, "HorizontalPodAutoscaler", hpa, again)
        elif blocked:
            # Leave whatever exists alone: a Deployment whose Secret vanished keeps serving its model.
            deployment = kube.get("apps/v1", "Deployment", svc.namespace, svc.deployment_name)
        result.status, result.status_written = write_status(
            kube, svc, Observed(deployment=deployment, hpa=hpa, problems=problems), old_status
        )
        log.debug(
            "reconcile %s/%s gen %s: ready %s, written %s",
            svc.namespace, svc.name, svc.generation, ready_status(result.status), result.status_written,
        )
    return result


def is_subset(desired: Any, actual: Any) -> bool:
    """Every field we set has our value in ``actual`` (server defaults and others' fields are ignored)."""
    if isinstance(desired, dict):
        if not isinstance(actual, dict):
            return False
        return all(k in actual and is_subset(v, actual[k]) for k, v in desired.items())
    if isinstance(desired, list):
        if not isinstance(actual, list) or len(desired) != len(actual):
            return False
        return all(is_subset(d, a) for d, a in zip(desired, actual, strict=True))
    if isinstance(desired, (int, float)) and isinstance(actual, str) or isinstance(desired, str) and isinstance(actual, (int, float)):
        return str(desired) == str(actual)
    return desired == actual


def on_child_event(
    kube: Kube,
    pms_body: dict[str, Any],
    event_type: str | None,
    child: dict[str, Any],
) -> tuple[bool, bool]:
    """A child changed: put it back if it drifted or vanished, and refresh status from Deployment/HPA.

    Returns (restored, status_written).
    """
    svc = PaddleModelService.from_body(pms_body)
    if pms_body["metadata"].get("deletionTimestamp"):
        return False, False
    api_version, kind = child["apiVersion"], child["kind"]
    name = child["metadata"]["name"]
    owners = child["metadata"].get("ownerReferences") or []
    if not any(o.get("uid") == svc.uid for o in owners):
        return False, False
    old_status = dict(pms_body.get("status") or {})
    first_sight(kube, svc)
    # The watch-fed body can lag our own last write (e.g. the write that cleared a ReconcileError):
    # judge carried problems by the newer of the two, or a stale error would be written back.
    last = _last_written.get((svc.namespace, svc.name, svc.uid))
    problems = carried_problems(svc, last if last is not None else old_status)
    desired = {child_key(c): c for c in plan(svc)} if not problems else {}
    want = desired.get((api_version, kind, name))
    restored = False
    current = child
    if want is not None and (event_type == "DELETED" or not is_subset(want, child)):
        current = kube.apply(want)
        restored = True
        log.info("restored %s %s/%s (%s)", kind, svc.namespace, name, "deleted" if event_type == "DELETED" else "drifted")
    if kind not in ("Deployment", "HorizontalPodAutoscaler") or name != svc.deployment_name:
        return restored, False
    key = (svc.namespace, svc.name, svc.uid)
    with _status_lock(key):
        # Judged again under the lock: a full reconcile may have written status meanwhile.
        last = _last_written.get(key)
        problems = carried_problems(svc, last if last is not None else old_status)
        pending = _reconciled.get(key) != svc.generation
        if pending:
            # Kept for the full reconcile of this generation, blocked or not yet done: when it writes,
            # it reads the child again if this status differs from the one it applied. A blocked
            # resource's recheck applies the children while this process still holds the blocked
            # status: the new Deployment's events, Available among them, came in then (seen in CI).
            _child_seen[(key, kind)] = dict(current.get("status") or {})
        if not problems and pending:
            # The full reconcile is still applying; it writes status when done.
            log.debug("%s %s/%s event left to the reconcile", kind, svc.namespace, name)
            return restored, False
        if kind == "Deployment":
            deployment = None if event_type == "DELETED" and not restored else current
            hpa = kube.get("autoscaling/v2", "HorizontalPodAutoscaler", svc.namespace, name) if svc.spec.autoscaled else None
        else:
            hpa = None if event_type == "DELETED" and not restored else current
            deployment = kube.get("apps/v1", "Deployment", svc.namespace, name)
        status, written = write_status(kube, svc, Observed(deployment=deployment, hpa=hpa, problems=problems), old_status)
        log.debug("%s %s/%s event: ready %s, written %s", kind, svc.namespace, name, ready_status(status), written)
    return restored, written

