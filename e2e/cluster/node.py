"""A real node beside the kwok nodes: containerd + runc + CNI bridge + kubelet + kube-proxy.

The node lives in a network namespace of its own (``psla-node-<slot>``), joined to the host by one
veth pair. Its pods sit on a bridge inside that namespace, which has no default route: a pod can
reach the API server (the host end of the veth) and other pods, and nothing else. On the host, the
slot's pod and Service ranges are routed into the veth and the whole pod, Service and link ranges
are ``unreachable`` otherwise, so no packet addressed to them can follow the default route out of
the machine (a rule of this workplace; ``e2e/realnode/test_node.py`` checks it while the node runs).

Only the network namespace is entered (``setns``), never the mount namespace: kubelet and
containerd must see the same mounts (volumes, secrets). Everything the node writes is under its
state directory, its cgroups under ``/<cgroup controller>/paddle-sla-<slot>``; ``stop`` kills the
containers by their cgroups, unmounts what is left under the state directory, removes the cgroups
and the namespace, and restores the kernel settings the kubelet changed.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .binaries import _stderr_log
from .pki import _kubeconfig, issue
from .procs import ClusterStartError, _die_with_parent, _pid_alive, check_alive, wait_until

SLOTS = 8
NETNS_PREFIX = "psla-node-"
# Everything the nodes of any slot address; unreachable on the host unless routed into a node.
CONFINED_RANGES = ("10.96.0.0/16", "10.244.0.0/16", "10.250.0.0/16")
REAL_NODE_LABEL = "paddle-sla.local/node"
REAL_NODE_TAINT = {"key": "paddle-sla.local/real-node", "value": "true", "effect": "NoSchedule"}
PAUSE_IMAGE = "registry.k8s.io/pause:3.10.1"
CNI_BIN_DIR = "/usr/lib/cni"  # Debian's containernetworking-plugins
RUNC = "/usr/sbin/runc"  # Debian's runc: crun fails on this host's hybrid cgroups
CGROUP_ROOT = Path("/sys/fs/cgroup")
# What the kubelet sets on start (pkg/kubelet/cm setupKernelTunables); restored by `stop`.
KUBELET_SYSCTLS = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)
CLONE_NEWNET = 0x40000000


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if check and proc.returncode != 0:
        raise ClusterStartError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


# Machine-wide, not per cache: network namespaces, routes and cgroups are the machine's, so two
# checkouts with different caches must still see each other's slots.
SLOTS_DIR = Path("/run/paddle-sla/realnode")


def _slots_dir() -> Path:
    d = SLOTS_DIR
    d.mkdir(parents=True, exist_ok=True)
    return d


@contextlib.contextmanager
def _slots_lock() -> Iterator[None]:
    with open(_slots_dir() / "slots.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@dataclass(frozen=True)
class NodeNetwork:
    """The addresses of one slot: a node namespace, its veth link, pod and Service ranges."""

    slot: int

    @property
    def netns(self) -> str:
        return f"{NETNS_PREFIX}{self.slot}"

    @property
    def host_if(self) -> str:
        return f"psla{self.slot}h"

    @property
    def node_if(self) -> str:
        return f"psla{self.slot}n"

    @property
    def host_ip(self) -> str:
        """The host end of the link: the API server binds here, so pods reach it."""
        return f"10.250.{self.slot}.1"

    @property
    def node_ip(self) -> str:
        return f"10.250.{self.slot}.2"

    @property
    def service_cidr(self) -> str:
        return f"10.96.{16 * self.slot}.0/20"

    @property
    def service_ip(self) -> str:
        """The ``kubernetes`` Service's ClusterIP: the first address of the range."""
        return f"10.96.{16 * self.slot}.1"

    @property
    def pod_cidr(self) -> str:
        return f"10.244.{128 + self.slot}.0/24"

    @property
    def pod_gateway(self) -> str:
        return f"10.244.{128 + self.slot}.1"

    @property
    def netns_path(self) -> Path:
        return Path("/run/netns") / self.netns

    def exists(self) -> bool:
        return self.netns_path.exists()

    def up(self) -> None:
        """Create the namespace, the veth link and the host routes (confinement included)."""
        ns = self.netns
        _run("ip", "netns", "add", ns)
        try:
            _run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.node_if, "netns", ns)
            _run("ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
            _run("ip", "link", "set", self.host_if, "up")
            _run("ip", "-n", ns, "link", "set", "lo", "up")
            _run("ip", "-n", ns, "addr", "add", f"{self.node_ip}/30", "dev", self.node_if)
            _run("ip", "-n", ns, "link", "set", self.node_if, "up")
            # The node routes between its pods and the link; it has no default route at all.
            _run("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            for cidr in (self.service_cidr, self.pod_cidr):
                _run("ip", "route", "replace", cidr, "via", self.node_ip, "dev", self.host_if)
            for cidr in CONFINED_RANGES:
                _run("ip", "route", "replace", "unreachable", cidr)
        except BaseException:
            self.down()
            raise

    def down(self) -> None:
        """Remove the namespace (its veth, bridge and rules go with it); the confinement routes too
        when no other node is up."""
        _run("ip", "netns", "del", self.netns, check=False)
        _run("ip", "link", "del", self.host_if, check=False)  # gone with the namespace, normally
        if not active_slots():
            for cidr in CONFINED_RANGES:
                _run("ip", "route", "del", "unreachable", cidr, check=False)


def active_slots() -> list[int]:
    """Slots whose node namespace exists."""
    return [s for s in range(SLOTS) if NodeNetwork(s).exists()]


def _slot_record(slot: int) -> Path:
    return _slots_dir() / f"slot-{slot}.json"


def claim_network(owner_state: Path, log: Callable[[str], None] = _stderr_log) -> NodeNetwork:
    """Take a free slot (sweeping nodes whose owner died) and bring its network up."""
    with _slots_lock():
        sweep_stale(log)
        for slot in range(SLOTS):
            net = NodeNetwork(slot)
            if net.exists():
                continue
            net.up()
            _slot_record(slot).write_text(json.dumps({"state_dir": str(owner_state), "pid": os.getpid()}))
            return net
    raise ClusterStartError(f"all {SLOTS} real-node slots are in use ({active_slots()})")


def release_network(net: NodeNetwork) -> None:
    with _slots_lock():
        net.down()
        _slot_record(net.slot).unlink(missing_ok=True)
        _restore_sysctls()


def sweep_stale(log: Callable[[str], None] = _stderr_log) -> None:
    """Tear down nodes left by a killed session: namespace present, owning process gone."""
    for slot in active_slots():
        try:
            rec = json.loads(_slot_record(slot).read_text())
        except (OSError, ValueError):
            rec = {}
        pid = int(rec.get("pid", 0))
        if pid and _pid_alive(pid):
            continue
        net = NodeNetwork(slot)
        state = Path(rec["state_dir"]) / "node" if rec.get("state_dir") else None
        log(f"removing the real node of a dead session (slot {slot}, state {state})")
        kill_node_processes(slot, state)
        if state is not None:
            unmount_under(state)
        remove_cgroups(slot)
        net.down()
        _slot_record(slot).unlink(missing_ok=True)
    if not active_slots():
        _restore_sysctls()


# --------------------------------------------------------------------------- cleanup pieces


def cgroup_name(slot: int) -> str:
    return f"paddle-sla-{slot}"


def _controllers() -> list[Path]:
    """The mounted cgroup v1 hierarchies (the unified v2 mount is left alone: v1 drives the pods)."""
    out = []
    for d in sorted(CGROUP_ROOT.iterdir()):
        if d.name != "unified" and (d / "cgroup.procs").exists():
            out.append(d)
    return out


def _cgroup_pids(slot: int) -> set[int]:
    pids: set[int] = set()
    for ctrl in _controllers():
        root = ctrl / cgroup_name(slot)
        if not root.is_dir():
            continue
        for procs in root.rglob("cgroup.procs"):
            with contextlib.suppress(OSError):
                pids.update(int(p) for p in procs.read_text().split())
    return pids


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _pids_mentioning(text: str) -> set[int]:
    """Processes whose command line mentions ``text`` (our state dir or socket path)."""
    out = set()
    for p in Path("/proc").iterdir():
        if p.name.isdigit() and int(p.name) != os.getpid() and any(text in a for a in _cmdline(int(p.name))):
            out.add(int(p.name))
    return out


def kill_node_processes(slot: int, state: Path | None, timeout: float = 20) -> None:
    """SIGKILL every container process (by cgroup) and every node process (by state dir)."""
    deadline = time.monotonic() + timeout
    while True:
        pids = _cgroup_pids(slot) | (_pids_mentioning(str(state)) if state else set())
        if not pids or time.monotonic() > deadline:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path`` (deepest first)."""
    prefix = str(path.resolve()) if path.exists() else str(path)
    points = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            point = line.split()[4].replace("\\040", " ")
            if point == prefix or point.startswith(prefix + "/"):
                points.append(point)
    return sorted(points, key=lambda p: p.count("/"), reverse=True)


def unmount_under(path: Path) -> None:
    for _ in range(5):
        points = mounts_under(path)
        if not points:
            return
        for point in points:
            _run("umount", "-l", point, check=False)


def remove_cgroups(slot: int) -> None:
    for ctrl in _controllers():
        root = ctrl / cgroup_name(slot)
        if not root.is_dir():
            continue
        for d in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                d.rmdir()
        with contextlib.suppress(OSError):
            root.rmdir()


def cgroups_left(slot: int) -> list[str]:
    return [str(c / cgroup_name(slot)) for c in _controllers() if (c / cgroup_name(slot)).exists()]


def _sysctl_file() -> Path:
    return _slots_dir() / "sysctl-before-kubelet.json"


def _save_sysctls() -> None:
    if _sysctl_file().exists():  # another node saved the original values already
        return
    values = {}
    for key in KUBELET_SYSCTLS:
        with contextlib.suppress(OSError):
            values[key] = (Path("/proc/sys") / key).read_text().strip()
    _sysctl_file().write_text(json.dumps(values))


def _restore_sysctls() -> None:
    try:
        values = json.loads(_sysctl_file().read_text())
    except (OSError, ValueError):
        return
    for key, value in values.items():
        with contextlib.suppress(OSError):
            (Path("/proc/sys") / key).write_text(value + "\n")
    _sysctl_file().unlink(missing_ok=True)


def _prepare_cgroup_root(slot: int) -> None:
    """The kubelet refuses a ``cgroupRoot`` that does not exist; cpuset needs its cpus/mems copied."""
    for ctrl in _controllers():
        root = ctrl / cgroup_name(slot)
        root.mkdir(exist_ok=True)
        if ctrl.name == "cpuset":
            for f in ("cpuset.cpus", "cpuset.mems"):
                (root / f).write_text((ctrl / f).read_text())


def _enter_netns(path: Path, die_with_parent: bool) -> Callable[[], None]:
    """preexec_fn: join the node's network namespace (only that one), optionally die with us."""

    def pre() -> None:
        fd = os.open(str(path), os.O_RDONLY)
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {path}")
        os.close(fd)
        if die_with_parent:
            _die_with_parent()

    return pre


# --------------------------------------------------------------------------- the node


def _yaml(doc: dict) -> str:
    return json.dumps(doc, indent=2) + "\n"  # JSON is YAML


@dataclass
class RealNode:
    """containerd, kubelet and kube-proxy of one slot, under ``root`` (``<cluster state>/node``)."""

    root: Path
    bins: Path
    net: NodeNetwork
    api_url: str
    pki: Path
    persistent: bool = False
    pids: dict[str, int] = field(default_factory=dict)
    _procs: dict[str, subprocess.Popen] = field(default_factory=dict, repr=False)

    ORDER = ("containerd", "kubelet", "kube-proxy")

    @property
    def name(self) -> str:
        return f"paddle-sla-node-{self.net.slot}"

    @property
    def socket(self) -> Path:
        return self.root / "containerd.sock"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    # -- configuration ---------------------------------------------------------------

    def _write_config(self) -> None:
        r, net, pki = self.root, self.net, self.pki
        for d in ("logs", "cni/net.d", "cni/ipam", "kubelet", "pod-logs", "containerd"):
            (r / d).mkdir(parents=True, exist_ok=True)
        slot = net.slot
        issue(pki, f"node-{slot}", f"system:node:{self.name}", org="system:nodes", client=True)
        issue(pki, f"kubelet-serving-{slot}", self.name, server=True, dns=[self.name], ips=[net.node_ip])
        issue(pki, f"kube-proxy-{slot}", "system:kube-proxy", client=True)
        (r / "kubelet.kubeconfig").write_text(_kubeconfig(pki, self.api_url, user=f"node-{slot}"))
        (r / "kube-proxy.kubeconfig").write_text(_kubeconfig(pki, self.api_url, user=f"kube-proxy-{slot}"))
        # Pods resolve nothing: there is no cluster DNS and nothing outside to reach.
        (r / "resolv.conf").write_text("nameserver 127.0.0.1\noptions ndots:1\n")
        (r / "cni/net.d/10-paddle-sla.conflist").write_text(
            json.dumps(
                {
                    "cniVersion": "1.0.0",
                    "name": f"paddle-sla-{slot}",
                    "plugins": [
                        {
                            "type": "bridge",
                            "bridge": "psla-br0",
                            "isGateway": True,
                            "ipMasq": False,  # nothing leaves the node: no NAT to the outside
                            "hairpinMode": True,
                            "ipam": {
                                "type": "host-local",
                                "dataDir": str(r / "cni/ipam"),
                                "ranges": [[{"subnet": net.pod_cidr, "gateway": net.pod_gateway}]],
                                "routes": [{"dst": "0.0.0.0/0"}],
                            },
                        },
                        {"type": "portmap", "capabilities": {"portMappings": True}},
                    ],
                },
                indent=2,
            )
        )
        runc_root = r / "runc"
        (r / "containerd.toml").write_text(
            f"""version = 3
root = "{r / "containerd/root"}"
state = "{r / "containerd/state"}"
# NRI and the TCP CRI endpoint would use fixed host paths/ports shared by every node.
disabled_plugins = ["io.containerd.nri.v1.nri"]

[grpc]
  address = "{self.socket}"

[ttrpc]
  address = "{self.socket}.ttrpc"

[plugins.'io.containerd.internal.v1.opt']
  path = "{r / "containerd/opt"}"

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "{PAUSE_IMAGE}"

[plugins.'io.containerd.cri.v1.runtime']
  # Without CAP_SYS_RESOURCE the sandbox's oom_score_adj of -998 is refused and runc fails.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  cdi_spec_dirs = []
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "{RUNC}"
        Root = "{runc_root}"
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["{CNI_BIN_DIR}"]
    conf_dir = "{r / "cni/net.d"}"

[plugins.'io.containerd.grpc.v1.cri']
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
"""
        )
        (r / "kubelet.yaml").write_text(
            _yaml(
                {
                    "apiVersion": "kubelet.config.k8s.io/v1beta1",
                    "kind": "KubeletConfiguration",
                    "address": net.node_ip,
                    "port": 10250,
                    "readOnlyPort": 0,
                    "healthzBindAddress": "127.0.0.1",
                    "healthzPort": 10248,
                    "authentication": {
                        "anonymous": {"enabled": False},
                        "webhook": {"enabled": True},
                        "x509": {"clientCAFile": str(pki / "ca.crt")},
                    },
                    "authorization": {"mode": "Webhook"},
                    "tlsCertFile": str(pki / f"kubelet-serving-{slot}.crt"),
                    "tlsPrivateKeyFile": str(pki / f"kubelet-serving-{slot}.key"),
                    "cgroupDriver": "cgroupfs",  # PID 1 is not systemd
                    "cgroupRoot": f"/{cgroup_name(slot)}",
                    "failCgroupV1": False,  # this host has v1 controllers (1.35 flips the default)
                    "failSwapOn": False,
                    "containerRuntimeEndpoint": f"unix://{self.socket}",
                    "podLogsDir": str(r / "pod-logs"),
                    "resolvConf": str(r / "resolv.conf"),
                    "clusterDomain": "cluster.local",
                    "staticPodPath": "",
                    "protectKernelDefaults": False,
                    "serializeImagePulls": False,
                    # A shared disk: never evict for it, never collect the imported images.
                    "evictionHard": {
                        "memory.available": "100Mi",
                        "nodefs.available": "1%",
                        "imagefs.available": "1%",
                        "nodefs.inodesFree": "1%",
                    },
                    "imageGCHighThresholdPercent": 100,
                    "imageGCLowThresholdPercent": 99,
                    "registerWithTaints": [REAL_NODE_TAINT],
                    "maxPods": 40,
                    "shutdownGracePeriod": "0s",
                    "rotateCertificates": False,
                    "nodeStatusUpdateFrequency": "5s",
                    "syncFrequency": "10s",
                    "fileCheckFrequency": "5s",
                }
            )
        )
        (r / "kube-proxy.yaml").write_text(
            _yaml(
                {
                    "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
                    "kind": "KubeProxyConfiguration",
                    "clientConnection": {"kubeconfig": str(r / "kube-proxy.kubeconfig")},
                    "mode": "iptables",
                    "hostnameOverride": self.name,
                    "clusterCIDR": net.pod_cidr,
                    "bindAddress": net.node_ip,
                    "healthzBindAddress": "127.0.0.1:10256",
                    "metricsBindAddress": "127.0.0.1:10249",
                    "nodePortAddresses": [f"{net.node_ip}/32"],
                    # Pod -> Service -> pod on the same bridge: SNAT so the reply comes back through
                    # the node and is un-DNATed (no br_netfilter needed).
                    "iptables": {"masqueradeAll": True, "localhostNodePorts": False, "minSyncPeriod": "0s"},
                    # Zeros: leave the host's conntrack sysctls alone.
                    "conntrack": {
                        "maxPerCore": 0,
                        "min": 0,
                        "tcpEstablishedTimeout": "0s",
                        "tcpCloseWaitTimeout": "0s",
                    },
                }
            )
        )

    # -- processes -------------------------------------------------------------------

    def _spawn(self, name: str, args: Sequence[str], env: dict[str, str] | None = None) -> None:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            proc = subprocess.Popen(
                [str(self.bins / name), *args],
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
                preexec_fn=_enter_netns(self.net.netns_path, die_with_parent=not self.persistent),
            )
        finally:
            log.close()
        self._procs[name] = proc
        self.pids[name] = proc.pid

    def _check_alive(self) -> None:
        check_alive(self.pids, self._procs, self.logs)

    def _wait(self, what: str, check: Callable[[], bool], timeout: float, log_of: str) -> None:
        wait_until(what, check, timeout, self._check_alive, self.logs / f"{log_of}.log", 0.5)

    def ctr(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """``ctr`` against this node's containerd, in the CRI namespace."""
        cmd = [str(self.bins / "ctr"), "--address", str(self.socket), "--namespace", "k8s.io", *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise ClusterStartError(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")
        return proc

    def images(self) -> set[str]:
        return set(self.ctr("images", "list", "--quiet").stdout.split())

    def import_image(self, archive: Path, ref: str) -> None:
        """Import an image archive under ``ref`` unless containerd already has it."""
        if ref in self.images():
            return
        # No --index-name: with it, containerd 2.4 deletes the image again right after the import.
        out = self.ctr("images", "import", str(archive)).stdout
        if ref not in self.images():
            # An archive whose ref annotation is a bare tag or another name: tag what it saved.
            saved = [line.split()[0] for line in out.splitlines() if line.split()[1:2] == ["saved"]]
            if saved:
                self.ctr("images", "tag", "--force", saved[0], ref)
        if ref not in self.images():
            raise ClusterStartError(
                f"importing {archive} did not produce {ref}: have {sorted(self.images())}"
            )

    def start(
        self,
        node_ready: Callable[[str], bool],
        images: Sequence[tuple[Path, str]] = (),
        timeout: float = 180,
        log: Callable[[str], None] = _stderr_log,
    ) -> None:
        """containerd, the images, kubelet, then kube-proxy; returns once the Node is Ready."""
        t0 = time.monotonic()
        self.root.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        self._write_config()
        env = dict(os.environ, PATH=f"{self.bins}{os.pathsep}{os.environ.get('PATH', '')}")
        self._spawn("containerd", ["--config", str(self.root / "containerd.toml")], env=env)
        self._wait("containerd", lambda: self.ctr("version", timeout=5).returncode == 0, 60, "containerd")
        for archive, ref in images:
            t1 = time.monotonic()
            self.import_image(archive, ref)
            log(f"real node: {ref} in containerd ({time.monotonic() - t1:.1f}s)")
        _prepare_cgroup_root(self.net.slot)
        _save_sysctls()
        self._spawn(
            "kubelet",
            [
                f"--config={self.root / 'kubelet.yaml'}",
                f"--kubeconfig={self.root / 'kubelet.kubeconfig'}",
                f"--root-dir={self.root / 'kubelet'}",
                f"--hostname-override={self.name}",
                f"--node-ip={self.net.node_ip}",
                f"--node-labels={REAL_NODE_LABEL}=real",
                "--v=1",
            ],
            env=env,
        )
        self._wait(f"Node {self.name} Ready", lambda: node_ready(self.name), timeout, "kubelet")
        self._spawn("kube-proxy", [f"--config={self.root / 'kube-proxy.yaml'}", "--v=1"], env=env)
        self._wait("kube-proxy /healthz", self._proxy_healthy, 60, "kube-proxy")
        log(f"real node {self.name} Ready at {self.net.node_ip} after {time.monotonic() - t0:.1f}s")

    def _proxy_healthy(self) -> bool:
        # /healthz listens inside the node's namespace: ask from there.
        proc = subprocess.run(
            ["ip", "netns", "exec", self.net.netns, "python3", "-c",
             "import urllib.request as u;print(u.urlopen('http://127.0.0.1:10256/healthz',timeout=2).status)"],
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        return proc.stdout.strip() == "200"

    def alive(self) -> dict[str, bool]:
        return {n: _pid_alive(p) for n, p in self.pids.items()}

    def stop(self, grace: float = 10) -> None:
        """Stop everything the node started and leave nothing behind (see the module docstring)."""
        for name in ("kube-proxy", "kubelet"):
            self._signal(name, signal.SIGTERM, grace)
        kill_node_processes(self.net.slot, self.root)  # containers, shims, and anything still ours
        self._signal("containerd", signal.SIGTERM, grace)
        kill_node_processes(self.net.slot, self.root)
        for proc in self._procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        unmount_under(self.root)
        remove_cgroups(self.net.slot)
        self.pids.clear()
        self._procs.clear()

    def _signal(self, name: str, sig: signal.Signals, grace: float) -> None:
        pid = self.pids.get(name)
        if not pid:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + grace
        proc = self._procs.get(name)
        while time.monotonic() < deadline:
            if (proc.poll() is not None) if proc else not _pid_alive(pid):
                return
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


def leftovers(net: NodeNetwork, root: Path) -> dict[str, list[str]]:
    """What a stopped node would have left behind (the teardown test wants every list empty)."""
    nft = _run("nft", "list", "tables", check=False).stdout.split("\n") if shutil.which("nft") else []
    return {
        "processes": sorted(str(p) for p in _pids_mentioning(str(root))),
        "container processes": sorted(str(p) for p in _cgroup_pids(net.slot)),
        "mounts": mounts_under(root),
        "netns": [net.netns] if net.exists() else [],
        "links": [i for i in (net.host_if,) if Path(f"/sys/class/net/{i}").exists()],
        "routes": [
            line
            for line in _run("ip", "route", "show", check=False).stdout.splitlines()
            if any(line.startswith(c) for c in (net.pod_cidr, net.service_cidr))
        ],
        "cgroups": cgroups_left(net.slot),
        # kube-proxy writes its rules inside the node's namespace only; the host keeps none of ours.
        "host nft tables": [t for t in nft if "kube" in t.lower()],
    }
