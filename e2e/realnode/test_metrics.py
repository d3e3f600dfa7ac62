"""The metrics path as users run it: Prometheus discovers the real pods with the scrape config users
are given (``deploy/prometheus/scrape-config.yaml``), every series carries the labels the operator
queries, and the Helm-installed operator reads them back into ``status.sla``."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from e2e.cluster import Cluster
from e2e.cluster.prometheus import Prometheus
from e2e.demo import infer, text_image
from e2e.realnode.pods import MODEL, Load, Served, pms, watched_namespaces
from e2e.util import wait_for

pytestmark = pytest.mark.realnode


@pytest.fixture(scope="module")
def metrics_ns(cluster: Cluster, real_node: str, prometheus: Prometheus) -> Iterator[Served]:
    suffix = uuid.uuid4().hex[:4]
    ns, op_ns = f"rn-metrics-{suffix}", f"rn-metrics-op-{suffix}"
    try:
        watched_namespaces(
            cluster, [ns], op_ns, values=(f"settings.prometheus_url={prometheus.url}", "settings.sla_period_s=5")
        )
        yield Served(cluster, ns, op_ns)
    finally:
        cluster.helm("uninstall", "paddle-operator", "--namespace", op_ns, check=False)
        for n in (ns, op_ns):
            cluster.kubectl("delete", "namespace", n, "--wait=false", "--ignore-not-found", check=False)


def test_prometheus_discovers_the_real_pods_and_the_operator_reads_their_sla(
    metrics_ns: Served, prometheus: Prometheus
) -> None:
    s = metrics_ns
    s.apply(pms("scraped", sla={"latencyP99Ms": 5000}))
    s.wait_ready("scraped")
    (pod,) = s.ready_pods("scraped")
    pod_name = pod["metadata"]["name"]
    address = s.address("scraped")
    for _ in range(5):
        text, _, _ = infer(address, MODEL, text_image())
        assert text == "PaddleSLA 2026"

    # Discovered (no static target), scraped healthy, with the operator's labels from the pod's.
    selector = f'namespace="{s.ns}",service="scraped",track="stable",pod="{pod_name}"'

    def counted() -> float | None:
        rows = prometheus.query(f"sum(paddle_runtime_requests_total{{{selector}}})")
        return float(rows[0]["value"][1]) if rows and float(rows[0]["value"][1]) >= 5 else None

    wait_for(counted, 120, "the pod's request counter in Prometheus", dump=prometheus.dump, interval=2)
    targets = [t for t in prometheus.targets() if t["labels"].get("pod") == pod_name]
    assert len(targets) == 1 and targets[0]["health"] == "up", targets
    assert targets[0]["discoveredLabels"].get("__meta_kubernetes_pod_ip") == pod["status"]["podIP"]

    # The operator (a pod on the node) reaches the same Prometheus and writes status.sla from it,
    # while a light load keeps the rate windows filled.
    def sla() -> dict | None:
        got = s.get("pms", "scraped").get("status", {}).get("sla") or {}
        return got if got.get("p99Ms") is not None and got.get("qps") else None

    load = Load(address, threads=1).start()
    try:
        got = wait_for(sla, 180, "status.sla filled from Prometheus", dump=s.dump, interval=3)
    finally:
        figures = load.stop()
    assert 0 < got["p99Ms"] < 5000 and got["qps"] > 0, got
    assert figures["failed"] == 0, figures
