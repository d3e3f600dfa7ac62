"""The shipped prometheus-adapter rules serve exactly the metrics the HPA builder asks for, from the
runtime's metric names in docs/contracts.md."""

from __future__ import annotations

from pathlib import Path

import yaml

from paddle_operator.builders.hpa import GPU_METRIC, QPS_METRIC

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus-adapter" / "rules.yaml"


def test_rules_serve_the_hpa_metric_names() -> None:
    rules = yaml.safe_load(RULES.read_text())["rules"]["custom"]
    served = {r["name"]["as"]: r for r in rules}
    assert set(served) == {QPS_METRIC, GPU_METRIC}
    assert served[QPS_METRIC]["seriesQuery"].startswith("paddle_runtime_requests_total{")
    assert "rate(" in served[QPS_METRIC]["metricsQuery"]
    assert served[GPU_METRIC]["seriesQuery"].startswith("paddle_runtime_gpu_utilization_percent{")
    for r in rules:
        assert r["resources"]["overrides"]["pod"] == {"resource": "pod"}
        assert "<<.GroupBy>>" in r["metricsQuery"]
