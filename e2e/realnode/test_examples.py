"""Every example 01-07 reconciled onto the real node by the Helm-installed operator, until its real pods
are Ready (not a dry run).

What cannot run here is swapped for the nearest thing that can, and each example's README says so:
no GPU (device cpu, the CPU image tag, no TensorRT / fp16 / GPU node selector) and no outside network
(model URIs become the same PP-OCRv4 models bundled in the runtime image, or a signed copy served from
the host end of the node link). Requests and replicas are scaled down to fit one shared 2-core node.
"""

from __future__ import annotations

import copy
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.cluster import Cluster
from e2e.realnode.pods import ROOT, Served, operated, record, serve_dir, signed_copy

pytestmark = pytest.mark.realnode

EXAMPLES = sorted(p.name for p in (ROOT / "examples").glob("0[1-7]-*"))
BUNDLED = "file:///opt/paddle-runtime/models/"
# Outside URIs in the examples -> the bundled model closest to each (same family, on CPU).
LOCAL_MODEL = {"det": "ch_PP-OCRv4_det_infer", "rec": "ch_PP-OCRv4_rec_infer"}
MAX_REPLICAS_HERE = 2


def _local_uri(uri: str) -> str:
    if uri.startswith("file://"):
        return uri
    return BUNDLED + LOCAL_MODEL["det" if "_det_" in uri else "rec"]


def cpu_local_variant(doc: dict[str, Any], served_url: str) -> dict[str, Any]:
    """The example as it can run on this machine (see the module docstring). ``served_url``: a copy
    of the rec model (signed when the example asks for a signature) served from the host."""
    doc = copy.deepcopy(doc)
    spec = doc["spec"]
    model = spec["model"]
    if "signature" in model or "fallback" in spec:
        # Signed models come over HTTP; a fallback must differ from the main URI (the CRD says so).
        model["uri"] = served_url
    else:
        model["uri"] = _local_uri(model["uri"])
    if "fallback" in spec:
        spec["fallback"]["uri"] = _local_uri(spec["fallback"]["uri"])
    inf = spec.setdefault("inference", {})
    if inf.get("device") == "gpu":
        inf["device"] = "cpu"
        for k in ("gpus", "tensorrt", "precision"):
            inf.pop(k, None)
        spec.pop("nodeSelector", None)
        spec.pop("tolerations", None)
        if (spec.get("autoscaling") or {}).pop("targetGPUUtilization", None) is not None:
            spec["autoscaling"].setdefault("targetCPUUtilization", 70)
    if "-gpu" in str(spec.get("tag", "")):
        spec["tag"] = "0.1.0-cpu"
    inf["cpuThreads"] = 1
    res = inf.setdefault("resources", {})
    res["requests"] = {"cpu": "100m", "memory": "256Mi"}
    res.setdefault("limits", {})["memory"] = "2Gi"
    if spec.get("replicas", 1) > MAX_REPLICAS_HERE:
        spec["replicas"] = MAX_REPLICAS_HERE
    auto = spec.get("autoscaling")
    if auto:
        auto["minReplicas"] = min(auto.get("minReplicas", 1), MAX_REPLICAS_HERE)
    return doc


@pytest.fixture(scope="module")
def example_ns(cluster: Cluster, real_node: str) -> Iterator[Served]:
    with operated(cluster, "rn-examples") as s:
        yield s


@pytest.mark.parametrize("example", EXAMPLES)
def test_example_reconciles_onto_the_real_node_with_ready_pods(
    example: str, example_ns: Served, cluster: Cluster, tmp_path: Path
) -> None:
    s = example_ns
    docs = [
        d
        for f in sorted((ROOT / "examples" / example).glob("*.yaml"))
        for d in yaml.safe_load_all(f.read_text())
        if d
    ]
    services = [d for d in docs if d.get("kind") == "PaddleModelService"]
    assert services, example
    assert cluster.local is not None and cluster.local.net is not None
    base = serve_dir(tmp_path / "www", cluster.local.net.host_ip)
    served_url = f"{next(base)}/model/"
    try:
        key = None
        for d in services:
            sig = (d["spec"]["model"].get("signature") or {}).get("hmacKeySecretRef")
            if sig:
                key = tmp_path / "hmac.key"
                key.write_text(uuid.uuid4().hex)
                cluster.kubectl(
                    "create", "secret", "generic", sig["name"], "-n", s.ns, f"--from-file={sig.get('key', 'hmac.key')}={key}"
                )  # fmt: skip
            tok = ((d["spec"].get("auth") or {}).get("tokenSecretRef")) or None
            if tok:
                cluster.kubectl(
                    "create", "secret", "generic", tok["name"], "-n", s.ns,
                    f"--from-literal={tok.get('key', 'token')}={uuid.uuid4().hex}",
                )  # fmt: skip
        signed_copy(tmp_path / "www" / "model", key, str(services[0]["spec"]["model"].get("version", "1")))
        figures = {}
        for d in services:
            variant = cpu_local_variant(d, served_url)
            name = variant["metadata"]["name"]
            t0 = time.monotonic()
            s.apply(variant)
            replicas = variant["spec"].get("replicas", 1)
            if variant["spec"].get("autoscaling"):
                replicas = variant["spec"]["autoscaling"].get("minReplicas", 1)
            s.wait_ready(name, timeout=600, replicas=replicas)
            figures[name] = {
                "ready_s": round(time.monotonic() - t0, 1),
                "pods": replicas,
                "changed": sorted(_diff_paths(d["spec"], variant["spec"])),
            }
        for d in services:
            cluster.kubectl("delete", "pms", d["metadata"]["name"], "-n", s.ns, "--wait=true", timeout=180)
        record(f"example {example}", figures)
    finally:
        base.close()
        cluster.kubectl("delete", "secrets", "--all", "-n", s.ns, check=False)


def _diff_paths(a: Any, b: Any, prefix: str = "spec") -> set[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: set[str] = set()
        for k in set(a) | set(b):
            out |= _diff_paths(a.get(k), b.get(k), f"{prefix}.{k}")
        return out
    return set() if a == b else {prefix}
