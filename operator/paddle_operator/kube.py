"""Thin Kubernetes access for the operator: server-side apply under one field manager, get, list,
delete, status patches. Raw REST paths over the official client's authenticated HTTP layer, so the
rollout code can apply any kind (HTTPRoute, VirtualService) by adding one line to ``RESOURCES``.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any
from urllib.parse import quote, urlencode

import urllib3
from kubernetes import client, config

from .spec import FIELD_MANAGER, GROUP, PLURAL, VERSION

log = logging.getLogger(__name__)

# (apiVersion, kind) -> plural. Every kind the operator creates or reads.
RESOURCES: dict[tuple[str, str], str] = {
    ("v1", "ConfigMap"): "configmaps",
    ("v1", "Service"): "services",
    ("v1", "Secret"): "secrets",
    ("v1", "PersistentVolumeClaim"): "persistentvolumeclaims",
    ("apps/v1", "Deployment"): "deployments",
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "horizontalpodautoscalers",
    ("policy/v1", "PodDisruptionBudget"): "poddisruptionbudgets",
    (f"{GROUP}/{VERSION}", "PaddleModelService"): PLURAL,
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): "httproutes",
    ("networking.istio.io/v1", "VirtualService"): "virtualservices",
    ("networking.istio.io/v1", "DestinationRule"): "destinationrules",
}
# Per-request timeout (connect, read): a hung API server must fail the handler, which kopf retries,
# rather than block a worker thread forever.
REQUEST_TIMEOUT = (5, 30)


class KubeError(Exception):
    """A non-2xx answer from the API server."""

    def __init__(self, status: int, body: str, what: str) -> None:
        self.status = status
        self.body = body
        try:
            self.message = json.loads(body).get("message", body)
        except (ValueError, AttributeError):
            self.message = body
        super().__init__(f"{what}: HTTP {status}: {self.message}")


def _path(api_version: str, kind: str, namespace: str | None, name: str | None = None) -> str:
    plural = RESOURCES[(api_version, kind)]
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    if namespace:
        base += f"/namespaces/{quote(namespace)}"
    base += f"/{plural}"
    if name:
        base += f"/{quote(name)}"
    return base


def load_api_client(pool_size: int = 64, kubeconfig: str | None = None) -> client.ApiClient:
    """In-cluster config when in a pod, else ``kubeconfig`` / $KUBECONFIG / ~/.kube/config."""
    cfg = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=cfg)
    except config.ConfigException:
        # $KUBECONFIG read now, not at import time (the client's default is frozen on import).
        path = kubeconfig or os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or None
        config.load_kube_config(config_file=path, client_configuration=cfg)
    # Reconciles run in a thread pool; one connection per worker avoids pool-full warnings and waits.
    cfg.connection_pool_maxsize = pool_size
    return client.ApiClient(cfg)


class Kube:
    """The operator's API calls. Thread-safe (urllib3 pool)."""

    def __init__(self, api: client.ApiClient | None = None) -> None:
        self.api = api or load_api_client()

    def request(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        what: str = "",
    ) -> dict[str, Any] | None:
        """One call; returns the decoded JSON, None for 404 on GET/DELETE, raises KubeError otherwise."""
        cfg = self.api.configuration
        headers = {"Accept": "application/json", "Content-Type": content_type}
        # The client's own auth settings (bearer token, refreshed by its hook); client certificates and
        # the CA live in its urllib3 pool. Going below the generated API keeps this independent of the
        # client's major version, whose call signatures change between releases.
        bearer = cfg.auth_settings().get("BearerToken") or {}
        if bearer.get("value"):
            headers[bearer["key"]] = bearer["value"]
        url = cfg.host.rstrip("/") + path + (f"?{urlencode(query)}" if query else "")
        # A dict body is sent once as JSON, which is also valid YAML for apply-patch.
        data = body if body is None or isinstance(body, (str, bytes)) else json.dumps(body)
        # Keywords: urllib3.Timeout's first positional parameter is the *total* time, not connect.
        timeout = urllib3.Timeout(connect=REQUEST_TIMEOUT[0], read=REQUEST_TIMEOUT[1])
        resp = self.api.rest_client.pool_manager.request(method, url, body=data, headers=headers, timeout=timeout)
        raw = resp.data
        if resp.status == 404 and method in ("GET", "DELETE"):
            return None
        if resp.status >= 300:
            raise KubeError(resp.status, raw.decode("utf-8", "replace"), what or f"{method} {path}")
        return json.loads(raw) if raw else None

    def apply(self, obj: dict[str, Any], *, dry_run: bool = False) -> dict[str, Any]:
        """Server-side apply, forcing ownership: a field someone edited by hand is taken back."""
        meta = obj["metadata"]
        query = [("fieldManager", FIELD_MANAGER), ("force", "true")]
        if dry_run:
            query.append(("dryRun", "All"))
        out = self.request(
            "PATCH",
            _path(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"]),
            query=query,
            body=obj,
            content_type="application/apply-patch+yaml",
            what=f"apply {obj['kind']} {meta.get('namespace')}/{meta['name']}",
        )
        assert out is not None
        return out

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        return self.request("GET", _path(api_version, kind, namespace, name))

    def list(self, api_version: str, kind: str, namespace: str | None, selector: str) -> list[dict[str, Any]]:
        out = self.request("GET", _path(api_version, kind, namespace), query=[("labelSelector", selector)])
        return list((out or {}).get("items") or [])

    def delete(self, api_version: str, kind: str, namespace: str | None, name: str) -> None:
        self.request(
            "DELETE",
            _path(api_version, kind, namespace, name),
            body={"propagationPolicy": "Background"},
        )

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any] | None:
        """Merge-patch the PaddleModelService status subresource."""
        path = _path(f"{GROUP}/{VERSION}", "PaddleModelService", namespace, name) + "/status"
        try:
            return self.request(
                "PATCH", path, body={"status": status}, content_type="application/merge-patch+json"
            )
        except KubeError as e:
            if e.status == 404:  # deleted meanwhile: nothing to report on
                return None
            raise
