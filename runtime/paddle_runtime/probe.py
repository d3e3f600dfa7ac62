"""The child-process model check: load a reload candidate and run one inference in a subprocess.

Paddle can segfault on a broken model (Paddle #28331, #17234); a segfault here only kills the
child, and the parent turns it into :class:`~.errors.ModelRejected` (kind ``crash``).  Run as
``python -m paddle_runtime.probe`` by :func:`probe_in_child` only.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .engine import PaddleEngine
from .errors import ModelRejected
from .settings import RuntimeSettings

log = logging.getLogger("paddle_runtime.reload")

_PROBE_ENV = "PADDLE_RUNTIME_PROBE_SETTINGS"
# The child check is a whole process (interpreter start, paddle import, load, one run): at nice 10 it
# got ~10 % of a saturated core and took 20 s; at 5 (~25 %) it stays a few seconds.
_CHILD_NICE = 5


def probe_in_child(model_dir: Path, settings: RuntimeSettings, timeout_s: float) -> dict[str, Any]:
    """Load ``model_dir`` and run a warm-up inference in a child process; return its I/O description.

    Raises :class:`ModelRejected` when the child fails, crashes (signal) or times out.
    """
    cfg = settings.model_dump(mode="json")
    # The child loads exactly one predictor once: cheap, and enough to find a model Paddle chokes on.
    cfg.update({"config_file": None, "workers": 1, "warmup_runs": 1, "model_dir": str(model_dir)})
    env = {**os.environ, _PROBE_ENV: json.dumps(cfg)}
    cmd = [sys.executable, "-m", "paddle_runtime.probe"]
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise ModelRejected(f"checking {model_dir} in a child process took over {timeout_s:.0f}s", kind="probe") from None
    if proc.returncode < 0:
        try:
            sig = signal.Signals(-proc.returncode).name
        except ValueError:
            sig = str(-proc.returncode)
        raise ModelRejected(f"loading {model_dir} crashed the check process ({sig}); not loaded here", kind="crash")
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        reason = lines[-1] if lines else f"exit status {proc.returncode}"
        raise ModelRejected(f"{model_dir} cannot be loaded: {reason[:500]}", kind="load")
    try:
        info = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise ModelRejected(f"check process for {model_dir} printed no result", kind="load") from None
    log.info(
        "candidate %s passed the child-process check in %.0f ms", model_dir, 1000 * (time.monotonic() - t0)
    )
    return info


def _probe_main() -> int:
    """Child side of :func:`probe_in_child`."""
    try:  # the child lowers its own priority (always allowed; preexec_fn is unsafe with threads)
        os.setpriority(os.PRIO_PROCESS, 0, _CHILD_NICE)
    except (OSError, AttributeError):
        pass
    cfg = json.loads(os.environ[_PROBE_ENV])
    try:
        eng = PaddleEngine(RuntimeSettings(**cfg), model_dir=cfg["model_dir"], role="probe")
        eng.load()
    except Exception as exc:  # reported to the parent as one line; the parent decides
        msg = str(exc).strip().splitlines()
        print(f"{type(exc).__name__}: {msg[-1] if msg else ''}", file=sys.stderr)
        return 3
    specs = {
        "inputs": [[s.name, s.datatype, list(s.shape)] for s in eng.inputs],
        "outputs": [[s.name, s.datatype, list(s.shape)] for s in eng.outputs],
    }
    print(json.dumps(specs))
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(_probe_main())
