"""ConfigMap ``<name>-runtime``: the runtime settings the runtime re-reads without a restart.

Only hot-reloadable settings live here (batching, fallback thresholds, reload poll, SLO objectives,
model source for ``update: HotReload``). Engine settings that need a new predictor (device, precision, TensorRT,
threads) are environment variables in the pod template instead, so changing them rolls the pods
while changing these does not. Keys of ``config.yaml`` are RuntimeSettings field names
(docs/contracts.md).
"""

from __future__ import annotations

from typing import Any

import yaml

from ..spec import FALLBACK_MODEL_DIR, PaddleModelService
from .common import object_meta

# Share of the SLA p99 at which the runtime moves traffic to the fallback model when the user sets
# no threshold: early enough that the fallback, not the SLA breach, is what users see.
FALLBACK_SHARE_OF_SLA = 0.8
HOT_RELOAD_POLL_S = 5.0
MODEL_URI_KEY = "model-uri"
MODEL_VERSION_KEY = "model-version"


def fallback_latency_threshold_ms(svc: PaddleModelService) -> int | None:
    """Explicit threshold, else derived from the SLA, else None (runtime default)."""
    fb = svc.spec.fallback
    if fb is None:
        return None
    if fb.latency_threshold_ms is not None:
        return fb.latency_threshold_ms
    sla = svc.spec.sla
    if sla is not None and sla.latency_p99_ms is not None:
        return max(1, int(sla.latency_p99_ms * FALLBACK_SHARE_OF_SLA))
    return None


def runtime_settings(svc: PaddleModelService) -> dict[str, Any]:
    """The hot-reloadable RuntimeSettings written to ``config.yaml``."""
    inf = svc.spec.inference
    settings: dict[str, Any] = {
        "max_batch_size": inf.max_batch_size,
        "batch_timeout_ms": inf.batch_timeout_ms,
    }
    fb = svc.spec.fallback
    if fb is not None:
        settings["fallback_model_dir"] = FALLBACK_MODEL_DIR
        threshold = fallback_latency_threshold_ms(svc)
        if threshold is not None:
            settings["fallback_latency_threshold_ms"] = threshold
        settings["fallback_window"] = fb.window
        settings["fallback_error_threshold"] = fb.error_threshold
        settings["fallback_recovery_ratio"] = fb.recovery_ratio
        settings["fallback_recovery_steps"] = list(fb.recovery_steps)
    if svc.spec.model.update == "HotReload":
        settings["reload_poll_s"] = HOT_RELOAD_POLL_S
    # Published by the runtime as SLO series, which the chart's alert rules read (live, no restart).
    # Always written, 0 when unset: a key dropped from the file would keep its running value.
    sla = svc.spec.sla
    settings["sla_latency_p99_ms"] = (sla.latency_p99_ms if sla else None) or 0
    settings["sla_availability_percent"] = (sla.availability_percent if sla else None) or 0
    return settings


def build_configmap(svc: PaddleModelService) -> dict[str, Any]:
    """The runtime ConfigMap: the settings file the runtime reads."""
    data = {
        "config.yaml": yaml.safe_dump(runtime_settings(svc), sort_keys=True),
        MODEL_URI_KEY: svc.spec.model.uri,
        MODEL_VERSION_KEY: svc.spec.model.version or "",
    }
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": object_meta(svc, svc.configmap_name),
        "data": data,
    }
