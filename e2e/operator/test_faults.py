"""The operator under control-plane faults, on the real local control plane (kwok nodes).

Each test breaks one thing for real (the API server or etcd restarted, the operator SIGKILLed, its
connections silenced by a TCP proxy, a child rewritten by another field manager) and then waits,
bounded, for convergence: every resource Ready with ``observedGeneration`` current, exactly one of
each child, one ReplicaSet and one pod per resource. The restart tests then change every spec once
more, so a watch that did not come back (stale status) fails them too. Times to converge are printed
in the run's "operator timings" section.

The module's operator reaches the API server through a :class:`StallProxy` and runs with short
watch and API timeouts (its settings, below), so a silent connection is detected in seconds.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

from e2e.stallproxy import StallProxy
from e2e.util import dump_namespace, wait_for

from .conftest import ROOT, OperatorProcess, condition, get_json

EXAMPLE = ROOT / "examples" / "01-minimal" / "paddlemodelservice.yaml"
MANAGED = "app.kubernetes.io/managed-by=paddle-sla-operator"
CHILD_PLURALS = ("deployments", "services", "configmaps", "horizontalpodautoscalers", "poddisruptionbudgets")
BURST = 16
# The fault operator's settings: a watch silent for INACTIVITY_S is reopened, a request unanswered for
# API_TIMEOUT_S fails and is retried. The server still ends each watch only after 300 s (the default).
INACTIVITY_S = 8
API_TIMEOUT_S = 5
TICK_S = 2
CONVERGE_S = 300  # generous: a 2-core machine shared with other test runs


@pytest.fixture(scope="module")
def local(cluster: Any) -> Any:
    if cluster.local is None:
        pytest.skip("fault tests restart control-plane processes: local mode only")
    return cluster.local


@pytest.fixture(scope="module")
def proxy(local: Any) -> Iterator[StallProxy]:
    p = StallProxy((local.api_host, local.ports["kube-apiserver"])).start()
    try:
        yield p
    finally:
        p.close()


@pytest.fixture(scope="module")
def fop(
    cluster: Any, crd_installed: None, proxy: StallProxy, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """The operator, through the proxy (its certificate names 127.0.0.1, so TLS verifies unchanged)."""
    d = tmp_path_factory.mktemp("fault-operator")
    kubeconfig = yaml.safe_load(cluster.kubeconfig.read_text())
    kubeconfig["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{proxy.port}"
    (d / "kubeconfig").write_text(yaml.safe_dump(kubeconfig))
    env = dict(
        cluster.env,
        KUBECONFIG=str(d / "kubeconfig"),
        PADDLE_OPERATOR_WATCH_INACTIVITY_TIMEOUT_S=str(INACTIVITY_S),
        PADDLE_OPERATOR_API_TIMEOUT_S=str(API_TIMEOUT_S),
        PADDLE_OPERATOR_ROLLOUT_TICK_S=str(TICK_S),
    )
    op = OperatorProcess(env, d / "operator.log").start()
    try:
        yield op
    finally:
        op.stop()


def _body(name: str) -> dict[str, Any]:
    body = yaml.safe_load(EXAMPLE.read_text())
    body["metadata"]["name"] = name
    body["spec"]["inference"]["resources"]["requests"]["cpu"] = "100m"  # many pods on two fake nodes
    return body


def _create(cluster: Any, ns: str, names: list[str]) -> None:
    cluster.kubectl("apply", "-n", ns, "-f", "-", input="---\n".join(yaml.safe_dump(_body(n)) for n in names))


def _burst_started(cluster: Any, fop: OperatorProcess, ns: str, n: int = BURST) -> list[str]:
    """Create ``n`` resources at once; return as soon as the operator has written its first child.

    The bound covers the module operator's first sight of a fresh namespace (its namespace watch)
    on a busy machine; a miss shows the operator's log."""
    names = [f"svc-{i}" for i in range(n)]
    _create(cluster, ns, names)
    wait_for(
        lambda: cluster.kubectl(
            "get", "configmaps,deployments", "-n", ns, "-l", MANAGED, "-o", "name"
        ).stdout.strip(),
        120,
        "first children",
        dump=lambda: fop.log()[-6000:],
        interval=0.05,
    )
    return names


def _not_converged(cluster: Any, ns: str, names: list[str], batch: int | None = None) -> str | None:
    """What is not converged yet (None: all Ready and current, one of each child, no extra pod)."""
    by_name = {p["metadata"]["name"]: p for p in cluster.get("pms", "-n", ns)["items"]}
    for n in names:
        p = by_name.get(n)
        if p is None:
            return f"pms {n} missing"
        st = p.get("status") or {}
        if st.get("observedGeneration") != p["metadata"]["generation"]:
            return (
                f"pms {n}: observedGeneration {st.get('observedGeneration')} != {p['metadata']['generation']}"
            )
        if (condition(p, "Ready") or {}).get("status") != "True":
            return f"pms {n}: Ready={condition(p, 'Ready')}"
    for plural in CHILD_PLURALS:
        items = cluster.get(plural, "-n", ns, "-l", MANAGED)["items"]
        owners = sorted(i["metadata"]["labels"]["serving.paddlesla.io/service"] for i in items)
        if owners != sorted(names):
            return f"{plural} by owner: {owners}"
        if plural == "configmaps" and batch is not None:
            stale = [
                i["metadata"]["name"]
                for i in items
                if yaml.safe_load(i["data"]["config.yaml"])["max_batch_size"] != batch
            ]
            if stale:
                return f"configmaps without max_batch_size {batch}: {stale}"
    pods = [p["metadata"]["name"] for p in cluster.get("pods", "-n", ns)["items"]]
    if len(pods) != len(names):
        return f"{len(pods)} pods for {len(names)} resources: {pods}"
    return None


def _wait_converged(
    cluster: Any, ns: str, names: list[str], op: OperatorProcess, what: str, batch: int | None = None
) -> float:
    """Wait (bounded) until converged; returns the seconds it took."""
    t0 = time.monotonic()

    def converged() -> bool:
        problem = _not_converged(cluster, ns, names, batch)
        if problem:
            raise AssertionError(problem)  # reported as the last error on timeout
        return True

    base = dump_namespace(cluster, ns, describe=False)
    wait_for(
        converged,
        CONVERGE_S,
        f"{what}: {len(names)} resources converged",
        dump=lambda: base() + "\n---- operator log (tail) ----\n" + op.log()[-6000:],
        interval=1,
    )
    return time.monotonic() - t0


def _replicasets(cluster: Any, ns: str) -> int:
    return len(cluster.get("replicasets", "-n", ns)["items"])


def _spec_change_converges(cluster: Any, ns: str, names: list[str], op: OperatorProcess) -> float:
    """Change every spec once more: a watch that did not resume leaves its status stale."""
    patch = json.dumps({"spec": {"inference": {"maxBatchSize": 16}}})
    for n in names:
        cluster.kubectl("patch", "pms", n, "-n", ns, "--type=merge", "-p", patch)
    return _wait_converged(cluster, ns, names, op, "spec change after the fault", batch=16)


def _restart_during_burst(
    cluster: Any,
    local: Any,
    fop: OperatorProcess,
    ns: str,
    report: Callable[[str], None],
    component: str,
    sig: int,
) -> tuple[int, int, bool]:
    """Restart ``component`` during a burst, wait for convergence and a spec change of all; returns
    (ReplicaSets, resources) counted after convergence and whether the operator still runs."""
    names = _burst_started(cluster, fop, ns)
    t0 = time.monotonic()
    down = local.restart(component, sig=sig, down_s=3)
    _wait_converged(cluster, ns, names, fop, f"{component} restarted")
    converged = time.monotonic() - t0
    replicasets = _replicasets(cluster, ns)
    change = _spec_change_converges(cluster, ns, names, fop)
    report(
        f"fault {component} restarted ({signal.Signals(sig).name}) during a burst of {len(names)}: "
        f"down {down:.1f}s, all converged {converged:.1f}s after the restart began; "
        f"a spec change of all afterwards converged in {change:.1f}s"
    )
    return replicasets, len(names), fop.proc is not None and fop.proc.poll() is None


def test_fault_apiserver_restarted_during_a_burst_converges(
    cluster: Any, local: Any, fop: OperatorProcess, ns: str, report: Callable[[str], None]
) -> None:
    replicasets, resources, alive = _restart_during_burst(cluster, local, fop, ns, report, "kube-apiserver", signal.SIGTERM)
    assert replicasets == resources, "a child was re-created or its template changed"
    assert alive, "the operator died"


def test_fault_etcd_killed_during_a_burst_converges(
    cluster: Any, local: Any, fop: OperatorProcess, ns: str, report: Callable[[str], None]
) -> None:
    replicasets, resources, alive = _restart_during_burst(cluster, local, fop, ns, report, "etcd", signal.SIGKILL)
    assert replicasets == resources, "a child was re-created or its template changed"
    assert alive, "the operator died"


def test_fault_operator_sigkilled_during_a_burst_converges(
    cluster: Any, fop: OperatorProcess, ns: str, report: Callable[[str], None]
) -> None:
    names = _burst_started(cluster, fop, ns)
    t0 = time.monotonic()
    fop.kill()
    half = len(cluster.kubectl("get", "deployments", "-n", ns, "-o", "name").stdout.split())
    fop.start()
    _wait_converged(cluster, ns, names, fop, "operator restarted")
    converged = time.monotonic() - t0
    assert _replicasets(cluster, ns) == len(names), "a child was re-created or its template changed"
    report(
        f"fault operator SIGKILLed during a burst of {len(names)} ({half} Deployments existed): "
        f"all converged {converged:.1f}s after the kill"
    )


def test_fault_operator_sigkilled_during_a_canary_step_resumes_from_status(
    cluster: Any, fop: OperatorProcess, ns: str, report: Callable[[str], None]
) -> None:
    """No Prometheus here: the canary's analysis is unreachable, so it holds at its first step."""
    body = _body("cny")
    body["spec"]["rollout"] = {"intervalSeconds": 10, "steps": [50, 100]}
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(body))
    _wait_converged(cluster, ns, ["cny"], fop, "before the canary")
    v1 = body["spec"]["tag"]
    # Changed at once: the tag change is a canary whether or not the rollout loop has recorded
    # status.stableTag yet (tests/canary/test_first_sight.py).
    cluster.kubectl("patch", "pms", "cny", "-n", ns, "--type=merge", "-p", '{"spec": {"tag": "0.2.0-cpu"}}')

    def rollout() -> dict[str, Any]:
        return (get_json(cluster, "pms", "cny", "-n", ns) or {}).get("status", {}).get("rollout") or {}

    dump = dump_namespace(cluster, ns, describe=False)
    before = wait_for(
        lambda: (r := rollout()).get("weight") == 50 and r.get("nextAnalysisAt") and r,
        120,
        "canary at its first step (weight 50)",
        dump=lambda: dump() + "\n---- operator log ----\n" + fop.log()[-4000:],
    )
    canary_uid = get_json(cluster, "deployment", "cny-canary", "-n", ns)["metadata"]["uid"]
    t0 = time.monotonic()
    fop.kill()
    fop.start()
    # The new process has worked on it once it schedules the next analysis.
    after = wait_for(
        lambda: (r := rollout()).get("nextAnalysisAt") != before["nextAnalysisAt"] and r,
        120,
        "an analysis by the restarted operator",
        dump=lambda: dump() + "\n---- operator log ----\n" + fop.log()[-4000:],
    )
    resumed = time.monotonic() - t0
    keep = ("phase", "tag", "step", "weight")
    assert {k: after[k] for k in keep} == {k: before[k] for k in keep}, (before, after)
    deps = {d["metadata"]["name"]: d for d in cluster.get("deployments", "-n", ns)["items"]}
    assert sorted(deps) == ["cny", "cny-canary"]
    assert deps["cny-canary"]["metadata"]["uid"] == canary_uid, "the canary was re-created"
    image = deps["cny"]["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image.endswith(f":{v1}"), f"a restart must not promote: {image}"
    # And it still acts on the rollout: back to the stable tag ends the canary.
    t1 = time.monotonic()
    cluster.kubectl("patch", "pms", "cny", "-n", ns, "--type=merge", "-p", json.dumps({"spec": {"tag": v1}}))
    wait_for(
        lambda: (
            rollout().get("phase") == "RolledBack"
            and get_json(cluster, "deployment", "cny-canary", "-n", ns) is None
        ),
        120,
        "canary aborted",
        dump=lambda: dump() + "\n---- operator log ----\n" + fop.log()[-4000:],
    )
    aborted = time.monotonic() - t1
    _wait_converged(cluster, ns, ["cny"], fop, "after the abort")
    report(
        f"fault operator SIGKILLed during a canary step (weight {before['weight']}): resumed from status "
        f"{resumed:.1f}s after the kill (same step, same canary Deployment); abort took {aborted:.1f}s"
    )


def test_fault_silent_watch_is_detected_and_recovered_within_the_inactivity_timeout(
    cluster: Any, fop: OperatorProcess, proxy: StallProxy, ns: str, report: Callable[[str], None]
) -> None:
    names = ["quiet-0", "quiet-1"]
    _create(cluster, ns, names)
    _wait_converged(cluster, ns, names, fop, "before the stall")
    accepted = proxy.accepted
    stalled = proxy.stall()
    t0 = time.monotonic()
    # Only a watch opened after the stall sees these: a new resource, and a child edited behind its back.
    _create(cluster, ns, ["after-stall"])
    cluster.kubectl(
        "patch", "hpa", "quiet-0", "-n", ns, "--type=merge", "-p", '{"spec": {"maxReplicas": 50}}'
    )
    # Bound: detection (INACTIVITY_S), a request or two on a silenced connection (API_TIMEOUT_S each),
    # one retry backoff (10 s) and slack. Below kopf's default inactivity timeout (70 s) and far below
    # the 300 s after which the server would end the watch: a stalled watch left alone fails this.
    bound = 2 * INACTIVITY_S + 2 * API_TIMEOUT_S + 10 + 15
    all_names = [*names, "after-stall"]

    def recovered() -> bool:
        hpa = get_json(cluster, "hpa", "quiet-0", "-n", ns) or {}
        if hpa.get("spec", {}).get("maxReplicas") != 3:
            raise AssertionError(f"HPA maxReplicas {hpa.get('spec', {}).get('maxReplicas')}")
        problem = _not_converged(cluster, ns, all_names)
        if problem:
            raise AssertionError(problem)
        return True

    base = dump_namespace(cluster, ns, describe=False)
    wait_for(
        recovered,
        bound,
        f"recovery from {stalled} silenced connections",
        dump=lambda: base() + "\n---- operator log (tail) ----\n" + fop.log()[-6000:],
        interval=0.5,
    )
    took = time.monotonic() - t0
    assert proxy.accepted > accepted, "recovered without reconnecting: the stall did not hold"
    report(
        f"fault silent watch: {stalled} connections silenced, new resource Ready and edited HPA restored "
        f"{took:.1f}s later (inactivity timeout {INACTIVITY_S}s, API timeout {API_TIMEOUT_S}s, bound {bound}s)"
    )


def test_fault_child_rewritten_by_another_field_manager_is_restored(
    cluster: Any, fop: OperatorProcess, ns: str, report: Callable[[str], None]
) -> None:
    _create(cluster, ns, ["owned"])
    _wait_converged(cluster, ns, ["owned"], fop, "before the other writer")
    dep = get_json(cluster, "deployment", "owned", "-n", ns)
    image = dep["spec"]["template"]["spec"]["containers"][0]["image"]
    # Another controller (or a GitOps tool) takes the field over with a forced server-side apply.
    other = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "owned", "namespace": ns},
        "spec": {
            "selector": dep["spec"]["selector"],
            "template": {
                "metadata": {"labels": dep["spec"]["template"]["metadata"]["labels"]},
                "spec": {"containers": [{"name": "runtime", "image": "attacker/evil:1"}]},
            },
        },
    }
    t0 = time.monotonic()
    cluster.kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=other-writer",
        "-f",
        "-",
        input=yaml.safe_dump(other),
    )

    def restored() -> bool:
        d = get_json(cluster, "deployment", "owned", "-n", ns) or {}
        got = d["spec"]["template"]["spec"]["containers"][0]["image"]
        if got != image:
            raise AssertionError(f"image {got}")
        return True

    wait_for(restored, 60, "the operator's image back", dump=dump_namespace(cluster, ns, describe=False))
    took = time.monotonic() - t0
    _wait_converged(cluster, ns, ["owned"], fop, "after the other writer")
    # Restored once, not fought over: one write by the other manager, one by us, then nothing.
    time.sleep(3 * TICK_S)
    d = get_json(cluster, "deployment", "owned", "-n", ns)
    assert d["metadata"]["generation"] == dep["metadata"]["generation"] + 2
    report(f"fault child rewritten by another field manager: restored {took:.1f}s later")
