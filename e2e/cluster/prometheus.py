"""A real Prometheus (built from its Go module, see binaries.py) discovering the cluster's pods as users run it.

Debian's package is built without ``kubernetes_sd_configs``; the pinned build keeps that discovery
and leaves the cloud ones out.

It loads the scrape config users are given (``deploy/prometheus/scrape-config.yaml``: pod role,
the relabelling to ``namespace``/``service``/``track``/``pod``), with only the scrape interval
shortened and a kubeconfig added so discovery works from outside the cluster. Its identity is a
ServiceAccount token with read access to pods, endpoints, services and nodes, and get on
nodes/metrics for the kubelets' /metrics/resource (the CPU path of prometheus-adapter), nothing else.

It listens on the host end of the real node's link when there is one (pods, e.g. the operator or
prometheus-adapter, reach it there), else on loopback. Pod addresses are routed into the node's
network namespace, so scrapes never leave the machine.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .procs import ClusterStartError, _die_with_parent, _free_port, _tail

if TYPE_CHECKING:
    from .handle import Cluster

REPO = Path(__file__).resolve().parents[2]
SCRAPE_CONFIG = REPO / "deploy" / "prometheus" / "scrape-config.yaml"
NAMESPACE = "monitoring"
SERVICE_ACCOUNT = "prometheus"
# What pod discovery reads (the Prometheus docs' minimal RBAC for kubernetes_sd role pod/endpoints).
_RBAC = [
    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
    {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": SERVICE_ACCOUNT, "namespace": NAMESPACE}},
    {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "paddle-sla-e2e-prometheus"},
        "rules": [
            {
                "apiGroups": [""],
                "resources": ["pods", "endpoints", "services", "nodes"],
                "verbs": ["get", "list", "watch"],
            },
            {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]},
            # The kubelet-resource job: kubelets authorise /metrics/* as get on nodes/metrics.
            {"apiGroups": [""], "resources": ["nodes/metrics"], "verbs": ["get"]},
        ],
    },
    {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "paddle-sla-e2e-prometheus"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "paddle-sla-e2e-prometheus"},
        "subjects": [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": NAMESPACE}],
    },
]


# Files a Prometheus pod reads from its ServiceAccount mount; out of cluster, the same token and CA.
_SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount/"


def scrape_configs(kubeconfig: Path, interval: str) -> list[dict[str, Any]]:
    """The users' scrape config with discovery through ``kubeconfig`` and ``interval`` set.

    Jobs that authenticate with the pod's ServiceAccount files (the kubelet scrape) get the token
    and CA written beside ``kubeconfig`` instead, and skip kwok's fake nodes (no kubelet behind them).
    """
    configs = yaml.safe_load(SCRAPE_CONFIG.read_text())["scrape_configs"]
    for job in configs:
        job["scrape_interval"] = interval
        job["scrape_timeout"] = interval
        for sd in job.get("kubernetes_sd_configs", []):
            sd["kubeconfig_file"] = str(kubeconfig)
        tls, auth = job.get("tls_config", {}), job.get("authorization", {})
        if tls.get("ca_file", "").startswith(_SA_DIR):
            tls["ca_file"] = str(kubeconfig.with_name("ca.crt"))
        if auth.get("credentials_file", "").startswith(_SA_DIR):
            auth["credentials_file"] = str(kubeconfig.with_name("token"))
        if any(sd.get("role") == "node" for sd in job.get("kubernetes_sd_configs", [])):
            job.setdefault("relabel_configs", []).insert(
                0,
                {
                    "source_labels": ["__meta_kubernetes_node_annotation_kwok_x_k8s_io_node"],
                    "regex": "fake",
                    "action": "drop",
                },
            )
    return configs


@dataclass
class Prometheus:
    """One Prometheus for a cluster; ``start`` / ``stop``; ``query`` answers instant PromQL."""

    cluster: Cluster
    workdir: Path
    host: str = "127.0.0.1"
    interval: str = "1s"
    rule_files: Sequence[Path] = ()
    port: int = field(default_factory=_free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def log(self) -> Path:
        return self.workdir / "prometheus.log"

    def _kubeconfig(self) -> Path:
        """A kubeconfig with the ServiceAccount's token (least privilege, not the admin cert)."""
        self.cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": _RBAC}))
        path, token = self.cluster.token_kubeconfig(SERVICE_ACCOUNT, NAMESPACE, self.workdir / "kubeconfig")
        server = yaml.safe_load(self.cluster.kubeconfig.read_text())["clusters"][0]["cluster"]
        # What a Prometheus pod finds in its ServiceAccount mount (the kubelet-resource job).
        (self.workdir / "token").write_text(token)
        (self.workdir / "token").chmod(0o600)
        (self.workdir / "ca.crt").write_text(base64.b64decode(server["certificate-authority-data"]).decode())
        return path

    def config(self, kubeconfig: Path) -> dict[str, Any]:
        return {
            "global": {"scrape_interval": self.interval, "evaluation_interval": self.interval},
            "rule_files": [str(p) for p in self.rule_files],
            "scrape_configs": scrape_configs(kubeconfig, self.interval),
        }

    def start(self, timeout: float = 60) -> Prometheus:
        binary = self.cluster.bin_dir / "prometheus"
        if not binary.is_file():
            raise ClusterStartError(f"{binary} is missing: `make binaries` builds it")
        self.workdir.mkdir(parents=True, exist_ok=True)
        cfg = self.workdir / "prometheus.yml"
        cfg.write_text(yaml.safe_dump(self.config(self._kubeconfig()), sort_keys=False))
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen(
                [
                    str(binary),
                    f"--config.file={cfg}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address={self.host}:{self.port}",
                    "--storage.tsdb.retention.time=2h",
                    "--web.enable-lifecycle",
                    "--log.level=warn",
                ],
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + timeout
        while not self._ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise ClusterStartError(f"Prometheus did not become ready; log:\n{_tail(self.log)}")
            time.sleep(0.5)
        return self

    def set_rule_files(self, paths: Sequence[Path]) -> None:
        """Load these rule files instead (config rewritten, Prometheus reloaded in place)."""
        self.rule_files = tuple(paths)
        cfg = self.workdir / "prometheus.yml"
        cfg.write_text(yaml.safe_dump(self.config(self.workdir / "kubeconfig"), sort_keys=False))
        req = urllib.request.Request(f"{self.url}/-/reload", method="POST")
        with urllib.request.urlopen(req, timeout=30) as resp:
            if resp.status != 200:
                raise RuntimeError(f"Prometheus reload answered {resp.status}")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def _get(self, path: str, **params: str) -> Any:
        url = f"{self.url}{path}?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as resp:
            return json.load(resp)["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query: the result vector."""
        return self._get("/api/v1/query", query=expr)["result"]

    def targets(self) -> list[dict[str, Any]]:
        """The active scrape targets (labels, health, last error)."""
        return self._get("/api/v1/targets", state="active")["activeTargets"]

    def rules(self) -> list[dict[str, Any]]:
        """The loaded rule groups with their rules' state (alerts: inactive/pending/firing)."""
        return self._get("/api/v1/rules")["groups"]

    def dump(self) -> str:
        """Targets and log tail, for a failed wait."""
        try:
            targets = [
                {"labels": t.get("labels"), "health": t.get("health"), "error": t.get("lastError")}
                for t in self.targets()
            ]
        except Exception as exc:  # the dump must not hide the original failure
            targets = [{"error": repr(exc)}]
        return f"Prometheus targets: {json.dumps(targets, indent=1)}\nlog:\n{_tail(self.log)}"


def start_prometheus(cluster: Cluster, workdir: Path, rule_files: Sequence[Path] = (), interval: str = "1s") -> Prometheus:
    """A started Prometheus for ``cluster``, reachable from its pods when it has a real node."""
    local = cluster.local
    host = local.net.host_ip if local is not None and local.net is not None else "127.0.0.1"
    return Prometheus(cluster, workdir, host=host, interval=interval, rule_files=rule_files).start()
