"""Argo CD out of cluster against the local control plane, as its developer guide runs it.

The pinned build (``binaries.py``, group ``argocd``) is one binary whose personality comes from
``ARGOCD_BINARY_NAME``. Three processes run on the host, on loopback ports of their own:

- ``redis-server`` (Debian's), with a random password, nothing saved to disk;
- the repo server, with no Kubernetes credentials at all (it only renders Git content; ``helm``
  and ``git`` come from PATH, as in Argo CD's image);
- the application controller with ``ARGOCD_FAKE_IN_CLUSTER=true``, so the in-cluster destination
  ``https://kubernetes.default.svc`` is the kubeconfig it is given: a token of its own ServiceAccount
  ``argocd-application-controller``, bound by Argo CD's own Role and ClusterRole (RBAC as in a real
  install, not the admin certificate).

From the module's ``manifests/core-install.yaml`` only the CRDs, the controller's ServiceAccount and
RBAC, the ConfigMaps and ``argocd-secret`` are applied; its Deployments, StatefulSet, Services and
NetworkPolicies are not (their images cannot be pulled here; the processes above stand in for
them). The API server component (UI, webhooks) is not run; it is also what creates the ``default``
AppProject, so that is created here as the API server would.

A Git push reaches Argo CD through its webhook, which refreshes the Applications; ``refresh()`` does
what the webhook does (the ``argocd.argoproj.io/refresh`` annotation).

``GitRepo`` is a bare repository on disk served by ``file://`` URL (as Argo CD's own e2e fixtures
do) with a work tree to commit from.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .binaries import ARGOCD, TARGETS, _stderr_log, build, files_dir
from .procs import ClusterStartError, _die_with_parent, _free_port, _tail

if TYPE_CHECKING:
    from .handle import Cluster

NAMESPACE = "argocd"
CONTROLLER = "argocd-application-controller"
REPO_SERVER = "argocd-repo-server"
_TARGET = next(t for t in TARGETS if t.group in ARGOCD)
# The parts of core-install.yaml that run here: (kind, name); None = every object of the kind.
_KEEP: dict[str, set[str] | None] = {
    "CustomResourceDefinition": None,
    "ConfigMap": None,
    "Secret": {"argocd-secret"},
    "ServiceAccount": {CONTROLLER},
    "Role": {CONTROLLER},
    "RoleBinding": {CONTROLLER},
    "ClusterRole": {CONTROLLER},
    "ClusterRoleBinding": {CONTROLLER},
}
APPLICATIONS = "/apis/argoproj.io/v1alpha1/namespaces/argocd/applications"


def core_install(directory: Path | None = None) -> list[dict[str, Any]]:
    """The objects of the pinned ``manifests/core-install.yaml`` that this harness applies."""
    path = files_dir(_TARGET, directory) / "manifests" / "core-install.yaml"
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    keep = []
    for d in docs:
        names = _KEEP.get(d["kind"], set())
        if names is None or d["metadata"]["name"] in (names or ()):
            keep.append(d)
    return keep


def default_project() -> dict[str, Any]:
    """The ``default`` AppProject exactly as argocd-server creates it at start-up."""
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "AppProject",
        "metadata": {"name": "default", "namespace": NAMESPACE},
        "spec": {
            "sourceRepos": ["*"],
            "destinations": [{"server": "*", "namespace": "*"}],
            "clusterResourceWhitelist": [{"group": "*", "kind": "*"}],
        },
    }


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class GitRepo:
    """A bare repository at ``root/repo.git`` (its ``file://`` URL is what Argo CD reads) and a work
    tree at ``root/work`` that ``commit`` pushes from, on branch ``main``."""

    root: Path

    @property
    def bare(self) -> Path:
        return self.root / "repo.git"

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def url(self) -> str:
        return f"file://{self.bare}"

    def git(self, *args: str, cwd: Path | None = None) -> str:
        env = dict(
            os.environ,
            GIT_AUTHOR_NAME="paddle-sla e2e",
            GIT_AUTHOR_EMAIL="e2e@paddle-sla.invalid",
            GIT_COMMITTER_NAME="paddle-sla e2e",
            GIT_COMMITTER_EMAIL="e2e@paddle-sla.invalid",
            GIT_CONFIG_NOSYSTEM="1",
            HOME=str(self.root),  # no user config leaks in
        )
        proc = subprocess.run(
            ["git", *args], cwd=cwd or self.work, env=env, capture_output=True, text=True, timeout=60
        )
        if proc.returncode != 0:
            raise RuntimeError(f"git {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
        return proc.stdout.strip()

    def init(self) -> GitRepo:
        self.root.mkdir(parents=True, exist_ok=True)
        self.git("init", "--quiet", "--bare", "--initial-branch=main", str(self.bare), cwd=self.root)
        self.git("init", "--quiet", "--initial-branch=main", str(self.work), cwd=self.root)
        self.git("remote", "add", "origin", self.url)
        return self

    def copy_in(self, src: Path, rel: str) -> None:
        """Copy the tree ``src`` to ``rel`` in the work tree (caches left out)."""
        shutil.copytree(
            src, self.work / rel, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )

    def commit(self, message: str) -> str:
        """Commit everything in the work tree and push it to ``main``; returns the commit SHA."""
        self.git("add", "--all")
        self.git("commit", "--quiet", "--allow-empty", "-m", message)
        self.git("push", "--quiet", "origin", "HEAD:main")
        return self.git("rev-parse", "HEAD")

    def revert(self, message: str) -> str:
        """``git revert HEAD`` and push; returns the new SHA."""
        self.git("revert", "--no-edit", "HEAD")
        self.git("commit", "--quiet", "--amend", "-m", message)
        self.git("push", "--quiet", "origin", "HEAD:main")
        return self.git("rev-parse", "HEAD")


@dataclass
class ArgoCD:
    """Redis, the repo server and the application controller for ``cluster``; ``start`` / ``stop``."""

    cluster: Cluster
    workdir: Path
    log: Callable[[str], None] = _stderr_log
    ports: dict[str, int] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    _redis_password: str = field(default_factory=lambda: secrets.token_hex(16), repr=False)

    @property
    def binary(self) -> Path:
        return self.bins / "argocd"

    @property
    def bins(self) -> Path:
        return self.cluster.bin_dir

    @property
    def logs(self) -> Path:
        return self.workdir / "logs"

    # -- install -----------------------------------------------------------------------

    def install(self, argocd_cm_patch: Path) -> None:
        """Argo CD's CRDs, RBAC and settings; then ``argocd_cm_patch`` merged into ``argocd-cm`` the
        way ``examples/argocd/README.md`` tells users to (``kubectl patch --type merge --patch-file``)."""
        c = self.cluster
        if c.kubectl("get", "namespace", NAMESPACE, check=False).returncode != 0:
            c.kubectl("create", "namespace", NAMESPACE)
        objs = core_install(self.bins)
        crds = [o for o in objs if o["kind"] == "CustomResourceDefinition"]
        rest = [o for o in objs if o["kind"] != "CustomResourceDefinition"]
        # Server-side: the CRDs are too large for client-side apply's last-applied annotation.
        c.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=_list(crds), timeout=120)
        self._wait_served([crd["spec"]["names"]["plural"] for crd in crds])
        c.kubectl("apply", "--server-side", "--force-conflicts", "-n", NAMESPACE, "-f", "-", input=_list(rest))
        c.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=_list([default_project()]))
        c.kubectl("-n", NAMESPACE, "patch", "configmap", "argocd-cm", "--type", "merge",
                  "--patch-file", str(argocd_cm_patch))  # fmt: skip

    def _wait_served(self, plurals: list[str], timeout: float = 90) -> None:
        """Until API discovery serves the CRDs' kinds (Established alone comes a little earlier;
        ``kubectl wait`` errors while a new CRD has no conditions yet)."""
        deadline = time.monotonic() + timeout
        while True:
            out = self.cluster.kubectl("api-resources", "--api-group=argoproj.io", "-o", "name", check=False).stdout
            missing = [p for p in plurals if f"{p}.argoproj.io" not in out.split()]
            if not missing:
                return
            if time.monotonic() > deadline:
                raise ClusterStartError(f"Argo CD's CRDs not served after {timeout:.0f}s: {missing}")
            time.sleep(1)

    def _controller_kubeconfig(self) -> Path:
        """A kubeconfig with a token of the controller's ServiceAccount, namespace ``argocd``."""
        path = self.workdir / "controller.kubeconfig"
        return self.cluster.token_kubeconfig(CONTROLLER, NAMESPACE, path, context_namespace=NAMESPACE)[0]

    # -- processes ---------------------------------------------------------------------

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str]) -> None:
        with open(self.logs / f"{name}.log", "ab") as fh:
            self.procs[name] = subprocess.Popen(
                cmd,
                cwd=self.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    def _wait_port(self, name: str, port: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not _port_open(port):
            proc = self.procs[name]
            if proc.poll() is not None or time.monotonic() > deadline:
                raise ClusterStartError(
                    f"{name} did not listen on 127.0.0.1:{port} (exit {proc.poll()}); log:\n"
                    f"{_tail(self.logs / f'{name}.log')}"
                )
            time.sleep(0.25)

    def _base_env(self) -> dict[str, str]:
        home = self.workdir / "home"
        data = self.workdir / "data"
        for d in (home, data / "tls", data / "ssh", data / "gpg", self.workdir / "tmp"):
            d.mkdir(parents=True, exist_ok=True)
        env = {
            "PATH": f"{self.bins}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",  # helm, git
            "HOME": str(home),
            "TMPDIR": str(self.workdir / "tmp"),
            "REDIS_PASSWORD": self._redis_password,
            # Paths the images mount from ConfigMaps (/app/config/...); empty here.
            "ARGOCD_TLS_DATA_PATH": str(data / "tls"),
            "ARGOCD_SSH_DATA_PATH": str(data / "ssh"),
            "ARGOCD_GNUPGHOME": str(data / "gpg"),
            "ARGOCD_GPG_ENABLED": "false",
            "ARGOCD_FAKE_IN_CLUSTER": "true",
        }
        return env

    def start(self, timeout: float = 120) -> ArgoCD:
        if not self.binary.is_file():
            build(groups=ARGOCD, log=self.log)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        redis = shutil.which("redis-server")
        if redis is None:
            raise ClusterStartError("redis-server is missing: `make system-deps` installs it (Debian redis-server)")
        self.ports = {n: _free_port() for n in ("redis", "repo-server", "repo-metrics", "controller-metrics")}
        redis_addr = f"127.0.0.1:{self.ports['redis']}"
        try:
            self._spawn(
                "redis",
                [redis, "--bind", "127.0.0.1", "--port", str(self.ports["redis"]), "--save", "",
                 "--appendonly", "no", "--requirepass", self._redis_password, "--dir", str(self.workdir)],
                {"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            )  # fmt: skip
            self._wait_port("redis", self.ports["redis"], timeout)
            base = self._base_env()
            self._spawn(
                "repo-server",
                [str(self.binary), "--address", "127.0.0.1", "--port", str(self.ports["repo-server"]),
                 "--metrics-address", "127.0.0.1", "--metrics-port", str(self.ports["repo-metrics"]),
                 "--disable-tls", "--redis", redis_addr, "--parallelismlimit", "2",
                 "--loglevel", "info", "--logformat", "text"],
                {**base, "ARGOCD_BINARY_NAME": REPO_SERVER},
            )  # fmt: skip
            self._wait_port("repo-server", self.ports["repo-server"], timeout)
            kubeconfig = self._controller_kubeconfig()
            self._spawn(
                "application-controller",
                [str(self.binary), "--repo-server", f"127.0.0.1:{self.ports['repo-server']}",
                 "--repo-server-plaintext", "--redis", redis_addr,
                 "--metrics-port", str(self.ports["controller-metrics"]),
                 "--status-processors", "4", "--operation-processors", "2",
                 # Each resource's health in the Application's status (v3 keeps it only in redis by
                 # default), so tests and `kubectl get application -o yaml` show our check's verdict.
                 "--persist-resource-health",
                 # Refresh every Application each minute (default 2-3 min): Argo CD v3.2 can keep the
                 # health of a CRD it just created stale ("Status conditions not found") until the
                 # next periodic refresh, which holds the next wave back that long.
                 "--app-resync", "60", "--app-resync-jitter", "10",
                 "--loglevel", "info", "--logformat", "text"],
                {**base, "ARGOCD_BINARY_NAME": CONTROLLER, "KUBECONFIG": str(kubeconfig)},
            )  # fmt: skip
            self._wait_port("application-controller", self.ports["controller-metrics"], timeout)
        except BaseException:
            self.stop()
            raise
        self.log(f"Argo CD running: redis {redis_addr}, repo server :{self.ports['repo-server']}, controller")
        return self

    def alive(self) -> dict[str, bool]:
        return {name: proc.poll() is None for name, proc in self.procs.items()}

    def stop(self, grace: float = 10) -> None:
        """The controller first (no more syncs), then the repo server and redis."""
        for name in ("application-controller", "repo-server", "redis"):
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 15)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, 9)
                proc.wait(10)
        self.procs.clear()

    # -- what tests read ---------------------------------------------------------------

    def applications(self) -> dict[str, dict[str, Any]]:
        """Every Application in ``argocd`` by name (one API request, no kubectl process)."""
        if self.cluster.local is not None:
            items = self.cluster.local.api(APPLICATIONS)["items"]
        else:
            items = self.cluster.get("applications", "-n", NAMESPACE)["items"]
        return {a["metadata"]["name"]: a for a in items}

    def refresh(self, names: Iterable[str] | None = None) -> None:
        """What Argo CD's Git webhook does after a push: refresh the Applications now."""
        for name in names or self.applications():
            self.cluster.kubectl("annotate", "--overwrite", "-n", NAMESPACE, "application", name,
                                 "argocd.argoproj.io/refresh=normal")  # fmt: skip

    def dump(self) -> str:
        """Each Application's sync, health and last operation, plus the controller's log tail."""
        lines = []
        try:
            for name, app in sorted(self.applications().items()):
                st = app.get("status") or {}
                op = st.get("operationState") or {}
                lines.append(
                    f"{name}: sync={st.get('sync', {}).get('status')} rev={str(st.get('sync', {}).get('revision'))[:8]} "
                    f"health={st.get('health', {}).get('status')} ({st.get('health', {}).get('message', '')}) "
                    f"op={op.get('phase')}: {op.get('message', '')[:600]}"
                )
                for cond in st.get("conditions") or []:
                    lines.append(f"  condition {cond.get('type')}: {cond.get('message', '')[:400]}")
                for r in st.get("resources") or []:
                    lines.append(
                        f"  {r.get('kind')} {r.get('namespace', '')}/{r.get('name')}: {r.get('status')} "
                        f"{(r.get('health') or {}).get('status', '')} {(r.get('health') or {}).get('message', '')[:200]}"
                    )
        except Exception as exc:  # the dump must not hide the original failure
            lines.append(f"(applications unavailable: {exc!r})")
        lines.append(f"processes alive: {self.alive()}")
        for name in ("application-controller", "repo-server"):
            lines.append(f"---- {name} log ----\n{_tail(self.logs / f'{name}.log', 40)}")
        return "\n".join(lines)


def _list(items: list[dict[str, Any]]) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
