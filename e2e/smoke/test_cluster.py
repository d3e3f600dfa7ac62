"""The local control plane does what the operator relies on: scheduling onto kwok nodes, CRD
validation with CEL, owner-reference garbage collection, autoscaling/v2 validation, and server-side
dry runs of rendered Helm charts."""

from __future__ import annotations

import json

from e2e.cluster import Cluster, k8s_version, pinned_versions
from e2e.smoke.conftest import TESTDATA
from e2e.util import dump_namespace, dump_objects, wait_for


def _condition(obj: dict, type_: str) -> str | None:
    return next(
        (c["status"] for c in obj.get("status", {}).get("conditions", []) if c["type"] == type_), None
    )


def deployment(name: str, replicas: int = 2, gpus: int = 0) -> dict:
    resources = {"requests": {"cpu": "100m", "memory": "64Mi"}}
    if gpus:
        resources["limits"] = {"nvidia.com/gpu": str(gpus)}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": [
                        {"name": "main", "image": "registry.k8s.io/pause:3.10", "resources": resources}
                    ]
                },
            },
        },
    }


def test_fake_nodes_are_ready_with_gpu_capacity(cluster: Cluster) -> None:
    nodes = cluster.get("nodes", "-l", "type=kwok")["items"]  # the real node, if any, has its own tests
    assert nodes, "no nodes registered"
    for node in nodes:
        assert _condition(node, "Ready") == "True", node["status"]
        assert node["status"]["allocatable"].get("nvidia.com/gpu"), node["status"]["allocatable"]


def test_binaries_report_the_pinned_release(cluster: Cluster) -> None:
    # Without the release -X flags every binary says v0.0.0-master, which breaks kubeVersion checks.
    versions = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert versions["clientVersion"]["gitVersion"] == k8s_version()
    if cluster.mode == "local":
        assert versions["serverVersion"]["gitVersion"] == k8s_version()
    assert pinned_versions()["helm"] in cluster.helm("version", "--short").stdout


def test_deployment_becomes_available_on_kwok_node(cluster: Cluster, namespace: str, apply) -> None:
    apply([deployment("web", replicas=2), deployment("gpu", replicas=1, gpus=1)])
    for name in ("web", "gpu"):
        wait_for(
            lambda name=name: (
                _condition(cluster.get("deployment", name, "-n", namespace), "Available") == "True"
            ),
            90,
            f"Deployment {name} Available",
            dump=dump_namespace(cluster, namespace),
        )
    pods = cluster.get("pods", "-n", namespace)["items"]
    assert len(pods) == 3
    for pod in pods:
        assert pod["spec"].get("nodeName"), "scheduled"
        if cluster.mode == "local":
            assert pod["spec"]["nodeName"].startswith("kwok-node-"), pod["spec"]["nodeName"]
        assert pod["status"]["phase"] == "Running"
        assert _condition(pod, "Ready") == "True"
        assert pod["status"].get("podIP"), "kwok assigns pod IPs"


def test_gpu_request_beyond_capacity_stays_pending(cluster: Cluster, namespace: str, apply) -> None:
    # Proves the GPU capacity is real to the scheduler, not ignored: 1000 GPUs fit on no node.
    apply(deployment("greedy", replicas=1, gpus=1000))
    pod = wait_for(
        lambda: next(iter(cluster.get("pods", "-n", namespace)["items"]), None),
        60,
        "the greedy pod to exist",
        dump=dump_namespace(cluster, namespace),
    )
    name = pod["metadata"]["name"]
    wait_for(
        lambda: _condition(cluster.get("pod", name, "-n", namespace), "PodScheduled") == "False",
        60,
        "the scheduler to mark the pod unschedulable",
        dump=dump_namespace(cluster, namespace),
    )
    events = cluster.kubectl(
        "get", "events", "-n", namespace, "--field-selector", f"involvedObject.name={name}"
    ).stdout
    assert "nvidia.com/gpu" in events, events


CRD_NAME = "widgets.smoke.paddlesla.io"
CEL_MESSAGE = "minReplicas must not exceed maxReplicas"


def widget_crd() -> dict:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME},
        "spec": {
            "group": "smoke.paddlesla.io",
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "required": ["minReplicas", "maxReplicas"],
                                    "properties": {
                                        "minReplicas": {"type": "integer", "minimum": 0},
                                        "maxReplicas": {"type": "integer"},
                                    },
                                    "x-kubernetes-validations": [
                                        {
                                            "rule": "self.minReplicas <= self.maxReplicas",
                                            "message": CEL_MESSAGE,
                                        }
                                    ],
                                }
                            },
                        }
                    },
                }
            ],
        },
    }


def widget(name: str, lo: int, hi: int) -> dict:
    return {
        "apiVersion": "smoke.paddlesla.io/v1",
        "kind": "Widget",
        "metadata": {"name": name},
        "spec": {"minReplicas": lo, "maxReplicas": hi},
    }


def test_crd_cel_rule_rejects_bad_object_and_accepts_good_one(
    cluster: Cluster, namespace: str, apply
) -> None:
    cluster.kubectl("apply", "-f", "-", input=json.dumps(widget_crd()))
    try:
        wait_for(
            lambda: _condition(cluster.get("crd", CRD_NAME), "Established") == "True",
            60,
            f"CRD {CRD_NAME} Established",
            dump=dump_objects(cluster, "crd", CRD_NAME),
        )
        # Discovery lags Established by a moment: retry the good object until the kind is known.
        wait_for(
            lambda: apply(widget("good", 1, 3), False).returncode == 0, 30, "the good Widget to be accepted"
        )
        assert cluster.get("widget", "good", "-n", namespace)["spec"] == {"minReplicas": 1, "maxReplicas": 3}

        bad = apply(widget("bad", 5, 2), False)
        assert bad.returncode != 0
        assert CEL_MESSAGE in bad.stderr, bad.stderr
        assert "spec" in bad.stderr, "the rejection names the field"
        assert cluster.kubectl("get", "widget", "bad", "-n", namespace, check=False).returncode != 0

        schema_bad = apply(widget("negative", -1, 2), False)
        assert schema_bad.returncode != 0 and "spec.minReplicas" in schema_bad.stderr, schema_bad.stderr
    finally:
        cluster.kubectl("delete", "crd", CRD_NAME, "--ignore-not-found", "--wait=false", check=False)


def test_owner_reference_gc_removes_children(cluster: Cluster, namespace: str, apply) -> None:
    apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owner"}, "data": {"k": "v"}})
    owner = cluster.get("configmap", "owner", "-n", namespace)
    ref = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": "owner",
        "uid": owner["metadata"]["uid"],
        "blockOwnerDeletion": True,
    }
    children = [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": f"child-{i}", "ownerReferences": [ref]},
        }
        for i in range(3)
    ]
    apply(children + [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "bystander"}}])
    apply(deployment("owned", replicas=1))
    wait_for(
        lambda: cluster.get("replicasets", "-n", namespace, "-l", "app=owned")["items"],
        60,
        "the Deployment's ReplicaSet",
        dump=dump_namespace(cluster, namespace),
    )

    cluster.kubectl("delete", "configmap", "owner", "-n", namespace)
    cluster.kubectl("delete", "deployment", "owned", "-n", namespace, "--cascade=foreground", "--wait=false")

    def names(kind: str) -> set[str]:
        return {o["metadata"]["name"] for o in cluster.get(kind, "-n", namespace)["items"]}

    wait_for(
        lambda: not {f"child-{i}" for i in range(3)} & names("configmaps"),
        60,
        "the garbage collector to delete the owner's children",
        dump=dump_namespace(cluster, namespace, kinds=("configmaps",)),
    )
    wait_for(
        lambda: not cluster.get("replicasets,pods", "-n", namespace, "-l", "app=owned")["items"],
        90,
        "foreground deletion of the Deployment's ReplicaSet and pods",
        dump=dump_namespace(cluster, namespace),
    )
    assert "bystander" in names("configmaps"), "objects without an owner reference survive"


def hpa(name: str, pods_target: dict) -> dict:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
            "minReplicas": 1,
            "maxReplicas": 5,
            "metrics": [
                {
                    "type": "Pods",
                    "pods": {"metric": {"name": "paddle_runtime_requests_per_second"}, "target": pods_target},
                },
                {
                    "type": "External",
                    "external": {
                        "metric": {
                            "name": "paddle_runtime_gpu_utilization_percent",
                            "selector": {"matchLabels": {"model": "ocr"}},
                        },
                        "target": {"type": "Value", "value": "70"},
                    },
                },
            ],
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 120}},
        },
    }


def test_hpa_v2_with_pods_and_external_metrics_is_accepted(cluster: Cluster, namespace: str, apply) -> None:
    apply(hpa("web", {"type": "AverageValue", "averageValue": "10"}))
    got = cluster.get("hpa.v2.autoscaling", "web", "-n", namespace)
    assert [m["type"] for m in got["spec"]["metrics"]] == ["Pods", "External"]
    assert got["spec"]["metrics"][1]["external"]["metric"]["selector"] == {"matchLabels": {"model": "ocr"}}

    # The server validates metric targets: a Pods metric takes an averageValue, not a utilization.
    bad = apply(hpa("bad", {"type": "Utilization", "averageUtilization": 50}), False)
    assert bad.returncode != 0
    assert "spec.metrics[0].pods.target.averageValue" in bad.stderr, bad.stderr


def test_helm_template_applies_with_server_dry_run(cluster: Cluster, namespace: str) -> None:
    chart = str(TESTDATA / "tiny-chart")
    rendered = cluster.helm("template", "smoke", chart, "--namespace", namespace).stdout
    assert "kind: Deployment" in rendered and "kind: HorizontalPodAutoscaler" in rendered

    out = cluster.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-", input=rendered).stdout
    assert "deployment.apps/smoke-tiny created (server dry run)" in out, out
    assert "horizontalpodautoscaler.autoscaling/smoke-tiny created (server dry run)" in out, out
    assert cluster.kubectl("get", "deployment", "smoke-tiny", "-n", namespace, check=False).returncode != 0, (
        "a dry run must not persist anything"
    )

    # The server, not the client, rejects what the schema forbids.
    bad = cluster.helm("template", "smoke", chart, "--namespace", namespace, "--set", "replicas=-1").stdout
    proc = cluster.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-", input=bad, check=False)
    assert proc.returncode != 0 and "spec.replicas" in proc.stderr, proc.stderr
