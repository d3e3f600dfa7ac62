"""A tag change is always a canary, even before the rollout loop has recorded ``status.stableTag``.

The race it fixes: ``status.stableTag`` is written by the rollout loop's first tick. Before the fix, a
process that had not recorded it yet took ``spec.tag`` as the stable tag, so a tag change in that gap
(the update handler's reconcile, a child's drift event, or the SLA refresh running first) rolled the
stable Deployment straight to the new tag and no canary ever ran. Now the stable Deployment is asked
what it serves; ``spec.tag`` is stable only while no Deployment of ours exists.
"""

from __future__ import annotations

from typing import Any

import pytest

from paddle_operator import canary, memory, reconcile
from paddle_operator.settings import OperatorSettings

SETTINGS = OperatorSettings(prometheus_url=None)
UID = "u-1"


def body(tag: str, status: dict[str, Any] | None = None, sla: bool = False) -> dict[str, Any]:
    spec: dict[str, Any] = {"tag": tag, "replicas": 2, "model": {"uri": "file:///models/m"}}
    if sla:
        spec["sla"] = {"latencyP99Ms": 100}
    return {
        "apiVersion": "serving.paddlesla.io/v1alpha1",
        "kind": "PaddleModelService",
        "metadata": {"name": "ocr", "namespace": "prod", "uid": UID, "generation": 2},
        "spec": spec,
        "status": dict(status or {}),
    }


def deployment(tag: str, owner: str = UID) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "ocr",
            "namespace": "prod",
            "generation": 1,
            "ownerReferences": [{"kind": "PaddleModelService", "name": "ocr", "uid": owner, "controller": True}],
        },
        "spec": {
            "replicas": 2,
            "template": {"spec": {"containers": [{"name": "runtime", "image": f"ghcr.io/paddle-sla/paddle-runtime:{tag}"}]}},
        },
        "status": {"observedGeneration": 1, "replicas": 2, "readyReplicas": 2, "availableReplicas": 2, "updatedReplicas": 2},
    }


class FakeKube:
    """Serves the objects given; records applies and status patches."""

    def __init__(self, objects: dict[tuple[str, str], dict[str, Any]] | None = None) -> None:
        self.objects = dict(objects or {})
        self.applied: list[dict[str, Any]] = []
        self.patches: list[dict[str, Any]] = []
        self.gets: list[tuple[str, str]] = []

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        self.gets.append((kind, name))
        return self.objects.get((kind, name))

    def list(self, *args: Any) -> list[dict[str, Any]]:
        return []

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.applied.append(obj)
        return obj

    def apply_all(self, objs: list[dict[str, Any]], read_back: Any = None) -> list[tuple[dict[str, Any], None]]:
        self.applied.extend(objs)
        return [(o, None) for o in objs]

    def apply_status(self, namespace: str, name: str, status: dict[str, Any], manager: str) -> None:
        self.patches.append(status)

    def request(self, *args: Any, **kwargs: Any) -> None:
        return None

    def deployments(self) -> dict[str, str]:
        """Applied Deployments: name -> image tag (the last apply of each)."""
        out = {}
        for o in self.applied:
            if o["kind"] == "Deployment":
                out[o["metadata"]["name"]] = o["spec"]["template"]["spec"]["containers"][0]["image"].rsplit(":", 1)[1]
        return out


@pytest.fixture(autouse=True)
def fresh_memory():
    memory.clear()
    yield
    memory.clear()


def test_tag_change_before_the_first_tick_keeps_stable_and_becomes_a_canary() -> None:
    # Reconciled once at v1 (its Deployment exists), no tick yet (no stableTag), then spec.tag -> v2.
    kube = FakeKube({("Deployment", "ocr"): deployment("v1")})
    changed = body("v2", status={"conditions": [{"type": "Ready", "status": "True"}]})
    reconcile.reconcile(kube, changed)  # the update handler
    assert kube.deployments() == {"ocr": "v1"}, "the tag change rolled the stable Deployment"

    result = canary.tick(kube, changed, SETTINGS)  # the rollout loop's first look
    assert result.status["stableTag"] == "v1"
    assert (result.status["rollout"]["phase"], result.status["rollout"]["tag"]) == ("Progressing", "v2")
    assert kube.deployments() == {"ocr": "v1", "ocr-canary": "v2"}


def test_a_drift_event_before_the_first_tick_does_not_roll_stable_either() -> None:
    kube = FakeKube({("Deployment", "ocr"): deployment("v1")})
    changed = body("v2", status={"conditions": [{"type": "Ready", "status": "True"}]})
    reconcile.on_child_event(kube, changed, "MODIFIED", deployment("v1"))
    assert all(o["spec"]["template"]["spec"]["containers"][0]["image"].endswith(":v1")
               for o in kube.applied if o["kind"] == "Deployment")
    assert canary.tick(kube, changed, SETTINGS).status["rollout"]["tag"] == "v2"


def test_the_sla_refresh_running_first_does_not_take_spec_tag_as_stable() -> None:
    kube = FakeKube({("Deployment", "ocr"): deployment("v1")})
    changed = body("v2", sla=True)
    canary.evaluate_sla(kube, changed, SETTINGS)
    reconcile.reconcile(kube, changed)
    assert kube.deployments() == {"ocr": "v1"}


def test_first_sight_without_a_deployment_takes_spec_tag() -> None:
    kube = FakeKube()
    reconcile.reconcile(kube, body("v1"))  # create: nothing serves another version
    assert kube.deployments() == {"ocr": "v1"}
    assert canary.tick(kube, body("v1"), SETTINGS).status == {"stableTag": "v1"}


def test_a_deployment_owned_by_another_object_is_not_what_serves() -> None:
    kube = FakeKube({("Deployment", "ocr"): deployment("v0", owner="someone-else")})
    reconcile.reconcile(kube, body("v1"))
    assert kube.deployments() == {"ocr": "v1"}


def test_recorded_stable_tag_needs_no_lookup() -> None:
    from paddle_operator.spec import PaddleModelService

    kube = FakeKube({("Deployment", "ocr"): deployment("v0")})
    mem = reconcile.first_sight(kube, PaddleModelService.from_body(body("v2", status={"stableTag": "v1"})))
    assert kube.gets == [], "status already says what is stable"
    assert mem.shape.stable_tag == "v1"


def test_gateway_canary_keeps_its_pods_at_weight_zero_until_the_route_change_has_reached_the_router() -> None:
    """An abort (spec.tag back to stable) takes the canary's 10 % away: the route drops it at once, its
    pods stay ROUTE_DRAIN_S longer, so the router never weights a backend whose pods are gone (503)."""
    rollout = {"phase": "Progressing", "tag": "v2", "step": 1, "weight": 10, "failedChecks": 0, "message": ""}
    status = {"stableTag": "v1", "rollout": rollout}
    b = body("v1", status=status)
    b["spec"]["rollout"] = {"router": {"type": "GatewayAPI", "gatewayAPI": {"parentRefs": [{"name": "public"}]}}}
    kube = FakeKube({("Deployment", "ocr"): deployment("v1")})
    canary.tick(kube, b, SETTINGS, now=1000.0)
    route = [o for o in kube.applied if o["kind"] == "HTTPRoute"][-1]
    assert [(r["name"], r["weight"]) for r in route["spec"]["rules"][0]["backendRefs"]] == [
        ("ocr-stable", 100), ("ocr-canary", 0)
    ]
    assert "ocr-canary" in kube.deployments(), "the canary's pods went with the traffic"
    assert not memory.settled("prod", "ocr", UID), "the loop must come back to finish the drain"
    kube.applied.clear()
    canary.tick(kube, b, SETTINGS, now=1000.0 + canary.ROUTE_DRAIN_S)
    route = [o for o in kube.applied if o["kind"] == "HTTPRoute"][-1]
    assert [r["name"] for r in route["spec"]["rules"][0]["backendRefs"]] == ["ocr-stable"]
    assert "ocr-canary" not in kube.deployments()
    assert memory.settled("prod", "ocr", UID)


def test_routes_are_applied_after_the_services_they_route_to() -> None:
    """A router reading an HTTPRoute before its backend Service exists logs it missing (Traefik did not
    always pick the Service up later): the route goes in a second batch, on create and at a canary."""
    calls: list[list[str]] = []

    class Recording(FakeKube):
        def apply_all(self, objs: list[dict[str, Any]], read_back: Any = None) -> list[tuple[dict[str, Any], None]]:
            calls.append([o["kind"] for o in objs])
            return super().apply_all(objs, read_back)

    b = body("v1")
    b["spec"]["rollout"] = {"router": {"type": "GatewayAPI", "gatewayAPI": {"parentRefs": [{"name": "public"}]}}}
    reconcile.reconcile(Recording(), b)
    assert calls[-1] == ["HTTPRoute"] and "Service" in calls[-2] and "HTTPRoute" not in calls[-2], calls
    calls.clear()
    rollout = {"phase": "Progressing", "tag": "v2", "step": 1, "weight": 10, "failedChecks": 0, "message": ""}
    b2 = body("v2", status={"stableTag": "v1", "rollout": rollout})
    b2["spec"]["rollout"] = b["spec"]["rollout"]
    canary.tick(Recording({("Deployment", "ocr"): deployment("v1")}), b2, SETTINGS, now=1000.0)
    assert calls and all("HTTPRoute" not in c or c == ["HTTPRoute"] for c in calls), calls


def test_service_router_canary_goes_at_once() -> None:
    rollout = {"phase": "Progressing", "tag": "v2", "step": 1, "weight": 10, "failedChecks": 0, "message": ""}
    kube = FakeKube({("Deployment", "ocr"): deployment("v1")})
    canary.tick(kube, body("v1", status={"stableTag": "v1", "rollout": rollout}), SETTINGS, now=1000.0)
    assert "ocr-canary" not in kube.deployments()
