"""ConfigMap ``<name>-runtime``: the runtime settings the runtime re-reads without a restart.

Only hot-reloadable settings live here (batching, fallback thresholds, reload poll, SLO objectives,
the model sources for ``update: HotReload``; a pipeline's per-stage fallbacks and keys as
``ocr_stages``). Engine settings that need a new predictor (device, precision, TensorRT, threads)
are environment variables in the pod template instead, so changing them rolls the pods
while changing these does not. Keys of ``config.yaml`` are RuntimeSettings field names
(docs/contracts.md).
"""

from __future__ import annotations

from typing import Any

import yaml

from ..spec import FALLBACK_MODEL_DIR, STAGE_FALLBACK_DIRS, Fallback, PaddleModelService, key_file
from .common import object_meta

# Share of the SLA p99 at which the runtime moves traffic to the fallback model when the user sets
# no threshold: early enough that the fallback, not the SLA breach, is what users see.
FALLBACK_SHARE_OF_SLA = 0.8
HOT_RELOAD_POLL_S = 5.0
MODEL_URI_KEY = "model-uri"
MODEL_VERSION_KEY = "model-version"


def fallback_latency_threshold_ms(svc: PaddleModelService, fb: Fallback | None = None) -> int | None:
    """Explicit threshold of ``fb`` (default ``spec.fallback``), else derived from the SLA, else None
    (runtime default)."""
    fb = fb or svc.spec.fallback
    if fb is None:
        return None
    if fb.latency_threshold_ms is not None:
        return fb.latency_threshold_ms
    sla = svc.spec.sla
    if sla is not None and sla.latency_p99_ms is not None:
        return max(1, int(sla.latency_p99_ms * FALLBACK_SHARE_OF_SLA))
    return None


def _fallback_settings(svc: PaddleModelService, fb: Fallback, model_dir: str) -> dict[str, Any]:
    out: dict[str, Any] = {"fallback_model_dir": model_dir}
    threshold = fallback_latency_threshold_ms(svc, fb)
    if threshold is not None:
        out["fallback_latency_threshold_ms"] = threshold
    out["fallback_window"] = fb.window
    out["fallback_error_threshold"] = fb.error_threshold
    out["fallback_recovery_ratio"] = fb.recovery_ratio
    out["fallback_recovery_steps"] = list(fb.recovery_steps)
    return out


def _stage_settings(svc: PaddleModelService) -> dict[str, dict[str, Any]]:
    """``ocr_stages``: each pipeline stage's fallback (recognition's is ``spec.fallback``) and own keys."""
    assert svc.spec.pipeline is not None
    out: dict[str, dict[str, Any]] = {}
    if svc.spec.fallback is not None:
        out["rec"] = _fallback_settings(svc, svc.spec.fallback, FALLBACK_MODEL_DIR)
    for key, stage in svc.spec.pipeline.stages().items():
        entry: dict[str, Any] = {}
        if stage.fallback is not None:
            entry.update(_fallback_settings(svc, stage.fallback, STAGE_FALLBACK_DIRS[key]))
        sig = stage.signature
        if sig is not None and sig.hmac_key_secret_ref is not None:
            entry["hmac_key_file"] = key_file("hmac", key)
        if sig is not None and sig.public_key_secret_ref is not None:
            entry["public_key_file"] = key_file("public", key)
        if entry:
            out[key] = entry
    return out


def runtime_settings(svc: PaddleModelService) -> dict[str, Any]:
    """The hot-reloadable RuntimeSettings written to ``config.yaml``."""
    inf = svc.spec.inference
    settings: dict[str, Any] = {
        "max_batch_size": inf.max_batch_size,
        "batch_timeout_ms": inf.batch_timeout_ms,
    }
    fb = svc.spec.fallback
    if svc.spec.pipeline is not None:
        # Each stage is a model of its own: its fallback and keys under ocr_stages. Always written,
        # so a stage entry removed from the spec does not keep its running value.
        settings["ocr_stages"] = _stage_settings(svc)
    elif fb is not None:
        settings.update(_fallback_settings(svc, fb, FALLBACK_MODEL_DIR))
    if svc.spec.model.update == "HotReload":
        settings["reload_poll_s"] = HOT_RELOAD_POLL_S
    # Published by the runtime as SLO series, which the chart's alert rules read (live, no restart).
    # Always written, 0 when unset: a key dropped from the file would keep its running value.
    sla = svc.spec.sla
    settings["sla_latency_p99_ms"] = (sla.latency_p99_ms if sla else None) or 0
    settings["sla_availability_percent"] = (sla.availability_percent if sla else None) or 0
    return settings


def source_keys(svc: PaddleModelService) -> dict[str, tuple[str, str]]:
    """ConfigMap keys (uri, version) per model store that ``update: HotReload`` re-fetches in place:
    ``main`` (spec.model), and each pipeline stage (``det``, ``cls``)."""
    keys = {"main": (MODEL_URI_KEY, MODEL_VERSION_KEY)}
    if svc.spec.pipeline is not None:
        keys.update({k: (f"{k}-uri", f"{k}-version") for k in svc.spec.pipeline.stages()})
    return keys


def build_configmap(svc: PaddleModelService) -> dict[str, Any]:
    """The runtime ConfigMap: the settings file the runtime reads."""
    data = {
        "config.yaml": yaml.safe_dump(runtime_settings(svc), sort_keys=True),
        MODEL_URI_KEY: svc.spec.model.uri,
        MODEL_VERSION_KEY: svc.spec.model.version or "",
    }
    if svc.spec.pipeline is not None:
        for key, stage in svc.spec.pipeline.stages().items():
            uri_key, version_key = source_keys(svc)[key]
            data[uri_key] = stage.uri
            data[version_key] = stage.version or ""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": object_meta(svc, svc.configmap_name),
        "data": data,
    }
