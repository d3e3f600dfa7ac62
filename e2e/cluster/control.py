"""The local control plane: etcd, kube-apiserver, controller-manager, scheduler and kwok as processes."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .binaries import BINARIES, NODE_BINARIES, _stderr_log, bin_dir
from .node import NodeNetwork, RealNode, claim_network, release_network
from .pki import SERVICE_IP, _kubeconfig, _write_pki
from .procs import (
    ClusterStartError,
    _die_with_parent,
    _free_port,
    _pid_alive,
    _pid_is,
    check_alive,
    wait_until,
)

SERVICE_CIDR = "10.96.0.0/16"
POD_CIDR = "10.244.0.1/16"
FAKE_NODE_ANNOTATION = "kwok.x-k8s.io/node"
# Capacity of each fake node: generous, and with GPUs so GPU-requesting pods schedule.
FAKE_NODE_CAPACITY = {"cpu": "32", "memory": "256Gi", "pods": "110", "nvidia.com/gpu": "4"}


@dataclass
class LocalCluster:
    """The local control plane rooted at ``state_dir`` (certs, etcd data, logs, kubeconfig, state.json).

    ``persistent`` clusters (``make cluster-up``) outlive this process; test clusters die with it.
    With ``real_node`` the cluster gets a real node (``node.py``) beside the kwok nodes: the API
    server then binds the host end of the node's link instead of loopback, so pods can reach it.
    ``node_images`` are (archive, reference) pairs imported into the node's containerd.
    """

    state_dir: Path
    bins: Path = field(default_factory=bin_dir)
    persistent: bool = False
    nodes: int = 2
    real_node: bool = False
    node_images: Sequence[tuple[Path, str]] = ()
    net: NodeNetwork | None = None
    node: RealNode | None = None
    ports: dict[str, int] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    _procs: dict[str, subprocess.Popen] = field(default_factory=dict, repr=False)
    _args: dict[str, list[str]] = field(default_factory=dict, repr=False)  # what each was started with

    ORDER = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def pki(self) -> Path:
        return self.state_dir / "pki"

    @property
    def logs(self) -> Path:
        return self.state_dir / "logs"

    @property
    def api_host(self) -> str:
        """Where the API server listens: loopback, or the host end of the real node's link."""
        return self.net.host_ip if self.net else "127.0.0.1"

    @property
    def api_url(self) -> str:
        return f"https://{self.api_host}:{self.ports['kube-apiserver']}"

    @property
    def service_cidr(self) -> str:
        return self.net.service_cidr if self.net else SERVICE_CIDR

    def _save(self) -> None:
        state = {
            "bin_dir": str(self.bins),
            "ports": self.ports,
            "pids": self.pids,
            "persistent": self.persistent,
            "slot": self.net.slot if self.net else None,
            "node_pids": self.node.pids if self.node else {},
        }
        tmp = self.state_dir / "state.json.tmp"
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        os.replace(tmp, self.state_dir / "state.json")

    @classmethod
    def attach(cls, state_dir: Path) -> LocalCluster:
        """A handle on a cluster started by another process (``up`` then ``down``)."""
        state = json.loads((state_dir / "state.json").read_text())
        c = cls(
            state_dir=state_dir,
            bins=Path(state["bin_dir"]),
            persistent=state.get("persistent", True),
            ports=state["ports"],
            pids={k: int(v) for k, v in state["pids"].items()},
        )
        if state.get("slot") is not None:
            c.real_node, c.net = True, NodeNetwork(int(state["slot"]))
            c.node = c._new_node()
            c.node.pids = {k: int(v) for k, v in state.get("node_pids", {}).items()}
        return c

    def _new_node(self) -> RealNode:
        assert self.net is not None
        return RealNode(
            root=self.state_dir / "node",
            bins=self.bins,
            net=self.net,
            api_url=self.api_url,
            pki=self.pki,
            persistent=self.persistent,
        )

    # -- start ---------------------------------------------------------------------

    def _spawn(self, name: str, args: Sequence[str]) -> None:
        self._args[name] = list(args)
        binary = str(self.bins / name)
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            proc = subprocess.Popen(
                [binary, *args],
                cwd=self.state_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stopped as a whole
                preexec_fn=None if self.persistent else _die_with_parent,
            )
        finally:
            log.close()
        self._procs[name] = proc
        self.pids[name] = proc.pid
        self._save()  # every PID on disk the moment it exists: `down` can always find it

    def _check_alive(self) -> None:
        check_alive(self.pids, self._procs, self.logs)

    def _wait(self, what: str, check: Callable[[], bool], timeout: float, log_of: str) -> None:
        wait_until(what, check, timeout, self._check_alive, self.logs / f"{log_of}.log", 0.25)

    def _ssl(self, verify: bool = True) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        ctx.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        if not verify:  # controller-manager/scheduler serve self-signed certs of their own
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def api(self, path: str, method: str = "GET", body: dict | None = None, timeout: float = 10) -> dict:
        """A JSON request to the API server as cluster admin (no kubectl process needed)."""
        req = urllib.request.Request(
            f"{self.api_url}{path}",
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )
        with urllib.request.urlopen(req, context=self._ssl(), timeout=timeout) as resp:
            data = resp.read()
        return json.loads(data) if data[:1] in (b"{", b"[") else {"raw": data.decode()}

    @staticmethod
    def _etcd_healthy(url: str) -> bool:
        with urllib.request.urlopen(f"{url}/health", timeout=5) as resp:
            return json.loads(resp.read()).get("health") == "true"

    def _healthy(self, component: str, path: str) -> bool:
        verify = component == "kube-apiserver"
        host = self.api_host if verify else "127.0.0.1"
        url = f"https://{host}:{self.ports[component]}{path}"
        with urllib.request.urlopen(url, context=self._ssl(verify), timeout=5) as resp:
            return resp.status == 200 and resp.read().strip() == b"ok"

    def start(self, timeout: float = 180, log: Callable[[str], None] = _stderr_log) -> LocalCluster:
        """Start every component, register the fake nodes and wait until the cluster works."""
        needed = [*BINARIES, *(NODE_BINARIES if self.real_node else ())]
        missing = [b for b in needed if not (self.bins / b).is_file()]
        if missing:
            raise ClusterStartError(
                f"missing binaries in {self.bins}: {missing}; run `python -m e2e.cluster build`"
            )
        t0 = time.monotonic()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        if self.real_node and self.net is None:
            self.net = claim_network(self.state_dir, log)
            log(f"real node network up: namespace {self.net.netns}, API at {self.net.host_ip}")
        api_ips = ["127.0.0.1", SERVICE_IP] + ([self.net.host_ip, self.net.service_ip] if self.net else [])
        _write_pki(self.pki, api_ips)
        self.ports = {n: _free_port() for n in ("etcd", "etcd-peer", *self.ORDER[1:4])}
        api = self.api_url
        self.kubeconfig.write_text(_kubeconfig(self.pki, api))
        os.chmod(self.kubeconfig, 0o600)
        pki, kc = self.pki, str(self.kubeconfig)
        etcd_url, peer_url = (
            f"http://127.0.0.1:{self.ports['etcd']}",
            f"http://127.0.0.1:{self.ports['etcd-peer']}",
        )
        try:
            self._spawn(
                "etcd",
                [
                    "--name=default",
                    f"--data-dir={self.state_dir / 'etcd'}",
                    f"--listen-client-urls={etcd_url}",
                    f"--advertise-client-urls={etcd_url}",
                    f"--listen-peer-urls={peer_url}",
                    f"--initial-advertise-peer-urls={peer_url}",
                    f"--initial-cluster=default={peer_url}",
                    "--unsafe-no-fsync",  # throw-away data: durability costs seconds per test on a slow disk
                    "--log-level=warn",
                ],
            )
            self._wait("etcd /health", lambda: self._etcd_healthy(etcd_url), timeout, "etcd")
            self._spawn(
                "kube-apiserver",
                [
                    f"--etcd-servers={etcd_url}",
                    f"--bind-address={self.api_host}",
                    f"--advertise-address={self.api_host}",
                    f"--secure-port={self.ports['kube-apiserver']}",
                    f"--cert-dir={self.state_dir / 'apiserver-certs'}",
                    f"--tls-cert-file={pki / 'apiserver.crt'}",
                    f"--tls-private-key-file={pki / 'apiserver.key'}",
                    f"--client-ca-file={pki / 'ca.crt'}",
                    f"--service-account-key-file={pki / 'sa.pub'}",
                    f"--service-account-signing-key-file={pki / 'sa.key'}",
                    "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                    f"--service-cluster-ip-range={self.service_cidr}",
                    "--authorization-mode=Node,RBAC",  # real RBAC: the operator's ClusterRole is exercised
                    # PodNodeSelector / PodTolerationRestriction: a namespace annotation puts its pods on
                    # the real node, so examples run unchanged (``Cluster.place_on_real_node``).
                    "--enable-admission-plugins=NodeRestriction,PodNodeSelector,PodTolerationRestriction",
                    # The API server reaches kubelets (logs, exec) by address, with its own identity.
                    "--kubelet-preferred-address-types=InternalIP",
                    f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
                    f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
                    "--allow-privileged=true",
                    f"--requestheader-client-ca-file={pki / 'front-proxy-ca.crt'}",
                    "--requestheader-allowed-names=front-proxy-client",
                    "--requestheader-username-headers=X-Remote-User",
                    "--requestheader-group-headers=X-Remote-Group",
                    "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                    f"--proxy-client-cert-file={pki / 'front-proxy-client.crt'}",
                    f"--proxy-client-key-file={pki / 'front-proxy-client.key'}",
                    # Aggregated APIs (prometheus-adapter, adapter.py) are reached at their Endpoints'
                    # address, not through a ClusterIP: the API server runs outside the node's network.
                    "--enable-aggregator-routing=true",
                    "--profiling=false",
                    "--v=1",
                ],
            )
            self._wait(
                "kube-apiserver /readyz",
                lambda: self._healthy("kube-apiserver", "/readyz"),
                timeout,
                "kube-apiserver",
            )
            log(f"kube-apiserver ready at {api} after {time.monotonic() - t0:.1f}s")
            common = [
                f"--kubeconfig={kc}",
                f"--authentication-kubeconfig={kc}",
                f"--authorization-kubeconfig={kc}",
                "--bind-address=127.0.0.1",
                "--leader-elect=false",
                "--v=1",
            ]
            self._spawn(
                "kube-controller-manager",
                [
                    *common,
                    f"--secure-port={self.ports['kube-controller-manager']}",
                    f"--cert-dir={self.state_dir / 'kcm-certs'}",
                    f"--root-ca-file={pki / 'ca.crt'}",
                    f"--service-account-private-key-file={pki / 'sa.key'}",
                    f"--cluster-signing-cert-file={pki / 'ca.crt'}",
                    f"--cluster-signing-key-file={pki / 'ca.key'}",
                    f"--service-cluster-ip-range={self.service_cidr}",
                    # kwok's fake kubelets heartbeat from one process; on a small shared machine a busy
                    # minute delays them past the 50 s default, the node controller marks the nodes
                    # NotReady and every fake pod's Ready turns False for good (kwok does not set it back).
                    "--node-monitor-grace-period=3m",
                ],
            )
            self._spawn(
                "kube-scheduler",
                [
                    *common,
                    f"--secure-port={self.ports['kube-scheduler']}",
                    f"--cert-dir={self.state_dir / 'scheduler-certs'}",
                ],
            )
            self._spawn(
                "kwok",
                [
                    f"--kubeconfig={kc}",
                    "--manage-all-nodes=false",
                    f"--manage-nodes-with-annotation-selector={FAKE_NODE_ANNOTATION}=fake",
                    f"--cidr={POD_CIDR}",
                    "--node-ip=127.0.0.1",
                    # Node leases (renewed every 10 s) as well as status heartbeats, as a real kubelet does.
                    "--node-lease-duration-seconds=40",
                ],
            )
            for i in range(self.nodes):
                self.api("/api/v1/nodes", "POST", fake_node(f"kwok-node-{i}"))
            self._wait(
                f"{self.nodes} Ready kwok node(s)", lambda: self._ready_nodes() >= self.nodes, timeout, "kwok"
            )
            self._wait(
                "the default ServiceAccount (controller-manager at work)",
                lambda: bool(self.api("/api/v1/namespaces/default/serviceaccounts/default")),
                timeout,
                "kube-controller-manager",
            )
            for c in ("kube-controller-manager", "kube-scheduler"):
                self._wait(f"{c} /healthz", lambda c=c: self._healthy(c, "/healthz"), timeout, c)
            if self.real_node:
                self.node = self._new_node()
                try:
                    self.node.start(self._node_ready, images=self.node_images, log=log)
                finally:
                    self._save()
        except BaseException:
            self.stop(remove=not self.persistent)
            raise
        log(f"cluster ready in {time.monotonic() - t0:.1f}s (kubeconfig {self.kubeconfig})")
        return self

    def _node_ready(self, name: str) -> bool:
        node = self.api(f"/api/v1/nodes/{name}")
        return any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in node.get("status", {}).get("conditions", [])
        )

    def _ready_nodes(self) -> int:
        items = self.api("/api/v1/nodes")["items"]
        return sum(
            1
            for n in items
            for c in n.get("status", {}).get("conditions", [])
            if c["type"] == "Ready" and c["status"] == "True"
        )

    # -- faults ----------------------------------------------------------------------

    READY_CHECKS = {"etcd": "/health", "kube-apiserver": "/readyz"}

    def restart(
        self, component: str, sig: int = signal.SIGTERM, down_s: float = 0, timeout: float = 120
    ) -> float:
        """Stop ``component`` (``sig``, SIGKILL after 15 s), keep it down ``down_s`` seconds, start it
        again with the same flags, ports and data, and wait until it is healthy; returns the seconds
        it was unavailable. For fault tests; only etcd and the API server (clients reconnect to them)."""
        if component not in self.READY_CHECKS or component not in self._args:
            raise ValueError(
                f"can restart only {sorted(self.READY_CHECKS)} of a cluster this process started"
            )
        t0 = time.monotonic()
        self._stop_one(component, sig)
        time.sleep(down_s)
        self._spawn(component, self._args[component])
        if component == "etcd":
            url = f"http://127.0.0.1:{self.ports['etcd']}"
            self._wait("etcd /health", lambda: self._etcd_healthy(url), timeout, "etcd")
        # /readyz includes the API server's etcd check: ready again means serving again.
        self._wait(
            "kube-apiserver /readyz",
            lambda: self._healthy("kube-apiserver", "/readyz"),
            timeout,
            "kube-apiserver",
        )
        unavailable = time.monotonic() - t0
        # kwok (the fake kubelets, not under test) drops a pod's stage for good when its status patch
        # fails with a server error, as it does while etcd is down; a real kubelet resyncs every
        # minute. A fresh kwok lists every pod again, so the fake nodes catch up like real ones.
        if "kwok" in self._args:
            self._stop_one("kwok", signal.SIGTERM)
            self._spawn("kwok", self._args["kwok"])
        return unavailable

    def _stop_one(self, component: str, sig: int) -> None:
        """Signal one process group, SIGKILL it after 15 s, and reap it."""
        pid, proc = self.pids[component], self._procs[component]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(pid, signal.SIGKILL)
            proc.wait(10)

    # -- status / stop ---------------------------------------------------------------

    def alive(self) -> dict[str, bool]:
        alive = {
            name: _pid_alive(pid) and _pid_is(pid, str(self.bins / name)) for name, pid in self.pids.items()
        }
        if self.node is not None:
            alive.update(self.node.alive())
        return alive

    def stop(self, remove: bool = True, grace: float = 15) -> None:
        """Stop each process group in turn (SIGTERM, SIGKILL after ``grace`` s), then drop the state dir.

        One at a time, dependants first (kwok ... etcd): the API server exits in about a second while
        etcd is up, but hangs in its graceful shutdown when etcd vanishes under it.
        """
        if self.node is not None:  # first: its kubelet and containers need nothing from the others
            self.node.stop()
        targets = {n: p for n, p in self.pids.items() if _pid_is(p, str(self.bins / n))}
        for name in [*reversed(self.ORDER), *(n for n in targets if n not in self.ORDER)]:
            if name not in targets:
                continue
            pid, proc = targets[name], self._procs.get(name)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                if (proc.poll() is not None) if proc else not _pid_alive(pid):
                    break
                time.sleep(0.05)
            # SIGKILL the group either way: it may hold children that outlive their leader.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        for proc in self._procs.values():
            proc.wait(timeout=10)  # reap our children, including ones that died on their own
        self.pids.clear()
        self._procs.clear()
        if self.net is not None:
            release_network(self.net)
            self.net = None
            self.node = None
        if remove:
            shutil.rmtree(self.state_dir, ignore_errors=True)
        elif self.state_dir.exists():
            self._save()


def fake_node(name: str) -> dict:
    """A Node that kwok manages (by annotation): Ready, with CPU, memory, pods and GPUs to schedule on."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {FAKE_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/os": "linux",
                "kubernetes.io/hostname": name,
                "kubernetes.io/role": "agent",
                "node-role.kubernetes.io/agent": "",
                "type": "kwok",
                "nvidia.com/gpu.present": "true",
            },
        },
        "status": {
            "capacity": dict(FAKE_NODE_CAPACITY),
            "allocatable": dict(FAKE_NODE_CAPACITY),
            "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux", "kubeletVersion": "fake"},
            "phase": "Running",
        },
    }
