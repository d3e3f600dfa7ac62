"""A real local Kubernetes control plane for the e2e tests and the demo, without Docker.

Upstream etcd, kube-apiserver, kube-controller-manager and kube-scheduler run as plain processes
on 127.0.0.1 (random free ports, generated certificates); kwok stands in for nodes and kubelets so
Deployments roll out and report Available. The binaries (plus kubectl and helm) are built once from
upstream Go modules through the Go module proxy, pinned by the wrapper modules under ``e2e/go/``,
into ``$PADDLE_SLA_CACHE/bin/<k8s version>/`` and reused from then on.

Modes (``open_cluster``): the local control plane (default), ``E2E_CLUSTER=kind`` (a throw-away
kind cluster, for machines with Docker), or ``E2E_KUBECONFIG=path`` (an existing cluster, left alone).

CLI: ``python -m e2e.cluster build|up|down|status|env``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

GO_DIR = Path(__file__).resolve().with_name("go")
LOCAL_CONTEXT = "paddle-sla-local"
SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"
POD_CIDR = "10.244.0.1/16"
FAKE_NODE_ANNOTATION = "kwok.x-k8s.io/node"
# Capacity of each fake node: generous, and with GPUs so GPU-requesting pods schedule.
FAKE_NODE_CAPACITY = {"cpu": "32", "memory": "256Gi", "pods": "110", "nvidia.com/gpu": "4"}


# --------------------------------------------------------------------------- binaries


@dataclass(frozen=True)
class Target:
    """One binary: built from ``package`` inside the wrapper module ``e2e/go/<module_dir>``."""

    name: str
    module_dir: str
    module: str
    package: str


# Order matters only for progress: the control plane first, helpers last.
TARGETS: tuple[Target, ...] = (
    Target("etcd", "etcd", "go.etcd.io/etcd/server/v3", "go.etcd.io/etcd/server/v3"),
    Target("kube-apiserver", "kube", "k8s.io/kubernetes", "k8s.io/kubernetes/cmd/kube-apiserver"),
    Target("kwok", "kwok", "sigs.k8s.io/kwok", "sigs.k8s.io/kwok/cmd/kwok"),
    Target(
        "kube-controller-manager",
        "kube",
        "k8s.io/kubernetes",
        "k8s.io/kubernetes/cmd/kube-controller-manager",
    ),
    Target("kube-scheduler", "kube", "k8s.io/kubernetes", "k8s.io/kubernetes/cmd/kube-scheduler"),
    Target("kubectl", "kube", "k8s.io/kubernetes", "k8s.io/kubernetes/cmd/kubectl"),
    Target("helm", "helm", "helm.sh/helm/v3", "helm.sh/helm/v3/cmd/helm"),
)
BINARIES: tuple[str, ...] = tuple(t.name for t in TARGETS)


def _required_version(module_dir: str, module: str) -> str:
    """The version of ``module`` required by a wrapper go.mod: the go.mod is the one pin."""
    text = (GO_DIR / module_dir / "go.mod").read_text()
    m = re.search(rf"^\s*(?:require\s+)?{re.escape(module)}\s+(v\S+)", text, re.MULTILINE)
    if not m:
        raise RuntimeError(f"{module} is not required in e2e/go/{module_dir}/go.mod")
    return m.group(1)


def pinned_versions() -> dict[str, str]:
    """Pinned upstream versions, read from the wrapper modules."""
    return {t.name: _required_version(t.module_dir, t.module) for t in TARGETS}


def k8s_version() -> str:
    """The pinned Kubernetes release, e.g. ``v1.34.4``."""
    return _required_version("kube", "k8s.io/kubernetes")


def cache_dir() -> Path:
    """``$PADDLE_SLA_CACHE`` or ``~/.cache/paddle-sla``: outside the repo, shared by checkouts."""
    return Path(os.environ.get("PADDLE_SLA_CACHE") or Path.home() / ".cache" / "paddle-sla").expanduser()


def bin_dir() -> Path:
    """Where the pinned binaries live."""
    return cache_dir() / "bin" / k8s_version()


def _go_version() -> str:
    return subprocess.run(
        ["go", "env", "GOVERSION"], capture_output=True, text=True, check=True
    ).stdout.strip()


# Bump when the build flags change, so cached binaries built the old way are rebuilt (relinked).
BUILD_RECIPE = "2"


def _stamp_entry(target: Target, go: str) -> dict[str, str]:
    return {
        "package": target.package,
        "version": _required_version(target.module_dir, target.module),
        "go": go,
        "recipe": BUILD_RECIPE,
    }


def _stamp_matches(entry: dict[str, str], target: Target) -> bool:
    return (
        entry.get("version") == _required_version(target.module_dir, target.module)
        and entry.get("package") == target.package
        and entry.get("recipe") == BUILD_RECIPE
    )


def _module_info(module_dir: str, module: str) -> dict:
    out = subprocess.run(
        ["go", "list", "-m", "-json", module],
        cwd=GO_DIR / module_dir,
        capture_output=True,
        text=True,
        check=True,
        env=dict(os.environ, GOFLAGS="-mod=readonly"),
    ).stdout
    return json.loads(out)


def _version_ldflags(target: Target) -> list[str]:
    """The -X flags upstream release builds set; a plain `go build` reports v0.0.0-master.

    The API server's /version feeds Helm's `.Capabilities.KubeVersion` and charts' `kubeVersion`
    checks, and helm's own default Kubernetes version (for `helm template`) is set the same way.
    """
    if target.module == "k8s.io/kubernetes":
        info = _module_info(target.module_dir, target.module)
        major, minor = info["Version"].lstrip("v").split(".")[:2]
        flags = []
        for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
            flags += [
                f"-X {pkg}.gitVersion={info['Version']}",
                f"-X {pkg}.gitMajor={major}",
                f"-X {pkg}.gitMinor={minor}",
                f"-X {pkg}.gitTreeState=clean",
                f"-X {pkg}.buildDate={info.get('Time', '1970-01-01T00:00:00Z')}",
            ]
        return flags
    if target.module == "helm.sh/helm/v3":
        version = _required_version(target.module_dir, target.module)
        client_go = _module_info(target.module_dir, "k8s.io/client-go")["Version"]  # v0.34.2 -> 1.34
        minor = client_go.lstrip("v").split(".")[1]
        flags = [f"-X helm.sh/helm/v3/internal/version.version={version}"]
        flags.append("-X helm.sh/helm/v3/internal/version.gitTreeState=clean")
        for pkg in ("helm.sh/helm/v3/pkg/chartutil", "helm.sh/helm/v3/pkg/lint/rules"):
            flags += [f"-X {pkg}.k8sVersionMajor=1", f"-X {pkg}.k8sVersionMinor={minor}"]
        return flags
    return []  # etcd and kwok carry their versions in source


def _read_stamp(directory: Path) -> dict[str, dict[str, str]]:
    try:
        return json.loads((directory / "stamp.json").read_text())
    except (OSError, ValueError):
        return {}


def binaries_ready(directory: Path | None = None) -> bool:
    """True when every binary exists and its stamp matches the pinned version (no Go needed)."""
    directory = directory or bin_dir()
    stamp = _read_stamp(directory)
    return all((directory / t.name).is_file() and _stamp_matches(stamp.get(t.name, {}), t) for t in TARGETS)


@contextlib.contextmanager
def _file_lock(path: Path, what: str, log: Callable[[str], None]) -> Iterator[None]:
    """An exclusive flock, so concurrent test sessions never build the same binary twice at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another {what} to finish (lock {path}) ...")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _stderr_log(msg: str) -> None:
    # sys.__stderr__ bypasses pytest's capture: a cold build takes tens of minutes and must show progress.
    stream = sys.__stderr__ or sys.stderr
    print(f"[e2e.cluster {time.strftime('%H:%M:%S')}] {msg}", file=stream, flush=True)


def _go_build(target: Target, out: Path, log: Callable[[str], None]) -> None:
    env = dict(os.environ, CGO_ENABLED="0", GOFLAGS="-mod=readonly -buildvcs=false")
    tmp = out.with_name(out.name + ".tmp")
    ldflags = " ".join(["-s", "-w", *_version_ldflags(target)])
    cmd = ["go", "build", "-v", "-trimpath", f"-ldflags={ldflags}", "-o", str(tmp), target.package]
    proc = subprocess.Popen(
        cmd,
        cwd=GO_DIR / target.module_dir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # one group with its compile/link children, killed as a whole
    )
    # -v names each package as it is compiled: the count is the progress signal.
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or ()), daemon=True)
    reader.start()
    start = time.monotonic()
    try:
        while True:
            try:
                proc.wait(timeout=20)
                break
            except subprocess.TimeoutExpired:
                log(f"  {target.name}: {len(lines)} packages compiled, {time.monotonic() - start:.0f}s")
    except BaseException:  # Ctrl-C or a test timeout: never leave a compiler running behind us
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        tmp.unlink(missing_ok=True)
        raise
    reader.join(timeout=10)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        tail = "".join(lines[-30:])
        raise RuntimeError(f"go build of {target.package} failed (exit {proc.returncode}):\n{tail}")
    os.replace(tmp, out)


def build(force: bool = False, log: Callable[[str], None] = _stderr_log) -> Path:
    """Build (or reuse) every pinned binary into ``bin_dir()``; returns that directory."""
    directory = bin_dir()
    if not force and binaries_ready(directory):
        return directory
    with _file_lock(cache_dir() / "build.lock", "binary build", log):
        if not force and binaries_ready(directory):  # another session finished it while we waited
            return directory
        if shutil.which("go") is None:
            raise RuntimeError(
                "the e2e binaries are missing and `go` is not on PATH: install Go >= 1.24 "
                f"(they are built from Go modules into {directory})"
            )
        directory.mkdir(parents=True, exist_ok=True)
        go = _go_version()
        stamp = _read_stamp(directory)
        t0 = time.monotonic()
        log(
            f"building pinned binaries into {directory} with {go} (cold: ~7 min here, longer on a busy machine)"
        )
        for i, t in enumerate(TARGETS, 1):
            want = _stamp_entry(t, go)
            have = stamp.get(t.name, {})
            if not force and (directory / t.name).is_file() and _stamp_matches(have, t):
                log(f"[{i}/{len(TARGETS)}] {t.name} {want['version']}: cached")
                continue
            log(f"[{i}/{len(TARGETS)}] {t.name} {want['version']}: building {t.package}")
            t1 = time.monotonic()
            _go_build(t, directory / t.name, log)
            stamp[t.name] = want
            # Written after each binary so an interrupted build keeps what it finished.
            (directory / "stamp.json").write_text(json.dumps(stamp, indent=2, sort_keys=True) + "\n")
            log(f"[{i}/{len(TARGETS)}] {t.name}: built in {time.monotonic() - t1:.0f}s")
        log(f"binaries ready in {time.monotonic() - t0:.0f}s")
    return directory


# --------------------------------------------------------------------------- certificates


def _write_pki(pki: Path) -> None:
    """CA, API server serving cert, admin client cert (system:masters) and service-account keys.

    ECDSA P-256 throughout: generated in milliseconds and accepted by every component.
    """
    try:
        from cryptography import x509
    except ImportError as exc:  # installed by the [signing] extra, which `make setup` includes
        raise ClusterStartError(
            "the local cluster needs the `cryptography` package: pip install cryptography"
        ) from exc
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    pki.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    later = now + dt.timedelta(days=365)

    def key() -> ec.EllipticCurvePrivateKey:
        return ec.generate_private_key(ec.SECP256R1())

    def save_key(k: ec.EllipticCurvePrivateKey, name: str) -> None:
        (pki / name).write_bytes(
            k.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        os.chmod(pki / name, 0o600)

    def name(cn: str, org: str | None = None) -> x509.Name:
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
        if org:
            attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
        return x509.Name(attrs)

    def make_ca(filename: str, cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Name]:
        k, subject = key(), name(cn)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(k.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(later)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
            .sign(k, hashes.SHA256())
        )
        (pki / f"{filename}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        save_key(k, f"{filename}.key")
        return k, subject

    def leaf(
        filename: str,
        subject: x509.Name,
        usage: x509.ObjectIdentifier,
        sans: list[x509.GeneralName],
        ca: tuple[ec.EllipticCurvePrivateKey, x509.Name],
    ) -> None:
        k = key()
        b = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca[1])
            .public_key(k.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(later)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        (pki / f"{filename}.crt").write_bytes(
            b.sign(ca[0], hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
        )
        save_key(k, f"{filename}.key")

    ca = make_ca("ca", "paddle-sla-local-ca")
    # The front-proxy pair is what kubeadm sets up for the aggregation layer; with it the
    # controller-manager and scheduler find the requestheader CA they look for and stay quiet.
    front_proxy_ca = make_ca("front-proxy-ca", "paddle-sla-local-front-proxy-ca")
    leaf(
        "front-proxy-client", name("front-proxy-client"), ExtendedKeyUsageOID.CLIENT_AUTH, [], front_proxy_ca
    )

    import ipaddress

    dns = [
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ]
    leaf(
        "apiserver",
        name("kube-apiserver"),
        ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.DNSName(d) for d in dns]
        + [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ("127.0.0.1", SERVICE_IP)],
        ca,
    )
    leaf("admin", name("kubernetes-admin", "system:masters"), ExtendedKeyUsageOID.CLIENT_AUTH, [], ca)

    sa = key()
    save_key(sa, "sa.key")
    (pki / "sa.pub").write_bytes(
        sa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def _kubeconfig(pki: Path, server: str) -> str:
    def b64(name: str) -> str:
        return base64.b64encode((pki / name).read_bytes()).decode()

    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": LOCAL_CONTEXT,
                "cluster": {"server": server, "certificate-authority-data": b64("ca.crt")},
            }
        ],
        "users": [
            {
                "name": "admin",
                "user": {"client-certificate-data": b64("admin.crt"), "client-key-data": b64("admin.key")},
            }
        ],
        "contexts": [{"name": LOCAL_CONTEXT, "context": {"cluster": LOCAL_CONTEXT, "user": "admin"}}],
        "current-context": LOCAL_CONTEXT,
    }
    return json.dumps(doc, indent=2) + "\n"  # JSON is valid YAML; no yaml dependency here


# --------------------------------------------------------------------------- processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """preexec_fn: the child is killed when the test process dies, even by SIGKILL.

    SIGKILL, not SIGTERM: all components get it at once, and an API server whose etcd is gone
    hangs in graceful shutdown; there is nothing left to shut down gracefully for.
    """
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"  # zombies are dead
    except (OSError, IndexError):
        return False


def _pid_is(pid: int, binary: str) -> bool:
    """Guards against a recycled PID: only signal a process that runs our binary."""
    try:
        exe = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0].decode()
    except OSError:
        return False
    return exe == binary


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class ClusterStartError(RuntimeError):
    """The local control plane did not come up; the message carries the relevant log tail."""


@dataclass
class LocalCluster:
    """The local control plane rooted at ``state_dir`` (certs, etcd data, logs, kubeconfig, state.json).

    ``persistent`` clusters (``make cluster-up``) outlive this process; test clusters die with it.
    """

    state_dir: Path
    bins: Path = field(default_factory=bin_dir)
    persistent: bool = False
    nodes: int = 2
    ports: dict[str, int] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    _procs: dict[str, subprocess.Popen] = field(default_factory=dict, repr=False)

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

    def _save(self) -> None:
        state = {
            "bin_dir": str(self.bins),
            "ports": self.ports,
            "pids": self.pids,
            "persistent": self.persistent,
        }
        tmp = self.state_dir / "state.json.tmp"
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        os.replace(tmp, self.state_dir / "state.json")

    @classmethod
    def attach(cls, state_dir: Path) -> LocalCluster:
        """A handle on a cluster started by another process (``up`` then ``down``)."""
        state = json.loads((state_dir / "state.json").read_text())
        return cls(
            state_dir=state_dir,
            bins=Path(state["bin_dir"]),
            persistent=state.get("persistent", True),
            ports=state["ports"],
            pids={k: int(v) for k, v in state["pids"].items()},
        )

    # -- start ---------------------------------------------------------------------

    def _spawn(self, name: str, args: Sequence[str]) -> None:
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
        for name, pid in self.pids.items():
            proc = self._procs.get(name)
            dead = proc.poll() is not None if proc else not _pid_alive(pid)
            if dead:
                raise ClusterStartError(
                    f"{name} exited during start-up; last log lines:\n{_tail(self.logs / f'{name}.log')}"
                )

    def _wait(self, what: str, check: Callable[[], bool], timeout: float, log_of: str) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive()
            with contextlib.suppress(Exception):
                if check():
                    return
            if time.monotonic() > deadline:
                raise ClusterStartError(
                    f"timed out after {timeout:.0f}s waiting for {what}; last {log_of} log lines:\n"
                    f"{_tail(self.logs / f'{log_of}.log')}"
                )
            time.sleep(0.25)

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
            f"https://127.0.0.1:{self.ports['kube-apiserver']}{path}",
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
        url = f"https://127.0.0.1:{self.ports[component]}{path}"
        with urllib.request.urlopen(url, context=self._ssl(verify), timeout=5) as resp:
            return resp.status == 200 and resp.read().strip() == b"ok"

    def start(self, timeout: float = 180, log: Callable[[str], None] = _stderr_log) -> LocalCluster:
        """Start every component, register the fake nodes and wait until the cluster works."""
        missing = [b for b in BINARIES if not (self.bins / b).is_file()]
        if missing:
            raise ClusterStartError(
                f"missing binaries in {self.bins}: {missing}; run `python -m e2e.cluster build`"
            )
        t0 = time.monotonic()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        _write_pki(self.pki)
        self.ports = {n: _free_port() for n in ("etcd", "etcd-peer", *self.ORDER[1:4])}
        api = f"https://127.0.0.1:{self.ports['kube-apiserver']}"
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
                    "--bind-address=127.0.0.1",
                    "--advertise-address=127.0.0.1",
                    f"--secure-port={self.ports['kube-apiserver']}",
                    f"--cert-dir={self.state_dir / 'apiserver-certs'}",
                    f"--tls-cert-file={pki / 'apiserver.crt'}",
                    f"--tls-private-key-file={pki / 'apiserver.key'}",
                    f"--client-ca-file={pki / 'ca.crt'}",
                    f"--service-account-key-file={pki / 'sa.pub'}",
                    f"--service-account-signing-key-file={pki / 'sa.key'}",
                    "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                    f"--service-cluster-ip-range={SERVICE_CIDR}",
                    "--authorization-mode=Node,RBAC",  # real RBAC: the operator's ClusterRole is exercised
                    "--allow-privileged=true",
                    f"--requestheader-client-ca-file={pki / 'front-proxy-ca.crt'}",
                    "--requestheader-allowed-names=front-proxy-client",
                    "--requestheader-username-headers=X-Remote-User",
                    "--requestheader-group-headers=X-Remote-Group",
                    "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                    f"--proxy-client-cert-file={pki / 'front-proxy-client.crt'}",
                    f"--proxy-client-key-file={pki / 'front-proxy-client.key'}",
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
                    f"--service-cluster-ip-range={SERVICE_CIDR}",
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
        except BaseException:
            self.stop(remove=not self.persistent)
            raise
        log(f"cluster ready in {time.monotonic() - t0:.1f}s (kubeconfig {self.kubeconfig})")
        return self

    def _ready_nodes(self) -> int:
        items = self.api("/api/v1/nodes")["items"]
        return sum(
            1
            for n in items
            for c in n.get("status", {}).get("conditions", [])
            if c["type"] == "Ready" and c["status"] == "True"
        )

    # -- status / stop ---------------------------------------------------------------

    def alive(self) -> dict[str, bool]:
        return {
            name: _pid_alive(pid) and _pid_is(pid, str(self.bins / name)) for name, pid in self.pids.items()
        }

    def stop(self, remove: bool = True, grace: float = 15) -> None:
        """Stop each process group in turn (SIGTERM, SIGKILL after ``grace`` s), then drop the state dir.

        One at a time, dependants first (kwok ... etcd): the API server exits in about a second while
        etcd is up, but hangs in its graceful shutdown when etcd vanishes under it.
        """
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


# --------------------------------------------------------------------------- the handle tests use


class CommandError(subprocess.CalledProcessError):
    """A failed kubectl/helm call whose message carries its output (CalledProcessError's hides it)."""

    def __str__(self) -> str:
        return f"{super().__str__()}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"


@dataclass
class Cluster:
    """What tests and tools get: a kubeconfig plus kubectl/helm bound to it."""

    kubeconfig: Path
    bin_dir: Path
    mode: str = "local"
    local: LocalCluster | None = None
    # Helm's cache/config/data dirs; under the throw-away state dir so runs never touch $HOME.
    helm_home: Path | None = None

    @property
    def env(self) -> dict[str, str]:
        """Environment for subprocesses: KUBECONFIG set and our binaries first on PATH."""
        env = dict(
            os.environ,
            KUBECONFIG=str(self.kubeconfig),
            PATH=f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        )
        if self.helm_home is not None:
            for kind in ("CACHE", "CONFIG", "DATA"):
                env[f"HELM_{kind}_HOME"] = str(self.helm_home / kind.lower())
        return env

    def run(
        self, tool: str, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run one of our binaries against this cluster; on ``check`` failure the error shows stderr."""
        cmd = [str(self.bin_dir / tool), *map(str, args)]
        proc = subprocess.run(cmd, input=input, capture_output=True, text=True, env=self.env, timeout=timeout)
        if check and proc.returncode != 0:
            raise CommandError(proc.returncode, cmd, proc.stdout, proc.stderr)
        return proc

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """``kubectl ARGS`` against this cluster (text mode)."""
        return self.run("kubectl", *args, input=input, check=check, timeout=timeout)

    def helm(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """``helm ARGS`` against this cluster (text mode)."""
        return self.run("helm", *args, input=input, check=check, timeout=timeout)

    def get(self, *args: str) -> dict:
        """``kubectl get ARGS -o json`` parsed."""
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)


def _install_sigterm_handler() -> None:
    """SIGTERM (CI cancel, `timeout`) unwinds like Ctrl-C, so fixtures and `finally` blocks clean up."""
    if (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    ):

        def handler(signum: int, frame: object) -> None:
            raise KeyboardInterrupt(f"signal {signum}")

        signal.signal(signal.SIGTERM, handler)


SESSION_PREFIX = "paddle-sla-e2e-"


def _sweep_stale_sessions(log: Callable[[str], None]) -> None:
    """Remove temp dirs of test sessions that were SIGKILLed (their processes died with them).

    Only dirs whose state.json lists PIDs that are all gone: a session still starting has no
    state.json yet, and one kept with E2E_KEEP_STATE=1 lists none.
    """
    for d in Path(tempfile.gettempdir()).glob(f"{SESSION_PREFIX}*"):
        try:
            stale = LocalCluster.attach(d)
        except (OSError, ValueError, KeyError):
            continue
        if stale.pids and not any(stale.alive().values()):
            shutil.rmtree(d, ignore_errors=True)
            log(f"removed the state dir of a killed session: {d}")


@contextlib.contextmanager
def _local_cluster(log: Callable[[str], None]) -> Iterator[Cluster]:
    bins = build(log=log)
    keep = os.environ.get("E2E_KEEP_STATE") == "1"
    _sweep_stale_sessions(log)
    state = Path(tempfile.mkdtemp(prefix=SESSION_PREFIX))
    local = LocalCluster(state_dir=state, bins=bins)
    try:
        try:
            local.start(log=log)
        except ClusterStartError as exc:
            # Free ports are picked before the components bind them; another process can win the race.
            log(f"cluster start failed, retrying once with fresh ports: {str(exc)[:2000]}")
            local.start(log=log)
        yield Cluster(
            kubeconfig=local.kubeconfig, bin_dir=bins, mode="local", local=local, helm_home=state / "helm"
        )
    finally:
        local.stop(remove=not keep)
        if keep:
            log(f"kept cluster state (logs, etcd data) in {state}")


@contextlib.contextmanager
def _kind_cluster(log: Callable[[str], None]) -> Iterator[Cluster]:
    kind = shutil.which("kind")
    if not kind:
        raise RuntimeError(
            "E2E_CLUSTER=kind needs `kind` on PATH (go install sigs.k8s.io/kind@v0.30.0) and Docker"
        )
    bins = build(log=log)  # kubectl and helm still come from the pinned build
    state = Path(tempfile.mkdtemp(prefix="paddle-sla-kind-"))
    name = f"paddle-sla-e2e-{uuid.uuid4().hex[:6]}"
    kubeconfig = state / "kubeconfig"
    try:
        subprocess.run(
            [kind, "create", "cluster", "--name", name, "--kubeconfig", str(kubeconfig), "--wait", "180s"],
            check=True,
            stdout=sys.__stderr__,
            stderr=subprocess.STDOUT,
        )
        c = Cluster(kubeconfig=kubeconfig, bin_dir=bins, mode="kind", helm_home=state / "helm")
        # Advertise fake GPUs the documented way (PATCH node status) so GPU pods schedule in kind too.
        for node in c.kubectl("get", "nodes", "-o", "name").stdout.split():
            patch = [
                {
                    "op": "add",
                    "path": "/status/capacity/nvidia.com~1gpu",
                    "value": FAKE_NODE_CAPACITY["nvidia.com/gpu"],
                }
            ]
            c.kubectl("patch", node, "--subresource=status", "--type=json", "-p", json.dumps(patch))
        yield c
    finally:
        subprocess.run([kind, "delete", "cluster", "--name", name], check=False, stdout=subprocess.DEVNULL)
        shutil.rmtree(state, ignore_errors=True)


@contextlib.contextmanager
def open_cluster(log: Callable[[str], None] = _stderr_log) -> Iterator[Cluster]:
    """The cluster the e2e suite runs against, chosen by environment (see the module docstring)."""
    _install_sigterm_handler()
    existing = os.environ.get("E2E_KUBECONFIG")
    mode = os.environ.get("E2E_CLUSTER", "local")
    if existing:
        bins = build(log=log)
        yield Cluster(kubeconfig=Path(existing).expanduser().resolve(), bin_dir=bins, mode="existing")
    elif mode == "kind":
        with _kind_cluster(log) as c:
            yield c
    elif mode == "local":
        with _local_cluster(log) as c:
            yield c
    else:
        raise ValueError(f"E2E_CLUSTER={mode!r}: expected 'local' or 'kind'")


# --------------------------------------------------------------------------- CLI


def _dev_state_dir(name: str) -> Path:
    return cache_dir() / "clusters" / name


def _attach_dev(name: str) -> LocalCluster | None:
    state = _dev_state_dir(name)
    try:
        return LocalCluster.attach(state)
    except (OSError, ValueError, KeyError):
        return None


def _print_env(local: LocalCluster) -> None:
    print(f"export KUBECONFIG={local.kubeconfig}")
    print(f"export PATH={local.bins}:$PATH")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m e2e.cluster build|up|down|status|env``."""
    parser = argparse.ArgumentParser(prog="python -m e2e.cluster", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build (or reuse) the pinned binaries")
    b.add_argument("--force", action="store_true", help="rebuild even when cached")
    for cmd, text in (
        ("up", "start a persistent local cluster"),
        ("down", "stop it and remove its state"),
        ("status", "show its processes and API health"),
        ("env", 'print shell exports for it (eval "$(python -m e2e.cluster env)")'),
    ):
        p = sub.add_parser(cmd, help=text)
        p.add_argument(
            "--name", default="dev", help="cluster name (state in $PADDLE_SLA_CACHE/clusters/NAME)"
        )
        if cmd == "up":
            p.add_argument("--nodes", type=int, default=2, help="number of fake kwok nodes")
    args = parser.parse_args(argv)

    if args.cmd == "build":
        d = build(force=args.force)
        print(d)
        return 0

    local = _attach_dev(args.name)
    if args.cmd == "up":
        if local and all(local.alive().values()) and local.alive():
            _stderr_log(f"cluster {args.name!r} already running")
        else:
            if local:
                local.stop()  # stale: some process died; start afresh
            shutil.rmtree(_dev_state_dir(args.name), ignore_errors=True)
            local = LocalCluster(
                state_dir=_dev_state_dir(args.name), bins=build(), persistent=True, nodes=args.nodes
            )
            _install_sigterm_handler()
            local.start()  # stops and cleans up by itself if interrupted
        _print_env(local)
        return 0
    if args.cmd == "down":
        if local:
            local.stop()
            _stderr_log(f"cluster {args.name!r} stopped")
        else:
            shutil.rmtree(_dev_state_dir(args.name), ignore_errors=True)
            _stderr_log(f"no cluster {args.name!r}")
        return 0
    if local is None:
        print(f"no cluster {args.name!r} (start one with `python -m e2e.cluster up`)", file=sys.stderr)
        return 1
    if args.cmd == "env":
        _print_env(local)
        return 0
    # status
    alive = local.alive()
    for name in LocalCluster.ORDER:
        print(f"{name:24} pid {local.pids.get(name, '-')!s:>8}  {'running' if alive.get(name) else 'DOWN'}")
    try:
        ok = local._healthy("kube-apiserver", "/readyz")
    except Exception as exc:  # status reports; it does not raise
        ok, why = False, str(exc)
    else:
        why = ""
    print(
        f"API https://127.0.0.1:{local.ports.get('kube-apiserver')}: {'ready' if ok else 'NOT ready ' + why}"
    )
    print(f"kubeconfig: {local.kubeconfig}")
    return 0 if ok and all(alive.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
