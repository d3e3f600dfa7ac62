"""Fixtures for the canary e2e tests on kwok nodes: the operator as a process, per test namespace.

The pods here run on kwok nodes: nothing listens behind them, so nothing here measures traffic or
reads metrics. These tests cover what needs no running pod: a tag change becoming a canary, and the
router objects the API server accepts. Analysis, traffic and rollbacks run on the real node, with a
Prometheus that discovers the pods and a real Gateway API router (``e2e/realnode/test_traffic.py``).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from e2e.util import wait_for

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


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


def _tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


# ---------------------------------------------------------------------------------- operator


@pytest.fixture(scope="session")
def crds_installed(cluster) -> None:
    """Our CRD, applied the way users do."""
    cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
    # Polled, not `kubectl wait`: that fails outright while the new CRD has no conditions yet.
    wait_for(
        lambda: cluster.kubectl("get", "pms", "-A", check=False).returncode == 0,
        60,
        "PaddleModelService CRD established",
    )


@dataclass
class Operator:
    """One ``paddle-operator run`` process at a time; :meth:`restart` kills it hard and starts another."""

    cmd: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen | None = None

    def start(self) -> Operator:
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen(
                self.cmd, stdout=fh, stderr=subprocess.STDOUT, env=self.env, preexec_fn=_die_with_parent
            )
        time.sleep(1)
        if self.proc.poll() is not None:
            pytest.fail(f"operator exited with {self.proc.returncode}:\n{self.tail()}")
        return self

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, nothing kept in memory; only status survives."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)

    def restart(self) -> None:
        self.kill()
        self.start()

    def tail(self, n: int = 60) -> str:
        return _tail(self.log, n)


@pytest.fixture
def operator_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """More operator settings for one test: ``@pytest.mark.parametrize("operator_env", [{...}], indirect=True)``."""
    return dict(getattr(request, "param", {}))


@pytest.fixture
def operator(
    cluster, namespace: str, crds_installed: None, tmp_path: Path, operator_env: dict[str, str]
) -> Iterator[Operator]:
    """``paddle-operator run`` for this test's namespace, with short rollout ticks and windows."""
    env = dict(
        cluster.env,
        # Seconds instead of minutes so the suite stays short; the rules are the same.
        PADDLE_OPERATOR_ROLLOUT_TICK_S="1",
        PADDLE_OPERATOR_ANALYSIS_MIN_WINDOW_S="10",
        PADDLE_OPERATOR_SLA_PERIOD_S="3",
        PADDLE_OPERATOR_PROMETHEUS_TIMEOUT_S="2",
    )
    env.update(operator_env)
    env.pop("PADDLE_OPERATOR_PROMETHEUS_URL", None)
    cmd = [str(VENV_BIN / "paddle-operator"), "run", "--namespace", namespace, "--liveness", ""]
    op = Operator(cmd, env, tmp_path / "operator.log")
    try:
        yield op.start()
    finally:
        op.stop()
        # Shown by pytest for failing tests: what the operator did.
        print(f"---- operator log ({op.log}) ----\n{op.tail(120)}")
