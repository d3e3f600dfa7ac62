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

The operator-attributable difference is operator Ready minus control Available (p50, p99). Between
the two bursts the control's objects are deleted and the script waits until they, their ReplicaSets
and pods are gone, so the operator's burst meets the cluster the control's burst met: left in place,
100 idle control Deployments made a second *bare* burst 1.2-1.6 s slower at p99 than the first.
``--self-check`` runs the control burst twice that way instead (no operator burst): the difference
it prints is the harness's own, and should be noise.

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


def cpu_s(pid: int) -> float:
    """User + system CPU seconds the process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
        m.created.setdefault(body["metadata"]["name"], time.monotonic())  # a resource's first object
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


class RssSampler:
    """VmRSS of the operator processes every 0.5 s in a daemon thread, with the time of each sample."""

    def __init__(self, pids: dict[str, int], period: float = 0.5) -> None:
        self.pids = pids
        self.samples: list[tuple[float, dict[str, float]]] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._run, args=(period,), daemon=True).start()

    def _run(self, period: float) -> None:
        while True:
            try:
                sample = {k: rss_mb(pid) for k, pid in self.pids.items()}
            except (OSError, RuntimeError, StopIteration):
                return  # a process ended
            with self._lock:
                self.samples.append((time.monotonic(), sample))
            time.sleep(period)

    def window(self, start: float, end: float) -> list[dict[str, float]]:
        with self._lock:
            return [s for t, s in self.samples if start <= t <= end]

    def peak(self, start: float, end: float) -> dict[str, float]:
        w = self.window(start, end)
        return {k: round(max(s[k] for s in w), 1) for k in self.pids} if w else {}

    def median(self, start: float, end: float) -> dict[str, float]:
        w = self.window(start, end)
        return {k: round(statistics.median(s[k] for s in w), 1) for k in self.pids} if w else {}


THREAD_STACK_KB = 8192  # glibc's default thread stack (ulimit -s)


def rss_breakdown(pid: int) -> dict[str, float]:
    """Resident MB by kind of mapping (/proc/PID/smaps): the glibc heap, other anonymous memory
    (pymalloc arenas, mmapped allocations), thread stacks, shared libraries and other files; and
    the thread count."""
    kinds = {"heap": 0, "stacks": 0, "anon": 0, "libs": 0, "files": 0}
    kind = "anon"
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and not head[0].endswith(":"):
                path = head[5] if len(head) > 5 else ""
                kind = (
                    "heap" if path == "[heap]"
                    else "anon" if not path or path.startswith("[")
                    else "libs" if ".so" in path
                    else "files"
                )  # fmt: skip
            elif head and head[0] == "Size:" and kind == "anon" and head[1] == str(THREAD_STACK_KB):
                kind = "stacks"  # a thread's stack: glibc's default size, the guard page apart
            elif head and head[0] == "Rss:":
                kinds[kind] += int(head[1])
    out = {k: round(v / 1024, 1) for k, v in kinds.items()}
    with open(f"/proc/{pid}/status") as f:
        out["threads"] = next(int(line.split()[1]) for line in f if line.startswith("Threads:"))
    return out


def steady_rss(sampler: RssSampler, settle: float, window: float = 20) -> dict[str, float]:
    """Median RSS over ``window`` seconds, after ``settle`` seconds of quiet following the burst."""
    time.sleep(settle)
    t0 = time.monotonic()
    time.sleep(window)
    return sampler.median(t0, time.monotonic())


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


def control_objects(body: dict[str, Any], full: bool = False) -> list[tuple[str, dict[str, Any]]]:
    """What the control creates for ``body``, as standalone objects (path, object): the Deployment the
    operator would apply; ``full``: every child the operator would apply, the Deployment first."""
    from paddle_operator.reconcile import plan
    from paddle_operator.spec import PaddleModelService

    body = dict(body, metadata=dict(body["metadata"], uid="control", generation=1))
    children = sorted(plan(PaddleModelService.from_body(body)), key=lambda c: c["kind"] != "Deployment")
    out = []
    for child in children if full else children[:1]:
        child = copy.deepcopy(child)
        child["metadata"].pop("ownerReferences", None)
        child["metadata"]["namespace"] = CONTROL_NS
        plural = {
            "ConfigMap": "configmaps",
            "Deployment": "deployments",
            "Service": "services",
            "HorizontalPodAutoscaler": "horizontalpodautoscalers",
            "PodDisruptionBudget": "poddisruptionbudgets",
        }[child["kind"]]
        out.append((CHILD_PATHS[plural].format(ns=CONTROL_NS), child))
    return out


def expected_children(b: dict[str, Any]) -> int:
    return 5 if (b["spec"].get("autoscaling") or {}).get("enabled", True) else 4


# What the control leaves behind in CONTROL_NS; gone before the next burst starts (clear_control).
CONTROL_LEFTOVERS = (
    CHILD_PATHS["deployments"],
    "/apis/apps/v1/namespaces/{ns}/replicasets",
    "/api/v1/namespaces/{ns}/pods",
    CHILD_PATHS["services"],
)


def clear_control(kube: Any, timeout: float) -> float:
    """Delete every object the control created and wait until they, their ReplicaSets and pods are
    gone; returns the seconds it took. The next burst then meets the cluster the control's met."""
    from paddle_operator.kube import KubeError

    t0 = time.monotonic()
    for path in CHILD_PATHS.values():
        coll = path.format(ns=CONTROL_NS)
        try:
            kube.request("DELETE", coll, body={"propagationPolicy": "Background"})
        except KubeError as e:
            if e.status != 405:  # a kind without a collection delete: one by one
                raise
            for obj in (kube.request("GET", coll) or {}).get("items") or []:
                kube.request("DELETE", f"{coll}/{obj['metadata']['name']}")
    while time.monotonic() - t0 < timeout:
        if not any(
            (kube.request("GET", p.format(ns=CONTROL_NS)) or {}).get("items") for p in CONTROL_LEFTOVERS
        ):
            return round(time.monotonic() - t0, 1)
        time.sleep(0.5)
    raise TimeoutError(f"the control's objects in {CONTROL_NS} were not gone after {timeout:.0f} s")


def control_burst(
    kube: Any, items: list[dict[str, Any]], timeout: float, full_control: bool, clear: bool = True
) -> tuple[Milestones, float, float, float | None]:
    """One control burst, then (``clear``) its objects cleared: (milestones, create s, all Available
    s, clear s or None)."""
    ctl = Milestones({b["metadata"]["name"]: 1 for b in items})
    start_watches(kube, ctl, control=True)
    time.sleep(1)
    objs = [o for b in items for o in control_objects(b, full_control)]
    created = create_all(kube, ctl, objs)
    available = wait_done(ctl, "deployment_available", timeout)
    return ctl, created, available, clear_control(kube, timeout) if clear else None


def difference(later: dict[str, Any], base: dict[str, Any]) -> dict[str, float | None]:
    """p50 and p99 of ``later`` minus ``base`` (stats of one stage each)."""
    return {
        q: round(later[q] - base[q], 2) if later[q] is not None and base[q] is not None else None
        for q in ("p50_s", "p99_s")
    }


def self_check_phase(
    kube: Any, items: list[dict[str, Any]], timeout: float, full_control: bool, keep_first: bool = False
) -> dict[str, Any]:
    """The control burst twice, cleared in between, as the operator phase runs after the control:
    what the harness itself makes of two identical bursts (``--self-check``). ``keep_first``: the
    first burst's objects stay while the second runs (under other names), as the harness had it
    before it cleared the control."""
    first_run = control_burst(kube, items, timeout, full_control, clear=not keep_first)
    if keep_first:
        items = [dict(b, metadata=dict(b["metadata"], name=b["metadata"]["name"] + "-again")) for b in items]
    runs = [first_run, control_burst(kube, items, timeout, full_control)]
    first, again = (r[0].stats(("deployment_available",))["deployment_available"] for r in runs)
    return {
        "burst_of": len(items),
        "first_kept": keep_first,
        "control": {"all_available_s": round(runs[0][2], 1), "cleared_s": runs[0][3], **first},
        "control_again": {"all_available_s": round(runs[1][2], 1), "cleared_s": runs[1][3], **again},
        "again_minus_control": difference(again, first),
    }


def run_phase(
    kube: Any,
    items: list[dict[str, Any]],
    rss: RssSampler,
    timeout: float,
    settle: float,
    memreport: Any = None,
    full_control: bool = False,
) -> dict[str, Any]:
    """The control burst (its objects then cleared), then the operator burst of the same resources;
    milestones and difference."""
    ctl, ctl_create, ctl_all, ctl_cleared = control_burst(kube, items, timeout, full_control)

    op = Milestones({b["metadata"]["name"]: expected_children(b) for b in items})
    start_watches(kube, op, control=False)
    burst_start = time.monotonic()
    cpu0 = {k: cpu_s(pid) for k, pid in rss.pids.items()}
    op_create = create_all(kube, op, [(PMS_PATH.format(ns=NAMESPACE), b) for b in items])
    op_all = wait_done(op, "ready", timeout)
    cpu = {k: round(cpu_s(pid) - cpu0[k], 1) for k, pid in rss.pids.items()}
    peak = rss.peak(burst_start, time.monotonic())
    steady = steady_rss(rss, settle)
    memory = memreport() if memreport is not None else None
    breakdown = {k: rss_breakdown(pid) for k, pid in rss.pids.items()}
    c, o = ctl.stats(("deployment_available",)), op.stats(OP_STAGES)
    ca, orr = c["deployment_available"], o["ready"]
    diff = difference(orr, ca)
    return {
        "burst_of": len(items),
        "control": {
            "objects": "every child" if full_control else "Deployment",
            "create_requests_s": round(ctl_create, 2),
            "all_available_s": round(ctl_all, 1),
            "cleared_s": ctl_cleared,  # deleted and gone before the operator burst
            **c,
        },
        "operator": {"create_requests_s": round(op_create, 2), "all_ready_s": round(op_all, 1), **o},
        "operator_minus_control": diff,
        "operator_rss_mb": steady.get("operator"),
        "noop_kopf_rss_mb": steady.get("noop"),
        "operator_peak_rss_mb": peak.get("operator"),
        "noop_kopf_peak_rss_mb": peak.get("noop"),
        "operator_cpu_s": cpu.get("operator"),  # from the first create to the last Ready
        "noop_kopf_cpu_s": cpu.get("noop"),
        "rss_by_mapping_mb": breakdown,  # after the steady window
        **({"memory_reports": memory} if memory is not None else {}),
    }


def table(label: str, phase: dict[str, Any]) -> str:
    """The stage table: cumulative seconds from the create request, p50 / p99."""

    def cell(s: dict[str, Any]) -> str:
        return f"{s['p50_s']} / {s['p99_s']} ({s['n']})" if s["n"] else "-"

    ctl, op = phase["control"], phase["operator"]
    rows = [
        f"{label}: {phase['burst_of']} created at once; seconds from create, p50 / p99 (count)",
        f"{'stage':<38}{'operator':>24}{(phase['control'].get('objects') == 'every child' and 'every-child control' or 'bare Deployment control'):>28}",
    ]
    for stage in OP_STAGES:
        other = cell(ctl[stage]) if stage == "deployment_available" else ""
        rows.append(f"{stage:<38}{cell(op[stage]):>24}{other:>28}")
    d = phase["operator_minus_control"]
    diff = f"{d['p50_s']} / {d['p99_s']}"
    rows.append(f"{'operator Ready - control Available':<38}{diff:>24}")
    ratio = phase["operator_rss_mb"] / phase["noop_kopf_rss_mb"] if phase.get("noop_kopf_rss_mb") else None
    rows.append(
        f"RSS steady after the phase: operator {phase['operator_rss_mb']} MB, no-op kopf operator on the "
        f"same resources {phase['noop_kopf_rss_mb']} MB ({ratio:.2f}x); peak during the burst "
        f"{phase['operator_peak_rss_mb']} vs {phase['noop_kopf_peak_rss_mb']} MB"
        if ratio
        else f"RSS steady after the phase: operator {phase['operator_rss_mb']} MB"
    )
    if phase.get("operator_cpu_s") is not None:
        rows.append(
            f"CPU from the first create to the last Ready: operator {phase['operator_cpu_s']} s, "
            f"no-op kopf operator {phase['noop_kopf_cpu_s']} s"
        )
    for who, rep in (phase.get("memory_reports") or {}).items():
        if "error" in rep:
            rows.append(f"memory report {who}: {rep['error']}")
            continue
        py, gl = rep["pymalloc"], rep["glibc"]
        rows.append(
            f"memory {who}: RSS {rep['rss_mb']} MB; pymalloc {py['arenas']} arenas {py['mapped_mb']} MB, live "
            f"{py['live_mb']}; glibc heap {gl.get('heap_mb')} MB, in use {gl.get('in_use_mb')}, free kept "
            f"{gl.get('free_kept_mb')}, mmapped {gl.get('mmapped_mb')}; {rep['threads']} threads"
        )
        if rep.get("tracemalloc"):
            owners = ", ".join(f"{k} {v}" for k, v in list(rep["by_owner_mb"].items())[:8])
            rows.append(f"  traced {rep['traced_mb']} MB (peak {rep['traced_peak_mb']}): {owners}")
    return "\n".join(rows)


def save(out: str, args: argparse.Namespace, idle: tuple[float, float], phases: dict[str, Any]) -> None:
    """Write the results so far (after each phase: a slow phase B must not lose phase A)."""
    result = {
        "benchmark": "operator",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_avg": os.getloadavg()},
        "method": "per phase: a bare-Deployment control burst, its objects then deleted and gone, then the "
        "operator burst of the same resources, in the same cluster; create requests from 16 threads; milestones timed by watch "
        "events from the create request; RSS of ours and of a no-op kopf operator (benchmarks/noop_operator.py) "
        "watching the same resources: steady = median VmRSS over 20 s after --settle quiet seconds "
        "following the burst, peak = max VmRSS (0.5 s samples) from the operator burst's first create "
        "to its last Ready",
        "settle_s": args.settle,
        "memory_mode": args.mem_mode,
        "operator_env": args.ours_env,
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


def start_operators(
    env: dict[str, str],
    out: Path,
    mem_mode: str | None,
    noop: bool = True,
    ours_env: dict[str, str] | None = None,
) -> tuple[Any, Any]:
    """Ours and the no-op kopf operator (the memory baseline), both on NAMESPACE, logs beside ``out``;
    ``mem_mode`` ("tracemalloc" or "light") runs both under memtrace.py; ``ours_env`` is added to our
    operator's environment only (an A/B of a setting)."""
    traced = mem_mode is not None
    wrap = [sys.executable, str(ROOT / "benchmarks" / "memtrace.py")] if traced else [sys.executable]
    if mem_mode == "light":
        wrap.append("--light")
    ours = [
        *wrap,
        *([str(out.with_suffix(".operator.mem"))] if traced else []),
        "-m",
        "paddle_operator.cli",
        "run",
        "--namespace",
        NAMESPACE,
        "--liveness",
        "",
    ]
    noop_cmd = [
        *wrap,
        *([str(out.with_suffix(".noop.mem"))] if traced else []),
        "-m",
        "kopf",
        "run",
        "--standalone",
        "--quiet",  # kopf's per-handler INFO lines; ours logs kopf at WARNING too
        "--namespace",
        NAMESPACE,
        str(ROOT / "benchmarks" / "noop_operator.py"),
    ]
    for stale in out.parent.glob(out.stem + ".*.mem.*"):  # reports and markers of an earlier run
        stale.unlink()
    procs = []
    runs = [(ours, out.with_suffix(".operator.log"))] + (
        [(noop_cmd, out.with_suffix(".noop.log"))] if noop else []
    )
    for i, (cmd, log) in enumerate(runs):
        with log.open("wb") as f:
            run_env = {**env, **(ours_env or {})} if i == 0 else env
            procs.append(subprocess.Popen(cmd, env=run_env, stdout=f, stderr=subprocess.STDOUT))
    return procs[0], (procs[1] if noop else None)


def stop_operators(*procs: Any) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()


def memory_reports(out: Path, pids: dict[str, int]) -> dict[str, Any]:
    """SIGUSR1 to each process running under memtrace.py; its newest report, per process."""
    import signal

    reports: dict[str, Any] = {}
    for who, pid in pids.items():
        prefix = out.with_suffix(f".{who}.mem")
        n = len(list(prefix.parent.glob(prefix.name + ".*.json"))) + 1
        os.kill(pid, signal.SIGUSR1)
        path = Path(f"{prefix}.{n}.json")
        for _ in range(600):
            if path.exists():
                break
            time.sleep(0.5)
        reports[who] = json.loads(path.read_text()) if path.exists() else {"error": "no report"}
    return reports


def error_lines(log: Path) -> list[str]:
    """Lines of the operator's log at ERROR or above (and tracebacks)."""
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if " ERROR " in line or " CRITICAL " in line or line.startswith("Traceback"):
            out.append(line.strip())
    return out


class SoakLatency:
    """Spec change -> ``status.observedGeneration`` reaching the new generation, per change."""

    def __init__(self) -> None:
        self.pending: dict[str, tuple[int, float]] = {}  # name -> (generation, sent at)
        self.done: list[tuple[float, float]] = []  # (sent at, seconds to status)
        self.lock = threading.Lock()

    def sent(self, name: str, generation: int, t: float) -> None:
        with self.lock:
            self.pending[name] = (generation, t)

    def pms(self, obj: dict[str, Any], t: float) -> None:
        name = obj["metadata"]["name"]
        observed = (obj.get("status") or {}).get("observedGeneration")
        with self.lock:
            want = self.pending.get(name)
            if want is not None and observed is not None and int(observed) >= want[0]:
                del self.pending[name]
                self.done.append((want[1], t - want[1]))


def soak(kube: Any, cluster: Any, example: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """1000 resources, one spec change per second for ``--soak-minutes``; RSS and latency over time."""
    out = Path(args.out)
    items = bodies(example, 0, args.count, True) + bodies(example, args.count, args.scale_to, False)
    log_path = out.with_suffix(".operator.log")
    op, _ = start_operators(cluster.env, out, None, noop=False, ours_env=args.ours_env)
    rss = RssSampler({"operator": op.pid}, period=2.0)
    lat = SoakLatency()
    cpu_marks: list[tuple[float, float]] = []
    try:
        time.sleep(5)
        m = Milestones({b["metadata"]["name"]: expected_children(b) for b in items})
        start_watches(kube, m, control=False)
        create_all(kube, m, [(PMS_PATH.format(ns=NAMESPACE), b) for b in items])
        ready_s = wait_done(m, "ready", args.timeout)
        print(f"soak: {m.done('ready')}/{len(items)} Ready after {ready_s:.0f} s", flush=True)
        threading.Thread(
            target=watch, args=(kube, PMS_PATH.format(ns=NAMESPACE), lat.pms), daemon=True
        ).start()
        time.sleep(2)
        log_offset = log_path.stat().st_size
        t0 = time.monotonic()
        duration = args.soak_minutes * 60
        names = [b["metadata"]["name"] for b in items]
        changes = failed = 0
        loads = []
        while time.monotonic() - t0 < duration:
            name = names[changes % len(names)]
            value = 6 if (changes // len(names)) % 2 == 0 else 5  # 5 is the example's: each change is real
            sent = time.monotonic()
            try:
                got = kube.request(
                    "PATCH",
                    PMS_PATH.format(ns=NAMESPACE) + f"/{name}",
                    body={"spec": {"inference": {"batchTimeoutMs": value}}},
                    content_type="application/merge-patch+json",
                )
                lat.sent(name, int((got or {})["metadata"]["generation"]), sent)
            except Exception as e:  # noqa: BLE001 - counted, the soak goes on
                failed += 1
                print(f"soak: change of {name} failed: {e}", flush=True)
            changes += 1
            if changes % 60 == 0:
                cpu_marks.append((time.monotonic() - t0, cpu_s(op.pid)))
                loads.append((round(time.monotonic() - t0), os.getloadavg()[0]))
                done = len(lat.done)
                print(
                    f"soak: {changes} changes, {done} reconciled, RSS {rss_mb(op.pid):.0f} MB, "
                    f"load {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
            time.sleep(max(0.0, t0 + changes - time.monotonic()))
        end = time.monotonic()
        for _ in range(120):  # the last changes
            if not lat.pending:
                break
            time.sleep(0.5)
        log_text = log_path.read_bytes()[log_offset:].decode("utf-8", "replace")
    finally:
        stop_operators(op)
        cluster.kubectl("delete", "namespace", NAMESPACE, "--wait=false", check=False)

    errors = [
        ln
        for ln in log_text.splitlines()
        if " ERROR " in ln or " CRITICAL " in ln or ln.startswith("Traceback")
    ]
    warnings = [ln for ln in log_text.splitlines() if " WARNING " in ln]
    rss_series = [(round(t - t0, 1), s["operator"]) for t, s in rss.samples if t0 - 60 <= t <= end]
    latency = [(round(t - t0, 2), round(d, 3)) for t, d in sorted(lat.done)]
    warm = args.soak_warmup * 60
    after_warmup = rss.median(t0 + warm, t0 + warm + 60)["operator"]
    last = rss.median(end - 60, end)["operator"]
    windows = []
    for w0 in range(0, int(duration), 300):
        v = [d for t, d in latency if w0 <= t < w0 + 300]
        r = [x for t, x in rss_series if w0 <= t < w0 + 300]
        c = [x for x in cpu_marks if w0 <= x[0] <= w0 + 300]
        windows.append(
            {
                "cpu_percent": round(100 * (c[-1][1] - c[0][1]) / (c[-1][0] - c[0][0]), 1)
                if len(c) > 1
                else None,
                "from_min": w0 // 60,
                "to_min": (w0 + 300) // 60,
                "changes": len(v),
                "p50_s": round(statistics.median(v), 3) if v else None,
                "p99_s": round(percentile(v, 99), 3) if v else None,
                "rss_mb": round(statistics.median(r), 1) if r else None,
            }
        )
    return {
        "resources": len(items),
        "ready_after_burst_s": round(ready_s, 1),
        "minutes": args.soak_minutes,
        "warmup_minutes": args.soak_warmup,
        "changes": changes,
        "changes_failed": failed,
        "changes_not_reconciled": len(lat.pending),
        "rss_after_warmup_mb": after_warmup,
        "rss_last_minute_mb": last,
        "rss_growth_after_warmup": round(last / after_warmup - 1, 4),
        "rss_max_after_warmup_mb": max((x for t, x in rss_series if t >= warm), default=None),
        "latency_p50_s": round(statistics.median([d for _, d in latency]), 3) if latency else None,
        "latency_p99_s": round(percentile([d for _, d in latency], 99), 3) if latency else None,
        "windows": windows,
        "error_lines": len(errors),
        "error_examples": errors[:5],
        "warning_lines": len(warnings),
        "warning_examples": warnings[:5],
        "load_avg_per_minute": loads,
        "rss_series": rss_series,
        "latency_series": latency,
    }


def soak_summary(r: dict[str, Any]) -> str:
    """The soak's figures as text."""
    rows = [
        f"soak: {r['resources']} resources, {r['changes']} spec changes in {r['minutes']} min "
        f"({r['changes_failed']} failed, {r['changes_not_reconciled']} not reconciled at the end)",
        f"RSS after {r['warmup_minutes']} min warm-up {r['rss_after_warmup_mb']} MB, last minute "
        f"{r['rss_last_minute_mb']} MB: growth {100 * r['rss_growth_after_warmup']:+.1f} % "
        f"(max {r['rss_max_after_warmup_mb']} MB)",
        f"change -> status written: p50 {r['latency_p50_s']} s, p99 {r['latency_p99_s']} s; "
        f"error log lines {r['error_lines']}, warnings {r['warning_lines']}",
        f"{'minutes':<10}{'changes':>8}{'p50 s':>8}{'p99 s':>8}{'RSS MB':>8}{'CPU %':>8}",
    ]
    for w in r["windows"]:
        rows.append(
            f"{w['from_min']:>3}-{w['to_min']:<6}{w['changes']:>8}{w['p50_s']!s:>8}{w['p99_s']!s:>8}"
            f"{w['rss_mb']!s:>8}{w['cpu_percent']!s:>8}"
        )
    return "\n".join(rows)


SOAK_PLOT = r"""
import json, sys
import matplotlib; matplotlib.use("Agg")
import matplotlib.pyplot as plt
r = json.load(open(sys.argv[1]))["soak"]
fig, (a, b) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
t, rss = zip(*r["rss_series"])
a.plot([x / 60 for x in t], rss, lw=1)
a.axvline(r["warmup_minutes"], ls="--", c="gray", label="end of warm-up")
a.set_ylabel("operator RSS (MB)"); a.set_ylim(0, 1.15 * max(rss)); a.legend(loc="lower right"); a.grid(alpha=.3)
a.set_title(f"soak: {r['resources']} resources, one spec change per second; RSS growth after warm-up "
            f"{100 * r['rss_growth_after_warmup']:+.1f} %")
lt, ld = zip(*r["latency_series"])
b.plot([x / 60 for x in lt], ld, ".", ms=2, alpha=.4, label="each change")
w = [x for x in r["windows"] if x["p99_s"] is not None]
xs = [x["from_min"] for x in w] + [w[-1]["to_min"]]
b.step(xs, [x["p99_s"] for x in w] + [w[-1]["p99_s"]], where="post", c="r", label="p99 per 5 min")
b.step(xs, [x["p50_s"] for x in w] + [w[-1]["p50_s"]], where="post", c="k", label="p50 per 5 min")
b.set_yscale("log"); b.set_ylabel("spec change -> status written (s)"); b.set_xlabel("minutes")
b.legend(); b.grid(alpha=.3)
fig.tight_layout(); fig.savefig(sys.argv[2], dpi=90)
"""


def plot_soak(result: Path, png: Path) -> None:
    """The soak plot, drawn with matplotlib from the benchmarks' own venv (as serving.py does)."""
    venv = Path(os.environ.get("PADDLE_SLA_CACHE", Path.home() / ".cache" / "paddle-sla")) / "bench-venv"
    py = venv / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    if subprocess.run([str(py), "-c", "import matplotlib"], capture_output=True).returncode:
        subprocess.run([str(py), "-m", "pip", "install", "-q", "matplotlib"], check=True)
    subprocess.run([str(py), "-c", SOAK_PLOT, str(result), str(png)], check=True)
    print(f"wrote {png}", flush=True)


def self_check(kube: Any, example: dict[str, Any], args: argparse.Namespace) -> int:
    """``--self-check``: two identical control bursts per size (each from an empty namespace); prints and
    saves their difference."""
    phases: dict[str, Any] = {}
    sizes = [(args.count, bodies(example, 0, args.count, True))]
    if args.scale_to > args.count:
        sizes.append((args.scale_to, bodies(example, args.count, args.scale_to, False)))
    for total, items in sizes:
        ph = phases[f"at_{total}"] = self_check_phase(
            kube, items, args.timeout, args.full_control, args.keep_first
        )
        a, b, d = ph["control"], ph["control_again"], ph["again_minus_control"]
        print(
            f"at {total} ({len(items)} at once): control Available p50 / p99 {a['p50_s']} / {a['p99_s']} s, "
            f"again {b['p50_s']} / {b['p99_s']} s: difference {d['p50_s']} / {d['p99_s']} s"
            + (" (the first's objects kept)" if args.keep_first else f" (cleared in {a['cleared_s']} s)"),
            flush=True,
        )
    result = {
        "benchmark": "operator-self-check",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_avg_end": os.getloadavg(),
        },
        "method": "per phase: the bare-Deployment control burst, then the same burst again "
        + ("(other names) with the first's objects still in place" if args.keep_first else "after the first's objects were deleted and gone"),
        "phases": phases,
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="20 then 100 (results/operator-quick.json)")
    ap.add_argument("--count", type=int, default=None, help="phase A size (100; 20 with --quick)")
    ap.add_argument("--scale-to", type=int, default=None, help="phase B total (1000; 100 with --quick)")
    ap.add_argument("--timeout", type=float, default=900, help="how long a burst may take to converge")
    ap.add_argument("--settle", type=float, default=40, help="quiet seconds before the steady RSS is taken")
    ap.add_argument(
        "--tracemalloc",
        action="store_true",
        help="run both operators under memtrace.py and report who holds the memory (slow; RSS "
        "figures then include tracemalloc's own)",
    )
    ap.add_argument(
        "--memstats",
        action="store_true",
        help="run both operators under memtrace.py --light (no tracemalloc, full speed) and report the "
        "allocators' accounts after each phase: live bytes against memory kept",
    )
    ap.add_argument(
        "--soak",
        action="store_true",
        help="soak instead: --scale-to resources, one spec change per second for --soak-minutes "
        "(results/operator-soak.{json,png})",
    )
    ap.add_argument("--soak-minutes", type=float, default=30)
    ap.add_argument("--soak-warmup", type=float, default=5, help="minutes before RSS growth is counted")
    ap.add_argument(
        "--full-control",
        action="store_true",
        help="the control creates every child the operator would (ConfigMap, Service, HPA, PDB), not only "
        "the Deployment: what those objects cost the control plane, apart from the operator",
    )
    ap.add_argument(
        "--self-check",
        action="store_true",
        help="no operator burst: the control burst twice, cleared in between, at --count and --scale-to; "
        "the difference is the harness's own (results/operator-self-check.json)",
    )
    ap.add_argument(
        "--keep-first",
        action="store_true",
        help="with --self-check: leave the first burst's objects in place during the second (how the "
        "operator burst ran before the control was cleared; results/operator-self-check-kept.json)",
    )
    ap.add_argument("--out", default=None)
    ap.add_argument(
        "--operator-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set in our operator's environment only, e.g. PYTHONMALLOC=malloc (repeatable)",
    )
    args = ap.parse_args()
    args.ours_env = dict(kv.split("=", 1) for kv in args.operator_env)
    args.mem_mode = "tracemalloc" if args.tracemalloc else ("light" if args.memstats else None)
    args.count = args.count or (20 if args.quick else 100)
    args.scale_to = args.scale_to or (100 if args.quick else 1000)
    name = "operator-quick.json" if args.quick else "operator.json"
    if args.soak:
        name = "operator-soak.json"
    if args.self_check:
        name = "operator-self-check-kept.json" if args.keep_first else "operator-self-check.json"
    if args.mem_mode:
        name = name.replace(".json", f"-{'tracemalloc' if args.tracemalloc else 'memstats'}.json")
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
        if args.soak:
            result = {
                "benchmark": "operator-soak",
                "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "method": "N PaddleModelServices created at once (the first --count autoscaled with a kwok "
                "pod, the rest replicas 0), then one merge patch of spec.inference.batchTimeoutMs per second "
                "(round robin, 5 <-> 6: a ConfigMap change); latency = patch sent -> status.observedGeneration "
                "of the new generation seen by a watch; RSS (VmRSS) every 2 s",
                "soak": soak(kube, cluster, example, args),
            }
            result["machine"]["load_avg_end"] = os.getloadavg()
            Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
            print(soak_summary(result["soak"]), flush=True)
            plot_soak(Path(args.out), Path(args.out).with_suffix(".png"))
            return 0
        if args.self_check:
            return self_check(kube, example, args)
        log_path = Path(args.out).with_suffix(".operator.log")
        op, noop = start_operators(cluster.env, Path(args.out), args.mem_mode, ours_env=args.ours_env)
        rss = RssSampler({"operator": op.pid, "noop": noop.pid})
        memreport = (
            (lambda: memory_reports(Path(args.out), {"operator": op.pid, "noop": noop.pid}))
            if args.mem_mode
            else None
        )
        phases: dict[str, Any] = {}
        try:
            if args.mem_mode:  # imports are slow under tracing; memtrace.py says when it traces
                for who in ("operator", "noop"):
                    started = Path(args.out).with_suffix(f".{who}.mem.started")
                    while not started.exists():
                        time.sleep(1)
            time.sleep(5)  # operator start-up (watches established)
            idle_rss, noop_idle = rss_mb(op.pid), rss_mb(noop.pid)
            phases[f"at_{args.count}"] = run_phase(
                kube,
                bodies(example, 0, args.count, True),
                rss,
                args.timeout,
                args.settle,
                memreport,
                args.full_control,
            )
            print(table(f"at {args.count}", phases[f"at_{args.count}"]), flush=True)
            save(args.out, args, (idle_rss, noop_idle), phases)
            if args.scale_to > args.count:
                extra = bodies(example, args.count, args.scale_to, False)
                phases[f"at_{args.scale_to}"] = run_phase(
                    kube, extra, rss, args.timeout, args.settle, memreport, args.full_control
                )
                print(
                    table(f"at {args.scale_to} ({len(extra)} more)", phases[f"at_{args.scale_to}"]),
                    flush=True,
                )
                save(args.out, args, (idle_rss, noop_idle), phases)
            errors = error_lines(log_path)
            if errors:
                print(f"operator log: {len(errors)} error line(s), first: {errors[0]}", flush=True)
        finally:
            stop_operators(op, noop)
            for ns in (NAMESPACE, CONTROL_NS):
                cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
