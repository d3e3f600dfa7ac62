"""Fixtures for the packaging e2e tests: the repository's CRDs installed and established."""

from __future__ import annotations

from pathlib import Path

import pytest

from e2e.cluster import Cluster
from e2e.util import dump_objects, wait_for

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "paddle-operator"
CRD_NAME = "paddlemodelservices.serving.paddlesla.io"


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


def _established(cluster: Cluster) -> bool:
    conditions = cluster.get("crd", CRD_NAME).get("status", {}).get("conditions") or []
    return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)
