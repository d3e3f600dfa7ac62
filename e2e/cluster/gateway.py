"""A real Gateway API router for the real node: Traefik (built from its Go module, see binaries.py).

Traefik's ``kubernetesGateway`` provider watches GatewayClasses, Gateways, HTTPRoutes, Services and
EndpointSlices and routes each request straight to a ready pod address, weighting an HTTPRoute's
``backendRefs`` by a weighted round robin. It runs the way the control plane does, as a process of
the harness, out of cluster: its identity is a ServiceAccount token in a kubeconfig (least privilege:
the ClusterRole Traefik documents for the provider, without the pod read it needs only for
OpenTelemetry), and it claims the GatewayClass whose ``controllerName`` is
``traefik.io/gateway-controller``. :func:`start_gateway` installs the upstream standard-channel CRDs
(``gocrds.py``), that GatewayClass and one Gateway (``gateway-system/public``, an HTTP listener
accepting routes from every namespace); the operator's HTTPRoute attaches to it by ``parentRefs``.

Confinement: Traefik joins the real node's network namespace (only that namespace, like the kubelet),
which has no default route. From there it reaches the API server (the host end of the node's link),
the pods (the node's bridge) and nothing else, so no pod or Service packet it sends can leave through
the uplink whatever it is configured to do; its update check and usage report are switched off too.
Its entry points listen on the node's address, which the host routes into the link, so tests send
requests from the host to :attr:`Traefik.url`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import gocrds
from .node import _enter_netns
from .procs import ClusterStartError, _tail

if TYPE_CHECKING:
    from .handle import Cluster
    from .node import NodeNetwork

CONTROLLER_NAME = "traefik.io/gateway-controller"
GATEWAY_CLASS = "paddle-sla-traefik"
NAMESPACE = "gateway-system"
GATEWAY = "public"
SERVICE_ACCOUNT = "traefik"
# Ports on the node's address, inside its own network namespace: nothing else binds there.
WEB_PORT = 8000
PING_PORT = 8082
_ROLE = "paddle-sla-e2e-traefik"

_WATCHED = ["gatewayclasses", "gateways", "httproutes", "grpcroutes", "referencegrants", "backendtlspolicies"]
_RBAC: list[dict[str, Any]] = [
    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
    {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": SERVICE_ACCOUNT, "namespace": NAMESPACE}},
    {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": _ROLE},
        # Traefik's kubernetes-gateway-rbac.yml (v3.6), less `pods get` (OpenTelemetry attributes only)
        # and the experimental-channel kinds (TCPRoute, TLSRoute) it does not watch without them.
        "rules": [
            {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
            {"apiGroups": [""], "resources": ["services", "secrets", "configmaps"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
            {"apiGroups": ["gateway.networking.k8s.io"], "resources": _WATCHED, "verbs": ["get", "list", "watch"]},
            {
                "apiGroups": ["gateway.networking.k8s.io"],
                "resources": [f"{r}/status" for r in _WATCHED if r != "referencegrants"],
                "verbs": ["update"],
            },
        ],
    },
    {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": _ROLE},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": _ROLE},
        "subjects": [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": NAMESPACE}],
    },
]


def gateway_objects(port: int = WEB_PORT) -> list[dict[str, Any]]:
    """The GatewayClass Traefik claims and the Gateway routes attach to (``gateway-system/public``)."""
    return [
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "GatewayClass",
            "metadata": {"name": GATEWAY_CLASS},
            "spec": {"controllerName": CONTROLLER_NAME},
        },
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": {"name": GATEWAY, "namespace": NAMESPACE},
            "spec": {
                "gatewayClassName": GATEWAY_CLASS,
                # Traefik binds a listener to the entry point with the same port.
                "listeners": [
                    {"name": "http", "protocol": "HTTP", "port": port, "allowedRoutes": {"namespaces": {"from": "All"}}}
                ],
            },
        },
    ]


def parent_ref() -> dict[str, str]:
    """What an HTTPRoute (``spec.rollout.router.gatewayAPI.parentRefs``) names to attach here."""
    return {"name": GATEWAY, "namespace": NAMESPACE}


def _condition(obj: dict[str, Any], kind: str) -> str | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == kind:
            return c.get("status")
    return None


@dataclass
class Traefik:
    """One Traefik in the real node's network namespace; ``start`` / ``stop``; ``url`` is its listener."""

    cluster: Cluster
    workdir: Path
    net: NodeNetwork
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """The Gateway's HTTP listener, reachable from the host (and from pods)."""
        return f"http://{self.net.node_ip}:{WEB_PORT}"

    @property
    def address(self) -> str:
        return f"{self.net.node_ip}:{WEB_PORT}"

    @property
    def log(self) -> Path:
        return self.workdir / "traefik.log"

    def _kubeconfig(self) -> Path:
        """A kubeconfig with the ServiceAccount's token (not the admin certificate)."""
        return self.cluster.token_kubeconfig(SERVICE_ACCOUNT, NAMESPACE, self.workdir / "kubeconfig")[0]

    def args(self) -> list[str]:
        """Traefik's static configuration, as flags."""
        ip = self.net.node_ip
        return [
            # Nothing may leave the machine (and nothing could: see the module docstring).
            "--global.checkNewVersion=false",
            "--global.sendAnonymousUsage=false",
            f"--entryPoints.web.address={ip}:{WEB_PORT}",
            f"--entryPoints.traefik.address={ip}:{PING_PORT}",
            "--ping=true",
            "--ping.entryPoint=traefik",
            "--providers.kubernetesGateway=true",
            # The Gateway's status names the address clients use.
            f"--providers.kubernetesGateway.statusAddress.ip={ip}",
            "--log.level=INFO",
            "--log.noColor=true",
        ]

    def _apply(self, objs: list[dict[str, Any]]) -> None:
        doc = json.dumps({"apiVersion": "v1", "kind": "List", "items": objs})
        self.cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=doc)

    def start(self, timeout: float = 120) -> Traefik:
        binary = self.cluster.bin_dir / "traefik"
        if not binary.is_file():
            raise ClusterStartError(f"{binary} is missing: the e2e builds it for tests that use the gateway")
        self.workdir.mkdir(parents=True, exist_ok=True)
        for path in gocrds.crd_files(gocrds.GATEWAY_API):
            self.cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path), timeout=120)
        deadline = time.monotonic() + 60
        while self.cluster.kubectl("get", "gatewayclasses", check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise ClusterStartError("the Gateway API CRDs were not established within 60s")
            time.sleep(0.5)
        self._apply(_RBAC)
        kubeconfig = self._kubeconfig()
        self._apply(gateway_objects())
        # Only what Traefik needs: no KUBERNETES_SERVICE_HOST (that would mean "in cluster").
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "KUBECONFIG": str(kubeconfig), "HOME": str(self.workdir)}
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen(
                [str(binary), *self.args()],
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=env,
                start_new_session=True,  # stopped as a group
                preexec_fn=_enter_netns(self.net.netns_path, die_with_parent=True),
            )
        deadline = time.monotonic() + timeout
        while not (self._pinged() and self._programmed()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise ClusterStartError(f"Traefik did not program the Gateway:\n{self.dump()}")
            time.sleep(0.5)
        return self

    def _pinged(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.net.node_ip}:{PING_PORT}/ping", timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def gateway(self) -> dict[str, Any]:
        return self.cluster.get("gateway", GATEWAY, "-n", NAMESPACE)

    def _programmed(self) -> bool:
        return _condition(self.gateway(), "Programmed") == "True"

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.proc = None

    def dump(self) -> str:
        """GatewayClass, Gateway and HTTPRoute status plus the log tail, for a failed wait."""
        parts = []
        for args in (("gatewayclass", GATEWAY_CLASS), ("gateway", GATEWAY, "-n", NAMESPACE), ("httproutes", "-A")):
            got = self.cluster.kubectl("get", *args, "-o", "yaml", check=False)
            parts.append(f"---- {' '.join(args)} ----\n{got.stdout or got.stderr}")
        return "\n".join(parts) + f"\n---- traefik log ----\n{_tail(self.log, 60)}"


def start_gateway(cluster: Cluster, workdir: Path) -> Traefik:
    """A started Traefik with its Gateway programmed; needs the cluster's real node."""
    local = cluster.local
    if local is None or local.net is None:
        raise ClusterStartError("the gateway runs in the real node's network namespace: start a real node")
    return Traefik(cluster, workdir, local.net).start()
