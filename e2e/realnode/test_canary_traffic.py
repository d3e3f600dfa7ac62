"""Canary weights as real requests see them, on the real node.

The Helm-installed operator runs a canary of the PP-OCRv4 recognition service on real pods; its
analysis reads the e2e Prometheus, which finds those pods by ``kubernetes_sd_configs`` with the
scrape config users are given (no static target). Requests come from the host:

- **Gateway API**: through Traefik (``e2e/cluster/gateway.py``), which routes the operator's HTTPRoute
  to pod addresses with a weighted round robin. At each step of 10 → 30 → 60 → 100 the canary's share
  of at least 500 answers must be within ±3 points of the weight, and no request may fail from the
  tag change until the canary is gone (traffic never reaches a canary pod that is not Ready). A canary
  that answers every inference with HTTP 500 must be rolled back, all traffic on stable again, within
  ``intervalSeconds × failureThreshold`` of its first answer.
- **Service** (no mesh): through the Service's ClusterIP, a new connection per request (kube-proxy
  balances connections). Its share is the canary's share of the Ready pods, not the weight; both are
  measured and recorded, and the share is checked against the pod ratio it really implements.

The canary is told apart by the model version it answers with (``X-Model-Version``, ``/version``):
``spec.model.update: Canary``, and the rollout changes the tag and the model version together.
Figures go to stdout (``-s``) and ``benchmarks/results/realnode.json``.
"""

from __future__ import annotations

import math
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.cluster import Cluster
from e2e.cluster.gateway import Traefik, parent_ref
from e2e.cluster.prometheus import Prometheus, start_prometheus
from e2e.realnode.pods import Served, pms, record, serve_dir, watched_namespaces
from e2e.realnode.traffic import Timeline, Traffic, erroring_model, step_shares
from e2e.util import dump_namespace, wait_for

pytestmark = pytest.mark.realnode

STABLE_TAG, CANARY_TAG = "0.1.0-cpu", "0.1.0-cpu-b"
STABLE_VERSION, CANARY_VERSION = "v4", "v4b"
STEPS = [10, 30, 60, 100]
# Steps of 20 s leave windows long enough for 500 answers on a busy 2-core machine; the rollback
# runs at the CRD's minimum of 10 s (its bound is intervalSeconds x failureThreshold).
STEP_INTERVAL_S = 20
INTERVAL_S = 10
FAILURE_THRESHOLD = 2
MIN_ANSWERS = 500
TOLERANCE_POINTS = 3.0
# A step's window starts SETTLE_S after its weight shows in status and ends LEAD_S before the next
# one shows. Traefik applies provider changes at most every 2 s (providersThrottleDuration); the
# operator writes status after it applied the route, so the route may have moved up to LEAD_S sooner.
SETTLE_S = 3.0
LEAD_S = 2.0


@pytest.fixture(scope="module")
def traffic_ns(cluster: Cluster, real_node: str, prometheus: Prometheus) -> Iterator[Served]:
    """A restricted namespace watched by the Helm-installed operator, which reads the e2e Prometheus."""
    assert cluster.local is not None and cluster.local.node is not None
    # A second tag of the runtime image, so the canary's tag change is a real image change.
    cluster.local.node.ctr(
        "images", "tag", "--force", f"ghcr.io/paddle-sla/paddle-runtime:{STABLE_TAG}",
        f"ghcr.io/paddle-sla/paddle-runtime:{CANARY_TAG}",
    )  # fmt: skip
    suffix = uuid.uuid4().hex[:4]
    ns, op_ns = f"rn-traffic-{suffix}", f"rn-traffic-op-{suffix}"
    try:
        watched_namespaces(
            cluster,
            [ns],
            op_ns,
            values=(
                f"settings.prometheus_url={prometheus.url}",
                # Seconds instead of the defaults, so the suite stays short; the rules are the same.
                "settings.rollout_tick_s=1",
                "settings.analysis_min_window_s=10",
                "settings.sla_period_s=5",
                "settings.prometheus_timeout_s=3",
            ),
        )
        yield Served(cluster, ns, op_ns)
    finally:
        cluster.helm("uninstall", "paddle-operator", "--namespace", op_ns, check=False)
        for n in (ns, op_ns):
            cluster.kubectl("delete", "namespace", n, "--wait=false", "--ignore-not-found", check=False)


def canary_service(
    name: str, router: dict[str, Any], replicas: int, interval_s: int = INTERVAL_S, **analysis: Any
) -> dict[str, Any]:
    """The PP-OCRv4 rec service with a canary of ``interval_s`` steps; the model version tells the tracks apart."""
    return pms(
        name,
        tag=STABLE_TAG,
        replicas=replicas,
        model={"version": STABLE_VERSION, "update": "Canary"},
        sla={"latencyP99Ms": 5000},
        rollout={
            "steps": STEPS,
            "intervalSeconds": interval_s,
            "router": router,
            # A breach is any error above 1 %, or a p99 above the SLA's 5 s; 3 requests make a verdict.
            "analysis": {"minRequests": 3, "failureThreshold": FAILURE_THRESHOLD, "maxErrorRate": 0.01, **analysis},
        },
    )


def gateway_router(hostname: str) -> dict[str, Any]:
    """The Gateway router for one service. Every service of the module is on the same Gateway: each
    has its own hostname, or their routes would all match every request and Traefik would pick one."""
    return {"type": "GatewayAPI", "gatewayAPI": {"parentRefs": [parent_ref()], "hostnames": [hostname]}}


def hostname(name: str) -> str:
    return f"{name}.paddle-sla.test"


def rollout(s: Served, name: str) -> dict[str, Any]:
    return (s.get("pms", name).get("status") or {}).get("rollout") or {}


def wait_serving(traffic: Traffic, version: str, what: str, dump: Any, timeout: float = 120) -> None:
    """Until the last 20 answers all came from ``version`` (the route or Service is in place)."""

    def settled() -> bool:
        last = traffic.snapshot()[-20:]
        return len(last) == 20 and all(a.error is None and a.version == version for a in last)

    wait_for(settled, timeout, what, dump=dump, interval=1)


def diagnose(s: Served, name: str, prometheus: Prometheus, traffic: Traffic | None, gateway: Traefik | None) -> str:
    """What a failed wait needs: status.rollout, what Prometheus has per track, what the requests saw."""
    parts = [s.dump()]
    try:
        parts.append(f"---- status.rollout ----\n{rollout(s, name)}")
        q = f'sum by (track, code) (paddle_runtime_requests_total{{namespace="{s.ns}",service="{name}"}})'
        parts.append(f"---- {q} ----\n{[(r['metric'], r['value'][1]) for r in prometheus.query(q)]}")
    except Exception as exc:  # the dump must not hide the failure
        parts.append(f"(status/Prometheus dump failed: {exc})")
    if traffic is not None:
        seen: dict[tuple[str, str | None, bool], int] = {}
        for a in traffic.snapshot():
            key = (a.kind, a.version, a.error is not None)
            seen[key] = seen.get(key, 0) + 1
        errors = sorted({a.error for a in traffic.snapshot() if a.error})[:5]
        parts.append(f"---- requests (kind, version, failed): count ----\n{seen}\nerrors: {errors}")
    if gateway is not None:
        parts.append(gateway.dump())
    return "\n".join(parts)


def events(s: Served, name: str) -> list[dict[str, Any]]:
    return s.get("events", "--field-selector", f"involvedObject.name={name}")["items"]


def image_tag(s: Served, deployment: str) -> str:
    dep = s.get("deployment", deployment)
    return dep["spec"]["template"]["spec"]["containers"][0]["image"].rsplit(":", 1)[1]


def failures(traffic: Traffic, since: float) -> list[str]:
    return [f"+{a.t - since:.1f}s {a.kind}: {a.error}" for a in traffic.snapshot() if a.t >= since and a.error]


def test_gateway_router_runs_confined_in_the_node_namespace(gateway: Traefik, cluster: Cluster) -> None:
    """Traefik shares the real node's network namespace (no default route there), so nothing it
    sends to pods or Services can take the uplink; its Gateway is programmed at the node's address."""
    assert gateway.proc is not None and cluster.local is not None and cluster.local.net is not None
    net = cluster.local.net
    assert os.stat(f"/proc/{gateway.proc.pid}/ns/net").st_ino == os.stat(net.netns_path).st_ino
    assert os.stat(f"/proc/{gateway.proc.pid}/ns/net").st_ino != os.stat("/proc/self/ns/net").st_ino
    routes = subprocess.run(["ip", "-n", net.netns, "route", "show", "default"], capture_output=True, text=True)
    assert routes.returncode == 0 and routes.stdout.strip() == "", routes.stdout
    assert "--global.checkNewVersion=false" in gateway.args() and "--global.sendAnonymousUsage=false" in gateway.args()
    gw = gateway.gateway()
    assert [a["value"] for a in gw["status"].get("addresses", [])] == [net.node_ip], gw["status"]
    version = subprocess.run(
        [str(cluster.bin_dir / "traefik"), "version"], capture_output=True, text=True, timeout=30
    ).stdout
    assert "3.6.12" in version and "ramequin" in version, version


def test_gateway_traffic_follows_each_canary_step_and_no_request_fails_through_the_promotion(
    traffic_ns: Served, gateway: Traefik, prometheus: Prometheus
) -> None:
    s = traffic_ns
    name = "gw"
    s.apply(canary_service(name, gateway_router(hostname(name)), replicas=1, interval_s=STEP_INTERVAL_S))
    s.wait_ready(name)

    traffic = Traffic(gateway.address, host=hostname(name)).start()
    timeline = Timeline(s.cluster, s.ns, name).start()

    def dump() -> str:
        return diagnose(s, name, prometheus, traffic, gateway) + f"\ntimeline:\n{timeline.describe(t0)}"

    t0 = time.monotonic()
    try:
        wait_serving(traffic, STABLE_VERSION, "the Gateway serving the stable track", dump)
        t0 = time.monotonic()
        s.patch(name, {"spec": {"tag": CANARY_TAG, "model": {"version": CANARY_VERSION}}})
        wait_for(lambda: rollout(s, name).get("phase") == "Promoted", 600, "canary promoted", dump=dump, interval=2)
        # Traffic back on the (promoted) stable track, the canary Deployment gone, a few more seconds.
        wait_for(
            lambda: s.cluster.kubectl("get", "deployment", f"{name}-canary", "-n", s.ns, check=False).returncode
            != 0,
            120,
            "canary Deployment removed",
            dump=dump,
        )
        time.sleep(5)
    finally:
        traffic.stop()
        timeline.stop()
    answers = [a for a in traffic.snapshot() if a.t >= t0]
    shares = step_shares(answers, timeline, STEPS, CANARY_VERSION, SETTLE_S, LEAD_S)
    failed = failures(traffic, t0)
    figures = {
        "router": "GatewayAPI (Traefik 3.6.12)",
        "steps": [sh.figures() for sh in shares],
        "requests": len(answers),
        "failed": len(failed),
        "promotion_s": round((timeline.first("Promoted") or time.monotonic()) - t0, 1),
    }
    record("canary traffic through the Gateway", figures)
    context = f"{figures}\ntimeline:\n{timeline.describe(t0)}"
    assert [sh.weight for sh in shares] == STEPS, context
    for sh in shares:
        assert sh.answered >= MIN_ANSWERS, f"step {sh.weight}: only {sh.answered} answers\n{context}"
        assert abs(sh.share - sh.weight) <= TOLERANCE_POINTS, f"step {sh.weight}: {sh.share:.1f}%\n{context}"
    assert not failed, f"{len(failed)} failed requests during the promotion: {failed[:10]}\n{context}"
    # Promoted: every answer comes from the new version, on the stable track.
    assert {a.version for a in answers if a.t >= (timeline.first("Promoted") or 0) + SETTLE_S} == {CANARY_VERSION}
    st = s.get("pms", name)["status"]
    assert st["stableTag"] == CANARY_TAG and image_tag(s, name) == CANARY_TAG
    assert st["rollout"]["lastAnalysis"]["verdict"] == "Pass" and st["rollout"]["lastAnalysis"]["p99Ms"] < 5000
    reasons = {e["reason"] for e in events(s, name)}
    assert {"RolloutStarted", "CanaryWeight", "Promoting", "Promoted"} <= reasons, reasons
    # SLA status from the same Prometheus: figures, and the condition with them in its message.
    sla = wait_for(lambda: (s.get("pms", name)["status"].get("sla") or {}).get("p99Ms") and s.get("pms", name)["status"]["sla"],
                   60, "status.sla", dump=s.dump)  # fmt: skip
    assert sla["qps"] > 0 and sla["summary"].endswith("/5000ms"), sla
    cond = next(c for c in s.get("pms", name)["status"]["conditions"] if c["type"] == "SLAMet")
    assert cond["status"] == "True" and "p99=" in cond["message"], cond


def test_gateway_traffic_returns_to_stable_within_interval_times_failure_threshold_on_rollback(
    traffic_ns: Served, gateway: Traefik, cluster: Cluster, prometheus: Prometheus, tmp_path: Path
) -> None:
    s = traffic_ns
    name = "gw-rollback"
    assert cluster.local is not None and cluster.local.net is not None
    broken = "v5-broken"
    erroring_model(tmp_path / "www" / "broken", broken)
    base = serve_dir(tmp_path / "www", cluster.local.net.host_ip)
    url = next(base)
    s.apply(canary_service(name, gateway_router(hostname(name)), replicas=1))
    s.wait_ready(name)

    # 1 inference a second reaches the canary at 10 %: its first failed check needs 3 of them. Six
    # threads keep that pace while a busy machine slows the stable track's answers.
    traffic = Traffic(gateway.address, infer_rps=10, infer_threads=6, host=hostname(name)).start()
    timeline = Timeline(s.cluster, s.ns, name).start()

    def dump() -> str:
        return diagnose(s, name, prometheus, traffic, gateway) + f"\ntimeline:\n{timeline.describe(t0)}"

    t0 = time.monotonic()
    try:
        wait_serving(traffic, STABLE_VERSION, "the Gateway serving the stable track", dump)
        t0 = time.monotonic()
        s.patch(name, {"spec": {"tag": CANARY_TAG, "model": {"uri": f"{url}/broken/", "version": broken}}})
        wait_for(lambda: rollout(s, name).get("phase") == "RolledBack", 300, "rollback", dump=dump, interval=1)
        rolled_back = time.monotonic()
        # Every answer from stable again: past the router's settle time, 500 answers' worth.
        wait_for(
            lambda: sum(1 for a in traffic.snapshot() if a.t > rolled_back + SETTLE_S) >= MIN_ANSWERS,
            180,
            f"{MIN_ANSWERS} answers after the rollback",
            dump=dump,
            interval=1,
        )
    finally:
        traffic.stop()
        timeline.stop()
        base.close()
    answers = [a for a in traffic.snapshot() if a.t >= t0]
    canary = [a for a in answers if a.version == broken or (a.kind == "infer" and a.error)]
    assert canary, f"the canary never took traffic\n{timeline.describe(t0)}"
    first, last = canary[0].t, canary[-1].t
    exposed_s = last - first
    bound_s = INTERVAL_S * FAILURE_THRESHOLD
    after = [a for a in answers if a.t > last]
    r = rollout(s, name)
    figures = {
        "router": "GatewayAPI (Traefik 3.6.12)",
        "canary_first_answer_to_last_s": round(exposed_s, 2),
        "bound_s": bound_s,
        "canary_answers": len(canary),
        "canary_errors": sum(1 for a in canary if a.error),
        "last_check": r.get("lastAnalysis", {}).get("reason"),
        "rolled_back_seen_after_first_canary_answer_s": round(rolled_back - first, 2),
        "answers_after_last_canary_answer": len(after),
    }
    record("canary rollback through the Gateway", figures)
    context = f"{figures}\ntimeline:\n{timeline.describe(t0)}"
    assert r["failedChecks"] == FAILURE_THRESHOLD and r["lastAnalysis"]["verdict"] == "Fail", r
    assert "error rate" in r["message"], r
    assert exposed_s <= bound_s, f"canary answered for {exposed_s:.1f}s > {bound_s}s\n{context}"
    # 100 % to stable afterwards: every later answer is stable's, and there are plenty of them.
    assert len(after) >= MIN_ANSWERS and all(a.version == STABLE_VERSION and not a.error for a in after), context
    assert s.get("pms", name)["status"]["stableTag"] == STABLE_TAG and image_tag(s, name) == STABLE_TAG
    assert r["lastAnalysis"]["errorRate"] == 1.0 and "all traffic to stable" in r["message"], r
    # Scaled to zero once the route change has reached the router (canary.ROUTE_DRAIN_S).
    wait_for(lambda: s.get("deployment", f"{name}-canary")["spec"]["replicas"] == 0, 60, "canary scaled to zero")
    rb = [e for e in events(s, name) if e["reason"] == "RolledBack"]
    assert rb and rb[0]["type"] == "Warning" and "error rate" in rb[0]["message"], rb
    # It stays rolled back: the same revision is not retried behind the user's back.
    time.sleep(INTERVAL_S + 2)
    assert rollout(s, name)["phase"] == "RolledBack"


def test_service_router_traffic_share_is_the_replica_ratio_not_the_weight(traffic_ns: Served) -> None:
    s = traffic_ns
    name = "svc"
    replicas = 2
    s.apply(canary_service(name, {"type": "Service"}, replicas=replicas, interval_s=STEP_INTERVAL_S))
    s.wait_ready(name, replicas=replicas)
    # kube-proxy picks a pod per connection: one connection per request measures its split per request.
    traffic = Traffic(s.address(name), fresh_connections=True).start()
    timeline = Timeline(s.cluster, s.ns, name).start()
    try:
        wait_serving(traffic, STABLE_VERSION, "the Service serving the stable track", s.dump)
        t0 = time.monotonic()
        s.patch(name, {"spec": {"tag": CANARY_TAG, "model": {"version": CANARY_VERSION}}})
        wait_for(lambda: rollout(s, name).get("phase") == "Promoted", 900, "canary promoted", dump=s.dump, interval=2)
        time.sleep(5)
    finally:
        traffic.stop()
        timeline.stop()
    answers = [a for a in traffic.snapshot() if a.t >= t0]
    # kube-proxy's rules follow the EndpointSlices within a second or so here.
    # Up to Promoting: from there stable's pods roll to the canary's version (and take traffic).
    shares = step_shares(answers, timeline, STEPS, CANARY_VERSION, settle_s=2.0, lead_s=LEAD_S, through_promoting=False)
    failed = failures(traffic, t0)
    figures = {
        "router": f"Service (kube-proxy iptables, {replicas} replicas)",
        "steps": [sh.figures() for sh in shares],
        "requests": len(answers),
        "failed": len(failed),
    }
    record("canary traffic through the Service", figures)
    context = f"{figures}\ntimeline:\n{timeline.describe(t0)}"
    assert [sh.weight for sh in shares] == STEPS, context
    for sh in shares:
        assert sh.answered >= MIN_ANSWERS, f"step {sh.weight}: only {sh.answered} answers\n{context}"
        assert sh.pod_share is not None, context
        # Per-connection random choice among Ready pods: binomial around the pod share (4 sigma).
        p = sh.pod_share / 100
        sigma = 100 * math.sqrt(max(p * (1 - p), 0.01) / sh.answered)
        assert abs(sh.share - sh.pod_share) <= 4 * sigma + 1, f"step {sh.weight}\n{context}"
    assert not failed, f"{len(failed)} failed requests: {failed[:10]}\n{context}"


def test_slow_canary_is_rolled_back_on_latency_with_its_figures(traffic_ns: Served) -> None:
    """A p99 bound below what PP-OCRv4 rec needs per image on any CPU here: the canary breaks it."""
    s = traffic_ns
    name = "slow"
    bound_ms = 5
    s.apply(canary_service(name, {"type": "Service"}, replicas=1, maxLatencyP99Ms=bound_ms))
    s.wait_ready(name)
    traffic = Traffic(s.address(name), version_rps=0, fresh_connections=True).start()
    try:
        wait_serving(traffic, STABLE_VERSION, "the Service serving the stable track", s.dump)
        s.patch(name, {"spec": {"tag": CANARY_TAG}})
        wait_for(lambda: rollout(s, name).get("phase") == "RolledBack", 300, "rollback", dump=s.dump, interval=2)
    finally:
        traffic.stop()
    obj = s.get("pms", name)
    st, r = obj["status"], obj["status"]["rollout"]
    assert obj["spec"]["tag"] == CANARY_TAG, "spec is never rewritten"
    assert st["stableTag"] == STABLE_TAG and r["weight"] == 0 and r["failedChecks"] == FAILURE_THRESHOLD, r
    assert r["lastAnalysis"]["verdict"] == "Fail" and r["lastAnalysis"]["p99Ms"] > bound_ms, r
    assert f"> {bound_ms}ms" in r["message"] and f"all traffic to stable {STABLE_TAG}" in r["message"], r
    assert image_tag(s, name) == STABLE_TAG
    assert s.get("deployment", f"{name}-canary")["spec"]["replicas"] == 0, "canary scaled to zero"
    rb = [e for e in events(s, name) if e["reason"] == "RolledBack"]
    assert rb and rb[0]["type"] == "Warning" and "p99" in rb[0]["message"], rb
    record("canary rolled back on latency", {"p99_ms": r["lastAnalysis"]["p99Ms"], "bound_ms": bound_ms})


def test_prometheus_down_holds_the_weight_and_a_restarted_operator_resumes_a_paused_canary(
    traffic_ns: Served, cluster: Cluster, tmp_path: Path
) -> None:
    """The canary's own Prometheus (spec.rollout.analysis.prometheusURL), stopped at the first step and
    started again; then paused, the operator pod deleted, and resumed by the new pod from status."""
    s = traffic_ns
    name = "hold"
    prom = start_prometheus(cluster, tmp_path / "prometheus")
    try:
        s.apply(canary_service(name, {"type": "Service"}, replicas=1, prometheusURL=prom.url))
        s.wait_ready(name)
        traffic = Traffic(s.address(name), version_rps=0, fresh_connections=True).start()
        try:
            wait_serving(traffic, STABLE_VERSION, "the Service serving the stable track", s.dump)
            s.patch(name, {"spec": {"tag": CANARY_TAG}})
            wait_for(lambda: rollout(s, name).get("weight") == 10, 300, "first step", dump=s.dump, interval=1)
            prom.stop()
            wait_for(
                lambda: "Prometheus unreachable" in rollout(s, name).get("message", ""),
                3 * INTERVAL_S,
                "hold reported",
                dump=s.dump,
            )
            # Two more intervals without Prometheus: still at the first step, nothing counted as failure.
            time.sleep(2 * INTERVAL_S)
            r = rollout(s, name)
            assert (r["phase"], r["step"], r["weight"], r["failedChecks"]) == ("Progressing", 1, 10, 0), r
            assert r["lastAnalysis"]["verdict"] == "PrometheusUnreachable", r
            assert any(e["reason"] == "AnalysisUnavailable" for e in events(s, name))
            prom.start()
            wait_for(lambda: rollout(s, name).get("weight") == 30, 120, "second step", dump=s.dump, interval=1)
            s.patch(name, {"spec": {"rollout": {"paused": True}}})
            wait_for(lambda: rollout(s, name).get("phase") == "Paused", 30, "Paused", dump=s.dump)
            # The operator pod deleted while paused: the new one knows only what status says.
            old = {p["metadata"]["name"] for p in cluster.get("pods", "-n", s.op_ns)["items"]}
            cluster.kubectl("delete", "pods", "--all", "-n", s.op_ns, "--wait=false")
            wait_for(
                lambda: any(
                    p["metadata"]["name"] not in old
                    and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))
                    for p in cluster.get("pods", "-n", s.op_ns)["items"]
                ),
                300,
                "a new operator pod Ready",
                dump=lambda: dump_namespace(cluster, s.op_ns)(),
            )
            time.sleep(2 * INTERVAL_S)
            r = rollout(s, name)
            assert (r["phase"], r["weight"]) == ("Paused", 30), r
            assert image_tag(s, name) == STABLE_TAG, "a restart must not promote"
            assert image_tag(s, f"{name}-canary") == CANARY_TAG
            s.patch(name, {"spec": {"rollout": {"paused": False}}})
            wait_for(lambda: rollout(s, name).get("phase") == "Promoted", 600, "promoted", dump=s.dump, interval=2)
        finally:
            traffic.stop()
    finally:
        prom.stop()
    assert s.get("pms", name)["status"]["stableTag"] == CANARY_TAG
    reasons = {e["reason"] for e in events(s, name)}
    assert {"RolloutPaused", "RolloutResumed", "Promoted"} <= reasons, reasons
