"""Process helpers shared by the control plane and the real node: ports, PIDs, logs."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """preexec_fn: the child is killed when the test process dies, even by SIGKILL.

    SIGKILL, not SIGTERM: all components get it at once, and an API server whose etcd is gone
    hangs in graceful shutdown; there is nothing left to shut down gracefully for.
    """
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"  # zombies are dead
    except (OSError, IndexError):
        return False


def _pid_is(pid: int, binary: str) -> bool:
    """Guards against a recycled PID: only signal a process that runs our binary."""
    try:
        exe = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0].decode()
    except OSError:
        return False
    return exe == binary


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class ClusterStartError(RuntimeError):
    """The local control plane did not come up; the message carries the relevant log tail."""


def check_alive(pids: Mapping[str, int], procs: Mapping[str, subprocess.Popen], logs: Path) -> None:
    """Raise :class:`ClusterStartError` with its log tail if one of the processes has exited."""
    for name, pid in pids.items():
        proc = procs.get(name)
        if proc.poll() is not None if proc else not _pid_alive(pid):
            raise ClusterStartError(f"{name} exited during start-up; last log lines:\n{_tail(logs / f'{name}.log')}")


def wait_until(
    what: str, check: Callable[[], bool], timeout: float, alive: Callable[[], None], log: Path, interval: float
) -> None:
    """Poll ``check`` (exceptions count as "not yet") while ``alive()`` passes; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        alive()
        with contextlib.suppress(Exception):
            if check():
                return
        if time.monotonic() > deadline:
            raise ClusterStartError(
                f"timed out after {timeout:.0f}s waiting for {what}; last {log.stem} log lines:\n{_tail(log)}"
            )
        time.sleep(interval)
