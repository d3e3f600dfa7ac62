"""Batching settings from the mounted ConfigMap apply to the running process (issue 12).

The config directory is laid out the way kubelet mounts a ConfigMap volume (``config.yaml`` ->
``..data/config.yaml``, ``..data`` -> a timestamped directory, swapped by renaming a new symlink
over ``..data``), and the runtime is started the way the operator starts it (``--config``).  The test
reads the values the process uses: ``/version`` and the sizes of the batches it actually runs.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import yaml

NAME = "ch_ppocr_mobile_v2_cls_infer"
SHAPE = (1, 3, 48, 192)


class MountedConfigMap:
    """A directory that behaves like kubelet's ConfigMap volume for one key, ``config.yaml``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir()
        self._n = 0

    @property
    def file(self) -> Path:
        return self.root / "config.yaml"

    def write(self, settings: dict[str, Any]) -> None:
        self._n += 1
        data = self.root / f"..2026_12_02_{self._n:04d}"
        data.mkdir()
        (data / "config.yaml").write_text(yaml.safe_dump(settings))
        tmp = self.root / "..data_tmp"
        os.symlink(data.name, tmp)
        os.replace(tmp, self.root / "..data")  # the atomic swap kubelet does
        if not self.file.is_symlink():
            os.symlink("..data/config.yaml", self.file)


def _batching(srv: Any) -> dict[str, Any]:
    b = json.loads(srv.get("/version")[1])["batching"]
    return {k: b[k] for k in ("maxBatchSize", "batchTimeoutMs", "batchable")}


def _wait_batching(srv: Any, want: dict[str, Any], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = _batching(srv)
        if all(got[k] == v for k, v in want.items()):
            return
        time.sleep(0.2)
    raise AssertionError(f"/version batching is {_batching(srv)}, expected {want}\n{srv.log()[-3000:]}")


def _batch_counts(srv: Any) -> dict[str, float]:
    """Executed batches so far: total and per histogram bucket (``le`` -> count)."""
    counts: dict[str, float] = {}
    for line in srv.get("/metrics")[1].decode().splitlines():
        if f'model="{NAME}"' not in line:
            continue
        if line.startswith("paddle_runtime_batch_size_count"):
            counts["total"] = float(line.split()[-1])
        elif line.startswith("paddle_runtime_batch_size_bucket"):
            le = line.split('le="')[1].split('"')[0]
            counts[le] = float(line.split()[-1])
    return counts


def _load(srv: Any, n: int = 96, threads: int = 16) -> None:
    x = np.random.default_rng(0).random(SHAPE, dtype=np.float32)
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": list(SHAPE),
                                   "data": x.ravel().tolist()}]}).encode()

    def one(_: int) -> int:
        req = urllib.request.Request(f"{srv.url}/v2/models/{NAME}/infer", body,
                                     {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status

    with ThreadPoolExecutor(threads) as pool:
        assert set(pool.map(one, range(n))) == {200}


def _delta(after: dict[str, float], before: dict[str, float], key: str) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_changed_max_batch_size_and_timeout_are_used_by_the_running_runtime(
        tmp_path: Path, ocr_cls_dir: Path, runtime_server: Any) -> None:
    cm = MountedConfigMap(tmp_path / "config")
    cm.write({"max_batch_size": 8, "batch_timeout_ms": 5})
    srv = runtime_server(ocr_cls_dir, "--config", str(cm.file), "--workers", "1")
    assert _batching(srv) == {"maxBatchSize": 8, "batchTimeoutMs": 5, "batchable": True}

    before = _batch_counts(srv)
    _load(srv)
    after = _batch_counts(srv)
    # With 16 callers and one worker, batches of more than 2 rows form while max_batch_size is 8.
    assert _delta(after, before, "2.0") < _delta(after, before, "total"), (before, after)

    cm.write({"max_batch_size": 2, "batch_timeout_ms": 40})
    _wait_batching(srv, {"maxBatchSize": 2, "batchTimeoutMs": 40})
    before = _batch_counts(srv)
    _load(srv)
    after = _batch_counts(srv)
    total = _delta(after, before, "total")
    assert total > 0 and _delta(after, before, "2.0") == total, (before, after)  # no batch over 2 rows
    assert _delta(after, before, "1.0") < total, (before, after)  # and it still batches, up to 2

    # A ConfigMap value the settings refuse is ignored: the running values stay.
    cm.write({"max_batch_size": 0, "batch_timeout_ms": 40})
    time.sleep(2.5)
    assert _batching(srv)["maxBatchSize"] == 2
    assert "ignoring the new" in srv.log()
    assert srv.proc.poll() is None


def test_watcher_hands_each_subscriber_its_changes_and_keeps_flags_and_env_pinned(
        tmp_path: Path, monkeypatch: Any, caplog: Any) -> None:
    from paddle_runtime.config_watch import ConfigWatcher
    from paddle_runtime.settings import load_settings

    cm = MountedConfigMap(tmp_path / "config")
    cm.write({"max_batch_size": 8, "batch_timeout_ms": 5, "fallback_window": 10, "workers": 1})
    monkeypatch.setenv("PADDLE_RUNTIME_FALLBACK_WINDOW", "10")
    settings = load_settings(str(cm.file), model_dir="m", batch_timeout_ms=7.0)
    watcher = ConfigWatcher(settings, pinned={"batch_timeout_ms"})
    got: dict[str, list[dict[str, Any]]] = {"batch": [], "fallback": []}
    watcher.subscribe(("max_batch_size", "batch_timeout_ms"), got["batch"].append)
    watcher.subscribe(("fallback_window",), got["fallback"].append)
    assert watcher.check() == {}  # the file the settings were read from: nothing to apply

    cm.write({"max_batch_size": 4, "batch_timeout_ms": 50, "fallback_window": 3, "workers": 2})
    changed = watcher.check()
    # batch_timeout_ms was a flag and fallback_window an env var: both keep their values.
    assert changed == {"max_batch_size": 4, "workers": 2}
    assert got == {"batch": [{"max_batch_size": 4}], "fallback": []}
    assert watcher.current.max_batch_size == 4 and watcher.current.batch_timeout_ms == 7.0
    assert "['workers']; these take effect only after a restart" in caplog.text

    cm.write({"max_batch_size": "many"})
    assert watcher.check() == {} and watcher.current.max_batch_size == 4
    assert "ignoring the new" in caplog.text


def _slo_lines(srv: Any) -> list[str]:
    _, body = srv.get("/metrics")
    return sorted(ln for ln in body.decode().splitlines()
                  if ln.startswith(("paddle_runtime_slo_", "paddle_runtime_requests_over_latency_target_total{")))


def _infer_once(srv: Any) -> None:
    x = np.zeros(SHAPE, dtype=np.float32)
    doc = {"inputs": [{"name": "x", "shape": list(SHAPE), "datatype": "FP32", "data": x.ravel().tolist()}]}
    req = urllib.request.Request(f"{srv.url}/v2/models/{NAME}/infer", data=json.dumps(doc).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 200


def test_changed_sla_is_published_by_the_running_runtime(
        tmp_path: Path, ocr_cls_dir: Path, runtime_server: Any) -> None:
    cm = MountedConfigMap(tmp_path / "config")
    cm.write({"sla_availability_percent": 99.9})
    srv = runtime_server(ocr_cls_dir, "--config", str(cm.file), "--workers", "1")
    assert _slo_lines(srv) == [f'paddle_runtime_slo_objective_ratio{{model="{NAME}",slo="availability"}} 0.999']

    # A 1 ms target: the classifier's requests are slower, so each one counts against it.
    cm.write({"sla_availability_percent": 99.5, "sla_latency_p99_ms": 1})
    deadline = time.monotonic() + 30
    while len(_slo_lines(srv)) < 3 and time.monotonic() < deadline:
        time.sleep(0.5)
    _infer_once(srv)
    _infer_once(srv)
    lines = _slo_lines(srv)
    assert f'paddle_runtime_slo_latency_target_seconds{{model="{NAME}"}} 0.001' in lines
    assert f'paddle_runtime_slo_objective_ratio{{model="{NAME}",slo="availability"}} 0.995' in lines
    assert f'paddle_runtime_slo_objective_ratio{{model="{NAME}",slo="latency"}} 0.99' in lines
    assert any(ln.startswith("paddle_runtime_requests_over_latency_target_total{") and ln.endswith(" 2.0")
               for ln in lines), lines

    # spec.sla removed: the operator writes zeros (a key missing from the file keeps its running value).
    cm.write({"sla_availability_percent": 0, "sla_latency_p99_ms": 0})
    deadline = time.monotonic() + 30
    while _slo_lines(srv) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _slo_lines(srv) == []
