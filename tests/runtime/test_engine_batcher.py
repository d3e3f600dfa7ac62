"""Engine (predictor pool) and dynamic batcher against real Paddle models, in process."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from paddle_runtime import metrics
from paddle_runtime.batcher import Batcher
from paddle_runtime.contracts import Inputs, validate_inputs
from paddle_runtime.engine import PaddleEngine, build_config
from paddle_runtime.errors import InvalidInput, QueueFull
from paddle_runtime.model_dir import load_model_files
from paddle_runtime.settings import RuntimeSettings

# (fixture, one example input shape with batch 1): every model the issue names.
MODELS = [
    ("ocr_det_dir", (1, 3, 96, 128)),
    ("ocr_rec_dir", (1, 3, 48, 320)),
    ("ocr_cls_dir", (1, 3, 48, 192)),
    ("resnet50_dir", (1, 3, 224, 224)),
    ("mobilenet_v3_dir", (1, 3, 224, 224)),
]


def _engine(model_dir: Path, cls: type[PaddleEngine] = PaddleEngine, **kw: Any) -> PaddleEngine:
    eng = cls(RuntimeSettings(model_dir=str(model_dir), warmup_runs=1, **kw))
    eng.load()
    return eng


@pytest.fixture(scope="module")
def mnv3_engine(mobilenet_v3_dir: Path) -> PaddleEngine:
    return _engine(mobilenet_v3_dir, workers=2)


@pytest.mark.parametrize(("fixture", "shape"), MODELS, ids=[m[0] for m in MODELS])
def test_engine_outputs_equal_direct_predictor_single_and_batched(reference: Any, fixture: str, shape: tuple, request: pytest.FixtureRequest) -> None:
    model_dir = request.getfixturevalue(fixture)
    eng = _engine(model_dir)
    assert eng.ready and eng.batchable
    rng = np.random.default_rng(1)
    for batch in (1, 3):
        x = {"x": rng.random((batch, *shape[1:]), dtype=np.float32)}
        got, want = eng.predict(x), reference(model_dir, x)
        assert set(got) == set(want)
        for n in want:
            np.testing.assert_allclose(got[n], want[n], rtol=1e-4, atol=1e-5)
    eng.unload()
    assert not eng.ready


def _valid(b: Batcher, arrays: dict) -> Inputs:
    return validate_inputs(b.inputs, arrays, b.max_rows)


def test_pir_model_loads_with_memory_optim_requested(mobilenet_v3_dir: Path, ocr_cls_dir: Path) -> None:
    # Paddle 3.3.1 cannot create a predictor for a PIR .json program with enable_memory_optim():
    pir = load_model_files(mobilenet_v3_dir)
    import paddle.inference as pi

    with pytest.raises(Exception, match="memory_optimize_pass"):
        pi.create_predictor(build_config(pir, RuntimeSettings(model_dir=str(mobilenet_v3_dir)), memory_optim=True))
    # ...so the engine leaves it off for PIR and keeps it for legacy programs, and both load.
    assert _engine(mobilenet_v3_dir, memory_optim=True).memory_optim is False
    assert _engine(ocr_cls_dir, memory_optim=True).memory_optim is True



def test_concurrent_callers_each_get_their_own_rows(reference: Any, mnv3_engine: PaddleEngine, mobilenet_v3_dir: Path) -> None:
    rng = np.random.default_rng(2)
    xs = [rng.random((1 + i % 3, 3, 224, 224), dtype=np.float32) for i in range(24)]
    want = [reference(mobilenet_v3_dir, {"x": x})["fetch_name_0"] for x in xs]
    hist = metrics.BATCH_SIZE.labels("mobilenet-v3-small")
    count_before = sum(b.get() for b in hist._buckets)

    async def main() -> list:
        b = Batcher(mnv3_engine, RuntimeSettings(model_dir=str(mobilenet_v3_dir), max_batch_size=8, workers=2))
        await b.start()
        try:
            return await asyncio.gather(*(b.infer(_valid(b, {"x": x})) for x in xs))
        finally:
            await b.drain(5)

    got = asyncio.run(main())
    for x, w, r in zip(xs, want, got, strict=True):
        assert r.outputs["fetch_name_0"].shape == (x.shape[0], 1000)
        np.testing.assert_allclose(r.outputs["fetch_name_0"], w, rtol=1e-4, atol=1e-5)
    batches = sum(b.get() for b in hist._buckets) - count_before
    assert batches < len(xs), "requests were not batched together"


def test_warm_up_through_the_batcher_is_not_in_the_batch_metrics(mobilenet_v3_dir: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    from paddle_runtime.unit import warm_through

    eng = _engine(mobilenet_v3_dir)  # its own: one batcher per engine, as the runtime has it
    hist = metrics.BATCH_SIZE.labels("mobilenet-v3-small")
    before = sum(b.get() for b in hist._buckets)

    async def main() -> Any:
        b = Batcher(eng, RuntimeSettings(model_dir=str(mobilenet_v3_dir), max_batch_size=8))
        await b.start()
        try:
            await warm_through(b)
            assert sum(x.get() for x in hist._buckets) == before  # the warm-up ran, and is not counted
            x = np.zeros((1, 3, 224, 224), np.float32)
            return await b.infer(_valid(b, {"x": x}))
        finally:
            await b.drain(5)

    assert asyncio.run(main()).outputs["fetch_name_0"].shape == (1, 1000)
    assert sum(x.get() for x in hist._buckets) == before + 1  # the request is
    assert "warm-up through the batcher failed" not in caplog.text


def test_unstackable_shapes_are_grouped_by_shape(reference: Any, ocr_rec_dir: Path) -> None:
    eng = _engine(ocr_rec_dir)
    rng = np.random.default_rng(3)
    xs = [rng.random((1, 3, 48, w), dtype=np.float32) for w in (320, 160, 320, 96, 160, 320)]
    want = [reference(ocr_rec_dir, {"x": x})["softmax_11.tmp_0"] for x in xs]

    async def main() -> list:
        b = Batcher(eng, RuntimeSettings(model_dir=str(ocr_rec_dir)))
        await b.start()
        try:
            return await asyncio.gather(*(b.infer(_valid(b, {"x": x})) for x in xs))
        finally:
            await b.drain(5)

    for w, r in zip(want, asyncio.run(main()), strict=True):
        np.testing.assert_allclose(r.outputs["softmax_11.tmp_0"], w, rtol=1e-4, atol=1e-5)


class StallingEngine(PaddleEngine):
    """A real engine whose predict waits for ``gate``: stands in for a hung predictor."""

    gate: threading.Event

    def predict(self, inputs: Any) -> dict[str, np.ndarray]:
        self.gate.wait(30)
        return super().predict(inputs)


def test_full_queue_refuses_with_retry_after_and_wedged_engine_fails_liveness(ocr_cls_dir: Path) -> None:
    eng = _engine(ocr_cls_dir, cls=StallingEngine)
    eng.gate = threading.Event()
    x = {"x": np.zeros((1, 3, 48, 192), np.float32)}

    async def main() -> None:
        b = Batcher(eng, RuntimeSettings(model_dir=str(ocr_cls_dir), max_queue_size=2, wedge_timeout_s=0.3))
        await b.start()
        running = asyncio.ensure_future(b.infer(_valid(b, x)))
        await asyncio.sleep(0.05)  # dispatched, stuck in predict
        queued = [asyncio.ensure_future(b.infer(_valid(b, x))) for _ in range(2)]
        await asyncio.sleep(0.05)
        with pytest.raises(QueueFull) as exc:
            await b.infer(_valid(b, x))
        assert exc.value.status == 503 and "Retry-After" in exc.value.headers
        assert b.live()[0] is True  # not yet past wedge_timeout_s
        await asyncio.sleep(0.4)
        alive, reason = b.live()
        assert alive is False and "no batch completed" in reason
        eng.gate.set()
        await asyncio.gather(running, *queued)
        assert b.live()[0] is True
        await b.drain(5)

    asyncio.run(main())


def test_invalid_inputs_are_rejected_by_the_one_validation(mnv3_engine: PaddleEngine) -> None:
    cases = [
        ({"y": np.zeros((1, 3, 224, 224), np.float32)}, "unknown input 'y'"),
        ({"x": np.zeros((1, 3, 224, 224), np.float64)}, "datatype FP64"),
        ({"x": np.zeros((1, 3, 224, 100), np.float32)}, "dimension 3 must be 224"),
        ({"x": np.zeros((0, 3, 224, 224), np.float32)}, "empty"),
        ({"x": np.zeros((3, 224, 224), np.float32)}, "rank"),
        ({"x": np.zeros((3, 3, 224, 224), np.float32)}, "over the model's max_batch_size 2"),
    ]
    for inputs, msg in cases:
        with pytest.raises(InvalidInput, match=msg):
            validate_inputs(mnv3_engine.inputs, inputs, max_rows=2)
    ok = validate_inputs(mnv3_engine.inputs, {"x": np.zeros((2, 3, 224, 224), np.float32)}, max_rows=2)
    assert ok.rows == 2


def test_engine_swap_mid_stream_never_mixes_versions(reference: Any, export_model_dir: Any) -> None:
    v1, v2 = export_model_dir("mobilenet_v3_small", seed=0, version="1"), export_model_dir("mobilenet_v3_small", seed=1, version="2")
    e1, e2 = _engine(v1), _engine(v2)
    assert (e1.name, e1.version, e2.name, e2.version) == ("mobilenet-v3-small", "1", "mobilenet-v3-small", "2")
    rng = np.random.default_rng(4)
    xs = [rng.random((1, 3, 224, 224), dtype=np.float32) for _ in range(40)]
    refs = {"1": v1, "2": v2}

    async def main() -> list:
        b = Batcher(e1, RuntimeSettings(model_dir=str(v1)))
        await b.start()
        tasks = []
        for i, x in enumerate(xs):
            tasks.append(asyncio.ensure_future(b.infer(_valid(b, {"x": x}))))
            if i == 20:
                await asyncio.sleep(0)
                old = b.swap_engine(e2)
                assert old is e1
            if i % 5 == 0:
                await asyncio.sleep(0.005)
        out = await asyncio.gather(*tasks)
        await b.drain(5)
        return out

    t0 = time.monotonic()
    results = asyncio.run(main())
    assert time.monotonic() - t0 < 60
    assert {r.model_version for r in results} == {"1", "2"}
    for x, r in zip(xs, results, strict=True):
        want = reference(refs[r.model_version], {"x": x})["fetch_name_0"]
        np.testing.assert_allclose(r.outputs["fetch_name_0"], want, rtol=1e-4, atol=1e-5)


def test_config_follows_cpu_settings(mobilenet_v3_dir: Path) -> None:
    files = load_model_files(mobilenet_v3_dir)
    cfg = build_config(files, RuntimeSettings(model_dir=str(mobilenet_v3_dir), mkldnn=False, cpu_threads=3, ir_optim=False))
    assert (cfg.use_gpu(), cfg.mkldnn_enabled(), cfg.ir_optim(), cfg.cpu_math_library_num_threads()) == (False, False, False, 3)
    cfg = build_config(files, RuntimeSettings(model_dir=str(mobilenet_v3_dir)))
    assert (cfg.mkldnn_enabled(), cfg.ir_optim(), cfg.cpu_math_library_num_threads()) == (True, True, 1)


@pytest.mark.gpu
def test_gpu_config_uses_device_and_pool(mobilenet_v3_dir: Path) -> None:
    import paddle

    if not paddle.device.is_compiled_with_cuda() or paddle.device.cuda.device_count() == 0:
        pytest.skip("needs the GPU build of Paddle and an NVIDIA GPU")
    cfg = build_config(load_model_files(mobilenet_v3_dir),
                       RuntimeSettings(model_dir=str(mobilenet_v3_dir), device="gpu", device_id=0, gpu_mem_mb=256))
    assert cfg.use_gpu() and cfg.gpu_device_id() == 0 and cfg.memory_pool_init_size_mb() == 256


def test_each_batch_size_runs_on_predictors_that_only_see_that_size(ocr_cls_dir: Path, reference: Any) -> None:
    split = _engine(ocr_cls_dir, workers=2, max_batch_size=8)
    shared = _engine(ocr_cls_dir, workers=2, max_batch_size=8, single_row_predictor=False)
    assert sorted(split._batch_pools) == [2, 4, 8] and len(split._predictors) == 2 * 4
    assert not shared._batch_pools and len(shared._predictors) == 2
    seen: dict[int, set[int]] = {}  # id(predictor) -> batch rows it ran
    run = split._run

    def recording_run(pred: Any, inputs: Any) -> Any:
        seen.setdefault(id(pred), set()).add(next(iter(inputs.values())).shape[0])
        return run(pred, inputs)

    split._run = recording_run  # type: ignore[method-assign]
    rng = np.random.default_rng(9)
    for eng in (split, shared):
        for rows in (1, 4, 2, 8, 1, 4, 3, 8, 2):
            x = rng.random((rows, 3, 48, 192), dtype=np.float32)
            np.testing.assert_allclose(eng.predict({"x": x})["softmax_0.tmp_0"], reference(ocr_cls_dir, {"x": x})["softmax_0.tmp_0"],
                                       rtol=1e-4, atol=1e-5)
    # Each predictor ran one size only (3 rows share the pool of 2, the largest size <= 3).
    assert all(any(v <= size for size in ({1}, {2, 3}, {4}, {8})) for v in seen.values()), seen
    assert {frozenset(v) for v in seen.values()} >= {frozenset({1}), frozenset({4}), frozenset({8})}
    assert split._pool.qsize() == 2 and all(p.qsize() == 2 for p in split._batch_pools.values())  # all went back


def _cpu_ticks_of_other_threads() -> int:
    """CPU ticks (user + system) used so far by every thread of this process except the caller."""
    me, total = threading.get_native_id(), 0
    for tid in Path("/proc/self/task").iterdir():
        if int(tid.name) == me:
            continue
        try:
            stat = (tid / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        total += int(fields[11]) + int(fields[12])
    return total


def test_with_cpu_tensor_gc_off_inference_uses_no_second_thread(mobilenet_v3_dir: Path) -> None:
    # Paddle's eager tensor GC runs on its own thread after every op; on a pinned core it competes
    # with inference.  Off (the default), a run uses only the thread that calls predict.
    x = {"x": np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)}
    used = {}
    for gc in (True, False):
        eng = _engine(mobilenet_v3_dir, cpu_tensor_gc=gc)
        before = _cpu_ticks_of_other_threads()
        for _ in range(150):
            eng.predict(x)
        used[gc] = _cpu_ticks_of_other_threads() - before
        eng.unload()
    assert used[True] > 0, "the GC thread did no work: this check no longer tells the settings apart"
    assert used[False] == 0, used
