"""Sample objects and the health ``examples/argocd/health.lua`` must give each, shared by the two
interpreters that run it: lupa's Lua 5.1 (``tests/packaging/test_argocd_health.py``) and Argo CD's
own gopher-lua through the pinned ``argocd`` binary (``e2e/packaging/test_argocd_health_gopher_lua.py``).

Statuses are hand-made for each branch of the script, plus ones the operator's own
``compute_status`` writes (``operator_cases``), and the Application health check for the waves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
ARGOCD = ROOT / "examples" / "argocd"
HEALTH_LUA = ARGOCD / "health.lua"
ARGOCD_CM = ARGOCD / "argocd-cm.yaml"
PMS_KEY = "resource.customizations.health.serving.paddlesla.io_PaddleModelService"
APP_KEY = "resource.customizations.health.argoproj.io_Application"
MINIMAL = ROOT / "examples" / "01-minimal"


@dataclass(frozen=True)
class Case:
    """``obj`` must be assessed ``status``; its message must equal ``message`` (when given) and
    contain every string of ``contains``; ``starts`` is a required prefix."""

    id: str
    obj: dict[str, Any]
    status: str
    message: str | None = None
    contains: tuple[str, ...] = ()
    starts: str = ""
    script_key: str = PMS_KEY
    notes: dict[str, Any] = field(default_factory=dict)

    def check(self, status: str, message: str) -> None:
        assert status == self.status, (self.id, status, message)
        if self.message is not None:
            assert message == self.message, (self.id, message)
        for part in self.contains:
            assert part in message, (self.id, part, message)
        assert message.startswith(self.starts), (self.id, message)


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
ROLLED_BACK = {"phase": "RolledBack", "tag": "v2", "message": "p99 1200ms > 300ms in 3 checks"}
PAUSED = {"phase": "Paused", "tag": "v2", "message": "paused by spec.rollout.paused at step 1/4"}
CANARY = {"phase": "Progressing", "tag": "v2", "message": "step 1/4: 10% of traffic to canary v2"}


def application(
    health: dict[str, str] | None, sync: str | None = "Synced", op: dict[str, str] | None = None
) -> dict[str, Any]:
    """A child Application with its own health, sync status and last operation."""
    obj: dict[str, Any] = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Application",
        "metadata": {"name": "paddle-models", "namespace": "argocd"},
        "spec": {},
    }
    if health is not None:
        obj["status"] = {"health": health}
        if sync is not None:
            obj["status"]["sync"] = {"status": sync}
        if op is not None:
            obj["status"]["operationState"] = op
    return obj


HEALTHY = {"status": "Healthy"}
FAILED_SYNC = {"phase": "Failed", "message": "one or more objects failed to apply, reason: spec.x is invalid"}


def static_cases() -> list[Case]:
    """One case per branch of the script, with the message it must give."""
    ok = {"observedGeneration": 2}
    return [
        Case("ready-is-healthy", pms(status={**ok, "conditions": [READY, cond("Progressing", "False")]}),
             "Healthy", contains=("2/2",)),
        Case("no-status-yet-is-progressing", pms(status=None), "Progressing", contains=("operator",)),
        # Ready=True describes generation 2; generation 3 has not been reconciled yet.
        Case("old-observed-generation-is-progressing-even-if-ready",
             pms(generation=3, status={"observedGeneration": 2, "conditions": [READY]}),
             "Progressing", contains=("generation 3",)),
        Case("missing-observed-generation-is-progressing", pms(status={"conditions": [READY]}), "Progressing"),
        Case("ready-but-rolling-out-is-progressing",
             pms(status={**ok, "conditions": [READY, cond("Progressing", "True", "RollingUpdate", "1/2 updated")]}),
             "Progressing", message="RollingUpdate: 1/2 updated"),
        Case("not-ready-while-progressing-is-progressing",
             pms(status={**ok, "conditions": [cond("Ready", "False", "Waiting", "0/1 ready"),
                                               cond("Progressing", "True", "Deploying")]}),
             "Progressing"),
        Case("ready-unknown-is-progressing", pms(status={**ok, "conditions": [cond("Ready", "Unknown")]}),
             "Progressing"),
        Case("reconcile-error-is-degraded-with-its-message",
             pms(status={**ok, "conditions": [READY, cond("ReconcileError", "True", "SecretNotFound",
                                                           'Secret "hmac" not found')]}),
             "Degraded", message='SecretNotFound: Secret "hmac" not found'),
        Case("ready-false-without-progress-is-degraded-with-reason",
             pms(status={**ok, "conditions": [cond("Ready", "False", "PVCNotFound",
                                                   'PersistentVolumeClaim "models" not found')]}),
             "Degraded", starts="PVCNotFound"),
        Case("degraded-condition-wins-over-ready",
             pms(status={**ok, "conditions": [READY, cond("Degraded", "True", "FallbackActive",
                                                           "serving the fallback model")]}),
             "Degraded", contains=("fallback",)),
        Case("rolled-back-canary-of-desired-tag-is-degraded",
             pms(tag="v2", status={**ok, "conditions": [READY], "rollout": ROLLED_BACK, "stableTag": "v1"}),
             "Degraded", message="Rollout of v2 rolled back: p99 1200ms > 300ms in 3 checks"),
        # The user set spec.tag back to the stable tag after the rollback: the spec is met again.
        Case("rolled-back-then-spec-reverted-is-healthy",
             pms(tag="v1", status={**ok, "conditions": [READY], "stableTag": "v1",
                                   "rollout": {**ROLLED_BACK, "message": "spec.tag returned to the stable tag v1"}}),
             "Healthy"),
        # The operator has seen the new tag (Ready describes the stable version) but its rollout loop
        # has not started the canary yet: no Healthy blip between the sync and the canary.
        Case("new-tag-not-yet-rolled-out-is-progressing",
             pms(tag="v2", status={**ok, "conditions": [READY], "stableTag": "v1"}),
             "Progressing", message="Waiting to roll out v2 (stable: v1)"),
        Case("a-third-tag-after-a-rollback-is-progressing",
             pms(tag="v3", status={**ok, "conditions": [READY], "rollout": ROLLED_BACK, "stableTag": "v1"}),
             "Progressing", message="Waiting to roll out v3 (stable: v1)"),
        Case("promoted-tag-is-healthy",
             pms(tag="v2", status={**ok, "conditions": [READY], "stableTag": "v2",
                                   "rollout": {"phase": "Promoted", "tag": "v2", "message": "promoted v2"}}),
             "Healthy"),
        Case("paused-rollout-is-suspended", pms(status={**ok, "conditions": [READY], "rollout": PAUSED}),
             "Suspended", message=PAUSED["message"]),
        # Available with 2 of 3 ready while scaling up: the operator says Degraded=ReplicasUnavailable too.
        Case("scale-up-is-progressing-not-degraded",
             pms(status={**ok, "conditions": [
                 READY,
                 cond("Progressing", "True", "RollingUpdate", "3/3 updated, 2/3 ready"),
                 cond("Degraded", "True", "ReplicasUnavailable", "only 2/3 replicas ready"),
             ]}),
             "Progressing"),
        Case("canary-in-progress-is-progressing", pms(status={**ok, "conditions": [READY], "rollout": CANARY}),
             "Progressing", message=CANARY["message"]),
        # The Application check of argocd-cm.yaml: a child app's own health, and synced, so waves wait for it.
        Case("application-reports-its-child-health", application({"status": "Degraded", "message": "child failed"}),
             "Degraded", message="child failed", script_key=APP_KEY),
        Case("application-without-health-is-progressing", application(None), "Progressing", script_key=APP_KEY),
        Case("application-synced-and-healthy-is-healthy",
             application(HEALTHY, op={"phase": "Succeeded", "message": "successfully synced"}), "Healthy",
             script_key=APP_KEY),
        # A new app is Healthy before its first sync: it must not release the next wave yet.
        Case("application-healthy-but-never-synced-is-progressing", application(HEALTHY, sync="OutOfSync"),
             "Progressing", message="Waiting to sync (OutOfSync)", script_key=APP_KEY),
        Case("application-syncing-is-progressing",
             application(HEALTHY, sync="OutOfSync", op={"phase": "Running", "message": "one or more tasks are running"}),
             "Progressing", message="Sync in progress: one or more tasks are running", script_key=APP_KEY),
        Case("application-whose-sync-failed-is-degraded", application(HEALTHY, sync="OutOfSync", op=FAILED_SYNC),
             "Degraded", message="Sync failed: " + FAILED_SYNC["message"], script_key=APP_KEY),
        # The failed revision was reverted in Git: in sync again, the old failure no longer counts,
        # nor do the automated retries of the failed revision still running.
        Case("application-synced-after-a-failed-sync-is-healthy", application(HEALTHY, op=FAILED_SYNC), "Healthy",
             script_key=APP_KEY),
        Case("application-synced-while-an-old-sync-retries-is-healthy",
             application(HEALTHY, op={"phase": "Running", "message": "Retrying operation. Attempt #3"}), "Healthy",
             script_key=APP_KEY),
    ]  # fmt: skip


def _deployment(desired: int, ready: int, updated: int, available: bool, progressing: tuple[str, str]) -> dict:
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


def operator_cases() -> list[Case]:
    """``examples/01-minimal`` with the status the operator's own ``compute_status`` writes for a
    Deployment state (not a hand-made status). Needs the operator package."""
    from paddle_operator import status as status_mod
    from paddle_operator.spec import PaddleModelService

    def with_status(deployment: dict, problems: tuple = ()) -> dict[str, Any]:
        (doc,) = [d for f in sorted(MINIMAL.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
        doc["metadata"].update(namespace="ml", uid="u-1", generation=1)
        svc = PaddleModelService.from_body(doc)
        obs = status_mod.Observed(deployment=deployment, problems=[status_mod.Problem(*p) for p in problems])
        doc["status"] = status_mod.compute_status(svc, obs, None)
        return doc

    secret = ("SecretNotFound", 'Secret "hmac" not found')
    return [
        Case("operator-available", with_status(_deployment(2, 2, 2, True, ("True", "NewReplicaSetAvailable"))),
             "Healthy"),
        Case("operator-scaling-up", with_status(_deployment(3, 2, 3, True, ("True", "ReplicaSetUpdated"))),
             "Progressing"),
        Case("operator-first-rollout", with_status(_deployment(2, 0, 2, False, ("True", "ReplicaSetUpdated"))),
             "Progressing"),
        Case("operator-stuck-rollout",
             with_status(_deployment(2, 0, 2, False, ("False", "ProgressDeadlineExceeded"))), "Degraded"),
        Case("operator-missing-secret",
             with_status(_deployment(2, 2, 2, True, ("True", "NewReplicaSetAvailable")), (secret,)),
             "Degraded", starts="SecretNotFound"),
    ]  # fmt: skip


def script(key: str) -> str:
    """The script users install under ``key`` in argocd-cm (``argocd-cm.yaml``)."""
    return yaml.safe_load(ARGOCD_CM.read_text())["data"][key]
