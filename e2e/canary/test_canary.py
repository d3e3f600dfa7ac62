"""Progressive delivery on kwok nodes: what needs no running pod.

Real pieces: the local control plane, the operator process, the upstream Gateway API and Istio CRDs.
Nothing listens behind kwok pods, so nothing here is analysed or routed: a tag change becoming a
canary (also before the rollout loop first looked), and the router objects the API server accepts.
Promotion, rollback, holds and restarts are measured with real pods, a Prometheus that discovers
them and a real Gateway in ``e2e/realnode/test_traffic.py``.
"""

from __future__ import annotations

import json

import pytest
import yaml

from e2e.cluster import gocrds
from e2e.util import dump_namespace, wait_for

NAME = "ocr"
INTERVAL_S = 10
SLA_P99_MS = 1000


def manifest(namespace: str, router: str = "Service", **rollout) -> dict:
    # No Prometheus: the first step needs only a ready canary, and the weight then holds there.
    analysis: dict = {"minRequests": 10, "failureThreshold": 2}
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
    gw = manifest(namespace, router="GatewayAPI")
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
    # Right after a tick of the loop (it recorded another resource's stable tag), the next is 30 s away.
    first = manifest(namespace)
    first["metadata"]["name"] = "first"
    apply(cluster, first)
    wait_for(
        lambda: (cluster.get("pms", "first", "-n", namespace).get("status") or {}).get("stableTag") == "v1",
        SLOW_TICK_S + 30,
        "a tick of the rollout loop",
        dump=dump,
    )
    apply(cluster, manifest(namespace))
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
    # The tick applies the canary, then writes status.rollout.
    r = wait_for(lambda: rollout(cluster, namespace).get("phase") and rollout(cluster, namespace), 15, "rollout")
    assert (r["phase"], r["tag"]) == ("Progressing", "v2"), r
    assert pms(cluster, namespace)["status"]["stableTag"] == "v1"
    assert image_tag(deployment(cluster, namespace, NAME)) == "v1"
    stable_rs = cluster.get("replicasets", "-n", namespace, "-l", "serving.paddlesla.io/track=stable")["items"]
    assert {rs["spec"]["template"]["spec"]["containers"][0]["image"].rsplit(":", 1)[1] for rs in stable_rs} == {
        "v1"
    }, "stable was rolled to v2 at some point"
