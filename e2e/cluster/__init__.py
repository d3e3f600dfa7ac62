"""A real local Kubernetes control plane for the e2e tests and the demo, without Docker.

Upstream etcd, kube-apiserver, kube-controller-manager and kube-scheduler run as plain processes
on 127.0.0.1 (random free ports, generated certificates); kwok stands in for nodes and kubelets so
Deployments roll out and report Available. The binaries (plus kubectl and helm) are built once from
upstream Go modules through the Go module proxy, pinned by the wrapper modules under ``e2e/go/``,
into ``$PADDLE_SLA_CACHE/bin/<k8s version>/`` and reused from then on.

Modes (``open_cluster``): the local control plane (default), ``E2E_CLUSTER=kind`` (a throw-away
kind cluster, for machines with Docker), or ``E2E_KUBECONFIG=path`` (an existing cluster, left alone).

Modules, one job each: ``binaries`` (the Go builds), ``pki`` (certificates), ``procs`` (process helpers),
``control`` (the control plane), ``node`` (the real node), ``handle`` (what tests get), ``cli``,
``gocrds`` (upstream CRDs); ``prometheus``, ``adapter`` (prometheus-adapter), ``gateway`` (Traefik, the Gateway API router) and ``argocd``
(Argo CD out of cluster) are started by tests that need them.

CLI: ``python -m e2e.cluster build|up|down|status|env``.
"""

from __future__ import annotations

from .binaries import (
    ARGOCD,
    BINARIES,
    CONTROL,
    GATEWAY,
    GO_DIR,
    TARGETS,
    WITH_NODE,
    Target,
    _stderr_log,
    bin_dir,
    binaries_ready,
    build,
    cache_dir,
    k8s_version,
    pinned_versions,
)
from .control import FAKE_NODE_ANNOTATION, FAKE_NODE_CAPACITY, POD_CIDR, SERVICE_CIDR, LocalCluster, fake_node
from .handle import Cluster, CommandError, node_images, open_cluster
from .procs import ClusterStartError

__all__ = [
    "ARGOCD",
    "BINARIES",
    "CONTROL",
    "GATEWAY",
    "WITH_NODE",
    "node_images",
    "FAKE_NODE_ANNOTATION",
    "FAKE_NODE_CAPACITY",
    "GO_DIR",
    "POD_CIDR",
    "SERVICE_CIDR",
    "TARGETS",
    "Cluster",
    "ClusterStartError",
    "CommandError",
    "LocalCluster",
    "Target",
    "_stderr_log",
    "bin_dir",
    "binaries_ready",
    "build",
    "cache_dir",
    "fake_node",
    "k8s_version",
    "open_cluster",
    "pinned_versions",
]
