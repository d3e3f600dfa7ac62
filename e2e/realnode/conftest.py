"""Fixtures for tests on the real node: pod-spec pieces that put a pod there, run as the images do,
and prometheus-adapter serving the custom and resource metrics APIs from the session's Prometheus."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from e2e.cluster import Cluster
from e2e.cluster.adapter import Adapter, start_adapter
from e2e.cluster.prometheus import Prometheus

# The adapter's rate window (chart value prometheusAdapter.rules.rateWindow): 20 scrapes at the e2e
# Prometheus's 1 s interval, short so the HPA sees load arrive and leave within seconds.
ADAPTER_RATE_WINDOW_S = 20

# The Pod Security "restricted" container settings every pod of ours meets.
RESTRICTED = {
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "runAsGroup": 65532,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


@pytest.fixture
def on_real_node(cluster: Cluster, real_node: str) -> dict[str, Any]:
    """Pod-spec fields that schedule onto the real node (it is tainted against everything else)."""
    return {
        "nodeSelector": dict(Cluster.REAL_NODE_SELECTOR),
        "tolerations": [dict(t) for t in Cluster.REAL_NODE_TOLERATIONS],
    }


@pytest.fixture
def apply(cluster: Cluster, namespace: str) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``apply(obj_or_list)``: ``kubectl apply`` of dicts into the test namespace."""

    def _apply(objs: dict | list[dict], check: bool = True) -> subprocess.CompletedProcess[str]:
        items = objs if isinstance(objs, list) else [objs]
        doc = json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
        return cluster.kubectl("apply", "-n", namespace, "-f", "-", input=doc, check=check)

    return _apply


def image_ref(cluster: Cluster, name: str) -> str:
    """The reference of one of our images as imported into the real node (``paddle-runtime`` ...)."""
    assert cluster.local is not None
    refs = [ref for _, ref in cluster.local.node_images if f"/{name}:" in ref]
    assert refs, f"no {name} image among {cluster.local.node_images}"
    return refs[0]


@pytest.fixture(scope="session")
def adapter(
    cluster: Cluster, real_node: str, prometheus: Prometheus, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Adapter]:
    """prometheus-adapter with the chart's rules (resource rules on: the CPU path), started on first use."""
    a = start_adapter(
        cluster, prometheus.url, tmp_path_factory.mktemp("adapter"), rate_window=f"{ADAPTER_RATE_WINDOW_S}s"
    )
    try:
        yield a
    finally:
        a.stop()
