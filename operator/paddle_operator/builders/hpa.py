"""autoscaling/v2 HPA on the runtime's QPS and GPU utilisation (custom Pods metrics) or CPU.

The metric names are served by prometheus-adapter with the chart's rules
(charts/paddle-operator/templates/prometheus-adapter-rules.yaml, checked in tests/packaging/test_adapter_rules.py).
"""

from __future__ import annotations

from typing import Any

from ..spec import PaddleModelService
from .common import STABLE, object_meta

QPS_METRIC = "paddle_runtime_requests_per_second"
GPU_METRIC = "paddle_runtime_gpu_utilization_percent"
DEFAULT_UTILIZATION = 70
SCALE_DOWN_PERCENT_PER_MINUTE = 50


def _pods_metric(metric: str, target: int) -> dict[str, Any]:
    return {
        "type": "Pods",
        "pods": {
            "metric": {"name": metric},
            "target": {"type": "AverageValue", "averageValue": str(target)},
        },
    }


def hpa_metrics(svc: PaddleModelService) -> list[dict[str, Any]]:
    """QPS when asked; GPU utilisation for GPU services; CPU utilisation for the others (default 70%)."""
    a = svc.spec.autoscaling
    assert a is not None
    metrics: list[dict[str, Any]] = []
    if a.target_qps_per_replica is not None:
        metrics.append(_pods_metric(QPS_METRIC, a.target_qps_per_replica))
    gpu = svc.spec.inference.device == "gpu"
    if gpu and (a.target_gpu_utilization is not None or a.target_qps_per_replica is None):
        metrics.append(_pods_metric(GPU_METRIC, a.target_gpu_utilization or DEFAULT_UTILIZATION))
    if a.target_cpu_utilization is not None or (not gpu and a.target_qps_per_replica is None):
        metrics.append(
            {
                "type": "Resource",
                "resource": {
                    "name": "cpu",
                    "target": {
                        "type": "Utilization",
                        "averageUtilization": a.target_cpu_utilization or DEFAULT_UTILIZATION,
                    },
                },
            }
        )
    return metrics


def build_hpa(
    svc: PaddleModelService,
    *,
    track: str = STABLE,
    name: str | None = None,
    target: str | None = None,
    min_replicas: int | None = None,
    max_replicas: int | None = None,
) -> dict[str, Any]:
    """HPA for one track's Deployment; the rollout code passes bounds sized to a traffic share."""
    a = svc.spec.autoscaling
    assert a is not None, "build_hpa needs spec.autoscaling"
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": object_meta(svc, name or svc.deployment_name, track),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target or svc.deployment_name},
            "minReplicas": min_replicas if min_replicas is not None else a.min_replicas,
            "maxReplicas": max_replicas if max_replicas is not None else a.max_replicas,
            "metrics": hpa_metrics(svc),
            "behavior": {
                # Model pods are slow to start: do not give capacity back on a short dip.
                "scaleDown": {
                    "stabilizationWindowSeconds": a.scale_down_stabilization_seconds,
                    "selectPolicy": "Max",
                    "policies": [{"type": "Percent", "value": SCALE_DOWN_PERCENT_PER_MINUTE, "periodSeconds": 60}],
                },
            },
        },
    }
