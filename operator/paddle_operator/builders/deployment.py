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
    MAIN_MODEL_DIR,
    MODEL_ROOT,
    PVC_MOUNT_ROOT,
    RUNTIME_PORT,
    SECRETS_DIR,
    PaddleModelService,
    ProbeOverride,
    SecretKeyRef,
    parse_pvc_uri,
)
from .common import STABLE, labels, object_meta, selector_labels
from .configmap import MODEL_URI_KEY, MODEL_VERSION_KEY

# A non-root UID/GID that exists in no base image: Pod Security "restricted" needs non-root, and a
# numeric UID lets the kubelet verify it without reading /etc/passwd.
RUN_AS = 65532
SECRET_MODE = 0o440  # group-readable through fsGroup, nobody else
DEFAULT_KEYS = {"hmac": "hmac.key", "public": "public.pem", "auth": "token"}
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
        env["PADDLE_RUNTIME_HMAC_KEY_FILE"] = f"{SECRETS_DIR}/hmac/{DEFAULT_KEYS['hmac']}"
    if sig is not None and sig.public_key_secret_ref is not None:
        env["PADDLE_RUNTIME_PUBLIC_KEY_FILE"] = f"{SECRETS_DIR}/public/{DEFAULT_KEYS['public']}"
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
    sig = spec.model.signature
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

    secret_mounts: list[dict[str, Any]] = []
    verify_args: list[str] = []
    if sig is not None and sig.hmac_key_secret_ref is not None:
        volumes.append(_secret_volume("hmac-key", sig.hmac_key_secret_ref, DEFAULT_KEYS["hmac"]))
        secret_mounts.append({"name": "hmac-key", "mountPath": f"{SECRETS_DIR}/hmac", "readOnly": True})
        verify_args += ["--hmac-key-file", f"{SECRETS_DIR}/hmac/{DEFAULT_KEYS['hmac']}"]
    if sig is not None and sig.public_key_secret_ref is not None:
        volumes.append(_secret_volume("public-key", sig.public_key_secret_ref, DEFAULT_KEYS["public"]))
        secret_mounts.append({"name": "public-key", "mountPath": f"{SECRETS_DIR}/public", "readOnly": True})
        verify_args += ["--public-key", f"{SECRETS_DIR}/public/{DEFAULT_KEYS['public']}"]
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
    fetch_env: list[dict[str, Any]] = [{"name": "HOME", "value": "/tmp"}]
    main_uri, pvc_mounts, pvc_volume = _source_args(spec.model.uri, MAIN_MODEL_DIR)
    if pvc_volume is not None:
        volumes.append(pvc_volume)
    if hot_reload and pvc_volume is None:
        # The URI comes from the ConfigMap, so changing it does not change the pod template: the
        # model-sync sidecar fetches the new version and the runtime swaps it in place.
        fetch_env.append(
            {
                "name": "MODEL_URI",
                "valueFrom": {"configMapKeyRef": {"name": svc.configmap_name, "key": MODEL_URI_KEY}},
            }
        )
        fetch_env.append(
            {
                "name": "MODEL_VERSION",
                "valueFrom": {"configMapKeyRef": {"name": svc.configmap_name, "key": MODEL_VERSION_KEY}},
            }
        )
        uri_arg = "$(MODEL_URI)"
        # Empty when the spec names no version: fetch then falls back to the manifest, model.yaml.
        version_args = ["--version", "$(MODEL_VERSION)"]
    else:
        uri_arg = main_uri
        # fetch names the version directory after the spec (model.yaml's version still wins in what
        # the runtime reports: docs/contracts.md, "One version label").
        version_args = ["--version", spec.model.version] if spec.model.version else []
    init_containers = [
        {
            "name": "fetch-model",
            "image": image,
            "imagePullPolicy": spec.image_pull_policy,
            "command": ["paddle-runtime"],
            "args": ["fetch", "--uri", uri_arg, "--dest", MAIN_MODEL_DIR, *version_args, *verify_args],
            "env": fetch_env,
            "volumeMounts": fetch_mounts + pvc_mounts,
            "resources": _resources(svc, with_gpu=False),
            "securityContext": _container_security(),
        }
    ]
    if spec.fallback is not None:
        fb_uri, fb_mounts, fb_volume = _source_args(spec.fallback.uri, FALLBACK_MODEL_DIR)
        if fb_volume is not None and fb_volume["name"] not in {v["name"] for v in volumes}:
            volumes.append(fb_volume)
        init_containers.append(
            {
                "name": "fetch-fallback",
                "image": image,
                "imagePullPolicy": spec.image_pull_policy,
                "command": ["paddle-runtime"],
                "args": ["fetch", "--uri", fb_uri, "--dest", FALLBACK_MODEL_DIR, *verify_args],
                "env": [{"name": "HOME", "value": "/tmp"}],
                "volumeMounts": fetch_mounts + fb_mounts,
                "resources": _resources(svc, with_gpu=False),
                "securityContext": _container_security(),
            }
        )

    pipeline_args: list[str] = []
    if spec.pipeline is not None:
        # spec.model is the recognition stage; the other stages are fetched (and verified) beside it.
        stages = [("det", spec.pipeline.detection.uri, DET_MODEL_DIR)]
        if spec.pipeline.classifier.enabled:
            stages.append(("cls", spec.pipeline.classifier.uri, CLS_MODEL_DIR))
        for stage, uri, dest in stages:
            st_uri, st_mounts, st_volume = _source_args(uri, dest)
            if st_volume is not None and st_volume["name"] not in {v["name"] for v in volumes}:
                volumes.append(st_volume)
            init_containers.append(
                {
                    "name": f"fetch-{stage}",
                    "image": image,
                    "imagePullPolicy": spec.image_pull_policy,
                    "command": ["paddle-runtime"],
                    "args": ["fetch", "--uri", st_uri, "--dest", dest, *verify_args],
                    "env": [{"name": "HOME", "value": "/tmp"}],
                    "volumeMounts": fetch_mounts + st_mounts,
                    "resources": _resources(svc, with_gpu=False),
                    "securityContext": _container_security(),
                }
            )
        pipeline_args = ["--pipeline", spec.pipeline.type, "--ocr-rec-model-dir", MAIN_MODEL_DIR,
                         "--ocr-det-model-dir", DET_MODEL_DIR,
                         "--ocr-cls-model-dir", CLS_MODEL_DIR if spec.pipeline.classifier.enabled else "none"]

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
    if hot_reload and pvc_volume is None:
        containers.append(
            {
                "name": "model-sync",
                "image": image,
                "imagePullPolicy": spec.image_pull_policy,
                "command": ["/bin/sh", "-c"],
                "args": [
                    # Re-fetch only when the URI in the mounted ConfigMap changes; fetch writes
                    # versions/<v> and switches the `current` link atomically, which the runtime watches.
                    # The version comes from the same ConfigMap, so it moves with the URI. A refused
                    # fetch leaves fetch-failed.json, which the runtime reports (status ModelCurrent);
                    # it is retried every poll, and dropped once the spec points back at what serves.
                    f'last="$(cat {CONFIG_DIR}/{MODEL_URI_KEY})"; '
                    f"while sleep {SYNC_POLL_S}; do "
                    f'cur="$(cat {CONFIG_DIR}/{MODEL_URI_KEY})"; '
                    f'ver="$(cat {CONFIG_DIR}/{MODEL_VERSION_KEY})"; '
                    f'if [ "$cur" != "$last" ]; then '
                    f'paddle-runtime fetch --uri "$cur" --dest {MAIN_MODEL_DIR} ${{ver:+--version "$ver"}} '
                    f'{" ".join(verify_args)} '
                    f'&& last="$cur"; else rm -f {MAIN_MODEL_DIR}/{FETCH_FAILED}; fi; done'
                ],
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
