"""Status from what the pods report (truth.py): the one query, the per-pod index, the status rules."""

from __future__ import annotations

from typing import Any

from pms_cases import load_case

from paddle_operator import promql
from paddle_operator.truth import PodReport, index_samples, transitions, truth_status


def _sample(name: str, pod: str, value: float = 1, track: str = "stable", **labels: str) -> dict[str, Any]:
    metric = {"__name__": name, "namespace": "prod", "service": "full", "track": track, "pod": pod,
              "instance": f"{pod}:8080", "job": "paddle-runtime", **labels}
    return {"metric": metric, "value": [1700000000.0, str(value)]}


def _cond(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == type_)


def test_one_query_covers_every_resource_and_keeps_series_names() -> None:
    q = promql.runtime_truth()
    # No namespace or service in it: one query for 1000 resources, not one per resource.
    assert 'namespace="' not in q and 'service="' not in q
    assert q.startswith('{__name__=~"') and 'role!="fallback"' in q
    for name in (promql.MODEL_INFO, promql.FALLBACK_ACTIVE, promql.RELOAD_FAILING):
        assert name in q


def test_samples_are_indexed_per_resource_track_and_pod() -> None:
    idx = index_samples([
        _sample(promql.MODEL_INFO, "a", version="v5", role="main", model="m", device="cpu"),
        _sample(promql.FALLBACK_ACTIVE, "a", 1),
        _sample(promql.RELOAD_FAILING, "a", error="checksum: inference.pdiparams"),
        _sample(promql.MODEL_INFO, "b", version="v4", role="main", model="m", device="cpu"),
        _sample(promql.FALLBACK_ACTIVE, "b", 0),
        _sample(promql.MODEL_INFO, "c", track="canary", version="v6", role="main", model="m", device="cpu"),
        {"metric": {"__name__": promql.MODEL_INFO, "pod": "x"}, "value": [0, "1"]},  # no service: not ours
    ])
    assert set(idx) == {("prod", "full")}
    assert idx["prod", "full"]["stable"] == {
        "a": PodReport("v5", True, "checksum: inference.pdiparams"),
        "b": PodReport("v4", False, None),
    }
    assert idx["prod", "full"]["canary"] == {"c": PodReport("v6")}


def test_fallback_on_one_pod_is_active_n_of_m_and_degraded() -> None:
    svc = load_case("full")  # spec.model.version v5, with a fallback
    pods = {"a": PodReport("v5", True), "b": PodReport("v5"), "c": PodReport("v5")}
    st = truth_status(svc, {"stable": pods}, None, now="t0")
    assert st["fallback"] == "Active (1/3)"
    assert _cond(st, "Degraded")["status"] == "True" and _cond(st, "Degraded")["reason"] == "FallbackActive"
    assert _cond(st, "ModelCurrent")["status"] == "True"
    assert st["served"]["stable"] == {"pods": 3, "versions": [{"version": "v5", "pods": 3}], "fallbackPods": 1}
    healthy = truth_status(svc, {"stable": {k: PodReport("v5") for k in pods}}, st, now="t1")
    assert healthy["fallback"] == "Armed" and _cond(healthy, "Degraded")["status"] == "False"
    events = transitions(st, healthy)
    assert [(e.type, e.reason) for e in events] == [("Normal", "Recovered")]


def test_refused_reload_keeps_old_version_and_says_why_then_clears() -> None:
    svc = load_case("full")
    err = "checksum: inference.pdiparams: sha256 mismatch"
    stuck = {"a": PodReport("v4", reload_error=err), "b": PodReport("v4", reload_error=err)}
    st = truth_status(svc, {"stable": stuck}, None, now="t0")
    mc = _cond(st, "ModelCurrent")
    assert (mc["status"], mc["reason"]) == ("False", "ReloadFailed") and err in mc["message"] and "v5" in mc["message"]
    assert _cond(st, "Degraded")["reason"] == "ReloadFailed"
    assert st["modelVersion"] == "v4" and st["served"]["stable"]["reloadError"] == err
    # Mid-reload: two versions, counted per version.
    mixed = truth_status(svc, {"stable": {"a": PodReport("v5"), "b": PodReport("v4")}}, st, now="t1")
    assert mixed["modelVersion"] == "v4 (1/2), v5 (1/2)"
    assert "reloadError" not in mixed["served"]["stable"]  # nothing stale once the cause is gone
    assert _cond(mixed, "ModelCurrent")["reason"] == "PodsNotCurrent"
    done = truth_status(svc, {"stable": {"a": PodReport("v5"), "b": PodReport("v5")}}, mixed, now="t2")
    assert _cond(done, "ModelCurrent")["status"] == "True" and done["modelVersion"] == "v5"
    assert _cond(done, "ModelCurrent")["lastTransitionTime"] == "t2"
    assert [(e.type, e.reason) for e in transitions(None, st)] == [
        ("Warning", "ReloadFailed"), ("Warning", "ReloadFailed")]
    assert [(e.type, e.reason) for e in transitions(mixed, done)] == [("Normal", "ModelCurrent")]
    assert transitions(done, truth_status(svc, {"stable": {"a": PodReport("v5"), "b": PodReport("v5")}}, done)) == []


def test_no_reports_is_unknown_not_the_spec_echoed() -> None:
    svc = load_case("full")
    st = truth_status(svc, None, None, no_data_reason="NoPrometheus")
    assert "modelVersion" not in st and "served" not in st and st["fallback"] == "Armed"
    assert (_cond(st, "ModelCurrent")["status"], _cond(st, "ModelCurrent")["reason"]) == ("Unknown", "NoPrometheus")
    st = truth_status(svc, {}, None)
    assert _cond(st, "ModelCurrent")["reason"] == "NoPodsReporting"


def test_deployment_signs_still_make_it_degraded() -> None:
    svc = load_case("full")
    status = {"readyReplicas": 1, "replicaSummary": "1/3",
              "conditions": [{"type": "Available", "status": "True"}, {"type": "Progressing", "status": "True"}]}
    st = truth_status(svc, {"stable": {"a": PodReport("v5")}}, status)
    assert (_cond(st, "Degraded")["status"], _cond(st, "Degraded")["reason"]) == ("True", "ReplicasUnavailable")
    status["conditions"][1] = {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                               "message": "stuck"}
    assert _cond(truth_status(svc, {}, status), "Degraded")["reason"] == "ProgressDeadlineExceeded"


def _pod(name: str, *inits: dict[str, Any], deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "prod", "labels": {"serving.paddlesla.io/service": "full"}}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta, "status": {"initContainerStatuses": list(inits)}}


CHECKSUM = ("fetch failed: checksum: SHA-256 of inference.pdiparams (3f2a...) does not match "
            "the manifest (9c1e...)")


def test_pod_failure_reads_the_failed_fetch_while_the_kubelet_retries_and_forgets_it_after_success() -> None:
    from paddle_operator.truth import PodFailure, pod_failure

    failed = {"name": "fetch-model", "state": {"terminated": {"exitCode": 5, "reason": "Error", "message": CHECKSUM}}}
    assert pod_failure(_pod("a", failed)) == PodFailure("a", "fetch-model", CHECKSUM)
    # Retried by the kubelet: the failure stays in lastState while the next attempt waits or runs.
    for state in ({"waiting": {"reason": "CrashLoopBackOff"}}, {"running": {}}):
        retry = {"name": "fetch-model", "state": state,
                 "lastState": {"terminated": {"exitCode": 5, "message": CHECKSUM + "\n"}}}
        assert pod_failure(_pod("a", retry)) == PodFailure("a", "fetch-model", CHECKSUM)
    # A later success, a healthy pod, a pod being deleted, a non-fetch init container: nothing.
    ok = {"name": "fetch-model", "state": {"terminated": {"exitCode": 0}},
          "lastState": {"terminated": {"exitCode": 5, "message": CHECKSUM}}}
    assert pod_failure(_pod("a", ok)) is None
    assert pod_failure(_pod("a", {"name": "fetch-model", "state": {"running": {}}})) is None
    assert pod_failure(_pod("a", failed, deleting=True)) is None
    other = {"name": "setup", "state": {"terminated": {"exitCode": 1, "message": "no"}}}
    assert pod_failure(_pod("a", other)) is None
    # No termination message: the exit code and reason say what little is known.
    bare = {"name": "fetch-fallback", "state": {"terminated": {"exitCode": 3, "reason": "Error"}}}
    assert pod_failure(_pod("b", bare)) == PodFailure("b", "fetch-fallback", "exit code 3 (Error)")


def test_failed_fetch_is_degraded_and_not_current_with_the_reason_even_without_prometheus_then_clears() -> None:
    from paddle_operator.truth import PodFailure

    svc = load_case("full")  # spec asks v5
    fail = PodFailure("full-7d9-x", "fetch-model", CHECKSUM)
    # The old ReplicaSet's pod still serves v4 (Prometheus), the new one cannot fetch v5.
    st = truth_status(svc, {"stable": {"old": PodReport("v4")}}, None, now="t0", failures=[fail])
    deg, mc = _cond(st, "Degraded"), _cond(st, "ModelCurrent")
    assert (deg["status"], deg["reason"]) == ("True", "ModelFetchFailed") and CHECKSUM in deg["message"]
    assert "full-7d9-x" in deg["message"] and "fetch-model" in deg["message"]
    assert (mc["status"], mc["reason"]) == ("False", "ModelFetchFailed") and CHECKSUM in mc["message"]
    assert "v5" in mc["message"] and "v4" in mc["message"] and st["modelVersion"] == "v4"
    # No Prometheus at all: still known, since a pod that cannot fetch the model does not serve it.
    blind = truth_status(svc, None, None, now="t0", no_data_reason="NoPrometheus", failures=[fail])
    assert (_cond(blind, "ModelCurrent")["status"], _cond(blind, "ModelCurrent")["reason"]) == (
        "False", "ModelFetchFailed")
    assert [(e.type, e.reason) for e in transitions(None, st)] == [
        ("Warning", "ModelFetchFailed"), ("Warning", "ModelFetchFailed")]
    # The fallback's fetch failing is degraded, but the main model is still current.
    fb = truth_status(svc, {"stable": {"a": PodReport("v5")}}, None,
                      failures=[PodFailure("p", "fetch-fallback", "exit code 3 (Error)")])
    assert _cond(fb, "Degraded")["reason"] == "ModelFetchFailed" and _cond(fb, "ModelCurrent")["status"] == "True"
    # The failing pod is gone (spec reverted, or the next fetch worked): nothing stale, one event each.
    gone = truth_status(svc, {"stable": {"old": PodReport("v5")}}, st, now="t1")
    assert _cond(gone, "Degraded")["status"] == "False" and _cond(gone, "ModelCurrent")["status"] == "True"
    assert [(e.type, e.reason) for e in transitions(st, gone)] == [("Normal", "Recovered"), ("Normal", "ModelCurrent")]
    # Without Prometheus the failure's end is Unknown, and the event says so.
    blind_gone = truth_status(svc, None, blind, no_data_reason="NoPrometheus")
    assert [(e.type, e.reason) for e in transitions(blind, blind_gone)] == [
        ("Normal", "Recovered"), ("Normal", "NoPrometheus")]


def test_a_missed_scrape_keeps_the_pods_last_report_and_a_gone_pod_is_dropped() -> None:
    """A busy pod whose scrape timed out is still a target (``up`` 0, its series stale): its last
    report stands in; a pod that is no longer a target at all is gone from the status."""
    from paddle_operator.truth import carry_over

    idx = index_samples([
        _sample(promql.MODEL_INFO, "a", version="v5", role="main", model="m", device="cpu"),
        _sample(promql.FALLBACK_ACTIVE, "a", 1),
        _sample(promql.UP, "a", 1, job="paddle-runtime"),
        _sample(promql.UP, "b", 0, job="paddle-runtime"),
    ])
    now = idx["prod", "full"]
    assert now["stable"]["b"] == PodReport(scraped=False)
    before = {"stable": {"a": PodReport("v4"), "b": PodReport("v5", True), "c": PodReport("v5")}}
    merged = carry_over(now, before)
    assert merged == {"stable": {"a": PodReport("v5", True), "b": PodReport("v5", True)}}  # c is gone
    assert carry_over(now, None) == {"stable": {"a": PodReport("v5", True)}}  # b never reported: left out
    svc = load_case("full")
    st = truth_status(svc, merged, None)
    assert st["fallback"] == "Active (2/2)" and _cond(st, "ModelCurrent")["status"] == "True"


def test_a_pod_still_loading_is_not_a_version_mismatch() -> None:
    svc = load_case("full")  # spec asks v5
    st = truth_status(svc, {"stable": {"new": PodReport(None)}}, None)
    assert (_cond(st, "ModelCurrent")["status"], _cond(st, "ModelCurrent")["reason"]) == ("Unknown", "NoPodsReporting")
    assert transitions(None, st) == []  # no Warning for a normal start
    st = truth_status(svc, {"stable": {"old": PodReport("v5"), "new": PodReport(None)}}, None)
    mc = _cond(st, "ModelCurrent")
    assert mc["status"] == "True" and "1 pod(s) still loading" in mc["message"]
