"""Typed model of a PaddleModelService, parsed once per reconcile.

Pure: no kopf, no Kubernetes client. The CRD (crds/) is the validating source of truth; the defaults
here mirror the CRD's so a spec read without API-server defaulting (unit tests, dry runs, objects
stored before a default existed) behaves the same. ``tests/operator/test_spec.py`` checks that the
two agree. Names of children and labels live here too, as constants, so their length limits are
derived in one place.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

GROUP = "serving.paddlesla.io"
VERSION = "v1alpha1"
PLURAL = "paddlemodelservices"
KIND = "PaddleModelService"
API_VERSION = f"{GROUP}/{VERSION}"
FIELD_MANAGER = "paddle-sla-operator"

# Labels (docs/contracts.md).
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_SERVICE = f"{GROUP}/service"
LABEL_TRACK = f"{GROUP}/track"
APP_NAME = "paddle-model-service"
MANAGED_BY = FIELD_MANAGER

# Child name templates. Service names are DNS-1035 labels (<= 63 chars), so the longest Service
# suffix decides how long a PaddleModelService name may be (ConfigMap names may be 253 long). The
# CRD enforces the same number (tests/operator/test_spec.py checks).
DNS_LABEL_MAX = 63
SUFFIX_RUNTIME = "-runtime"
SUFFIX_CANARY = "-canary"
SUFFIX_STABLE = "-stable"
MAX_NAME_LENGTH = DNS_LABEL_MAX - max(len(SUFFIX_CANARY), len(SUFFIX_STABLE))

# Runtime container layout (docs/contracts.md: the runtime CLI and settings).
RUNTIME_PORT = 8080
METRICS_SERVICE_PORT = 9090
MODEL_ROOT = "/models"
MAIN_MODEL_DIR = f"{MODEL_ROOT}/main"
FALLBACK_MODEL_DIR = f"{MODEL_ROOT}/fallback"
# What a refused fetch leaves in the store (paddle_runtime.store.FETCH_FAILED, checked equal by a test).
FETCH_FAILED = "fetch-failed.json"
CONFIG_DIR = "/etc/paddle-runtime"
CONFIG_FILE = f"{CONFIG_DIR}/config.yaml"
SECRETS_DIR = "/var/run/secrets/paddle-runtime"
# spec.pipeline stage models: fetched next to the main model (which is the recognition stage, its
# fallback spec.fallback), each stage's fallback beside it.
DET_MODEL_DIR = f"{MODEL_ROOT}/det"
CLS_MODEL_DIR = f"{MODEL_ROOT}/cls"
STAGE_MODEL_DIRS = {"det": DET_MODEL_DIR, "cls": CLS_MODEL_DIR}
STAGE_FALLBACK_DIRS = {"det": f"{MODEL_ROOT}/det-fallback", "cls": f"{MODEL_ROOT}/cls-fallback"}
BUNDLED_MODELS_URI = "file:///opt/paddle-runtime/models"
KEY_FILES = {"hmac": "hmac.key", "public": "public.pem"}


def key_file(kind: str, stage: str = "") -> str:
    """Where the runtime reads a signature key (``hmac`` or ``public``): spec.model's, or a pipeline
    stage's own (``det``, ``cls``), each Secret mounted in a directory of its own."""
    return f"{SECRETS_DIR}/{stage + '-' if stage else ''}{kind}/{KEY_FILES[kind]}"

PVC_MOUNT_ROOT = "/mnt/pvc"


class _Model(BaseModel):
    """Base: camelCase aliases as in the CRD, unknown keys ignored (newer CRD, older operator)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)


class SecretKeyRef(_Model):
    """A key in a Secret of the same namespace."""

    name: str
    key: str | None = None


class Preload(_Model):
    """Where the fetched model lives in the pod: RAM (``Memory``) or node disk."""

    medium: Literal["Memory", "Disk"] = "Disk"
    size_limit: str | int | None = None


class Signature(_Model):
    """Secrets holding the keys the fetch step verifies the model with."""

    hmac_key_secret_ref: SecretKeyRef | None = None
    public_key_secret_ref: SecretKeyRef | None = None


class ModelSource(_Model):
    """The main model: where it is, which version, how it is preloaded, verified and updated."""

    uri: str
    name: str | None = None
    version: str | None = None
    preload: Preload = Preload()
    signature: Signature | None = None
    update: Literal["HotReload", "Rollout", "Canary"] = "Rollout"


class Fallback(_Model):
    """A smaller model the runtime switches to when the main one breaks its thresholds."""

    uri: str
    # Mean latency of the last ``window`` main-model requests that triggers the switch (runtime
    # semantics, runtime/paddle_runtime/fallback.py); default derived from spec.sla.latencyP99Ms.
    latency_threshold_ms: int | None = None
    window: int = 10
    # K consecutive main-model errors. The CRD takes an integer >= 1; a ratio < 1 stored under the
    # older schema is passed through as is (the runtime reads < 1 as an error ratio over the window).
    error_threshold: int | float = 3
    recovery_ratio: float = 0.7
    # Percent of traffic back on the main model at each ramp step; increasing, ending at 100.
    recovery_steps: tuple[int, ...] = (10, 30, 60, 100)

    @field_validator("recovery_steps", mode="before")
    @classmethod
    def _even_steps(cls, v: Any) -> Any:
        """An integer N (the older schema) means N even steps, as the runtime reads it: 3 -> 33, 67, 100."""
        if isinstance(v, int) and not isinstance(v, bool) and v >= 1:
            return tuple(round(100 * (i + 1) / v) for i in range(v))
        return v


class Stage(_Model):
    """A pipeline stage's model, a model like ``spec.model``: source, version, signature, fallback."""

    uri: str
    version: str | None = None
    # Keys the stage's model is verified with; None = spec.model.signature's.
    signature: Signature | None = None
    fallback: Fallback | None = None


class DetectionStage(Stage):
    """The text detection model of an OCR pipeline."""

    uri: str = f"{BUNDLED_MODELS_URI}/ch_PP-OCRv4_det_infer"


class ClassifierStage(Stage):
    """The text direction classifier of an OCR pipeline (optional stage)."""

    enabled: bool = True
    uri: str = f"{BUNDLED_MODELS_URI}/ch_ppocr_mobile_v2_cls_infer"


class Pipeline(_Model):
    """``spec.pipeline``: serve ``spec.model`` as the recognition stage of a model pipeline."""

    type: Literal["ppocr"]
    detection: DetectionStage = DetectionStage()
    classifier: ClassifierStage = ClassifierStage()

    def stages(self) -> dict[str, Stage]:
        """The stages besides recognition (``spec.model``), by runtime stage name: ``det``, ``cls`` if enabled."""
        out: dict[str, Stage] = {"det": self.detection}
        if self.classifier.enabled:
            out["cls"] = self.classifier
        return out


class Resources(_Model):
    """Container requests/limits, passed through."""

    requests: dict[str, str | int] = Field(default_factory=dict)
    limits: dict[str, str | int] = Field(default_factory=dict)


class Inference(_Model):
    """Engine settings that become runtime settings and pod resources."""

    device: Literal["cpu", "gpu", "npu", "xpu"] = "cpu"
    precision: Literal["fp32", "fp16", "int8"] = "fp32"
    tensorrt: bool = False
    max_batch_size: int = 8
    batch_timeout_ms: int = 5
    cpu_threads: int | None = None
    workers: int | None = None
    gpus: int | None = None
    resources: Resources = Resources()

    @property
    def gpu_count(self) -> int:
        """GPUs per pod: explicit, else one for ``device: gpu``."""
        if self.device != "gpu":
            return 0
        return self.gpus if self.gpus is not None else 1


class Autoscaling(_Model):
    """HPA bounds and targets."""

    enabled: bool = True
    min_replicas: int = 1
    max_replicas: int
    target_qps_per_replica: int | None = Field(default=None, alias="targetQPSPerReplica")
    target_gpu_utilization: int | None = Field(default=None, alias="targetGPUUtilization")
    target_cpu_utilization: int | None = Field(default=None, alias="targetCPUUtilization")
    scale_down_stabilization_seconds: int = 300


class SLA(_Model):
    """The objective; sets defaults now and is evaluated against Prometheus by the rollout code."""

    latency_p99_ms: int | None = Field(default=None, alias="latencyP99Ms")
    availability: str | None = None
    max_error_rate: float | None = None
    window: str = "5m"

    @property
    def availability_percent(self) -> float | None:
        """``availability`` as a number (``"99.9"`` -> 99.9), None when unset."""
        return float(self.availability) if self.availability is not None else None


class ProbeOverride(_Model):
    """Fields a user may override on one probe."""

    initial_delay_seconds: int | None = None
    period_seconds: int | None = None
    timeout_seconds: int | None = None
    failure_threshold: int | None = None


class Probes(_Model):
    """Overrides of the three runtime probes."""
    startup: ProbeOverride = ProbeOverride()
    readiness: ProbeOverride = ProbeOverride()
    liveness: ProbeOverride = ProbeOverride()


class Auth(_Model):
    """Bearer-token auth on the inference port."""
    token_secret_ref: SecretKeyRef | None = None


class ServicePort(_Model):
    """The Service in front of the pods."""
    type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"
    port: int = RUNTIME_PORT


class Router(_Model):
    """Traffic router for canaries; the rollout code reads the sub-blocks it needs."""

    type: Literal["Service", "GatewayAPI", "Istio"] = "Service"
    gateway_api: dict[str, Any] | None = Field(default=None, alias="gatewayAPI")
    istio: dict[str, Any] | None = None


class Analysis(_Model):
    """Canary analysis: where to ask and the thresholds (else derived from ``spec.sla``)."""
    prometheus_url: str | None = Field(default=None, alias="prometheusURL")
    max_latency_p99_ms: int | None = Field(default=None, alias="maxLatencyP99Ms")
    max_error_rate: float | None = None
    min_requests: int = 50
    failure_threshold: int = 2


class Rollout(_Model):
    """How a new tag (or model, with ``model.update: Canary``) is rolled out."""
    strategy: Literal["Canary", "Rolling"] = "Canary"
    steps: tuple[int, ...] = (10, 30, 60, 100)
    interval_seconds: int = 60
    paused: bool = False
    router: Router = Router()
    analysis: Analysis = Analysis()


class ServiceSpec(_Model):
    """``spec`` of a PaddleModelService."""

    image: str = "ghcr.io/paddle-sla/paddle-runtime"
    tag: str = "0.1.0-cpu"
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    replicas: int = 1
    model: ModelSource
    fallback: Fallback | None = None
    pipeline: Pipeline | None = None
    inference: Inference = Inference()
    autoscaling: Autoscaling | None = None
    sla: SLA | None = None
    probes: Probes = Probes()
    auth: Auth | None = None
    service: ServicePort = ServicePort()
    rollout: Rollout = Rollout()
    service_account_name: str | None = None
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: tuple[dict[str, Any], ...] = ()
    affinity: dict[str, Any] | None = None
    image_pull_secrets: tuple[dict[str, str], ...] = ()
    priority_class_name: str | None = None
    pod_labels: dict[str, str] = Field(default_factory=dict)
    pod_annotations: dict[str, str] = Field(default_factory=dict)
    env: tuple[dict[str, Any], ...] = ()

    @property
    def fallback_armed(self) -> bool:
        """A fallback model is configured: ``spec.fallback``, or a pipeline stage's own."""
        if self.fallback is not None:
            return True
        return self.pipeline is not None and any(st.fallback is not None for st in self.pipeline.stages().values())

    @property
    def autoscaled(self) -> bool:
        """An HPA sizes the Deployment (``spec.autoscaling`` present and enabled)."""
        return self.autoscaling is not None and self.autoscaling.enabled


class PaddleModelService(_Model):
    """The parts of a PaddleModelService object the builders need: identity plus the typed spec."""

    name: str
    namespace: str
    uid: str
    generation: int = 0
    spec: ServiceSpec
    # Read-only copy of ``status``: the rollout's plan needs status.stableTag / status.rollout, because a
    # tag change alone must not move the stable Deployment (canary.py).
    status: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def from_body(cls, body: Any) -> PaddleModelService:
        """Parse a kopf body or a plain dict (``metadata`` + ``spec``) once."""
        meta = body["metadata"]
        return cls(
            name=meta["name"],
            namespace=meta.get("namespace") or "default",
            uid=meta.get("uid", ""),
            generation=meta.get("generation") or 0,
            spec=ServiceSpec.model_validate(dict(body.get("spec") or {})),
            status=dict(body.get("status") or {}),
        )

    # Names of children (docs/contracts.md).
    @property
    def deployment_name(self) -> str:
        """Name of the stable Deployment."""
        return self.name

    @property
    def configmap_name(self) -> str:
        """Name of the runtime ConfigMap."""
        return self.name + SUFFIX_RUNTIME

    @property
    def service_name(self) -> str:
        """Name of the Service."""
        return self.name

    @property
    def model_name(self) -> str:
        """Model name the runtime serves under (``spec.model.name``, else the resource name)."""
        return self.spec.model.name or self.name

    @property
    def image_ref(self) -> str:
        """``image:tag`` of the runtime container."""
        return f"{self.spec.image}:{self.spec.tag}"

    @property
    def url(self) -> str:
        """In-cluster URL of the Service."""
        return f"http://{self.service_name}.{self.namespace}.svc:{self.spec.service.port}"


def parse_pvc_uri(uri: str) -> tuple[str, str] | None:
    """``pvc://claim/sub/path`` → ``("claim", "sub/path")``; None for other schemes."""
    if not uri.startswith("pvc://"):
        return None
    rest = uri[len("pvc://") :]
    claim, _, path = rest.partition("/")
    return claim, path
