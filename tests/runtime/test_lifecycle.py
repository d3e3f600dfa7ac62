"""Process lifecycle: the console script becomes ready, a full queue answers 503, SIGTERM drains."""

from __future__ import annotations

import json
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

REC = ("ch_PP-OCRv4_rec_infer", "softmax_11.tmp_0")
DET = ("ch_PP-OCRv4_det_infer", "sigmoid_0.tmp_0")


def _infer(hp: str, name: str, out: str, x: np.ndarray) -> np.ndarray:
    inp = triton.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    return triton.InferenceServerClient(hp, network_timeout=120).infer(
        name, [inp], outputs=[triton.InferRequestedOutput(out, binary_data=True)]).as_numpy(out)


def test_console_script_serves_ppocr_rec_dir_ready_after_warmup(runtime_server: Any, ocr_rec_dir: Path,
                                                                 reference: Any) -> None:
    script = shutil.which("paddle-runtime", path=str(Path(sys.executable).parent))
    assert script, "the paddle-runtime console script is not installed"
    rp = runtime_server(ocr_rec_dir, command=[script])
    assert rp.get("/v2/health/ready")[0] == 200 and rp.get("/v2/health/live")[0] == 200
    log = rp.log()
    assert "warmed up in" in log and log.index("warmed up in") < log.index("ready: model")
    x = np.random.default_rng(8).random((2, 3, 48, 320), dtype=np.float32)
    np.testing.assert_allclose(_infer(rp.host_port, *REC, x), reference(ocr_rec_dir, {"x": x})[REC[1]],
                               rtol=1e-4, atol=1e-5)


def _fire(hp: str, n: int, shape: tuple, results: list) -> list[threading.Thread]:
    def one(i: int) -> None:
        try:
            results[i] = _infer(hp, *DET, np.full(shape, 0.1 * (i % 7), np.float32)).shape
        except InferenceServerException as e:
            results[i] = (e.status(), str(e))
        except Exception as e:  # connection refused etc.: recorded, the assertions name it
            results[i] = ("error", repr(e))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    return threads


def test_full_queue_answers_503_with_retry_after_and_admitted_requests_succeed(runtime_server: Any,
                                                                                ocr_det_dir: Path,
                                                                                tmp_path: Path) -> None:
    # Each predict is held 1.5 s (the test-only fault file), so the queue stays full while the
    # requests arrive: without it a slow client on a busy machine sent them one after another
    # and the queue never filled (seen in CI: 8 of 8 answered 200).
    faults = tmp_path / "faults.json"
    faults.write_text(json.dumps({"main": {"delay_ms": 1500}}))
    rp = runtime_server(ocr_det_dir, "--max-queue-size", "2", "--max-batch-size", "1",
                        env={"PADDLE_RUNTIME_FAULT_INJECTION_FILE": str(faults)})
    results: list[Any] = [None] * 12
    for t in _fire(rp.host_port, 12, (1, 3, 640, 640), results):
        t.join(120)
    refused = [r for r in results if isinstance(r[0], str) and r[0].isdigit() and r[0] == "503"]
    ok = [r for r in results if r == (1, 1, 640, 640)]
    assert refused and ok and len(refused) + len(ok) == 12, results
    assert "queue is full" in refused[0][1]
    # The header itself, straight from the server:
    import http.client

    def raw() -> tuple[int, str | None]:
        c = http.client.HTTPConnection("127.0.0.1", rp.port, timeout=60)
        body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3, 640, 640],
                                       "parameters": {"binary_data_size": 640 * 640 * 12}}]}).encode()
        c.request("POST", f"/v2/models/{DET[0]}/infer", body=body + bytes(640 * 640 * 12),
                  headers={"Inference-Header-Content-Length": str(len(body))})
        r = c.getresponse()
        r.read()
        return r.status, r.getheader("Retry-After")

    statuses: list[Any] = []
    threads = [threading.Thread(target=lambda: statuses.append(raw())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert any(s == 503 and ra and int(ra) >= 1 for s, ra in statuses), statuses
    assert rp.get("/v2/health/ready")[0] == 200


def _admitted(metrics_text: str) -> int:
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith(("paddle_runtime_inflight_requests{", "paddle_runtime_requests_total{")):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def test_sigterm_finishes_in_flight_requests_then_exits_zero(runtime_server: Any, ocr_det_dir: Path) -> None:
    rp = runtime_server(ocr_det_dir, "--max-batch-size", "2")
    results: list[Any] = [None] * 10
    threads = _fire(rp.host_port, 10, (1, 3, 640, 640), results)
    # SIGTERM only once all 10 were admitted (in flight or answered): requests that reach the
    # server after it stopped accepting are refused by design, and this test is about the others.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and _admitted(rp.get("/metrics")[1].decode()) < 10:
        time.sleep(0.05)
    assert _admitted(rp.get("/metrics")[1].decode()) == 10
    rp.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(120)
    assert rp.proc.wait(60) == 0
    assert results == [(1, 1, 640, 640)] * 10, results
    assert "drained" in rp.log()


@pytest.mark.parametrize("bad", ["missing", "empty"])
def test_serve_exits_nonzero_when_the_model_cannot_load(runtime_server: Any, tmp_path: Path, bad: str) -> None:
    model_dir = tmp_path / "m"
    if bad == "empty":
        model_dir.mkdir()
    rp = runtime_server(model_dir, wait_ready=False)
    assert rp.proc.wait(120) == 1
    assert ("does not exist" if bad == "missing" else "no Paddle inference model") in rp.log()
