"""Status decisions: conditions from the Deployment/HPA, replaced by type, transition times kept."""

from __future__ import annotations

from typing import Any

from pms_cases import load_case

from paddle_operator.reconcile import carried_problems, is_subset
from paddle_operator.status import Observed, Problem, compute_status, merge_conditions, status_changed


def _dep(ready: int, desired: int, available: bool, generation: int = 1, observed: int = 1) -> dict[str, Any]:
    return {
        "metadata": {"name": "ppocr-rec", "generation": generation},
        "spec": {"replicas": desired},
        "status": {
            "observedGeneration": observed,
            "replicas": desired,
            "readyReplicas": ready,
            "updatedReplicas": desired,
            "conditions": [
                {"type": "Available", "status": "True" if available else "False",
                 "reason": "MinimumReplicasAvailable" if available else "MinimumReplicasUnavailable"},
                {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"},
            ],
        },
    }


def _cond(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == type_)


def test_ready_follows_deployment_available() -> None:
    svc = load_case("minimal")
    waiting = compute_status(svc, Observed(deployment=_dep(0, 1, False)), None, now="t0")
    assert _cond(waiting, "Ready")["status"] == "False"
    assert _cond(waiting, "Progressing")["status"] == "True"
    ready = compute_status(svc, Observed(deployment=_dep(1, 1, True)), waiting, now="t1")
    assert _cond(ready, "Ready")["status"] == "True"
    assert _cond(ready, "Progressing")["status"] == "False"
    assert ready["replicaSummary"] == "1/1" and ready["tag"] == "0.1.0-cpu"
    assert ready["observedGeneration"] == 1 and ready["url"] == "http://ppocr-rec.default.svc:8080"


def test_problem_makes_ready_false_with_reason() -> None:
    svc = load_case("minimal")
    st = compute_status(
        svc, Observed(deployment=_dep(1, 1, True), problems=[Problem("SecretNotFound", "spec.auth.tokenSecretRef: x")]),
        None,
    )
    ready = _cond(st, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "SecretNotFound")
    assert _cond(st, "ReconcileError")["status"] == "True"
    # The drift path keeps the problem until a full reconcile clears it.
    assert carried_problems(svc, st)[0].reason == "SecretNotFound"


def test_conditions_replaced_by_type_and_transition_time_kept() -> None:
    old = [{"type": "Ready", "status": "True", "lastTransitionTime": "t0"},
           {"type": "SLAMet", "status": "True", "lastTransitionTime": "t0"}]
    merged = merge_conditions(old, [{"type": "Ready", "status": "True", "reason": "Available"}], "t1")
    # Only the writer's own types come back: SLAMet belongs to the SLA evaluator's field manager.
    assert [c["type"] for c in merged] == ["Ready"]
    assert merged[0]["lastTransitionTime"] == "t0" and merged[0]["reason"] == "Available"
    flipped = merge_conditions(merged, [{"type": "Ready", "status": "False"}], "t2")
    assert flipped[0]["lastTransitionTime"] == "t2"


def test_hpa_warning_read_back() -> None:
    svc = load_case("minimal")
    hpa = {"metadata": {"name": "ppocr-rec"}, "status": {"conditions": [
        {"type": "ScalingActive", "status": "False", "reason": "FailedGetResourceMetric",
         "message": "unable to get metrics for resource cpu"}]}}
    st = compute_status(svc, Observed(deployment=_dep(1, 1, True), hpa=hpa), None)
    assert any("ScalingActive=False" in w and "FailedGetResourceMetric" in w for w in st["warnings"])


def test_reconcile_status_leaves_the_other_writers_fields_alone() -> None:
    """One writer per field: the reconcile never writes stableTag/rollout (rollout), sla/SLAMet, or
    what the pods report (served/modelVersion/fallback, Degraded/ModelCurrent)."""
    svc = load_case("minimal")
    other = {"stableTag": "0.0.9", "rollout": {"phase": "Promoted"}, "sla": {"p99Ms": 120.0, "summary": "120/300ms"},
             "conditions": [{"type": "SLAMet", "status": "True", "lastTransitionTime": "t0"}]}
    for old in (None, other):
        st = compute_status(svc, Observed(deployment=_dep(1, 1, True)), old)
        assert not {"stableTag", "rollout", "sla", "served", "modelVersion", "fallback"} & set(st)
        assert {c["type"] for c in st["conditions"]} == {"Ready", "Available", "Progressing", "ReconcileError"}


def test_unchanged_status_is_not_rewritten() -> None:
    svc = load_case("minimal")
    st = compute_status(svc, Observed(deployment=_dep(1, 1, True)), None, now="t0")
    again = compute_status(svc, Observed(deployment=_dep(1, 1, True)), st, now="t9")
    assert not status_changed(st, again)


def test_drift_detection_ignores_server_defaults_but_not_edits() -> None:
    desired = {"spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "a", "image": "x:1"}]}}}}
    actual = {"spec": {"replicas": 2, "paused": False,
                       "template": {"spec": {"containers": [{"name": "a", "image": "x:1", "tty": False}]}}}}
    assert is_subset(desired, actual)
    actual["spec"]["template"]["spec"]["containers"][0]["image"] = "x:hacked"
    assert not is_subset(desired, actual)
