"""Golden-manifest tests over the production plan (``plan.build_children``), builder by builder.

Each case's children, as the reconcile would apply them, are rendered and compared with
tests/operator/golden/<case>/<kind>-<name>.yaml; ``full`` also mid-canary (30 %, Service router).
After an intended change, regenerate with ``UPDATE_GOLDEN=1 pytest tests/operator`` and review the
diff like code. Behaviour tests below pin the rules the goldens merely record.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import yaml
from pms_cases import GOLDEN, ROOT, load_case

from paddle_operator.builders import (
    build_configmap,
    build_deployment,
    build_hpa,
    build_pdb,
    build_service,
)
from paddle_operator.plan import build_children, shape_from_status
from paddle_operator.spec import MAX_NAME_LENGTH, PaddleModelService


def planned_children(svc: PaddleModelService) -> list[dict[str, Any]]:
    """What the reconcile applies for ``svc`` with the rollout shape its status records."""
    shape, _state = shape_from_status(svc)
    return build_children(svc, shape)


def _mid_canary(svc: PaddleModelService) -> PaddleModelService:
    status = {"stableTag": "0.1.0-cpu", "rollout": {"phase": "Progressing", "tag": svc.spec.tag, "step": 2, "weight": 30}}
    return svc.model_copy(update={"status": status})


def _golden_name(obj: dict[str, Any]) -> str:
    return f"{obj['kind'].lower()}-{obj['metadata']['name']}.yaml"


def _check_golden(case: str, obj: dict[str, Any]) -> None:
    path = GOLDEN / case / _golden_name(obj)
    rendered = yaml.safe_dump(obj, sort_keys=False)
    if os.environ.get("UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(rendered)
    assert path.exists(), f"no golden file {path}; run with UPDATE_GOLDEN=1"
    assert yaml.safe_load(rendered) == yaml.safe_load(path.read_text()), f"{path} differs from the builder output"


def test_children_match_golden_manifests(case: tuple[str, PaddleModelService]) -> None:
    name, svc = case
    children = planned_children(svc)
    for child in children:
        _check_golden(name, child)
    # No stale golden files: every file in the case directory is still produced.
    produced = {_golden_name(c) for c in children}
    on_disk = {p.name for p in (GOLDEN / name).glob("*.yaml")}
    assert on_disk == produced


def test_mid_canary_children_match_golden_manifests() -> None:
    svc = _mid_canary(load_case("full"))
    children = planned_children(svc)
    for child in children:
        _check_golden("full-canary", child)
    assert {p.name for p in (GOLDEN / "full-canary").glob("*.yaml")} == {_golden_name(c) for c in children}
    kinds = [(c["kind"], c["metadata"]["name"]) for c in children]
    assert ("Deployment", "full-canary") in kinds and ("HorizontalPodAutoscaler", "full-canary") in kinds


@pytest.mark.parametrize(
    ("case", "kinds"),
    [
        ("minimal", ["ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"]),
        ("fixed", ["ConfigMap", "Deployment", "Service"]),
    ],
)
def test_optional_children_follow_the_spec(case: str, kinds: list[str]) -> None:
    assert [c["kind"] for c in planned_children(load_case(case))] == kinds


def test_every_child_is_owned_and_labelled(case: tuple[str, PaddleModelService]) -> None:
    _, svc = case
    for child in planned_children(svc):
        meta = child["metadata"]
        assert meta["namespace"] == svc.namespace
        (owner,) = meta["ownerReferences"]
        assert owner["uid"] == svc.uid and owner["controller"] is True
        assert meta["labels"]["serving.paddlesla.io/service"] == svc.name
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "paddle-sla-operator"
        assert len(meta["name"]) <= 63


def test_autoscaled_deployment_leaves_replicas_to_the_hpa() -> None:
    assert "replicas" not in build_deployment(load_case("minimal"))["spec"]
    assert build_deployment(load_case("fixed"))["spec"]["replicas"] == 4


def test_pod_meets_restricted_pod_security() -> None:
    pod = build_deployment(load_case("full"))["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    for c in pod["containers"] + pod["initContainers"]:
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["seccompProfile"]["type"] == "RuntimeDefault"


def test_rolling_update_never_drops_capacity() -> None:
    strategy = build_deployment(load_case("minimal"))["spec"]["strategy"]
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0


def test_probes_default_and_override() -> None:
    minimal = build_deployment(load_case("minimal"))["spec"]["template"]["spec"]["containers"][0]
    assert minimal["livenessProbe"]["periodSeconds"] == 10
    assert minimal["livenessProbe"]["failureThreshold"] == 3
    assert minimal["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    full = build_deployment(load_case("full"))["spec"]["template"]["spec"]["containers"][0]
    assert full["livenessProbe"]["periodSeconds"] == 20
    assert full["startupProbe"]["failureThreshold"] == 240


def test_gpu_resources_and_metrics() -> None:
    svc = load_case("gpu")
    runtime = build_deployment(svc)["spec"]["template"]["spec"]["containers"][0]
    assert runtime["resources"]["limits"]["nvidia.com/gpu"] == 2
    names = [m["pods"]["metric"]["name"] for m in build_hpa(svc)["spec"]["metrics"] if m["type"] == "Pods"]
    assert names == ["paddle_runtime_requests_per_second", "paddle_runtime_gpu_utilization_percent"]


def test_cpu_only_service_scales_on_cpu() -> None:
    metrics = build_hpa(load_case("minimal"))["spec"]["metrics"]
    assert metrics == [
        {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}
    ]


def test_fallback_threshold_derived_from_sla() -> None:
    config = yaml.safe_load(build_configmap(load_case("full"))["data"]["config.yaml"])
    assert config["fallback_latency_threshold_ms"] == 160  # 80% of the 200 ms SLA
    assert config["fallback_model_dir"] == "/models/fallback"


def _fallback_config(fallback: dict[str, Any]) -> dict[str, Any]:
    body = yaml.safe_load((ROOT / "examples/01-minimal/paddlemodelservice.yaml").read_text())
    body["metadata"].update(namespace="default", uid="u-1", generation=1)
    body["spec"]["fallback"] = fallback
    return yaml.safe_load(build_configmap(PaddleModelService.from_body(body))["data"]["config.yaml"])


def test_fallback_defaults_are_the_runtime_semantics() -> None:
    """Issue 3: last 10 requests, 3 consecutive errors, back below 0.7x, ramp 10 -> 30 -> 60 -> 100 %."""
    config = _fallback_config({"uri": "s3://models/small"})
    derived = ("fallback_model_dir", "fallback_latency_threshold_ms")  # from the spec and the SLA
    fallback = {k: v for k, v in config.items() if k.startswith("fallback_") and k not in derived}
    assert fallback == {
        "fallback_window": 10,
        "fallback_error_threshold": 3,
        "fallback_recovery_ratio": 0.7,
        "fallback_recovery_steps": [10, 30, 60, 100],
    }
    runtime_settings = pytest.importorskip("paddle_runtime.settings")
    # What we write is what the runtime reads, unchanged (same names, same meaning).
    parsed = runtime_settings.RuntimeSettings(model_dir="/models/main", **fallback)
    assert {k: getattr(parsed, k) for k in fallback} == fallback
    defaults = runtime_settings.RuntimeSettings(model_dir="/models/main")
    assert {k: getattr(defaults, k) for k in fallback} == fallback


def test_fallback_fields_of_the_older_schema_keep_their_meaning() -> None:
    # recoverySteps was an integer (N even steps, as the runtime reads an int), errorThreshold a ratio.
    config = _fallback_config({"uri": "s3://models/small", "recoverySteps": 3, "errorThreshold": 0.05})
    assert config["fallback_recovery_steps"] == [33, 67, 100]
    assert config["fallback_error_threshold"] == 0.05


def test_hot_reload_keeps_model_uri_out_of_the_pod_template() -> None:
    full = load_case("full")
    a = build_deployment(full)
    changed = full.model_copy(
        update={"spec": full.spec.model_copy(update={"model": full.spec.model.model_copy(update={"uri": "s3://x/y"})})}
    )
    assert build_deployment(changed) == a
    assert build_configmap(changed)["data"]["model-uri"] == "s3://x/y"


def test_rollout_update_puts_model_uri_in_the_pod_template() -> None:
    svc = load_case("minimal")
    changed = svc.model_copy(
        update={"spec": svc.spec.model_copy(update={"model": svc.spec.model.model_copy(update={"uri": "s3://x/y"})})}
    )
    assert build_deployment(changed) != build_deployment(svc)


def test_memory_preload_sets_medium_and_size() -> None:
    volumes = build_deployment(load_case("full"))["spec"]["template"]["spec"]["volumes"]
    models = next(v for v in volumes if v["name"] == "models")
    assert models["emptyDir"] == {"medium": "Memory", "sizeLimit": "2Gi"}


def test_user_env_overrides_engine_env_without_duplicates() -> None:
    env = build_deployment(load_case("full"))["spec"]["template"]["spec"]["containers"][0]["env"]
    names = [e["name"] for e in env]
    assert len(names) == len(set(names))
    assert {"name": "PADDLE_RUNTIME_CPU_THREADS", "value": "3"} in env


def test_pdb_from_availability() -> None:
    assert build_pdb(load_case("full"))["spec"]["maxUnavailable"] == 1
    assert build_pdb(load_case("gpu"))["spec"]["maxUnavailable"] == "25%"


def test_service_has_http_and_metrics_ports() -> None:
    ports = {p["name"]: p["port"] for p in build_service(load_case("minimal"))["spec"]["ports"]}
    assert ports == {"http": 8080, "metrics": 9090}


def test_longest_allowed_name_fits_every_child() -> None:
    svc = load_case("full")
    svc = svc.model_copy(update={"name": "a" * MAX_NAME_LENGTH})
    for child in planned_children(svc):
        # Services (and label values) are DNS-1035 labels; ConfigMap names may be DNS subdomains.
        limit = 253 if child["kind"] == "ConfigMap" else 63
        assert len(child["metadata"]["name"]) <= limit
        assert all(len(v) <= 63 for v in child["metadata"]["labels"].values())
    assert len(svc.name + "-canary") <= 63
    assert len(svc.name + "-stable") <= 63


def test_model_sync_drops_the_refused_fetch_record_the_runtime_reads() -> None:
    """The sidecar retries a refused candidate; once the spec points back at what serves it removes
    the record ``fetch`` left, so the runtime (and the status) stop reporting a stale refusal."""
    from paddle_operator.spec import FETCH_FAILED as OPERATOR_NAME
    from paddle_operator.spec import MAIN_MODEL_DIR
    from paddle_runtime.store import FETCH_FAILED

    assert OPERATOR_NAME == FETCH_FAILED
    pod = build_deployment(load_case("full"))["spec"]["template"]["spec"]
    sync = next(c for c in pod["containers"] if c["name"] == "model-sync")
    assert f"else rm -f {MAIN_MODEL_DIR}/{FETCH_FAILED}; fi" in sync["args"][0]
