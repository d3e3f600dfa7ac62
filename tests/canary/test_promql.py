"""PromQL builders: exact query text (the contract with dashboards and docs) and, through
``promtool test rules``, what the queries compute on synthetic series in a real PromQL engine."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from paddle_operator import promql

CANARY = promql.Target("prod", "ocr", "canary")
SEL = 'namespace="prod",service="ocr",track="canary"'


def test_p99_sums_buckets_by_le_before_the_quantile():
    assert promql.latency_p99(CANARY, 30) == (
        "histogram_quantile(0.99, sum by (le) "
        f"(rate(paddle_runtime_request_duration_seconds_bucket{{{SEL}}}[30s])))"
    )


def test_error_rate_counts_only_5xx_and_reads_zero_without_errors():
    q = promql.error_rate(CANARY, 60)
    assert q == (
        f'(sum(rate(paddle_runtime_requests_total{{{SEL},code=~"5.."}}[60s])) or vector(0)) / '
        f"sum(rate(paddle_runtime_requests_total{{{SEL}}}[60s]))"
    )


def test_request_count_and_qps():
    assert promql.request_count(CANARY, 10) == f"sum(increase(paddle_runtime_requests_total{{{SEL}}}[10s]))"
    assert promql.request_rate(CANARY, 10) == f"sum(rate(paddle_runtime_requests_total{{{SEL}}}[10s]))"


def test_whole_service_has_no_track_matcher():
    q = promql.request_rate(promql.Target("prod", "ocr"), 300)
    assert 'track="' not in q and 'service="ocr"' in q


def test_label_values_are_escaped():
    q = promql.request_rate(promql.Target('a"b', "c\\d"), 5)
    assert 'namespace="a\\"b"' in q and 'service="c\\\\d"' in q


def test_unknown_track_is_rejected():
    with pytest.raises(ValueError, match="track"):
        promql.request_rate(promql.Target("n", "s", "blue"), 5)


def test_durations_are_whole_seconds_at_least_one():
    assert promql.duration(0.2) == "1s"
    assert promql.duration(299.6) == "300s"


def test_error_budget_divides_by_allowed_error_ratio():
    q = promql.error_budget_remaining(CANARY, 300, 0.999)
    assert q.startswith("1 - ((") and q.endswith(") / 0.001)")
    assert promql.budget_remaining(0.0005, 0.999) == pytest.approx(0.5)
    assert promql.budget_remaining(0.002, 0.999) == pytest.approx(-1.0)


@pytest.mark.parametrize(("raw", "fraction"), [("99.9", 0.999), (99.5, 0.995), ("0.99", 0.99)])
def test_parse_availability(raw, fraction):
    assert promql.parse_availability(raw) == pytest.approx(fraction)


def test_availability_of_100_percent_has_no_budget():
    with pytest.raises(ValueError):
        promql.parse_availability("100")


# --- semantics in a real PromQL engine -------------------------------------------------------

PROMTOOL = shutil.which("promtool")

# 1 request/s on the canary for 10 minutes: every 15 s scrape adds 15 requests, 3 of them 5xx
# (20 % errors); latencies: 50 % under 0.05 s, 98 % under 0.1 s, all under 0.5 s.
LBL = 'namespace="prod",service="ocr",track="canary",model="ocr",version="1",role="main"'
SERIES = [
    {"series": f'paddle_runtime_requests_total{{{LBL},code="200"}}', "values": "0+12x40"},
    {"series": f'paddle_runtime_requests_total{{{LBL},code="503"}}', "values": "0+3x40"},
    {"series": f'paddle_runtime_requests_total{{{LBL},code="400"}}', "values": "0+0x40"},
    # Stable track on the same service: must not leak into canary figures.
    {
        "series": 'paddle_runtime_requests_total{namespace="prod",service="ocr",track="stable",code="503"}',
        "values": "0+100x40",
    },
    {"series": f'paddle_runtime_request_duration_seconds_bucket{{{LBL},le="0.05"}}', "values": "0+7.5x40"},
    {"series": f'paddle_runtime_request_duration_seconds_bucket{{{LBL},le="0.1"}}', "values": "0+14.7x40"},
    {"series": f'paddle_runtime_request_duration_seconds_bucket{{{LBL},le="0.5"}}', "values": "0+15x40"},
    {"series": f'paddle_runtime_request_duration_seconds_bucket{{{LBL},le="+Inf"}}', "values": "0+15x40"},
]


@pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian package prometheus) not installed")
def test_queries_compute_the_expected_figures_in_promtool(tmp_path: Path):
    # p99 lies in the (0.1, 0.5] bucket: 0.1 + (0.99*15 - 14.7) / (15 - 14.7) * 0.4 = 0.3
    cases = [
        (promql.request_rate(CANARY, 300), 1.0),
        (promql.error_rate(CANARY, 300), 0.2),
        (promql.availability(CANARY, 300), 0.8),
        (promql.request_count(CANARY, 300), 300.0),
        (promql.latency_p99(CANARY, 300), 0.3),
        (promql.error_budget_remaining(CANARY, 300, 0.9), -1.0),
    ]
    test_file = {
        "rule_files": [],
        "evaluation_interval": "15s",
        "tests": [
            {
                "interval": "15s",
                "input_series": SERIES,
                "promql_expr_test": [
                    {
                        "expr": f"round({expr}, 0.0001)",
                        "eval_time": "10m",
                        "exp_samples": [{"labels": "{}", "value": value}],
                    }
                    for expr, value in cases
                ],
            }
        ],
    }
    path = tmp_path / "promql_test.yaml"
    path.write_text(yaml.safe_dump(test_file))
    proc = subprocess.run([PROMTOOL, "test", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian package prometheus) not installed")
def test_error_rate_and_p99_without_traffic_are_nan_not_zero(tmp_path: Path):
    # NaN, which the client reads as "no data": an idle canary must not look like a perfect one.
    test_file = {
        "rule_files": [],
        "tests": [
            {
                "interval": "15s",
                "input_series": [
                    {"series": f'paddle_runtime_requests_total{{{LBL},code="200"}}', "values": "0+0x40"},
                    {
                        "series": f'paddle_runtime_request_duration_seconds_bucket{{{LBL},le="+Inf"}}',
                        "values": "0+0x40",
                    },
                ],
                # NaN compares false with everything, so ">= -Inf" keeps any real number (0 included)
                # and drops NaN: an empty result here means "no data".
                "promql_expr_test": [
                    {"expr": f"({expr}) >= -Inf", "eval_time": "10m", "exp_samples": []}
                    for expr in (promql.error_rate(CANARY, 300), promql.latency_p99(CANARY, 300))
                ],
            }
        ],
    }
    path = tmp_path / "empty_test.yaml"
    path.write_text(yaml.safe_dump(test_file))
    proc = subprocess.run([PROMTOOL, "test", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
