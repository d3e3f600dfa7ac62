"""The chart's prometheus-adapter rules (``templates/prometheus-adapter-rules.yaml``), the one source of
the rules: the e2e adapter runs what this template renders (``e2e/cluster/adapter.py``), no other copy
exists in the repository, they serve exactly the metric names the HPA builder asks for, and
``promtool test rules`` evaluates each rule's query, expanded as the adapter expands it for
``pods/*``, over series in the shapes the runtime and the kubelet expose.

The GPU rule is checked only this way (synthetic NVML series, two GPUs in one pod): no GPU has run it.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from paddle_operator.builders.hpa import GPU_METRIC, QPS_METRIC

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = "templates/prometheus-adapter-rules.yaml"
PROMTOOL = shutil.which("promtool")
RULE_KEYS = ("seriesQuery", "metricsQuery", "containerQuery", "nodeQuery")


def _config(chart, *sets: str) -> dict:
    out = chart.template("--show-only", TEMPLATE, "--set", "prometheusAdapter.rules.enabled=true", *sets)
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(yaml.safe_load(out.stdout)["data"]["config.yaml"])


def _expand(query: str, series: str, namespace: str, pods: list[str], group_by: str = "pod") -> str:
    """The adapter's query for ``/namespaces/NS/pods/*/METRIC`` (its template: ``<<.Series>>`` ...)."""
    matchers = f'namespace="{namespace}",pod=~"{"|".join(pods)}"'
    return (
        query.replace("<<.Series>>", series)
        .replace("<<.LabelMatchers>>", matchers)
        .replace("<<.GroupBy>>", group_by)
    )


def test_rules_serve_exactly_the_hpa_metric_names(chart) -> None:
    rules = {r["name"]["as"]: r for r in _config(chart)["rules"]}
    assert set(rules) == {QPS_METRIC, GPU_METRIC}
    assert rules[QPS_METRIC]["seriesQuery"].startswith("paddle_runtime_requests_total{")
    assert rules[GPU_METRIC]["seriesQuery"].startswith("paddle_runtime_gpu_utilization_percent{")
    for rule in rules.values():
        assert rule["resources"]["overrides"] == {
            "namespace": {"resource": "namespace"},
            "pod": {"resource": "pod"},
        }
        assert "<<.GroupBy>>" in rule["metricsQuery"] and "<<.LabelMatchers>>" in rule["metricsQuery"]


def test_resource_rules_are_rendered_only_when_asked_with_the_rate_window(chart) -> None:
    assert "resourceRules" not in _config(chart)
    cfg = _config(
        chart,
        "--set",
        "prometheusAdapter.rules.resource=true",
        "--set",
        "prometheusAdapter.rules.rateWindow=20s",
    )
    res = cfg["resourceRules"]
    assert res["window"] == "20s"
    assert "container_cpu_usage_seconds_total{" in res["cpu"]["containerQuery"]
    assert "[20s]" in res["cpu"]["containerQuery"] and "[20s]" in res["cpu"]["nodeQuery"]
    assert res["memory"]["containerLabel"] == res["cpu"]["containerLabel"] == "container"
    assert "[20s]" in cfg["rules"][0]["metricsQuery"]


def test_adapter_rules_have_one_source() -> None:
    """No second copy to drift: adapter rule keys appear in the chart's template only."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    holders = []
    for rel in files:
        path = ROOT / rel
        if path.suffix not in (".yaml", ".yml", ".json", ".tpl") or not path.is_file():
            continue
        text = path.read_text(errors="replace")
        if any(f"{key}:" in text or f'"{key}"' in text for key in RULE_KEYS):
            holders.append(rel)
    assert holders == [f"charts/paddle-operator/{TEMPLATE}"], holders


@pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian package prometheus) not installed")
def test_rules_give_per_pod_values_in_promtool(chart, tmp_path: Path) -> None:
    cfg = _config(
        chart,
        "--set",
        "prometheusAdapter.rules.resource=true",
        "--set",
        "prometheusAdapter.rules.rateWindow=1m",
    )
    rules = {r["name"]["as"]: r for r in cfg["rules"]}
    ns, pods = "ml", ["rec-a", "rec-b"]
    scrape = 'job="paddle-runtime",namespace="{ns}",service="rec",track="stable",pod="{pod}"'
    series = [
        # The runtime's request counter, one series per code: pod a serves 3 + 1 req/s, pod b 2 req/s.
        (f'paddle_runtime_requests_total{{{scrape.format(ns=ns, pod="rec-a")},model="rec",version="v4",role="main",code="200"}}', "0+3x300"),
        (f'paddle_runtime_requests_total{{{scrape.format(ns=ns, pod="rec-a")},model="rec",version="v4",role="main",code="500"}}', "0+1x300"),
        (f'paddle_runtime_requests_total{{{scrape.format(ns=ns, pod="rec-b")},model="rec",version="v4",role="main",code="200"}}', "0+2x300"),
        # Same pod name in another namespace: the namespace matcher keeps it out.
        (f'paddle_runtime_requests_total{{{scrape.format(ns="other", pod="rec-a")},model="rec",version="v4",role="main",code="200"}}', "0+50x300"),
        # NVML gauges as the runtime exports them (one series per GPU): pod a has two GPUs, pod b one.
        (f'paddle_runtime_gpu_utilization_percent{{{scrape.format(ns=ns, pod="rec-a")},gpu="0"}}', "80x300"),
        (f'paddle_runtime_gpu_utilization_percent{{{scrape.format(ns=ns, pod="rec-a")},gpu="1"}}', "40x300"),
        (f'paddle_runtime_gpu_utilization_percent{{{scrape.format(ns=ns, pod="rec-b")},gpu="0"}}', "10x300"),
        # The kubelet's /metrics/resource: pod a's runtime container uses 0.25 cores, its sidecar 0.125 (exact in binary floating point).
        (f'container_cpu_usage_seconds_total{{job="kubelet-resource",node="n1",namespace="{ns}",pod="rec-a",container="runtime"}}', "0+0.25x300"),
        (f'container_cpu_usage_seconds_total{{job="kubelet-resource",node="n1",namespace="{ns}",pod="rec-a",container="model-sync"}}', "0+0.125x300"),
    ]  # fmt: skip
    tests = [
        {
            "interval": "1s",
            "input_series": [{"series": s, "values": v} for s, v in series],
            "promql_expr_test": [
                {
                    "expr": _expand(
                        rules[QPS_METRIC]["metricsQuery"], "paddle_runtime_requests_total", ns, pods
                    ),
                    "eval_time": "2m",
                    "exp_samples": [
                        {"labels": '{pod="rec-a"}', "value": 4},
                        {"labels": '{pod="rec-b"}', "value": 2},
                    ],
                },
                {
                    "expr": _expand(
                        rules[GPU_METRIC]["metricsQuery"], "paddle_runtime_gpu_utilization_percent", ns, pods
                    ),
                    "eval_time": "2m",
                    "exp_samples": [
                        {"labels": '{pod="rec-a"}', "value": 60},
                        {"labels": '{pod="rec-b"}', "value": 10},
                    ],
                },
                {
                    # metrics.k8s.io PodMetrics: CPU per container of the pod.
                    "expr": _expand(
                        cfg["resourceRules"]["cpu"]["containerQuery"], "", ns, ["rec-a"], "pod,container"
                    ),
                    "eval_time": "2m",
                    "exp_samples": [
                        {"labels": '{container="model-sync",pod="rec-a"}', "value": 0.125},
                        {"labels": '{container="runtime",pod="rec-a"}', "value": 0.25},
                    ],
                },
            ],
        }
    ]
    suite = tmp_path / "adapter-rules.test.yaml"
    suite.write_text(yaml.safe_dump({"rule_files": [], "evaluation_interval": "1s", "tests": tests}))
    proc = subprocess.run(
        [PROMTOOL, "test", "rules", str(suite)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout
