"""prometheus-adapter (built from its Go module, see binaries.py) behind the API server's aggregation layer.

It serves the custom metrics API (``custom.metrics.k8s.io`` v1beta1 and v1beta2) the operator's HPAs
read, and with ``resource`` also the resource metrics API (``metrics.k8s.io``, CPU targets), from the
e2e Prometheus. Its rules are what the chart renders (``templates/prometheus-adapter-rules.yaml``,
the one source of the rules), with only the rate window chosen by the caller.

How it is wired, as an aggregated API server outside the cluster:
- it listens on the host end of the real node's link (Endpoints and EndpointSlices refuse loopback
  addresses), with a serving certificate from the cluster CA for ``prometheus-adapter.monitoring.svc``;
- a selector-less Service plus an EndpointSlice naming that address, and an APIService per group and
  version with the CA bundle; the API server runs with ``--enable-aggregator-routing`` and so dials
  the EndpointSlice's address, not a ClusterIP;
- the API server authenticates to it with the front-proxy client certificate (``pki.py``); the
  adapter reads the request-header CA from ``kube-system/extension-apiserver-authentication`` and
  delegates authorisation with SubjectAccessReviews;
- its own identity is a ServiceAccount token with exactly that: ``system:auth-delegator``, the
  ``extension-apiserver-authentication-reader`` Role, and read access to the objects its rules map
  series to (namespaces and pods; nodes with ``resource``).
"""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .pki import issue
from .procs import ClusterStartError, _die_with_parent, _free_port, _tail

if TYPE_CHECKING:
    from .handle import Cluster

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "paddle-operator"
RULES_TEMPLATE = "templates/prometheus-adapter-rules.yaml"
NAMESPACE = "monitoring"
NAME = "prometheus-adapter"
CUSTOM_GROUP = "custom.metrics.k8s.io"
CUSTOM_VERSIONS = ("v1beta1", "v1beta2")
RESOURCE_GROUP = "metrics.k8s.io"
SERVICE_PORT = 443
ROLE = "paddle-sla-e2e-prometheus-adapter"


def render_rules(cluster: Cluster, rate_window: str, resource: bool) -> str:
    """The adapter's config file as the chart renders it (``prometheusAdapter.rules``)."""
    out = cluster.helm(
        "template", "paddle-operator", str(CHART), "--show-only", RULES_TEMPLATE,
        "--set", "prometheusAdapter.rules.enabled=true",
        "--set", f"prometheusAdapter.rules.rateWindow={rate_window}",
        "--set", f"prometheusAdapter.rules.resource={str(resource).lower()}",
    ).stdout  # fmt: skip
    return yaml.safe_load(out)["data"]["config.yaml"]


def rbac(resource: bool) -> list[dict[str, Any]]:
    """The adapter's ServiceAccount and the least it needs (see the module docstring)."""
    sa = {"kind": "ServiceAccount", "name": NAME, "namespace": NAMESPACE}
    read = ["namespaces", "pods", *(["nodes"] if resource else [])]
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": NAME, "namespace": NAMESPACE}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": ROLE},
            "rules": [{"apiGroups": [""], "resources": read, "verbs": ["get", "list", "watch"]}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": ROLE},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": ROLE},
            "subjects": [sa],
        },
        {
            # TokenReviews and SubjectAccessReviews: delegated authentication and authorisation.
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": f"{ROLE}:auth-delegator"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "system:auth-delegator",
            },
            "subjects": [sa],
        },
        {
            # The request-header CA the API server's front proxy is checked against.
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": f"{ROLE}:auth-reader", "namespace": "kube-system"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "extension-apiserver-authentication-reader",
            },
            "subjects": [sa],
        },
    ]


def registration(host: str, port: int, ca_bundle: bytes, resource: bool) -> list[dict[str, Any]]:
    """Service, EndpointSlice (the adapter on ``host:port``) and the APIServices that route to it."""
    apis = [(CUSTOM_GROUP, v) for v in CUSTOM_VERSIONS] + ([(RESOURCE_GROUP, "v1beta1")] if resource else [])
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": NAME, "namespace": NAMESPACE},
            "spec": {
                "ports": [{"name": "https", "port": SERVICE_PORT, "targetPort": port, "protocol": "TCP"}]
            },
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": NAME,
                "namespace": NAMESPACE,
                "labels": {
                    "kubernetes.io/service-name": NAME,
                    "endpointslice.kubernetes.io/managed-by": "paddle-sla-e2e",
                },
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [host], "conditions": {"ready": True}}],
            "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
        },
        *(
            {
                "apiVersion": "apiregistration.k8s.io/v1",
                "kind": "APIService",
                "metadata": {"name": f"{version}.{group}"},
                "spec": {
                    "group": group,
                    "version": version,
                    "service": {"name": NAME, "namespace": NAMESPACE, "port": SERVICE_PORT},
                    "caBundle": base64.b64encode(ca_bundle).decode(),
                    "groupPriorityMinimum": 100,
                    "versionPriority": 100,
                },
            }
            for group, version in apis
        ),
    ]


@dataclass
class Adapter:
    """One prometheus-adapter for a cluster with a real node; ``start`` / ``stop`` / ``raw`` / ``dump``."""

    cluster: Cluster
    prometheus_url: str
    workdir: Path
    host: str
    rules: str
    resource: bool = False
    relist: str = "10s"
    port: int = field(default_factory=_free_port)
    proc: subprocess.Popen | None = None

    @property
    def log(self) -> Path:
        return self.workdir / "prometheus-adapter.log"

    @property
    def api_services(self) -> list[str]:
        names = [f"{v}.{CUSTOM_GROUP}" for v in CUSTOM_VERSIONS]
        return names + ([f"v1beta1.{RESOURCE_GROUP}"] if self.resource else [])

    def _apply(self, objs: list[dict[str, Any]]) -> None:
        doc = json.dumps({"apiVersion": "v1", "kind": "List", "items": objs})
        self.cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=doc)

    def _kubeconfig(self) -> Path:
        """The ServiceAccount's token against the API server (not the admin certificate)."""
        return self.cluster.token_kubeconfig(NAME, NAMESPACE, self.workdir / "kubeconfig")[0]

    def start(self, timeout: float = 120) -> Adapter:
        local = self.cluster.local
        if local is None:
            raise ClusterStartError("prometheus-adapter runs beside the local control plane only")
        binary = self.cluster.bin_dir / NAME
        if not binary.is_file():
            raise ClusterStartError(
                f"{binary} is missing: `make binaries` builds it with the real node's group"
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "config.yaml").write_text(self.rules)
        self._apply(rbac(self.resource))
        kubeconfig = self._kubeconfig()
        dns = [NAME, f"{NAME}.{NAMESPACE}", f"{NAME}.{NAMESPACE}.svc"]
        issue(local.pki, NAME, f"{NAME}.{NAMESPACE}.svc", server=True, dns=dns, ips=[self.host])
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen(
                [
                    str(binary),
                    f"--bind-address={self.host}",
                    f"--secure-port={self.port}",
                    f"--tls-cert-file={local.pki / f'{NAME}.crt'}",
                    f"--tls-private-key-file={local.pki / f'{NAME}.key'}",
                    f"--lister-kubeconfig={kubeconfig}",
                    f"--authentication-kubeconfig={kubeconfig}",
                    f"--authorization-kubeconfig={kubeconfig}",
                    f"--prometheus-url={self.prometheus_url}/",
                    f"--config={self.workdir / 'config.yaml'}",
                    # New series (a new pod's metric names) are discovered on this period.
                    f"--metrics-relist-interval={self.relist}",
                    "--v=1",
                ],
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + timeout
        while not self._healthy():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise ClusterStartError(f"prometheus-adapter did not become ready; log:\n{_tail(self.log)}")
            time.sleep(0.5)
        ca = (local.pki / "ca.crt").read_bytes()
        self._apply(registration(self.host, self.port, ca, self.resource))
        while not self.available():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise ClusterStartError(f"the adapter's APIServices are not Available:\n{self.dump()}")
            time.sleep(1)
        return self

    def _healthy(self) -> bool:
        local = self.cluster.local
        assert local is not None
        ctx = ssl.create_default_context(cafile=str(local.pki / "ca.crt"))  # /readyz needs no client cert
        try:
            with urllib.request.urlopen(
                f"https://{self.host}:{self.port}/readyz", context=ctx, timeout=3
            ) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def available(self) -> bool:
        """Every APIService of the adapter reports Available=True (the aggregator reached it)."""
        for name in self.api_services:
            got = self.cluster.kubectl("get", "apiservice", name, "-o", "json", check=False)
            if got.returncode != 0:
                return False
            conds = json.loads(got.stdout).get("status", {}).get("conditions", [])
            if not any(c["type"] == "Available" and c["status"] == "True" for c in conds):
                return False
        return True

    def stop(self) -> None:
        # The APIServices first: an unavailable aggregated group slows discovery for every client.
        self.cluster.kubectl("delete", "apiservice", *self.api_services, "--ignore-not-found", check=False)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def raw(self, path: str) -> dict[str, Any]:
        """``kubectl get --raw PATH`` through the API server (what the HPA controller asks)."""
        return json.loads(self.cluster.kubectl("get", "--raw", path, timeout=30).stdout)

    def pods_metric(self, namespace: str, metric: str, selector: str = "") -> dict[str, float]:
        """Per-pod values of a custom metric: ``/apis/custom.metrics.k8s.io/v1beta1/namespaces/NS/pods/*/METRIC``."""
        path = f"/apis/{CUSTOM_GROUP}/v1beta1/namespaces/{namespace}/pods/*/{metric}"
        if selector:
            path += f"?labelSelector={urllib.request.quote(selector)}"
        return {i["describedObject"]["name"]: quantity(i["value"]) for i in self.raw(path)["items"]}

    def pods_cpu(self, namespace: str, selector: str = "") -> dict[str, float]:
        """Per-pod CPU in cores from the resource metrics API (``kubectl top pods``)."""
        path = f"/apis/{RESOURCE_GROUP}/v1beta1/namespaces/{namespace}/pods"
        if selector:
            path += f"?labelSelector={urllib.request.quote(selector)}"
        return {
            i["metadata"]["name"]: sum(quantity(c["usage"]["cpu"]) for c in i["containers"])
            for i in self.raw(path)["items"]
        }

    def dump(self, namespace: str | None = None, metric: str | None = None) -> str:
        """APIService conditions, the adapter's answer for ``namespace`` and its log tail."""
        parts = []
        for name in self.api_services:
            got = self.cluster.kubectl("get", "apiservice", name, "-o", "json", check=False)
            conds = (
                json.loads(got.stdout).get("status", {}).get("conditions")
                if got.returncode == 0
                else got.stderr
            )
            parts.append(f"APIService {name}: {json.dumps(conds)}")
        if namespace is not None:
            paths = []
            if metric is not None:
                paths.append(f"/apis/{CUSTOM_GROUP}/v1beta1/namespaces/{namespace}/pods/*/{metric}")
            if self.resource:
                paths.append(f"/apis/{RESOURCE_GROUP}/v1beta1/namespaces/{namespace}/pods")
            for path in paths:
                got = self.cluster.kubectl("get", "--raw", path, check=False, timeout=30)
                parts.append(f"$ kubectl get --raw {path}\n{got.stdout[:4000]}{got.stderr[:2000]}")
        parts.append(f"prometheus-adapter log:\n{_tail(self.log)}")
        return "\n".join(parts)


def quantity(value: str) -> float:
    """A Kubernetes quantity as a float (``1500m`` -> 1.5, ``2k`` -> 2000, ``128Ki`` -> 131072)."""
    suffixes = {
        "n": 1e-9,
        "u": 1e-6,
        "m": 1e-3,
        "k": 1e3,
        "M": 1e6,
        "G": 1e9,
        "Ki": 2**10,
        "Mi": 2**20,
        "Gi": 2**30,
    }
    for suffix in sorted(suffixes, key=len, reverse=True):
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * suffixes[suffix]
    return float(value)


def start_adapter(
    cluster: Cluster, prometheus_url: str, workdir: Path, rate_window: str = "1m", resource: bool = True
) -> Adapter:
    """A started adapter for ``cluster`` (it needs the real node's link), with the chart's rules."""
    local = cluster.local
    if local is None or local.net is None:
        raise ClusterStartError(
            "prometheus-adapter needs the local cluster with a real node (its link address)"
        )
    rules = render_rules(cluster, rate_window, resource)
    return Adapter(cluster, prometheus_url, workdir, local.net.host_ip, rules, resource=resource).start()
