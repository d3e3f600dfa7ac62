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
    # reaches on the node link's host address), built only when a run needs a real node;
    # "gateway": the Gateway API router, built only when a selected test uses it (the longest
    # single build); "argocd": built only when a selected test is marked ``argocd``.
    group: str = "control"
    # Go build tags, e.g. Prometheus's ``remove_all_sd,enable_kubernetes_sd``.
    tags: str = ""
    # Files of the module copied beside the binary into ``<bin_dir>/<name>.files/`` (manifests the
    # harness applies with it), so a run needs neither Go nor the module cache.
    files: tuple[str, ...] = ()


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
    # The Gateway API router: Traefik's kubernetesGateway provider (e2e/cluster/gateway.py).
    Target(
        "traefik",
        "traefik",
        "github.com/traefik/traefik/v3",
        "github.com/traefik/traefik/v3/cmd/traefik",
        "gateway",
    ),
    # Argo CD (GitOps e2e, ``argocd.py``): one binary, its personality from ARGOCD_BINARY_NAME.
    # Group "argocd": built only when a selected test is marked ``argocd`` (about 3.5 min cold on a
    # quiet 2-core machine). core-install.yaml holds its CRDs, RBAC and ConfigMaps.
    Target(
        "argocd",
        "argocd",
        "github.com/argoproj/argo-cd/v3",
        "github.com/argoproj/argo-cd/v3/cmd",
        "argocd",
        files=("manifests/core-install.yaml",),
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
GATEWAY: tuple[str, ...] = ("gateway",)
ARGOCD: tuple[str, ...] = ("argocd",)
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
    entry = {
        "package": target.package,
        "version": _required_version(target.module_dir, target.module),
        "go": go,
        "recipe": BUILD_RECIPE,
        "tags": target.tags,
    }
    if target.files:
        entry["files"] = " ".join(target.files)
    return entry


def _stamp_matches(entry: dict[str, str], target: Target) -> bool:
    return (
        entry.get("version") == _required_version(target.module_dir, target.module)
        and entry.get("package") == target.package
        and entry.get("recipe") == BUILD_RECIPE
        and entry.get("tags", "") == target.tags
        and entry.get("files", "") == " ".join(target.files)
    )


def files_dir(target: Target, directory: Path | None = None) -> Path:
    """Where ``target.files`` are kept: ``<bin_dir>/<name>.files/`` (module paths preserved)."""
    return (directory or bin_dir()) / f"{target.name}.files"


def _files_present(target: Target, directory: Path) -> bool:
    return all((files_dir(target, directory) / rel).is_file() for rel in target.files)


def _copy_files(target: Target, directory: Path) -> None:
    """Copy ``target.files`` from the module (in the module cache after the build) beside the binary."""
    src = Path(_module_info(target.module_dir, target.module)["Dir"])
    dest = files_dir(target, directory)
    for rel in target.files:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        tmp = (dest / rel).with_name((dest / rel).name + ".tmp")
        shutil.copyfile(src / rel, tmp)
        os.replace(tmp, dest / rel)


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
    if target.module == "github.com/traefik/traefik/v3":
        # What Traefik's release build (goreleaser) sets: the version without "v", the release
        # codename from its release workflow, the module's date; `traefik version` shows them.
        # `go mod download` rather than `go list -m`: only it fetches the zip (and names its Dir) cold.
        info = json.loads(
            subprocess.run(
                ["go", "mod", "download", "-json", target.module],
                cwd=GO_DIR / target.module_dir,
                capture_output=True,
                text=True,
                check=True,
                env=dict(os.environ, GOFLAGS="-mod=readonly"),
            ).stdout
        )
        pkg = "github.com/traefik/traefik/v3/pkg/version"
        released = json.loads(Path(info["Info"]).read_text()).get("Time", "") if info.get("Info") else ""
        flags = [f"-X {pkg}.Version={info['Version'].lstrip('v')}", f"-X {pkg}.BuildDate={released}"]
        workflow = Path(info.get("Dir", "")) / ".github" / "workflows" / "release.yaml"
        m = re.search(r"^\s*CODENAME:\s*(\S+)", workflow.read_text(), re.MULTILINE) if workflow.is_file() else None
        if m:
            flags.append(f"-X {pkg}.Codename={m.group(1)}")
        return flags
    if target.module == "github.com/argoproj/argo-cd/v3":
        # What Argo CD's Makefile sets. The module zip carries no commit, so `argocd version` says
        # v3.2.11+unknown rather than a release build's bare tag; kubectlVersion is the client-go
        # its replace block pins (the Makefile's `go list -m k8s.io/client-go`).
        info = _module_info(target.module_dir, target.module)
        client_go = _module_info(target.module_dir, "k8s.io/client-go")
        kubectl = (client_go.get("Replace") or client_go)["Version"]
        pkg = "github.com/argoproj/argo-cd/v3/common"
        return [
            f"-X {pkg}.version={info['Version'].lstrip('v')}",
            f"-X {pkg}.buildDate={info.get('Time', '1970-01-01T00:00:00Z')}",
            f"-X {pkg}.gitTag={info['Version']}",
            f"-X {pkg}.gitTreeState=clean",
            f"-X {pkg}.kubectlVersion={kubectl}",
        ]
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
        (directory / t.name).is_file() and _stamp_matches(stamp.get(t.name, {}), t) and _files_present(t, directory)
        for t in targets(groups)
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
            if not force and (directory / t.name).is_file() and _stamp_matches(have, t) and _files_present(t, directory):
                log(f"[{i}/{len(wanted)}] {t.name} {want['version']}: cached")
                continue
            log(f"[{i}/{len(wanted)}] {t.name} {want['version']}: building {t.package}")
            t1 = time.monotonic()
            _go_build(t, directory / t.name, log)
            _copy_files(t, directory)
            stamp[t.name] = want
            # Written after each binary so an interrupted build keeps what it finished.
            (directory / "stamp.json").write_text(json.dumps(stamp, indent=2, sort_keys=True) + "\n")
            log(f"[{i}/{len(wanted)}] {t.name}: built in {time.monotonic() - t1:.0f}s")
        log(f"binaries ready in {time.monotonic() - t0:.0f}s")
    return directory
