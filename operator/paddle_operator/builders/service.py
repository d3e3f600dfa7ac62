"""Service ``<name>``: one stable address for both tracks, with http and metrics ports."""

from __future__ import annotations

from typing import Any

from ..spec import METRICS_SERVICE_PORT, PaddleModelService
from .common import object_meta, selector_labels


def build_service(
    svc: PaddleModelService, *, name: str | None = None, track: str | None = None
) -> dict[str, Any]:
    """``track`` None selects every track (no-mesh split by replica ratio); routers build per-track ones."""
    spec: dict[str, Any] = {
        "type": svc.spec.service.type,
        "selector": selector_labels(svc, track),
        "ports": [
            {"name": "http", "port": svc.spec.service.port, "targetPort": "http", "protocol": "TCP"},
            # Same container port: the runtime serves /metrics on its one HTTP port. A named port lets
            # a ServiceMonitor or scrape config select metrics without knowing the API port.
            {"name": "metrics", "port": METRICS_SERVICE_PORT, "targetPort": "http", "protocol": "TCP"},
        ],
    }
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_meta(svc, name or svc.service_name, track),
        "spec": spec,
    }
