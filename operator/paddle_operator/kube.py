"""Thin Kubernetes access for the operator: server-side apply of children under one field manager,
server-side apply of status under one field manager per writer, get, list, delete. Raw REST paths
over the official client's authenticated HTTP layer; the kinds and their plurals come from kinds.py.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import quote, urlencode

import urllib3
from kubernetes import client, config

from .kinds import PLURALS
from .pool import ElasticPool
from .spec import API_VERSION, FIELD_MANAGER, KIND

log = logging.getLogger(__name__)

# Per-request timeout (connect, read) unless the caller passes one (OperatorSettings.api_*timeout_s):
# a hung API server or a silent connection must fail the handler, which is retried, rather than
# block a worker thread forever.
REQUEST_TIMEOUT = (5.0, 30.0)
# Service applies in flight at once, and how many times the read timeout one of them gets (see
# Kube.__init__): the API server creates Services one at a time.
SERVICE_APPLIES = 8
SERVICE_TIMEOUT_FACTOR = 4


class KubeError(Exception):
    """A non-2xx answer from the API server, or none at all (``status`` 0: refused, reset, timed out)."""

    def __init__(self, status: int, body: str, what: str) -> None:
        self.status = status
        self.body = body
        try:
            message = json.loads(body).get("message", body)
        except (ValueError, AttributeError):
            message = body
        self.message: str = message
        super().__init__(f"{what}: HTTP {status}: {self.message}")


def _path(api_version: str, kind: str, namespace: str | None, name: str | None = None) -> str:
    plural = PLURALS[(api_version, kind)]
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    if namespace:
        base += f"/namespaces/{quote(namespace)}"
    base += f"/{plural}"
    if name:
        base += f"/{quote(name)}"
    return base


def load_api_client(pool_size: int = 64, kubeconfig: str | None = None) -> client.ApiClient:
    """In-cluster config when in a pod, else ``kubeconfig`` (a KUBECONFIG list: its first entry) or
    ~/.kube/config."""
    cfg = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=cfg)
    except config.ConfigException:
        # Passed in (OperatorSettings.kubeconfig), not the client's default, which is frozen on import.
        path = (kubeconfig or "").split(os.pathsep)[0] or None
        config.load_kube_config(config_file=path, client_configuration=cfg)
    # Reconciles run in a thread pool; one connection per worker avoids pool-full warnings and waits.
    cfg.connection_pool_maxsize = pool_size
    return client.ApiClient(cfg)


class Kube:
    """The operator's API calls. Thread-safe (urllib3 pool)."""

    def __init__(
        self,
        api: client.ApiClient | None = None,
        *,
        kubeconfig: str | None = None,
        apply_workers: int = 32,
        timeout: tuple[float, float] = REQUEST_TIMEOUT,
        thread_idle_s: float = 30.0,
    ) -> None:
        self.api = api or load_api_client(kubeconfig=kubeconfig)
        # Keywords: urllib3.Timeout's first positional parameter is the *total* time, not connect.
        self._timeout = urllib3.Timeout(connect=timeout[0], read=timeout[1])
        # Shared by all reconciles; each submits its few children and waits for them (no nested submits).
        self._apply_pool = ElasticPool(apply_workers, thread_name_prefix="apply", idle_s=thread_idle_s)
        # The API server allocates ClusterIPs one at a time (kube-apiserver 1.34 holds one lock across
        # the IPAddress write: ipallocator.MetaAllocator.AllocateNextService), so a burst of new
        # Services queues there. Sent all at once (up to one per reconcile thread), they waited past
        # our 30 s read timeout and then past the API server's own 60 s (HTTP 504); the server dropped
        # each half-made Service (leaking its IP until its repair loop ran) and the reconcile failed
        # into a 10 s backoff, 75 of 100 in one run. A few in flight, each with a longer read timeout:
        # the same throughput, since the server serialises them anyway, and nothing fails. They have
        # their own threads: waiting for a slot in the shared pool, Service applies held every apply
        # thread in a burst, and the Deployments behind them reached the API server at the Services'
        # pace (first child p50 3.2 s -> 1.7 s at 100 at once; benchmarks/README.md).
        self._service_pool = ElasticPool(SERVICE_APPLIES, thread_name_prefix="apply-svc", idle_s=thread_idle_s)
        self._service_timeout = urllib3.Timeout(connect=timeout[0], read=timeout[1] * SERVICE_TIMEOUT_FACTOR)

    def request(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        what: str = "",
        decode: bool = True,
        timeout: urllib3.Timeout | None = None,
    ) -> dict[str, Any] | None:
        """One call; returns the decoded JSON (None with ``decode=False``: the caller does not read the
        answer), None for 404 on GET/DELETE, raises KubeError otherwise."""
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
        what = what or f"{method} {path}"
        try:
            resp = self.api.rest_client.pool_manager.request(
                method, url, body=data, headers=headers, timeout=timeout or self._timeout
            )
        except urllib3.exceptions.HTTPError as e:
            # No answer (API server restarting, connection reset or gone silent): the same retry path as
            # a 5xx. The idle pooled connections share the path that just failed; reusing them one by one
            # would cost a timeout each, so drop them all and let the retry open fresh ones.
            self.api.rest_client.pool_manager.clear()
            raise KubeError(0, f"no response: {e}", what) from e
        raw = resp.data
        if resp.status == 404 and method in ("GET", "DELETE"):
            return None
        if resp.status >= 300:
            raise KubeError(resp.status, raw.decode("utf-8", "replace"), what)
        return json.loads(raw) if raw and decode else None

    def apply(self, obj: dict[str, Any], *, dry_run: bool = False, read_back: bool = True) -> dict[str, Any]:
        """Server-side apply, forcing ownership: a field someone edited by hand is taken back.

        Returns the object as applied; ``{}`` with ``read_back=False``. The answer is the whole object
        with its managedFields: decoding the ones nobody reads was a good part of the operator's CPU
        (and its GIL, which kopf's event loop shares) during a burst.
        """
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
            decode=read_back,
            timeout=self._service_timeout if obj["kind"] == "Service" else None,
        )
        if not read_back:
            return {}
        assert out is not None
        return out

    def apply_all(
        self,
        objs: Iterable[dict[str, Any]],
        read_back: Callable[[dict[str, Any]], bool] = lambda _obj: True,
    ) -> list[tuple[dict[str, Any] | None, KubeError | None]]:
        """Apply independent objects concurrently, results in order: (applied, None), or (None, error)
        when the API server rejected the manifest itself (400/422). Other errors are raised.
        ``applied`` is ``{}`` for the objects ``read_back`` declines (their answer is not decoded)."""
        futures = [
            (self._service_pool if o["kind"] == "Service" else self._apply_pool).submit(self._apply_one, o, read_back(o))
            for o in objs
        ]
        return [f.result() for f in futures]

    def _apply_one(
        self, obj: dict[str, Any], read_back: bool = True
    ) -> tuple[dict[str, Any] | None, KubeError | None]:
        try:
            return self.apply(obj, read_back=read_back), None
        except KubeError as e:
            if e.status in (400, 422):
                return None, e
            raise

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        return self.request("GET", _path(api_version, kind, namespace, name))

    def list(self, api_version: str, kind: str, namespace: str | None, selector: str) -> list[dict[str, Any]]:
        """Objects of one kind matching a label selector."""
        out = self.request("GET", _path(api_version, kind, namespace), query=[("labelSelector", selector)])
        return list((out or {}).get("items") or [])

    def delete(self, api_version: str, kind: str, namespace: str | None, name: str) -> None:
        """Delete one object (dependents in the background); absent is fine."""
        self.request(
            "DELETE",
            _path(api_version, kind, namespace, name),
            body={"propagationPolicy": "Background"},
        )

    def apply_status(self, namespace: str, name: str, status: dict[str, Any], manager: str) -> None:
        """Server-side apply of the PaddleModelService status under ``manager`` (one per writer).

        ``status`` is everything this writer owns: a field it applied before and leaves out now is
        removed; fields of other writers (and conditions of other types: the list is a map keyed by
        ``type`` in the CRD) are never touched, so no writer needs to read-merge-write.
        """
        path = _path(API_VERSION, KIND, namespace, name) + "/status"
        body = {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"name": name, "namespace": namespace},
            "status": status,
        }
        try:
            # The answer (the whole resource) is not decoded: no writer reads it back.
            self.request(
                "PATCH",
                path,
                query=[("fieldManager", manager), ("force", "true")],
                body=body,
                content_type="application/apply-patch+yaml",
                what=f"apply status {namespace}/{name} as {manager}",
                decode=False,
            )
        except KubeError as e:
            if e.status != 404:  # 404: deleted meanwhile, nothing to report on
                raise
