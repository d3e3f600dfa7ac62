"""The operator's read of pod truth, end to end without an API server: a real ``paddle-runtime serve``
(main + fallback, hot reload on), scraped by a real Prometheus (Debian's ``prometheus``) with the
labels deploy/prometheus/scrape-config.yaml gives pods, read with the operator's own query and
client (``PrometheusQuerier.runtime_reports``) and turned into status by ``truth.truth_status``.
The write to the API server and the events are covered by e2e/realnode/test_truth.py.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from paddle_operator.prometheus import PrometheusQuerier
from paddle_operator.rollout import Unreachable
from paddle_operator.spec import PaddleModelService
from paddle_operator.truth import truth_status
from paddle_runtime.store import switch_current

from .conftest import Client, publish, wait_until

HMAC = b"truth-test-key"
LABELS = {"namespace": "prod", "service": "full", "track": "stable", "pod": "full-0"}
# Seconds from a change on the pod to the status computed from Prometheus: 1 s scrapes, 0.5 s
# reload poll, the fallback's own switch time; the operator adds its truth period on top.
BOUND_S = 20
RELOAD_BOUND_S = 180
CONFIG = {
    "fallback_latency_threshold_ms": 150,
    "fallback_window": 5,
    "fallback_error_threshold": 2,
    "fallback_hold_s": 1.0,
    "fallback_ramp_step_s": 0.5,
    "fallback_probe_interval_s": 0.1,
    "reload_poll_s": 0.5,
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Any]:
    """A real Prometheus scraping one target every second; ``start(address)`` returns its URL."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("the `prometheus` binary is missing: `make system-deps` (Debian package prometheus)")
    procs: list[subprocess.Popen] = []

    def start(address: str) -> str:
        port = _free_port()
        cfg = tmp_path / "prometheus.yml"
        cfg.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s"},
            "scrape_configs": [{"job_name": "paddle-runtime", "scrape_interval": "1s", "scrape_timeout": "1s",
                                "static_configs": [{"targets": [address], "labels": LABELS}]}],
        }))
        log = open(tmp_path / "prometheus.log", "ab")  # noqa: SIM115 - closed with the process
        procs.append(subprocess.Popen(
            [binary, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT,
        ))
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            try:
                return urllib.request.urlopen(url + "/-/ready", timeout=2).status == 200
            except OSError:
                return False

        wait_until(ready, 60, "Prometheus ready", interval=0.5)
        return url

    yield start
    for p in procs:
        p.terminate()
        p.wait(10)


def _svc(version: str) -> PaddleModelService:
    body = yaml.safe_load((Path(__file__).parents[1] / "operator/cases/full.yaml").read_text())
    body["metadata"].update(namespace="prod", name="full")
    body["spec"]["model"]["version"] = version
    return PaddleModelService.from_body(body)


def _cond(st: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in st["conditions"] if c["type"] == type_)


def test_fallback_and_reload_truth_read_through_prometheus(
    tmp_path: Path, export_model_dir, runtime_server, prometheus
) -> None:
    v0 = export_model_dir("mobilenet_v3_small", seed=0, version="v0")
    v1 = export_model_dir("mobilenet_v3_small", seed=1, version="v1")
    key = tmp_path / "hmac.key"
    key.write_bytes(HMAC)
    dest = tmp_path / "models"
    good = publish(v0, dest, "v0", hmac_key=HMAC)
    fallback = tmp_path / "fallback"
    publish(v1, fallback, "f1", hmac_key=HMAC)  # with a key configured, the fallback must be signed too
    faults, config = tmp_path / "faults.yaml", tmp_path / "runtime.yaml"
    faults.write_text("{}\n")
    config.write_text(yaml.safe_dump(CONFIG))
    srv = runtime_server(dest, "--config", str(config), "--fallback-model-dir", str(fallback),
                         "--hmac-key-file", str(key), env={"PADDLE_RUNTIME_FAULT_INJECTION_FILE": str(faults)})
    prom = PrometheusQuerier(prometheus(srv.url.removeprefix("http://")), timeout_s=2)
    spec_v0 = _svc("v0")

    def truth(svc: PaddleModelService = spec_v0) -> dict[str, Any]:
        reports = prom.runtime_reports()
        assert not isinstance(reports, Unreachable), reports
        return truth_status(svc, reports.get(("prod", "full"), {}), None)

    stop = threading.Event()
    x = np.random.default_rng(3).random((1, 3, 224, 224), dtype=np.float32)

    def client() -> None:
        c = Client(srv.url, "mobilenet-v3-small", x)
        while not stop.is_set():
            c.infer()
        c.close()

    load = threading.Thread(target=client, daemon=True)
    load.start()
    try:
        st = wait_until(lambda: (s := truth())["fallback"] == "Armed" and _cond(s, "ModelCurrent")["status"] == "True"
                        and s, BOUND_S, "healthy truth")
        assert st["modelVersion"] == "v0" and _cond(st, "Degraded")["status"] == "False"
        assert st["served"] == {"stable": {"pods": 1, "versions": [{"version": "v0", "pods": 1}], "fallbackPods": 0}}

        # Injected latency on the main model: the fallback takes over, and status says so.
        t0 = time.monotonic()
        faults.write_text(yaml.safe_dump({"main": {"delay_ms": 400}}))
        st = wait_until(lambda: (s := truth())["fallback"] == "Active (1/1)" and s, BOUND_S, "fallback Active in status")
        active_s = time.monotonic() - t0
        assert (_cond(st, "Degraded")["status"], _cond(st, "Degraded")["reason"]) == ("True", "FallbackActive")
        t0 = time.monotonic()
        faults.write_text("{}\n")
        st = wait_until(lambda: (s := truth())["fallback"] == "Armed" and s, BOUND_S + 10, "fallback Armed again")
        armed_s = time.monotonic() - t0
        assert _cond(st, "Degraded")["status"] == "False"

        # A tampered candidate: refused, old version serving, the runtime's error in the condition.
        bad = dest / "versions" / "tampered"
        shutil.copytree(good, bad)
        p = bad / "inference.pdiparams"
        data = bytearray(p.read_bytes())
        data[len(data) // 3] ^= 0x5A
        p.write_bytes(bytes(data))
        switch_current(dest, bad)
        st = wait_until(lambda: (s := truth())["served"]["stable"].get("reloadError") and s, BOUND_S, "reload error")
        mc = _cond(st, "ModelCurrent")
        assert mc["status"] == "True"  # spec asks v0 and v0 still serves: current, but degraded
        assert _cond(st, "Degraded")["reason"] == "ReloadFailed" and "checksum" in _cond(st, "Degraded")["message"]
        asked_v2 = truth(_svc("v2"))
        mc = _cond(asked_v2, "ModelCurrent")
        assert (mc["status"], mc["reason"]) == ("False", "ReloadFailed") and "checksum" in mc["message"]
        assert asked_v2["modelVersion"] == "v0"

        # A good candidate: served, the error gone from status, ModelCurrent for the spec that asks v2.
        publish(v1, dest, "v2", hmac_key=HMAC)
        # A reload runs the candidate in a child process first, at low priority: on a busy machine
        # (load average 15) that alone took over 20 s, so its bound is the reload's, as in test_reload.py.
        st = wait_until(lambda: (s := truth(_svc("v2")))["modelVersion"] == "v2" and s, RELOAD_BOUND_S, "v2 served")
        assert _cond(st, "ModelCurrent")["status"] == "True"
        # The load of v2 can push main past the threshold for a moment (the fallback then takes those
        # requests: true, and reported); it settles once v2 is warm.
        st = wait_until(lambda: _cond(s := truth(_svc("v2")), "Degraded")["status"] == "False" and s, BOUND_S + 10,
                        f"Degraded=False after v2 (last: {_cond(st, 'Degraded')})")
        assert "reloadError" not in st["served"]["stable"]
    finally:
        stop.set()
        load.join(30)
        prom.close()
    print(f"measured: fallback Active in status {active_s:.1f}s after the fault, Armed {armed_s:.1f}s after it cleared")
