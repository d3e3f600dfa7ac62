"""Paddle Inference engine: Config builder and a pool of cloned predictors.

:class:`PaddleEngine` implements :class:`paddle_runtime.contracts.Engine` (``load``, ``predict``,
``unload``, ``wait_idle``, ``ready`` and the model's metadata); the batcher, reload and the fallback
router use nothing else.

Paddle predictors are not thread-safe, so the pool holds one predictor per worker (the first one
created, the rest ``clone()``\\ d so they share weights) and every ``predict`` checks one out for its
whole run.  With ``single_row_predictor`` (default) a batchable model gets a set of clones per
batch size of the adaptive batcher's ladder (2, 4, ... ``max_batch_size``; a batch of n rows runs
on the set of the largest size <= n), so each predictor keeps seeing one shape: a predictor whose
batch shapes alternate runs measurably slower (PP-OCRv4 rec on one core: +25 % per row at batch 4
with 2/4/8 alternating, +10-35 % at batch 1 after batches).  Inputs go through the zero-copy handle API (``get_input_handle().copy_from_cpu``,
``run()``, ``get_output_handle().copy_to_cpu``) rather than the feed/fetch op path.

This module knows nothing about HTTP; it is also what ``benchmarks/serving.py`` uses for the raw
in-process ceiling.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from . import wedge
from .adaptive import ladder
from .errors import EngineError, ModelLoadError
from .model_dir import (
    NUMPY_TO_OIP,
    ModelFiles,
    TensorSpec,
    load_model_files,
    read_program_io,
    to_oip_datatype,
    warmup_examples,
    with_warmup_shapes,
)
from .settings import RuntimeSettings

log = logging.getLogger("paddle_runtime.engine")


def _inference():  # imported lazily: `paddle-runtime --help` should not pay paddle's import time
    import paddle.inference as pi

    return pi


def build_config(files: ModelFiles, s: RuntimeSettings, *, memory_optim: bool | None = None) -> Any:
    """A ``paddle.inference.Config`` for ``files`` from typed settings.

    ``memory_optim=None`` means "as the settings say, where the format allows it": with
    paddlepaddle 3.3 ``enable_memory_optim()`` on a PIR ``.json`` program makes ``create_predictor``
    fail ("Not find predictor_id 0 and pass_name memory_optimize_pass"), so PIR skips it.
    """
    pi = _inference()
    cfg = pi.Config(str(files.model_file), str(files.params_file))
    cfg.disable_glog_info()
    cfg.switch_ir_optim(s.ir_optim)
    if memory_optim is None:
        memory_optim = s.memory_optim and files.format != "pir"
    if memory_optim:
        cfg.enable_memory_optim()

    if s.device == "gpu":
        prec = {"fp32": pi.PrecisionType.Float32, "fp16": pi.PrecisionType.Half, "int8": pi.PrecisionType.Int8}[
            s.precision
        ]
        if s.tensorrt:
            cfg.enable_use_gpu(s.gpu_mem_mb, s.device_id)
            cache = s.trt_cache_dir or str(files.path / "_opt_cache")
            Path(cache).mkdir(parents=True, exist_ok=True)
            cfg.set_optim_cache_dir(cache)
            cfg.enable_tensorrt_engine(
                workspace_size=1 << 30,
                max_batch_size=max(1, s.max_batch_size),
                min_subgraph_size=s.trt_min_subgraph_size,
                precision_mode=prec,
                use_static=True,  # serialize engines into the cache dir: restarts skip the build
                use_calib_mode=s.precision == "int8",
            )
            dyn = _trt_dynamic_shapes(files, s)
            if dyn:
                cfg.set_trt_dynamic_shape_info(*dyn)
        else:
            # Without TensorRT, fp16/int8 select Paddle's own reduced-precision GPU kernels.
            cfg.enable_use_gpu(s.gpu_mem_mb, s.device_id, prec)
    elif s.device in ("npu", "xpu"):
        cfg.enable_custom_device(s.device, s.device_id)
    else:
        cfg.disable_gpu()
        cfg.set_cpu_math_library_num_threads(s.cpu_threads)
        set_cpu_tensor_gc(s.cpu_tensor_gc)
        if s.mkldnn:
            cfg.enable_mkldnn()
        else:
            cfg.disable_mkldnn()
    return cfg


def set_cpu_tensor_gc(on: bool) -> None:
    """Turn Paddle's eager tensor garbage collector on or off (a process-wide flag, read when a
    predictor is created).  Its thread runs after every op; with the predictor pinned to one core it
    wakes, competes and hands back on that core (measured: benchmarks/README.md#request-path)."""
    import paddle

    paddle.set_flags({"FLAGS_eager_delete_tensor_gb": 0.0 if on else -1.0})


def _trt_dynamic_shapes(files: ModelFiles, s: RuntimeSettings) -> tuple[dict, dict, dict] | None:
    """[min, max, opt] per input, from settings or derived from model.yaml shapes."""
    if s.trt_dynamic_shapes:
        mins = {k: v[0] for k, v in s.trt_dynamic_shapes.items()}
        maxs = {k: v[1] for k, v in s.trt_dynamic_shapes.items()}
        opts = {k: v[2] for k, v in s.trt_dynamic_shapes.items()}
        return mins, maxs, opts
    specs = files.inputs
    if not specs or any(d < 0 for sp in specs for d in sp.shape[1:]):
        return None  # only the batch dim is dynamic (or unknown): let TensorRT use implicit ranges
    mins = {sp.name: [1, *sp.shape[1:]] for sp in specs}
    maxs = {sp.name: [s.max_batch_size, *sp.shape[1:]] for sp in specs}
    return mins, maxs, dict(maxs)


class PaddleEngine:
    """One loaded model: a predictor pool plus the metadata the HTTP layer needs."""

    def __init__(self, settings: RuntimeSettings, model_dir: str | os.PathLike | None = None, role: str = "main") -> None:
        self.settings = settings
        self.model_dir = str(model_dir if model_dir is not None else settings.model_dir)
        self.role = role
        self.files: ModelFiles = load_model_files(self.model_dir, settings.model_name if role == "main" else "")
        self.name = self.files.name
        self.version = self.files.version
        self.device = settings.device if settings.device == "cpu" else f"{settings.device}:{settings.device_id}"
        self.workers = settings.workers
        self.inputs: tuple[TensorSpec, ...] = ()
        self.outputs: tuple[TensorSpec, ...] = ()
        self.batchable = True
        self.max_batch_size = settings.max_batch_size
        self.ready = False
        self.load_seconds = 0.0
        self.warmup_seconds = 0.0
        self.memory_optim = False
        self._pool: queue.Queue[Any] = queue.Queue()
        # Predictors for multi-row batches, one pool per batch size of the ladder, kept apart from
        # the single-row ones (settings ``single_row_predictor``); empty when not split.
        self._batch_pools: dict[int, queue.Queue[Any]] = {}
        self._predictors: list[Any] = []
        self._io: dict[int, tuple[list[tuple[str, Any]], list[tuple[str, Any]]]] = {}  # pooled predictors' handles
        self._input_names: list[str] = []
        self._output_names: list[str] = []
        self._inflight = 0
        self._idle = threading.Condition()

    # ---- lifecycle -----------------------------------------------------------------------------

    def load(self) -> None:
        """Create the predictors, read I/O metadata, warm up; ``ready`` is True only afterwards."""
        t0 = time.perf_counter()
        first = self._create_predictor()
        preds = [first] + [first.clone() for _ in range(self.workers - 1)]
        self._input_names = list(first.get_input_names())
        self._output_names = list(first.get_output_names())
        self._resolve_specs(first)
        self._predictors = preds
        for p in preds:
            self._pool.put(p)
        self.load_seconds = time.perf_counter() - t0
        t1 = time.perf_counter()
        self._warm_up()
        self.warmup_seconds = time.perf_counter() - t1
        # Tensor handles stay valid for a predictor's life: look them up once per pooled predictor
        # (~6 us each per run otherwise). Keyed by id(): the pooled predictors live until unload.
        self._io = {id(p): self._handles(p) for p in self._predictors}
        self.ready = True
        log.info(
            "model %s version %s (%s, %s) loaded in %.2fs, warmed up in %.2fs; %d worker(s), batching %s (max %d)",
            self.name, self.version, self.files.format, self.device, self.load_seconds, self.warmup_seconds,
            self.workers, "on" if self.batchable else "off", self.max_batch_size,
        )

    def unload(self, timeout: float = 30.0) -> None:
        """Stop taking work, wait (bounded) for running predicts, then release the predictors."""
        self.ready = False
        self.wait_idle(timeout)
        self._predictors.clear()
        self._io.clear()
        for pool in (self._pool, *self._batch_pools.values()):
            while not pool.empty():
                pool.get_nowait()
        self._batch_pools = {}

    def wait_idle(self, timeout: float) -> bool:
        """Block until no ``predict`` is running; False when ``timeout`` passed first."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._inflight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    @property
    def inflight(self) -> int:
        """Predicts running now."""
        return self._inflight

    @property
    def source(self) -> Path:
        """The directory the model files come from (``current`` resolved)."""
        return self.files.path

    @property
    def max_rows(self) -> int | None:
        """Most rows one run may hold: model.yaml ``max_batch_size``, and with TensorRT the size its
        engines were built for (None = no limit)."""
        declared = self.files.max_batch_size or None
        if self.settings.device == "gpu" and self.settings.tensorrt:
            return min(declared or self.settings.max_batch_size, self.settings.max_batch_size)
        return declared

    def _create_predictor(self) -> Any:
        pi = _inference()
        cfg = build_config(self.files, self.settings)
        self.memory_optim = self.settings.memory_optim and self.files.format != "pir"
        try:
            return pi.create_predictor(cfg)
        except Exception as e:
            if not self.memory_optim:
                raise ModelLoadError(f"cannot create a Paddle predictor for {self.files.path}: {e}") from e
            # Some program/pass combinations reject the memory optimisation pass; it only saves
            # memory, so serving without it beats not serving.
            log.warning("create_predictor failed with memory_optim (%s); retrying without it", str(e).splitlines()[0])
            self.memory_optim = False
            try:
                return pi.create_predictor(build_config(self.files, self.settings, memory_optim=False))
            except Exception as e2:
                raise ModelLoadError(f"cannot create a Paddle predictor for {self.files.path}: {e2}") from e2

    def _resolve_specs(self, pred: Any) -> None:
        prog_in, prog_out = read_program_io(self.files)
        by_name = {s.name: s for s in prog_in}
        declared = {s.name: s for s in self.files.inputs}
        unknown = set(declared) - set(self._input_names)
        if unknown:
            raise ModelLoadError(f"model.yaml names inputs the model does not have: {sorted(unknown)}")
        inputs = []
        for n in self._input_names:
            if n in declared:
                d, prog = declared[n], by_name.get(n)
                # model.yaml may name an input only for its warm-up shapes: the program gives the shape.
                if not d.shape and prog is not None and prog.shape:
                    d = TensorSpec(d.name, d.datatype, prog.shape, d.warmup_shapes)
                inputs.append(with_warmup_shapes(d, d.warmup_shapes, f"{self.files.path}/model.yaml"))
                continue
            spec = by_name.get(n)
            dt = to_oip_datatype(pred.get_input_handle(n).type().name.lower().replace("float", "float"))
            inputs.append(TensorSpec(n, dt, spec.shape if spec else ()))
        wanted = self.settings.warmup_shapes
        unknown = set(wanted) - set(self._input_names)
        if unknown:
            raise ModelLoadError(f"warmup_shapes names inputs the model does not have: {sorted(unknown)} "
                                 f"(its inputs: {self._input_names})")
        self.inputs = tuple(
            with_warmup_shapes(s, wanted[s.name], "setting warmup_shapes") if s.name in wanted else s for s in inputs
        )
        out_by_name = {s.name: s for s in (*prog_out, *self.files.outputs)}
        self.outputs = tuple(out_by_name.get(n, TensorSpec(n, "FP32", ())) for n in self._output_names)
        mbs = self.files.max_batch_size
        if mbs == 0 or any(not s.shape or s.shape[0] != -1 for s in self.inputs):
            self.batchable = False
        if mbs:
            self.max_batch_size = min(self.max_batch_size, mbs)

    def _warm_up(self) -> None:
        """Run every warm-up shape (model.yaml / setting ``warmup_shapes``) on the single-row
        predictors, and the first one on each batch size's predictors: a shape Paddle has not run
        yet costs about one extra run on its first request (kernel selection and oneDNN primitives
        are per shape)."""
        runs = max(1, self.settings.warmup_runs)
        pred = self._pool.get()
        try:
            singles = self._examples(1)
            for _ in range(runs):
                out = self._run(pred, singles[0])
            for x in singles[1:]:
                self._run(pred, x)
            # Fill in output specs the program did not declare, from what the model produced.
            self.outputs = tuple(
                s if s.shape else TensorSpec(s.name, _oip_of(out[s.name]), (-1, *out[s.name].shape[1:]))
                for s in self.outputs
            )
            if self.batchable and self.max_batch_size > 1:
                split = self.settings.single_row_predictor
                # A predictor that has run several batch shapes stays slower at batch 1 (measured on
                # PP-OCRv4 rec with oneDNN + memory_optim: +10-35 % p50), so with ``split`` batches
                # of 2+ rows get their own clones and the single-row predictors only ever see 1 row.
                probe = pred.clone() if split else pred
                # Batching is only safe when every output's first dim follows the input rows.
                out2 = self._run(probe, self._examples(2)[0])
                if any(a.ndim == 0 or a.shape[0] != 2 for a in out2.values()):
                    log.warning("model %s: outputs do not follow the batch dimension; batching disabled", self.name)
                    self.batchable = False
                else:
                    # Batches run the first warm-up shape only: every shape at every batch size kept each
                    # size's scratch memory for the widest one (PP-OCRv4 rec, max batch 16, widths 320
                    # and 640: 3.7 GB resident against 0.66 GB; OOMKilled at 2Gi on the real node).
                    if not split:
                        self._run(probe, self._examples(self.max_batch_size)[0])
                    for rung in ladder(self.max_batch_size)[1:] if split else ():
                        preds = [probe if rung == 2 else pred.clone()] + [pred.clone() for _ in range(self.workers - 1)]
                        self._batch_pools[rung] = queue.Queue()
                        first = self._examples(rung)[0]
                        for p in preds:
                            self._run(p, first)
                            self._batch_pools[rung].put(p)
                        self._predictors.extend(preds)
        except Exception as e:
            raise ModelLoadError(f"warm-up inference failed for {self.files.path}: {e}") from e
        finally:
            self._pool.put(pred)
        # Clones have their own scratch memory; give each one run per shape so no first request is slow.
        others = [self._pool.get() for _ in range(self.workers - 1)]
        try:
            for p in others:
                for x in singles:
                    self._run(p, x)
        finally:
            for p in others:
                self._pool.put(p)

    def _examples(self, batch: int) -> list[dict[str, np.ndarray]]:
        return warmup_examples(self.inputs, batch)

    # ---- inference -------------------------------------------------------------------------------

    def _run(self, pred: Any, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        io = self._io.get(id(pred)) or self._handles(pred)
        for n, h in io[0]:
            h.copy_from_cpu(np.ascontiguousarray(inputs[n]))
        wedge.check()  # no-op unless PADDLE_RUNTIME_FAULT_INJECTION=1 (e2e tests only)
        pred.run()
        return {n: h.copy_to_cpu() for n, h in io[1]}

    def _handles(self, pred: Any) -> tuple[list[tuple[str, Any]], list[tuple[str, Any]]]:
        return ([(n, pred.get_input_handle(n)) for n in self._input_names],
                [(n, pred.get_output_handle(n)) for n in self._output_names])

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one (possibly batched) inference; blocks until a pooled predictor is free.

        Inputs are validated by the caller (server/batcher); a Paddle failure here is an engine
        fault and raises :class:`EngineError` (HTTP 500).
        """
        if not self._predictors:
            raise EngineError(f"model {self.name} version {self.version} is not loaded")
        with self._idle:
            self._inflight += 1
        pool = self._pool
        if self._batch_pools:
            first = next(iter(inputs.values()))
            if first.ndim and first.shape[0] > 1:
                pool = self._batch_pools[max(r for r in self._batch_pools if r <= first.shape[0])]
        pred = pool.get()
        try:
            return self._run(pred, inputs)
        except Exception as e:
            raise EngineError(f"inference failed in model {self.name}: {str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__}") from e
        finally:
            pool.put(pred)
            with self._idle:
                self._inflight -= 1
                if not self._inflight:
                    self._idle.notify_all()


def _oip_of(a: np.ndarray) -> str:
    return NUMPY_TO_OIP.get(a.dtype, "FP32")
