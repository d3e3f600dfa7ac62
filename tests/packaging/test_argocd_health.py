"""The ArgoCD health check for PaddleModelService, run in a real Lua interpreter (lupa).

Argo CD evaluates the script with the live object bound to the global ``obj`` and reads the
``status``/``message`` of the table it returns; these tests do the same against sample objects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("lupa")
try:  # Argo CD runs health scripts in gopher-lua, a Lua 5.1: test with the same language version.
    import lupa.lua51 as lupa
except ImportError:  # pragma: no cover - lupa builds without the bundled 5.1
    import lupa

ARGOCD = Path(__file__).resolve().parents[2] / "examples" / "argocd"
HEALTH_LUA = ARGOCD / "health.lua"
CM_KEY = "resource.customizations.health.serving.paddlesla.io_PaddleModelService"


def _to_lua(lua: Any, value: Any) -> Any:
    if isinstance(value, dict):
        return lua.table_from({k: _to_lua(lua, v) for k, v in value.items()})
    if isinstance(value, list):
        return lua.table_from([_to_lua(lua, v) for v in value])
    return value


def assess(obj: dict[str, Any], script: str | None = None) -> tuple[str, str]:
    """Run the health script the way Argo CD does; return (status, message)."""
    lua = lupa.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = _to_lua(lua, obj)
    hs = lua.execute(script if script is not None else HEALTH_LUA.read_text())
    return hs["status"], hs["message"]


def pms(generation: int = 2, status: dict | None = None, tag: str = "v2") -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "serving.paddlesla.io/v1alpha1",
        "kind": "PaddleModelService",
        "metadata": {"name": "ocr", "namespace": "ml", "generation": generation},
        "spec": {"image": "ghcr.io/paddle-sla/paddle-runtime", "tag": tag, "model": {"uri": "pvc://m/rec"}},
    }
    if status is not None:
        obj["status"] = status
    return obj


def cond(ctype: str, status: str, reason: str = "", message: str = "") -> dict[str, str]:
    return {"type": ctype, "status": status, "reason": reason, "message": message}


READY = cond("Ready", "True", "Available", "2/2 replicas ready")


def test_ready_service_is_healthy():
    status, message = assess(
        pms(status={"observedGeneration": 2, "conditions": [READY, cond("Progressing", "False")]})
    )
    assert status == "Healthy"
    assert "2/2" in message


def test_no_status_yet_is_progressing():
    status, message = assess(pms(status=None))
    assert status == "Progressing"
    assert "operator" in message


def test_old_observed_generation_is_progressing_even_if_ready():
    # Ready=True describes generation 2; generation 3 has not been reconciled yet.
    status, message = assess(pms(generation=3, status={"observedGeneration": 2, "conditions": [READY]}))
    assert status == "Progressing"
    assert "generation 3" in message


def test_missing_observed_generation_is_progressing():
    assert assess(pms(status={"conditions": [READY]}))[0] == "Progressing"


def test_ready_but_rolling_out_is_progressing():
    rolling = cond("Progressing", "True", "RollingUpdate", "1/2 updated")
    status, message = assess(pms(status={"observedGeneration": 2, "conditions": [READY, rolling]}))
    assert (status, message) == ("Progressing", "RollingUpdate: 1/2 updated")


def test_not_ready_while_progressing_is_progressing():
    conds = [cond("Ready", "False", "Waiting", "0/1 ready"), cond("Progressing", "True", "Deploying")]
    assert assess(pms(status={"observedGeneration": 2, "conditions": conds}))[0] == "Progressing"


def test_ready_unknown_is_progressing():
    conds = [cond("Ready", "Unknown")]
    assert assess(pms(status={"observedGeneration": 2, "conditions": conds}))[0] == "Progressing"


def test_reconcile_error_is_degraded_with_its_message():
    err = cond("ReconcileError", "True", "SecretNotFound", 'Secret "hmac" not found')
    status, message = assess(pms(status={"observedGeneration": 2, "conditions": [READY, err]}))
    assert status == "Degraded"
    assert message == 'SecretNotFound: Secret "hmac" not found'


def test_ready_false_without_progress_is_degraded_with_reason():
    conds = [cond("Ready", "False", "PVCNotFound", 'PersistentVolumeClaim "models" not found')]
    status, message = assess(pms(status={"observedGeneration": 2, "conditions": conds}))
    assert status == "Degraded"
    assert message.startswith("PVCNotFound")


def test_degraded_condition_wins_over_ready():
    conds = [READY, cond("Degraded", "True", "FallbackActive", "serving the fallback model")]
    status, message = assess(pms(status={"observedGeneration": 2, "conditions": conds}))
    assert status == "Degraded"
    assert "fallback" in message


def test_rolled_back_canary_of_desired_tag_is_degraded():
    rollout = {"phase": "RolledBack", "tag": "v2", "message": "p99 1200ms > 300ms in 3 checks"}
    obj = pms(tag="v2", status={"observedGeneration": 2, "conditions": [READY], "rollout": rollout})
    status, message = assess(obj)
    assert status == "Degraded"
    assert "v2" in message and "p99" in message


def test_rolled_back_then_spec_reverted_is_healthy():
    # The user set spec.tag back to the stable tag after the rollback: the spec is met again.
    rollout = {"phase": "RolledBack", "tag": "v2", "message": "spec.tag returned to the stable tag v1"}
    obj = pms(tag="v1", status={"observedGeneration": 2, "conditions": [READY], "rollout": rollout})
    assert assess(obj)[0] == "Healthy"


def test_paused_rollout_is_suspended():
    rollout = {"phase": "Paused", "tag": "v2", "message": "paused by spec.rollout.paused at step 1/4"}
    obj = pms(status={"observedGeneration": 2, "conditions": [READY], "rollout": rollout})
    assert assess(obj) == ("Suspended", rollout["message"])


def test_runs_as_lua_5_1_like_argo_cd():
    assert lupa.LuaRuntime().lua_version == (5, 1)


def test_argocd_cm_snippet_is_the_tested_script():
    cm = yaml.safe_load((ARGOCD / "argocd-cm.yaml").read_text())
    assert cm["kind"] == "ConfigMap" and cm["metadata"]["name"] == "argocd-cm"
    assert cm["data"][CM_KEY] == HEALTH_LUA.read_text()


def test_application_health_snippet_reads_child_app_health():
    cm = yaml.safe_load((ARGOCD / "argocd-cm.yaml").read_text())
    script = cm["data"]["resource.customizations.health.argoproj.io_Application"]
    app = {"status": {"health": {"status": "Degraded", "message": "child failed"}}}
    assert assess(app, script) == ("Degraded", "child failed")
    assert assess({}, script)[0] == "Progressing"


def test_scale_up_is_progressing_not_degraded():
    # Available with 2 of 3 ready while scaling up: the operator says Degraded=ReplicasUnavailable too.
    conds = [
        READY,
        cond("Progressing", "True", "RollingUpdate", "3/3 updated, 2/3 ready"),
        cond("Degraded", "True", "ReplicasUnavailable", "only 2/3 replicas ready"),
    ]
    assert assess(pms(status={"observedGeneration": 2, "conditions": conds}))[0] == "Progressing"


def test_canary_in_progress_is_progressing():
    rollout = {"phase": "Progressing", "tag": "v2", "message": "step 1/4: 10% of traffic to canary v2"}
    obj = pms(status={"observedGeneration": 2, "conditions": [READY], "rollout": rollout})
    assert assess(obj) == ("Progressing", rollout["message"])


# The same script against statuses written by the operator's own compute_status (not hand-made ones).
MINIMAL = Path(__file__).resolve().parents[2] / "examples" / "01-minimal"


def _operator_status(deployment: dict | None, problems: tuple = ()) -> dict[str, Any]:
    status_mod = pytest.importorskip("paddle_operator.status")
    from paddle_operator.spec import PaddleModelService

    (doc,) = [d for f in sorted(MINIMAL.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
    doc["metadata"].update(namespace="ml", uid="u-1", generation=1)
    svc = PaddleModelService.from_body(doc)
    obs = status_mod.Observed(deployment=deployment, problems=[status_mod.Problem(*p) for p in problems])
    doc["status"] = status_mod.compute_status(svc, obs, None)
    return doc


def _deployment(
    desired: int, ready: int, updated: int, available: bool, progressing: tuple[str, str]
) -> dict:
    return {
        "metadata": {"name": "ppocr-rec", "generation": 1},
        "spec": {"replicas": desired},
        "status": {
            "observedGeneration": 1,
            "replicas": max(desired, updated),
            "updatedReplicas": updated,
            "readyReplicas": ready,
            "conditions": [
                {"type": "Available", "status": "True" if available else "False"},
                {"type": "Progressing", "status": progressing[0], "reason": progressing[1]},
            ],
        },
    }


@pytest.mark.parametrize(
    ("deployment", "problems", "expected"),
    [
        (_deployment(2, 2, 2, True, ("True", "NewReplicaSetAvailable")), (), "Healthy"),
        (_deployment(3, 2, 3, True, ("True", "ReplicaSetUpdated")), (), "Progressing"),
        (_deployment(2, 0, 2, False, ("True", "ReplicaSetUpdated")), (), "Progressing"),
        (_deployment(2, 0, 2, False, ("False", "ProgressDeadlineExceeded")), (), "Degraded"),
        (
            _deployment(2, 2, 2, True, ("True", "NewReplicaSetAvailable")),
            (("SecretNotFound", 'Secret "hmac" not found'),),
            "Degraded",
        ),
    ],
    ids=["available", "scaling-up", "first-rollout", "stuck-rollout", "missing-secret"],
)
def test_health_of_statuses_the_operator_writes(deployment, problems, expected):
    status, message = assess(_operator_status(deployment, problems))
    assert status == expected, message
    if problems:
        assert message.startswith(problems[0][0])
