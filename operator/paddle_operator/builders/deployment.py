"""Deployment: fetch-and-verify init container, probed runtime container, restricted security.

``build_deployment`` takes the track, name, tag and replica count as arguments so the rollout code can
build the canary Deployment from the same function.
"""

from __future__ import annotations

import json
from typing import Any

from ..spec import (
    CLS_MODEL_DIR,
    CONFIG_DIR,
    CONFIG_FILE,
    DET_MODEL_DIR,
    FALLBACK_MODEL_DIR,
    FETCH_FAILED,
    KEY_FILES,
    MAIN_MODEL_DIR,
    MODEL_ROOT,
    PVC_MOUNT_ROOT,
    RUNTIME_PORT,
    SECRETS_DIR,
    STAGE_FALLBACK_DIRS,
    STAGE_MODEL_DIRS,
    PaddleModelService,
    ProbeOverride,
    SecretKeyRef,
    Signature,
    key_file,
    parse_pvc_uri,
)
from .common import STABLE, labels, object_meta, selector_labels
from .configmap import source_keys

# A non-root UID/GID that exists in no base image: Pod Security "restricted" needs non-root, and a
# numeric UID lets the kubelet verify it without reading /etc/passwd.
RUN_AS = 65532
SECRET_MODE = 0o440  # group-readable through fsGroup, nobody else
DEFAULT_KEYS = {**KEY_FILES, "auth": "token"}
# Startup covers download-free load plus warm-up of large models: 5 s x 120 = 10 minutes before
# the kubelet gives up. Liveness only starts after startup succeeds.
PROBE_DEFAULTS = {
    "startup": {"periodSeconds": 5, "timeoutSeconds": 3, "failureThreshold": 120},
    "readiness": {"periodSeconds": 5, "timeoutSeconds": 3, "failureThreshold": 3},
    "liveness": {"periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 3},
}
PROBE_PATHS = {"startup": "/v2/health/ready", "readiness": "/v2/health/ready", "liveness": "/v2/health/live"}
# The sidecar that re-fetches the model for update: HotReload polls the mounted ConfigMap; kubelet
# refreshes ConfigMap volumes within about a minute, so polling faster than that buys nothing.
SYNC_POLL_S = 15


def _probe(kind: str, override: ProbeOverride) -> dict[str, Any]:
    probe: dict[str, Any] = {"httpGet": {"path": PROBE_PATHS[kind], "port": "http"}}
    probe.update(PROBE_DEFAULTS[kind])
    probe.update(override.model_dump(by_alias=True, exclude_none=True))
    return probe


def _container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _secret_volume(volume: str, ref: SecretKeyRef, default_key: str) -> dict[str, Any]:
    return {
        "name": volume,
        "secret": {
            "secretName": ref.name,
            "items": [{"key": ref.key or default_key, "path": default_key}],
            "defaultMode": SECRET_MODE,
        },
    }


def _resources(svc: PaddleModelService, with_gpu: bool) -> dict[str, Any]:
    res = svc.spec.inference.resources
    requests = {k: v for k, v in res.requests.items()}
    limits = {k: v for k, v in res.limits.items()}
    gpus = svc.spec.inference.gpu_count
    if with_gpu and gpus:
        # Extended resources must have requests == limits; set both.
        limits["nvidia.com/gpu"] = gpus
        requests["nvidia.com/gpu"] = gpus
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = dict(sorted(requests.items()))
    if limits:
        out["limits"] = dict(sorted(limits.items()))
    return out


def _source_args(uri: str, dest: str) -> tuple[str, list[dict[str, Any]], dict[str, Any] | None]:
    """Map a model URI to what fetch reads, plus a read-only PVC mount/volume when needed."""
    pvc = parse_pvc_uri(uri)
    if pvc is None:
        return uri, [], None
    claim, path = pvc
    mount_path = f"{PVC_MOUNT_ROOT}/{claim}"
    volume_name = f"pvc-{claim}"[:63]
    mount = {"name": volume_name, "mountPath": mount_path, "readOnly": True}
    volume = {"name": volume_name, "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
    return f"file://{mount_path}/{path}".rstrip("/"), [mount], volume


def _signature(sig: Signature | None, stage: str, volumes: list[dict[str, Any]],
               mounts: list[dict[str, Any]]) -> list[str]:
    """Mount the key Secrets of one signature (spec.model's, or a pipeline stage's own); return the
    verify arguments of ``paddle-runtime fetch`` for it."""
    args: list[str] = []
    prefix = f"{stage}-" if stage else ""
    refs = (sig.hmac_key_secret_ref, sig.public_key_secret_ref) if sig is not None else (None, None)
    for kind, ref, flag in zip(("hmac", "public"), refs, ("--hmac-key-file", "--public-key"), strict=True):
        if ref is None:
            continue
        path = key_file(kind, stage)
        volumes.append(_secret_volume(f"{prefix}{kind}-key", ref, DEFAULT_KEYS[kind]))
        mounts.append({"name": f"{prefix}{kind}-key", "mountPath": path.rsplit("/", 1)[0], "readOnly": True})
        args += [flag, path]
    return args


def _sync_script(stores: list[tuple[tuple[str, str], str, list[str]]]) -> str:
    """The model-sync sidecar's loop: re-fetch a store when its URI in the mounted ConfigMap changes.

    fetch writes versions/<v> and switches the `current` link atomically, which the runtime watches;
    the version comes from the same ConfigMap, so it moves with the URI. A refused fetch leaves
    fetch-failed.json, which the runtime reports (status ModelCurrent); it is retried every poll,
    and dropped once the spec points back at what serves.
    """
    init, body = [], []
    for i, ((uri_key, version_key), dest, verify) in enumerate(stores):
        last = "last" if i == 0 else f"last{i}"
        init.append(f'{last}="$(cat {CONFIG_DIR}/{uri_key})"; ')
        body.append(
            f'cur="$(cat {CONFIG_DIR}/{uri_key})"; '
            f'ver="$(cat {CONFIG_DIR}/{version_key})"; '
            f'if [ "$cur" != "${last}" ]; then '
            f'paddle-runtime fetch --uri "$cur" --dest {dest} ${{ver:+--version "$ver"}} '
            f'{" ".join(verify)} '
            f'&& {last}="$cur"; else rm -f {dest}/{FETCH_FAILED}; fi; '
        )
    return "".join(init) + f"while sleep {SYNC_POLL_S}; do " + "".join(body).rstrip("; ") + "; done"


def _engine_env(svc: PaddleModelService) -> list[dict[str, Any]]:
    """Engine settings as env (a change needs a new predictor, so it rolls the pods)."""
    inf = svc.spec.inference
    env = {
        "PADDLE_RUNTIME_MODEL_NAME": svc.model_name,
        "PADDLE_RUNTIME_DEVICE": inf.device,
        "PADDLE_RUNTIME_PRECISION": inf.precision,
        "PADDLE_RUNTIME_TENSORRT": "true" if inf.tensorrt else "false",
        # Writable scratch on a read-only root filesystem: Paddle and TensorRT caches.
        "HOME": "/tmp",
    }
    if inf.tensorrt:
        env["PADDLE_RUNTIME_TRT_CACHE_DIR"] = "/cache/trt"
    if inf.cpu_threads is not None:
        env["PADDLE_RUNTIME_CPU_THREADS"] = str(inf.cpu_threads)
    if inf.workers is not None:
        env["PADDLE_RUNTIME_WORKERS"] = str(inf.workers)
    sig = svc.spec.model.signature
    if sig is not None and sig.hmac_key_secret_ref is not None:
        env["PADDLE_RUNTIME_HMAC_KEY_FILE"] = key_file("hmac")
    if sig is not None and sig.public_key_secret_ref is not None:
        env["PADDLE_RUNTIME_PUBLIC_KEY_FILE"] = key_file("public")
    if svc.spec.auth is not None and svc.spec.auth.token_secret_ref is not None:
        env["PADDLE_RUNTIME_AUTH_TOKEN_FILE"] = f"{SECRETS_DIR}/auth/{DEFAULT_KEYS['auth']}"
    out = [{"name": k, "value": v} for k, v in env.items()]
    # User env overrides ours by name; duplicates would break server-side apply (env is a map by name).
    user = {e["name"]: dict(e) for e in svc.spec.env}
    out = [user.pop(e["name"], e) for e in out]
    out.extend(user.values())
    return out


def build_deployment(
    svc: PaddleModelService,
    *,
    track: str = STABLE,
    name: str | None = None,
    tag: str | None = None,
    replicas: int | None = None,
) -> dict[str, Any]:
    """The Deployment for one track. ``replicas`` None means spec.replicas, or unmanaged under an HPA."""
    spec = svc.spec
    image = f"{spec.image}:{tag or spec.tag}"
    hot_reload = spec.model.update == "HotReload"

    volumes: list[dict[str, Any]] = []
    preload = spec.model.preload
    models_volume: dict[str, Any] = {"name": "models", "emptyDir": {}}
    if preload.medium == "Memory":
        models_volume["emptyDir"]["medium"] = "Memory"
    if preload.size_limit is not None:
        models_volume["emptyDir"]["sizeLimit"] = str(preload.size_limit)
    volumes.append(models_volume)
    volumes.append({"name": "config", "configMap": {"name": svc.configmap_name}})
    volumes.append({"name": "tmp", "emptyDir": {}})
    volumes.append({"name": "cache", "emptyDir": {}})

    # Keys per model store: spec.model's, and a pipeline stage's own (else it uses spec.model's).
    secret_mounts: list[dict[str, Any]] = []
    verify_args = _signature(spec.model.signature, "", volumes, secret_mounts)
    stages = spec.pipeline.stages() if spec.pipeline is not None else {}
    stage_verify = {k: _signature(st.signature, k, volumes, secret_mounts) if st.signature is not None
                    else verify_args for k, st in stages.items()}
    runtime_mounts = [
        {"name": "models", "mountPath": MODEL_ROOT},
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "cache", "mountPath": "/cache"},
        *secret_mounts,
    ]
    if spec.auth is not None and spec.auth.token_secret_ref is not None:
        volumes.append(_secret_volume("auth-token", spec.auth.token_secret_ref, DEFAULT_KEYS["auth"]))
        runtime_mounts.append({"name": "auth-token", "mountPath": f"{SECRETS_DIR}/auth", "readOnly": True})

    fetch_mounts = [
        {"name": "models", "mountPath": MODEL_ROOT},
        {"name": "tmp", "mountPath": "/tmp"},
        *secret_mounts,
    ]

    def fetch(container: str, uri: str, dest: str, version: str | None, verify: list[str],
              source_keys: tuple[str, str] | None = None) -> dict[str, Any]:
        """An init container fetching (and verifying) one model store; ``source_keys`` (ConfigMap keys
        of the URI and version) for a store that ``update: HotReload`` re-fetches in place."""
        src, mounts, volume = _source_args(uri, dest)
        if volume is not None and volume["name"] not in {v["name"] for v in volumes}:
            volumes.append(volume)
        env: list[dict[str, Any]] = [{"name": "HOME", "value": "/tmp"}]
        if source_keys is not None and volume is None:
            # The URI comes from the ConfigMap, so changing it does not change the pod template: the
            # model-sync sidecar fetches the new version and the runtime swaps it in place.
            for var, key in zip(("MODEL_URI", "MODEL_VERSION"), source_keys, strict=True):
                env.append({"name": var, "valueFrom": {"configMapKeyRef": {"name": svc.configmap_name, "key": key}}})
            synced.append((source_keys, dest, verify))
            # Empty when the spec names no version: fetch then falls back to the manifest, model.yaml.
            src, version_args = "$(MODEL_URI)", ["--version", "$(MODEL_VERSION)"]
        else:
            # fetch names the version directory after the spec (model.yaml's version still wins in
            # what the runtime reports: docs/contracts.md, "One version label").
            version_args = ["--version", version] if version else []
        return {
            "name": container,
            "image": image,
            "imagePullPolicy": spec.image_pull_policy,
            "command": ["paddle-runtime"],
            "args": ["fetch", "--uri", src, "--dest", dest, *version_args, *verify],
            "env": env,
            "volumeMounts": fetch_mounts + mounts,
            "resources": _resources(svc, with_gpu=False),
            "securityContext": _container_security(),
        }

    sources = source_keys(svc)
    synced: list[tuple[tuple[str, str], str, list[str]]] = []  # stores the model-sync sidecar re-fetches
    init_containers = [fetch("fetch-model", spec.model.uri, MAIN_MODEL_DIR, spec.model.version, verify_args,
                             sources["main"] if hot_reload else None)]
    if spec.fallback is not None:
        init_containers.append(fetch("fetch-fallback", spec.fallback.uri, FALLBACK_MODEL_DIR, None, verify_args))

    pipeline_args: list[str] = []
    if spec.pipeline is not None:
        # spec.model is the recognition stage; the other stages (and their fallbacks) are fetched and
        # verified beside it, each like a model of its own.
        for key, stage in stages.items():
            init_containers.append(fetch(f"fetch-{key}", stage.uri, STAGE_MODEL_DIRS[key], stage.version,
                                         stage_verify[key], sources[key] if hot_reload else None))
            if stage.fallback is not None:
                init_containers.append(fetch(f"fetch-{key}-fallback", stage.fallback.uri, STAGE_FALLBACK_DIRS[key],
                                             None, stage_verify[key]))
        pipeline_args = ["--pipeline", spec.pipeline.type, "--ocr-rec-model-dir", MAIN_MODEL_DIR,
                         "--ocr-det-model-dir", DET_MODEL_DIR,
                         "--ocr-cls-model-dir", CLS_MODEL_DIR if "cls" in stages else "none"]

    runtime = {
        "name": "runtime",
        "image": image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": ["paddle-runtime"],
        "args": [
            "serve",
            "--model-dir",
            MAIN_MODEL_DIR,
            "--config",
            CONFIG_FILE,
            "--port",
            str(RUNTIME_PORT),
            *pipeline_args,
        ],
        "ports": [{"name": "http", "containerPort": RUNTIME_PORT, "protocol": "TCP"}],
        "env": _engine_env(svc),
        "volumeMounts": runtime_mounts,
        "resources": _resources(svc, with_gpu=True),
        "startupProbe": _probe("startup", spec.probes.startup),
        "readinessProbe": _probe("readiness", spec.probes.readiness),
        "livenessProbe": _probe("liveness", spec.probes.liveness),
        "securityContext": _container_security(),
    }
    containers = [runtime]
    if synced:
        containers.append(
            {
                "name": "model-sync",
                "image": image,
                "imagePullPolicy": spec.image_pull_policy,
                "command": ["/bin/sh", "-c"],
                "args": [_sync_script(synced)],
                "env": [{"name": "HOME", "value": "/tmp"}],
                "volumeMounts": fetch_mounts + [{"name": "config", "mountPath": CONFIG_DIR, "readOnly": True}],
                "resources": {"requests": {"cpu": "10m", "memory": "64Mi"}},
                "securityContext": _container_security(),
            }
        )

    pod_labels = {**spec.pod_labels, **labels(svc, track)}
    pod_annotations = {
        **spec.pod_annotations,
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(RUNTIME_PORT),
        "prometheus.io/path": "/metrics",
    }
    pod_spec: dict[str, Any] = {
        # The runtime never talks to the API server; no token in the pod.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "fsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "initContainers": init_containers,
        "containers": containers,
        "volumes": volumes,
        # Spread replicas over nodes when possible so one node loss does not take the SLA with it.
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": selector_labels(svc, track)},
            }
        ],
    }
    if spec.service_account_name:
        pod_spec["serviceAccountName"] = spec.service_account_name
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in spec.tolerations]
    if spec.affinity:
        pod_spec["affinity"] = dict(spec.affinity)
    if spec.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [dict(s) for s in spec.image_pull_secrets]
    if spec.priority_class_name:
        pod_spec["priorityClassName"] = spec.priority_class_name

    dep_spec: dict[str, Any] = {
        "selector": {"matchLabels": selector_labels(svc, track)},
        "revisionHistoryLimit": 3,
        # Model load can be slow; do not report a stuck rollout before startup probes could pass.
        "progressDeadlineSeconds": 900,
        "strategy": {
            "type": "RollingUpdate",
            # Never go below the serving capacity during an update: surge first, then retire.
            "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "25%"},
        },
        "template": {"metadata": {"labels": pod_labels, "annotations": pod_annotations}, "spec": pod_spec},
    }
    if replicas is not None:
        dep_spec["replicas"] = replicas
    elif not spec.autoscaled:
        # Under an HPA the field is left to the HPA: owning it here would fight the autoscaler.
        dep_spec["replicas"] = spec.replicas
    manifest = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": object_meta(svc, name or svc.deployment_name, track),
        "spec": dep_spec,
    }
    # Containers share mount lists above; return independent copies so a caller editing one
    # container (the rollout code does) cannot change another by accident.
    return json.loads(json.dumps(manifest))
