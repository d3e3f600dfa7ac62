"""Status of a PaddleModelService computed from its observed children. Pure.

Each status field has exactly one writer, which server-side applies it under its own field manager
(``Kube.apply_status``), so no writer reads, merges and writes back another's fields:

==========================  ===========================================================  ==========
field manager               fields                                                       writer
==========================  ===========================================================  ==========
``STATUS_MANAGER``          observedGeneration, replicas, readyReplicas, replicaSummary,  reconcile
                            selector, tag, url, warnings,
                            conditions Ready/Available/Progressing/ReconcileError
``ROLLOUT_MANAGER``         stableTag, rollout                                            canary.tick
``SLA_MANAGER``             sla, condition SLAMet                                         canary.evaluate_sla
``TRUTH_MANAGER``           served, modelVersion, fallback,                               canary.apply_truth
                            conditions Degraded/ModelCurrent                              (truth.py)
==========================  ===========================================================  ==========

``compute_status`` is the single place the reconcile's conditions are decided; ``lastTransitionTime``
moves only when a condition's status changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from .spec import FIELD_MANAGER, LABEL_SERVICE, PaddleModelService

# Field managers of the three status writers (see the table above). Children use FIELD_MANAGER.
STATUS_MANAGER = f"{FIELD_MANAGER}-status"
ROLLOUT_MANAGER = f"{FIELD_MANAGER}-rollout"
SLA_MANAGER = f"{FIELD_MANAGER}-sla"
TRUTH_MANAGER = f"{FIELD_MANAGER}-truth"

CONDITION_TYPES = ("Ready", "Available", "Progressing", "ReconcileError")
# Availability at or above which one replica is a single point of failure worth a warning.
HA_AVAILABILITY = 99.9


@dataclass(frozen=True)
class Problem:
    """Why the spec cannot work right now (e.g. a Secret is missing): reason + message."""

    reason: str
    message: str


@dataclass
class Observed:
    """What the reconcile saw: the stable Deployment and HPA (None when absent), and problems."""

    deployment: dict[str, Any] | None = None
    hpa: dict[str, Any] | None = None
    problems: list[Problem] = field(default_factory=list)


def now_iso() -> str:
    """The current UTC time as Kubernetes writes it."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _cond(conditions: list[dict[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    for c in conditions or []:
        if c.get("type") == type_:
            return c
    return None


def ready_status(status: dict[str, Any] | None) -> str | None:
    """The status ("True"/"False"/"Unknown") of the Ready condition, None when there is none."""
    c = _cond((status or {}).get("conditions"), "Ready")
    return None if c is None else c.get("status")


def merge_conditions(
    old: list[dict[str, Any]] | None, new: list[dict[str, Any]], now: str
) -> list[dict[str, Any]]:
    """Replace conditions by type, keeping lastTransitionTime when the status did not change.

    Returns the types in ``new`` only: other types (``SLAMet``) belong to another writer.
    """
    by_type = {c["type"]: dict(c) for c in old or []}
    for c in new:
        prev = by_type.get(c["type"])
        merged = dict(c)
        if prev is not None and prev.get("status") == c["status"] and prev.get("lastTransitionTime"):
            merged["lastTransitionTime"] = prev["lastTransitionTime"]
        else:
            merged["lastTransitionTime"] = now
        by_type[c["type"]] = merged
    mine = {c["type"] for c in new}
    by_type = {t: c for t, c in by_type.items() if t in mine}
    order = {t: i for i, t in enumerate(CONDITION_TYPES)}
    return sorted(by_type.values(), key=lambda c: (order.get(c["type"], len(order)), c["type"]))


def warnings_for(svc: PaddleModelService, obs: Observed) -> list[str]:
    """Human-readable warnings read back from children, plus spec smells the schema cannot catch."""
    out: list[str] = []
    hpa = obs.hpa
    if hpa is not None:
        for c in (hpa.get("status") or {}).get("conditions") or []:
            if c.get("type") in ("ScalingActive", "AbleToScale") and c.get("status") == "False":
                out.append(
                    f"HorizontalPodAutoscaler {hpa['metadata']['name']}: {c['type']}=False "
                    f"({c.get('reason', '')}): {c.get('message', '')}".strip()
                )
    dep = obs.deployment
    if dep is not None:
        for c in (dep.get("status") or {}).get("conditions") or []:
            if c.get("type") == "ReplicaFailure" and c.get("status") == "True":
                out.append(f"Deployment {dep['metadata']['name']}: {c.get('reason', '')}: {c.get('message', '')}")
    spec = svc.spec
    a = spec.autoscaling
    cpu_metric = a is not None and a.enabled and (
        a.target_cpu_utilization is not None
        or (spec.inference.device != "gpu" and a.target_qps_per_replica is None)
    )
    if cpu_metric and "cpu" not in spec.inference.resources.requests:
        out.append("spec.autoscaling scales on CPU utilisation but spec.inference.resources.requests.cpu is unset")
    floor = a.min_replicas if spec.autoscaled and a is not None else spec.replicas
    avail = spec.sla.availability_percent if spec.sla is not None else None
    if avail is not None and avail >= HA_AVAILABILITY and floor < 2:
        out.append(f"spec.sla.availability {avail:g} with at most one replica guaranteed: "
                   "a single pod restart breaks it; use 2+ replicas")
    if spec.model.preload.medium == "Memory" and "memory" not in spec.inference.resources.limits:
        out.append("spec.model.preload.medium Memory without spec.inference.resources.limits.memory: "
                   "the RAM disk is bounded only by sizeLimit")
    return out


def _deployment_tag(dep: dict[str, Any] | None) -> str | None:
    for c in ((((dep or {}).get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers") or []:
        image = c.get("image") or ""
        if ":" in image.rsplit("/", 1)[-1]:
            return image.rsplit(":", 1)[1]
    return None


def compute_status(
    svc: PaddleModelService,
    obs: Observed,
    old_status: dict[str, Any] | None,
    now: str | None = None,
) -> dict[str, Any]:
    """Every status field the reconcile owns (applied whole under ``STATUS_MANAGER``)."""
    now = now or now_iso()
    old_status = dict(old_status or {})
    gen = svc.generation
    dep = obs.deployment
    dstatus = (dep or {}).get("status") or {}
    dconds = dstatus.get("conditions") or []
    desired = ((dep or {}).get("spec") or {}).get("replicas")
    if desired is None:
        desired = svc.spec.replicas
    ready_replicas = int(dstatus.get("readyReplicas") or 0)
    replicas = int(dstatus.get("replicas") or 0)
    updated = int(dstatus.get("updatedReplicas") or 0)

    conds: list[dict[str, Any]] = []

    def add(type_: str, ok: bool, reason: str, message: str) -> None:
        conds.append(
            {"type": type_, "status": "True" if ok else "False", "reason": reason, "message": message,
             "observedGeneration": gen}
        )

    if obs.problems:
        add("ReconcileError", True, obs.problems[0].reason, "; ".join(p.message for p in obs.problems))
    else:
        add("ReconcileError", False, "Reconciled", "all children applied")

    avail_c = _cond(dconds, "Available")
    available = avail_c is not None and avail_c.get("status") == "True"
    if dep is None:
        add("Available", False, "DeploymentMissing", f"Deployment {svc.deployment_name} not found")
    elif available:
        add("Available", True, (avail_c or {}).get("reason") or "MinimumReplicasAvailable",
            f"{ready_replicas}/{desired} replicas ready")
    else:
        add("Available", False, (avail_c or {}).get("reason") or "MinimumReplicasUnavailable",
            (avail_c or {}).get("message") or f"{ready_replicas}/{desired} replicas ready")

    prog_c = _cond(dconds, "Progressing")
    dep_gen_seen = dep is not None and (dstatus.get("observedGeneration") or 0) >= (dep["metadata"].get("generation") or 0)
    deadline = prog_c is not None and prog_c.get("status") == "False"
    rolling = dep is not None and (not dep_gen_seen or updated < desired or ready_replicas < desired or replicas > desired)
    if deadline:
        add("Progressing", False, (prog_c or {}).get("reason") or "ProgressDeadlineExceeded",
            (prog_c or {}).get("message") or "")
    elif rolling:
        add("Progressing", True, "RollingUpdate",
            f"{updated}/{desired} updated, {ready_replicas}/{desired} ready")
    else:
        add("Progressing", False, "Complete", f"{ready_replicas}/{desired} replicas up to date and ready")

    # Degraded (these Deployment signs plus the pods' own reports) belongs to truth.py.

    if obs.problems:
        add("Ready", False, obs.problems[0].reason, "; ".join(p.message for p in obs.problems))
    elif available:
        add("Ready", True, "Available", f"serving {svc.model_name} at {svc.url}")
    elif dep is None:
        add("Ready", False, "DeploymentMissing", f"Deployment {svc.deployment_name} not created yet")
    else:
        add("Ready", False, "WaitingForReplicas", f"{ready_replicas}/{desired} replicas ready")

    status: dict[str, Any] = {
        "observedGeneration": gen,
        "conditions": merge_conditions(old_status.get("conditions"), conds, now),
        "replicas": replicas,
        "readyReplicas": ready_replicas,
        "replicaSummary": f"{ready_replicas}/{desired}",
        "selector": f"{LABEL_SERVICE}={svc.name}",
        # What stable runs, read from its Deployment: during a canary spec.tag is the candidate, not this.
        "tag": _deployment_tag(dep) or old_status.get("stableTag") or svc.spec.tag,
        "url": svc.url,
        "warnings": warnings_for(svc, obs),
    }
    # Not here: stableTag/rollout (the rollout controller), sla (the SLA evaluator) and what the pods
    # report (truth.py), see above.
    return status


def status_changed(old: dict[str, Any] | None, patch: dict[str, Any]) -> bool:
    """True when applying ``patch`` would change ``old`` (skip no-op writes: no event storms)."""
    old = old or {}
    for k, v in patch.items():
        if isinstance(v, dict) and isinstance(old.get(k), dict):
            if status_changed(old[k], v):
                return True
        elif old.get(k) != v:
            return True
    return False
