"""Canary rollouts and SLA status: the glue between the pure pieces and the cluster.

- :func:`tick` runs from the shared rollout loop (handlers.py): observe the tracks, ask Prometheus
  when an analysis is due, feed ``rollout.step``, record the decision in memory.py and reconcile when
  the shape changed (the reconcile's plan builds the children for it); it owns ``status.stableTag``
  and ``status.rollout`` (field manager ``ROLLOUT_MANAGER``).
- :func:`evaluate_sla` owns ``status.sla`` and the ``SLAMet`` condition (``SLA_MANAGER``).
- :func:`apply_truth` owns what the pods report (truth.py's fields, ``TRUTH_MANAGER``).

No kopf here (handlers.py adapts it); Prometheus and the API server are reached through
``prometheus.py`` and ``kube.py``; settings arrive as an argument.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field, replace
from typing import Any

from . import memory, promql, truth
from . import reconcile as rc
from . import rollout as ro
from .builders.common import CANARY
from .builders.routing import ROUTER_SERVICE, track_name
from .kube import Kube
from .memory import Memory
from .plan import (
    REV_SEP,
    RUNNING,
    Shape,
    desired_revision,
    model_canary,
    policy_for,
    revision,
    shape_of,
    spec_model_json,
    tag_of,
)
from .prometheus import PrometheusQuerier
from .settings import OperatorSettings
from .spec import PaddleModelService
from .status import ROLLOUT_MANAGER, SLA_MANAGER, TRUTH_MANAGER, merge_conditions, now_iso

log = logging.getLogger(__name__)

NO_PROMETHEUS = "no Prometheus URL (spec.rollout.analysis.prometheusURL or PADDLE_OPERATOR_PROMETHEUS_URL)"


def prometheus_url(svc: PaddleModelService, settings: OperatorSettings) -> str | None:
    """The resource's Prometheus, else the operator-wide one."""
    return svc.spec.rollout.analysis.prometheus_url or settings.prometheus_url


# ------------------------------------------------------------------------------ observation


def _image_tag(dep: dict[str, Any] | None) -> str | None:
    if not dep:
        return None
    containers = (((dep.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers") or []
    for c in containers:
        image = c.get("image") or ""
        if ":" in image.rsplit("/", 1)[-1]:
            return image.rsplit(":", 1)[1]
    return None


def _settled(dep: dict[str, Any] | None, tag: str, model_uri: str | None = None) -> bool:
    """The Deployment runs ``tag`` (and ``model_uri``) on all its desired replicas, all updated and
    ready, old pods gone."""
    if not dep or _image_tag(dep) != tag:
        return False
    if model_uri is not None and model_uri not in json.dumps((dep.get("spec") or {}).get("template") or {}):
        return False
    want = int((dep.get("spec") or {}).get("replicas") or 0)
    st = dep.get("status") or {}
    return (
        want > 0
        and int(st.get("observedGeneration") or 0) >= int(dep["metadata"].get("generation") or 0)
        and int(st.get("updatedReplicas") or 0) >= want
        and int(st.get("readyReplicas") or 0) >= want
        and int(st.get("availableReplicas") or 0) >= want
        and int(st.get("replicas") or 0) == want
    )


def _replicas(dep: dict[str, Any] | None) -> int:
    """The Deployment's desired replicas (set by its HPA when autoscaled)."""
    return int(((dep or {}).get("spec") or {}).get("replicas") or 0)


def _ready(dep: dict[str, Any] | None) -> int:
    return int(((dep or {}).get("status") or {}).get("readyReplicas") or 0)


def parse_duration(text: str) -> float:
    """``5m`` -> 300.0 (the CRD's duration pattern: s, m, h, d)."""
    m = re.fullmatch(r"(\d+)(s|m|h|d)", text.strip())
    if not m:
        raise ValueError(f"bad duration {text!r}")
    return int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


# How long a canary that lost its traffic keeps its pods, with a Gateway API or Istio router: the
# route change and the pods' removal reach the router separately (Traefik applies provider changes
# at most every 2 s), and a router that still weights a backend whose pods are gone answers 503.
ROUTE_DRAIN_S = 10.0


def drained(mem: Memory, shape: Shape, router: str, now: float) -> Shape:
    """``shape``, except that a canary which carried traffic keeps its pods (at weight 0) for
    :data:`ROUTE_DRAIN_S` after a rollback, abort or promotion takes that traffic away.

    With the Service router the pods *are* the route: kube-proxy drops a terminating pod at once and
    the runtime drains its connections, so the pods go straight away. Held in memory only: after an
    operator restart the canary goes at once.
    """
    if router == ROUTER_SERVICE or shape.canary == RUNNING:
        mem.drain_until, mem.drain_from = 0.0, None
        return shape
    if mem.drain_until == 0.0:
        prev = mem.applied
        if prev is None or prev.canary != RUNNING or prev.routed_weight == 0:
            return shape  # nothing was routed to it
        mem.drain_until, mem.drain_from = now + ROUTE_DRAIN_S, prev
    if now < mem.drain_until and mem.drain_from is not None:
        held = mem.drain_from
        return replace(shape, canary=RUNNING, canary_tag=held.canary_tag, routed_weight=0, sizing_weight=held.sizing_weight)
    mem.drain_until, mem.drain_from = 0.0, None
    return shape


def held(mem: Memory, shape: Shape, phase: str, hold_s: float, now: float) -> Shape:
    """``shape``, except that for ``hold_s`` after promoting ends (``Promoted``, or aborted back to the
    stable tag) stable keeps the floor it had while promoting (``Shape.stable_min``, the canary's size).

    While promoting the canary carries the traffic, so every recommendation of stable's HPA is that
    of idle pods; at ``Promoted`` the traffic returns to stable but its metrics show it only a rate
    window later, and an HPA whose floor dropped at once scaled stable down under the returning
    load. Held in memory only, like the route drain; ``hold_s`` 0 (or no autoscaling) ends any hold.
    """
    if phase in ro.ACTIVE_PHASES or shape.stable_min or hold_s <= 0:
        mem.hold_until, mem.hold_min = 0.0, 0
        return shape
    if mem.hold_until == 0.0:
        prev = mem.applied
        if prev is None or not prev.stable_min:
            return shape
        mem.hold_until, mem.hold_min = now + hold_s, prev.stable_min
    if now < mem.hold_until:
        return replace(shape, stable_min=mem.hold_min)
    mem.hold_until, mem.hold_min = 0.0, 0
    return shape


@dataclass
class TickResult:
    """What the handler should write and post."""

    status: dict[str, Any] = field(default_factory=dict)
    events: list[ro.Event] = field(default_factory=list)
    applied: bool = False


def tick(
    kube: Kube, body: dict[str, Any], settings: OperatorSettings, now: float | None = None
) -> TickResult:
    """One look at a resource: advance its rollout, reconcile when the children's shape changed."""
    now = time.time() if now is None else now
    svc = PaddleModelService.from_body(body)
    status = dict(body.get("status") or {})
    key = memory.key(svc)
    # On first sight: the shape recorded in status, or what the stable Deployment serves (never a
    # spec.tag that changed before the first record: that is a canary).
    mem = rc.first_sight(kube, svc)
    policy = policy_for(svc)
    state = mem.state
    desired = desired_revision(svc)
    if state.phase not in ro.ACTIVE_PHASES and (REV_SEP in mem.shape.stable_tag) != model_canary(svc):
        # spec.model.update switched to or from Canary while idle: the model serving now is the stable
        # one, so the switch itself is not a change to roll out.
        stable_tag = tag_of(mem.shape.stable_tag)
        model = spec_model_json(svc) if model_canary(svc) else ""
        rev = revision(svc, stable_tag, model)
        mem.shape = replace(mem.shape, stable_tag=rev, stable_deploy_tag=rev, stable_model=model)

    canary_dep = None
    # Only look at the canary while one may exist: idle resources cost no API calls per tick.
    if state.phase in (*ro.ACTIVE_PHASES, ro.ROLLED_BACK) or desired != mem.shape.stable_tag:
        canary_dep = kube.get("apps/v1", "Deployment", svc.namespace, track_name(svc.name, CANARY))
    # The desired model must be in the pod template too (a model canary keeps the tag).
    uri = svc.spec.model.uri
    canary_ready = state.tag == desired and _settled(canary_dep, tag_of(state.tag), uri)
    stable_rolled_out = False
    if state.phase == ro.PROMOTING:
        stable_dep = kube.get("apps/v1", "Deployment", svc.namespace, svc.deployment_name)
        # Rolled out means the new tag on all replicas, and at least as many ready as the canary has
        # now (plan.Shape.stable_min): the traffic the canary carries is about to return to stable.
        stable_rolled_out = (
            state.tag == desired
            and _settled(stable_dep, tag_of(state.tag), uri)
            and _ready(stable_dep) >= _replicas(canary_dep)
        )

    analysis: ro.Analysis | None = None
    if canary_ready and ro.analysis_due(state, policy, now):
        url = prometheus_url(svc, settings)
        if url is None:
            analysis = ro.Unreachable(NO_PROMETHEUS)
        else:
            window = max(policy.interval_s, settings.analysis_min_window_s)
            with PrometheusQuerier(url, settings.prometheus_timeout_s) as prom:
                analysis = prom.canary_figures(promql.Target(svc.namespace, svc.name, CANARY), window)

    decision = ro.step(
        state,
        policy,
        ro.Observation(
            desired_tag=desired,
            stable_tag=mem.shape.stable_tag,
            canary_ready=canary_ready,
            stable_rolled_out=stable_rolled_out,
            now=now,
            analysis=analysis,
        ),
    )
    # After a promotion the stable track runs spec.model; before it, the model recorded as stable.
    stable_model = ""
    if model_canary(svc):
        stable_model = spec_model_json(svc) if decision.stable_tag == desired else mem.shape.stable_model
        stable_model = stable_model or spec_model_json(svc)
    shape = shape_of(decision, policy, stable_model, _replicas(canary_dep))
    hold_s = settings.promotion_hold_s if svc.spec.autoscaled else 0.0
    shape = held(mem, shape, decision.state.phase, hold_s, now)
    shape = drained(mem, shape, svc.spec.rollout.router.type, now)
    # Before the first step the canary is sized for step 1; a restart must not change that.
    mem.shape, mem.state = shape, decision.state
    memory.put(key, mem)

    result = TickResult(events=list(decision.events))
    if mem.applied != shape:
        body_now = dict(body, status={**status, "stableTag": tag_of(shape.stable_tag)})
        rc.reconcile(kube, body_now)
        mem.applied = shape
        result.applied = True

    # Everything this writer owns, applied whole when any of it changed (ROLLOUT_MANAGER).
    owned: dict[str, Any] = {"stableTag": tag_of(decision.stable_tag)}
    new_rollout: dict[str, Any] = decision.state.to_status(len(policy.steps)) if decision.state.phase else {}
    if model_canary(svc):
        # The stable model, so a restart (or the plan from status) builds the stable track with it.
        new_rollout["stableModel"] = json.loads(shape.stable_model or spec_model_json(svc))
    if new_rollout:
        owned["rollout"] = new_rollout
    old_rollout = dict(status.get("rollout") or {})
    changed = status.get("stableTag") != owned["stableTag"] or any(
        old_rollout.get(k) != v for k, v in new_rollout.items()
    )
    patch = owned if changed else {}
    # The body lags our own writes in a burst: without this, the same patch went out every tick.
    if patch and memory.written(ROLLOUT_MANAGER, key) != memory.fingerprint(patch):
        kube.apply_status(svc.namespace, svc.name, patch, ROLLOUT_MANAGER)
        memory.record_written(ROLLOUT_MANAGER, key, patch)
    result.status = patch
    return result


# ------------------------------------------------------------------------------ SLA status


def has_sla_status(body: dict[str, Any]) -> bool:
    """The status carries fields the SLA evaluator writes (``sla`` or the ``SLAMet`` condition)."""
    status = body.get("status") or {}
    return "sla" in status or any(c.get("type") == "SLAMet" for c in status.get("conditions") or [])


def clear_sla(kube: Kube, body: dict[str, Any]) -> bool:
    """``spec.sla`` lost its targets: release every field SLA_MANAGER owns (``sla``, ``SLAMet``).

    Applying an empty status under the manager removes the fields it alone owns. True when applied.
    """
    if not has_sla_status(body):
        return False
    meta = body["metadata"]
    kube.apply_status(meta.get("namespace") or "default", meta["name"], {}, SLA_MANAGER)
    memory.record_written(SLA_MANAGER, (meta.get("namespace") or "default", meta["name"], meta.get("uid", "")), None)
    return True


def evaluate_sla(
    kube: Kube,
    body: dict[str, Any],
    settings: OperatorSettings,
    now: float | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Refresh ``status.sla`` and the ``SLAMet`` condition every ``sla_period_s``; returns what it
    applied (``{}`` when nothing changed)."""
    now = time.time() if now is None else now
    svc = PaddleModelService.from_body(body)
    sla = svc.spec.sla
    if sla is None or (sla.latency_p99_ms is None and sla.availability is None):
        return {}
    key = memory.key(svc)
    mem = memory.get(key)
    if mem is not None and not force and now - mem.last_sla < settings.sla_period_s:
        return {}
    url = prometheus_url(svc, settings)
    availability = (
        promql.parse_availability(sla.availability)
        if sla.availability and float(sla.availability) < 100
        else None
    )
    if url is None:
        figures: ro.SLAFigures | ro.Unreachable = ro.Unreachable(NO_PROMETHEUS)
    else:
        window = parse_duration(sla.window)
        with PrometheusQuerier(url, settings.prometheus_timeout_s) as prom:
            figures = prom.sla_figures(
                promql.Target(svc.namespace, svc.name),
                window,
                availability or 0.999,
                settings.analysis_min_window_s,
            )
    verdict = ro.evaluate_sla(figures, sla.latency_p99_ms, availability)
    # Unmeasured figures are left out: a field this writer stops applying is removed.
    sla_status: dict[str, Any] = {"summary": verdict.summary, "evaluatedAt": now_iso()}
    if sla.latency_p99_ms is not None:
        sla_status["targetP99Ms"] = sla.latency_p99_ms
    if isinstance(figures, ro.SLAFigures):
        for name, value in (
            ("p99Ms", figures.p99_ms),
            ("errorRate", figures.error_rate),
            ("availability", figures.availability),
            ("qps", figures.qps),
            ("errorBudgetRemaining", figures.error_budget_remaining if availability is not None else None),
        ):
            if value is not None:
                sla_status[name] = round(value, 6)
    condition = {
        "type": "SLAMet",
        "status": verdict.status,
        "reason": verdict.reason,
        "message": verdict.message,
        "observedGeneration": svc.generation,
    }
    old_status = dict(body.get("status") or {})
    old_cond: dict[str, Any] = next((c for c in old_status.get("conditions") or [] if c.get("type") == "SLAMet"), {})
    old_sla = {k: v for k, v in (old_status.get("sla") or {}).items() if k != "evaluatedAt"}
    new_sla = {k: v for k, v in sla_status.items() if k != "evaluatedAt"}
    if old_sla == new_sla and all(old_cond.get(k) == v for k, v in condition.items()):
        # Nothing changed (typically: no Prometheus, or no traffic): no write, no watch event.
        if mem is not None:
            mem.last_sla = now
        return {}
    # Applied under SLA_MANAGER: SLAMet is this writer's only condition (conditions are a map keyed
    # by type), so the reconcile's conditions are neither read nor written here.
    figures_now = {"sla": new_sla, "condition": condition}
    if memory.written(SLA_MANAGER, key) == memory.fingerprint(figures_now):
        if mem is not None:  # applied already; the watch-fed body has not caught up (a burst)
            mem.last_sla = now
        return {}
    patch = {"sla": sla_status, "conditions": merge_conditions(old_status.get("conditions"), [condition], now_iso())}
    kube.apply_status(svc.namespace, svc.name, patch, SLA_MANAGER)
    memory.record_written(SLA_MANAGER, key, figures_now)
    if mem is None:
        mem = rc.first_sight(kube, svc)
    mem.last_sla = now
    return patch


# ------------------------------------------------------------------------------ what the pods report

# What apply_truth last applied per resource: the watch-fed status can lag our own write.
_truth_written = memory.Compact()


# The pod reports last used per resource, to bridge a pod's missed scrape (truth.carry_over).
_reports_seen: dict[memory.Key, dict[str, dict[str, truth.PodReport]]] = {}


def forget_truth(key: memory.Key) -> None:
    """Drop the memory of a deleted resource."""
    _truth_written.pop(key)
    _reports_seen.pop(key, None)


def apply_truth(
    kube: Kube,
    body: dict[str, Any],
    tracks: dict[str, dict[str, truth.PodReport]] | None,
    no_data_reason: str = "NoPodsReporting",
    failures: list[truth.PodFailure] | tuple[truth.PodFailure, ...] = (),
) -> tuple[bool, list[truth.Transition]]:
    """Apply one resource's truth fields when they changed: (written, transitions to post as events)."""
    svc = PaddleModelService.from_body(body)
    key = memory.key(svc)
    if tracks is not None:
        tracks = truth.carry_over(tracks, _reports_seen.get(key))
        _reports_seen[key] = tracks
    old = dict(body.get("status") or {})
    last = _truth_written.get(key)
    previous = last if last is not None else old
    new = truth.truth_status(svc, tracks, old, no_data_reason=no_data_reason, previous=previous, failures=failures)
    fresh = truth.comparable(new)
    if fresh == truth.comparable(previous) and fresh == truth.comparable(old):
        return False, []
    kube.apply_status(svc.namespace, svc.name, new, TRUTH_MANAGER)
    _truth_written.put(key, new)
    return True, truth.transitions(previous, new)
