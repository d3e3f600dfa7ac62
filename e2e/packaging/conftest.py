"""Fixtures for the packaging e2e tests: the repository's CRDs installed and established."""

from __future__ import annotations

from pathlib import Path

import pytest

from e2e.cluster import Cluster

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "paddle-operator"
CRD_NAME = "paddlemodelservices.serving.paddlesla.io"


@pytest.fixture(scope="session")
def crds(cluster: Cluster) -> str:
    """`kubectl apply --server-side -f crds/` (as the install docs say), then wait for Established."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", f"crd/{CRD_NAME}", "--timeout=60s", timeout=90)
    return CRD_NAME
