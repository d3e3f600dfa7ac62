"""Progressive delivery end to end: a tag change becomes an SLA-gated canary.

Real pieces: the local control plane (kwok nodes), the operator process, Prometheus, and
paddle-runtime processes serving real models as the two tracks (see conftest.py for why the scrape
targets are wired by the test). Intervals are 10 s (the CRD minimum) so the suite stays short.
"""

from __future__ import annotations

import json
import time

import pytest
import yaml

from e2e.canary import gocrds
from e2e.canary.conftest import load, track_labels
from e2e.util import dump_namespace, wait_for

NAME = "ocr"
INTERVAL_S = 10
# Generous: this machine is shared, and MobileNetV3-small's p99 (~30 ms idle) has been seen at ~300 ms
# under other people's load. The slow canary is judged by a bound below ResNet50's compute time.
SLA_P99_MS = 1000
SLOW_BOUND_MS = 40  # ResNet50 needs ~60 ms of compute per image here, however idle the machine


# Every test that needs runtimes asks for them before `cluster`: loading the models is CPU-heavy, and on
# a small shared machine doing it after the cluster is up can delay kwok's node heartbeat past the
# node controller's grace period, which marks the fake pods NotReady for good.


def manifest(
    namespace: str,
    prometheus_url: str | None,
    router: str = "Service",
    max_p99_ms: int | None = None,
    **rollout,
) -> dict:
    analysis: dict = {"minRequests": 10, "failureThreshold": 2}
    if prometheus_url:
        analysis["prometheusURL"] = prometheus_url
    if max_p99_ms:
        analysis["maxLatencyP99Ms"] = max_p99_ms
    return {
        "apiVersion": "serving.paddlesla.io/v1alpha1",
        "kind": "PaddleModelService",
        "metadata": {"name": NAME, "namespace": namespace},
        "spec": {
            "image": "ghcr.io/paddle-sla/paddle-runtime",
            "tag": "v1",
            "replicas": 2,
            "model": {"uri": "file:///opt/models/classifier", "version": "1"},
            "sla": {"latencyP99Ms": SLA_P99_MS, "availability": "99", "window": "1m"},
            "rollout": {
                "intervalSeconds": INTERVAL_S,
                "router": {"type": router},
                "analysis": analysis,
                **rollout,
            },
        },
    }


def apply(cluster, obj: dict) -> None:
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(obj))


def pms(cluster, namespace: str) -> dict:
    return cluster.get("pms", NAME, "-n", namespace)


def set_tag(cluster, namespace: str, tag: str) -> None:
    cluster.kubectl(
        "patch", "pms", NAME, "-n", namespace, "--type=merge", "-p", json.dumps({"spec": {"tag": tag}})
    )


def deployment(cluster, namespace: str, name: str) -> dict | None:
    proc = cluster.kubectl("get", "deployment", name, "-n", namespace, "-o", "json", check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def image_tag(dep: dict) -> str:
    return dep["spec"]["template"]["spec"]["containers"][0]["image"].rsplit(":", 1)[1]


def rollout(cluster, namespace: str) -> dict:
    return (pms(cluster, namespace).get("status") or {}).get("rollout") or {}


def events(cluster, namespace: str) -> list[dict]:
    out = cluster.get("events", "-n", namespace, "--field-selector", f"involvedObject.name={NAME}")
    return out["items"]


def wait_stable(cluster, namespace: str, tag: str, dump) -> None:
    wait_for(
        lambda: (
            (pms(cluster, namespace).get("status") or {}).get("stableTag") == tag
            and (dep := deployment(cluster, namespace, NAME)) is not None
            and image_tag(dep) == tag
            and (dep.get("status") or {}).get("availableReplicas") == 2
        ),
        90,
        f"stable on {tag}",
        dump=dump,
    )


@pytest.fixture
def dump(cluster, namespace, operator):
    base = dump_namespace(cluster, namespace, kinds=("all", "events"), describe=False)

    def run() -> str:
        return f"{base()}\n---- pms ----\n{yaml.safe_dump(pms(cluster, namespace))}\n---- operator ----\n{operator.tail()}"

    return run


def test_healthy_canary_is_promoted_step_by_step(
    runtimes, cluster, namespace, operator, prometheus_factory, dump
):
    prom = prometheus_factory(
        [
            (runtimes.stable, track_labels(namespace, NAME, "stable")),
            (runtimes.healthy_canary, track_labels(namespace, NAME, "canary")),
        ]
    )
    with load(runtimes.stable, runtimes.healthy_canary):
        apply(cluster, manifest(namespace, prom.url))
        wait_stable(cluster, namespace, "v1", dump)
        set_tag(cluster, namespace, "v2")

        seen: list[tuple[str, int]] = []
        canary_tags: set[str] = set()

        def promoted() -> bool:
            r = rollout(cluster, namespace)
            point = (r.get("phase"), r.get("weight"))
            if r and (not seen or seen[-1] != point):
                seen.append(point)
            if (dep := deployment(cluster, namespace, f"{NAME}-canary")) is not None:
                canary_tags.add(image_tag(dep))
            # While the canary runs, stable stays on v1: a tag change is not a full rollout.
            if r.get("phase") == "Progressing":
                assert image_tag(deployment(cluster, namespace, NAME)) == "v1"
            return r.get("phase") == "Promoted"

        wait_for(promoted, 150, "canary promoted", dump=dump, interval=0.3)

    progressing = [w for phase, w in seen if phase == "Progressing" and w]
    assert progressing == [10, 30, 60, 100], seen
    assert ("Promoting", 100) in seen, seen
    assert canary_tags == {"v2"}
    obj = pms(cluster, namespace)
    st = obj["status"]
    assert obj["spec"]["tag"] == "v2" and st["stableTag"] == "v2" and st["tag"] == "v2"
    assert st["rollout"]["lastAnalysis"]["verdict"] == "Pass"
    assert st["rollout"]["lastAnalysis"]["p99Ms"] < SLA_P99_MS
    # Promotion = stable rolled to v2 (never below its replicas), then the canary is removed.
    wait_for(
        lambda: deployment(cluster, namespace, f"{NAME}-canary") is None, 30, "canary removed", dump=dump
    )
    stable = deployment(cluster, namespace, NAME)
    assert image_tag(stable) == "v2"
    assert stable["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    reasons = [e["reason"] for e in events(cluster, namespace)]
    assert "Promoted" in reasons and "CanaryWeight" in reasons
    # SLA status from the same Prometheus: figures and a condition with them in its message.
    sla = st.get("sla") or {}
    wait_for(
        lambda: (pms(cluster, namespace)["status"].get("sla") or {}).get("p99Ms") is not None,
        30,
        "status.sla",
    )
    sla = pms(cluster, namespace)["status"]["sla"]
    assert sla["qps"] > 0 and sla["availability"] == 1.0 and sla["summary"].endswith(f"/{SLA_P99_MS}ms")
    cond = next(c for c in pms(cluster, namespace)["status"]["conditions"] if c["type"] == "SLAMet")
    assert cond["status"] == "True" and "p99=" in cond["message"]


def test_slow_canary_is_rolled_back_with_figures(
    runtimes, cluster, namespace, operator, prometheus_factory, dump
):
    prom = prometheus_factory(
        [
            (runtimes.stable, track_labels(namespace, NAME, "stable")),
            (runtimes.slow_canary, track_labels(namespace, NAME, "canary")),
        ]
    )
    with load(runtimes.stable, runtimes.slow_canary):
        apply(cluster, manifest(namespace, prom.url, max_p99_ms=SLOW_BOUND_MS))
        wait_stable(cluster, namespace, "v1", dump)
        set_tag(cluster, namespace, "v2-resnet50")
        wait_for(lambda: rollout(cluster, namespace).get("phase") == "RolledBack", 90, "rollback", dump=dump)

    obj = pms(cluster, namespace)
    st, r = obj["status"], obj["status"]["rollout"]
    assert obj["spec"]["tag"] == "v2-resnet50", "spec is never rewritten"
    assert st["stableTag"] == "v1" and r["weight"] == 0 and r["failedChecks"] == 2
    assert r["lastAnalysis"]["verdict"] == "Fail" and r["lastAnalysis"]["p99Ms"] > SLOW_BOUND_MS
    assert f"> {SLOW_BOUND_MS}ms" in r["message"] and "all traffic to stable v1" in r["message"]
    assert image_tag(deployment(cluster, namespace, NAME)) == "v1"
    canary = deployment(cluster, namespace, f"{NAME}-canary")
    assert canary is not None and canary["spec"]["replicas"] == 0, "canary scaled to zero"
    rb = [e for e in events(cluster, namespace) if e["reason"] == "RolledBack"]
    assert rb and rb[0]["type"] == "Warning" and "p99" in rb[0]["message"]
    # It stays rolled back: the same tag is not retried behind the user's back.
    time.sleep(INTERVAL_S + 2)
    assert rollout(cluster, namespace)["phase"] == "RolledBack"


def test_erroring_canary_is_rolled_back_on_error_rate(
    runtimes, cluster, namespace, operator, prometheus_factory, dump
):
    prom = prometheus_factory(
        [
            (runtimes.stable, track_labels(namespace, NAME, "stable")),
            (runtimes.broken_canary, track_labels(namespace, NAME, "canary")),
        ]
    )
    with load(runtimes.stable, runtimes.broken_canary) as traffic:
        apply(cluster, manifest(namespace, prom.url))
        wait_stable(cluster, namespace, "v1", dump)
        set_tag(cluster, namespace, "v2-broken")
        wait_for(lambda: rollout(cluster, namespace).get("phase") == "RolledBack", 90, "rollback", dump=dump)
    assert set(traffic.codes["broken-canary"]) == {500}, traffic.codes
    r = rollout(cluster, namespace)
    # availability "99" allows 1 % errors; the canary answered every request with a 500.
    assert r["lastAnalysis"]["errorRate"] == 1.0 and "error rate 100.00% > 1%" in r["message"]
    assert pms(cluster, namespace)["status"]["stableTag"] == "v1"
    assert image_tag(deployment(cluster, namespace, NAME)) == "v1"


def test_prometheus_down_holds_the_weight(runtimes, cluster, namespace, operator, prometheus_factory, dump):
    prom = prometheus_factory(
        [
            (runtimes.stable, track_labels(namespace, NAME, "stable")),
            (runtimes.healthy_canary, track_labels(namespace, NAME, "canary")),
        ]
    )
    with load(runtimes.stable, runtimes.healthy_canary):
        apply(cluster, manifest(namespace, prom.url))
        wait_stable(cluster, namespace, "v1", dump)
        set_tag(cluster, namespace, "v2")
        wait_for(lambda: rollout(cluster, namespace).get("weight") == 10, 60, "first step", dump=dump)
        prom.stop()
        wait_for(
            lambda: "Prometheus unreachable" in rollout(cluster, namespace).get("message", ""),
            3 * INTERVAL_S,
            "hold reported",
            dump=dump,
        )
        # Two more intervals without Prometheus: still at the first step, nothing counted as failure.
        time.sleep(2 * INTERVAL_S)
    r = rollout(cluster, namespace)
    assert (r["phase"], r["step"], r["weight"], r["failedChecks"]) == ("Progressing", 1, 10, 0)
    assert r["lastAnalysis"]["verdict"] == "PrometheusUnreachable"
    assert pms(cluster, namespace)["status"]["stableTag"] == "v1"
    assert any(e["reason"] == "AnalysisUnavailable" for e in events(cluster, namespace))


def test_pause_holds_and_an_operator_restart_resumes_from_status(
    runtimes, cluster, namespace, operator, prometheus_factory, dump
):
    prom = prometheus_factory(
        [
            (runtimes.stable, track_labels(namespace, NAME, "stable")),
            (runtimes.healthy_canary, track_labels(namespace, NAME, "canary")),
        ]
    )

    def set_paused(paused: bool) -> None:
        patch = {"spec": {"rollout": {"paused": paused}}}
        cluster.kubectl("patch", "pms", NAME, "-n", namespace, "--type=merge", "-p", json.dumps(patch))

    with load(runtimes.stable, runtimes.healthy_canary):
        apply(cluster, manifest(namespace, prom.url))
        wait_stable(cluster, namespace, "v1", dump)
        set_tag(cluster, namespace, "v2")
        wait_for(lambda: rollout(cluster, namespace).get("weight") == 30, 60, "second step", dump=dump)
        set_paused(True)
        wait_for(lambda: rollout(cluster, namespace).get("phase") == "Paused", 20, "Paused", dump=dump)
        # Killed while paused: the new process knows only what status says.
        operator.restart()
        time.sleep(2 * INTERVAL_S)
        r = rollout(cluster, namespace)
        assert (r["phase"], r["weight"]) == ("Paused", 30), r
        assert image_tag(deployment(cluster, namespace, NAME)) == "v1", "a restart must not promote"
        assert image_tag(deployment(cluster, namespace, f"{NAME}-canary")) == "v2"
        set_paused(False)
        wait_for(lambda: rollout(cluster, namespace).get("phase") == "Promoted", 90, "promoted", dump=dump)
    assert pms(cluster, namespace)["status"]["stableTag"] == "v2"
    reasons = [e["reason"] for e in events(cluster, namespace)]
    assert "RolloutPaused" in reasons and "RolloutResumed" in reasons


def test_model_change_with_update_canary_goes_through_the_canary(
    runtimes, cluster, namespace, operator, prometheus_factory, dump
):
    prom = prometheus_factory(
        [
            (runtimes.stable, track_labels(namespace, NAME, "stable")),
            (runtimes.healthy_canary, track_labels(namespace, NAME, "canary")),
        ]
    )
    obj = manifest(namespace, prom.url, steps=[50, 100])
    obj["spec"]["model"]["update"] = "Canary"
    old_uri, new_uri = obj["spec"]["model"]["uri"], "file:///opt/models/classifier-v2"
    with load(runtimes.stable, runtimes.healthy_canary):
        apply(cluster, obj)
        wait_stable(cluster, namespace, "v1", dump)
        # The rollout timer records the serving model within a tick of creation; a change before that
        # is "first sight" and becomes the stable model directly.
        wait_for(
            lambda: rollout(cluster, namespace).get("stableModel", {}).get("uri") == old_uri,
            30,
            "stableModel",
        )
        patch = {"spec": {"model": {"uri": new_uri, "version": "2"}}}
        cluster.kubectl("patch", "pms", NAME, "-n", namespace, "--type=merge", "-p", json.dumps(patch))
        wait_for(lambda: rollout(cluster, namespace).get("weight") == 50, 60, "first step", dump=dump)
        # Same tag on both tracks; the tracks differ by model, the stable one untouched so far.
        stable, can = deployment(cluster, namespace, NAME), deployment(cluster, namespace, f"{NAME}-canary")
        assert image_tag(stable) == image_tag(can) == "v1"
        assert old_uri in json.dumps(stable["spec"]["template"]) and new_uri not in json.dumps(
            stable["spec"]["template"]
        )
        assert new_uri in json.dumps(can["spec"]["template"])
        wait_for(lambda: rollout(cluster, namespace).get("phase") == "Promoted", 90, "promoted", dump=dump)
    stable = deployment(cluster, namespace, NAME)
    assert new_uri in json.dumps(stable["spec"]["template"])
    assert pms(cluster, namespace)["status"]["stableTag"] == "v1"
    wait_for(
        lambda: deployment(cluster, namespace, f"{NAME}-canary") is None, 30, "canary removed", dump=dump
    )


def test_httproute_and_virtualservice_are_accepted(cluster, namespace, operator, dump):
    for source in gocrds.SOURCES:
        for path in gocrds.crd_files(source):
            cluster.kubectl("apply", "--server-side", "-f", str(path), timeout=120)
    for kind in ("httproutes", "virtualservices", "destinationrules"):
        wait_for(
            lambda kind=kind: cluster.kubectl("get", kind, "-A", check=False).returncode == 0,
            60,
            f"{kind} CRD",
        )
    # No Prometheus: the first step needs only a ready canary, no verdict.
    gw = manifest(namespace, None, router="GatewayAPI")
    gw["spec"]["rollout"]["router"]["gatewayAPI"] = {
        "parentRefs": [{"name": "public", "namespace": "gateway-system"}],
        "hostnames": ["ocr.example.com"],
    }
    apply(cluster, gw)
    wait_stable(cluster, namespace, "v1", dump)
    route = wait_for(lambda: cluster.get("httproute", NAME, "-n", namespace), 30, "HTTPRoute", dump=dump)
    assert [b["name"] for b in route["spec"]["rules"][0]["backendRefs"]] == [f"{NAME}-stable"]
    set_tag(cluster, namespace, "v2")

    def split() -> list | None:
        refs = cluster.get("httproute", NAME, "-n", namespace)["spec"]["rules"][0]["backendRefs"]
        return refs if len(refs) == 2 and refs[1]["weight"] == 10 else None

    refs = wait_for(split, 60, "HTTPRoute 90/10", dump=dump)
    assert [(b["name"], b["weight"]) for b in refs] == [(f"{NAME}-stable", 90), (f"{NAME}-canary", 10)]
    route = cluster.get("httproute", NAME, "-n", namespace)
    assert route["spec"]["parentRefs"][0]["name"] == "public"
    assert route["metadata"]["ownerReferences"][0]["kind"] == "PaddleModelService"
    svc = cluster.get("service", f"{NAME}-canary", "-n", namespace)
    assert svc["spec"]["selector"]["serving.paddlesla.io/track"] == "canary"
    # Without Prometheus the canary is held at its first step, never promoted blind.
    wait_for(
        lambda: "no Prometheus URL" in rollout(cluster, namespace).get("message", ""), 30, "hold", dump=dump
    )
    assert rollout(cluster, namespace)["weight"] == 10

    # Switching the router to Istio: the HTTPRoute is pruned, VirtualService + DestinationRule appear.
    cluster.kubectl(
        "patch", "pms", NAME, "-n", namespace, "--type=merge",
        "-p", json.dumps({"spec": {"rollout": {"router": {"type": "Istio", "gatewayAPI": None}}}}),
    )  # fmt: skip

    def vs_split() -> dict | None:
        proc = cluster.kubectl("get", "virtualservice", NAME, "-n", namespace, "-o", "json", check=False)
        return json.loads(proc.stdout) if proc.returncode == 0 else None

    vs = wait_for(vs_split, 30, "VirtualService", dump=dump)
    weights = [(d["destination"]["subset"], d["weight"]) for d in vs["spec"]["http"][0]["route"]]
    assert weights == [("stable", 90), ("canary", 10)]
    dr = cluster.get("destinationrule", NAME, "-n", namespace)
    assert [s["name"] for s in dr["spec"]["subsets"]] == ["stable", "canary"]
    wait_for(
        lambda: cluster.kubectl("get", "httproute", NAME, "-n", namespace, check=False).returncode != 0,
        30,
        "HTTPRoute pruned",
        dump=dump,
    )


SLOW_TICK_S = 30


@pytest.mark.parametrize("operator_env", [{"PADDLE_OPERATOR_ROLLOUT_TICK_S": str(SLOW_TICK_S)}], indirect=True)
def test_tag_change_before_the_rollout_loop_first_looks_is_still_a_canary(cluster, namespace, operator, dump):
    """The race of commit dfbc195: status.stableTag is recorded by the rollout loop; a tag change before
    its first look used to be taken as the stable tag and rolled stable forward with no canary. A
    30 s tick makes the gap certain instead of a matter of luck."""
    apply(cluster, manifest(namespace, None))
    wait_for(
        lambda: (dep := deployment(cluster, namespace, NAME)) is not None and image_tag(dep) == "v1",
        30,
        "stable Deployment on v1",
        dump=dump,
    )
    set_tag(cluster, namespace, "v2")
    status = pms(cluster, namespace).get("status") or {}
    assert "stableTag" not in status and "rollout" not in status, f"the loop looked already: {status}"
    # The update handler's reconcile keeps stable on v1; the loop's first look starts the canary.
    wait_for(
        lambda: (dep := deployment(cluster, namespace, f"{NAME}-canary")) is not None and image_tag(dep) == "v2",
        SLOW_TICK_S + 30,
        "canary Deployment on v2",
        dump=dump,
    )
    r = rollout(cluster, namespace)
    assert (r["phase"], r["tag"]) == ("Progressing", "v2"), r
    assert pms(cluster, namespace)["status"]["stableTag"] == "v1"
    assert image_tag(deployment(cluster, namespace, NAME)) == "v1"
    stable_rs = cluster.get("replicasets", "-n", namespace, "-l", "serving.paddlesla.io/track=stable")["items"]
    assert {rs["spec"]["template"]["spec"]["containers"][0]["image"].rsplit(":", 1)[1] for rs in stable_rs} == {
        "v1"
    }, "stable was rolled to v2 at some point"
