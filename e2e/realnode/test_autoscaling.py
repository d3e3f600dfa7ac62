"""Autoscaling as users run it, on the real node: Prometheus discovers the pods (kubernetes_sd_configs),
prometheus-adapter serves the chart's rules behind the aggregation layer, the controller-manager's
HPA controller reads them and scales the operator's Deployments; the pods are real and so is the load.

Load goes through the Service's ClusterIP (kube-proxy), open loop, one connection per request, so a
new pod gets traffic once it is Ready. Figures go to stdout (``-s``) and benchmarks/results/realnode.json.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from e2e.cluster import Cluster
from e2e.cluster.adapter import Adapter
from e2e.cluster.prometheus import Prometheus
from e2e.realnode.autoscale import PacedLoad, Snapshot, Watch, autoscale_dump, hpa_status, pod_requests
from e2e.realnode.conftest import ADAPTER_RATE_WINDOW_S
from e2e.realnode.pods import LABEL, Served, pms, record, watched_namespaces
from e2e.util import wait_for

pytestmark = pytest.mark.realnode

QPS_METRIC = "paddle_runtime_requests_per_second"
RUNTIME_IMAGE = "ghcr.io/paddle-sla/paddle-runtime"
BEHAVIOURS = ("metrics", "qps", "cpu", "canary")
# Scale-down is made short through the resource's own field (the HPA's behavior.scaleDown).
STABILIZATION_S = 15
CPU_LOAD_QPS = 5.0
# After a promotion stable keeps the canary's size as its HPA floor this long: above the adapter's
# 20 s rate window, a 1 s scrape and kube-controller-manager's 15 s HPA sync.
PROMOTION_HOLD_S = 45


@pytest.fixture(scope="module")
def autoscale(
    cluster: Cluster, real_node: str, prometheus: Prometheus, adapter: Adapter
) -> Iterator[dict[str, Served]]:
    suffix = uuid.uuid4().hex[:4]
    names = {b: f"rn-as-{b}-{suffix}" for b in BEHAVIOURS}
    op_ns = f"rn-as-operator-{suffix}"
    values = (
        f"settings.prometheus_url={prometheus.url}",
        # Canary analysis over 20 s windows, so a step takes about the rollout's 20 s interval.
        "settings.analysis_min_window_s=20",
        f"settings.promotion_hold_s={PROMOTION_HOLD_S}",
    )
    try:
        watched_namespaces(cluster, list(names.values()), op_ns, values=values)
        yield {b: Served(cluster, ns, op_ns) for b, ns in names.items()}
    finally:
        cluster.helm("uninstall", "paddle-operator", "--namespace", op_ns, check=False)
        for ns in (*names.values(), op_ns):
            cluster.kubectl("delete", "namespace", ns, "--wait=false", "--ignore-not-found", check=False)


def _since(watch: Watch, t0: float, pred: Callable[[Snapshot], bool]) -> float | None:
    """Seconds from ``t0`` to the first snapshot where ``pred`` holds."""
    snap = watch.first(t0, pred)
    return round(snap.t - t0, 1) if snap else None


def test_autoscaling_metrics_api_returns_the_per_pod_qps_of_the_real_pods(
    autoscale: dict[str, Served], adapter: Adapter, prometheus: Prometheus
) -> None:
    s = autoscale["metrics"]
    s.apply(pms("qps", replicas=2))
    s.wait_ready("qps", replicas=2)
    pods = {p["metadata"]["name"]: p["status"]["podIP"] for p in s.ready_pods("qps")}
    rate = 2.0
    load = PacedLoad(s.address("qps"), rate).start()
    try:
        time.sleep(ADAPTER_RATE_WINDOW_S + 5)  # a full rate window of load behind the answer
        before, t0 = {n: pod_requests(ip) for n, ip in pods.items()}, time.monotonic()
        time.sleep(ADAPTER_RATE_WINDOW_S)
        after, t1 = {n: pod_requests(ip) for n, ip in pods.items()}, time.monotonic()
        got = wait_for(
            lambda: adapter.pods_metric(s.ns, QPS_METRIC, f"{LABEL}=qps"),
            60,
            "the custom metrics API to answer for the pods",
            dump=lambda: adapter.dump(s.ns, QPS_METRIC),
        )
    finally:
        load.stop()
    stats = load.stats()
    measured = {n: (after[n] - before[n]) / (t1 - t0) for n in pods}
    measured = {n: round(v, 3) for n, v in measured.items()}
    record("autoscaling_metrics_api", {"adapter_qps": got, "pod_counter_qps": measured, "load": stats})
    assert stats["failed"] == 0, stats
    assert set(got) == set(pods), (got, pods)
    for name, qps in measured.items():
        assert qps > 0.2 * rate, (name, measured)  # kube-proxy spread the connections over both pods
        assert abs(got[name] - qps) <= max(0.3 * qps, 0.4), (name, got, measured)
    assert abs(sum(got.values()) - rate) <= 0.3 * rate, (got, rate)

    # Only discovery feeds that answer: every target of the e2e Prometheus comes from kubernetes_sd.
    targets = prometheus.targets()
    assert targets and all(
        any(k.startswith("__meta_kubernetes_") for k in t["discoveredLabels"]) for t in targets
    ), [t["discoveredLabels"] for t in targets]
    scraped = {t["labels"].get("pod") for t in targets if t["labels"].get("namespace") == s.ns}
    assert set(pods) <= scraped, (pods, scraped)


def _scale_out_and_in(
    s: Served,
    adapter: Adapter,
    cluster: Cluster,
    name: str,
    rate: float,
    metric: str | None,
    expect: int | None,
) -> dict[str, object]:
    """Load at ``rate`` until the HPA scaled out (to ``expect`` replicas when given), its desired count held
    for 20 s and every pod served; then stop the load and wait for one pod again.

    Returns the timeline (seconds from load start), the HPA's changes and the latency figures."""
    dump = autoscale_dump(s, adapter, metric)
    s.wait_ready(name)
    (initial,) = s.ready_pods(name)
    first = initial["metadata"]["name"]
    assert initial["spec"]["nodeName"] == cluster.real_node
    watch = Watch(cluster, s.ns, name).start()
    load = PacedLoad(s.address(name), rate).start()
    t0 = load.started

    def desired(snap: Snapshot) -> int:
        return snap.hpas.get(name, {}).get("desired") or 0

    def scaled_out() -> Snapshot | None:
        history = list(watch.history)
        if not history:
            return None
        snap = history[-1]
        want = desired(snap)
        held = [sn for sn in history if sn.t >= snap.t - 20]
        ok = (
            want >= max(2, expect or 0)
            and history[0].t <= snap.t - 20
            and all(desired(sn) == want for sn in held)
            and len(snap.ready) >= want
            and all(snap.counts.get(p, 0) > 0 for p in snap.ready)
        )
        return snap if ok else None

    try:
        wait_for(lambda: watch.last and desired(watch.last) >= 2, 300,
                 f"{name}: the HPA's desiredReplicas >= 2 under load", dump=dump, interval=1)  # fmt: skip
        out = wait_for(
            scaled_out,
            420,
            f"{name}: desired replicas held for 20 s, all Ready and serving",
            dump=dump,
            interval=1,
        )
        nodes = sorted({p["spec"]["nodeName"] for p in s.ready_pods(name)})
        # Traffic spreads over all pods: per-pod counts over a further 15 s.
        before = dict(out.counts)
        time.sleep(15)
        spread = {p: watch.last.counts.get(p, 0) - before.get(p, 0) for p in out.ready} if watch.last else {}
        hpa_at_peak = hpa_status(s, name)
    finally:
        stopped = load.stop()
    try:
        wait_for(
            lambda: watch.last is not None
            and desired(watch.last) == 1
            and len(watch.last.ready) == 1
            and len(s.pods(name)) == 1,
            420,
            f"{name}: back to one pod after the load stopped",
            dump=dump,
            interval=2,
        )  # fmt: skip
    finally:
        watch.stop()
    changes, last = [], None
    for sn in watch.history:
        now = (desired(sn), len(sn.ready))
        if now != last:
            changes.append({"t_s": round(sn.t - t0, 1), "desired": now[0], "ready": now[1]})
            last = now
    serving2_s = _since(watch, t0, lambda sn: any(c > 0 for p, c in sn.counts.items() if p != first))
    down = watch.first(stopped, lambda sn: desired(sn) == 1 and len(sn.ready) == 1)
    return {
        "offered_qps": rate,
        "scaled_to": desired(out),
        "timeline_s": {
            "desired_replicas_ge_2": _since(watch, t0, lambda sn: desired(sn) >= 2),
            "second_pod_ready": _since(watch, t0, lambda sn: len(sn.ready) >= 2),
            "second_pod_serving": serving2_s,
            "all_pods_serving": _since(
                watch,
                t0,
                lambda sn: len(sn.ready) >= desired(out) and all(sn.counts.get(p, 0) > 0 for p in sn.ready),
            ),
            "load_stopped": round(stopped - t0, 1),
            "back_to_1_after_load_stop": round(down.t - stopped, 1) if down else None,
        },
        "changes": changes,
        "scale_up": load.stats(t0, t0 + (serving2_s or 0)),
        "whole_load": load.stats(),
        "per_pod_requests_15s": spread,
        "hpa_at_peak": hpa_at_peak,
        "nodes": nodes,
    }


def test_autoscaling_on_qps_scales_out_new_pods_take_traffic_and_it_scales_back_in(
    autoscale: dict[str, Served], adapter: Adapter, cluster: Cluster
) -> None:
    s, name = autoscale["qps"], "qps"
    # 2.5 QPS on one pod is 2.5x the target: the HPA asks for 3. Small figures: one PP-OCR request costs
    # ~50 ms of CPU, and this 2-core machine is shared, so a pod serves a few requests per second at most.
    target, rate = 1, 2.5
    autoscaling = {
        "minReplicas": 1,
        "maxReplicas": 3,
        "targetQPSPerReplica": target,
        "scaleDownStabilizationSeconds": STABILIZATION_S,
    }
    s.apply(pms(name, autoscaling=autoscaling))
    fig = _scale_out_and_in(s, adapter, cluster, name, rate, QPS_METRIC, expect=3)
    record("autoscaling_qps", fig)
    assert fig["scaled_to"] == 3, fig
    assert fig["whole_load"]["failed"] == 0, fig  # type: ignore[index]
    spread = fig["per_pod_requests_15s"]
    assert isinstance(spread, dict) and len(spread) >= 2 and all(n > 0 for n in spread.values()), fig
    assert fig["nodes"] == [cluster.real_node], fig


def test_autoscaling_on_cpu_scales_out_through_the_resource_metrics_api_and_back_in(
    autoscale: dict[str, Served], adapter: Adapter, cluster: Cluster
) -> None:
    s, name = autoscale["cpu"], "cpu"
    # 100m requested per pod, a 50 % target: 50m. One request (the quarter-width image) costs about
    # 23 ms of CPU, so 2 QPS sat at 46 % and never scaled; 5 QPS uses about 115m (desired 3).
    autoscaling = {
        "minReplicas": 1,
        "maxReplicas": 3,
        "targetCPUUtilization": 50,
        "scaleDownStabilizationSeconds": STABILIZATION_S,
    }
    s.apply(pms(name, autoscaling=autoscaling))
    s.wait_ready(name)
    hpa = s.get("hpa", name)
    assert [m["type"] for m in hpa["spec"]["metrics"]] == ["Resource"], hpa["spec"]["metrics"]
    # The CPU-initialisation rule of the HPA ignores a pod's CPU until one metric window after Ready.
    time.sleep(ADAPTER_RATE_WINDOW_S)
    usage = wait_for(
        lambda: adapter.pods_cpu(s.ns, f"{LABEL}={name}"),
        120,
        "the resource metrics API to report the pod's CPU",
        dump=lambda: adapter.dump(s.ns),
    )
    fig = _scale_out_and_in(s, adapter, cluster, name, CPU_LOAD_QPS, None, expect=None)
    fig["idle_cpu_cores"] = usage
    record("autoscaling_cpu", fig)
    assert fig["scaled_to"] >= 2, fig
    assert fig["whole_load"]["failed"] == 0, fig  # type: ignore[index]
    assert fig["nodes"] == [cluster.real_node], fig


# Canary: 1..4 replicas split by weight. Stable's bounds follow the routed weight, the canary's the
# weight of its next step (it is ready before the traffic moves): docs/canary.md, plan.build_children.
CANARY_STEPS = (25, 50, 100)
EXPECTED_BOUNDS = {  # routed weight -> {HPA: (min, max)}
    25: {"stable": (1, 3), "canary": (1, 2)},
    50: {"stable": (1, 2), "canary": (1, 4)},
    100: {"stable": (1, 1), "canary": (1, 4)},
}


# The longest flow of the suite (a canary through three steps and a promotion, up to five pods on
# the real node): on a busy 2-core machine it can outlast the suite's 900 s default.
@pytest.mark.timeout(1500)
def test_autoscaling_during_a_canary_sizes_each_track_hpa_by_its_weight(
    autoscale: dict[str, Served], adapter: Adapter, cluster: Cluster
) -> None:
    s, name = autoscale["canary"], "cn"
    canary_hpa = f"{name}-canary"
    assert cluster.local is not None and cluster.local.node is not None
    cluster.local.node.ctr(
        "images", "tag", "--force", f"{RUNTIME_IMAGE}:0.1.0-cpu", f"{RUNTIME_IMAGE}:0.1.0-cpu-as"
    )
    spec = {
        "autoscaling": {
            "minReplicas": 1,
            "maxReplicas": 4,
            "targetQPSPerReplica": 1,
            "scaleDownStabilizationSeconds": STABILIZATION_S,
        },
        # Generous latency: the verdicts must not depend on how busy this shared machine is.
        "sla": {"latencyP99Ms": 30000, "availability": "99"},
        "rollout": {"steps": list(CANARY_STEPS), "intervalSeconds": 20, "analysis": {"minRequests": 10}},
    }
    s.apply(pms(name, **spec))
    s.wait_ready(name)
    dump = autoscale_dump(s, adapter, QPS_METRIC)
    watch = Watch(cluster, s.ns, name).start()
    # Offered once the canary holds its first step. The Service router splits by pods, so whichever
    # track's HPA scales first lowers the other's per-pod load: at 2.5 QPS (1.25x the target on each
    # of two pods) the stable HPA scaled first in a CI run and the canary's pod then read 0.42 for
    # good. At 3.6 the canary's one pod still carries 1.2x beside two stable pods.
    rate = 3.6
    load = PacedLoad(s.address(name), rate)
    bounds: dict[int, dict[str, tuple[int, int]]] = {}

    def track_bounds(snap: Snapshot) -> dict[str, tuple[int, int]]:
        return {
            track: (snap.hpas[hpa]["min"], snap.hpas[hpa]["max"])
            for track, hpa in (("stable", name), ("canary", canary_hpa))
            if hpa in snap.hpas
        }

    def at_weight(weight: int) -> Snapshot | None:
        """The first moment the rollout is at ``weight`` and both HPAs carry that step's bounds."""
        snap = watch.last
        if snap is None or snap.rollout.get("weight") != weight:
            return None
        return snap if track_bounds(snap) == EXPECTED_BOUNDS[weight] else None

    try:
        s.patch(name, {"spec": {"tag": "0.1.0-cpu-as"}})
        # Step 1 needs only a Ready canary; without traffic its analysis has too few requests to move on.
        wait_for(lambda: watch.last and watch.last.rollout.get("weight") == 25, 300, "step 1 (25%)",
                 dump=dump, interval=1)  # fmt: skip
        # Hold the first step while the HPAs work on the load.
        s.patch(name, {"spec": {"rollout": {"paused": True}}})
        bounds[25] = track_bounds(
            wait_for(lambda: at_weight(25), 60, "HPA bounds of step 25%", dump=dump, interval=1)
        )
        load.start()

        def canary_scaled() -> Snapshot | None:
            sn = watch.last
            c = sn.hpas.get(canary_hpa, {}) if sn else {}
            ready_canary = [p for p in (sn.ready if sn else {}) if p.startswith(f"{name}-canary-")]
            ok = (
                sn
                and (c.get("desired") or 0) >= 2
                and len(ready_canary) >= 2
                and all(sn.counts.get(p, 0) > 0 for p in ready_canary)
            )
            return sn if ok else None

        scaled = wait_for(
            canary_scaled, 420, "the canary's HPA to scale the canary under load", dump=dump, interval=1
        )
        at_step1 = {
            "stable": dict(scaled.hpas.get(name, {})),
            "canary": dict(scaled.hpas.get(canary_hpa, {})),
            "ready_pods": sorted(scaled.ready),
        }
        s.patch(name, {"spec": {"rollout": {"paused": False}}})
        for weight in CANARY_STEPS[1:]:
            snap = wait_for(lambda w=weight: at_weight(w), 300, f"step {weight}% with its HPA bounds", dump=dump,
                            interval=1)  # fmt: skip
            bounds[weight] = track_bounds(snap)
        promoted = wait_for(
            lambda: watch.last and watch.last.rollout.get("phase") == "Promoted" and canary_hpa not in watch.last.hpas
            and watch.last.hpas.get(name, {}).get("max") == 4 and watch.last,
            420, "promotion: canary HPA gone, stable HPA ..4 again", dump=dump, interval=1,
        )  # fmt: skip
        # The hold ends (stable's own floor again), then the HPA decides on the returned traffic.
        released = wait_for(
            lambda: watch.first(promoted.t, lambda sn: sn.hpas.get(name, {}).get("min") == 1),
            PROMOTION_HOLD_S + 60, "the promotion hold to end (stable HPA 1..4)", dump=dump, interval=1,
        )  # fmt: skip
        time.sleep(STABILIZATION_S + 20)
    finally:
        load.stop()
        watch.stop()
    during = [sn for sn in watch.history if sn.rollout.get("phase") in ("Progressing", "Paused", "Promoting")]
    steps = [sn for sn in during if sn.rollout.get("phase") != "Promoting"]
    stable_peak = max((sn.hpas.get(name, {}).get("desired") or 0) for sn in steps)
    canary_peak = max((sn.hpas.get(canary_hpa, {}).get("desired") or 0) for sn in during)

    # Promotion: the canary's pods go; stable must already hold as many Ready pods (plan.Shape.stable_min).
    def tracks(sn: Snapshot) -> dict[str, int]:
        canary_pods = [p for p in sn.ready if p.startswith(f"{name}-canary-")]
        return {"canary_ready": len(canary_pods), "stable_ready": len(sn.ready) - len(canary_pods)}

    last_promoting = [sn for sn in watch.history if sn.rollout.get("phase") == "Promoting"][-1:]
    promotion = {
        "before": {
            **tracks(last_promoting[0]),
            "canary_desired": last_promoting[0].hpas.get(canary_hpa, {}).get("desired"),
        }
        if last_promoting
        else None,
        "at_promoted": tracks(promoted),
        "around": load.stats(promoted.t - 15, promoted.t + 15),
    }
    # After Promoted: stable's HPA floor (held), when it was released, and the least stable capacity.
    after = [sn for sn in watch.history if sn.t >= promoted.t and name in sn.hpas]
    held_floor = promoted.hpas[name]["min"]
    needed = math.ceil(0.8 * rate / 1)  # the load's pods at the target, with room for measuring noise
    promotion["after"] = {
        "held_floor": held_floor,
        "released_after_s": round(released.t - promoted.t, 1),
        "stable_desired_min": min((sn.hpas[name].get("desired") or 0) for sn in after),
        "stable_ready_min": min(tracks(sn)["stable_ready"] for sn in after),
        "stable_desired_last": after[-1].hpas[name].get("desired"),
    }
    # Bounds seen at each weight (every snapshot, not only the awaited one).
    seen: dict[int, set[tuple]] = {}
    for sn in during:
        w = sn.rollout.get("weight")
        if w in EXPECTED_BOUNDS and name in sn.hpas and canary_hpa in sn.hpas:
            seen.setdefault(w, set()).add(
                (
                    (sn.hpas[name]["min"], sn.hpas[name]["max"]),
                    (sn.hpas[canary_hpa]["min"], sn.hpas[canary_hpa]["max"]),
                )
            )
    stats = load.stats()
    fig = {
        "bounds_per_step": {str(w): {t: list(v) for t, v in b.items()} for w, b in bounds.items()},
        "bounds_seen_per_weight": {str(w): sorted(map(list, v)) for w, v in seen.items()},
        "at_step_25_under_load": at_step1,
        "stable_desired_peak": stable_peak,
        "canary_desired_peak": canary_peak,
        "promoted_stable_hpa": promoted.hpas.get(name),
        "promotion": promotion,
        "load": stats,
    }
    record("autoscaling_canary", fig)
    assert set(bounds) == set(CANARY_STEPS), fig
    # The canary's HPA scaled the canary (Argo Rollouts #2857: here the stable track is not pushed to
    # the service's maximum; each track's HPA works on its own pods within its share).
    assert canary_peak >= 2, fig
    assert stable_peak < 4, fig
    assert stats["failed"] == 0, fig
    assert promotion["before"] is not None, fig
    assert promotion["at_promoted"]["stable_ready"] >= (promotion["before"]["canary_desired"] or 0), fig
    # Stable's HPA held the canary's size, then scaled on the traffic that came back to it, never down
    # to what idle pods ask for (canary.held; without it: 1 of 3 stable pods left at Promoted).
    after_fig = promotion["after"]
    assert held_floor >= 2, fig
    assert PROMOTION_HOLD_S - 10 <= after_fig["released_after_s"] <= PROMOTION_HOLD_S + 30, fig
    assert after_fig["stable_desired_min"] >= min(held_floor, needed), fig
