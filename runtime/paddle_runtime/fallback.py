"""Fallback (degraded) model: keep answering when the main model is slow, failing or out of memory.

:class:`FallbackRouter` implements the server's ``ModelHandle`` over two batchers (main and
fallback), so the HTTP layer does not change. State machine::

    MAIN --(mean latency of the last `fallback_window` main requests > threshold,
            or `fallback_error_threshold` consecutive main errors)--> FALLBACK
    FALLBACK --(main probes below recovery_ratio x threshold and error-free for `fallback_hold_s`)--> RAMP
    RAMP: `fallback_recovery_steps` percent of requests go to main (10 -> 30 -> 60 -> 100),
          `fallback_ramp_step_s` per step while main stays healthy; 100 % done -> MAIN
    RAMP --(main degrades again: same rule as MAIN)--> FALLBACK (hold period starts over)

A request that fails on the main model (engine fault, OOM, timeout, queue full) is retried on the
fallback at once, so the caller gets an answer; only a caller's own mistake (4xx) is returned as is.
While on the fallback, main gets no user traffic: the last request is replayed on it every
``fallback_probe_interval_s`` to measure it. Every answer carries the role that produced it
(``InferResult.role``: OIP ``parameters`` and a response header, set by the server).

Thresholds (every setting in :data:`TUNABLE`) change at run time through
:meth:`FallbackRouter.apply_params`: the config watcher (``config_watch.py``) calls it when the
mounted ConfigMap changes, without a restart.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

from . import logs, metrics
from .contracts import InferResult, Inputs, ModelHandle
from .errors import RuntimeError_
from .model_dir import TensorSpec
from .settings import RuntimeSettings

log = logging.getLogger("paddle_runtime.fallback")

MAIN, FALLBACK, RAMP = "main", "fallback", "ramp"
TUNABLE = (
    "fallback_latency_threshold_ms",
    "fallback_window",
    "fallback_error_threshold",
    "fallback_recovery_ratio",
    "fallback_recovery_steps",
    "fallback_hold_s",
    "fallback_ramp_step_s",
    "fallback_probe_interval_s",
)


# ---------------------------------------------------------------- the router


class FallbackRouter:
    """``ModelHandle`` over a main and a fallback batcher, with the switching policy above."""

    def __init__(self, main: ModelHandle, fallback: ModelHandle, settings: RuntimeSettings) -> None:
        self.main = main
        self.fallback = fallback
        self.settings = settings
        self.params: dict[str, Any] = {k: v for k, v in settings.model_dump().items() if k in TUNABLE}
        self.state = MAIN
        self.step = 0  # index into fallback_recovery_steps while in RAMP
        self._lat: deque[float] = deque(maxlen=self.params["fallback_window"])
        self._probe_lat: deque[float] = deque(maxlen=self.params["fallback_window"])
        self._consecutive_errors = 0
        self._outcomes: deque[bool] = deque(maxlen=self.params["fallback_window"])  # True = error
        self._since = time.monotonic()  # when the current state (or ramp step) began
        self._healthy_since: float | None = None
        self._last_inputs: Inputs | None = None
        self._probe_task: asyncio.Task | None = None
        self.switches = {MAIN: 0, FALLBACK: 0}
        self.last_switch_reason: str | None = None
        self.last_switch_at: float | None = None
        metrics.FALLBACK_SWITCHES.labels(main.name, MAIN)
        metrics.FALLBACK_SWITCHES.labels(main.name, FALLBACK)
        self._publish_role()

    # ---- ModelHandle: metadata is the main model's (the contract both share) ---------------------------
    platform = "paddle_inference"

    @property
    def name(self) -> str:
        """See :class:`~.contracts.ModelHandle`."""
        return self.main.name

    @property
    def version(self) -> str:
        """See :class:`~.contracts.ModelHandle`."""
        return self.main.version

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        """See :class:`~.contracts.ModelHandle`."""
        return self.main.inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        """See :class:`~.contracts.ModelHandle`."""
        return self.main.outputs

    @property
    def max_rows(self) -> int | None:
        """The smaller of the two models' row limits: a request must fit either."""
        limits = [n for n in (self.main.max_rows, self.fallback.max_rows) if n]
        return min(limits) if limits else None

    @property
    def ready(self) -> bool:
        """Ready when either can answer: a broken main model is exactly when the fallback matters."""
        return bool(self.main.ready or self.fallback.ready)

    def live(self) -> tuple[bool, str]:
        """Alive while either model is."""
        ok_m, why_m = self.main.live()
        ok_f, why_f = self.fallback.live()
        if ok_m or ok_f:
            return True, "ok"
        return False, f"main: {why_m}; fallback: {why_f}"

    async def start(self) -> None:
        """Start the recovery probe in the running loop."""
        loop = asyncio.get_running_loop()
        self._probe_task = loop.create_task(self._probe_loop(), name="fallback-probe")

    async def drain(self, timeout: float) -> bool:
        """Stop probing; drain both models."""
        if self._probe_task:
            self._probe_task.cancel()
        a, b = await asyncio.gather(self.main.drain(timeout), self.fallback.drain(timeout))
        return a and b

    # ---- routing ---------------------------------------------------------------------------------------
    def _route_to_main(self) -> bool:
        if self.state == MAIN:
            return True
        if self.state == FALLBACK:
            return False
        steps = self.params["fallback_recovery_steps"] or [100]
        return random.random() * 100 < steps[min(self.step, len(steps) - 1)]

    async def infer(self, inputs: Inputs) -> InferResult:
        """Answer from main or fallback as the policy says; a main failure is retried on the fallback."""
        self._last_inputs = inputs
        if not self._route_to_main():
            try:
                return await self.fallback.infer(inputs)
            except RuntimeError_ as exc:
                # The fallback failing too: the main model, degraded or not, is the last resort.
                if exc.status < 500 or not self.main.ready:
                    raise
                log.warning("fallback model failed (%s); trying the main model", exc.message)
                return await self.main.infer(inputs)
        t0 = time.perf_counter()
        try:
            res = await self.main.infer(inputs)
        except RuntimeError_ as exc:
            if exc.status < 500:  # the caller's mistake: the fallback would say the same
                raise
            self._record_error(exc)
            if not self.fallback.ready:
                raise
            log.info("main model failed (%s); answering from the fallback", exc.message)
            return await self.fallback.infer(inputs)
        self._record_latency(time.perf_counter() - t0)
        return res

    # ---- policy -------------------------------------------------------------------------------------
    def _threshold_s(self) -> float:
        return self.params["fallback_latency_threshold_ms"] / 1000.0

    def _window_mean(self, window: deque[float]) -> float | None:
        if len(window) < window.maxlen:  # type: ignore[operator]
            return None
        return sum(window) / len(window)

    def _record_latency(self, seconds: float) -> None:
        self._consecutive_errors = 0
        self._outcomes.append(False)
        self._lat.append(seconds)
        thr = self._threshold_s()
        mean = self._window_mean(self._lat)
        if thr > 0 and mean is not None and mean > thr and self.state != FALLBACK:
            self._switch(
                FALLBACK,
                f"mean latency of the last {len(self._lat)} requests {1000 * mean:.0f} ms > {1000 * thr:.0f} ms",
            )
        elif self.state == RAMP and mean is not None:
            # Only a full window of healthy main answers moves the ramp on: no promotion on hope.
            self._maybe_advance_ramp()

    def _record_error(self, exc: BaseException) -> None:
        self._consecutive_errors += 1
        self._outcomes.append(True)
        if self.state == FALLBACK:
            return
        limit = self.params["fallback_error_threshold"]
        if limit >= 1 and self._consecutive_errors >= limit:
            self._switch(FALLBACK, f"{self._consecutive_errors} consecutive errors on main (last: {exc})")
        elif limit < 1 and len(self._outcomes) == self._outcomes.maxlen:
            ratio = sum(self._outcomes) / len(self._outcomes)
            if ratio > limit:
                self._switch(
                    FALLBACK,
                    f"error ratio {ratio:.2f} over the last {len(self._outcomes)} > {limit:g} (last: {exc})",
                )

    def _maybe_advance_ramp(self) -> None:
        if time.monotonic() - self._since < self.params["fallback_ramp_step_s"]:
            return
        steps = self.params["fallback_recovery_steps"] or [100]
        if self.step + 1 >= len(steps):
            self._switch(MAIN, "ramp finished")
            return
        self.step += 1
        self._since = time.monotonic()
        log.info("fallback ramp: %d%% of traffic to the main model", steps[self.step])
        self._publish_role()

    def _version(self, state: str) -> str:
        """The model version answering in ``state`` (the ramp serves main's, partly)."""
        return self.fallback.version if state == FALLBACK else self.main.version

    def _switch(self, to: str, reason: str) -> None:
        prev = self.state
        self.state = to
        self._since = time.monotonic()
        self._healthy_since = None
        self._lat.clear()
        self._probe_lat.clear()
        self._consecutive_errors = 0
        self._outcomes.clear()
        self.step = 0
        self.last_switch_reason = reason
        self.last_switch_at = time.time()
        if to in (MAIN, FALLBACK):
            self.switches[to] += 1
            metrics.FALLBACK_SWITCHES.labels(self.name, to).inc()
        log.warning("switching %s -> %s: %s", prev, to, reason,
                    extra=logs.event("fallback_switch", model=self.main.name, **{"from": prev, "to": to},
                                     from_version=self._version(prev), to_version=self._version(to),
                                     result="switched", reason=reason))
        self._publish_role()

    def _publish_role(self) -> None:
        if self.state == MAIN:
            share = 1.0
        elif self.state == FALLBACK:
            share = 0.0
        else:
            steps = self.params["fallback_recovery_steps"] or [100]
            share = steps[min(self.step, len(steps) - 1)] / 100.0
        # During the ramp both serve; the gauges show the share of traffic each gets.
        metrics.ACTIVE_ROLE.labels(self.name, MAIN).set(share)
        metrics.ACTIVE_ROLE.labels(self.name, FALLBACK).set(1.0 - share)
        metrics.set_fallback_active(self.name, self.state != MAIN)

    async def _probe_loop(self) -> None:
        """While on the fallback, replay the last request on main to see whether it recovered."""
        while True:
            await asyncio.sleep(self.params["fallback_probe_interval_s"])
            if self.state != FALLBACK or self._last_inputs is None or not self.main.ready:
                continue
            t0 = time.perf_counter()
            try:
                await self.main.infer(self._last_inputs)
            except RuntimeError_ as exc:
                self._probe_lat.clear()
                self._healthy_since = None
                log.debug("main probe failed: %s", exc.message)
                continue
            except asyncio.CancelledError:
                raise
            except Exception:  # a probe must never take the router down
                log.exception("main probe error")
                continue
            self._probe_lat.append(time.perf_counter() - t0)
            self._check_recovery()

    def _check_recovery(self) -> None:
        thr = self._threshold_s()
        n = min(len(self._probe_lat), 3)  # a few probes are enough to judge; the hold does the rest
        if n < min(3, self._probe_lat.maxlen or 3):
            return
        recent = list(self._probe_lat)[-n:]
        healthy = thr <= 0 or max(recent) < self.params["fallback_recovery_ratio"] * thr
        now = time.monotonic()
        if not healthy:
            self._healthy_since = None
            return
        if self._healthy_since is None:
            self._healthy_since = now
        if now - self._healthy_since >= self.params["fallback_hold_s"]:
            mean = 1000 * sum(recent) / len(recent)
            self._switch(RAMP, f"main probes {mean:.0f} ms, healthy for {self.params['fallback_hold_s']:g}s")
            self._lat.clear()
            log.info(
                "fallback ramp: %d%% of traffic to the main model",
                (self.params["fallback_recovery_steps"] or [100])[0],
            )

    # ---- run-time thresholds (the config watcher hands them over) ---------------------------------------
    def apply_params(self, changed: Mapping[str, Any]) -> None:
        """Use new thresholds (keys of :data:`TUNABLE`, already validated) from now on."""
        new = {k: v for k, v in changed.items() if k in TUNABLE and v != self.params[k]}
        if not new:
            return
        self.params.update(new)
        if "fallback_window" in new:
            self._lat = deque(self._lat, maxlen=self.params["fallback_window"])
            self._probe_lat = deque(self._probe_lat, maxlen=self.params["fallback_window"])
            self._outcomes = deque(self._outcomes, maxlen=self.params["fallback_window"])
        log.info("fallback thresholds updated: %s", new)

    # ---- reporting ------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The fallback part of ``/version``."""
        steps = self.params["fallback_recovery_steps"] or [100]
        share = {MAIN: 100, FALLBACK: 0, RAMP: steps[min(self.step, len(steps) - 1)]}[self.state]
        mean = self._window_mean(self._lat)
        return {
            "state": self.state,
            "main_share_percent": share,
            "fallback_model": self.fallback.name,
            "fallback_version": self.fallback.version,
            "window_mean_ms": None if mean is None else round(1000 * mean, 2),
            "consecutive_errors": self._consecutive_errors,
            "switches": dict(self.switches),
            "last_switch_reason": self.last_switch_reason,
            "thresholds": dict(self.params),
        }
