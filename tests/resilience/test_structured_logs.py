"""JSON logs (``log_format: json``) of a real ``paddle-runtime serve``: a hot reload and a fallback
switch are each one event carrying model, from/to version, load_ms, result and error."""

from __future__ import annotations

import json
import re
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import yaml

from .conftest import Client, get_json, publish, wait_until

HMAC = b"structured-log-key"
JSON_LOGS = {"PADDLE_RUNTIME_LOG_FORMAT": "json"}
# What the text format would print for the runtime's own loggers.
TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\d .* (DEBUG|INFO|WARNING|ERROR) paddle_runtime")


def _records(log: str) -> list[dict]:
    assert not [ln for ln in log.splitlines() if TEXT_LINE.match(ln)], "text log lines in JSON mode"
    # Paddle's C++ (glog) writes its own lines to stderr; every line of ours is one JSON object.
    return [json.loads(ln) for ln in log.splitlines() if ln.startswith("{")]


def _events(log: str, name: str) -> list[dict]:
    return [r for r in _records(log) if r.get("event") == name]


def test_reloads_are_single_json_events(tmp_path: Path, export_model_dir, runtime_server) -> None:
    v0, v1 = (export_model_dir("mobilenet_v3_small", seed=s, version=f"v{s}") for s in (0, 1))
    key = tmp_path / "hmac.key"
    key.write_bytes(HMAC)
    dest = tmp_path / "models"
    good = publish(v0, dest, "v0", hmac_key=HMAC)
    srv = runtime_server(dest, "--hmac-key-file", str(key), "--reload-poll-s", "0", env=JSON_LOGS)
    records = _records(srv.log())
    assert records and all({"ts", "level", "logger", "msg"} <= r.keys() for r in records)

    # A tampered candidate: refused, one failure event with the runtime's error.
    bad = dest / "versions" / "tampered"
    shutil.copytree(good, bad)
    params = bad / "inference.pdiparams"
    data = bytearray(params.read_bytes())
    data[len(data) // 3] ^= 0x5A
    params.write_bytes(bytes(data))
    from paddle_runtime.store import switch_current

    switch_current(dest, bad)
    srv.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: get_json(srv.url, "/version")["reloads"]["failure"] >= 1, 120, "tampered refused")
    wait_until(lambda: _events(srv.log(), "reload"), 10, "reload event logged")
    (fail,) = _events(srv.log(), "reload")
    assert fail["level"] == "ERROR" and fail["result"] == "failure"
    assert fail["model"] == "mobilenet-v3-small" and fail["from_version"] == "v0" and fail["to_version"] is None
    assert fail["error"].startswith("checksum:") and fail["load_ms"] is None

    # A good one: one success event with both versions and the load time.
    publish(v1, dest, "v1", hmac_key=HMAC)
    srv.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: get_json(srv.url, "/version")["version"] == "v1", 180, "v1 served")
    wait_until(lambda: len(_events(srv.log(), "reload")) == 2, 10, "second reload event")
    ok = _events(srv.log(), "reload")[1]
    assert ok["result"] == "success" and ok["error"] is None
    assert (ok["model"], ok["from_version"], ok["to_version"]) == ("mobilenet-v3-small", "v0", "v1")
    assert ok["load_ms"] == get_json(srv.url, "/version")["load_ms"] > 0


def test_fallback_switch_is_a_single_json_event(tmp_path: Path, export_model_dir, runtime_server) -> None:
    main_dir = export_model_dir("mobilenet_v3_small", seed=0, version="v0")
    fb_dir = export_model_dir("mobilenet_v3_small", seed=1, version="v1")
    faults = tmp_path / "faults.yaml"
    faults.write_text(yaml.safe_dump({"main": {"fail": True}}))
    srv = runtime_server(main_dir, "--fallback-model-dir", str(fb_dir),
                         env={**JSON_LOGS, "PADDLE_RUNTIME_FAULT_INJECTION_FILE": str(faults)})
    client = Client(srv.url, "mobilenet-v3-small", np.zeros((1, 3, 224, 224), dtype=np.float32))
    deadline = time.monotonic() + 60
    while not _events(srv.log(), "fallback_switch") and time.monotonic() < deadline:
        client.infer()
    client.close()
    (switch,) = _events(srv.log(), "fallback_switch")
    assert (switch["model"], switch["from"], switch["to"]) == ("mobilenet-v3-small", "main", "fallback")
    assert (switch["from_version"], switch["to_version"]) == ("v0", "v1")
    assert switch["result"] == "switched" and switch["reason"]
