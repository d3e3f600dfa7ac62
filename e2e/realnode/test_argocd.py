"""GitOps for real: Argo CD v3.2 syncs ``examples/argocd`` from a Git repository onto the real node
and judges each PaddleModelService with our ``health.lua`` (``e2e/cluster/argocd.py`` runs it).

The Git repository (``file://``, branch ``main``) holds ``crds/``, ``charts/paddle-operator/``,
``examples/argocd/`` and ``examples/01-minimal/`` as in this checkout, with what must differ here
(``examples/argocd/README.md`` lists it): the repoURL, the operator's Prometheus (the e2e one, which
discovers the real pods) and analysis window, and ``01-minimal`` fitted to one shared 2-core node
with a short canary and the runtime's test-only fault file. The namespaces exist beforehand with
the annotations that put their pods on the real node.

One Argo CD and one app of apps serve the whole module, in order: the first sync (waves, health),
3 minutes without a fight, a rejected spec, then two tag changes committed to Git (a canary
promoted, a failing canary rolled back). Each Application's sync and health are polled every second
throughout; the figures go to ``benchmarks/results/realnode.json`` under ``argocd ...``.
"""

from __future__ import annotations

import calendar
import copy
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.cluster import Cluster
from e2e.cluster.argocd import NAMESPACE, ArgoCD, GitRepo
from e2e.cluster.prometheus import Prometheus
from e2e.demo import condition, infer, restricted_namespace, text_image
from e2e.realnode.pods import LABEL, MODEL, ROOT, Load, record
from e2e.util import dump_namespace, service_address, wait_for

pytestmark = [pytest.mark.realnode, pytest.mark.argocd]

EXAMPLE = ROOT / "examples" / "argocd"
UPSTREAM_REPO = "https://github.com/paddle-sla/paddle-sla-operator.git"
TREES = ("crds", "charts/paddle-operator", "examples/argocd", "examples/01-minimal")
MODEL_FILE = "examples/01-minimal/paddlemodelservice.yaml"
OPERATOR_NS, MODELS_NS = "paddle-system", "ml-serving"
APPS = ("paddle-sla", "paddle-sla-crds", "paddle-operator", "paddle-models")
PMS_NAME = "ppocr-rec"
CRD = "paddlemodelservices.serving.paddlesla.io"
FAULTS = "/tmp/paddle-runtime-faults/faults.yaml"
BASE_TAG = "0.1.0-cpu"
RUNTIME = "ghcr.io/paddle-sla/paddle-runtime"


def _epoch(ts: str | None) -> float | None:
    """An RFC 3339 API timestamp (second resolution) as epoch seconds."""
    if not ts:
        return None
    return float(calendar.timegm(time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S")))


def _iso(t: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 10)}"


# ---- the Git repository -----------------------------------------------------------------------


def fit_this_node(doc: dict[str, Any]) -> dict[str, Any]:
    """``01-minimal`` as it can run here: requests scaled to one shared 2-core node (a canary pod must
    fit beside the stable one), a short canary judged by the e2e Prometheus (a generous latency SLA:
    the machine is shared; the broken canary fails on errors), and the test-only fault file."""
    doc = copy.deepcopy(doc)
    spec = doc["spec"]
    inf = spec["inference"]
    inf["cpuThreads"] = 1
    inf["resources"]["requests"] = {"cpu": "100m", "memory": "256Mi"}
    spec["sla"]["latencyP99Ms"] = 5000
    spec["rollout"] = {"steps": [50, 100], "intervalSeconds": 10, "analysis": {"minRequests": 5}}
    spec["env"] = [{"name": "PADDLE_RUNTIME_FAULT_INJECTION_FILE", "value": FAULTS}]
    return doc


def populate(repo: GitRepo, prometheus_url: str) -> dict[str, Any]:
    """The first commit: the trees as in this checkout plus the differences the module docstring
    names; returns what was changed, for the record."""
    for rel in TREES:
        repo.copy_in(ROOT / rel, rel)
    argo = repo.work / "examples" / "argocd"
    pointed = 0
    for path in [argo / "root.yaml", *sorted((argo / "apps").glob("*.yaml"))]:
        text = path.read_text()
        pointed += text.count(UPSTREAM_REPO)
        path.write_text(text.replace(UPSTREAM_REPO, repo.url))
    assert pointed == 4, f"expected 4 repoURLs to point at the local repository, found {pointed}"
    op_path = argo / "apps" / "operator.yaml"
    op = yaml.safe_load(op_path.read_text())
    settings = {"prometheus_url": prometheus_url, "analysis_min_window_s": 10}
    op["spec"]["source"]["helm"]["valuesObject"]["settings"] = settings
    op_path.write_text(yaml.safe_dump(op, sort_keys=False))
    model_path = repo.work / MODEL_FILE
    fitted = fit_this_node(yaml.safe_load(model_path.read_text()))
    model_path.write_text(yaml.safe_dump(fitted, sort_keys=False))
    spec = fitted["spec"]
    return {
        "repoURL": repo.url,
        "operator valuesObject.settings": settings,
        MODEL_FILE: {
            "inference.cpuThreads": spec["inference"]["cpuThreads"],
            "inference.resources.requests": spec["inference"]["resources"]["requests"],
            "sla.latencyP99Ms": spec["sla"]["latencyP99Ms"],
            "rollout": spec["rollout"],
            "env": spec["env"],
        },
    }


def resource_health(app: dict[str, Any], kind: str = "PaddleModelService") -> dict[str, Any]:
    """The health Argo CD gives one resource of ``app`` (``--persist-resource-health`` keeps it there)."""
    for r in (app.get("status") or {}).get("resources") or []:
        if r.get("kind") == kind:
            return r.get("health") or {}
    return {}


# ---- watching the Applications --------------------------------------------------------------------


@dataclass
class AppRecorder:
    """Polls every Application once a second; keeps each one's (time, sync, health, message, op phase)
    whenever one of them changes, and the operations (sync attempts) seen."""

    argocd: ArgoCD
    interval: float = 1.0
    rows: dict[str, list[tuple[float, str, str, str, str]]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _poll(self) -> None:
        apps = self.argocd.applications()
        now = time.time()
        with self._lock:
            for name, app in apps.items():
                st = app.get("status") or {}
                health = (st.get("health") or {}).get("status", "")
                # Why: the message of the resource whose health is the app's (the worst one).
                why = next(
                    (
                        f"{r['kind']} {r['name']}: {(r.get('health') or {}).get('message', '')}"
                        for r in st.get("resources") or []
                        if (r.get("health") or {}).get("status") == health and health != "Healthy"
                    ),
                    (st.get("health") or {}).get("message", ""),
                )
                row = (
                    now,
                    (st.get("sync") or {}).get("status", ""),
                    health,
                    why[:300],
                    (st.get("operationState") or {}).get("phase", ""),
                )
                seen = self.rows.setdefault(name, [])
                if not seen or seen[-1][1:] != row[1:]:
                    seen.append(row)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._poll()
            except Exception as exc:  # the API server may be slow for a moment; keep polling
                self.errors.append(f"{time.time():.0f} {exc!r}")
            self._stop.wait(self.interval)

    def start(self) -> AppRecorder:
        self._thread = threading.Thread(target=self._run, name="argocd-recorder", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def of(self, name: str, since: float = 0.0) -> list[tuple[float, str, str, str, str]]:
        with self._lock:
            rows = list(self.rows.get(name, []))
        # The state in force at ``since`` is the last row before it.
        before = [r for r in rows if r[0] < since]
        return before[-1:] + [r for r in rows if r[0] >= since]

    def seen(self, name: str, health: str, since: float, timeout: float = 30) -> list[tuple[float, str, str, str, str]]:
        """The rows of ``name`` since ``since`` once the recorder has seen ``health`` last: a test that
        saw it by its own read may be up to one poll ahead of the recorder (seen in CI)."""
        return wait_for(
            lambda: (rows := self.of(name, since)) and rows[-1][2] == health and rows,
            timeout, f"the recorder seeing {name} {health}", interval=0.5,
        )  # fmt: skip

    def stamped(self, name: str, since: float = 0.0) -> list[str]:
        return [
            f"{_iso(t)} {sync}/{health}" + (f" ({msg[:120]})" if msg and health != "Healthy" else "")
            for t, sync, health, msg, _ in self.of(name, since)
        ]


# ---- the module's Argo CD and app of apps ---------------------------------------------------------


@dataclass
class GitOps:
    cluster: Cluster
    argocd: ArgoCD
    repo: GitRepo
    recorder: AppRecorder
    prometheus: Prometheus
    adapted: dict[str, Any]
    applied_at: float = 0.0
    first_sync: dict[str, Any] = field(default_factory=dict)

    def dump(self) -> str:
        op_log = self.cluster.kubectl(
            "logs", "-n", OPERATOR_NS, "deploy/paddle-operator", "--tail=60", check=False
        ).stdout
        return "\n".join([
            self.argocd.dump(),
            dump_namespace(self.cluster, MODELS_NS, kinds=("all", "events", "horizontalpodautoscalers"))(),
            "---- pms ----", self.cluster.kubectl("get", "pms", "-n", MODELS_NS, "-o", "yaml", check=False).stdout,
            "---- operator log ----", op_log,
        ])  # fmt: skip

    def app(self, name: str) -> dict[str, Any]:
        return self.argocd.applications()[name]

    def pms(self) -> dict[str, Any]:
        return self.cluster.get("pms", PMS_NAME, "-n", MODELS_NS)

    def wait_apps(self, what: str, ok: Callable[[dict[str, dict[str, Any]]], bool], timeout: float) -> None:
        wait_for(lambda: ok(self.argocd.applications()), timeout, what, dump=self.dump, interval=2)

    def all_synced_healthy(self, apps: dict[str, dict[str, Any]], revision: str | None = None) -> bool:
        if set(APPS) - set(apps):
            return False
        for a in apps.values():
            st = a.get("status") or {}
            if (st.get("sync") or {}).get("status") != "Synced" or (st.get("health") or {}).get("status") != "Healthy":
                return False
        return revision is None or all((a["status"]["sync"].get("revision") == revision) for a in apps.values())

    def commit_model(self, change: Callable[[dict[str, Any]], None], message: str) -> tuple[str, float]:
        """Edit the model service in Git, push, and refresh the Applications (the webhook's job)."""
        path = self.repo.work / MODEL_FILE
        doc = yaml.safe_load(path.read_text())
        change(doc)
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        sha = self.repo.commit(message)
        t = time.time()
        self.argocd.refresh()
        return sha, t

    def pods(self, track: str | None = None) -> list[dict[str, Any]]:
        selector = f"{LABEL}={PMS_NAME}" + (f",serving.paddlesla.io/track={track}" if track else "")
        return [
            p
            for p in self.cluster.get("pods", "-n", MODELS_NS, "-l", selector)["items"]
            if not p["metadata"].get("deletionTimestamp")
        ]

    def address(self) -> str:
        return service_address(self.cluster, MODELS_NS, PMS_NAME)


def _first_sync_facts(g: GitOps) -> dict[str, Any]:
    """Server-side timestamps of the first sync, for the order of the waves and the health."""
    c = g.cluster
    apps = g.argocd.applications()
    facts: dict[str, Any] = {"apps": {}}
    for name in APPS:
        a = apps[name]
        hist = (a.get("status") or {}).get("history") or [{}]
        facts["apps"][name] = {
            "created": a["metadata"]["creationTimestamp"],
            "wave": (a["metadata"].get("annotations") or {}).get("argocd.argoproj.io/sync-wave", "0"),
            "sync_started": hist[0].get("deployStartedAt"),
            "synced": hist[0].get("deployedAt"),
            "revision": hist[0].get("revision"),
            "sync_result": [
                f"{r.get('kind')} {r.get('name')}: {r.get('status')} {r.get('message', '')[:80]}"
                for r in ((a["status"].get("operationState") or {}).get("syncResult") or {}).get("resources") or []
            ],
        }
    op = apps["paddle-sla"]["status"].get("operationState") or {}
    facts["root_operation"] = {k: op.get(k) for k in ("phase", "message", "retryCount", "startedAt", "finishedAt")}
    crd = c.get("crd", CRD, "--show-managed-fields")
    facts["crd"] = {
        "created": crd["metadata"]["creationTimestamp"],
        "established": condition(crd, "Established").get("lastTransitionTime"),
        "argocd_apply": [
            m.get("time") for m in crd["metadata"].get("managedFields") or [] if m.get("manager") == "argocd-controller"
        ],
    }
    dep = c.get("deployment", "paddle-operator", "-n", OPERATOR_NS)
    facts["operator_deployment"] = {
        "created": dep["metadata"]["creationTimestamp"],
        "available": condition(dep, "Available").get("lastTransitionTime"),
    }
    pms = g.pms()
    facts["pms"] = {
        "created": pms["metadata"]["creationTimestamp"],
        "ready": condition(pms, "Ready").get("lastTransitionTime"),
        "ready_message": condition(pms, "Ready").get("message"),
    }
    (pod,) = g.pods()
    facts["pod"] = {
        "name": pod["metadata"]["name"],
        "node": pod["spec"]["nodeName"],
        "created": pod["metadata"]["creationTimestamp"],
        "ready": condition(pod, "Ready").get("lastTransitionTime"),
    }
    events = c.get("events", "-n", NAMESPACE)["items"]
    facts["events"] = [
        f"{e.get('lastTimestamp') or e.get('eventTime')} {e['involvedObject']['name']} {e.get('reason')}: "
        f"{e.get('message', '')[:140]}"
        for e in sorted(events, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
    ]
    return facts


def _cleanup(cluster: Cluster, argocd: ArgoCD, cluster_scoped: list[tuple[str, str]]) -> None:
    argocd.stop()  # no more syncs or self-heals from here on
    # The operator still runs: it removes its finalizer from the model service.
    cluster.kubectl("delete", "pms", "--all", "-n", MODELS_NS, "--timeout=120s", check=False, timeout=150)
    cluster.kubectl("delete", "applications", "--all", "-n", NAMESPACE, "--wait=false", check=False)
    for ns in (MODELS_NS, OPERATOR_NS, NAMESPACE):
        cluster.kubectl("delete", "namespace", ns, "--wait=false", "--ignore-not-found", check=False)
    for kind, name in [*cluster_scoped, ("clusterrolebinding", "argocd-application-controller"),
                       ("clusterrole", "argocd-application-controller")]:  # fmt: skip
        cluster.kubectl("delete", kind, name, "--ignore-not-found", check=False)


def _fresh_crd(cluster: Cluster) -> None:
    """Remove the CRD earlier e2e modules of the session installed, so the first sync is a fresh
    install as users have it: with an identical CRD already there, Argo CD finds the CRD's
    Application Synced, runs no sync operation at all, and wave -2 shows nothing to check (seen in
    CI). Model services left by earlier modules lose their finalizers first: their operators are
    gone, and the CRD's deletion waits for every object of its kind."""
    if cluster.kubectl("get", "crd", CRD, check=False).returncode != 0:
        return
    for obj in cluster.get("pms", "-A")["items"]:
        meta = obj["metadata"]
        cluster.kubectl("patch", "pms", meta["name"], "-n", meta["namespace"], "--type=merge",
                        "-p", '{"metadata":{"finalizers":null}}', check=False)  # fmt: skip
    cluster.kubectl("delete", "crd", CRD, "--timeout=120s", check=False, timeout=150)
    wait_for(lambda: cluster.kubectl("get", "crd", CRD, check=False).returncode != 0, 60, "the old CRD gone")


@pytest.fixture(scope="module")
def gitops(
    cluster: Cluster, real_node: str, prometheus: Prometheus, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GitOps]:
    _fresh_crd(cluster)
    for ns in (OPERATOR_NS, MODELS_NS):
        restricted_namespace(cluster, ns)  # Pod Security "restricted", pods on the real node
    work = tmp_path_factory.mktemp("argocd")
    repo = GitRepo(work / "git").init()
    adapted = populate(repo, prometheus.url)
    sha = repo.commit("paddle-sla app of apps (examples/argocd) for the e2e real node")
    argocd = ArgoCD(cluster, work / "argocd")
    cluster_scoped: list[tuple[str, str]] = []
    recorder = AppRecorder(argocd)
    try:
        # README step 1: the health checks merged into argocd-cm, exactly as users are told.
        argocd.install(EXAMPLE / "argocd-cm.yaml")
        argocd.start()
        recorder.start()
        g = GitOps(cluster, argocd, repo, recorder, prometheus, adapted)
        # README step 2: the one Application users apply.
        g.applied_at = time.time()
        cluster.kubectl("apply", "-n", NAMESPACE, "-f", str(repo.work / "examples" / "argocd" / "root.yaml"))
        g.wait_apps(
            "the app of apps and its three children Synced and Healthy",
            lambda apps: g.all_synced_healthy(apps, sha),
            720,
        )
        synced_s = time.time() - g.applied_at
        op_app = g.app("paddle-operator")
        cluster_scoped = [
            (r["kind"].lower(), r["name"]) for r in op_app["status"].get("resources") or [] if not r.get("namespace")
        ]
        g.first_sync = _first_sync_facts(g)
        g.first_sync["synced_and_healthy_s"] = round(synced_s, 1)
        yield g
    finally:
        recorder.stop()
        _cleanup(cluster, argocd, cluster_scoped)


# ---- tests ------------------------------------------------------------------------------------------


# The module's setup (cluster and real node when first, Argo CD, the first sync) counts against this one.
@pytest.mark.timeout(1800)
def test_argocd_syncs_the_waves_crds_then_operator_then_models(gitops: GitOps) -> None:
    f = gitops.first_sync
    apps = f["apps"]
    assert [apps[n]["wave"] for n in ("paddle-sla-crds", "paddle-operator", "paddle-models")] == ["-2", "-1", "0"]
    t = {n: {k: _epoch(v) for k, v in a.items() if k in ("created", "sync_started", "synced")} for n, a in apps.items()}
    crd_applied = max(_epoch(x) or 0 for x in f["crd"]["argocd_apply"]) if f["crd"]["argocd_apply"] else None
    op_created = _epoch(f["operator_deployment"]["created"])
    op_available = _epoch(f["operator_deployment"]["available"])
    pms_created = _epoch(f["pms"]["created"])
    # Wave -2: the CRD was applied by Argo CD (server-side apply, manager argocd-controller) and
    # Established; only then did the root create the operator's Application.
    assert crd_applied is not None, f["crd"]
    assert any(CRD in r for r in apps["paddle-sla-crds"]["sync_result"]), apps["paddle-sla-crds"]
    assert t["paddle-sla-crds"]["synced"] <= t["paddle-operator"]["created"], apps
    assert _epoch(f["crd"]["established"]) <= t["paddle-operator"]["created"], f
    # Wave -1: the chart (a Helm source) made the operator Deployment, which was Available before
    # the root created the models' Application (Argo CD waits for the wave to be Healthy).
    assert t["paddle-operator"]["created"] <= op_created <= op_available <= t["paddle-models"]["created"], f
    assert any("Deployment paddle-operator" in r for r in apps["paddle-operator"]["sync_result"]), apps
    # Wave 0: the model service, created by the models' Application.
    assert t["paddle-models"]["created"] <= pms_created, f
    assert f["pod"]["node"] == gitops.cluster.real_node, f["pod"]
    record("argocd sync waves", {
        "apps": apps, "root_operation": f["root_operation"], "crd": f["crd"],
        "operator_deployment": f["operator_deployment"], "pms": f["pms"],
        "argocd_events": f["events"][:40], "applied_to_all_healthy_s": f["synced_and_healthy_s"],
        "adapted_in_git": gitops.adapted,
    })  # fmt: skip


def test_argocd_application_turns_healthy_only_when_the_real_pod_is_ready(gitops: GitOps) -> None:
    f = gitops.first_sync
    rows = gitops.recorder.of("paddle-models")
    healths = [r[2] for r in rows]
    assert "Progressing" in healths, rows
    first_healthy = next(r[0] for r in rows if r[2] == "Healthy")
    first_progressing = next(r[0] for r in rows if r[2] == "Progressing")
    assert first_progressing < first_healthy, rows
    pod_ready, pms_ready = _epoch(f["pod"]["ready"]), _epoch(f["pms"]["ready"])
    assert pod_ready is not None and pms_ready is not None, f
    # API timestamps are whole seconds: Healthy is seen no earlier than the second the pod turned Ready.
    assert first_healthy >= pod_ready and first_healthy >= pms_ready, (rows, f["pod"], f["pms"])
    # Argo CD has no health check of its own for this kind (a resource without one counts as
    # healthy): Progressing, and the Healthy message below, come from our health.lua.
    progressing_msgs = sorted({r[3] for r in rows if r[2] == "Progressing"})
    assert any(m.startswith(f"PaddleModelService {PMS_NAME}: ") for m in progressing_msgs), progressing_msgs
    ready = condition(gitops.pms(), "Ready")
    healthy = resource_health(gitops.app("paddle-models"))
    assert (healthy.get("status"), healthy.get("message")) == ("Healthy", f"{ready['reason']}: {ready['message']}"), (
        healthy,
        ready,
    )
    record("argocd health", {
        "paddle-models": gitops.recorder.stamped("paddle-models"),
        "paddle-sla (root)": gitops.recorder.stamped("paddle-sla"),
        "pod_ready": f["pod"]["ready"], "pms_ready": f["pms"]["ready"], "pms_ready_message": f["pms"]["ready_message"],
        "root_applied": _iso(gitops.applied_at), "progressing_messages": progressing_msgs, "healthy": healthy,
    })  # fmt: skip


def test_argocd_stays_synced_for_3_minutes_while_the_operator_and_hpa_work(gitops: GitOps) -> None:
    g = gitops
    g.wait_apps("all Synced and Healthy", g.all_synced_healthy, 300)
    before = g.argocd.applications()
    ops_before = {n: (a["status"].get("operationState") or {}).get("startedAt") for n, a in before.items()}
    history_before = {n: len(a["status"].get("history") or []) for n, a in before.items()}
    rv_before = g.pms()["metadata"]["resourceVersion"]
    status_writes: set[str] = set()
    not_synced: list[str] = []
    load = Load(g.address(), threads=1).start()
    t0 = time.time()
    try:
        while time.time() - t0 < 180:
            apps = g.argocd.applications()
            for n, a in apps.items():
                st = a.get("status") or {}
                if (st.get("sync") or {}).get("status") != "Synced":
                    not_synced.append(f"{_iso(time.time())} {n}: {st.get('sync')}")
            status_writes.add(g.pms()["metadata"]["resourceVersion"])
            time.sleep(3)
    finally:
        figures = load.stop()
    after = g.argocd.applications()
    pms = g.pms()
    hpa = g.cluster.get("hpa", PMS_NAME, "-n", MODELS_NS)
    dep = g.cluster.get("deployment", PMS_NAME, "-n", MODELS_NS)
    ops_after = {n: (a["status"].get("operationState") or {}).get("startedAt") for n, a in after.items()}
    history_after = {n: len(a["status"].get("history") or []) for n, a in after.items()}
    # Never OutOfSync at any poll, and no sync at all (a self-heal would be a new operation).
    assert not not_synced, not_synced
    assert ops_after == ops_before and history_after == history_before, (ops_before, ops_after)
    for rows_of in APPS:
        assert all(r[1] == "Synced" for r in g.recorder.of(rows_of, t0)), g.recorder.stamped(rows_of, t0)
    # Meanwhile the operator kept writing status (SLA figures, served versions) and the HPA owned
    # the Deployment's replicas; none of it is in Git, and Argo CD did not fight over it.
    status_writes.discard(rv_before)
    assert status_writes, "the operator wrote no status in 3 minutes"
    assert "replicas" not in yaml.safe_load((g.repo.work / MODEL_FILE).read_text())["spec"]
    assert pms["spec"].get("replicas") is not None  # defaulted by the API server, not in Git
    assert hpa["spec"]["scaleTargetRef"]["name"] == PMS_NAME
    assert figures["failed"] == 0, figures
    record("argocd no fight", {
        "window_s": round(time.time() - t0), "apps_sync_changes": {n: g.recorder.stamped(n, t0) for n in APPS},
        "operations_before_after": [ops_before, ops_after], "pms_status_writes": len(status_writes),
        "pms_defaulted_replicas": pms["spec"].get("replicas"), "hpa": {
            "min": hpa["spec"].get("minReplicas"), "max": hpa["spec"].get("maxReplicas"),
            "current": hpa.get("status", {}).get("currentReplicas"),
            "conditions": [f"{c['type']}={c['status']} {c.get('reason')}" for c in hpa.get("status", {}).get("conditions") or []],
        },
        "deployment_replicas": dep["spec"].get("replicas"), "sla": pms.get("status", {}).get("sla"),
        "ignoreDifferences": "none", "load": figures,
    })  # fmt: skip


@pytest.mark.timeout(1200)
def test_argocd_rejected_spec_shows_the_sync_error_and_the_running_version_keeps_serving(gitops: GitOps) -> None:
    g = gitops
    g.wait_apps("all Synced and Healthy", g.all_synced_healthy, 300)
    pods_before = {p["metadata"]["name"] for p in g.pods()}
    generation = g.pms()["metadata"]["generation"]
    load = Load(g.address(), threads=1).start()
    try:

        def invalid(doc: dict[str, Any]) -> None:
            doc["spec"]["autoscaling"].update(minReplicas=3, maxReplicas=2)

        sha, t0 = g.commit_model(invalid, "ppocr-rec: minReplicas above maxReplicas (rejected by the API server)")

        def failed() -> dict[str, Any] | None:
            a = g.app("paddle-models")
            op = a["status"].get("operationState") or {}
            tried = ((op.get("operation") or {}).get("sync") or {}).get("revision")
            return a if tried == sha and "failed to apply" in (op.get("message") or "") else None

        # Automated syncs retry a failed one (5 times, backing off from 5 s): the error shows at once.
        app = wait_for(failed, 300, "the models' sync of the invalid spec to fail", dump=g.dump, interval=2)
        seconds_to_error = round(time.time() - t0, 1)
        message = app["status"]["operationState"]["message"]
        assert "spec.autoscaling.maxReplicas must be >= spec.autoscaling.minReplicas" in message, message
        assert app["status"]["sync"]["status"] == "OutOfSync", app["status"]["sync"]
        time.sleep(10)  # the running version, seconds after the failed sync
        pms = g.pms()
        assert pms["metadata"]["generation"] == generation, "the invalid spec reached the object"
        assert {p["metadata"]["name"] for p in g.pods()} == pods_before
        assert g.app("paddle-models")["status"]["health"]["status"] == "Healthy"
        text, _, _ = infer(g.address(), MODEL, text_image())
        assert text == "PaddleSLA 2026"
        ok_during = load.ok
        # Reverted in Git: Synced again at once, without a rollout. The automated sync keeps
        # retrying the invalid revision (backing off up to minutes) and holds the next sync back,
        # so it is stopped the way `argocd app terminate-op` stops it: the operation's phase set
        # to Terminating on the Application. It is never applied.
        revert_sha, _ = g.commit_model(
            lambda d: d["spec"]["autoscaling"].update(minReplicas=1, maxReplicas=3), "ppocr-rec: revert"
        )
        g.wait_apps("Synced and Healthy at the revert", lambda apps: g.all_synced_healthy(apps, revert_sha), 300)
        retrying = g.app("paddle-models")["status"].get("operationState") or {}
        if retrying.get("phase") == "Running":
            g.cluster.kubectl(
                "patch", "applications.argoproj.io", "paddle-models", "-n", NAMESPACE, "--type=merge",
                "-p", json.dumps({"status": {"operationState": {"phase": "Terminating"}}}),
            )  # fmt: skip

        def retries_over() -> dict[str, Any] | None:
            op = g.app("paddle-models")["status"].get("operationState") or {}
            return op if op.get("phase") in ("Failed", "Error") else None

        final = wait_for(retries_over, 400, "the retries of the invalid revision to end", dump=g.dump, interval=3)
        assert (final.get("operation") or {}).get("sync", {}).get("revision") == sha, final
        assert g.all_synced_healthy(g.argocd.applications(), revert_sha), g.argocd.dump()
    finally:
        figures = load.stop()
    assert figures["failed"] == 0 and ok_during > 0, figures
    assert {p["metadata"]["name"] for p in g.pods()} == pods_before
    assert g.pms()["metadata"]["generation"] == generation
    assert _health_path(g.recorder.of("paddle-models", t0)) == ["Healthy"], g.recorder.stamped("paddle-models", t0)
    conditions = [f"{c.get('type')}: {c.get('message', '')[:300]}" for c in app["status"].get("conditions") or []]
    record("argocd rejected spec", {
        "sync_error": message, "retrying_at_revert": retrying.get("message"),
        "final": f"{final['phase']}: {final['message']}",
        "app_conditions": conditions, "seconds_to_error": seconds_to_error,
        "models_app": g.recorder.stamped("paddle-models", t0), "root_app": g.recorder.stamped("paddle-sla", t0),
        "load_while_rejected": figures,
    })  # fmt: skip


def _health_path(rows: list[tuple[float, str, str, str, str]]) -> list[str]:
    """The Application's health values in order, repeats collapsed."""
    path: list[str] = []
    for r in rows:
        if not path or path[-1] != r[2]:
            path.append(r[2])
    return path


def _image(pod: dict[str, Any]) -> str:
    return next(c["image"] for c in pod["spec"]["containers"] if c["name"] == "runtime")


def _tag(cluster: Cluster, tag: str) -> None:
    """Another tag of the runtime image on the node, so a tag change is a real image change."""
    assert cluster.local is not None and cluster.local.node is not None
    cluster.local.node.ctr("images", "tag", "--force", f"{RUNTIME}:{BASE_TAG}", f"{RUNTIME}:{tag}")


@pytest.mark.timeout(1800)
def test_argocd_tag_change_in_git_is_a_canary_promoted_and_a_failing_one_rolled_back_degraded(
    gitops: GitOps,
) -> None:
    g = gitops
    g.wait_apps("all Synced and Healthy", g.all_synced_healthy, 300)
    good, bad = f"{BASE_TAG}-argo-{uuid.uuid4().hex[:4]}", f"{BASE_TAG}-argo-bad"
    _tag(g.cluster, good)
    _tag(g.cluster, bad)
    figures: dict[str, Any] = {}
    # New connections per request: kube-proxy spreads them over stable and canary pods.
    load = Load(g.address(), threads=3, fresh_connection=True).start()
    try:
        # 1. A healthy canary: Progressing while it runs, Healthy once promoted.
        sha, t0 = g.commit_model(lambda d: d["spec"].update(tag=good), f"ppocr-rec: tag {good}")

        def promoted() -> dict[str, Any] | None:
            pms = g.pms()
            st = pms.get("status") or {}
            done = st.get("stableTag") == good and (st.get("rollout") or {}).get("phase") == "Promoted"
            return pms if done and g.all_synced_healthy(g.argocd.applications(), sha) else None

        pms = wait_for(promoted, 600, f"canary {good} promoted and the apps Healthy", dump=g.dump, interval=2)
        t1 = time.time()
        rows = g.recorder.seen("paddle-models", "Healthy", t0)
        # The old version Healthy until the commit is applied, then Progressing throughout the
        # canary (no Healthy blip before it starts), then Healthy once promoted.
        assert _health_path(rows) == ["Healthy", "Progressing", "Healthy"], g.recorder.stamped("paddle-models", t0)
        assert rows[-1][1:3] == ("Synced", "Healthy"), rows
        figures["promoted"] = {
            "models_app": g.recorder.stamped("paddle-models", t0), "seconds": round(t1 - t0, 1),
            "rollout": pms["status"].get("rollout"), "progressing_messages": sorted({r[3] for r in rows if r[2] == "Progressing"}),
        }  # fmt: skip
        assert {_image(p) for p in g.pods()} == {f"{RUNTIME}:{good}"}

        # 2. A canary that breaks its SLA (every request a 5xx, from the runtime's test-only fault
        # file written into the canary pod as soon as it runs): rolled back, Degraded with the reason.
        failures_before = len(load.failures)
        sha, t2 = g.commit_model(lambda d: d["spec"].update(tag=bad), f"ppocr-rec: tag {bad}")

        def canary_running() -> str | None:
            for p in g.pods("canary"):
                for cs in p.get("status", {}).get("containerStatuses") or []:
                    if cs["name"] == "runtime" and "running" in cs.get("state", {}):
                        return p["metadata"]["name"]
            return None

        canary = wait_for(canary_running, 300, f"the canary pod of {bad} running", dump=g.dump, interval=1)
        g.cluster.kubectl(
            "exec", "-n", MODELS_NS, canary, "-c", "runtime", "--", "sh", "-c",
            f"mkdir -p {Path(FAULTS).parent} && echo 'main: {{fail: true}}' > {FAULTS}",
        )  # fmt: skip

        def degraded() -> dict[str, Any] | None:
            a = g.app("paddle-models")
            h = a["status"].get("health") or {}
            return a if h.get("status") == "Degraded" else None

        app = wait_for(degraded, 600, f"paddle-models Degraded after {bad} is rolled back", dump=g.dump, interval=2)
        t3 = time.time()
        health = resource_health(app)
        assert health.get("status") == "Degraded", health
        pms = g.pms()
        rollout = pms["status"]["rollout"]
        assert rollout["phase"] == "RolledBack" and rollout["tag"] == bad, rollout
        assert pms["status"]["stableTag"] == good
        assert health["message"].startswith(f"Rollout of {bad} rolled back: "), health
        assert rollout.get("message") and rollout["message"] in health["message"], (rollout, health)
        assert app["status"]["sync"]["status"] == "Synced"  # Git says `bad`, and so does the object
        rows = g.recorder.seen("paddle-models", "Degraded", t2)
        assert _health_path(rows) == ["Healthy", "Progressing", "Degraded"], g.recorder.stamped("paddle-models", t2)
        # The stable version still answers, from its own pods.
        time.sleep(5)
        text, _, _ = infer(g.address(), MODEL, text_image())
        assert text == "PaddleSLA 2026"
        assert {_image(p) for p in g.pods()} == {f"{RUNTIME}:{good}"}
        figures["rolled_back"] = {
            "models_app": g.recorder.stamped("paddle-models", t2), "seconds": round(t3 - t2, 1),
            "health": health, "rollout": rollout, "failed_requests_during_bad_canary": len(load.failures) - failures_before,
        }  # fmt: skip
    finally:
        figures["load"] = load.stop()
    record("argocd canary", figures)
    print(json.dumps(figures, indent=1))
