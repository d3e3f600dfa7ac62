"""The plan: which children a PaddleModelService should have now, routing included. Pure.

:func:`build_children` is the one list the reconcile applies and prunes against. Its input is the
typed spec plus the rollout's current :class:`Shape` (stable/canary tracks and weights), so a canary
is just another shape; no module swaps the plan at run time. It never reads ``spec.tag`` as "what
stable runs": a tag change alone never rolls stable forward, only a promotion does (KServe #5335
did a full rollout on a tag change).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from . import promql
from . import rollout as ro
from .builders import build_configmap, build_deployment, build_hpa, build_pdb, build_service
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
from .spec import PaddleModelService

ABSENT, RUNNING, SCALED_TO_ZERO = "absent", "running", "scaled-to-zero"


@dataclass(frozen=True)
class Shape:
    """What the children look like for one moment of a rollout (what :func:`build_children` builds)."""

    stable_tag: str  # status.stableTag (a revision: ``tag`` or ``tag@model`` with model.update Canary)
    stable_deploy_tag: str  # revision on the stable Deployment (the new one while promoting)
    canary: str = ABSENT
    canary_tag: str = ""
    routed_weight: int = 0  # % of traffic to the canary now
    sizing_weight: int = 0  # % of traffic the canary is sized for (the next step: ready before it moves)
    stable_model: str = ""  # JSON of the stable track's spec.model with model.update Canary, else ""
    # While promoting: the canary's replicas. The traffic returns to stable when the canary goes, so
    # stable is held at that size first (0: no such floor).
    stable_min: int = 0


# With spec.model.update Canary a model change is a new revision too. A revision is the tag, plus
# "@<model version or URI digest>" then; tags cannot contain "@" (CRD pattern), so it splits back.
REV_SEP = "@"


def model_canary(svc: PaddleModelService) -> bool:
    """Model changes go through the canary too (``spec.model.update: Canary``)."""
    return svc.spec.model.update == "Canary"


def spec_model_json(svc: PaddleModelService) -> str:
    """``spec.model`` as canonical JSON (what a model revision is computed from)."""
    return json.dumps(svc.spec.model.model_dump(by_alias=True, exclude_none=True), sort_keys=True)


def _model_key(model: dict[str, Any]) -> str:
    """The model's version plus a digest of its URI: a new URI under the same version is a change too."""
    digest = hashlib.sha256(str(model.get("uri", "")).encode()).hexdigest()[:6]
    return f"{model['version']}.{digest}" if model.get("version") else digest


def revision(svc: PaddleModelService, tag: str, model_json: str = "") -> str:
    """``tag``, or ``tag@<model>`` when model changes are canaried (``model_json`` "" = spec.model)."""
    if not model_canary(svc):
        return tag
    return f"{tag}{REV_SEP}{_model_key(json.loads(model_json or spec_model_json(svc)))}"


def desired_revision(svc: PaddleModelService) -> str:
    """The revision the spec asks for."""
    return revision(svc, svc.spec.tag)


def tag_of(rev: str) -> str:
    """The image tag of a revision."""
    return rev.split(REV_SEP, 1)[0]


def with_model(svc: PaddleModelService, model_json: str) -> PaddleModelService:
    """``svc`` with another ``spec.model`` (the stable one during a model canary)."""
    if not model_json:
        return svc
    model = type(svc.spec.model).model_validate(json.loads(model_json))
    return svc.model_copy(update={"spec": svc.spec.model_copy(update={"model": model})})


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


def _status(svc: PaddleModelService) -> dict[str, Any]:
    return dict(svc.status or {})


def _sizing(state: ro.RolloutState, policy: ro.RolloutPolicy) -> int:
    """The canary is sized for the weight it gets next, so it is ready before that weight moves."""
    if state.phase == ro.PROMOTING:
        return 100
    return policy.steps[min(state.step, len(policy.steps) - 1)]


def shape_of(
    decision: ro.Decision, policy: ro.RolloutPolicy, stable_model: str = "", canary_replicas: int = 0
) -> Shape:
    """The shape a rollout decision asks for; ``canary_replicas`` is the canary's size now (observed)."""
    promoting = decision.state.phase == ro.PROMOTING and decision.canary == RUNNING
    return Shape(
        stable_tag=decision.stable_tag,
        stable_deploy_tag=decision.stable_deploy_tag,
        canary=decision.canary,
        canary_tag=decision.canary_tag if decision.canary != ABSENT else "",
        routed_weight=decision.routed_weight,
        sizing_weight=_sizing(decision.state, policy) if decision.canary == RUNNING else 0,
        stable_model=stable_model,
        stable_min=canary_replicas if promoting else 0,
    )


def shape_from_status(svc: PaddleModelService, serving_tag: str | None = None) -> tuple[Shape, ro.RolloutState]:
    """The shape recorded in ``status`` (after an operator restart; no observation needed).

    Without ``status.stableTag`` (the rollout loop has not recorded it yet) the stable tag is
    ``serving_tag``, what the stable Deployment runs (``reconcile.first_sight`` reads it), and only
    when nothing serves yet ``spec.tag``: a tag change before the first record is a canary too.
    """
    status = _status(svc)
    rollout_status = status.get("rollout") or {}
    stable_model = ""
    if model_canary(svc):
        # Recorded by tick(); on first sight the model in the spec is the one serving.
        recorded = rollout_status.get("stableModel")
        stable_model = json.dumps(recorded, sort_keys=True) if recorded else spec_model_json(svc)
    stable = revision(svc, status.get("stableTag") or serving_tag or svc.spec.tag, stable_model)
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


def build_children(svc: PaddleModelService, observed: Shape) -> list[dict[str, Any]]:
    """Every child the resource should have, in apply order, for the rollout shape ``observed``.

    ``observed`` is the shape this process last decided (memory.py), else the one recorded in
    ``status`` (:func:`shape_from_status`). Children of an owned kind absent from the list are pruned.
    """
    shape = observed
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
            # Promoting: stable (on the new tag) grows to the canary's size before the canary goes.
            stable_replicas, canary_replicas = max(split.stable, shape.stable_min), split.canary
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
        smin, smax = stable_b[STABLE].min_replicas, stable_b[STABLE].max_replicas
        if shape.stable_min:
            # Promoting: at 100 % stable idles at its floor, but all traffic returns to it when the canary
            # goes. Hold it at the canary's size first, or the canary's capacity vanishes at once and
            # stable's HPA catches up under full load (KServe #5983: stable scaled down too early).
            smin = max(smin, min(shape.stable_min, a.max_replicas))
            smax = max(smax, smin)
        children.append(build_hpa(svc, min_replicas=smin, max_replicas=smax))
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


