"""The track-aware plan: which children a rollout's shape produces (no cluster needed)."""

from __future__ import annotations

import pytest

from paddle_operator import canary, memory
from paddle_operator import plan as pl
from paddle_operator.settings import OperatorSettings
from paddle_operator.spec import PaddleModelService

SETTINGS = OperatorSettings(prometheus_url=None)


def plan(svc):
    """The production plan for the shape this process would use (memory, else status)."""
    shape, _state = memory.current(svc)
    return pl.build_children(svc, shape)


def body(tag="v2", status=None, router="Service", replicas=4, autoscaling=None, **rollout):
    spec = {
        "tag": tag,
        "replicas": replicas,
        "model": {"uri": "file:///models/m"},
        "sla": {"latencyP99Ms": 100, "availability": "99.9"},
        "rollout": {"router": {"type": router}, **rollout},
    }
    if autoscaling:
        spec["autoscaling"] = autoscaling
    return {
        "metadata": {"name": "ocr", "namespace": "prod", "uid": "u-1", "generation": 3},
        "spec": spec,
        "status": status or {},
    }


def kinds(children):
    return {(c["kind"], c["metadata"]["name"]): c for c in children}


def tag_of(dep):
    return dep["spec"]["template"]["spec"]["containers"][0]["image"].rsplit(":", 1)[1]


@pytest.fixture(autouse=True)
def no_memory():
    memory.clear()
    yield
    memory.clear()


def progressing(weight=30, step=2, tag="v2"):
    return {
        "stableTag": "v1",
        "rollout": {"phase": "Progressing", "tag": tag, "step": step, "weight": weight},
    }


def test_tag_change_alone_keeps_stable_on_the_stable_tag():
    svc = PaddleModelService.from_body(body(status={"stableTag": "v1"}))
    out = kinds(plan(svc))
    assert tag_of(out[("Deployment", "ocr")]) == "v1"
    assert ("Deployment", "ocr-canary") not in out


def test_first_creation_uses_spec_tag():
    out = kinds(plan(PaddleModelService.from_body(body(tag="v1"))))
    assert tag_of(out[("Deployment", "ocr")]) == "v1"


def test_no_mesh_splits_replicas_by_weight_and_keeps_the_floor():
    out = kinds(plan(PaddleModelService.from_body(body(status=progressing(30)))))
    stable, can = out[("Deployment", "ocr")], out[("Deployment", "ocr-canary")]
    assert tag_of(stable) == "v1" and tag_of(can) == "v2"
    assert (stable["spec"]["replicas"], can["spec"]["replicas"]) == (3, 2)
    # One Service over both tracks, no per-track Services, no router objects.
    assert out[("Service", "ocr")]["spec"]["selector"] == {"serving.paddlesla.io/service": "ocr"}
    assert ("Service", "ocr-canary") not in out and ("HTTPRoute", "ocr") not in out


def test_gateway_router_weights_and_canary_sized_for_the_next_step():
    status = progressing(30, step=2)
    out = kinds(plan(PaddleModelService.from_body(body(status=status, router="GatewayAPI"))))
    refs = out[("HTTPRoute", "ocr")]["spec"]["rules"][0]["backendRefs"]
    assert [(r["name"], r["weight"]) for r in refs] == [("ocr-stable", 70), ("ocr-canary", 30)]
    assert out[("Deployment", "ocr")]["spec"]["replicas"] == 4
    # Next step is 60 %: ceil(4 * 0.6) = 3 canary pods, ready before the weight moves.
    assert out[("Deployment", "ocr-canary")]["spec"]["replicas"] == 3
    assert ("Service", "ocr-stable") in out and ("Service", "ocr-canary") in out
    assert out[("HTTPRoute", "ocr")]["metadata"]["ownerReferences"][0]["uid"] == "u-1"


def test_istio_router():
    out = kinds(plan(PaddleModelService.from_body(body(status=progressing(10, 1), router="Istio"))))
    route = out[("VirtualService", "ocr")]["spec"]["http"][0]["route"]
    assert [(d["destination"]["subset"], d["weight"]) for d in route] == [("stable", 90), ("canary", 10)]
    assert ("DestinationRule", "ocr") in out


def test_rolled_back_canary_is_scaled_to_zero_and_routes_nothing():
    status = {"stableTag": "v1", "rollout": {"phase": "RolledBack", "tag": "v2", "weight": 0}}
    out = kinds(plan(PaddleModelService.from_body(body(status=status, router="GatewayAPI"))))
    assert out[("Deployment", "ocr-canary")]["spec"]["replicas"] == 0
    refs = out[("HTTPRoute", "ocr")]["spec"]["rules"][0]["backendRefs"]
    assert [r["name"] for r in refs] == ["ocr-stable"]


def test_promoting_rolls_stable_to_the_new_tag_while_canary_carries_traffic():
    status = {"stableTag": "v1", "rollout": {"phase": "Promoting", "tag": "v2", "step": 4, "weight": 100}}
    out = kinds(plan(PaddleModelService.from_body(body(status=status, router="GatewayAPI"))))
    assert tag_of(out[("Deployment", "ocr")]) == "v2"
    assert out[("Deployment", "ocr")]["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    refs = out[("HTTPRoute", "ocr")]["spec"]["rules"][0]["backendRefs"]
    assert [(r["name"], r["weight"]) for r in refs] == [("ocr-stable", 0), ("ocr-canary", 100)]


def test_hpas_are_sized_to_traffic_share():
    auto = {"minReplicas": 2, "maxReplicas": 10, "targetQPSPerReplica": 20}
    out = kinds(plan(PaddleModelService.from_body(body(status=progressing(30), autoscaling=auto))))
    stable, can = out[("HorizontalPodAutoscaler", "ocr")], out[("HorizontalPodAutoscaler", "ocr-canary")]
    assert (stable["spec"]["minReplicas"], stable["spec"]["maxReplicas"]) == (2, 7)
    # Canary sized for its next step (60 %): 2 .. 6.
    assert (can["spec"]["minReplicas"], can["spec"]["maxReplicas"]) == (2, 6)
    assert can["spec"]["scaleTargetRef"]["name"] == "ocr-canary"
    assert "replicas" not in out[("Deployment", "ocr-canary")]["spec"], "left to the HPA"


def test_policy_thresholds_come_from_the_sla_unless_explicit():
    svc = PaddleModelService.from_body(body())
    p = pl.policy_for(svc)
    assert p.max_latency_p99_ms == 100 and p.max_error_rate == pytest.approx(0.001)
    svc = PaddleModelService.from_body(body(analysis={"maxLatencyP99Ms": 50, "maxErrorRate": 0.05}))
    p = pl.policy_for(svc)
    assert p.max_latency_p99_ms == 50 and p.max_error_rate == 0.05


def test_replica_floor_follows_the_pdb():
    svc = PaddleModelService.from_body(body())
    assert pl.replica_floor(svc, 4) == 3  # 99.9 %: one pod may be unavailable


def test_model_canary_keeps_the_stable_model_until_promotion():
    old = {"uri": "file:///models/m1", "version": "1", "update": "Canary"}
    b = body(tag="v1")
    b["spec"]["model"] = {"uri": "file:///models/m2", "version": "2", "update": "Canary"}
    desired = pl.desired_revision(PaddleModelService.from_body(b))
    assert pl.tag_of(desired) == "v1" and desired.startswith("v1@2.")
    b["status"] = {
        "stableTag": "v1",
        "rollout": {"phase": "Progressing", "tag": desired, "step": 1, "weight": 10, "stableModel": old},
    }
    svc = PaddleModelService.from_body(b)
    shape, _ = pl.shape_from_status(svc)
    assert shape.stable_tag != desired, "the model change is a new revision"
    out = kinds(plan(svc))
    stable, can = str(out[("Deployment", "ocr")]), str(out[("Deployment", "ocr-canary")])
    assert "models/m1" in stable and "models/m2" not in stable
    assert "models/m2" in can and "models/m1" not in can
    assert tag_of(out[("Deployment", "ocr")]) == tag_of(out[("Deployment", "ocr-canary")]) == "v1"
    # Promoting: the stable track rolls to the new model.
    b["status"]["rollout"]["phase"] = "Promoting"
    out = kinds(plan(PaddleModelService.from_body(b)))
    assert "models/m2" in str(out[("Deployment", "ocr")])


def test_model_change_without_canary_update_is_not_a_new_revision():
    b = body(tag="v1")
    b["spec"]["model"] = {"uri": "file:///models/m2", "version": "2", "update": "Rollout"}
    assert pl.desired_revision(PaddleModelService.from_body(b)) == "v1"


class _NoCanaryKube:
    """Just enough API for a tick: nothing exists yet, applies are recorded and echoed back."""

    def __init__(self):
        self.patches = []
        self.applied = []

    def get(self, *args):
        return None

    def list(self, *args):
        return []

    def apply(self, obj):
        self.applied.append(obj)
        return obj

    def apply_all(self, objs, read_back=None):
        return [(self.apply(o), None) for o in objs]

    def apply_status(self, namespace, name, status, manager):
        self.patches.append(status)


def test_switching_model_update_to_canary_is_not_itself_a_rollout():
    b = body(tag="v1", status={"stableTag": "v1"})
    b["spec"]["model"]["update"] = "Rollout"
    kube = _NoCanaryKube()
    canary.tick(kube, b, SETTINGS, now=1000.0)
    b["spec"]["model"]["update"] = "Canary"
    result = canary.tick(kube, b, SETTINGS, now=1001.0)
    assert not result.events, result.events
    assert result.status.get("rollout", {}).get("phase", "") == ""
    assert result.status["rollout"]["stableModel"]["uri"] == "file:///models/m"
    # The stable Deployment stays as it was: same tag, same model.
    deps = [o for o in kube.applied if o["kind"] == "Deployment"]
    assert [d["metadata"]["name"] for d in deps] == ["ocr"] and tag_of(deps[0]) == "v1"


def test_promoting_holds_stable_at_the_canary_size_before_the_canary_goes():
    """At 100 % stable idles at its floor; promotion sends all traffic back to it, so it first grows to
    the canary's size (HPA floor when autoscaled, replicas with the Service router)."""
    svc = PaddleModelService.from_body(
        body(autoscaling={"minReplicas": 1, "maxReplicas": 4, "targetQPSPerReplica": 2})
    )
    at_100 = pl.Shape("v1", "v1", pl.RUNNING, "v2", 100, 100)
    hpa = kinds(pl.build_children(svc, at_100))[("HorizontalPodAutoscaler", "ocr")]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 1)
    promoting = pl.Shape("v1", "v2", pl.RUNNING, "v2", 100, 100, stable_min=3)
    hpa = kinds(pl.build_children(svc, promoting))[("HorizontalPodAutoscaler", "ocr")]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 3)
    # Never above the service's maximum.
    too_big = pl.Shape("v1", "v2", pl.RUNNING, "v2", 100, 100, stable_min=9)
    hpa = kinds(pl.build_children(svc, too_big))[("HorizontalPodAutoscaler", "ocr")]
    assert hpa["spec"]["minReplicas"] == 4
    plain = PaddleModelService.from_body(body(replicas=4))
    out = kinds(pl.build_children(plain, pl.Shape("v1", "v2", pl.RUNNING, "v2", 100, 100, stable_min=4)))
    assert out[("Deployment", "ocr")]["spec"]["replicas"] == 4
    assert out[("Deployment", "ocr-canary")]["spec"]["replicas"] == 4


class _PromotingKube(_NoCanaryKube):
    """The canary scaled to 3 by its HPA; stable rolled to v2 with ``stable_ready`` ready pods."""

    def __init__(self, stable_ready: int):
        super().__init__()
        self.stable_ready = stable_ready

    def get(self, api_version, kind, namespace, name):
        ready = 3 if name == "ocr-canary" else self.stable_ready
        return {
            "metadata": {"name": name, "generation": 1},
            "spec": {"replicas": ready, "template": {"spec": {"containers": [
                {"image": "ghcr.io/paddle-sla/paddle-runtime:v2", "args": ["file:///models/m"]}]}}},
            "status": {"observedGeneration": 1, "replicas": ready, "updatedReplicas": ready,
                       "readyReplicas": ready, "availableReplicas": ready},
        }  # fmt: skip


def test_promotion_completes_only_once_stable_has_as_many_ready_pods_as_the_canary():
    auto = {"minReplicas": 1, "maxReplicas": 4, "targetQPSPerReplica": 2}
    status = {"stableTag": "v1", "rollout": {"phase": "Promoting", "tag": "v2", "step": 4, "weight": 100}}
    b = body(status=status, autoscaling=auto)
    kube = _PromotingKube(stable_ready=1)
    first = canary.tick(kube, b, SETTINGS, now=1000.0)
    assert first.status.get("rollout", {}).get("phase", "Promoting") == "Promoting"
    hpas = [o for o in kube.applied if o["kind"] == "HorizontalPodAutoscaler" and o["metadata"]["name"] == "ocr"]
    assert hpas and hpas[-1]["spec"]["minReplicas"] == 3, "stable's HPA floor is the canary's size"
    # One ready stable pod on the new tag: rolled out by the Deployment's own measure, but too small.
    second = canary.tick(kube, b, SETTINGS, now=1005.0)
    assert second.status.get("rollout", {}).get("phase", "Promoting") == "Promoting"
    kube.stable_ready = 3
    third = canary.tick(kube, b, SETTINGS, now=1010.0)
    assert third.status["rollout"]["phase"] == "Promoted"


def _stable_hpa_min(kube) -> int:
    hpas = [o for o in kube.applied if o["kind"] == "HorizontalPodAutoscaler" and o["metadata"]["name"] == "ocr"]
    return hpas[-1]["spec"]["minReplicas"]


def test_after_promotion_stable_keeps_the_canary_size_for_the_hold_then_its_own_floor():
    """At Promoted the traffic returns to stable, but its HPA's metrics still read idle pods for a rate
    window: the floor stays for ``promotion_hold_s``, then the HPA decides alone."""
    settings = OperatorSettings(prometheus_url=None, promotion_hold_s=60)
    auto = {"minReplicas": 1, "maxReplicas": 4, "targetQPSPerReplica": 2}
    status = {"stableTag": "v1", "rollout": {"phase": "Promoting", "tag": "v2", "step": 4, "weight": 100}}
    b = body(status=status, autoscaling=auto)
    kube = _PromotingKube(stable_ready=1)
    canary.tick(kube, b, settings, now=1000.0)  # Promoting: the floor is the canary's 3
    assert _stable_hpa_min(kube) == 3
    kube.stable_ready = 3
    kube.applied.clear()
    promoted = canary.tick(kube, b, settings, now=1005.0)
    assert promoted.status["rollout"]["phase"] == "Promoted"
    assert "ocr-canary" not in {o["metadata"]["name"] for o in kube.applied}, "the canary goes at once"
    assert _stable_hpa_min(kube) == 3
    assert not memory.settled("prod", "ocr", "u-1"), "the rollout loop keeps looking until the hold ends"
    b = body(status={"stableTag": "v2", "rollout": promoted.status["rollout"]}, autoscaling=auto)
    kube.applied.clear()
    canary.tick(kube, b, settings, now=1064.0)
    assert not kube.applied, "nothing changes within the hold"
    after = canary.tick(kube, b, settings, now=1066.0)
    assert after.applied and _stable_hpa_min(kube) == 1
    assert memory.settled("prod", "ocr", "u-1")


def test_the_promotion_hold_ends_with_a_new_rollout_and_is_off_at_zero():
    auto = {"minReplicas": 1, "maxReplicas": 4, "targetQPSPerReplica": 2}
    status = {"stableTag": "v1", "rollout": {"phase": "Promoting", "tag": "v2", "step": 4, "weight": 100}}
    off = OperatorSettings(prometheus_url=None, promotion_hold_s=0)
    kube = _PromotingKube(stable_ready=1)
    canary.tick(kube, body(status=status, autoscaling=auto), off, now=1000.0)
    kube.stable_ready = 3
    assert canary.tick(kube, body(status=status, autoscaling=auto), off, now=1005.0).status["rollout"]["phase"] == "Promoted"
    assert _stable_hpa_min(kube) == 1
    memory.clear()
    on = OperatorSettings(prometheus_url=None, promotion_hold_s=600)
    kube.stable_ready = 1
    canary.tick(kube, body(status=status, autoscaling=auto), on, now=1000.0)
    kube.stable_ready = 3
    promoted = canary.tick(kube, body(status=status, autoscaling=auto), on, now=1005.0)
    assert _stable_hpa_min(kube) == 3
    # A new tag within the hold: a new rollout, whose shape has its own bounds.
    rolled = {"stableTag": "v2", "rollout": promoted.status["rollout"]}
    canary.tick(kube, body(tag="v3", status=rolled, autoscaling=auto), on, now=1010.0)
    mem = memory.get(("prod", "ocr", "u-1"))
    assert mem is not None and mem.hold_until == 0.0 and mem.state.phase == "Progressing"
    assert mem.shape.stable_min == 0


def test_an_aborted_promotion_holds_the_floor_too():
    """spec.tag back to the stable tag while promoting: the canary goes and its traffic returns to
    stable, exactly as at Promoted."""
    auto = {"minReplicas": 1, "maxReplicas": 4, "targetQPSPerReplica": 2}
    settings = OperatorSettings(prometheus_url=None, promotion_hold_s=60)
    status = {"stableTag": "v1", "rollout": {"phase": "Promoting", "tag": "v2", "step": 4, "weight": 100}}
    kube = _PromotingKube(stable_ready=1)
    canary.tick(kube, body(status=status, autoscaling=auto), settings, now=1000.0)
    aborted = canary.tick(kube, body(tag="v1", status=status, autoscaling=auto), settings, now=1005.0)
    assert aborted.status["rollout"]["phase"] == "RolledBack"
    assert _stable_hpa_min(kube) == 3


def test_autoscaling_turned_off_during_the_hold_ends_it():
    """Otherwise the resource would never be settled again and the rollout loop would tick it forever."""
    auto = {"minReplicas": 1, "maxReplicas": 4, "targetQPSPerReplica": 2}
    settings = OperatorSettings(prometheus_url=None, promotion_hold_s=600)
    status = {"stableTag": "v1", "rollout": {"phase": "Promoting", "tag": "v2", "step": 4, "weight": 100}}
    kube = _PromotingKube(stable_ready=1)
    canary.tick(kube, body(status=status, autoscaling=auto), settings, now=1000.0)
    kube.stable_ready = 3
    promoted = canary.tick(kube, body(status=status, autoscaling=auto), settings, now=1005.0)
    assert not memory.settled("prod", "ocr", "u-1")
    rolled = {"stableTag": "v2", "rollout": promoted.status["rollout"]}
    canary.tick(kube, body(status=rolled), settings, now=1010.0)
    assert memory.settled("prod", "ocr", "u-1")
