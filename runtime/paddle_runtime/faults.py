"""TEST ONLY: :class:`FaultInjector`, an :class:`~.contracts.Engine` wrapper that adds latency or failures.

Enabled by ``fault_injection_file`` (empty by default, so production never builds one); the wiring
(``serve.py``) wraps every engine it builds when the setting is on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .contracts import Engine
from .errors import EngineError
from .model_dir import TensorSpec

log = logging.getLogger("paddle_runtime.faults")


class FaultInjector:
    """TEST ONLY: wraps an engine; ``predict`` first applies the faults configured for its role.

    File format (YAML or JSON), re-read when its mtime changes::

        main:     {delay_ms: 300}            # slow main model
        fallback: {fail: true}               # EngineError from every predict
        main:     {oom: true}                # the message Paddle gives when memory runs out
        ppocr-rec: {main: {fail: true}}      # only the model of that name (a pipeline stage)

A top-level key naming the engine's model holds the faults by role for that model alone; the other
engines read the role keys.

    Delays are real sleeps in the predict thread, so queueing and batching behave as with a slow
    model. The real predict still runs (unless failing), so answers stay the model's own.
    """

    def __init__(self, engine: Engine, path: str, role: str) -> None:
        self._engine = engine
        self._path = Path(path)
        self._role = role
        self._mtime: int | None = None
        self._faults: dict[str, Any] = {}
        self._checked = 0.0
        log.warning("TEST-ONLY fault injection enabled for role %s from %s", role, path)

    # ---- Engine: everything but predict is the wrapped engine's ------------------------------------
    @property
    def role(self) -> str:
        """The role whose faults apply."""
        return self._role

    @property
    def name(self) -> str:
        """See :class:`~.contracts.Engine`."""
        return self._engine.name

    @property
    def version(self) -> str:
        """See :class:`~.contracts.Engine`."""
        return self._engine.version

    @property
    def device(self) -> str:
        """See :class:`~.contracts.Engine`."""
        return self._engine.device

    @property
    def source(self) -> Path:
        """See :class:`~.contracts.Engine`."""
        return self._engine.source

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        """See :class:`~.contracts.Engine`."""
        return self._engine.inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        """See :class:`~.contracts.Engine`."""
        return self._engine.outputs

    @property
    def ready(self) -> bool:
        """See :class:`~.contracts.Engine`."""
        return self._engine.ready

    @property
    def batchable(self) -> bool:
        """See :class:`~.contracts.Engine`."""
        return self._engine.batchable

    @property
    def max_batch_size(self) -> int:
        """See :class:`~.contracts.Engine`."""
        return self._engine.max_batch_size

    @property
    def max_rows(self) -> int | None:
        """See :class:`~.contracts.Engine`."""
        return self._engine.max_rows

    @property
    def workers(self) -> int:
        """See :class:`~.contracts.Engine`."""
        return self._engine.workers

    @property
    def load_seconds(self) -> float:
        """See :class:`~.contracts.Engine`."""
        return self._engine.load_seconds

    @property
    def warmup_seconds(self) -> float:
        """See :class:`~.contracts.Engine`."""
        return self._engine.warmup_seconds

    def load(self) -> None:
        """Load the wrapped engine."""
        self._engine.load()

    def wait_idle(self, timeout: float) -> bool:
        """See :class:`~.contracts.Engine`."""
        return self._engine.wait_idle(timeout)

    def unload(self, timeout: float = 30.0) -> None:
        """Unload the wrapped engine."""
        self._engine.unload(timeout)

    def _current(self) -> dict[str, Any]:
        now = time.monotonic()
        if now - self._checked > 0.05:
            self._checked = now
            try:
                mtime = self._path.stat().st_mtime_ns
                if mtime != self._mtime:
                    doc = yaml.safe_load(self._path.read_text()) or {}
                    if isinstance(doc, dict) and isinstance(doc.get(self._engine.name), dict):
                        doc = doc[self._engine.name]
                    self._faults = dict(doc.get(self._role) or {}) if isinstance(doc, dict) else {}
                    self._mtime = mtime
            except (OSError, yaml.YAMLError):
                self._faults = {}
        return self._faults

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Apply the configured faults, then the real predict."""
        f = self._current()
        if f.get("delay_ms"):
            time.sleep(float(f["delay_ms"]) / 1000.0)
        if f.get("oom"):
            raise EngineError(
                f"inference failed in model {self._engine.name}: ResourceExhaustedError: Out of memory (injected)"
            )
        if f.get("fail"):
            raise EngineError(f"inference failed in model {self._engine.name}: injected fault")
        return self._engine.predict(inputs)
