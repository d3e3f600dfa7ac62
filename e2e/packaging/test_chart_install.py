"""The Helm chart against the real API server: lint, render, install, uninstall cleanly."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import yaml

from e2e.cluster import Cluster
from e2e.util import dump_namespace, wait_for

from .conftest import CHART

CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))


def _served_kinds(cluster: Cluster) -> set[str]:
    out = cluster.kubectl("api-resources", "--no-headers").stdout
    return {_kind_of(line) for line in out.splitlines() if line.strip()}


def _kind_of(line: str) -> str:
    # Columns: NAME [SHORTNAMES] APIVERSION NAMESPACED KIND; KIND follows the true/false column.
    cols = line.split()
    for i, col in enumerate(cols):
        if col in ("true", "false"):
            return cols[i + 1]
    return ""


def test_helm_lint_passes_for_defaults_and_every_ci_scenario(cluster: Cluster):
    for extra in [[]] + [["-f", str(values)] for values in CI_VALUES]:
        out = cluster.helm("lint", "--strict", str(CHART), *extra)
        assert "0 chart(s) failed" in out.stdout, out.stdout


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_rendered_chart_is_accepted_by_the_api_server(
    cluster: Cluster, namespace: str, crds: str, servicemonitor_crd: None, values: Path
):
    """`helm template -f ci/<scenario>` then a server-side dry-run of every object (schemas, RBAC refs)."""
    ci = yaml.safe_load(values.read_text()) or {}
    # The scenario's watched namespaces and adapter namespace must exist: point them at ours.
    overrides = ["--set", f"prometheusAdapter.rules.namespace={namespace}"]
    if ci.get("watchNamespaces"):
        overrides += ["--set", f"watchNamespaces={{{namespace}}}"]
    rendered = cluster.helm(
        "template",
        "pkg",
        str(CHART),
        "-n",
        namespace,
        "--skip-crds",
        "-f",
        str(values),
        *overrides,
    ).stdout
    objs = [o for o in yaml.safe_load_all(rendered) if o]
    served = _served_kinds(cluster)
    assert {o["kind"] for o in objs} <= served, "the chart renders kinds the API server does not know"
    doc = json.dumps({"apiVersion": "v1", "kind": "List", "items": objs})
    out = cluster.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-", input=doc)
    assert out.stdout.count("(server dry run)") == len(objs), out.stdout


def _release_objects(cluster: Cluster, release: str, namespace: str) -> list[str]:
    """Everything the release created, namespaced and cluster-scoped, found by its instance label."""
    selector = f"app.kubernetes.io/instance={release}"
    kinds = "deployments,serviceaccounts,roles,rolebindings,configmaps"
    names = cluster.kubectl("get", kinds, "-n", namespace, "-l", selector, "-o", "name").stdout.split()
    cluster_kinds = "clusterroles,clusterrolebindings"
    names += cluster.kubectl("get", cluster_kinds, "-l", selector, "-o", "name").stdout.split()
    return names


@pytest.mark.parametrize("mode", ["cluster-wide", "namespaced"])
def test_helm_install_then_uninstall_leaves_nothing_behind(
    cluster: Cluster, namespace: str, crds: str, mode: str
):
    release = f"pkg-{uuid.uuid4().hex[:6]}"
    args = ["install", release, str(CHART), "-n", namespace, "--wait", "--timeout", "120s"]
    if mode == "namespaced":
        args += ["--set", f"watchNamespaces={{{namespace}}}"]
    # Pod Security "restricted" enforced by the API server's admission: a non-conforming operator pod
    # would be refused and `helm install --wait` would time out.
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    try:
        notes = cluster.helm(*args, timeout=180).stdout.split("NOTES:", 1)[1]
        watching = "every namespace" if mode == "cluster-wide" else f"only: {namespace}."
        assert watching in notes and f"rollout status deployment/{release}-paddle-operator" in notes, notes
        deploy = cluster.get("deployment", "-n", namespace, "-l", f"app.kubernetes.io/instance={release}")
        (item,) = deploy["items"]
        assert item["status"].get("availableReplicas") == 1
        # The operator's identity can do its job, and only where it should (real RBAC evaluation).
        sa = f"system:serviceaccount:{namespace}:{item['spec']['template']['spec']['serviceAccountName']}"

        def can(verb: str, resource: str, ns: str | None = namespace) -> bool:
            where = ["-n", ns] if ns else []
            out = cluster.kubectl("auth", "can-i", verb, resource, "--as", sa, *where, check=False)
            return out.stdout.strip() == "yes"

        assert can("patch", "paddlemodelservices.serving.paddlesla.io")
        assert can("update", "paddlemodelservices.serving.paddlesla.io/status")
        assert can("create", "deployments.apps")
        assert can("delete", "horizontalpodautoscalers.autoscaling")
        assert can("get", "secrets")
        assert not can("list", "secrets"), "the operator only checks that a Secret exists"
        assert not can("create", "pods")
        assert can("watch", "customresourcedefinitions.apiextensions.k8s.io", None)
        elsewhere = "kube-system"
        assert can("list", "paddlemodelservices.serving.paddlesla.io", elsewhere) is (mode == "cluster-wide")
        assert _release_objects(cluster, release, namespace)
    except Exception:
        print(dump_namespace(cluster, namespace)())
        raise
    finally:
        uninstall = cluster.helm(
            "uninstall", release, "-n", namespace, "--wait", "--timeout", "120s", check=False
        )
    assert uninstall.returncode == 0, uninstall.stderr
    wait_for(
        lambda: not _release_objects(cluster, release, namespace),
        60,
        f"objects of release {release} to be gone",
        dump=lambda: "\n".join(_release_objects(cluster, release, namespace)),
    )
    # Helm never deletes CRDs (and must not: that would delete every PaddleModelService).
    assert cluster.kubectl("get", "crd", crds, check=False).returncode == 0
