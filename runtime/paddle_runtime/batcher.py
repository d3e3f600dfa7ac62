"""Dynamic batching in front of an :class:`~.contracts.Engine`; implements :class:`~.contracts.ModelHandle`.

The HTTP layer only ever talks to a ``ModelHandle`` (contracts.py).  :class:`Batcher` is the
standard implementation; the fallback router wraps two (fallback routing) and reload swaps its
engine (hot reload) without the server noticing.  Requests arrive validated (:class:`~.contracts.Inputs`).

Limits
    ``max_batch_size`` and ``batch_timeout_ms`` start from the settings and change at run time
    through :meth:`Batcher.set_limits` (the config watcher calls it when the ConfigMap changes); the
    engine's own ``max_rows`` (model.yaml) caps the batch size further.

Batching policy
    A dispatcher coroutine waits for a free worker slot (one per pooled predictor), then takes the
    oldest queued request and queued requests with the same *batch key* (same input names,
    dtypes and non-batch dimensions: only those can be concatenated) up to the *target* rows.  The
    target is learned per batch key by :class:`~.adaptive.BatchSizeController` (the batch size with
    the best measured throughput, never above ``max_batch_size`` and never more rows than are
    queued), or is ``max_batch_size`` with ``adaptive_batching`` off.  It waits up to
    ``batch_timeout_ms`` for more rows only while other batches are running, i.e. when the workers
    are busy anyway; an idle runtime dispatches at once, so a lone caller pays no batching delay.
    Under load, requests pile up while the predictor runs, so batches fill without waiting.  Requests that cannot be stacked with the head (other shapes) stay queued, in
    order, for a later batch; a request with ``max_batch_size`` rows or more runs alone.
    The batch is concatenated and run in a worker thread; outputs are split back by row offsets, so
    every caller gets exactly its own rows.

Threads and hand-offs
    One worker thread per pooled predictor takes batches from a queue; a finished batch comes back
    to the event loop with one ``call_soon_threadsafe`` that resolves the callers' futures (no
    executor futures chained to asyncio futures).  A request that finds the batcher idle (nothing
    queued, nothing running) goes to a worker at once, without waking the dispatcher coroutine.
    Paddle's ``Predictor.run()`` holds the GIL on CPU builds (paddle 3.3: only Ascend builds release
    it), so predictors of one process never run at the same time: ``workers`` > 1 does not add
    throughput, and while a batch runs the event loop waits too.

Engine swaps (hot reload)
    ``swap_engine(new)`` replaces the engine atomically for the *next* batch.  The engine is read
    once when a batch is formed, so a batch never mixes versions; batches already running finish
    on the old engine.  The caller then unloads the old engine (``old.unload()`` waits for its
    in-flight runs).  Requests keep the version that actually served them in ``InferResult``.

Backpressure
    At most ``max_queue_size`` requests wait; more raise :class:`~.errors.QueueFull` (HTTP 503 with
    ``Retry-After``).  ``live()`` turns False when requests wait and no batch has completed for
    ``wedge_timeout_s`` (a hung predictor), which fails the liveness probe so the pod restarts.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import metrics
from .adaptive import BatchSizeController
from .contracts import Engine, InferResult, Inputs
from .errors import EngineError, QueueFull, RuntimeError_, Unavailable
from .model_dir import TensorSpec
from .settings import RuntimeSettings

log = logging.getLogger("paddle_runtime.batcher")

_MAX_KEYS = 64


@dataclass(eq=False)
class _Request:
    inputs: dict[str, np.ndarray]
    rows: int
    key: tuple
    future: asyncio.Future
    enqueued: float = field(default_factory=time.monotonic)
    warmup: bool = False  # the runtime's own warm-up: not in the metrics, not learnt from


class Batcher:
    """Dynamic batcher over an :class:`~.contracts.Engine`; implements :class:`~.contracts.ModelHandle`.

    Call :meth:`start` from the running event loop before the first request.
    """

    platform = "paddle_inference"

    def __init__(self, engine: Engine, settings: RuntimeSettings) -> None:
        self._engine = engine
        self.settings = settings
        self._max_batch_size = settings.max_batch_size
        self._max_delay_ms = settings.batch_timeout_ms
        self._queue: deque[_Request] = deque()
        self._wakeup: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._workers = max(1, engine.workers)
        self._work: queue.SimpleQueue[tuple[Engine, list[_Request], BatchSizeController | None] | None] = \
            queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._running = 0
        self._closed = False
        self._task: asyncio.Task | None = None
        self._last_progress = time.monotonic()
        self._depth = metrics.QUEUE_DEPTH.labels(engine.name)
        self._batch_hist = metrics.BATCH_SIZE.labels(engine.name)
        self._chosen_gauge = metrics.BATCH_SIZE_CHOSEN.labels(engine.name)
        self._budget_s = settings.latency_budget_ms / 1000.0 or None
        # One controller per batch key (model shape), oldest dropped past _MAX_KEYS: dynamic shapes
        # (OCR widths) must not grow this without bound.
        self._controllers: OrderedDict[tuple, BatchSizeController] = OrderedDict()

    # ---- ModelHandle metadata (always the current engine) ----------------------------------------
    @property
    def engine(self) -> Engine:
        """The engine the next batch runs on."""
        return self._engine

    @property
    def name(self) -> str:
        """See :class:`~.contracts.ModelHandle`."""
        return self._engine.name

    @property
    def version(self) -> str:
        """See :class:`~.contracts.ModelHandle`."""
        return self._engine.version

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        """See :class:`~.contracts.ModelHandle`."""
        return self._engine.inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        """See :class:`~.contracts.ModelHandle`."""
        return self._engine.outputs

    @property
    def max_rows(self) -> int | None:
        """See :class:`~.contracts.ModelHandle`: the engine's own row limit."""
        return self._engine.max_rows

    @property
    def max_batch_size(self) -> int:
        """Most rows the dispatcher puts in one batch now (0 when the model is not batchable)."""
        return self._batch_limit(self._engine) if self._engine.batchable else 0

    @property
    def batch_timeout_ms(self) -> float:
        """Longest wait for a batch to fill while other batches run, in effect now."""
        return self._max_delay_ms

    def set_limits(self, max_batch_size: int, max_delay_ms: float) -> None:
        """Apply new batching limits from the next batch on (the config watcher's entry point).

        ``max_batch_size`` is a cap (the engine's ``max_rows`` still applies); ``max_delay_ms`` is
        the longest a batch waits to fill while other batches run.
        """
        if max_batch_size < 1 or max_delay_ms < 0:
            raise ValueError(f"invalid batching limits: max_batch_size={max_batch_size}, max_delay_ms={max_delay_ms}")
        self._max_batch_size, self._max_delay_ms = int(max_batch_size), float(max_delay_ms)
        cap = self._batch_limit(self._engine)
        for c in self._controllers.values():
            c.set_cap(cap)
        log.info("batching limits for %s: max_batch_size %d, batch_timeout_ms %g",
                 self.name, self._max_batch_size, self._max_delay_ms)

    def _controller(self, key: tuple, eng: Engine) -> BatchSizeController:
        c = self._controllers.get(key)
        if c is None:
            c = self._controllers[key] = BatchSizeController(self._batch_limit(eng), self._budget_s)
            if len(self._controllers) > _MAX_KEYS:
                self._controllers.popitem(last=False)
        else:
            self._controllers.move_to_end(key)
        return c

    def batching_info(self) -> dict[str, Any]:
        """What the batcher does now, for ``/version``: cap, delay, and the learned size per input shape."""
        shapes = []
        for key, c in reversed(self._controllers.items()):  # most recently used first
            shapes.append({"inputs": {n: [-1, *dims] for n, _, dims in key}, **c.info()})
        return {"adaptive": self.settings.adaptive_batching, "max_batch_size": self.max_batch_size,
                "max_delay_ms": self._max_delay_ms,
                "latency_budget_ms": self._budget_s * 1000.0 if self._budget_s else None, "shapes": shapes}

    def _batch_limit(self, eng: Engine) -> int:
        cap = eng.max_rows
        return max(1, min(self._max_batch_size, cap) if cap else self._max_batch_size)

    @property
    def ready(self) -> bool:
        """See :class:`~.contracts.ModelHandle`."""
        return bool(self._engine.ready) and not self._closed and self._task is not None

    @property
    def queue_depth(self) -> int:
        """Requests waiting for a batch."""
        return len(self._queue)

    # ---- lifecycle ------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the worker threads and the dispatcher in the running loop."""
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        for i in range(self._workers):
            t = threading.Thread(target=self._worker, name=f"predict-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        self._task = self._loop.create_task(self._dispatch_loop(), name="batcher")

    def swap_engine(self, new: Engine) -> Engine:
        """Serve the next batches from ``new``; returns the old engine (still running its batches).

        ``new`` must have the same ``name`` and at most as many ``workers`` as the old engine.
        """
        if new.name != self._engine.name:
            raise ValueError(f"cannot swap model {self._engine.name} for {new.name}")
        old, self._engine = self._engine, new
        self._controllers.clear()  # another model version: learn its costs afresh
        return old

    async def drain(self, timeout: float) -> bool:
        """Refuse new requests; wait for queued and running ones; stop the dispatcher."""
        self._closed = True
        deadline = time.monotonic() + timeout
        while (self._queue or self._running) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        done = not self._queue and not self._running
        for r in list(self._queue):
            if not r.future.done():
                r.future.set_exception(Unavailable("the runtime is shutting down"))
        self._queue.clear()
        self._depth.set(0)
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for _ in self._threads:
            self._work.put(None)  # each worker ends after the batch it runs (a wedged one never does)
        return done

    def live(self) -> tuple[bool, str]:
        """See :class:`~.contracts.ModelHandle`: False while wedged or when the dispatcher stopped."""
        if (self._queue or self._running) and time.monotonic() - self._last_progress > self.settings.wedge_timeout_s:
            return False, (f"no batch completed for {time.monotonic() - self._last_progress:.0f}s while "
                           f"{len(self._queue)} request(s) wait and {self._running} batch(es) run")
        if self._task is not None and self._task.done():
            return False, "the batch dispatcher stopped"
        return True, "ok"

    # ---- requests -------------------------------------------------------------------------------------
    async def infer(self, request: Inputs, *, warmup: bool = False) -> InferResult:
        """Queue one validated request and wait for its rows of a batch (``warmup``: the runtime's
        own warm-up request, left out of the batch metrics and of adaptive batching's measurements)."""
        if self._closed:
            raise Unavailable("the runtime is shutting down")
        if not self._engine.ready or self._task is None:
            raise Unavailable(f"model {self.name} is not ready")
        eng = self._engine
        inputs, rows = request.arrays, request.rows
        if len(self._queue) >= self.settings.max_queue_size:
            raise QueueFull(f"request queue is full ({self.settings.max_queue_size} waiting)",
                            retry_after_s=1.0)
        if eng.batchable and rows:
            key: tuple = tuple((n, a.dtype.str, a.shape[1:]) for n, a in sorted(inputs.items()))
        else:
            key = ("alone", id(inputs))  # unique: never stacked
        loop = self._loop
        assert loop is not None and self._wakeup is not None
        fut = loop.create_future()
        req = _Request(inputs, rows, key, fut, warmup=warmup)
        if not self._queue and not self._running:
            # Idle: no batch is forming or running, so this request is the whole batch. Straight to a
            # worker (the dispatcher would take it alone too, one loop iteration later).
            self._last_progress = time.monotonic()
            ctrl = self._controller(key, eng) if self._adaptive(eng, key) else None
            self._submit(eng, [req], ctrl)
        else:
            self._queue.append(req)
            self._depth.set(len(self._queue))
            self._wakeup.set()
        timer = loop.call_later(self.settings.request_timeout_s, _expire, fut, self.settings.request_timeout_s)
        try:
            return await fut
        finally:
            timer.cancel()

    def _adaptive(self, eng: Engine, key: tuple) -> bool:
        return (self.settings.adaptive_batching and eng.batchable and key[0] != "alone"
                and self._batch_limit(eng) > 1)

    def _submit(self, eng: Engine, batch: list[_Request], ctrl: BatchSizeController | None) -> None:
        self._running += 1
        self._work.put((eng, batch, ctrl))

    def _worker(self) -> None:
        """Worker thread: run batches; hand each result to the loop with one call_soon_threadsafe."""
        loop = self._loop
        assert loop is not None
        while (item := self._work.get()) is not None:
            eng, batch, ctrl = item
            try:
                outputs, seconds = _run_batch(eng, [r.inputs for r in batch])
                done: tuple[Any, ...] = (batch, eng, ctrl, outputs, seconds, None)
            except Exception as e:  # noqa: BLE001 - handed to the callers as their answer
                done = (batch, eng, ctrl, None, 0.0, e)
            try:
                loop.call_soon_threadsafe(self._finish, *done)
            except RuntimeError:  # the loop is closed: the process is exiting
                return

    def _take(self, key: tuple, room: int, first: bool) -> list[_Request]:
        """Pop queued requests with batch ``key`` fitting in ``room`` rows, keeping queue order.

        With ``first`` the first matching request is taken even when it alone exceeds ``room``
        (a big request runs alone rather than never).
        """
        batch: list[_Request] = []
        rows, keep = 0, deque[_Request]()
        while self._queue and rows < room:
            r = self._queue.popleft()
            if r.future.done():  # cancelled / timed out while queued
                continue
            if r.key == key and ((first and not batch) or rows + r.rows <= room):
                batch.append(r)
                rows += r.rows
            else:
                keep.append(r)
        keep.extend(self._queue)
        self._queue = keep
        self._depth.set(len(self._queue))
        return batch

    async def _dispatch_loop(self) -> None:
        assert self._wakeup is not None
        while True:
            if self._queue and all(r.future.done() for r in self._queue):
                self._queue.clear()  # all cancelled or timed out while queued
                self._depth.set(0)
            if self._running >= self._workers or not self._queue:
                # Woken by infer() (a request queued) and _finish() (a worker is free).
                self._wakeup.clear()
                await self._wakeup.wait()
                # One loop iteration before taking a batch: requests that arrived while the batch ran
                # (Paddle's run() holds the GIL, so they wait in the socket buffers) are read and
                # queued first. Not a timed wait; an idle batcher never gets here (see infer).
                await asyncio.sleep(0)
                continue
            eng = self._engine  # read once: the whole batch runs on this engine (one version)
            head = next(r for r in self._queue if not r.future.done())
            cap = limit = self._batch_limit(eng) if eng.batchable else 1
            ctrl = None
            if self._adaptive(eng, head.key):
                ctrl = self._controller(head.key, eng)
                available = sum(r.rows for r in self._queue if r.key == head.key and not r.future.done())
                limit = ctrl.size(available)
                wait_for = ctrl.chosen  # only worth waiting for company up to the learned size
            else:
                wait_for = limit
            batch = self._take(head.key, limit, first=True)
            rows = sum(r.rows for r in batch)
            timeout = self._max_delay_ms / 1000.0
            limit = max(limit, min(wait_for, cap))
            if eng.batchable and rows < limit and timeout > 0 and self._running > 0:
                # Other workers are busy: a short wait for company costs nothing in throughput.
                deadline = head.enqueued + timeout
                while rows < limit and (left := deadline - time.monotonic()) > 0:
                    self._wakeup.clear()
                    try:
                        await asyncio.wait_for(self._wakeup.wait(), left)
                    except asyncio.TimeoutError:
                        break
                    more = self._take(head.key, limit - rows, first=False)
                    batch.extend(more)
                    rows += sum(r.rows for r in more)
            if batch:
                self._submit(eng, batch, ctrl)

    def _finish(self, batch: list[_Request], eng: Engine, ctrl: BatchSizeController | None,
                outputs: list[dict[str, np.ndarray]] | None, seconds: float, exc: Exception | None) -> None:
        """On the loop: a batch came back from a worker; answer its callers, free the worker."""
        self._running -= 1
        self._last_progress = time.monotonic()
        assert self._wakeup is not None
        if self._queue:
            self._wakeup.set()  # a worker is free for what waits
        if exc is None:
            assert outputs is not None
            rows = sum(r.rows for r in batch if not r.warmup)
            if rows:
                self._batch_hist.observe(rows)
            if ctrl is not None and eng is self._engine and rows == sum(r.rows for r in batch):
                ctrl.observe(rows, seconds)
                self._chosen_gauge.set(ctrl.chosen)
            for r, outs in zip(batch, outputs, strict=True):
                if not r.future.done():
                    r.future.set_result(InferResult(outs, eng.version, eng.role))
        else:
            if not isinstance(exc, RuntimeError_):
                log.exception("batch failed", exc_info=exc)
            for r in batch:
                if not r.future.done():
                    r.future.set_exception(exc)


def _expire(fut: asyncio.Future, seconds: float) -> None:
    if not fut.done():
        fut.set_exception(Unavailable(f"inference did not finish within {seconds:.0f}s"))


def _run_batch(engine: Engine, requests: list[dict[str, np.ndarray]]) -> tuple[list[dict[str, np.ndarray]], float]:
    """Worker thread: stack, predict, split rows back per request; returns them and the seconds taken."""
    t0 = time.perf_counter()
    if len(requests) == 1:
        return [engine.predict(requests[0])], time.perf_counter() - t0
    names = list(requests[0])
    stacked = {n: np.concatenate([r[n] for r in requests], axis=0) for n in names}
    out = engine.predict(stacked)
    sizes = [requests[i][names[0]].shape[0] for i in range(len(requests))]
    offsets = np.cumsum([0, *sizes])
    total = int(offsets[-1])
    for n, a in out.items():
        if a.ndim == 0 or a.shape[0] != total:
            # Checked at warm-up, so this means the model changed its mind for these shapes.
            raise EngineError(f"output '{n}' has {a.shape[0] if a.ndim else 0} rows for a batch of {total}")
    split = [{n: a[offsets[i]:offsets[i + 1]] for n, a in out.items()} for i in range(len(requests))]
    return split, time.perf_counter() - t0
