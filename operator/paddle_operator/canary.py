"""Canary rollouts and SLA status: the glue between the pure pieces and the cluster.

- :func:`plan` replaces ``reconcile.plan``: the children for the rollout's current shape (stable
  Deployment on ``status.stableTag``, canary Deployment, per-track Services/HPAs, router objects).
  It never reads ``spec.tag`` as "what stable runs": a tag change alone never rolls stable forward,
  only a promotion does (KServe #5335 did a full rollout on a tag change).
- :func:`tick` runs from a kopf timer: observe the tracks, ask Prometheus when an analysis is due,
  feed ``rollout.step`` and apply the result; returns the status patch and events for the handler.
- :func:`evaluate_sla` writes ``status.sla`` and the ``SLAMet`` condition.

No kopf here (handlers.py adapts it); Prometheus and the API server are reached through
``prometheus.py`` and ``kube.py``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any

from . import promql
from . import reconcile as rc
from . import rollout as ro
from .builders import (
    build_configmap,
    build_deployment,
    build_hpa,
    build_pdb,
    build_service,
)
from .builders.common import CANARY, STABLE
from .builders.pdb import pdb_max_unavailable
from .builders.routing import (
    ROUTER_GATEWAY,
    ROUTER_ISTIO,
    ROUTER_SERVICE,
    build_destination_rule,
    build_httproute,
    build_track_service,
    build_virtual_service,
    hpa_bounds,
    replica_split,
    track_name,
)
from .kube import Kube
from .prometheus import PrometheusQuerier
from .spec import API_VERSION, KIND, PaddleModelService
from .status import merge_conditions, now_iso

log = logging.getLogger(__name__)

# How often the rollout timer looks at each resource. Analyses still run only every
# spec.rollout.intervalSeconds; the tick only bounds how late a step or a readiness change is seen.
TICK_S = float(os.environ.get("PADDLE_OPERATOR_ROLLOUT_TICK_S", "5"))
# How often status.sla is refreshed from Prometheus.
SLA_PERIOD_S = float(os.environ.get("PADDLE_OPERATOR_SLA_PERIOD_S", "30"))
# Used when a resource names no spec.rollout.analysis.prometheusURL.
DEFAULT_PROMETHEUS_URL = os.environ.get("PADDLE_OPERATOR_PROMETHEUS_URL") or None
# Rate windows shorter than a few scrape intervals have no data; real scrape intervals are 15-30 s.
MIN_WINDOW_S = float(os.environ.get("PADDLE_OPERATOR_ANALYSIS_MIN_WINDOW_S", "60"))
PROMETHEUS_TIMEOUT_S = float(os.environ.get("PADDLE_OPERATOR_PROMETHEUS_TIMEOUT_S", "5"))

ROUTER_KINDS: list[tuple[str, str]] = [
    ("gateway.networking.k8s.io/v1", "HTTPRoute"),
    ("networking.istio.io/v1", "VirtualService"),
    ("networking.istio.io/v1", "DestinationRule"),
]

ABSENT, RUNNING, SCALED_TO_ZERO = "absent", "running", "scaled-to-zero"


@dataclass(frozen=True)
class Shape:
    """What the children look like for one moment of a rollout (what :func:`plan` builds)."""

    stable_tag: str  # status.stableTag (a revision: ``tag`` or ``tag@model`` with model.update Canary)
    stable_deploy_tag: str  # revision on the stable Deployment (the new one while promoting)
    canary: str = ABSENT
    canary_tag: str = ""
    routed_weight: int = 0  # % of traffic to the canary now
    sizing_weight: int = 0  # % of traffic the canary is sized for (the next step: ready before it moves)
    stable_model: str = ""  # JSON of the stable track's spec.model with model.update Canary, else ""


# With spec.model.update Canary a model change is a new revision too. A revision is the tag, plus
# "@<model version or URI digest>" then; tags cannot contain "@" (CRD pattern), so it splits back.
REV_SEP = "@"


def model_canary(svc: PaddleModelService) -> bool:
    return svc.spec.model.update == "Canary"


def _model_json(svc: PaddleModelService) -> str:
    return json.dumps(svc.spec.model.model_dump(by_alias=True, exclude_none=True), sort_keys=True)


def _model_key(model: dict[str, Any]) -> str:
    """The model's version plus a digest of its URI: a new URI under the same version is a change too."""
    digest = hashlib.sha256(str(model.get("uri", "")).encode()).hexdigest()[:6]
    return f"{model['version']}.{digest}" if model.get("version") else digest


def revision(svc: PaddleModelService, tag: str, model_json: str = "") -> str:
    """``tag``, or ``tag@<model>`` when model changes are canaried (``model_json`` "" = spec.model)."""
    if not model_canary(svc):
        return tag
    return f"{tag}{REV_SEP}{_model_key(json.loads(model_json or _model_json(svc)))}"


def desired_revision(svc: PaddleModelService) -> str:
    return revision(svc, svc.spec.tag)


def tag_of(rev: str) -> str:
    return rev.split(REV_SEP, 1)[0]


def with_model(svc: PaddleModelService, model_json: str) -> PaddleModelService:
    """``svc`` with another ``spec.model`` (the stable one during a model canary)."""
    if not model_json:
        return svc
    model = type(svc.spec.model).model_validate(json.loads(model_json))
    return svc.model_copy(update={"spec": svc.spec.model_copy(update={"model": model})})


@dataclass
class _Memory:
    shape: Shape
    state: ro.RolloutState
    applied: Shape | None = None
    last_sla: float = 0.0
    events_sent: set[str] = field(default_factory=set)


# Per object (namespace, name, uid): the latest decision of this process. Newer than the status the
# watch delivers (our own write may not have come back yet), so plan() prefers it.
_memory: dict[tuple[str, str, str], _Memory] = {}
_lock = threading.Lock()


def _key(svc: PaddleModelService) -> tuple[str, str, str]:
    return (svc.namespace, svc.name, svc.uid)


def forget(namespace: str, name: str, uid: str) -> None:
    with _lock:
        _memory.pop((namespace, name, uid), None)


def settled(namespace: str, name: str, uid: str) -> bool:
    """This process has looked at the resource and its rollout is not in progress (nothing to time)."""
    with _lock:
        mem = _memory.get((namespace, name, uid))
    return mem is not None and mem.state.phase not in ro.ACTIVE_PHASES


def policy_for(svc: PaddleModelService) -> ro.RolloutPolicy:
    """``spec.rollout`` with thresholds resolved: explicit analysis values, else ``spec.sla``."""
    r, sla = svc.spec.rollout, svc.spec.sla
    max_p99 = r.analysis.max_latency_p99_ms
    if max_p99 is None and sla is not None:
        max_p99 = sla.latency_p99_ms
    max_err = r.analysis.max_error_rate
    if max_err is None and sla is not None:
        if sla.max_error_rate is not None:
            max_err = sla.max_error_rate
        elif sla.availability is not None and float(sla.availability) < 100:
            max_err = promql.allowed_error_ratio(promql.parse_availability(sla.availability))
    if max_err is None and max_p99 is None:
        # Something must be checked, or "pass" would mean "we did not look": 1 % errors at most.
        max_err = 0.01
    return ro.RolloutPolicy(
        strategy=r.strategy,
        steps=tuple(r.steps),
        interval_s=float(r.interval_seconds),
        paused=r.paused,
        failure_threshold=r.analysis.failure_threshold,
        min_requests=r.analysis.min_requests,
        max_latency_p99_ms=max_p99,
        max_error_rate=max_err,
    )


def prometheus_url(svc: PaddleModelService) -> str | None:
    return svc.spec.rollout.analysis.prometheus_url or DEFAULT_PROMETHEUS_URL


def _status(svc: PaddleModelService) -> dict[str, Any]:
    return dict(getattr(svc, "status", None) or {})


def _sizing(state: ro.RolloutState, policy: ro.RolloutPolicy) -> int:
    """The canary is sized for the weight it gets next, so it is ready before that weight moves."""
    if state.phase == ro.PROMOTING:
        return 100
    return policy.steps[min(state.step, len(policy.steps) - 1)]


def shape_of(decision: ro.Decision, policy: ro.RolloutPolicy, stable_model: str = "") -> Shape:
    return Shape(
        stable_tag=decision.stable_tag,
        stable_deploy_tag=decision.stable_deploy_tag,
        canary=decision.canary,
        canary_tag=decision.canary_tag if decision.canary != ABSENT else "",
        routed_weight=decision.routed_weight,
        sizing_weight=_sizing(decision.state, policy) if decision.canary == RUNNING else 0,
        stable_model=stable_model,
    )


def shape_from_status(svc: PaddleModelService) -> tuple[Shape, ro.RolloutState]:
    """The shape recorded in ``status`` (after an operator restart; no observation needed)."""
    status = _status(svc)
    rollout_status = status.get("rollout") or {}
    stable_model = ""
    if model_canary(svc):
        # Recorded by tick(); on first sight the model in the spec is the one serving.
        recorded = rollout_status.get("stableModel")
        stable_model = json.dumps(recorded, sort_keys=True) if recorded else _model_json(svc)
    stable = revision(svc, status.get("stableTag") or svc.spec.tag, stable_model)
    state = ro.RolloutState.from_status(rollout_status)
    policy = policy_for(svc)
    if state.phase in (ro.PROGRESSING, ro.PAUSED):
        shape = Shape(stable, stable, RUNNING, state.tag, state.weight, _sizing(state, policy), stable_model)
    elif state.phase == ro.PROMOTING:
        canary = RUNNING if policy.strategy == ro.CANARY else ABSENT
        weight = 100 if canary == RUNNING else 0
        shape = Shape(
            stable, state.tag, canary, state.tag if canary == RUNNING else "", weight, weight, stable_model
        )
    elif state.phase == ro.ROLLED_BACK and state.tag == desired_revision(svc):
        shape = Shape(stable, stable, SCALED_TO_ZERO, state.tag, stable_model=stable_model)
    else:
        shape = Shape(stable, stable, stable_model=stable_model)
    return shape, state


def current(svc: PaddleModelService) -> tuple[Shape, ro.RolloutState]:
    with _lock:
        mem = _memory.get(_key(svc))
        if mem is not None:
            return mem.shape, mem.state
    return shape_from_status(svc)


def replica_floor(svc: PaddleModelService, total: int) -> int:
    """Fewest stable pods the SLA allows: the PDB's view of "available", at least one."""
    max_unavailable = pdb_max_unavailable(svc)
    if max_unavailable is None:
        return 1
    if isinstance(max_unavailable, str) and max_unavailable.endswith("%"):
        unavailable = math.floor(total * int(max_unavailable[:-1]) / 100)
    else:
        unavailable = int(max_unavailable)
    return max(1, total - unavailable)


def plan(svc: PaddleModelService) -> list[dict[str, Any]]:
    """Every child for the rollout's current shape (drop-in for ``reconcile.plan``)."""
    shape, _state = current(svc)
    spec = svc.spec
    router = spec.rollout.router.type
    canary_on = shape.canary == RUNNING
    canary_exists = shape.canary != ABSENT
    children: list[dict[str, Any]] = [build_configmap(svc)]

    stable_replicas: int | None = None
    canary_replicas: int | None = None
    if not spec.autoscaled:
        total = spec.replicas
        if canary_on and router == ROUTER_SERVICE:
            # No mesh: the share of pods is the share of traffic, so pods follow the routed weight
            # (the first canary pod gets traffic only once ready, kube-proxy skips unready pods).
            weight = shape.routed_weight or shape.sizing_weight
            split = replica_split(total, weight, replica_floor(svc, total))
            stable_replicas, canary_replicas = split.stable, split.canary
        else:
            stable_replicas = total
            if canary_on:
                canary_replicas = max(1, math.ceil(total * shape.sizing_weight / 100))
    if shape.canary == SCALED_TO_ZERO:
        canary_replicas = 0

    # The stable track keeps its own model during a model canary, until promotion rolls it forward.
    stable_svc = (
        svc if shape.stable_deploy_tag == desired_revision(svc) else with_model(svc, shape.stable_model)
    )
    children.append(
        build_deployment(
            stable_svc, track=STABLE, tag=tag_of(shape.stable_deploy_tag), replicas=stable_replicas
        )
    )
    if canary_exists:
        children.append(
            build_deployment(
                svc,
                track=CANARY,
                name=track_name(svc.name, CANARY),
                tag=tag_of(shape.canary_tag),
                replicas=canary_replicas if canary_replicas is not None else (0 if not canary_on else None),
            )
        )

    main_service = build_service(svc)
    children.append(main_service)
    if router == ROUTER_GATEWAY:
        children.append(build_track_service(main_service, STABLE))
        if canary_on:
            children.append(build_track_service(main_service, CANARY))
        gw = spec.rollout.router.gateway_api or {}
        route = build_httproute(
            svc.name,
            svc.namespace,
            main_service["metadata"]["labels"],
            spec.service.port,
            shape.routed_weight,
            include_canary=canary_on,
            parent_refs=gw.get("parentRefs"),
            hostnames=gw.get("hostnames"),
        )
        route["metadata"]["ownerReferences"] = main_service["metadata"]["ownerReferences"]
        children.append(route)
    elif router == ROUTER_ISTIO:
        istio = spec.rollout.router.istio or {}
        labels = main_service["metadata"]["labels"]
        dr = build_destination_rule(svc.name, svc.namespace, labels)
        vs = build_virtual_service(
            svc.name,
            svc.namespace,
            labels,
            spec.service.port,
            shape.routed_weight if canary_on else 0,
            hosts=istio.get("hosts"),
            gateways=istio.get("gateways"),
        )
        for obj in (dr, vs):
            obj["metadata"]["ownerReferences"] = main_service["metadata"]["ownerReferences"]
            children.append(obj)

    if spec.autoscaled:
        a = spec.autoscaling
        assert a is not None
        floor = replica_floor(svc, a.min_replicas)
        stable_b = hpa_bounds(a.min_replicas, a.max_replicas, shape.routed_weight if canary_on else 0, floor)
        children.append(
            build_hpa(
                svc, min_replicas=stable_b[STABLE].min_replicas, max_replicas=stable_b[STABLE].max_replicas
            )
        )
        if canary_on:
            canary_b = hpa_bounds(a.min_replicas, a.max_replicas, max(1, shape.sizing_weight), floor)[CANARY]
            children.append(
                build_hpa(
                    svc,
                    track=CANARY,
                    name=track_name(svc.name, CANARY),
                    target=track_name(svc.name, CANARY),
                    min_replicas=canary_b.min_replicas,
                    max_replicas=canary_b.max_replicas,
                )
            )
    if pdb_max_unavailable(svc) is not None:
        children.append(build_pdb(svc))
    return children


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


def parse_duration(text: str) -> float:
    m = re.fullmatch(r"(\d+)(s|m|h|d)", text.strip())
    if not m:
        raise ValueError(f"bad duration {text!r}")
    return int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


@dataclass
class TickResult:
    """What the handler should write and post."""

    status: dict[str, Any] = field(default_factory=dict)
    events: list[ro.Event] = field(default_factory=list)
    applied: bool = False


def tick(kube: Kube, body: dict[str, Any], now: float | None = None) -> TickResult:
    """One look at a resource: advance its rollout, apply the children when their shape changed."""
    now = time.time() if now is None else now
    svc = PaddleModelService.from_body(body)
    status = dict(body.get("status") or {})
    key = _key(svc)
    with _lock:
        mem = _memory.get(key)
    if mem is None:
        shape, state = shape_from_status(svc)
        # The create/resume reconcile applies plan() from the same status, so this shape is (or is
        # about to be) in place: re-applying it here would double the start-up load at scale.
        mem = _Memory(shape, state, applied=shape)
    policy = policy_for(svc)
    state = mem.state
    desired = desired_revision(svc)
    if state.phase not in ro.ACTIVE_PHASES and (REV_SEP in mem.shape.stable_tag) != model_canary(svc):
        # spec.model.update switched to or from Canary while idle: the model serving now is the stable
        # one, so the switch itself is not a change to roll out.
        stable_tag = tag_of(mem.shape.stable_tag)
        model = _model_json(svc) if model_canary(svc) else ""
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
        stable_rolled_out = state.tag == desired and _settled(stable_dep, tag_of(state.tag), uri)

    analysis: ro.Analysis | None = None
    if canary_ready and ro.analysis_due(state, policy, now):
        url = prometheus_url(svc)
        if url is None:
            analysis = ro.Unreachable(
                "no Prometheus URL (spec.rollout.analysis.prometheusURL or PADDLE_OPERATOR_PROMETHEUS_URL)"
            )
        else:
            window = max(policy.interval_s, MIN_WINDOW_S)
            with PrometheusQuerier(url, PROMETHEUS_TIMEOUT_S) as prom:
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
        stable_model = _model_json(svc) if decision.stable_tag == desired else mem.shape.stable_model
        stable_model = stable_model or _model_json(svc)
    shape = shape_of(decision, policy, stable_model)
    # Before the first step the canary is sized for step 1; a restart must not change that.
    with _lock:
        mem.shape, mem.state = shape, decision.state
        _memory[key] = mem

    result = TickResult(events=list(decision.events))
    if mem.applied != shape:
        body_now = dict(body, status={**status, "stableTag": tag_of(shape.stable_tag)})
        rc.reconcile(kube, body_now)
        mem.applied = shape
        result.applied = True

    patch: dict[str, Any] = {}
    if status.get("stableTag") != tag_of(decision.stable_tag):
        patch["stableTag"] = tag_of(decision.stable_tag)
    old_rollout = dict(status.get("rollout") or {})
    new_rollout: dict[str, Any] = decision.state.to_status(len(policy.steps)) if decision.state.phase else {}
    if model_canary(svc):
        # The stable model, so a restart (or plan() from status) builds the stable track with it.
        new_rollout["stableModel"] = json.loads(shape.stable_model or _model_json(svc))
    if new_rollout and any(old_rollout.get(k) != v for k, v in new_rollout.items()):
        patch["rollout"] = new_rollout
    if patch:
        kube.patch_status(svc.namespace, svc.name, patch)
    result.status = patch
    return result


# ------------------------------------------------------------------------------ SLA status


def evaluate_sla(
    kube: Kube, body: dict[str, Any], now: float | None = None, force: bool = False
) -> dict[str, Any]:
    """Refresh ``status.sla`` and the ``SLAMet`` condition every ``SLA_PERIOD_S``; returns the patch."""
    now = time.time() if now is None else now
    svc = PaddleModelService.from_body(body)
    sla = svc.spec.sla
    if sla is None or (sla.latency_p99_ms is None and sla.availability is None):
        return {}
    key = _key(svc)
    with _lock:
        mem = _memory.get(key)
    if mem is not None and not force and now - mem.last_sla < SLA_PERIOD_S:
        return {}
    url = prometheus_url(svc)
    availability = (
        promql.parse_availability(sla.availability)
        if sla.availability and float(sla.availability) < 100
        else None
    )
    if url is None:
        figures: ro.SLAFigures | ro.Unreachable = ro.Unreachable(
            "no Prometheus URL (spec.rollout.analysis.prometheusURL or PADDLE_OPERATOR_PROMETHEUS_URL)"
        )
    else:
        window = parse_duration(sla.window)
        with PrometheusQuerier(url, PROMETHEUS_TIMEOUT_S) as prom:
            figures = prom.sla_figures(
                promql.Target(svc.namespace, svc.name), window, availability or 0.999, MIN_WINDOW_S
            )
    verdict = ro.evaluate_sla(figures, sla.latency_p99_ms, availability)
    sla_status: dict[str, Any] = {
        "targetP99Ms": sla.latency_p99_ms,
        "summary": verdict.summary,
        "evaluatedAt": now_iso(),
    }
    if isinstance(figures, ro.SLAFigures):
        for name, value in (
            ("p99Ms", figures.p99_ms),
            ("errorRate", figures.error_rate),
            ("availability", figures.availability),
            ("qps", figures.qps),
            ("errorBudgetRemaining", figures.error_budget_remaining if availability is not None else None),
        ):
            sla_status[name] = None if value is None else round(value, 6)
    condition = {
        "type": "SLAMet",
        "status": verdict.status,
        "reason": verdict.reason,
        "message": verdict.message,
        "observedGeneration": svc.generation,
    }
    old_status = dict(body.get("status") or {})
    old_cond = next((c for c in old_status.get("conditions") or [] if c.get("type") == "SLAMet"), {})
    old_sla = {k: v for k, v in (old_status.get("sla") or {}).items() if k != "evaluatedAt"}
    new_sla = {k: v for k, v in sla_status.items() if k != "evaluatedAt"}
    if old_sla == new_sla and all(old_cond.get(k) == v for k, v in condition.items()):
        # Nothing changed (typically: no Prometheus, or no traffic): no write, no watch event.
        if mem is not None:
            mem.last_sla = now
        return {}
    # Conditions are one list in a merge patch: re-read them so a condition written by the
    # reconcile a moment ago is not overwritten with an older copy.
    fresh = kube.get(API_VERSION, KIND, svc.namespace, svc.name)
    fresh_status = (fresh or {}).get("status") or dict(body.get("status") or {})
    patch = {
        "sla": sla_status,
        "conditions": merge_conditions(fresh_status.get("conditions"), [condition], now_iso()),
    }
    kube.patch_status(svc.namespace, svc.name, patch)
    if mem is None:
        with _lock:
            mem = _memory.setdefault(key, _Memory(*shape_from_status(svc)))
    mem.last_sla = now
    return patch
