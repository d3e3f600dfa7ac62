"""Every query of the chart's Grafana dashboard returns data from a real Prometheus scraping real
runtimes under load, with the chart's SLO rules loaded; and an erroring canary fires the fast-burn page.

Grafana cannot run here, so the test reads files/dashboard.json itself and sends each panel target to
Prometheus with the dashboard variables filled in. The GPU panels are excepted: NVML finds no GPU on
this machine, so the runtime exports no GPU series (metrics.GpuSampler); the test asserts exactly
those panels are the ones without data. Runtimes: `paddle-runtime serve` with a real exported
MobileNetV3-small, the stable one with a fallback (same model) and spec.sla's settings, the canary
failing every predict through the runtime's test-only fault injector (HTTP 500).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import RuntimeProcess, exported_model, start_runtime
from tests.static_prometheus import Prometheus, Runtime, free_port, load

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
FILES = ROOT / "charts" / "paddle-operator" / "files"
GPU_PANELS = {"GPU utilisation", "GPU memory used"}
LABELS = {"namespace": "prod", "service": "ocr"}
# Grafana's variables as the dashboard would fill them for this service.
VARIABLES = {"$namespace": "prod", "$service": "ocr", "$__rate_interval": "30s"}


def _targets() -> list[tuple[str, str]]:
    dash = json.loads((FILES / "dashboard.json").read_text())
    out = []
    for panel in dash["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for var, value in VARIABLES.items():
                expr = expr.replace(var, value)
            assert "$" not in expr, f"unfilled variable in {panel['title']}: {expr}"
            out.append((panel["title"], expr))
    return out


def _rules_evaluated_every_second(tmp: Path) -> Path:
    """The chart's rules with the 5-minute budget group evaluated every second (as scraping is here)."""
    doc = yaml.safe_load((FILES / "slo-rules.yaml").read_text())
    for group in doc["groups"]:
        group.pop("interval", None)
    path = tmp / "slo-rules.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture(scope="module")
def monitored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("the `prometheus` binary is missing: `make system-deps` (Debian package prometheus)")
    tmp = tmp_path_factory.mktemp("dashboard")
    model = exported_model("mobilenet_v3_small")
    (tmp / "faults.yaml").write_text("main: {fail: true}\n")
    common = {
        "PADDLE_RUNTIME_MODEL_NAME": "classifier",
        "PADDLE_RUNTIME_CPU_THREADS": "1",
        "PADDLE_RUNTIME_WORKERS": "1",
        "PADDLE_RUNTIME_SLA_AVAILABILITY_PERCENT": "99.9",
        "PADDLE_RUNTIME_SLA_LATENCY_P99_MS": "500",
        "PADDLE_RUNTIME_LOG_FORMAT": "json",
    }
    procs: list[RuntimeProcess] = []
    prom: Prometheus | None = None
    try:
        procs.append(start_runtime(model, env={**common, "PADDLE_RUNTIME_FALLBACK_MODEL_DIR": str(model)},
                                   log_dir=tmp, timeout=180))
        procs.append(start_runtime(model, env={**common, "PADDLE_RUNTIME_FAULT_INJECTION_FILE": str(tmp / "faults.yaml")},
                                   log_dir=tmp, timeout=180))
        stable, canary = (Runtime(n, p.port, p.proc, p.log_path) for n, p in zip(("stable", "canary"), procs, strict=True))
        prom = Prometheus(binary, tmp, free_port(), [(stable, {**LABELS, "track": "stable"}),
                                                      (canary, {**LABELS, "track": "canary"})],
                          rule_files=[_rules_evaluated_every_second(tmp)]).start()
        with load(stable, canary, rps=4):
            yield prom
    finally:
        if prom is not None:
            prom.stop()
        for p in procs:
            p.stop()


def _poll(check, timeout: float, period: float = 2.0):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(period)


def test_every_dashboard_query_has_data_except_gpu_panels(monitored: Prometheus):
    targets = _targets()
    assert {title for title, _ in targets} >= GPU_PANELS

    def empty() -> list[tuple[str, str]]:
        return [(t, e) for t, e in targets if t not in GPU_PANELS and not monitored.query(e)]

    _poll(lambda: not empty(), 120)
    missing = empty()
    assert not missing, f"panels without data after load: {missing}"
    # The exception is real, not a blanket skip: on this CPU machine the GPU panels have no data.
    if not shutil.which("nvidia-smi"):
        assert all(not monitored.query(e) for t, e in targets if t in GPU_PANELS)


def test_erroring_canary_fires_the_fast_burn_page(monitored: Prometheus):
    firing = 'ALERTS{alertname="PaddleAvailabilityBudgetFastBurn",alertstate="firing"}'
    # Burning from the first request; the alert holds for 2m before it fires.
    alerts = _poll(lambda: monitored.query(firing), 240, 5)
    assert alerts, f"no fast-burn alert; rules: {monitored.query('ALERTS')}"
    assert {a["metric"]["track"] for a in alerts} == {"canary"}
    assert monitored.query('ALERTS{track="stable"}') == []
