"""A batching change on a running resource reaches the running runtime (no pod restart)."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest
import yaml

from e2e.cluster import Cluster
from e2e.demo import EXAMPLE, condition, install_operator, restricted_namespace
from e2e.util import dump_namespace, service_address, wait_for

pytestmark = pytest.mark.realnode


def _version(address: str) -> dict:
    with urllib.request.urlopen(f"http://{address}/version", timeout=10) as resp:
        return json.loads(resp.read())


def test_max_batch_size_change_is_used_by_the_running_runtime(
    cluster: Cluster, namespace: str, real_node: str
) -> None:
    restricted_namespace(cluster, namespace)
    install_operator(cluster, f"{namespace}-op", namespace, timeout=300)
    try:
        (pms,) = [d for d in yaml.safe_load_all((EXAMPLE / "paddlemodelservice.yaml").read_text()) if d]
        name = pms["metadata"]["name"]
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(pms))
        dump = dump_namespace(cluster, namespace)
        wait_for(
            lambda: condition(cluster.get("pms", name, "-n", namespace), "Ready").get("status") == "True",
            300,
            "the example Ready on the real node",
            dump=dump,
        )
        address = service_address(cluster, namespace, name)
        before = wait_for(lambda: _version(address), 60, "/version through the Service")
        assert before["batching"]["maxBatchSize"] == pms["spec"]["inference"]["maxBatchSize"] == 8
        (pod,) = cluster.get("pods", "-n", namespace, "-l", f"serving.paddlesla.io/service={name}")["items"]

        t0 = time.monotonic()
        cluster.kubectl(
            "patch", "pms", name, "-n", namespace, "--type=merge",
            "-p", json.dumps({"spec": {"inference": {"maxBatchSize": 2, "batchTimeoutMs": 3}}}),
        )  # fmt: skip
        after = wait_for(
            lambda: (v := _version(address))["batching"]["maxBatchSize"] == 2 and v,
            180,
            "the runtime reporting maxBatchSize 2",
            dump=dump,
        )
        print(f"maxBatchSize 8 -> 2 applied by the running runtime {time.monotonic() - t0:.1f} s after the patch")
        assert after["batching"]["batchTimeoutMs"] == 3
        (now,) = cluster.get("pods", "-n", namespace, "-l", f"serving.paddlesla.io/service={name}")["items"]
        assert now["metadata"]["uid"] == pod["metadata"]["uid"], "the pod was replaced, not reconfigured"
        assert all(c["restartCount"] == 0 for c in now["status"]["containerStatuses"])
    finally:
        cluster.helm("uninstall", "paddle-operator", "--namespace", f"{namespace}-op", check=False)
        cluster.kubectl("delete", "namespace", f"{namespace}-op", "--wait=false", check=False)
