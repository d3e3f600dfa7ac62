"""Operator benchmark: N PaddleModelServices created at once on the local control plane.

Measures, per resource, the time from its create request to the moment its status says Ready=True
(the operator applies every child before it writes status, so Ready implies the children exist;
this script also counts them afterwards), and the operator's resident memory once it has settled
at 100 and at 1000 resources.

Phase A: ``--count`` (100) copies of examples/01-minimal (autoscaled, SLA, one kwok pod each; the
CPU request is lowered to 100m so 100 pods fit on the two fake nodes).
Phase B: ``--scale-to`` (1000) in total; the extra copies use ``replicas: 0`` without autoscaling,
because two kwok nodes hold 220 pods. Each still gets a ConfigMap, Deployment, Service and PDB.

    python benchmarks/operator.py [--count 100] [--scale-to 1000] [--out benchmarks/results/operator.json]

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
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from e2e.cluster import open_cluster  # noqa: E402

CRD = ROOT / "crds" / "serving.paddlesla.io_paddlemodelservices.yaml"
EXAMPLE = ROOT / "examples" / "01-minimal" / "paddlemodelservice.yaml"
NAMESPACE = "pms-bench"
API = "/apis/serving.paddlesla.io/v1alpha1/namespaces/{ns}/paddlemodelservices"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    k = max(0, min(len(s) - 1, round(q / 100 * (len(s) - 1))))
    return s[k]


def ready_names(kube: Any) -> set[str]:
    items = kube.request("GET", API.format(ns=NAMESPACE))["items"]
    out = set()
    for it in items:
        for c in (it.get("status") or {}).get("conditions") or []:
            if c.get("type") == "Ready" and c.get("status") == "True":
                out.add(it["metadata"]["name"])
    return out


def create_all(kube: Any, bodies: list[dict[str, Any]], workers: int = 16) -> dict[str, float]:
    """POST every body concurrently; returns name -> monotonic time the request was sent."""
    started: dict[str, float] = {}

    def create(body: dict[str, Any]) -> None:
        started[body["metadata"]["name"]] = time.monotonic()
        kube.request("POST", API.format(ns=NAMESPACE), body=body)

    with cf.ThreadPoolExecutor(workers) as pool:
        list(pool.map(create, bodies))
    return started


def wait_ready(kube: Any, started: dict[str, float], timeout: float, poll: float) -> dict[str, float]:
    """name -> seconds from its create request until Ready=True was first seen (polling)."""
    latency: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while len(latency) < len(started) and time.monotonic() < deadline:
        now = time.monotonic()
        for name in ready_names(kube):
            if name in started and name not in latency:
                latency[name] = now - started[name]
        time.sleep(poll)
    return latency


def count_children(kube: Any) -> dict[str, int]:
    sel = [("labelSelector", "app.kubernetes.io/managed-by=paddle-sla-operator")]
    paths = {
        "configmaps": f"/api/v1/namespaces/{NAMESPACE}/configmaps",
        "deployments": f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments",
        "services": f"/api/v1/namespaces/{NAMESPACE}/services",
        "horizontalpodautoscalers": f"/apis/autoscaling/v2/namespaces/{NAMESPACE}/horizontalpodautoscalers",
        "poddisruptionbudgets": f"/apis/policy/v1/namespaces/{NAMESPACE}/poddisruptionbudgets",
    }
    return {k: len(kube.request("GET", p, query=sel)["items"]) for k, p in paths.items()}


def settle_rss(pid: int, seconds: float) -> float:
    """Max RSS sampled over a quiet period (after the burst, with watches and timers running)."""
    peak = 0.0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        peak = max(peak, rss_mb(pid))
        time.sleep(0.5)
    return peak


def save(out: str, idle_rss: float, phase_a: dict[str, Any], phase_b: dict[str, Any] | None) -> None:
    """Write the results so far (after each phase: a slow phase B must not lose phase A)."""
    result = {
        "benchmark": "operator",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_avg": os.getloadavg()},
        "method": "create requests sent concurrently (16 threads); Ready polled every 0.1 s (1 s in phase B); "
                  "RSS = max VmRSS over a 20-30 s period after the burst",
        "targets": {"ready_p99_s_at_100": 2.0, "rss_mb_at_1000": 150},
        "idle_rss_mb": round(idle_rss, 1),
        "at_100": phase_a,
        "at_1000": phase_b,
    }
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--scale-to", type=int, default=1000)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--timeout-b", type=float, default=600, help="how long phase B may take to get Ready")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "operator.json"))
    args = ap.parse_args()

    from paddle_operator.kube import Kube, load_api_client

    example = yaml.safe_load(EXAMPLE.read_text())
    # Two kwok nodes have 32 CPUs each: with the example's 1-CPU request only 64 pods would schedule.
    example["spec"]["inference"]["resources"] = {"requests": {"cpu": "100m", "memory": "128Mi"}}
    with open_cluster() as cluster:
        os.environ["KUBECONFIG"] = str(cluster.kubeconfig)
        kube = Kube(load_api_client(kubeconfig=str(cluster.kubeconfig)))
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
        for _ in range(60):  # `kubectl wait` fails outright while the CRD has no conditions yet
            if cluster.kubectl("wait", "--for=condition=Established", "crd/paddlemodelservices.serving.paddlesla.io",
                               "--timeout=5s", check=False).returncode == 0:
                break
            time.sleep(1)
        cluster.kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=true", timeout=300)
        cluster.kubectl("create", "namespace", NAMESPACE)
        time.sleep(2)  # default ServiceAccount
        log_path = Path(args.out).with_suffix(".operator.log")
        log = log_path.open("wb")
        op = subprocess.Popen(
            [str(Path(sys.executable).with_name("paddle-operator")), "run", "--namespace", NAMESPACE,
             "--liveness", ""],
            env=cluster.env, stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            time.sleep(5)  # operator start-up (watches established)
            idle_rss = rss_mb(op.pid)

            bodies = []
            for i in range(args.count):
                b = copy.deepcopy(example)
                b["metadata"] = {"name": f"bench-{i:04d}"}
                bodies.append(b)
            t0 = time.monotonic()
            started = create_all(kube, bodies)
            create_s = time.monotonic() - t0
            lat = wait_ready(kube, started, args.timeout, poll=0.1)
            children_a = count_children(kube)
            rss_a = settle_rss(op.pid, 20)
            values = list(lat.values())
            phase_a = {
                "resources": args.count,
                "ready": len(lat),
                "create_requests_s": round(create_s, 3),
                "ready_p50_s": round(statistics.median(values), 3) if values else None,
                "ready_p99_s": round(percentile(values, 99), 3) if values else None,
                "ready_max_s": round(max(values), 3) if values else None,
                "children": children_a,
                "operator_rss_mb": round(rss_a, 1),
            }
            print(json.dumps(phase_a, indent=2), flush=True)
            save(args.out, idle_rss, phase_a, None)

            extra = []
            for i in range(args.count, args.scale_to):
                b = copy.deepcopy(example)
                b["metadata"] = {"name": f"bench-{i:04d}"}
                b["spec"]["replicas"] = 0
                b["spec"]["autoscaling"]["enabled"] = False
                extra.append(b)
            t0 = time.monotonic()
            started_b = create_all(kube, extra)
            lat_b = wait_ready(kube, started_b, args.timeout_b, poll=1.0)
            all_ready_s = time.monotonic() - t0
            children_b = count_children(kube)
            rss_b = settle_rss(op.pid, 30)
            values_b = list(lat_b.values())
            phase_b = {
                "resources": args.scale_to,
                "ready": len(lat_b) + len(lat),
                "burst_of": len(extra),
                "all_ready_s": round(all_ready_s, 1),
                "ready_p50_s": round(statistics.median(values_b), 2) if values_b else None,
                "ready_p99_s": round(percentile(values_b, 99), 2) if values_b else None,
                "children": children_b,
                "operator_rss_mb": round(rss_b, 1),
            }
            print(json.dumps(phase_b, indent=2), flush=True)
        finally:
            op.terminate()
            try:
                op.wait(20)
            except subprocess.TimeoutExpired:
                op.kill()
            log.close()
            cluster.kubectl("delete", "namespace", NAMESPACE, "--wait=false", check=False)

    save(args.out, idle_rss, phase_a, phase_b)
    return 0


if __name__ == "__main__":
    sys.exit(main())
