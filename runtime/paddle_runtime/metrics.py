"""Prometheus metrics (names fixed in docs/contracts.md) and the optional NVML GPU sampler.

All collectors live in the default ``prometheus_client`` registry and are created once at import,
so every part of the process (server, batcher, reload, fallback) imports and updates the same
objects.  Label sets:

* ``requests_total{model,version,role,code}``, ``request_duration_seconds{model,version,role}``
  (the server records one per request; ``role`` is ``main`` or ``fallback``),
* ``batch_size{model}``, ``batch_size_chosen{model}``, ``queue_depth{model}`` (batcher), ``inflight_requests{model}`` (server),
* ``model_info{model,version,device,role}`` = 1 for each loaded engine,
* resilience, per served model (an OCR pipeline's stages are models of their own: ``ppocr-det``, ...):
  ``active_role{model,role}``, ``fallback_switches_total{model,to}``, ``reloads_total{model,result}``,
* state the operator writes into the resource's status (one query for all pods, see
  ``paddle_operator.promql.runtime_truth``): ``fallback_active`` (1 while any traffic of any model of
  the process goes to a fallback), ``reload_failing{model,error}`` (1 while the candidate on disk is
  refused; no series otherwise), ``reload_last_failure_timestamp_seconds``,
* GPU (only when NVML finds a device): ``gpu_utilization_percent{gpu}``, ``gpu_memory_used_bytes{gpu}``,
* SLO (only while ``spec.sla`` sets them, see :func:`set_slo`): ``slo_objective_ratio{model,slo}``,
  ``slo_latency_target_seconds{model}``, ``requests_over_latency_target_total{model,version,role}``;
  the chart's recording and alerting rules (charts/paddle-operator/files/slo-rules.yaml) read these.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

log = logging.getLogger("paddle_runtime.metrics")

# Latency buckets from 1 ms (a batch-1 CPU MobileNet) to 10 s (a cold TensorRT build on first use).
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2,
                    0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)

REQUESTS = Counter("paddle_runtime_requests", "Inference requests by outcome",
                   ["model", "version", "role", "code"])
REQUEST_DURATION = Histogram("paddle_runtime_request_duration_seconds", "Inference request latency",
                             ["model", "version", "role"], buckets=_LATENCY_BUCKETS)
BATCH_SIZE = Histogram("paddle_runtime_batch_size", "Rows per executed batch", ["model"],
                       buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64))
BATCH_SIZE_CHOSEN = Gauge("paddle_runtime_batch_size_chosen",
                          "Batch size the adaptive batcher aims for (the input shape served last)", ["model"])
QUEUE_DEPTH = Gauge("paddle_runtime_queue_depth", "Requests waiting for a batch", ["model"])
INFLIGHT = Gauge("paddle_runtime_inflight_requests", "Inference requests being handled", ["model"])
MODEL_INFO = Gauge("paddle_runtime_model_info", "Loaded model (value 1)", ["model", "version", "device", "role"])
GPU_UTILIZATION = Gauge("paddle_runtime_gpu_utilization_percent", "GPU utilisation (NVML)", ["gpu"])
GPU_MEMORY_USED = Gauge("paddle_runtime_gpu_memory_used_bytes", "GPU memory used (NVML)", ["gpu"])
# Resilience (reload.py / fallback.py update these).
ACTIVE_ROLE = Gauge("paddle_runtime_active_role", "Share of the model's traffic each role serves now",
                    ["model", "role"])
FALLBACK_SWITCHES = Counter("paddle_runtime_fallback_switches", "Switches between main and fallback", ["model", "to"])
RELOADS = Counter("paddle_runtime_reloads", "Hot reload attempts by result", ["model", "result"])
FALLBACK_ACTIVE = Gauge("paddle_runtime_fallback_active",
                        "1 while a fallback model serves any traffic (of any model or pipeline stage here)")
RELOAD_FAILING = Gauge("paddle_runtime_reload_failing",
                       "1 while the model on disk is refused by hot reload (the old one keeps serving)",
                       ["model", "error"])
RELOAD_LAST_FAILURE = Gauge("paddle_runtime_reload_last_failure_timestamp_seconds",
                            "Unix time of the last refused hot reload (0: none)")
# SLO (spec.sla): the objectives as series, so one set of Prometheus rules serves every service, and
# the latency SLI as a counter at the exact target (a histogram bucket rarely sits on it).
SLO_OBJECTIVE = Gauge("paddle_runtime_slo_objective_ratio",
                      "Share of requests that must be good (slo=availability: not 5xx; slo=latency: "
                      "successful within the latency target)", ["model", "slo"])
SLO_LATENCY_TARGET = Gauge("paddle_runtime_slo_latency_target_seconds", "SLA p99 latency target", ["model"])
REQUESTS_OVER_TARGET = Counter("paddle_runtime_requests_over_latency_target",
                               "Successful requests slower than the SLA latency target", ["model", "version", "role"])
# spec.sla.latencyP99Ms is a p99 target: 99 % of successful requests within it.
LATENCY_OBJECTIVE = 0.99

# Latency target (seconds) that observe_success counts against; 0 = no latency SLO.
_slo_latency_target_s = 0.0


# Label values end up in a resource's status message: bounded, one line.
_ERROR_LABEL_MAX = 200


# Per model: the error label now in force, and the models serving fallback traffic (several models
# share the process-wide series, so each one's part is kept here and the series follow from it).
_reload_errors: dict[str, str] = {}
_on_fallback: set[str] = set()
_state_lock = threading.Lock()


def set_reload_failing(model: str, error: str | None, at: float | None = None) -> None:
    """Report the reload error of ``model`` now in force (one series per model), or clear it with ``None``."""
    with _state_lock:
        old = _reload_errors.pop(model, None)
        if old is not None:
            _remove(RELOAD_FAILING, model, old)
        if error is not None:
            label = _reload_errors[model] = " ".join(error.split())[:_ERROR_LABEL_MAX]
            RELOAD_FAILING.labels(model, label).set(1)
            if at is not None:
                RELOAD_LAST_FAILURE.set(at)


def set_fallback_active(model: str, active: bool) -> None:
    """``model`` sends traffic to its fallback (any share) or not; the gauge is 1 while any model does."""
    with _state_lock:
        if active:
            _on_fallback.add(model)
        else:
            _on_fallback.discard(model)
        FALLBACK_ACTIVE.set(1 if _on_fallback else 0)


def render() -> tuple[bytes, str]:
    """The /metrics body and its content type."""
    return generate_latest(), CONTENT_TYPE_LATEST


# Label children by label values: ``labels()`` validates and locks on every call (~10 us each on the
# request path, measured with py-spy); the children are stable until set_slo clears the SLO counter.
_code_children: dict[tuple[str, str, str, int], Any] = {}
_latency_children: dict[tuple[str, str, str], tuple[Any, Any]] = {}


def count_request(model: str, version: str, role: str, code: int, seconds: float) -> None:
    """Record one finished inference request: ``requests_total`` by code, and for a success its latency."""
    c = _code_children.get((model, version, role, code))
    if c is None:
        c = _code_children[(model, version, role, code)] = REQUESTS.labels(model, version, role, str(code))
    c.inc()
    if code == 200:
        observe_success(model, version, role, seconds)


def observe_success(model: str, version: str, role: str, seconds: float) -> None:
    """Record the latency of a successful request (histogram, and the SLO counter when a target is set)."""
    key = (model, version, role)
    children = _latency_children.get(key)
    if children is None:
        # labels() even when fast: the series exists at 0, so the SLI reads 0 % slow, not "no data".
        over = REQUESTS_OVER_TARGET.labels(model, version, role) if _slo_latency_target_s > 0 else None
        children = _latency_children[key] = (REQUEST_DURATION.labels(model, version, role), over)
    hist, over = children
    hist.observe(seconds)
    if over is not None and seconds > _slo_latency_target_s:
        over.inc()


def set_slo(model: str, latency_p99_ms: float, availability_percent: float) -> None:
    """Publish the SLO of ``model`` (0 = that objective unset: its series are removed)."""
    global _slo_latency_target_s
    _slo_latency_target_s = latency_p99_ms / 1000.0
    _latency_children.clear()  # the SLO counter's children come and go with the target
    if latency_p99_ms > 0:
        SLO_LATENCY_TARGET.labels(model).set(_slo_latency_target_s)
        SLO_OBJECTIVE.labels(model, "latency").set(LATENCY_OBJECTIVE)
    else:
        _remove(SLO_LATENCY_TARGET, model)
        _remove(SLO_OBJECTIVE, model, "latency")
        REQUESTS_OVER_TARGET.clear()
    if availability_percent > 0:
        SLO_OBJECTIVE.labels(model, "availability").set(round(availability_percent / 100.0, 8))
    else:
        _remove(SLO_OBJECTIVE, model, "availability")


def _remove(metric: Gauge, *labels: str) -> None:
    try:
        metric.remove(*labels)
    except KeyError:
        pass


def set_model_info(model: str, version: str, device: str, role: str, loaded: bool = True) -> None:
    """Mark an engine loaded (1) or remove its series when it is unloaded."""
    if loaded:
        MODEL_INFO.labels(model, version, device, role).set(1)
    else:
        try:
            MODEL_INFO.remove(model, version, device, role)
        except KeyError:
            pass


class GpuSampler:
    """Samples NVML utilisation and memory every ``interval`` seconds in a daemon thread.

    Does nothing (and logs once) when nvidia-ml-py is missing or no GPU is visible, so CPU pods
    run the same code.
    """

    def __init__(self, interval: float = 5.0) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._handles: list = []

    def start(self) -> bool:
        """Start sampling; False when there is no GPU to sample."""
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        except Exception as e:  # no driver / no library: a CPU node
            log.info("NVML not available (%s); GPU metrics off", type(e).__name__)
            return False
        if not self._handles:
            return False
        self.sample()
        self._thread = threading.Thread(target=self._loop, name="nvml-sampler", daemon=True)
        self._thread.start()
        return True

    def sample(self) -> None:
        """Read every GPU once into the gauges."""
        import pynvml

        for i, h in enumerate(self._handles):
            try:
                GPU_UTILIZATION.labels(str(i)).set(pynvml.nvmlDeviceGetUtilizationRates(h).gpu)
                GPU_MEMORY_USED.labels(str(i)).set(pynvml.nvmlDeviceGetMemoryInfo(h).used)
            except Exception as e:  # a GPU falling off the bus should not kill the sampler
                log.warning("NVML sample of gpu %d failed: %s", i, e)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        """Stop sampling."""
        self._stop.set()


# OCR pipeline (ocr/pipeline.py): time per stage of one image (queue, decode, det_pre, det, det_post, cls, rec, total).
OCR_STAGE_DURATION = Histogram("paddle_runtime_ocr_stage_duration_seconds", "OCR pipeline time per stage and image",
                               ["stage"], buckets=_LATENCY_BUCKETS)
OCR_LINES = Histogram("paddle_runtime_ocr_lines", "Text lines found per image",
                      buckets=(0, 1, 2, 4, 8, 16, 32, 64, 128))
