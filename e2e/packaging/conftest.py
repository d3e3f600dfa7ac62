"""Fixtures for the packaging e2e tests: our CRDs, and the add-on CRDs our manifests target.

The add-on CRDs (Argo CD's Application, the Prometheus Operator's ServiceMonitor) come from their
upstream Go modules through the Go module proxy, like the router CRDs of the canary tests
(``e2e/cluster/gocrds.py``), so the API server validates our manifests against the real schemas.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from e2e.cluster import Cluster, pinned_versions
from e2e.cluster.gocrds import CRDSource, crd_files
from e2e.util import dump_objects, wait_for

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "paddle-operator"
CRD_NAME = "paddlemodelservices.serving.paddlesla.io"
# The Argo CD the GitOps e2e runs (e2e/go/argocd is the one pin).
ARGOCD = CRDSource(
    "argo-cd",
    "github.com/argoproj/argo-cd/v3",
    pinned_versions()["argocd"],
    ("manifests/crds/application-crd.yaml",),
)
PROMETHEUS_OPERATOR = CRDSource(
    "prometheus-operator",
    "github.com/prometheus-operator/prometheus-operator",
    "v0.85.0",
    (
        "example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml",
        "example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml",
    ),
)


@pytest.fixture(scope="session")
def crds(cluster: Cluster) -> str:
    """`kubectl apply --server-side -f crds/` (as the install docs say), then wait for Established."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    # Polled rather than `kubectl wait`, which errors while the new CRD has no conditions yet.
    wait_for(
        lambda: _established(cluster),
        60,
        f"CRD {CRD_NAME} Established",
        dump=dump_objects(cluster, "crd", CRD_NAME),
    )
    return CRD_NAME


def _established(cluster: Cluster, name: str = CRD_NAME) -> bool:
    conditions = cluster.get("crd", name).get("status", {}).get("conditions") or []
    return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)


def _kinds_in_group(cluster: Cluster, group: str) -> list[str]:
    out = cluster.kubectl("api-resources", f"--api-group={group}", "--no-headers", check=False).stdout
    return [word for line in out.splitlines() for word in line.split()]


def _install_addon(cluster: Cluster, source: CRDSource) -> None:
    for path in crd_files(source):
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path), timeout=120)
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                name, group = doc["metadata"]["name"], doc["spec"]["group"]
                kind = doc["spec"]["names"]["kind"]
                wait_for(lambda n=name: _established(cluster, n), 60, f"CRD {name} Established")
                # Established comes before discovery serves the kind; clients need the latter.
                wait_for(
                    lambda g=group, k=kind: k in _kinds_in_group(cluster, g), 60, f"{kind} in API discovery"
                )


@pytest.fixture(scope="session")
def argocd_crds(cluster: Cluster) -> None:
    """Argo CD's Application CRD (pinned), to validate examples/argocd/."""
    _install_addon(cluster, ARGOCD)


@pytest.fixture(scope="session")
def servicemonitor_crd(cluster: Cluster) -> None:
    """The Prometheus Operator's ServiceMonitor and PrometheusRule CRDs (pinned), for the chart's monitoring objects."""
    _install_addon(cluster, PROMETHEUS_OPERATOR)
