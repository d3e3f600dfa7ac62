"""The launcher itself: a warm start with cached binaries is quick, `make cluster-up/down` work, and
an interrupted test session leaves no process (and, for SIGTERM, no temp dir) behind."""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from e2e import cluster as harness

REPO = Path(__file__).resolve().parents[2]
WARM_START_BOUND_S = 120  # generous: the point is "no rebuild", not a benchmark (typically ~10-30 s)

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("E2E_KUBECONFIG")) or os.environ.get("E2E_CLUSTER", "local") != "local",
    reason="tests the local launcher; the suite runs against kind or an existing cluster",
)


def processes_mentioning(text: str) -> dict[int, str]:
    """PID -> command line of our binaries' live processes whose arguments mention ``text`` (a state dir)."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            args
            and args[0].startswith(str(harness.bin_dir()).encode())
            and any(text.encode() in a for a in args)
        ):
            found[int(proc.name)] = b" ".join(args).decode(errors="replace")
    return found


def python_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("E2E_KUBECONFIG", None)
    env.pop("E2E_KEEP_STATE", None)
    return env


def test_cli_up_status_env_down_with_cached_binaries(record_property) -> None:
    assert harness.binaries_ready(), "binaries are built before the tests start"
    name = f"smoke-{uuid.uuid4().hex[:6]}"
    state = harness.cache_dir() / "clusters" / name
    cli = [sys.executable, "-m", "e2e.cluster"]

    def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*cli, *args, "--name", name],
            cwd=REPO,
            env=python_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    try:
        t0 = time.monotonic()
        up = run("up", "--nodes", "1", "--no-real-node", timeout=WARM_START_BOUND_S + 60)
        warm = time.monotonic() - t0
        assert up.returncode == 0, up.stderr
        record_property("warm_start_s", round(warm, 1))
        harness._stderr_log(f"warm start (python -m e2e.cluster up, cached binaries): {warm:.1f}s")
        assert warm < WARM_START_BOUND_S, f"warm start took {warm:.0f}s: {up.stderr}"
        assert f"export KUBECONFIG={state / 'kubeconfig'}" in up.stdout

        again = run("up")
        assert again.returncode == 0 and "already running" in again.stderr, "up is idempotent"

        status = run("status")
        assert status.returncode == 0, status.stdout + status.stderr
        assert "ready" in status.stdout and "DOWN" not in status.stdout

        env = run("env")
        assert env.returncode == 0 and str(harness.bin_dir()) in env.stdout

        nodes = subprocess.run(
            [str(harness.bin_dir() / "kubectl"), "--kubeconfig", str(state / "kubeconfig"), "get", "nodes"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert nodes.returncode == 0 and "kwok-node-0" in nodes.stdout and " Ready " in nodes.stdout, nodes
        assert processes_mentioning(str(state)), "the cluster outlives the `up` command"
    finally:
        down = run("down")
    assert down.returncode == 0, down.stderr
    assert not processes_mentioning(str(state))
    assert not state.exists()
    assert run("status").returncode == 1, "status reports a stopped cluster as not running"


SESSION_SCRIPT = """
import time
from e2e.cluster import open_cluster
with open_cluster() as c:
    print(c.kubeconfig, flush=True)
    time.sleep(600)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_interrupted_session_leaves_no_process_behind(sig: signal.Signals, tmp_path: Path) -> None:
    log = tmp_path / "session.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", SESSION_SCRIPT],
            cwd=REPO,
            env=python_env(),
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    state: Path | None = None
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], WARM_START_BOUND_S)
        assert ready, f"the cluster did not start: {log.read_text()}"
        state = Path(proc.stdout.readline().strip()).parent
        assert processes_mentioning(str(state)), "components are running"

        proc.send_signal(sig)
        proc.wait(timeout=60)
        # SIGKILL gives Python no chance to clean up: the children die through PR_SET_PDEATHSIG.
        deadline = time.monotonic() + 30
        while processes_mentioning(str(state)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not processes_mentioning(str(state)), log.read_text()
        if sig == signal.SIGTERM:
            assert not state.exists(), "SIGTERM unwinds like Ctrl-C and removes the temp dir"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if state is not None:
            for pid in processes_mentioning(str(state)):  # never leave a stray behind, even on failure
                os.kill(pid, signal.SIGKILL)
            shutil.rmtree(state, ignore_errors=True)
