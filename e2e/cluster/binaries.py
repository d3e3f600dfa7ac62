"""Pinned upstream binaries built once from Go modules (wrapper modules under ``e2e/go/``) into a cache."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

GO_DIR = Path(__file__).resolve().parent.parent / "go"


@dataclass(frozen=True)
class Target:
    """One binary: built from ``package`` inside the wrapper module ``e2e/go/<module_dir>``."""

    name: str
    module_dir: str
    module: str
    package: str
    # "control": the control plane and the tools every e2e run needs; "node": what runs only beside
    # a real node (its container runtime and kubelet; prometheus-adapter, which the API server
    # reaches on the node link's host address), built only when a run needs a real node.
    group: str = "control"
    # Go build tags, e.g. Prometheus's ``remove_all_sd,enable_kubernetes_sd``.
    tags: str = ""


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
    # Pod discovery through kubernetes_sd_configs (Debian's prometheus lacks it); the other
    # cloud discoveries are left out of the build.
    Target(
        "prometheus",
        "prometheus",
        "github.com/prometheus/prometheus",
        "github.com/prometheus/prometheus/cmd/prometheus",
        tags="remove_all_sd,enable_kubernetes_sd",
    ),
    # The real node: kubelet and kube-proxy from the same Kubernetes pin; containerd v2 (the
    # release line Kubernetes 1.34 supports) with its runc shim and ctr for image imports.
    Target("kubelet", "kube", "k8s.io/kubernetes", "k8s.io/kubernetes/cmd/kubelet", "node"),
    Target("kube-proxy", "kube", "k8s.io/kubernetes", "k8s.io/kubernetes/cmd/kube-proxy", "node"),
    Target(
        "containerd",
        "containerd",
        "github.com/containerd/containerd/v2",
        "github.com/containerd/containerd/v2/cmd/containerd",
        "node",
    ),
    Target(
        "containerd-shim-runc-v2",
        "containerd",
        "github.com/containerd/containerd/v2",
        "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2",
        "node",
    ),
    Target(
        "ctr",
        "containerd",
        "github.com/containerd/containerd/v2",
        "github.com/containerd/containerd/v2/cmd/ctr",
        "node",
    ),
    # The custom (and resource) metrics API the HPAs read, served from the e2e Prometheus
    # (e2e/cluster/adapter.py). Upstream builds it with a plain `go build`: no version -X flags.
    Target(
        "prometheus-adapter",
        "prometheus-adapter",
        "sigs.k8s.io/prometheus-adapter",
        "sigs.k8s.io/prometheus-adapter/cmd/adapter",
        "node",
    ),
)
CONTROL: tuple[str, ...] = ("control",)
WITH_NODE: tuple[str, ...] = ("control", "node")
BINARIES: tuple[str, ...] = tuple(t.name for t in TARGETS if t.group == "control")
NODE_BINARIES: tuple[str, ...] = tuple(t.name for t in TARGETS if t.group == "node")


def targets(groups: tuple[str, ...] = CONTROL) -> tuple[Target, ...]:
    """The targets of ``groups``, in build order."""
    return tuple(t for t in TARGETS if t.group in groups)


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
        "tags": target.tags,
    }


def _stamp_matches(entry: dict[str, str], target: Target) -> bool:
    return (
        entry.get("version") == _required_version(target.module_dir, target.module)
        and entry.get("package") == target.package
        and entry.get("recipe") == BUILD_RECIPE
        and entry.get("tags", "") == target.tags
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
    if target.module == "github.com/containerd/containerd/v2":
        version = _required_version(target.module_dir, target.module)
        pkg = "github.com/containerd/containerd/v2/version"
        # The CRI Version RPC reports this: the node shows containerd://2.4.2, not 2.4.2+unknown.
        return [f"-X {pkg}.Version={version.lstrip('v')}", f"-X {pkg}.Revision={version}"]
    if target.module == "github.com/prometheus/prometheus":
        # Module v0.316.0 is Prometheus 3.16.0; /api/v1/status/buildinfo reports it.
        minor, patch = _required_version(target.module_dir, target.module).lstrip("v").split(".")[1:3]
        version = f"{int(minor) // 100}.{int(minor) % 100}.{patch}"
        pkg = "github.com/prometheus/common/version"
        return [f"-X {pkg}.Version={version}", f"-X {pkg}.Branch=HEAD", f"-X {pkg}.Revision=v0.{minor}.{patch}"]
    return []  # etcd and kwok carry their versions in source; prometheus-adapter sets none upstream


def _read_stamp(directory: Path) -> dict[str, dict[str, str]]:
    try:
        return json.loads((directory / "stamp.json").read_text())
    except (OSError, ValueError):
        return {}


def binaries_ready(directory: Path | None = None, groups: tuple[str, ...] = CONTROL) -> bool:
    """True when every binary of ``groups`` exists and its stamp matches its pin (no Go needed)."""
    directory = directory or bin_dir()
    stamp = _read_stamp(directory)
    return all(
        (directory / t.name).is_file() and _stamp_matches(stamp.get(t.name, {}), t) for t in targets(groups)
    )


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
    tags = [f"-tags={target.tags}"] if target.tags else []
    cmd = ["go", "build", "-v", "-trimpath", *tags, f"-ldflags={ldflags}", "-o", str(tmp), target.package]
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


def build(
    force: bool = False, log: Callable[[str], None] = _stderr_log, groups: tuple[str, ...] = CONTROL
) -> Path:
    """Build (or reuse) every pinned binary of ``groups`` into ``bin_dir()``; returns that directory."""
    directory = bin_dir()
    if not force and binaries_ready(directory, groups):
        return directory
    wanted = targets(groups)
    with _file_lock(cache_dir() / "build.lock", "binary build", log):
        if not force and binaries_ready(directory, groups):  # another session finished it while we waited
            return directory
        if shutil.which("go") is None:
            raise RuntimeError(
                "the e2e binaries are missing and `go` is not on PATH: install Go >= 1.24 "
                f"(they are built from Go modules into {directory})"
            )
        directory.mkdir(parents=True, exist_ok=True)
        go = _go_version()
        t0 = time.monotonic()
        log(
            f"building pinned binaries into {directory} with {go} (cold: ~7 min here, longer on a busy machine)"
        )
        for i, t in enumerate(wanted, 1):
            want = _stamp_entry(t, go)
            stamp = _read_stamp(directory)  # re-read: builds of other groups may have added entries
            have = stamp.get(t.name, {})
            if not force and (directory / t.name).is_file() and _stamp_matches(have, t):
                log(f"[{i}/{len(wanted)}] {t.name} {want['version']}: cached")
                continue
            log(f"[{i}/{len(wanted)}] {t.name} {want['version']}: building {t.package}")
            t1 = time.monotonic()
            _go_build(t, directory / t.name, log)
            stamp[t.name] = want
            # Written after each binary so an interrupted build keeps what it finished.
            (directory / "stamp.json").write_text(json.dumps(stamp, indent=2, sort_keys=True) + "\n")
            log(f"[{i}/{len(wanted)}] {t.name}: built in {time.monotonic() - t1:.0f}s")
        log(f"binaries ready in {time.monotonic() - t0:.0f}s")
    return directory
