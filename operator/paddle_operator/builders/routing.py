"""Traffic routing and canary-aware autoscaling for a rollout: pure manifest builders.

Three routers, chosen by ``spec.rollout.router.type``:

- ``GatewayAPI``: an ``HTTPRoute`` whose weighted ``backendRefs`` point at the per-track Services
  ``<name>-stable`` and ``<name>-canary``. Exact split, done by the Gateway implementation.
- ``Istio``: a ``DestinationRule`` with ``stable``/``canary`` subsets (by the track label) and a
  ``VirtualService`` weighting them. Exact split, done by the sidecars.
- ``Service`` (no mesh): the main Service ``<name>`` selects both tracks, so kube-proxy spreads
  connections over all ready pods and the canary's share is its share of the pods. The weight is
  turned into replica counts by :func:`replica_split`; the split is approximate (per connection, not
  per request, and quantised to whole pods) and documented as such in docs/canary.md.

Autoscaling: one HPA per track, bounds sized to the track's traffic share (:func:`hpa_bounds`), so the
stable HPA is not driven to its maximum by the canary's share of load and the canary is not starved
(Flagger #634, Argo Rollouts #2857 fight the HPA instead).

No kopf, no client: every function returns plain dicts, unit-tested against golden manifests.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

TRACK_LABEL = "serving.paddlesla.io/track"
SERVICE_LABEL = "serving.paddlesla.io/service"
STABLE = "stable"
CANARY = "canary"
TRACKS = (STABLE, CANARY)

GATEWAY_API_VERSION = "gateway.networking.k8s.io/v1"
ISTIO_API_VERSION = "networking.istio.io/v1"

ROUTER_SERVICE = "Service"
ROUTER_GATEWAY = "GatewayAPI"
ROUTER_ISTIO = "Istio"


def track_name(name: str, track: str) -> str:
    """``<name>-stable`` / ``<name>-canary`` (the CRD caps names at 56 so this fits in 63)."""
    if track not in TRACKS:
        raise ValueError(f"track must be one of {TRACKS}, got {track!r}")
    return f"{name}-{track}"


def _check_weight(weight: int) -> int:
    weight = int(weight)
    if not 0 <= weight <= 100:
        raise ValueError(f"canary weight must be 0..100, got {weight}")
    return weight


def _meta(name: str, namespace: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "labels": dict(labels)}


def build_track_service(base_service: dict[str, Any], track: str) -> dict[str, Any]:
    """A copy of the main Service that selects one track only, named ``<name>-<track>``.

    Derived from the core builder's Service so ports and labels stay one fact.
    """
    svc = copy.deepcopy(base_service)
    base_name = svc["metadata"]["name"]
    svc["metadata"]["name"] = track_name(base_name, track)
    svc["metadata"].setdefault("labels", {})[TRACK_LABEL] = track
    spec = svc.setdefault("spec", {})
    spec["selector"] = {**spec.get("selector", {}), TRACK_LABEL: track}
    # A per-track Service is only a routing target: never expose it outside the cluster.
    spec["type"] = "ClusterIP"
    for port in spec.get("ports", []):
        port.pop("nodePort", None)
    spec.pop("clusterIP", None)
    return svc


def build_httproute(
    name: str,
    namespace: str,
    labels: dict[str, str],
    port: int,
    canary_weight: int,
    *,
    include_canary: bool,
    parent_refs: list[dict[str, Any]] | None = None,
    hostnames: list[str] | None = None,
) -> dict[str, Any]:
    """Gateway API ``HTTPRoute`` splitting traffic between the stable and canary Services.

    Without a canary the route has the stable backend alone: a ref to a missing Service would make
    the route report ``ResolvedRefs=False``.
    """
    canary_weight = _check_weight(canary_weight) if include_canary else 0
    backends = [{"name": track_name(name, STABLE), "port": int(port), "weight": 100 - canary_weight}]
    if include_canary:
        backends.append({"name": track_name(name, CANARY), "port": int(port), "weight": canary_weight})
    spec: dict[str, Any] = {"rules": [{"backendRefs": backends}]}
    if parent_refs:
        spec["parentRefs"] = copy.deepcopy(parent_refs)
    if hostnames:
        spec["hostnames"] = list(hostnames)
    return {
        "apiVersion": GATEWAY_API_VERSION,
        "kind": "HTTPRoute",
        "metadata": _meta(name, namespace, labels),
        "spec": spec,
    }


def _fqdn(name: str, namespace: str) -> str:
    return f"{name}.{namespace}.svc.cluster.local"


def build_destination_rule(name: str, namespace: str, labels: dict[str, str]) -> dict[str, Any]:
    """Istio ``DestinationRule``: subsets ``stable``/``canary`` of the main Service, by track label."""
    return {
        "apiVersion": ISTIO_API_VERSION,
        "kind": "DestinationRule",
        "metadata": _meta(name, namespace, labels),
        "spec": {
            "host": _fqdn(name, namespace),
            "subsets": [{"name": track, "labels": {TRACK_LABEL: track}} for track in TRACKS],
        },
    }


def build_virtual_service(
    name: str,
    namespace: str,
    labels: dict[str, str],
    port: int,
    canary_weight: int,
    *,
    hosts: list[str] | None = None,
    gateways: list[str] | None = None,
) -> dict[str, Any]:
    """Istio ``VirtualService`` weighting the subsets of :func:`build_destination_rule`.

    Both subsets are always listed (Istio wants the weights to add up to 100, and a 0 weight is
    valid), so a weight change is a one-field patch.
    """
    canary_weight = _check_weight(canary_weight)
    host = _fqdn(name, namespace)

    def dest(track: str, weight: int) -> dict[str, Any]:
        return {
            "destination": {"host": host, "subset": track, "port": {"number": int(port)}},
            "weight": weight,
        }

    spec: dict[str, Any] = {
        "hosts": list(hosts) if hosts else [host],
        "http": [{"route": [dest(STABLE, 100 - canary_weight), dest(CANARY, canary_weight)]}],
    }
    if gateways:
        spec["gateways"] = list(gateways)
    return {
        "apiVersion": ISTIO_API_VERSION,
        "kind": "VirtualService",
        "metadata": _meta(name, namespace, labels),
        "spec": spec,
    }


@dataclass(frozen=True)
class ReplicaSplit:
    """Replica counts for the no-mesh router, and the share of pods the canary actually gets."""

    stable: int
    canary: int

    @property
    def effective_weight(self) -> int:
        """The canary's share of pods in percent: what kube-proxy's spreading approximates."""
        total = self.stable + self.canary
        return 0 if total == 0 else round(100 * self.canary / total)


def replica_split(total: int, weight: int, floor: int) -> ReplicaSplit:
    """Turn a canary weight into replica counts when one Service selects both tracks.

    ``total`` is the stable track's usual replica count, ``floor`` the SLA's replica floor. The
    canary gets ``ceil(total * weight / 100)`` pods (at least one while it has any weight); stable
    keeps the rest but never fewer than ``floor`` (at least 1), so at high weights the effective
    share is below the nominal one. That is the documented approximation of this mode.
    """
    weight = _check_weight(weight)
    total = max(1, int(total))
    if weight == 0:
        return ReplicaSplit(total, 0)
    canary = max(1, math.ceil(total * weight / 100))
    stable = max(total - canary, max(1, int(floor)))
    return ReplicaSplit(stable, canary)


@dataclass(frozen=True)
class TrackBounds:
    """HPA bounds for one track."""

    min_replicas: int
    max_replicas: int


def hpa_bounds(
    min_replicas: int, max_replicas: int, canary_share: int, floor: int = 1
) -> dict[str, TrackBounds]:
    """Split the service's HPA bounds between the tracks by traffic share (percent to canary).

    Each track gets its share of ``min``/``max``, rounded up (a track with traffic never has 0
    pods); stable keeps at least ``floor`` pods while it serves, since it is what a rollback
    returns to. At share 0 the canary is absent (bounds for stable only).
    """
    share = _check_weight(canary_share)
    if min_replicas < 1 or max_replicas < min_replicas:
        raise ValueError(f"need 1 <= minReplicas <= maxReplicas, got {min_replicas}..{max_replicas}")
    out: dict[str, TrackBounds] = {}
    stable_share = 100 - share
    if stable_share > 0 or share == 0:
        smin = max(1, int(floor), math.ceil(min_replicas * stable_share / 100))
        smax = max(smin, math.ceil(max_replicas * stable_share / 100))
        out[STABLE] = TrackBounds(smin, smax)
    else:
        # All traffic on the canary (last step, promotion): stable idles at its floor, ready for rollback.
        smin = max(1, int(floor))
        out[STABLE] = TrackBounds(smin, smin)
    if share > 0:
        cmin = max(1, math.ceil(min_replicas * share / 100))
        cmax = max(cmin, math.ceil(max_replicas * share / 100))
        out[CANARY] = TrackBounds(cmin, cmax)
    return out


def build_track_hpa(base_hpa: dict[str, Any], track: str, bounds: TrackBounds) -> dict[str, Any]:
    """A copy of the core builder's HPA for one track: renamed, retargeted, re-bounded.

    The stable track keeps the name ``<name>`` (it is the service's HPA outside a rollout); the canary
    gets ``<name>-canary`` targeting Deployment ``<name>-canary``. Metrics are per pod (QPS, GPU,
    CPU averages), so they stay meaningful per track.
    """
    hpa = copy.deepcopy(base_hpa)
    if track == CANARY:
        base = hpa["metadata"]["name"]
        hpa["metadata"]["name"] = track_name(base, CANARY)
        hpa["spec"]["scaleTargetRef"]["name"] = track_name(hpa["spec"]["scaleTargetRef"]["name"], CANARY)
    elif track != STABLE:
        raise ValueError(f"track must be one of {TRACKS}, got {track!r}")
    hpa["metadata"].setdefault("labels", {})[TRACK_LABEL] = track
    hpa["spec"]["minReplicas"] = bounds.min_replicas
    hpa["spec"]["maxReplicas"] = bounds.max_replicas
    return hpa
