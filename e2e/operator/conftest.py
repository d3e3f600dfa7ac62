"""Fixtures for the operator e2e tests: the CRD installed, ``paddle-operator run`` as a real
subprocess against the local control plane, and namespaces it watches.

The operator watches the glob ``pmsop-*`` so it never touches namespaces of other suites (the canary
tests run their own operator per namespace), and tests can kill and restart it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.util import dump_namespace, wait_for

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / "serving.paddlesla.io_paddlemodelservices.yaml"
OPERATOR_BIN = Path(sys.executable).with_name("paddle-operator")
NS_PREFIX = "pmsop-"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OperatorProcess:
    """``paddle-operator run --namespace 'pmsop-*'``, with its log kept in a file for failure dumps."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        # ``env`` is the process's whole environment: a kubeconfig and PADDLE_OPERATOR_* settings.
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self) -> OperatorProcess:
        self.port = _free_port()
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                str(OPERATOR_BIN),
                "run",
                "--namespace",
                f"{NS_PREFIX}*",
                "--liveness",
                f"http://127.0.0.1:{self.port}/healthz",
                # kopf's and our debug lines, for chasing a race (the failure dump shows the log's tail).
                *(["--verbose"] if os.environ.get("E2E_OPERATOR_VERBOSE") else []),
            ],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        wait_for(self.healthy, 60, "operator health endpoint", dump=self.log)
        return self

    def healthy(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"operator exited: {self.log()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: no cleanup, exactly like a node loss or OOM kill."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


_REPORT: list[str] = []


@pytest.fixture(scope="session")
def report() -> Any:
    """``report(line)``: a line for the "operator timings" section at the end of the run (not captured)."""
    return _REPORT.append


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _REPORT:
        terminalreporter.section("operator timings")
        for line in _REPORT:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def crd_installed(cluster: Any) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    # `kubectl wait` errors out (instead of waiting) while a fresh CRD has no conditions yet.
    wait_for(
        lambda: cluster.kubectl(
            "wait", "--for=condition=Established", "crd/paddlemodelservices.serving.paddlesla.io",
            "--timeout=5s", check=False,
        ).returncode == 0,
        60, "CRD Established",
    )


@pytest.fixture(scope="module")
def operator(
    cluster: Any, crd_installed: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    proc = OperatorProcess(cluster.env, tmp_path_factory.mktemp("operator") / "operator.log").start()
    try:
        yield proc
    finally:
        proc.stop()
        if os.environ.get("E2E_SHOW_OPERATOR_LOG"):
            print(proc.log())


@pytest.fixture
def ns(cluster: Any, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace the operator watches; deleted afterwards even when the test fails."""
    stem = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:30].rstrip("-")
    name = f"{NS_PREFIX}{stem}-{uuid.uuid4().hex[:5]}"
    cluster.kubectl("create", "namespace", name)
    try:
        wait_for(
            lambda: (
                cluster.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode == 0
            ),
            60,
            f"ServiceAccount default in {name}",
        )
        yield name
    finally:
        cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


def get_json(cluster: Any, *args: str) -> dict[str, Any] | None:
    """``kubectl get ... -o json`` or None when not found."""
    proc = cluster.kubectl("get", *args, "-o", "json", check=False)
    if proc.returncode != 0:
        if "NotFound" in proc.stderr or "not found" in proc.stderr:
            return None
        raise RuntimeError(proc.stderr)
    return json.loads(proc.stdout)


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return c
    return None


def wait_ready(cluster: Any, ns: str, name: str, op: OperatorProcess, timeout: float = 60) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        pms = get_json(cluster, "pms", name, "-n", ns)
        c = condition(pms, "Ready")
        return pms if c is not None and c["status"] == "True" else None

    dump = dump_namespace(cluster, ns)
    return wait_for(
        ready,
        timeout,
        f"PaddleModelService {ns}/{name} Ready",
        dump=lambda: dump() + "\n---- operator log (tail) ----\n" + op.log()[-4000:],
    )


def apply_yaml(cluster: Any, ns: str, text: str) -> None:
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=text)


def monotonic() -> float:
    return time.monotonic()
