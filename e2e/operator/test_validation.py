"""The real API server rejects invalid PaddleModelServices, and its message names the field.

Each case mutates one valid base object; the base itself is accepted (a server-side dry run), so a
rejection can only come from the mutation.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

BASE: dict[str, Any] = {
    "apiVersion": "serving.paddlesla.io/v1alpha1",
    "kind": "PaddleModelService",
    "metadata": {"name": "valid"},
    "spec": {
        "model": {"uri": "s3://models/ocr"},
        "inference": {"device": "cpu"},
        "autoscaling": {"minReplicas": 1, "maxReplicas": 3},
        "sla": {"latencyP99Ms": 200, "availability": "99.9"},
    },
}


def _set(obj: dict[str, Any], path: str, value: Any) -> None:
    keys = path.split(".")
    for k in keys[:-1]:
        obj = obj.setdefault(k, {})
    if value is _DELETE:
        obj.pop(keys[-1], None)
    else:
        obj[keys[-1]] = value


_DELETE = object()

# (mutations, text the API server's message must contain)
INVALID = [
    ({"spec.autoscaling.minReplicas": 5, "spec.autoscaling.maxReplicas": 2}, "spec.autoscaling.maxReplicas"),
    ({"spec.inference.device": "gpu", "spec.inference.gpus": 0}, "spec.inference.gpus"),
    ({"spec.inference.gpus": 1}, "spec.inference.gpus"),
    ({"spec.inference.tensorrt": True}, "spec.inference.tensorrt"),
    ({"spec.inference.precision": "fp16"}, "spec.inference.precision"),
    (
        {"spec.fallback": {"uri": "s3://models/small", "latencyThresholdMs": 500}},
        "spec.fallback.latencyThresholdMs",
    ),
    ({"spec.fallback": {"uri": "s3://models/ocr"}}, "spec.fallback.uri"),
    (
        {"spec.fallback": {"uri": "s3://models/small", "recoverySteps": [10, 50]}},
        "spec.fallback.recoverySteps must end with 100",
    ),
    (
        {"spec.fallback": {"uri": "s3://models/small", "recoverySteps": [60, 30, 100]}},
        "spec.fallback.recoverySteps must increase",
    ),
    ({"spec.fallback": {"uri": "s3://models/small", "errorThreshold": 0.05}}, "spec.fallback.errorThreshold"),
    ({"spec.autoscaling.targetGPUUtilization": 60}, "spec.autoscaling.targetGPUUtilization"),
    ({"spec.model.uri": "ftp://models/ocr"}, "spec.model.uri"),
    ({"spec.model": _DELETE}, "spec.model"),
    ({"spec.model.preload": {"medium": "Memory"}}, "spec.model.preload.sizeLimit"),
    ({"spec.model.signature": {}}, "spec.model.signature"),
    ({"spec.sla.availability": "150"}, "spec.sla.availability"),
    ({"spec.rollout": {"steps": [10, 50]}}, "spec.rollout.steps"),
    ({"spec.rollout": {"steps": [30, 10, 100]}}, "spec.rollout.steps must increase"),
    ({"spec.inference.device": "tpu"}, "spec.inference.device"),
    ({"spec.replicas": -1}, "spec.replicas"),
    ({"spec.inference.maxBatchSize": 0}, "spec.inference.maxBatchSize"),
    ({"metadata.name": "a" * 57}, "metadata.name"),
    ({"spec.rollout": {"analysis": {"maxLatencyP99Ms": 900}}}, "spec.rollout.analysis.maxLatencyP99Ms"),
    (
        {"spec.autoscaling.scaleDownStabilizationSeconds": 7200},
        "spec.autoscaling.scaleDownStabilizationSeconds",
    ),
]


def _mutated(mutations: dict[str, Any]) -> dict[str, Any]:
    obj = copy.deepcopy(BASE)
    for path, value in mutations.items():
        _set(obj, path, value)
    return obj


@pytest.fixture(scope="module")
def ns(cluster: Any, crd_installed: None) -> Iterator[str]:
    """One namespace for the whole module: nothing is ever stored in it."""
    name = f"pmsval-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


def test_base_object_is_valid(cluster: Any, crd_installed: None, ns: str) -> None:
    out = cluster.kubectl("create", "--dry-run=server", "-n", ns, "-f", "-", input=yaml.safe_dump(BASE))
    assert "created (server dry run)" in out.stdout, out.stdout


@pytest.mark.parametrize(("mutations", "field"), INVALID, ids=[f for _, f in INVALID])
def test_invalid_resource_is_rejected_naming_the_field(
    cluster: Any, crd_installed: None, ns: str, mutations: dict[str, Any], field: str
) -> None:
    obj = _mutated(mutations)
    proc = cluster.kubectl("create", "-n", ns, "-f", "-", input=yaml.safe_dump(obj), check=False)
    assert proc.returncode != 0, f"accepted: {obj}"
    assert "is invalid" in proc.stderr, proc.stderr
    assert field in proc.stderr, proc.stderr
    assert cluster.kubectl("get", "pms", "-n", ns, "-o", "name").stdout.strip() == ""


def test_at_least_ten_invalid_cases() -> None:
    assert len(INVALID) >= 10
