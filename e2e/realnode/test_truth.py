"""Status from the pods, on real pods: the Helm-installed operator reads what the runtimes report
through the e2e Prometheus (which discovers the pods with the users' scrape config) and writes it
into the resource's status, with an event on each transition.

- degraded: latency injected into the main model (the runtime's test-only fault injection, on only
  because this test sets ``PADDLE_RUNTIME_FAULT_INJECTION_FILE``) makes the fallback serve:
  ``status.fallback`` ``Active (1/1)`` (the FALLBACK printer column) and ``Degraded=True`` within a
  bound derived from the runtime's window, the scrape interval and the operator's query period;
  after the fault is gone and the ramp is done, ``Armed`` and ``Degraded=False`` again.
- model_current: with ``update: HotReload``, a tampered candidate (weights changed after signing)
  is refused by the model-sync sidecar's fetch; the runtime reports the refusal and the status says
  ``ModelCurrent=False`` with its error while the old version keeps answering; a good candidate
  makes it ``True`` with the new version.

Figures (transition times against their bounds) go to stdout (``-s``) and
``benchmarks/results/realnode.json``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.cluster import Cluster
from e2e.cluster.prometheus import Prometheus
from e2e.demo import http_get
from e2e.realnode.pods import Load, Served, pms, record, serve_dir, signed_copy, watched_namespaces
from e2e.util import wait_for

pytestmark = pytest.mark.realnode

# The operator's truth pass (one Prometheus query for all resources) runs every TRUTH_PERIOD_S,
# started by the rollout loop's tick; both shortened here from their defaults (10 s, 5 s).
TRUTH_PERIOD_S = 2.0
TICK_S = 1.0
# The fallback as the test configures it: switch when the mean latency of the last WINDOW main
# requests passes THRESHOLD_MS; the injected delay is well above it.
WINDOW = 5
THRESHOLD_MS = 600
DELAY_MS = 1500
# Recovery: main must look healthy (probes) for HOLD_S, then the ramp's steps of RAMP_STEP_S each.
HOLD_S = 5.0
RAMP_STEP_S = 2.0
RAMP = (25, 50, 100)
# What one truth pass may take on top of the period: the query, the server-side apply, and a busy
# machine (the API server and the operator share 2 cores with everything else).
PASS_ALLOWANCE_S = 10.0
FAULTS = "/tmp/paddle-runtime-faults/faults.yaml"


def _scrape_s(prometheus: Prometheus) -> float:
    return float(prometheus.interval.rstrip("s"))


def seen_by_status_s(prometheus: Prometheus) -> float:
    """From a pod's metric changing to the status showing it: one scrape, then the next truth pass
    (it starts at most a period plus a tick after the last one), plus the pass itself."""
    return _scrape_s(prometheus) + TRUTH_PERIOD_S + TICK_S + PASS_ALLOWANCE_S


@pytest.fixture(scope="module")
def truth_ns(cluster: Cluster, real_node: str, prometheus: Prometheus) -> Iterator[Served]:
    suffix = uuid.uuid4().hex[:4]
    ns, op_ns = f"rn-truth-{suffix}", f"rn-truth-op-{suffix}"
    try:
        watched_namespaces(
            cluster, [ns], op_ns,
            # Whole numbers: helm --set reads "2.0" as a string, which the chart's schema refuses.
            values=(f"settings.prometheus_url={prometheus.url}", f"settings.truth_period_s={TRUTH_PERIOD_S:.0f}",
                    f"settings.rollout_tick_s={TICK_S:.0f}"),
        )  # fmt: skip
        yield Served(cluster, ns, op_ns)
    finally:
        cluster.helm("uninstall", "paddle-operator", "--namespace", op_ns, check=False)
        for n in (ns, op_ns):
            cluster.kubectl("delete", "namespace", n, "--wait=false", "--ignore-not-found", check=False)


def _stable(obj: dict[str, Any]) -> dict[str, Any]:
    return obj.get("status", {}).get("served", {}).get("stable", {})


def _conds(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in obj.get("status", {}).get("conditions", [])}


def _status_line(s: Served, name: str) -> str:
    return s.cluster.kubectl("get", "pms", name, "-n", s.ns).stdout


def _events(s: Served, name: str) -> list[dict[str, Any]]:
    items = s.get("events", "--field-selector", f"involvedObject.name={name},involvedObject.kind=PaddleModelService")
    return sorted(items["items"], key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")


def _wait_event(s: Served, name: str, type_: str, reason: str, timeout: float = 60) -> dict[str, Any]:
    return wait_for(
        lambda: next((e for e in _events(s, name) if (e["type"], e["reason"]) == (type_, reason)), None),
        timeout, f"a {type_} {reason} event on {name}", dump=s.dump, interval=1,
    )  # fmt: skip


def _dump(s: Served, prometheus: Prometheus):
    return lambda: s.dump() + "\n" + prometheus.dump()


def test_degraded_fallback_active_from_injected_latency_then_armed_after_the_ramp(
    truth_ns: Served, prometheus: Prometheus, cluster: Cluster, tmp_path: Path
) -> None:
    s, name = truth_ns, "deg"
    assert cluster.local is not None and cluster.local.net is not None
    # The fallback: the same rec model (the same contract) from another URI, as the CRD requires.
    signed_copy(tmp_path / "fallback", None, "f1")
    base = serve_dir(tmp_path, cluster.local.net.host_ip)
    url = next(base)
    try:
        _degraded(s, name, prometheus, f"{url}/fallback/")
    finally:
        base.close()


def _degraded(s: Served, name: str, prometheus: Prometheus, fallback_uri: str) -> None:
    inference = {
        "device": "cpu", "cpuThreads": 1, "maxBatchSize": 4,
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "4Gi"}},
    }  # fmt: skip
    env = [
        {"name": "PADDLE_RUNTIME_FAULT_INJECTION_FILE", "value": FAULTS},
        {"name": "PADDLE_RUNTIME_FALLBACK_HOLD_S", "value": str(HOLD_S)},
        {"name": "PADDLE_RUNTIME_FALLBACK_RAMP_STEP_S", "value": str(RAMP_STEP_S)},
    ]
    fallback = {"uri": fallback_uri, "latencyThresholdMs": THRESHOLD_MS, "window": WINDOW, "recoverySteps": list(RAMP)}
    s.apply(pms(name, inference=inference, env=env, fallback=fallback))
    s.wait_ready(name)
    (pod,) = s.ready_pods(name)
    pod_name = pod["metadata"]["name"]
    dump = _dump(s, prometheus)

    def status_where(pred, timeout: float, what: str) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            obj = s.get("pms", name)
            return obj if pred(obj) else None

        return wait_for(check, timeout, what, dump=dump, interval=0.5)

    status_where(
        lambda o: o["status"].get("fallback") == "Armed" and _conds(o).get("ModelCurrent", {}).get("status") == "True",
        120 + seen_by_status_s(prometheus), "Armed and ModelCurrent=True once Prometheus scrapes the pod",
    )  # fmt: skip
    load = Load(s.address(name), threads=2).start()
    try:
        time.sleep(5)  # steady: the window holds fast main-model requests
        steady = {"ok": load.ok, "failed": len(load.failures)}
        # Every main request now takes DELAY_MS longer: WINDOW of them fill the window.
        switch_s = WINDOW * (DELAY_MS / 1000 + 1.0)
        active_bound = switch_s + seen_by_status_s(prometheus)
        t0 = time.monotonic()
        s.exec(pod_name, "sh", "-c", f"mkdir -p {Path(FAULTS).parent} && echo 'main: {{delay_ms: {DELAY_MS}}}' > {FAULTS}")
        active = status_where(
            lambda o: o["status"].get("fallback") == "Active (1/1)"
            and _conds(o).get("Degraded", {}).get("status") == "True"
            and _conds(o)["Degraded"].get("reason") == "FallbackActive",
            active_bound, f"fallback Active (1/1) and Degraded=True within {active_bound:.0f}s",
        )
        active_s = time.monotonic() - t0
        degraded = _conds(active)["Degraded"]
        line = _status_line(s, name)
        _wait_event(s, name, "Warning", "FallbackActive")
        # The status reads the pod's fallback state from Prometheus, which can have scraped the switch
        # before the first answer the fallback gave: its request counter shows up a scrape or two later.
        fallback_answers = wait_for(
            lambda: prometheus.query(
                f'sum(paddle_runtime_requests_total{{namespace="{s.ns}",service="{name}",role="fallback",code="200"}})'
            ),
            10 * _scrape_s(prometheus) + 5, "the fallback's answers in Prometheus", dump=dump,
        )
        # The fault goes; main must look healthy for HOLD_S, then each ramp step takes RAMP_STEP_S.
        probe_s = WINDOW * (0.5 + 1.0)  # fallback_probe_interval_s 0.5 + a slow loaded run, per probe
        recover_s = probe_s + HOLD_S + len(RAMP) * RAMP_STEP_S
        armed_bound = recover_s + seen_by_status_s(prometheus) + 30  # + a ramp step redone under load
        t1 = time.monotonic()
        s.exec(pod_name, "sh", "-c", f"echo '{{}}' > {FAULTS}")
        status_where(
            lambda o: o["status"].get("fallback") == "Armed" and _conds(o).get("Degraded", {}).get("status") == "False"
            and _stable(o).get("pods") == 1 and _stable(o).get("fallbackPods") == 0,  # the pod reported it
            armed_bound, f"fallback Armed and Degraded=False again within {armed_bound:.0f}s",
        )  # fmt: skip
        armed_s = time.monotonic() - t1
        _wait_event(s, name, "Normal", "Recovered")
        time.sleep(2)
    finally:
        summary = load.stop()
    code, body = http_get(f"http://{s.address(name)}/version", timeout=5)
    fb_status = json.loads(body).get("fallback") if code == 200 else None
    events = [(e["type"], e["reason"], e.get("message", "")[:120]) for e in _events(s, name)]
    record(
        "degraded",
        {
            "fallback_active_s": round(active_s, 1),
            "fallback_active_bound_s": round(active_bound, 1),
            "armed_again_s": round(armed_s, 1),
            "armed_bound_s": round(armed_bound, 1),
            "bound_terms": {"window": WINDOW, "delay_ms": DELAY_MS, "threshold_ms": THRESHOLD_MS,
                            "scrape_interval_s": _scrape_s(prometheus), "truth_period_s": TRUTH_PERIOD_S,
                            "tick_s": TICK_S, "hold_s": HOLD_S, "ramp": list(RAMP), "ramp_step_s": RAMP_STEP_S},
            "degraded_condition": {k: degraded.get(k) for k in ("reason", "message")},
            "kubectl_get_pms": line.strip().splitlines(),
            "events": events,
            "fallback_answers": fallback_answers[0]["value"][1] if fallback_answers else None,
            "runtime_fallback_status": fb_status,
            "load": {"steady": steady, **summary},
        },
    )
    assert degraded["reason"] == "FallbackActive" and "1/1 pods serve the fallback" in degraded["message"], degraded
    header, row = line.strip().splitlines()[:2]
    assert "FALLBACK" in header and "Active (1/1)" in row, line
    assert fallback_answers and float(fallback_answers[0]["value"][1]) > 0, fallback_answers
    # Each transition once (no flapping from a missed scrape): one FallbackActive, one Recovered.
    reasons = [r for _, r, _ in events]
    assert reasons.count("FallbackActive") == 1 and reasons.count("Recovered") == 1, events
    assert summary["failed"] == 0, summary  # the fallback answered while main was slow: nothing lost


def _served_version(address: str) -> str | None:
    code, body = http_get(f"http://{address}/version", timeout=5)
    return json.loads(body).get("model_version") if code == 200 else None


def test_model_current_false_with_the_runtime_error_for_a_tampered_candidate_then_true_for_a_good_one(
    truth_ns: Served, prometheus: Prometheus, cluster: Cluster, tmp_path: Path
) -> None:
    s, name = truth_ns, "mc"
    assert cluster.local is not None and cluster.local.net is not None
    signed_copy(tmp_path / "s1", None, "s1")  # manifest only: fetch checks every file's SHA-256
    tampered = signed_copy(tmp_path / "t2", None, "t2")
    weights = tampered / "inference.pdiparams"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # changed after signing
    weights.write_bytes(bytes(data))
    signed_copy(tmp_path / "g3", None, "g3")
    base = serve_dir(tmp_path, cluster.local.net.host_ip)
    url = next(base)
    # A reload holds two engines and runs a child-process check of the candidate: 2Gi is too tight.
    inference = {
        "device": "cpu", "cpuThreads": 1, "maxBatchSize": 4,
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "4Gi"}},
    }  # fmt: skip
    dump = _dump(s, prometheus)

    def status_where(pred, timeout: float, what: str) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            obj = s.get("pms", name)
            return obj if pred(obj) else None

        return wait_for(check, timeout, what, dump=dump, interval=1)

    # From a spec change to the pod: the kubelet refreshes the ConfigMap volume (its sync, 10 s on
    # this node, plus its cache), the sidecar polls every 15 s, then fetch (and, for a good one, the
    # runtime's 5 s poll, the child check, load and warm-up); then one scrape and the truth pass.
    to_pod_s = 10 + 60 + 15 + 5 + 90
    bound = to_pod_s + seen_by_status_s(prometheus)
    try:
        s.apply(pms(name, model={"uri": f"{url}/s1/", "version": "s1", "update": "HotReload"}, inference=inference))
        s.wait_ready(name)
        (pod,) = s.ready_pods(name)
        uid = pod["metadata"]["uid"]
        address = s.address(name)
        first = status_where(
            lambda o: _conds(o).get("ModelCurrent", {}).get("status") == "True" and o["status"].get("modelVersion") == "s1",
            120 + seen_by_status_s(prometheus), "ModelCurrent=True serving s1",
        )  # fmt: skip
        load = Load(address, threads=2).start()
        try:
            time.sleep(3)
            t0 = time.monotonic()
            s.patch(name, {"spec": {"model": {"uri": f"{url}/t2/", "version": "t2"}}})
            refused = status_where(
                lambda o: _conds(o).get("ModelCurrent", {}).get("status") == "False"
                and _conds(o)["ModelCurrent"].get("reason") == "ReloadFailed",
                bound, f"ModelCurrent=False (ReloadFailed) within {bound:.0f}s",
            )
            refused_s = time.monotonic() - t0
            mc_false = _conds(refused)["ModelCurrent"]
            _wait_event(s, name, "Warning", "ReloadFailed")
            served_meanwhile = _served_version(address)
            ok_meanwhile, failed_meanwhile = load.ok, len(load.failures)
            t1 = time.monotonic()
            s.patch(name, {"spec": {"model": {"uri": f"{url}/g3/", "version": "g3"}}})
            current = status_where(
                lambda o: _conds(o).get("ModelCurrent", {}).get("status") == "True" and o["status"].get("modelVersion") == "g3",
                bound, f"ModelCurrent=True serving g3 within {bound:.0f}s",
            )  # fmt: skip
            current_s = time.monotonic() - t1
            _wait_event(s, name, "Normal", "ModelCurrent")
            time.sleep(3)
        finally:
            summary = load.stop()
    finally:
        base.close()
    (after,) = s.pods(name)
    restarts = {c["name"]: c["restartCount"] for c in after["status"]["containerStatuses"]}
    events = [(e["type"], e["reason"], e.get("message", "")[:160]) for e in _events(s, name)]
    record(
        "model_current",
        {
            "first": {k: _conds(first)["ModelCurrent"].get(k) for k in ("reason", "message")},
            "refused_in_status_s": round(refused_s, 1),
            "refused_condition": {k: mc_false.get(k) for k in ("reason", "message")},
            "served_while_refused": served_meanwhile,
            "requests_while_refused": {"ok": ok_meanwhile, "failed": failed_meanwhile},
            "good_current_s": round(current_s, 1),
            "bound_s": round(bound, 1),
            "served_after": current["status"].get("served"),
            "events": events,
            "restart_counts": restarts,
            "load": summary,
        },
    )
    assert "fetch of t2 refused: checksum" in mc_false["message"], mc_false
    assert "s1" in mc_false["message"] and refused["status"].get("modelVersion") == "s1", refused["status"]
    assert served_meanwhile == "s1"
    assert _conds(refused)["Degraded"]["reason"] == "ReloadFailed", _conds(refused)
    assert "reloadError" not in current["status"]["served"]["stable"], current["status"]  # nothing stale
    assert _conds(current)["Degraded"]["status"] == "False", _conds(current)
    assert after["metadata"]["uid"] == uid and set(restarts.values()) == {0}, restarts
    assert summary["failed"] == 0 and summary["requests"] > 0, summary
