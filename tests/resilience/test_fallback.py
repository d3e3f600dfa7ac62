"""Fallback model in a real server: injected latency and errors, the recovery ramp, live thresholds.

Faults come from the runtime's TEST-ONLY ``fault_injection_file`` (off unless set): it delays or
fails the main model's real predict, so everything else (batching, routing, HTTP) runs as in
production.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from .conftest import Client, get_json, metric_value, wait_until

BASE_CONFIG = {
    "fallback_latency_threshold_ms": 150,
    "fallback_window": 5,
    "fallback_error_threshold": 2,
    "fallback_hold_s": 1.0,
    "fallback_ramp_step_s": 0.6,
    "fallback_probe_interval_s": 0.1,
}


@pytest.fixture(scope="module")
def models(export_model_dir) -> tuple[Path, Path]:
    return (
        export_model_dir("mobilenet_v3_small", seed=0, version="v0"),
        export_model_dir("mobilenet_v3_small", seed=1, version="v1"),
    )


def _write(p: Path, doc: dict) -> None:
    # Replace atomically, as a ConfigMap volume update does, so readers never see half a file.
    tmp = p.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(doc))
    tmp.replace(p)


class Recorder:
    """Client threads recording (time, status, role) plus a thread sampling the router state."""

    def __init__(self, url: str, x: np.ndarray, clients: int = 2) -> None:
        self.url = url
        self.results: list[tuple[float, int, str | None]] = []
        self.states: list[tuple[float, str, int]] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._client, args=(x,), daemon=True) for _ in range(clients)]
        self.threads.append(threading.Thread(target=self._sample, daemon=True))
        for t in self.threads:
            t.start()

    def _client(self, x: np.ndarray) -> None:
        c = Client(self.url, "mobilenet-v3-small", x)
        while not self.stop.is_set():
            status, _, role, body = c.infer()
            self.results.append((time.monotonic(), status, role if status == 200 else str(body)[:200]))
        c.close()

    def _sample(self) -> None:
        while not self.stop.is_set():
            fb = get_json(self.url, "/version")["fallback"]
            self.states.append((time.monotonic(), fb["state"], fb["main_share_percent"]))
            time.sleep(0.05)

    def state(self) -> str:
        return get_json(self.url, "/version")["fallback"]["state"]

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


def _ramp_seen(states: list[tuple[float, str, int]], since: float) -> list[int]:
    shares = []
    for t, state, share in states:
        if t >= since and state == "ramp" and (not shares or shares[-1] != share):
            shares.append(share)
    return shares


def test_fallback_on_latency_and_errors_with_ramp_and_live_thresholds(
    tmp_path: Path, models, runtime_server
) -> None:
    main_dir, fb_dir = models
    faults, config = tmp_path / "faults.yaml", tmp_path / "runtime.yaml"
    _write(faults, {})
    _write(config, BASE_CONFIG)
    srv = runtime_server(
        main_dir,
        "--config",
        str(config),
        "--fallback-model-dir",
        str(fb_dir),
        env={"PADDLE_RUNTIME_FAULT_INJECTION_FILE": str(faults)},
    )
    x = np.random.default_rng(3).random((1, 3, 224, 224), dtype=np.float32)
    rec = Recorder(srv.url, x)
    try:
        wait_until(lambda: sum(r[2] == "main" for r in rec.results) > 10, 30, "main answering")
        assert rec.state() == "main"
        assert metric_value(srv.url, "paddle_runtime_fallback_active") == 0

        # 1. Latency: main becomes slow -> the fallback takes over, nobody sees an error.
        t_slow = time.monotonic()
        _write(faults, {"main": {"delay_ms": 400}})
        wait_until(lambda: rec.state() == "fallback", 30, "switch to fallback on latency")
        wait_until(
            lambda: sum(r[2] == "fallback" for r in rec.results if r[0] > t_slow) > 10, 30, "fallback answers"
        )
        assert metric_value(srv.url, "paddle_runtime_fallback_switches_total", to="fallback") == 1
        assert metric_value(srv.url, "paddle_runtime_active_role", role="fallback") == 1
        assert metric_value(srv.url, "paddle_runtime_fallback_active") == 1

        # 2. Recovery: main is fast again -> hold, then 10 -> 30 -> 60 -> 100 %, then main.
        t_fast = time.monotonic()
        _write(faults, {})
        wait_until(lambda: rec.state() == "main", 30, "back on main after the ramp")
        assert _ramp_seen(rec.states, t_fast) == [10, 30, 60, 100]
        first_ramp = next(t for t, s, _ in rec.states if t >= t_fast and s == "ramp")
        assert first_ramp - t_fast >= BASE_CONFIG["fallback_hold_s"]  # held before ramping
        assert metric_value(srv.url, "paddle_runtime_fallback_switches_total", to="main") == 1
        assert metric_value(srv.url, "paddle_runtime_fallback_active") == 0

        # 3. Errors: every main predict fails -> each failed request is answered by the fallback.
        t_err = time.monotonic()
        _write(faults, {"main": {"fail": True}})
        wait_until(lambda: rec.state() == "fallback", 30, "switch to fallback on errors")
        wait_until(lambda: sum(r[0] > t_err for r in rec.results) > 10, 30, "traffic during errors")
        info = get_json(srv.url, "/version")["fallback"]
        assert "consecutive errors" in info["last_switch_reason"]
        _write(faults, {})
        wait_until(lambda: rec.state() == "main", 30, "back on main after errors")

        # 4. Thresholds from the config file at run time: a huge threshold tolerates the slow main.
        _write(config, {**BASE_CONFIG, "fallback_latency_threshold_ms": 60000})
        wait_until(
            lambda: (
                get_json(srv.url, "/version")["fallback"]["thresholds"]["fallback_latency_threshold_ms"]
                == 60000
            ),
            15,
            "threshold reloaded",
        )
        t_tol = time.monotonic()
        _write(faults, {"main": {"delay_ms": 300}})
        wait_until(lambda: sum(r[0] > t_tol + 0.5 for r in rec.results) > 10, 30, "slow traffic")
        assert rec.state() == "main"
        assert all(r[2] == "main" for r in rec.results if r[0] > t_tol + 0.5)
        # ... and lowering it again switches without a restart.
        _write(config, BASE_CONFIG)
        wait_until(lambda: rec.state() == "fallback", 30, "switch after lowering the threshold")
    finally:
        rec.close()
    errors = [r for r in rec.results if r[1] != 200]
    assert not errors, f"{len(errors)} client-visible errors, first: {errors[0]}"
    roles = {r[2] for r in rec.results}
    assert roles == {"main", "fallback"}
    assert metric_value(srv.url, "paddle_runtime_requests_total", role="fallback", code="200") > 0


def test_fallback_with_a_different_contract_is_refused(
    tmp_path: Path, models, ocr_cls_dir, runtime_server
) -> None:
    srv = runtime_server(models[0], "--fallback-model-dir", str(ocr_cls_dir), wait_ready=False)
    assert srv.proc.wait(90) == 1
    assert "does not match the main model's contract" in srv.log()


def test_unsigned_fallback_is_refused_when_a_key_is_configured(
    tmp_path: Path, models, runtime_server
) -> None:
    from paddle_runtime.integrity import sign_model_dir

    key = tmp_path / "hmac.key"
    key.write_bytes(b"k")
    main = tmp_path / "main"
    shutil.copytree(models[0], main)
    sign_model_dir(main, hmac_key=b"k")
    srv = runtime_server(
        main, "--hmac-key-file", str(key), "--fallback-model-dir", str(models[1]), wait_ready=False
    )
    assert srv.proc.wait(90) == 1
    assert "fallback model refused: unsigned" in srv.log()
