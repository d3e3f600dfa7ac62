"""Adaptive batch size: the pure controller against controlled cost models, and the batcher using it.

The controller tests drive :class:`BatchSizeController` with a fake clock and a cost model we set,
so convergence is checked exactly, not timed.  The batcher tests run a fake engine whose batch run
time follows a cost model (sleeps), to check the wiring: every caller gets its own rows, the
learned size shows in ``batching_info()`` and the gauge, and ``set_limits`` caps it live.  The real
engines (bundled models) run under adaptive batching in test_engine_batcher.py and test_server.py.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from paddle_runtime import metrics
from paddle_runtime.adaptive import BatchSizeController, ladder
from paddle_runtime.batcher import Batcher
from paddle_runtime.contracts import Inputs
from paddle_runtime.model_dir import TensorSpec
from paddle_runtime.settings import RuntimeSettings

MS = 1e-3
# Seconds per batch of n rows: the shapes measured on one pinned core (benchmarks/README.md).
PAYS = lambda n: 3.7 * MS + 1.8 * MS * (n - 1)  # noqa: E731  MobileNetV3-like: 270 -> 490 img/s
HURTS = lambda n: 20.8 * MS * n * (1.0 if n == 1 else 1.15)  # noqa: E731  PP-OCR rec-like: batch 2+ slower


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def drive(ctrl: BatchSizeController, clock: FakeClock, cost: Callable[[int], float], batches: int,
          available: int = 32, noise: float = 0.0, seed: int = 0) -> Counter:
    """A backlogged queue: ``available`` rows always waiting; returns how often each size ran.

    ``noise`` is one-sided, as on a shared machine (other work only slows a run down): each run
    takes up to ``noise`` longer, and one in 20 three times as long (preempted).
    """
    rng = random.Random(seed)
    sizes: Counter = Counter()
    for _ in range(batches):
        n = ctrl.size(available)
        assert 1 <= n <= min(available, ctrl.cap)
        secs = cost(n) * (1 + rng.uniform(0, noise)) * (3 if noise and rng.random() < 0.05 else 1)
        clock.t += secs
        ctrl.observe(n, secs)
        sizes[n] += 1
    return sizes


def test_ladder_is_powers_of_two_up_to_the_cap() -> None:
    assert ladder(1) == (1,)
    assert ladder(8) == (1, 2, 4, 8)
    assert ladder(12) == (1, 2, 4, 8, 12)


@pytest.mark.parametrize("noise", [0.0, 0.3])
def test_controller_converges_to_1_when_batching_does_not_pay(noise: float) -> None:
    clock = FakeClock()
    ctrl = BatchSizeController(8, clock=clock)
    drive(ctrl, clock, HURTS, 150, noise=noise)
    assert ctrl.chosen == 1
    later = drive(ctrl, clock, HURTS, 200, noise=noise, seed=1)
    assert later[1] / 200 >= 0.8, later  # exploration of neighbours only, the rest at batch 1


@pytest.mark.parametrize("noise", [0.0, 0.3])
def test_controller_converges_to_the_cap_when_batching_pays(noise: float) -> None:
    clock = FakeClock()
    ctrl = BatchSizeController(8, clock=clock)
    drive(ctrl, clock, PAYS, 150, noise=noise)
    assert ctrl.chosen == 8
    later = drive(ctrl, clock, PAYS, 200, noise=noise, seed=1)
    assert later[8] / 200 >= 0.8, later


def test_controller_picks_the_interior_optimum() -> None:
    # Per-row cost falls until 4 rows, then rises (cache spill): the best size is 4, not the cap.
    u_shaped = {1: 10.0, 2: 7.0, 4: 5.0, 8: 6.5, 16: 8.0}
    clock = FakeClock()
    ctrl = BatchSizeController(16, clock=clock)
    drive(ctrl, clock, lambda n: u_shaped[n] * MS * n, 100)
    assert ctrl.chosen == 4


def test_latency_budget_keeps_batches_within_half_of_it() -> None:
    clock = FakeClock()
    # PAYS(4) = 9.1 ms, PAYS(8) = 16.3 ms: a 20 ms budget allows runs up to 10 ms, so 4.
    ctrl = BatchSizeController(8, budget_s=20 * MS, clock=clock)
    drive(ctrl, clock, PAYS, 100)
    assert ctrl.chosen == 4
    unbounded = BatchSizeController(8, clock=clock)
    drive(unbounded, clock, PAYS, 100)
    assert unbounded.chosen == 8


def test_controller_follows_a_change_in_costs() -> None:
    clock = FakeClock()
    ctrl = BatchSizeController(8, clock=clock, max_age_s=5.0)
    drive(ctrl, clock, PAYS, 100)
    assert ctrl.chosen == 8
    drive(ctrl, clock, HURTS, 600)  # e.g. the model was swapped for one batching hurts
    assert ctrl.chosen == 1


def test_never_more_rows_than_queued_and_a_lone_request_runs_alone() -> None:
    clock = FakeClock()
    ctrl = BatchSizeController(8, clock=clock)
    drive(ctrl, clock, PAYS, 60)
    assert ctrl.chosen == 8
    assert ctrl.size(1) == 1
    assert all(ctrl.size(3) <= 3 for _ in range(50))


def test_lowering_the_cap_caps_the_choice() -> None:
    clock = FakeClock()
    ctrl = BatchSizeController(8, clock=clock)
    drive(ctrl, clock, PAYS, 60)
    ctrl.set_cap(3)
    assert ctrl.rungs == (1, 2, 3) and ctrl.chosen <= 3
    sizes = drive(ctrl, clock, PAYS, 100)
    assert max(sizes) <= 3 and ctrl.chosen == 3


# ---- the batcher with a fake engine whose run time follows a cost model ---------------------------------


@dataclass
class _Files:
    max_batch_size: int | None = None


class CostModelEngine:
    """Engine stand-in: ``y = 2 x + 1`` per row, a batch of n rows takes ``cost(n)`` seconds."""

    inputs = (TensorSpec("x", "FP32", (-1, 4)),)
    outputs = (TensorSpec("y", "FP32", (-1, 4)),)
    version, role, ready, batchable, workers = "1", "main", True, True, 1

    def __init__(self, name: str, cost: Callable[[int], float], max_batch_size: int = 8) -> None:
        self.name, self.cost, self.max_batch_size = name, cost, max_batch_size
        self.files = _Files()
        self.max_rows: int | None = None  # no model.yaml limit: the batcher's cap applies
        self.batches: list[int] = []

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = inputs["x"].shape[0]
        self.batches.append(n)
        time.sleep(self.cost(n))
        return {"y": inputs["x"] * 2 + 1}


async def _closed_loop(b: Batcher, callers: int, requests_each: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``callers`` concurrent clients, each sending its next request when the last one is answered."""
    pairs = []

    async def client(i: int) -> None:
        for j in range(requests_each):
            x = np.full((1 + (i + j) % 2, 4), i * 1000 + j, dtype=np.float32)
            r = await b.infer(Inputs({"x": x}, x.shape[0]))
            pairs.append((x, r.outputs["y"]))

    await asyncio.gather(*(client(i) for i in range(callers)))
    return pairs


def _run(engine: CostModelEngine, callers: int, requests_each: int, **kw: Any) -> tuple[Batcher, list]:
    async def main() -> tuple[Batcher, list]:
        b = Batcher(engine, RuntimeSettings(max_batch_size=8, **kw))
        await b.start()
        try:
            return b, await _closed_loop(b, callers, requests_each)
        finally:
            await b.drain(5)

    return asyncio.run(main())


@pytest.mark.parametrize(("cost", "want"), [(lambda n: 0.010 + 0.001 * n, 8),
                                             (lambda n: 0.008 * n * (1.0 if n == 1 else 1.6), 1)],
                         ids=["batching-pays", "batching-hurts"])
def test_batcher_learns_the_size_and_every_caller_gets_its_own_rows(cost: Callable[[int], float], want: int) -> None:
    eng = CostModelEngine(f"cost-model-{want}", cost)
    b, pairs = _run(eng, callers=16, requests_each=12)
    assert len(pairs) == 16 * 12
    for x, y in pairs:
        np.testing.assert_array_equal(y, x * 2 + 1)  # its own rows, in its own order, nothing else
    info = b.batching_info()
    assert info["adaptive"] is True and info["max_batch_size"] == 8
    assert info["shapes"][0]["inputs"] == {"x": [-1, 4]}
    assert info["shapes"][0]["batch_size"] == want
    assert metrics.BATCH_SIZE_CHOSEN.labels(eng.name)._value.get() == want
    tail = eng.batches[-40:]
    if want == 1:
        # Requests have 1-2 rows; at size 1 a request runs alone (a 2-row request is one batch).
        assert sum(n <= 2 for n in tail) >= 34, tail
    else:
        assert sum(n >= 7 for n in tail) >= 30, tail


def test_adaptive_off_always_fills_up_to_the_cap() -> None:
    eng = CostModelEngine("cost-model-fixed", lambda n: 0.008 * n * (1.0 if n == 1 else 1.6))
    b, pairs = _run(eng, callers=16, requests_each=6, adaptive_batching=False)
    for x, y in pairs:
        np.testing.assert_array_equal(y, x * 2 + 1)
    assert sum(n >= 7 for n in eng.batches[-20:]) >= 15
    assert b.batching_info()["adaptive"] is False


def test_set_limits_caps_batches_live() -> None:
    eng = CostModelEngine("cost-model-limits", lambda n: 0.010 + 0.001 * n)

    async def main() -> Batcher:
        b = Batcher(eng, RuntimeSettings(max_batch_size=8))
        await b.start()
        try:
            await _closed_loop(b, 16, 6)
            b.set_limits(3, 0.0)
            eng.batches.clear()
            await _closed_loop(b, 16, 6)
            return b
        finally:
            await b.drain(5)

    b = asyncio.run(main())
    assert max(eng.batches) <= 3  # 1-2 row requests: a batch never goes over the new cap
    assert b.max_batch_size == 3 and b.batching_info()["max_delay_ms"] == 0.0
    with pytest.raises(ValueError, match="max_batch_size"):
        b.set_limits(0, 5.0)


# ---- the real server: /version and /metrics show the learned size ----------------------------------------


def test_version_and_metrics_show_the_learned_batch_size(runtime_server: Any, mobilenet_v3_dir: Path) -> None:
    import http.client
    from concurrent.futures import ThreadPoolExecutor

    rp = runtime_server(mobilenet_v3_dir, "--max-batch-size", "4")
    x = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)
    head = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape),
                                     "parameters": {"binary_data_size": x.nbytes}}]})

    def client(_: int) -> None:
        c = http.client.HTTPConnection("127.0.0.1", rp.port, timeout=60)
        try:
            for _ in range(10):
                c.request("POST", "/v2/models/mobilenet-v3-small/infer", body=head + x.tobytes(),
                          headers={"Inference-Header-Content-Length": str(len(head))})
                r = c.getresponse()
                assert r.status == 200, r.read()
                r.read()
        finally:
            c.close()

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(client, range(8)))
    info = orjson.loads(rp.get("/version")[1])["batching"]
    assert info["adaptive"] is True and info["maxBatchSize"] == 4
    shape = info["shapes"][0]
    assert shape["inputs"] == {"x": [-1, 3, 224, 224]} and 1 <= shape["batch_size"] <= 4
    assert shape["per_row_ms"]["1"] > 0  # measured, not configured
    text = rp.get("/metrics")[1].decode()
    assert f'paddle_runtime_batch_size_chosen{{model="mobilenet-v3-small"}} {float(shape["batch_size"])}' in text
