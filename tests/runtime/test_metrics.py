"""Metrics module: contract names exist; the NVML sampler stays quiet without a GPU."""

from __future__ import annotations

import shutil

import pytest

from paddle_runtime import metrics


def test_contract_metric_names_are_exported() -> None:
    # A name of its own: the registry is the process's, and other tests leave series of their models.
    metrics.set_model_info("contract-m", "1", "cpu", "main")
    body, ctype = metrics.render()
    text = body.decode()
    assert ctype.startswith("text/plain")
    for name in ("paddle_runtime_requests_total", "paddle_runtime_request_duration_seconds",
                 "paddle_runtime_batch_size", "paddle_runtime_queue_depth", "paddle_runtime_inflight_requests",
                 "paddle_runtime_model_info", "paddle_runtime_gpu_utilization_percent",
                 "paddle_runtime_gpu_memory_used_bytes", "paddle_runtime_active_role",
                 "paddle_runtime_fallback_switches_total", "paddle_runtime_reloads_total"):
        assert f"# TYPE {name.removesuffix('_total')}" in text, name
    assert 'paddle_runtime_model_info{device="cpu",model="contract-m",role="main",version="1"} 1.0' in text
    metrics.set_model_info("contract-m", "1", "cpu", "main", loaded=False)
    assert 'model="contract-m"' not in metrics.render()[0].decode()


def test_gpu_sampler_is_off_without_a_gpu() -> None:
    if shutil.which("nvidia-smi"):
        pytest.skip("a GPU driver is present")
    sampler = metrics.GpuSampler(interval=0.1)
    assert sampler.start() is False
    assert "paddle_runtime_gpu_utilization_percent{" not in metrics.render()[0].decode()
    sampler.stop()
