"""Resilience per pipeline stage, on a real ``paddle-runtime serve --pipeline ppocr`` under client load.

Each stage (det, cls, rec) is a model unit like a single served model (runtime/paddle_runtime/unit.py):
its own fallback router, hot reload of its directory and integrity checks with its own keys. Faults
are injected into one stage's engine with the test-only fault injector (``faults.py``), keyed by the
stage's model name. Figures (failed requests, switch times) are printed; run with ``-s`` to see them.
"""

from __future__ import annotations

import http.client
import json
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from resilience.conftest import get_json, metric_value, publish, wait_until

from paddle_runtime.store import switch_current

from .conftest import post
from .render import Case

HMAC = b"det-stage-key"
TEXT = ["Invoice INV-2026-0042"]


def _single(cases: list[Case]) -> bytes:
    return next(c for c in cases if c.name == "single-line").data


@dataclass
class Load:
    """Client threads posting one image to ``/ocr`` over keep-alive connections until stopped."""

    url: str
    image: bytes
    clients: int = 2
    answers: list[tuple[float, int, dict[str, Any]]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def _client(self) -> None:
        host, port = self.url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=120)
        while not self._stop.is_set():
            try:
                conn.request("POST", "/ocr", body=self.image)
                r = conn.getresponse()
                status, body = r.status, json.loads(r.read())
            except (OSError, http.client.HTTPException, ValueError) as e:
                conn.close()
                conn = http.client.HTTPConnection(host, int(port), timeout=120)
                status, body = 0, {"error": repr(e)}
            self.answers.append((time.monotonic(), status, body))
        conn.close()

    def __enter__(self) -> Load:
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(self.clients)]
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(180)

    def since(self, t: float) -> list[tuple[float, int, dict[str, Any]]]:
        return [a for a in list(self.answers) if a[0] >= t]

    def wait_for(self, what: str, pred: Any, after: float, timeout: float = 240) -> float:
        """Time (monotonic) of the first answer after ``after`` that satisfies ``pred``."""
        def found() -> float | None:
            return next((t for t, s, b in self.since(after) if s == 200 and pred(b)), None)
        return wait_until(found, timeout, what, interval=0.2)

    def failures(self) -> list[tuple[float, int, dict[str, Any]]]:
        """Answers that are not 200 with the rendered text."""
        return [a for a in list(self.answers) if a[1] != 200 or [r["text"] for r in a[2]["results"]] != TEXT]


def _role(stage: str) -> Any:
    return lambda body: body["stages"][stage]["role"]


# ---- fallback per stage ------------------------------------------------------------------------------


@pytest.fixture
def fallback_server(runtime_server: Any, tmp_path: Path, ocr_det_dir: Path, ocr_rec_dir: Path) -> Any:
    """Pipeline with det and rec each given a fallback (copies of the bundled models) and fault injection."""
    det_fb, rec_fb = tmp_path / "det-fallback", tmp_path / "rec-fallback"
    shutil.copytree(ocr_det_dir, det_fb)
    shutil.copytree(ocr_rec_dir, rec_fb)
    faults = tmp_path / "faults.yaml"
    faults.write_text("{}\n")
    quick = {"fallback_hold_s": 1.0, "fallback_ramp_step_s": 0.5, "fallback_recovery_steps": [50, 100],
             "fallback_probe_interval_s": 0.5}
    config = tmp_path / "config.yaml"

    def stages(det_threshold_ms: int, rec_batch: int) -> dict[str, Any]:
        # rec: errors switch it (2 in a row); det: latency (one request over the threshold).
        return {"ocr_stages": {
            "rec": {"fallback_model_dir": str(rec_fb), "fallback_error_threshold": 2, "fallback_window": 2,
                    "max_batch_size": rec_batch, **quick},
            "det": {"fallback_model_dir": str(det_fb), "fallback_latency_threshold_ms": det_threshold_ms,
                    "fallback_window": 1, **quick},
        }}

    config.write_text(yaml.safe_dump(stages(60000, 8)))
    srv = runtime_server("", "--pipeline", "ppocr", "--config", str(config), timeout=300,
                         env={"PADDLE_RUNTIME_FAULT_INJECTION_FILE": str(faults)})
    srv.faults = faults
    srv.config, srv.stages = config, stages
    return srv


def test_a_failing_or_slow_stage_falls_back_while_the_pipeline_keeps_answering_the_right_text(
        fallback_server: Any, ocr_cases: list[Case]) -> None:
    srv = fallback_server
    info = get_json(srv.url, "/version")
    assert {st: info["stages"][st]["fallback"] and info["stages"][st]["fallback"]["state"] for st in info["stages"]} \
        == {"det": "main", "cls": None, "rec": "main"}
    # Stage thresholds and batching are live: the config watcher hands each stage its own (8 s for det:
    # nothing on this machine takes that long unless injected).
    srv.config.write_text(yaml.safe_dump(srv.stages(8000, 4)))
    wait_until(lambda: (i := get_json(srv.url, "/version")["stages"])["det"]["fallback"]["thresholds"][
        "fallback_latency_threshold_ms"] == 8000 and i["rec"]["batching"]["maxBatchSize"] == 4, 30, "live stage settings")
    assert get_json(srv.url, "/version")["stages"]["det"]["batching"]["maxBatchSize"] == 1  # det's own cap, untouched
    with Load(srv.url, _single(ocr_cases)) as load:
        wait_until(lambda: len(load.answers) >= 2, 240, "steady traffic")

        # rec fails: every failed recognition batch is answered by rec's fallback at once, and after two
        # in a row rec's traffic goes there; det and cls keep their main models.
        t0 = time.monotonic()
        srv.faults.write_text(yaml.safe_dump({"ppocr-rec": {"main": {"fail": True}}}))
        first_rec_fb = load.wait_for("an answer with rec on its fallback", lambda b: _role("rec")(b) == "fallback", t0)
        v = wait_until(lambda: (i := get_json(srv.url, "/version"))["stages"]["rec"]["fallback"]["state"] == "fallback"
                       and i, 120, "rec switched to its fallback")
        rec_switch = time.monotonic() - t0
        assert v["stages"]["det"]["fallback"]["state"] == "main"
        assert "2 consecutive errors" in v["stages"]["rec"]["fallback"]["last_switch_reason"]
        t1 = time.monotonic()
        load.wait_for("two more answers", lambda b: True, t1)
        during = [b for _, s, b in load.since(t1) if s == 200]
        assert all(b["stages"]["rec"]["role"] == "fallback" and b["stages"]["det"]["role"] == "main" for b in during)

        # det slow: one request over the threshold moves det's traffic to its fallback.
        t2 = time.monotonic()
        srv.faults.write_text(yaml.safe_dump({"ppocr-rec": {"main": {"fail": True}},
                                              "ppocr-det": {"main": {"delay_ms": 9000}}}))
        load.wait_for("an answer with det on its fallback", lambda b: _role("det")(b) == "fallback", t2)
        det_switch = time.monotonic() - t2
        assert metric_value(srv.url, "paddle_runtime_fallback_switches_total", model="ppocr-det", to="fallback") == 1
        assert metric_value(srv.url, "paddle_runtime_fallback_switches_total", model="ppocr-rec", to="fallback") == 1
        assert metric_value(srv.url, "paddle_runtime_fallback_active") == 1
        assert metric_value(srv.url, "paddle_runtime_active_role", model="ppocr-cls") == 0  # no router, no series

        # Faults gone: each stage's probes recover it and its ramp brings traffic back to main.
        t3 = time.monotonic()
        srv.faults.write_text("{}\n")
        wait_until(lambda: {st: s["fallback"]["state"] for st, s in get_json(srv.url, "/version")["stages"].items()
                            if s["fallback"]} == {"det": "main", "rec": "main"}, 300, "both stages back on main")
        recovered = time.monotonic() - t3
        t4 = time.monotonic()
        load.wait_for("an answer from main models only", lambda b: all(
            s["role"] == "main" for s in b["stages"].values()), t4)
    failed = load.failures()
    fb_answers = sum(1 for _, s, b in load.answers if s == 200 and "fallback" in {x["role"] for x in b["stages"].values()})
    print(f"\nstage fallback: {len(load.answers)} requests, {len(failed)} failed or wrong, {fb_answers} answered "
          f"with a stage on its fallback; first rec-fallback answer {first_rec_fb - t0:.1f}s after the fault, rec "
          f"switched in {rec_switch:.1f}s, det (latency) in {det_switch:.1f}s, both back on main {recovered:.1f}s "
          "after the faults were removed")
    assert not failed, f"{len(failed)} failed, first: {failed[0][1]} {str(failed[0][2])[:300]}"
    # The request metrics name the role: answers with a stage on its fallback count as role=fallback.
    assert metric_value(srv.url, "paddle_runtime_requests_total", model="ppocr", role="fallback", code="200") >= 1
    assert metric_value(srv.url, "paddle_runtime_fallback_active") == 0


# ---- hot reload and signing per stage ----------------------------------------------------------------


@pytest.fixture(scope="module")
def signed_det(runtime_launcher: Any, tmp_path_factory: pytest.TempPathFactory, ocr_det_dir: Path) -> Iterator[Any]:
    """Pipeline whose det stage is a model store (``current`` -> versions/v1) signed with the det
    stage's own key; cls and rec are the bundled, unsigned models (no key applies to them)."""
    root = tmp_path_factory.mktemp("det-store")
    key = root / "det.key"
    key.write_bytes(HMAC)
    store = root / "det"
    publish(ocr_det_dir, store, "v1", hmac_key=HMAC)
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump({"ocr_stages": {"det": {"hmac_key_file": str(key)}}}))
    srv = runtime_launcher("", "--pipeline", "ppocr", "--ocr-det-model-dir", str(store), "--config", str(config),
                           timeout=300, log_dir=root, env={"PADDLE_RUNTIME_RELOAD_POLL_S": "0.5"})
    srv.store, srv.src = store, ocr_det_dir
    yield srv
    srv.stop()


def test_a_signed_stage_is_verified_with_its_own_key_at_start(signed_det: Any) -> None:
    info = get_json(signed_det.url, "/version")
    assert info["stages"]["det"]["integrity_checks"] == ["sha256", "hmac"]
    assert info["stages"]["rec"]["integrity_checks"] == [] and info["stages"]["det"]["version"] == "v1"


def test_a_stage_hot_reloaded_under_load_loses_no_request(signed_det: Any, ocr_cases: list[Case]) -> None:
    srv = signed_det
    with Load(srv.url, _single(ocr_cases)) as load:
        wait_until(lambda: len(load.answers) >= 4, 240, "steady traffic")
        t0 = time.monotonic()
        publish(srv.src, srv.store, "v2", hmac_key=HMAC)
        first = load.wait_for("an answer from det v2", lambda b: b["stages"]["det"]["version"] == "v2", t0, 300)
        wait_until(lambda: len(load.since(first)) >= 6, 240, "six answers after the swap")
    failed = load.failures()
    versions = [b["stages"]["det"]["version"] for _, s, b in sorted(load.answers, key=lambda a: a[0]) if s == 200]
    info = get_json(srv.url, "/version")["stages"]["det"]
    print(f"\nstage hot reload: {len(load.answers)} requests, {len(failed)} failed or wrong; det v1 -> v2 served "
          f"{first - t0:.1f}s after the new version was published (load {info['load_ms']:.0f} ms, checks "
          "sha256+hmac, child-process probe)")
    assert not failed, f"{len(failed)} failed, first: {failed[0][1]} {str(failed[0][2])[:300]}"
    # Versions only move forward, and the other stages were not touched.
    assert versions[0] == "v1" and versions[-1] == "v2" and versions == sorted(versions)
    assert info["version"] == "v2" and info["previous_version"] == "v1"
    assert info["reloads"] == {"success": 1, "failure": 0}
    assert get_json(srv.url, "/version")["stages"]["rec"]["reloads"] == {"success": 0, "failure": 0}
    assert metric_value(srv.url, "paddle_runtime_reloads_total", model="ppocr-det", result="success") == 1


def _flip_byte(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[len(data) // 3] ^= 0x5A
    p.write_bytes(bytes(data))


def test_a_tampered_or_unsigned_stage_candidate_is_refused_while_the_old_one_keeps_serving(
        signed_det: Any, ocr_cases: list[Case]) -> None:
    srv = signed_det
    served = get_json(srv.url, "/version")["stages"]["det"]["version"]
    good = srv.store / "versions" / served
    cases = [("tampered", lambda d: _flip_byte(d / "inference.pdiparams"), "checksum"),
             ("unsigned", lambda d: [(d / n).unlink() for n in ("MANIFEST.json", "MANIFEST.hmac")], "unsigned")]
    for n, (name, spoil, kind) in enumerate(cases, start=1):
        bad = srv.store / "versions" / name
        shutil.copytree(good, bad)
        spoil(bad)
        switch_current(srv.store, bad)
        info = wait_until(lambda n=n: (i := get_json(srv.url, "/version")["stages"]["det"])["reloads"]["failure"] >= n
                          and i, 120, f"{name} det candidate refused")
        assert info["reload_failing"] and info["last_error"].startswith(f"{kind}:"), info["last_error"]
        assert info["version"] == served
        # What the operator reads: the refusal, on the stage's model.
        assert metric_value(srv.url, "paddle_runtime_reload_failing", model="ppocr-det") == 1
        status, body = post(srv.url + "/ocr", _single(ocr_cases))
        assert status == 200 and [r["text"] for r in body["results"]] == TEXT
        assert body["stages"]["det"] == {"version": served, "role": "main"}
    assert metric_value(srv.url, "paddle_runtime_reloads_total", model="ppocr-det", result="failure") == 2
    assert "reload of" in srv.log() and "refused" in srv.log()
    # Back on the good version: the error goes with the cause.
    switch_current(srv.store, good)
    wait_until(lambda: not get_json(srv.url, "/version")["stages"]["det"]["reload_failing"], 60, "error cleared")
    assert metric_value(srv.url, "paddle_runtime_reload_failing") == 0


# ---- settings of a stage ---------------------------------------------------------------------------


def test_a_stage_entry_is_checked_like_the_runtime_settings_and_names_the_stage(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from paddle_runtime.settings import RuntimeSettings

    with pytest.raises(ValidationError, match=r"ocr_stages\.rec\.fallback_window: Input should be greater"):
        RuntimeSettings(pipeline="ppocr", ocr_stages={"rec": {"fallback_window": 0}})
    with pytest.raises(ValidationError, match=r"ocr_stages\.det: \['model_dir'\] cannot be set per stage"):
        RuntimeSettings(pipeline="ppocr", ocr_stages={"det": {"model_dir": "/x"}})
    # A top-level fallback would be inherited by every stage: refused, pointing at ocr_stages.
    with pytest.raises(ValidationError, match=r"ocr_stages\.<stage>\.fallback_model_dir"):
        RuntimeSettings(pipeline="ppocr", fallback_model_dir="/x")
    s = RuntimeSettings(pipeline="ppocr", fallback_window=5, max_batch_size=8, ocr_det_max_batch_size=1,
                        ocr_stages={"rec": {"fallback_model_dir": "/fb", "fallback_window": 2}})
    rec, det = s.for_stage("rec", "/m/rec", "ppocr-rec"), s.for_stage("det", "/m/det", "ppocr-det")
    assert (rec.model_dir, rec.model_name, rec.fallback_model_dir, rec.fallback_window) == ("/m/rec", "ppocr-rec", "/fb", 2)
    # The runtime's values are each stage's defaults; det's batch cap is its own.
    assert (det.fallback_model_dir, det.fallback_window, det.max_batch_size, rec.max_batch_size) == ("", 5, 1, 8)
