"""A test-only switch that makes engine runs block (a wedged engine), for the liveness e2e.

(The other test-only faults, delays and errors per role, are ``faults.py``'s, around the engine.)

It exists only when the process starts with ``PADDLE_RUNTIME_FAULT_INJECTION=1``; otherwise
:func:`check` is a no-op that reads nothing. When enabled, every engine run first checks for the
file ``PADDLE_RUNTIME_FAULT_DIR/wedge`` (default ``/tmp/paddle-runtime-faults``); the first run
that finds it removes it and blocks forever, exactly as a hung CUDA kernel or a deadlocked predictor
would. One-shot, because ``/tmp`` is an emptyDir that outlives the container: the restarted one must
warm up normally. A test creates it with ``kubectl exec ... touch`` and watches the liveness probe
restart the container.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

ENABLED = os.environ.get("PADDLE_RUNTIME_FAULT_INJECTION") == "1"
WEDGE_FILE = Path(os.environ.get("PADDLE_RUNTIME_FAULT_DIR", "/tmp/paddle-runtime-faults")) / "wedge"


def check() -> None:
    """Block forever if the wedge switch is on (only in a process started with fault injection)."""
    if not ENABLED:
        return
    try:
        WEDGE_FILE.unlink()
    except FileNotFoundError:
        return
    threading.Event().wait()
