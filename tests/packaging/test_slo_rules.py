"""The chart's SLO rules (files/slo-rules.yaml): valid for Prometheus, and, through `promtool test rules`
on synthetic series, every alert fires on the burn it is for and clears when the burning stops."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "charts" / "paddle-operator" / "files" / "slo-rules.yaml"
DASHBOARD = ROOT / "charts" / "paddle-operator" / "files" / "dashboard.json"
SUITE = Path(__file__).parent / "promtool" / "slo-rules.test.yaml"
PROMTOOL = shutil.which("promtool")
ALERTS = {
    "PaddleAvailabilityBudgetFastBurn": ("1h", "5m", "14.4"),
    "PaddleAvailabilityBudgetSlowBurn": ("6h", "30m", "6"),
    "PaddleLatencyBudgetFastBurn": ("1h", "5m", "14.4"),
    "PaddleLatencyBudgetSlowBurn": ("6h", "30m", "6"),
}

needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian package prometheus) not installed")


def _alert_rules() -> dict[str, dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}


def test_each_alert_uses_its_two_windows_and_burn_rate():
    rules = _alert_rules()
    assert set(rules) == set(ALERTS)
    for name, (long, short, factor) in ALERTS.items():
        expr = rules[name]["expr"]
        assert f"ratio_rate{long}{{" in expr and f"ratio_rate{short}{{" in expr, name
        assert expr.count(f"({factor} * (1 - paddle_slo:objective:ratio") == 2, name


def test_suite_expects_every_alert_both_firing_and_cleared():
    suite = yaml.safe_load(SUITE.read_text())
    seen: dict[str, set[bool]] = {}
    for case in suite["tests"]:
        for check in case.get("alert_rule_test", []):
            seen.setdefault(check["alertname"], set()).add(bool(check["exp_alerts"]))
    assert seen == {name: {True, False} for name in ALERTS}


@needs_promtool
def test_rules_pass_promtool_check():
    proc = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@needs_promtool
def test_alerts_fire_and_clear_on_synthetic_series():
    proc = subprocess.run([PROMTOOL, "test", "rules", str(SUITE)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_runtime_exports_every_series_the_rules_read():
    from paddle_runtime import metrics

    metrics.set_slo("slo-test", 250, 99.9)
    metrics.observe_success("slo-test", "1", "main", 0.3)
    metrics.observe_success("slo-test", "1", "main", 0.1)
    try:
        text = metrics.render()[0].decode()
    finally:
        metrics.set_slo("slo-test", 0, 0)
    assert 'paddle_runtime_slo_objective_ratio{model="slo-test",slo="availability"} 0.999\n' in text
    assert 'paddle_runtime_slo_objective_ratio{model="slo-test",slo="latency"} 0.99' in text
    assert 'paddle_runtime_slo_latency_target_seconds{model="slo-test"} 0.25' in text
    assert 'paddle_runtime_requests_over_latency_target_total{model="slo-test",role="main",version="1"} 1.0' in text
    sources = RULES.read_text() + DASHBOARD.read_text()
    for name in ("paddle_runtime_slo_objective_ratio", "paddle_runtime_requests_over_latency_target_total",
                 "paddle_runtime_request_duration_seconds_count", "paddle_runtime_slo_latency_target_seconds"):
        assert name in sources
    cleared = metrics.render()[0].decode()
    assert 'model="slo-test",slo=' not in cleared and "slo_latency_target_seconds{" not in cleared


def test_chart_wraps_the_rules_file_unchanged(chart):
    objs = chart.render("--set", "prometheusRule.enabled=true", "--set", "grafanaDashboard.enabled=true",
                        "--set", "prometheusRule.labels.release=kps")
    (rule,) = [o for o in objs if o["kind"] == "PrometheusRule"]
    assert rule["spec"] == yaml.safe_load(RULES.read_text())
    assert rule["metadata"]["labels"]["release"] == "kps"
    (cm,) = [o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-dashboard")]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["paddle-sla.json"]) == json.loads(DASHBOARD.read_text())


def test_rules_and_dashboard_are_off_by_default(chart):
    kinds = {(o["kind"], o["metadata"]["name"]) for o in chart.render()}
    assert not any(k == "PrometheusRule" or n.endswith("-dashboard") for k, n in kinds)
