"""The operator against the real local control plane: create, Ready, update, drift, delete, failures.

kwok plays the kubelets, so Deployments roll out and become Available without running containers;
everything else (API server validation and defaulting, server-side apply, garbage collection, the
Deployment and HPA controllers) is the real thing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from e2e.util import dump_namespace, wait_for

from .conftest import ROOT, OperatorProcess, apply_yaml, condition, get_json, wait_ready

EXAMPLE = ROOT / "examples" / "01-minimal" / "paddlemodelservice.yaml"
NAME = "ppocr-rec"
CHILDREN = [
    ("configmap", f"{NAME}-runtime"),
    ("deployment", NAME),
    ("service", NAME),
    ("horizontalpodautoscaler", NAME),
    ("poddisruptionbudget", NAME),
]


def _example() -> str:
    return Path(EXAMPLE).read_text()


def _owned_by(obj: dict[str, Any] | None, uid: str) -> bool:
    refs = ((obj or {}).get("metadata") or {}).get("ownerReferences") or []
    return any(r.get("uid") == uid and r.get("controller") for r in refs)


def _dump(cluster: Any, ns: str, op: OperatorProcess):
    d = dump_namespace(cluster, ns)
    return lambda: d() + "\n---- operator log (tail) ----\n" + op.log()[-4000:]


def test_minimal_example_gets_owned_children_and_becomes_ready(
    cluster: Any, operator: OperatorProcess, ns: str
) -> None:
    cluster.kubectl("apply", "-n", ns, "-f", str(EXAMPLE))
    pms = wait_ready(cluster, ns, NAME, operator)
    uid = pms["metadata"]["uid"]
    for kind, name in CHILDREN:
        assert _owned_by(get_json(cluster, kind, name, "-n", ns), uid), f"{kind}/{name} not owned by the pms"
    st = pms["status"]
    assert st["observedGeneration"] == pms["metadata"]["generation"]
    assert st["tag"] == "0.1.0-cpu"
    # kwok pods report nothing and no Prometheus is configured: the version is not echoed from the spec.
    assert "modelVersion" not in st
    assert st["url"] == f"http://{NAME}.{ns}.svc:8080"
    assert condition(pms, "Available")["status"] == "True"
    assert condition(pms, "ReconcileError")["status"] == "False"
    dep = get_json(cluster, "deployment", NAME, "-n", ns)
    assert condition(dep, "Available")["status"] == "True"
    pod = dep["spec"]["template"]["spec"]
    assert pod["initContainers"][0]["args"][:2] == ["fetch", "--uri"]
    assert pod["containers"][0]["args"][:3] == ["serve", "--model-dir", "/models/main"]

    # The truth writer's first pass: no Prometheus here, so ModelCurrent is Unknown and MODEL stays empty.
    mc = wait_for(
        lambda: next((c for c in get_json(cluster, "pms", NAME, "-n", ns)["status"].get("conditions", [])
                      if c["type"] == "ModelCurrent"), None),
        30,
        "ModelCurrent written",
    )
    assert (mc["status"], mc["reason"]) == ("Unknown", "NoPrometheus")
    table = cluster.kubectl("get", "pms", "-n", ns).stdout
    header = table.splitlines()[0].split()
    # The columns, in order (the rollout adds its own columns before AGE).
    assert header[:7] == ["NAME", "READY", "TAG", "REPLICAS", "MODEL", "P99/TARGET", "FALLBACK"], table
    assert header[-1] == "AGE", table
    row = table.splitlines()[1].split()
    assert row[:4] == [NAME, "True", "0.1.0-cpu", "1/1"], table
    head, line = table.splitlines()[:2]

    def cell(col: str, nxt: str) -> str:
        return line[head.index(col):head.index(nxt)].strip()

    assert cell("MODEL", "P99/TARGET") == "" and cell("FALLBACK", "ROLLOUT") == "Off", table
    print(table)

    # The HPA cannot read CPU metrics (no metrics-server here): that is read back as a warning.
    wait_for(
        lambda: any(
            "ScalingActive=False" in w for w in get_json(cluster, "pms", NAME, "-n", ns)["status"]["warnings"]
        ),
        90,
        "HPA warning in status.warnings",
        dump=_dump(cluster, ns, operator),
    )


def test_changed_fields_patch_children_and_optional_children_are_pruned(
    cluster: Any, operator: OperatorProcess, ns: str
) -> None:
    cluster.kubectl("apply", "-n", ns, "-f", str(EXAMPLE))
    wait_ready(cluster, ns, NAME, operator)
    patch = {
        "spec": {
            "inference": {"maxBatchSize": 32, "cpuThreads": 4},
            "autoscaling": {"enabled": False},
            "replicas": 2,
            "sla": {"availability": None},
        }
    }
    cluster.kubectl("patch", "pms", NAME, "-n", ns, "--type", "merge", "-p", json.dumps(patch))

    def patched() -> bool:
        cm = get_json(cluster, "configmap", f"{NAME}-runtime", "-n", ns)
        dep = get_json(cluster, "deployment", NAME, "-n", ns)
        env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
        return (
            yaml.safe_load(cm["data"]["config.yaml"])["max_batch_size"] == 32
            and env.get("PADDLE_RUNTIME_CPU_THREADS") == "4"
            and dep["spec"]["replicas"] == 2
            and get_json(cluster, "hpa", NAME, "-n", ns) is None
            and get_json(cluster, "pdb", NAME, "-n", ns) is None
        )

    wait_for(patched, 60, "children patched, HPA and PDB pruned", dump=_dump(cluster, ns, operator))
    pms = wait_for(
        lambda: (
            (p := get_json(cluster, "pms", NAME, "-n", ns))["status"].get("replicaSummary") == "2/2" and p
        ),
        60,
        "2/2 replicas in status",
        dump=_dump(cluster, ns, operator),
    )
    assert pms["status"]["observedGeneration"] == pms["metadata"]["generation"]

    # The scale subresource drives spec.replicas, which drives the Deployment.
    cluster.kubectl("scale", "pms", NAME, "-n", ns, "--replicas=3")
    wait_for(
        lambda: get_json(cluster, "deployment", NAME, "-n", ns)["spec"]["replicas"] == 3,
        60,
        "kubectl scale pms reaches the Deployment",
        dump=_dump(cluster, ns, operator),
    )


def test_hand_edited_children_are_restored(cluster: Any, operator: OperatorProcess, ns: str) -> None:
    cluster.kubectl("apply", "-n", ns, "-f", str(EXAMPLE))
    wait_ready(cluster, ns, NAME, operator)
    original_uri = get_json(cluster, "configmap", f"{NAME}-runtime", "-n", ns)["data"]["model-uri"]
    cluster.kubectl("set", "image", f"deployment/{NAME}", "runtime=attacker/evil:1", "-n", ns)
    cluster.kubectl(
        "patch",
        "configmap",
        f"{NAME}-runtime",
        "-n",
        ns,
        "--type",
        "merge",
        "-p",
        '{"data": {"model-uri": "https://example.com/other"}}',
    )
    cluster.kubectl("patch", "hpa", NAME, "-n", ns, "--type", "merge", "-p", '{"spec": {"maxReplicas": 50}}')
    cluster.kubectl("delete", "service", NAME, "-n", ns)

    def restored() -> bool:
        dep = get_json(cluster, "deployment", NAME, "-n", ns)
        cm = get_json(cluster, "configmap", f"{NAME}-runtime", "-n", ns)
        hpa = get_json(cluster, "hpa", NAME, "-n", ns)
        svc = get_json(cluster, "service", NAME, "-n", ns)
        return (
            dep["spec"]["template"]["spec"]["containers"][0]["image"]
            == "ghcr.io/paddle-sla/paddle-runtime:0.1.0-cpu"
            and cm["data"]["model-uri"] == original_uri
            and hpa["spec"]["maxReplicas"] == 3
            and svc is not None
        )

    wait_for(
        restored,
        60,
        "hand edits reverted and the deleted Service recreated",
        dump=_dump(cluster, ns, operator),
    )
    events = cluster.kubectl("get", "events", "-n", ns, "--field-selector", "reason=DriftRestored").stdout
    assert "DriftRestored" in events


def test_deleting_the_resource_removes_its_children(cluster: Any, operator: OperatorProcess, ns: str) -> None:
    cluster.kubectl("apply", "-n", ns, "-f", str(EXAMPLE))
    wait_ready(cluster, ns, NAME, operator)
    cluster.kubectl("delete", "pms", NAME, "-n", ns, "--wait=true", timeout=60)

    def gone() -> bool:
        return all(get_json(cluster, kind, name, "-n", ns) is None for kind, name in CHILDREN)

    wait_for(gone, 90, "children garbage-collected", dump=_dump(cluster, ns, operator))
    # Nothing came back: the drift handler must not resurrect children of a deleted owner.
    wait_for(
        lambda: cluster.kubectl("get", "pods", "-n", ns, "-o", "name").stdout.strip() == "",
        60,
        "pods gone",
        dump=_dump(cluster, ns, operator),
    )
    assert all(get_json(cluster, kind, name, "-n", ns) is None for kind, name in CHILDREN)


def test_missing_secret_reports_ready_false_then_recovers(
    cluster: Any, operator: OperatorProcess, ns: str
) -> None:
    apply_yaml(
        cluster,
        ns,
        """
apiVersion: serving.paddlesla.io/v1alpha1
kind: PaddleModelService
metadata: {name: signed}
spec:
  model:
    uri: https://models.example.com/ocr.tar.gz
    signature: {hmacKeySecretRef: {name: model-hmac}}
""",
    )

    def not_ready() -> dict[str, Any] | None:
        c = condition(get_json(cluster, "pms", "signed", "-n", ns), "Ready")
        return c if c is not None and c["status"] == "False" and c["reason"] == "SecretNotFound" else None

    c = wait_for(not_ready, 60, "Ready=False SecretNotFound", dump=_dump(cluster, ns, operator))
    assert "spec.model.signature.hmacKeySecretRef" in c["message"] and "model-hmac" in c["message"]
    events = wait_for(
        lambda: (
            (
                out := cluster.kubectl(
                    "get", "events", "-n", ns, "--field-selector", "reason=SecretNotFound,type=Warning"
                ).stdout
            )
            and "model-hmac" in out
            and out
        ),
        30,
        "a Warning event",
        dump=_dump(cluster, ns, operator),
    )
    assert "signed" in events
    # Nothing that would start pods without their key was created.
    assert get_json(cluster, "deployment", "signed", "-n", ns) is None
    cluster.kubectl("create", "secret", "generic", "model-hmac", "-n", ns, "--from-literal=hmac.key=s3cret")
    # Rechecked by the rollout loop every PADDLE_OPERATOR_BLOCKED_RECHECK_S (20 s), not by kopf's
    # delayed retry (docs/operator.md): recovers within a period or two.
    wait_ready(cluster, ns, "signed", operator, timeout=150)
    failures = operator.log().count(f"{ns}/signed] Handler 'pms_reconcile' failed temporarily")
    assert failures == 0, f"{failures} kopf retries: a blocked resource must be left to the recheck"


def test_operator_killed_mid_reconcile_converges_without_duplicates(
    cluster: Any, operator: OperatorProcess, ns: str
) -> None:
    names = [f"svc-{i}" for i in range(12)]
    docs = []
    for name in names:
        body = yaml.safe_load(_example())
        body["metadata"]["name"] = name
        docs.append(yaml.safe_dump(body))
    cluster.kubectl("apply", "-n", ns, "-f", "-", input="---\n".join(docs))
    # Kill as soon as the first children appear: some resources are done, some half-done, some untouched.
    wait_for(
        lambda: cluster.kubectl(
            "get",
            "configmaps,deployments",
            "-n",
            ns,
            "-l",
            "app.kubernetes.io/managed-by=paddle-sla-operator",
            "-o",
            "name",
        ).stdout.strip(),
        30,
        "first children",
        interval=0.05,
    )
    operator.kill()
    half = cluster.kubectl("get", "deployments", "-n", ns, "-o", "name").stdout.split()
    operator.start()
    for name in names:
        wait_ready(cluster, ns, name, operator, timeout=90)
    for plural in (
        "deployments",
        "services",
        "configmaps",
        "horizontalpodautoscalers",
        "poddisruptionbudgets",
    ):
        items = cluster.get(plural, "-n", ns, "-l", "app.kubernetes.io/managed-by=paddle-sla-operator")[
            "items"
        ]
        owners = [i["metadata"]["labels"]["serving.paddlesla.io/service"] for i in items]
        assert sorted(owners) == sorted(names), f"{plural}: {owners}"
    pods = cluster.get("pods", "-n", ns)["items"]
    assert len(pods) == len(names), [p["metadata"]["name"] for p in pods]
    print(f"killed with {len(half)}/{len(names)} Deployments created; converged after restart")
