"""Operator benchmark: N PaddleModelServices created at once, beside a bare-Deployment control.

The local control plane itself is slow at bursts (kube-controller-manager runs at its default client
rate, 20 QPS), so a Ready time means little alone. Each phase therefore runs twice in the same
cluster, one after the other: the **control** creates the very Deployments the operator would
(``reconcile.plan``, owner references dropped) directly, then the **operator** run creates the
PaddleModelServices. Watches opened by this script before each burst time every milestone as the
event arrives (no polling), per resource, from its create request:

- operator: first child applied (the first sign the operator saw it) -> all children applied ->
  status written (``observedGeneration``) -> Deployment Available -> ``Ready=True`` in status;
- control: Deployment Available.

The operator-attributable difference is operator Ready minus control Available (p50, p99).

Phase A: ``--count`` (100) copies of examples/01-minimal (autoscaled, SLA, one kwok pod each; the
CPU request is lowered to 100m so the pods fit on the two fake nodes). Phase B: ``--scale-to``
(1000) in total; the extra copies use ``replicas: 0`` without autoscaling (two kwok nodes hold 220
pods). The operator's RSS is sampled after each phase, beside a no-op kopf operator watching the same
resources (``noop_operator.py``, started with ours). ``--quick``: 20 then 100, a few minutes.

    python benchmarks/operator.py [--quick] [--count 100] [--scale-to 1000] [--out results/operator.json]

Uses ``E2E_KUBECONFIG`` when set, else starts a throw-away local control plane (e2e/cluster/).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import urllib3
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from e2e.cluster import open_cluster  # noqa: E402

CRD = ROOT / "crds" / "serving.paddlesla.io_paddlemodelservices.yaml"
EXAMPLE = ROOT / "examples" / "01-minimal" / "paddlemodelservice.yaml"
NAMESPACE = "pms-bench"
CONTROL_NS = "pms-bench-control"
SERVICE_LABEL = "serving.paddlesla.io/service"
PMS_PATH = "/apis/serving.paddlesla.io/v1alpha1/namespaces/{ns}/paddlemodelservices"
CHILD_PATHS = {
    "configmaps": "/api/v1/namespaces/{ns}/configmaps",
    "deployments": "/apis/apps/v1/namespaces/{ns}/deployments",
    "services": "/api/v1/namespaces/{ns}/services",
    "horizontalpodautoscalers": "/apis/autoscaling/v2/namespaces/{ns}/horizontalpodautoscalers",
    "poddisruptionbudgets": "/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets",
}
OP_STAGES = ("first_child", "all_children", "status_written", "deployment_available", "ready")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    k = max(0, min(len(s) - 1, round(q / 100 * (len(s) - 1))))
    return s[k]


def _cond(obj: dict[str, Any], type_: str) -> bool:
    return any(
        c.get("type") == type_ and c.get("status") == "True"
        for c in (obj.get("status") or {}).get("conditions") or []
    )


class Milestones:
    """name -> milestone -> monotonic time it was first seen, fed by watch threads."""

    def __init__(self, expected_children: dict[str, int]) -> None:
        self.expected = expected_children  # name -> how many child kinds it gets
        self.created: dict[str, float] = {}
        self.seen: dict[str, dict[str, float]] = {}
        self.kinds: dict[str, set[str]] = {}
        self.lock = threading.Lock()

    def mark(self, name: str, stage: str, t: float) -> None:
        with self.lock:
            self.seen.setdefault(name, {}).setdefault(stage, t)

    def child(self, plural: str, obj: dict[str, Any], t: float) -> None:
        name = ((obj.get("metadata") or {}).get("labels") or {}).get(SERVICE_LABEL)
        if name not in self.expected:
            return
        self.mark(name, "first_child", t)
        with self.lock:
            kinds = self.kinds.setdefault(name, set())
            kinds.add(plural)
            full = len(kinds) >= self.expected[name]
        if full:
            self.mark(name, "all_children", t)
        if plural == "deployments" and _cond(obj, "Available"):
            self.mark(name, "deployment_available", t)

    def deployment(self, obj: dict[str, Any], t: float) -> None:
        """Control run: bare Deployments, by name."""
        name = obj["metadata"]["name"]
        if name in self.expected and _cond(obj, "Available"):
            self.mark(name, "deployment_available", t)

    def pms(self, obj: dict[str, Any], t: float) -> None:
        name = obj["metadata"]["name"]
        status = obj.get("status") or {}
        if status.get("observedGeneration") is not None:
            self.mark(name, "status_written", t)
        if _cond(obj, "Ready"):
            self.mark(name, "ready", t)

    def done(self, final: str) -> int:
        with self.lock:
            return sum(1 for n in self.expected if final in self.seen.get(n, {}))

    def stats(self, stages: tuple[str, ...]) -> dict[str, dict[str, float | int | None]]:
        out: dict[str, dict[str, float | int | None]] = {}
        for stage in stages:
            v = [self.seen[n][stage] - self.created[n] for n in self.created if stage in self.seen.get(n, {})]
            out[stage] = {
                "n": len(v),
                "p50_s": round(statistics.median(v), 2) if v else None,
                "p99_s": round(percentile(v, 99), 2) if v else None,
            }
        return out


def watch(kube: Any, path: str, on_event: Any) -> None:
    """Stream ``path``'s watch events into ``on_event(obj, t)`` forever (daemon thread)."""
    pool = kube.api.rest_client.pool_manager
    url = kube.api.configuration.host.rstrip("/") + path + "?watch=1&timeoutSeconds=1800"
    rv = ""
    while True:
        try:
            rv = _watch_once(pool, url, rv, on_event)
        except (urllib3.exceptions.HTTPError, OSError):
            time.sleep(1)  # a dropped stream (or the cluster stopping at the end): reconnect


def _watch_once(pool: Any, url: str, rv: str, on_event: Any) -> str:
    """One watch request; returns the resource version to resume from ("" after 410 Gone)."""
    resp = pool.request(
        "GET",
        url + (f"&resourceVersion={rv}" if rv else ""),
        preload_content=False,
        timeout=urllib3.Timeout(connect=5, read=None),
    )
    buf = b""
    for chunk in resp.stream(1 << 16):
        buf += chunk
        *lines, buf = buf.split(b"\n")
        t = time.monotonic()
        for line in lines:
            if not line.strip():
                continue
            ev = json.loads(line)
            obj = ev.get("object") or {}
            if ev.get("type") == "ERROR":
                resp.release_conn()
                return ""
            rv = (obj.get("metadata") or {}).get("resourceVersion", rv)
            if ev.get("type") in ("ADDED", "MODIFIED"):
                on_event(obj, t)
    resp.release_conn()
    return rv


def start_watches(kube: Any, m: Milestones, control: bool) -> None:
    def spawn(path: str, fn: Any) -> None:
        threading.Thread(target=watch, args=(kube, path, fn), daemon=True).start()

    if control:
        spawn(CHILD_PATHS["deployments"].format(ns=CONTROL_NS), m.deployment)
        return
    spawn(PMS_PATH.format(ns=NAMESPACE), m.pms)
    for plural, path in CHILD_PATHS.items():
        spawn(path.format(ns=NAMESPACE), lambda obj, t, p=plural: m.child(p, obj, t))
    time.sleep(1)  # watches established before the burst


def create_all(kube: Any, m: Milestones, items: list[tuple[str, dict[str, Any]]], workers: int = 16) -> float:
    """POST every (path, body) concurrently, recording each create's send time; returns the seconds."""

    def create(item: tuple[str, dict[str, Any]]) -> None:
        path, body = item
        m.created[body["metadata"]["name"]] = time.monotonic()
        kube.request("POST", path, body=body)

    t0 = time.monotonic()
    with cf.ThreadPoolExecutor(workers) as pool:
        list(pool.map(create, items))
    return time.monotonic() - t0


def wait_done(m: Milestones, final: str, timeout: float) -> float:
    t0 = time.monotonic()
    while m.done(final) < len(m.expected) and time.monotonic() - t0 < timeout:
        time.sleep(0.2)
    return time.monotonic() - t0


def settle_rss(pids: list[int], seconds: float) -> list[float]:
    """Max RSS of each process over a quiet period (after the burst, watches and loops running)."""
    peak = [0.0] * len(pids)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        peak = [max(p, rss_mb(pid)) for p, pid in zip(peak, pids, strict=True)]
        time.sleep(0.5)
    return peak


def bodies(example: dict[str, Any], first: int, last: int, scaled: bool) -> list[dict[str, Any]]:
    out = []
    for i in range(first, last):
        b = copy.deepcopy(example)
        b["metadata"] = {"name": f"bench-{i:04d}", "namespace": NAMESPACE}
        if not scaled:
            b["spec"]["replicas"] = 0
            b["spec"]["autoscaling"]["enabled"] = False
        out.append(b)
    return out


def control_deployment(body: dict[str, Any]) -> dict[str, Any]:
    """The Deployment the operator would apply for ``body``, as a standalone object."""
    from paddle_operator.reconcile import plan
    from paddle_operator.spec import PaddleModelService

    body = dict(body, metadata=dict(body["metadata"], uid="control", generation=1))
    dep = next(c for c in plan(PaddleModelService.from_body(body)) if c["kind"] == "Deployment")
    dep = copy.deepcopy(dep)
    dep["metadata"].pop("ownerReferences", None)
    dep["metadata"]["namespace"] = CONTROL_NS
    return dep


def expected_children(b: dict[str, Any]) -> int:
    return 5 if (b["spec"].get("autoscaling") or {}).get("enabled", True) else 4


def run_phase(
    kube: Any, items: list[dict[str, Any]], op_pid: int, noop_pid: int, timeout: float
) -> dict[str, Any]:
    """The control burst, then the operator burst of the same resources; milestones and difference."""
    ctl = Milestones({b["metadata"]["name"]: 1 for b in items})
    start_watches(kube, ctl, control=True)
    time.sleep(1)
    deps = [(CHILD_PATHS["deployments"].format(ns=CONTROL_NS), control_deployment(b)) for b in items]
    ctl_create = create_all(kube, ctl, deps)
    ctl_all = wait_done(ctl, "deployment_available", timeout)

    op = Milestones({b["metadata"]["name"]: expected_children(b) for b in items})
    start_watches(kube, op, control=False)
    op_create = create_all(kube, op, [(PMS_PATH.format(ns=NAMESPACE), b) for b in items])
    op_all = wait_done(op, "ready", timeout)
    rss, noop_rss = settle_rss([op_pid, noop_pid], 20)
    c, o = ctl.stats(("deployment_available",)), op.stats(OP_STAGES)
    ca, orr = c["deployment_available"], o["ready"]
    diff = {
        q: round(orr[q] - ca[q], 2) if orr[q] is not None and ca[q] is not None else None
        for q in ("p50_s", "p99_s")
    }
    return {
        "burst_of": len(items),
        "control": {"create_requests_s": round(ctl_create, 2), "all_available_s": round(ctl_all, 1), **c},
        "operator": {"create_requests_s": round(op_create, 2), "all_ready_s": round(op_all, 1), **o},
        "operator_minus_control": diff,
        "operator_rss_mb": round(rss, 1),
        "noop_kopf_rss_mb": round(noop_rss, 1),
    }


def table(label: str, phase: dict[str, Any]) -> str:
    """The stage table: cumulative seconds from the create request, p50 / p99."""

    def cell(s: dict[str, Any]) -> str:
        return f"{s['p50_s']} / {s['p99_s']} ({s['n']})" if s["n"] else "-"

    ctl, op = phase["control"], phase["operator"]
    rows = [
        f"{label}: {phase['burst_of']} created at once; seconds from create, p50 / p99 (count)",
        f"{'stage':<38}{'operator':>24}{'bare Deployment control':>28}",
    ]
    for stage in OP_STAGES:
        other = cell(ctl[stage]) if stage == "deployment_available" else ""
        rows.append(f"{stage:<38}{cell(op[stage]):>24}{other:>28}")
    d = phase["operator_minus_control"]
    diff = f"{d['p50_s']} / {d['p99_s']}"
    rows.append(f"{'operator Ready - control Available':<38}{diff:>24}")
    rows.append(
        f"RSS after the phase: operator {phase['operator_rss_mb']} MB, "
        f"no-op kopf operator on the same resources {phase['noop_kopf_rss_mb']} MB"
    )
    return "\n".join(rows)


def save(out: str, args: argparse.Namespace, idle: tuple[float, float], phases: dict[str, Any]) -> None:
    """Write the results so far (after each phase: a slow phase B must not lose phase A)."""
    result = {
        "benchmark": "operator",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_avg": os.getloadavg()},
        "method": "per phase: a bare-Deployment control burst, then the operator burst of the same "
        "resources, in the same cluster; create requests from 16 threads; milestones timed by watch "
        "events from the create request; RSS = max VmRSS over 20 s after the burst, "
        "ours and a no-op kopf operator (benchmarks/noop_operator.py) watching the same resources",
        "targets": {"operator_minus_control_p99_s": 0.5, "rss_mb_at_1000": 150},
        "count": args.count,
        "scale_to": args.scale_to,
        "idle_rss_mb": round(idle[0], 1),
        "noop_kopf_idle_rss_mb": round(idle[1], 1),
        **phases,
    }
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="20 then 100 (results/operator-quick.json)")
    ap.add_argument("--count", type=int, default=None, help="phase A size (100; 20 with --quick)")
    ap.add_argument("--scale-to", type=int, default=None, help="phase B total (1000; 100 with --quick)")
    ap.add_argument("--timeout", type=float, default=900, help="how long a burst may take to converge")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    args.count = args.count or (20 if args.quick else 100)
    args.scale_to = args.scale_to or (100 if args.quick else 1000)
    name = "operator-quick.json" if args.quick else "operator.json"
    args.out = args.out or str(ROOT / "benchmarks" / "results" / name)

    from paddle_operator.kube import Kube, load_api_client

    example = yaml.safe_load(EXAMPLE.read_text())
    # Two kwok nodes have 32 CPUs each: with the example's 1-CPU request only 64 pods would schedule.
    example["spec"]["inference"]["resources"] = {"requests": {"cpu": "100m", "memory": "128Mi"}}
    with open_cluster() as cluster:
        os.environ["KUBECONFIG"] = str(cluster.kubeconfig)
        kube = Kube(load_api_client(kubeconfig=str(cluster.kubeconfig)))
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
        for _ in range(60):  # `kubectl wait` fails outright while the CRD has no conditions yet
            crd = "crd/paddlemodelservices.serving.paddlesla.io"
            if (
                cluster.kubectl(
                    "wait", "--for=condition=Established", crd, "--timeout=5s", check=False
                ).returncode
                == 0
            ):
                break
            time.sleep(1)
        for ns in (NAMESPACE, CONTROL_NS):
            cluster.kubectl("delete", "namespace", ns, "--ignore-not-found", "--wait=true", timeout=300)
            cluster.kubectl("create", "namespace", ns)
        time.sleep(2)  # default ServiceAccount
        log_path = Path(args.out).with_suffix(".operator.log")
        log = log_path.open("wb")
        op = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("paddle-operator")),
                "run",
                "--namespace",
                NAMESPACE,
                "--liveness",
                "",
            ],
            env=cluster.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        # The memory baseline, beside ours on the same resources (benchmarks/noop_operator.py).
        noop_log = Path(args.out).with_suffix(".noop.log").open("wb")
        noop = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kopf",
                "run",
                "--standalone",
                "--namespace",
                NAMESPACE,
                str(ROOT / "benchmarks" / "noop_operator.py"),
            ],
            env=cluster.env,
            stdout=noop_log,
            stderr=subprocess.STDOUT,
        )
        phases: dict[str, Any] = {}
        try:
            time.sleep(5)  # operator start-up (watches established)
            idle_rss, noop_idle = rss_mb(op.pid), rss_mb(noop.pid)
            phases[f"at_{args.count}"] = run_phase(
                kube, bodies(example, 0, args.count, True), op.pid, noop.pid, args.timeout
            )
            print(table(f"at {args.count}", phases[f"at_{args.count}"]), flush=True)
            save(args.out, args, (idle_rss, noop_idle), phases)
            extra = bodies(example, args.count, args.scale_to, False)
            phases[f"at_{args.scale_to}"] = run_phase(kube, extra, op.pid, noop.pid, args.timeout)
            print(table(f"at {args.scale_to} ({len(extra)} more)", phases[f"at_{args.scale_to}"]), flush=True)
            save(args.out, args, (idle_rss, noop_idle), phases)
        finally:
            for p in (op, noop):
                p.terminate()
            noop.wait(20)
            noop_log.close()
            op.terminate()
            try:
                op.wait(20)
            except subprocess.TimeoutExpired:
                op.kill()
            log.close()
            for ns in (NAMESPACE, CONTROL_NS):
                cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
