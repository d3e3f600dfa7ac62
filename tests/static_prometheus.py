"""Runtimes on loopback and a Prometheus scraping them by static targets, for tests with no cluster.

Tests under ``tests/`` run without Kubernetes, so there is nothing to discover: the scrape config
lists the runtime processes and attaches the labels the ``kubernetes_sd_configs`` relabelling of
``deploy/prometheus/scrape-config.yaml`` gives real pods (``namespace``, ``service``, ``track``). The
e2e suites never use this: their Prometheus discovers pods (``e2e/cluster/prometheus.py``).
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

MODEL_NAME = "classifier"
IMAGE_SIZE = 224


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """preexec_fn: the child gets SIGTERM if pytest dies, even by SIGKILL; nothing is left behind."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _stop(proc: subprocess.Popen, timeout: float = 10) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _http_ok(url: str, timeout: float = 2) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


# ---------------------------------------------------------------------------------- runtimes


@dataclass
class Runtime:
    """One ``paddle-runtime serve`` process."""

    name: str
    port: int
    proc: subprocess.Popen
    log: Path
    image_size: int = IMAGE_SIZE
    channels: int = 3

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"


# ---------------------------------------------------------------------------------- load


def _infer_body(rt: Runtime) -> bytes:
    shape = [1, rt.channels, rt.image_size, rt.image_size]
    data = [round((i % 97) / 97, 2) for i in range(rt.channels * rt.image_size * rt.image_size)]
    doc = {"inputs": [{"name": "x", "shape": shape, "datatype": "FP32", "data": data}]}
    return json.dumps(doc, separators=(",", ":")).encode()


@dataclass
class Load:
    """Background inference traffic to some runtimes, a fixed number of requests per second each."""

    targets: list[Runtime]
    rps: float = 3.0
    sent: dict[str, int] = field(default_factory=dict)
    codes: dict[str, dict[int, int]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def _run(self, rt: Runtime, body: bytes) -> None:
        url = f"{rt.url}/v2/models/{MODEL_NAME}/infer"
        period = 1.0 / self.rps
        while not self._stop.is_set():
            start = time.monotonic()
            req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:
                    resp.read()
                    code = resp.status
            except urllib.error.HTTPError as exc:
                code = exc.code
            except (urllib.error.URLError, OSError):
                code = 0
            self.sent[rt.name] = self.sent.get(rt.name, 0) + 1
            per = self.codes.setdefault(rt.name, {})
            per[code] = per.get(code, 0) + 1
            self._stop.wait(max(0.0, period - (time.monotonic() - start)))

    def start(self) -> Load:
        for rt in self.targets:
            t = threading.Thread(
                target=self._run, args=(rt, _infer_body(rt)), name=f"load-{rt.name}", daemon=True
            )
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(15)


@contextlib.contextmanager
def load(*targets: Runtime, rps: float = 3.0) -> Iterator[Load]:
    gen = Load(list(targets), rps).start()
    try:
        yield gen
    finally:
        gen.stop()


# ---------------------------------------------------------------------------------- Prometheus


@dataclass
class Prometheus:
    """A real Prometheus on 127.0.0.1 scraping the given runtimes every second."""

    binary: str
    workdir: Path
    port: int
    scrape: list[tuple[Runtime, dict[str, str]]]
    proc: subprocess.Popen | None = None
    rule_files: list[Path] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.workdir / "prometheus.log"

    def _config(self) -> dict:
        return {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(p) for p in self.rule_files],
            "scrape_configs": [
                {
                    "job_name": "paddle-runtime",
                    "scrape_interval": "1s",
                    "scrape_timeout": "1s",
                    # Static targets with the labels the kubernetes_sd relabelling gives real pods
                    # (docs/canary.md): the operator's queries select on exactly these.
                    "static_configs": [
                        {"targets": [rt.address], "labels": labels} for rt, labels in self.scrape
                    ],
                }
            ],
        }

    def start(self) -> Prometheus:
        cfg = self.workdir / "prometheus.yml"
        cfg.write_text(yaml.safe_dump(self._config(), sort_keys=False))
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={cfg}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--storage.tsdb.retention.time=1h",
                    "--log.level=warn",
                ],
                stdout=fh,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + 60
        while not _http_ok(f"{self.url}/-/ready"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Prometheus did not become ready:\n{_tail(self.log)}")
            time.sleep(0.5)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None

    def query(self, expr: str) -> list[dict]:
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=5) as resp:
            return json.load(resp)["data"]["result"]
