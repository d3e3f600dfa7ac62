"""What tests and tools get: a ``Cluster`` handle and ``open_cluster`` choosing local, kind or existing."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from .binaries import CONTROL, WITH_NODE, _stderr_log, build
from .control import FAKE_NODE_CAPACITY, ClusterStartError, LocalCluster
from .node import REAL_NODE_LABEL, REAL_NODE_TAINT


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
    def real_node(self) -> str | None:
        """The real node's name when this cluster has one (local mode with ``real_node``)."""
        node = self.local.node if self.local else None
        return node.name if node else None

    # What a pod spec needs to run on the real node (it is tainted so kwok-bound workloads stay off it).
    REAL_NODE_SELECTOR = {REAL_NODE_LABEL: "real"}
    REAL_NODE_TOLERATIONS = ({"key": REAL_NODE_TAINT["key"], "operator": "Exists", "effect": "NoSchedule"},)

    def place_on_real_node(self, namespace: str) -> None:
        """Every pod created in ``namespace`` from now on runs on the real node: the namespace-level
        node selector and default tolerations of the PodNodeSelector / PodTolerationRestriction
        admission plugins, so manifests (examples, charts) need no change."""
        selector = ",".join(f"{k}={v}" for k, v in self.REAL_NODE_SELECTOR.items())
        self.kubectl(
            "annotate",
            "--overwrite",
            "namespace",
            namespace,
            f"scheduler.alpha.kubernetes.io/node-selector={selector}",
            f"scheduler.alpha.kubernetes.io/defaultTolerations={json.dumps(list(self.REAL_NODE_TOLERATIONS))}",
        )

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

    def token_kubeconfig(
        self, account: str, namespace: str, path: Path, context_namespace: str | None = None
    ) -> tuple[Path, str]:
        """Write ``path``: a kubeconfig with a 48 h token of ServiceAccount ``namespace/account``
        (least privilege, not the admin certificate) for the same API server; returns it and the token."""
        token = self.kubectl("create", "token", account, "-n", namespace, "--duration=48h").stdout.strip()
        admin = yaml.safe_load(self.kubeconfig.read_text())
        context = {"cluster": "e2e", "user": account, **({"namespace": context_namespace} if context_namespace else {})}
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "e2e", "cluster": admin["clusters"][0]["cluster"]}],
            "users": [{"name": account, "user": {"token": token}}],
            "contexts": [{"name": "e2e", "context": context}],
            "current-context": "e2e",
        }
        path.write_text(yaml.safe_dump(doc))
        path.chmod(0o600)
        return path, token


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


def node_images(log: Callable[[str], None]) -> list[tuple[Path, str]]:
    """The images a real node needs, built here with buildah (``e2e/images.py``): pause + ours."""
    from e2e.images import ensure_images

    return [(img.archive, img.ref) for img in ensure_images(log=log)]


@contextlib.contextmanager
def _local_cluster(
    log: Callable[[str], None], real_node: bool = False, images: Sequence[tuple[Path, str]] | None = None
) -> Iterator[Cluster]:
    bins = build(log=log, groups=WITH_NODE if real_node else CONTROL)
    if images is None:
        images = node_images(log) if real_node else []
    keep = os.environ.get("E2E_KEEP_STATE") == "1"
    _sweep_stale_sessions(log)
    state = Path(tempfile.mkdtemp(prefix=SESSION_PREFIX))
    local = LocalCluster(state_dir=state, bins=bins, real_node=real_node, node_images=images)
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
def open_cluster(
    log: Callable[[str], None] = _stderr_log,
    real_node: bool = False,
    images: Sequence[tuple[Path, str]] | None = None,
) -> Iterator[Cluster]:
    """The cluster the e2e suite runs against, chosen by environment (see the module docstring).

    ``real_node``: the local cluster also gets a real node (containerd + kubelet) for real pods.
    ``images``: the node's images when the caller has them already (else built or found here).
    """
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
        with _local_cluster(log, real_node=real_node, images=images) as c:
            yield c
    else:
        raise ValueError(f"E2E_CLUSTER={mode!r}: expected 'local' or 'kind'")
