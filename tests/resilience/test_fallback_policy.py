"""The fallback router's policy in-process and fast: degrade during the ramp, error ratio mode.

The two "models" are small asyncio handles with controllable latency and failures; the router only
sees the ``ModelHandle`` interface, so this exercises exactly its decisions. The same policy is
exercised end to end with real Paddle models in test_fallback.py.
"""

from __future__ import annotations

import asyncio

import numpy as np

from paddle_runtime.contracts import InferResult, Inputs
from paddle_runtime.errors import EngineError, InvalidInput
from paddle_runtime.fallback import FALLBACK, MAIN, RAMP, FallbackRouter
from paddle_runtime.settings import RuntimeSettings


class Handle:
    def __init__(self, role: str) -> None:
        self.role, self.name, self.version = role, "m", "1"
        self.inputs = self.outputs = ()
        self.max_rows, self.ready = 8, True
        self.delay, self.fail, self.calls = 0.0, False, 0

    def live(self) -> tuple[bool, str]:
        return True, "ok"

    async def infer(self, inputs: Inputs) -> InferResult:
        self.calls += 1
        await asyncio.sleep(self.delay)
        if self.fail:
            raise EngineError("boom")
        return InferResult({"y": np.zeros(1)}, self.version, self.role)

    async def drain(self, timeout: float) -> bool:
        return True


def _router(**kw) -> tuple[FallbackRouter, Handle, Handle]:
    cfg = {
        "fallback_latency_threshold_ms": 20,
        "fallback_window": 3,
        "fallback_hold_s": 0.05,
        "fallback_ramp_step_s": 0.05,
        "fallback_probe_interval_s": 0.01,
    }
    s = RuntimeSettings(**{**cfg, **kw})
    main, fb = Handle("main"), Handle("fallback")
    return FallbackRouter(main, fb, s), main, fb


async def _run_until(router: FallbackRouter, cond, n: int = 400) -> list[str]:
    roles = []
    for _ in range(n):
        roles.append((await router.infer(Inputs({"x": np.zeros(1)}, 1))).role)
        if cond():
            break
        await asyncio.sleep(0.002)
    return roles


def test_main_degrading_during_the_ramp_falls_back_again() -> None:
    async def scenario() -> None:
        router, main, _ = _router()
        await router.start()
        main.delay = 0.05
        await _run_until(router, lambda: router.state == FALLBACK)
        main.delay = 0.0
        await _run_until(router, lambda: router.state == RAMP)
        assert router.state == RAMP
        main.delay = 0.05  # degrades again before the ramp completes
        await _run_until(router, lambda: router.state == FALLBACK)
        assert router.state == FALLBACK and router.switches == {MAIN: 0, FALLBACK: 2}
        main.delay = 0.0
        await _run_until(router, lambda: router.state == MAIN, n=2000)
        assert router.state == MAIN and router.switches[MAIN] == 1
        await router.drain(1)

    asyncio.run(scenario())


def test_error_ratio_mode_and_client_errors_do_not_count() -> None:
    async def scenario() -> None:
        router, main, fb = _router(fallback_error_threshold=0.5, fallback_window=4)
        await router.start()

        async def bad_input(inputs: dict) -> InferResult:
            raise InvalidInput("wrong shape")

        good_infer, main.infer = main.infer, bad_input
        for _ in range(10):  # a caller's 4xx is not the model's fault: no switch, no retry
            try:
                await router.infer(Inputs({}, 0))
            except InvalidInput:
                pass
        assert router.state == MAIN and fb.calls == 0
        main.infer = good_infer
        main.fail = True
        roles = [(await router.infer(Inputs({}, 0))).role for _ in range(4)]
        assert roles == ["fallback"] * 4  # every failed request was answered by the fallback
        assert router.state == FALLBACK and "error ratio" in router.last_switch_reason
        await router.drain(1)

    asyncio.run(scenario())


def test_fallback_failing_while_active_is_answered_by_main() -> None:
    async def scenario() -> None:
        router, main, fb = _router()
        main.fail = True
        for _ in range(3):
            assert (await router.infer(Inputs({}, 0))).role == "fallback"
        assert router.state == FALLBACK
        main.fail, fb.fail = False, True
        assert (await router.infer(Inputs({}, 0))).role == "main"

    asyncio.run(scenario())
