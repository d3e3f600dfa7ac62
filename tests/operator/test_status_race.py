"""A full reconcile and a child event write status concurrently; the newer Deployment (and HPA) must win.

Seen in CI: a resource blocked on a missing Secret was rechecked by the rollout loop, whose reconcile
applied the children and wrote status from the Deployment it had just applied (not Available), while
a child event wrote status from the Deployment that had become Available. When the reconcile's write
landed last, Ready stayed False and no later event came to fix it. The last test is the interleaving
a verbose operator log showed: the events arrived during the recheck's apply, while this process
still held the blocked status as its last write.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from paddle_operator import memory, reconcile
from paddle_operator.spec import PaddleModelService

UID = "race-1"


def body() -> dict[str, Any]:
    return {
        "apiVersion": "serving.paddlesla.io/v1alpha1",
        "kind": "PaddleModelService",
        "metadata": {"name": "ocr", "namespace": "prod", "uid": UID, "generation": 1},
        "spec": {"tag": "t1", "model": {"uri": "file:///models/m"}},
        "status": {},
    }


class GatedKube:
    """Holds the first status write until ``gate`` opens; records every status write in order."""

    def __init__(self) -> None:
        self.writes: list[dict[str, Any]] = []
        self.calls = 0
        self.in_first_write = threading.Event()
        self.gate = threading.Event()
        self._lock = threading.Lock()

    def get(self, *args: Any) -> dict[str, Any] | None:
        return None

    def list(self, *args: Any) -> list[dict[str, Any]]:
        return []

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        return obj

    def apply_all(self, objs: list[dict[str, Any]], read_back: Any = None) -> list[tuple[dict[str, Any], None]]:
        return [(o, None) for o in objs]

    def apply_status(self, namespace: str, name: str, status: dict[str, Any], manager: str) -> None:
        with self._lock:
            self.calls += 1
            first = self.calls == 1
        if first:
            self.in_first_write.set()
            self.gate.wait(5)
        self.writes.append(status)


def ready(status: dict[str, Any]) -> str | None:
    return next((c["status"] for c in status.get("conditions") or [] if c["type"] == "Ready"), None)


def available(svc: PaddleModelService) -> dict[str, Any]:
    deployment = copy.deepcopy(
        next(c for c in reconcile.plan(svc) if c["kind"] == "Deployment" and c["metadata"]["name"] == "ocr")
    )
    deployment["metadata"]["generation"] = 1
    deployment["status"] = {
        "observedGeneration": 1, "replicas": 1, "readyReplicas": 1, "availableReplicas": 1, "updatedReplicas": 1,
        "conditions": [{"type": "Available", "status": "True"}],
    }  # fmt: skip
    return deployment


@pytest.fixture
def forgotten() -> Iterator[None]:
    """The resource unknown to this process's memories before and after the test."""
    memory.forget("prod", "ocr", UID)
    reconcile.forget("prod", "ocr", UID)
    yield
    memory.forget("prod", "ocr", UID)
    reconcile.forget("prod", "ocr", UID)


def test_a_child_event_during_the_reconciles_status_write_lands_after_it(forgotten: None) -> None:
    b = body()
    svc = PaddleModelService.from_body(b)
    kube = GatedKube()
    try:
        reconciling = threading.Thread(target=reconcile.reconcile, args=(kube, b))
        reconciling.start()
        assert kube.in_first_write.wait(5), "the reconcile never wrote status"
        # The Deployment as the API server now reports it: Available.
        event = threading.Thread(target=reconcile.on_child_event, args=(kube, b, "MODIFIED", available(svc)))
        event.start()
        event.join(0.5)  # without the per-resource lock, the event's write lands here, first
        kube.gate.set()
        reconciling.join(5)
        event.join(5)
        assert not reconciling.is_alive() and not event.is_alive()
        assert [ready(w) for w in kube.writes] == ["False", "True"], kube.writes
    finally:
        kube.gate.set()


class StaleApplyKube(GatedKube):
    """The API server of a second reconcile: its apply answers the Deployment as it was (not
    Available), then waits at ``gate`` while the Deployment turns Available; GET reads it as it is now."""

    def __init__(self) -> None:
        super().__init__()
        self.applies = 0
        self.in_second_apply = threading.Event()
        self.current: dict[str, Any] | None = None

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.current) if kind == "Deployment" else None

    def apply_all(self, objs: list[dict[str, Any]], read_back: Any = None) -> list[tuple[dict[str, Any], None]]:
        self.applies += 1
        if self.applies == 2:
            self.in_second_apply.set()
            self.gate.wait(5)
        return [(o, None) for o in objs]

    def apply_status(self, namespace: str, name: str, status: dict[str, Any], manager: str) -> None:
        self.writes.append(status)


def test_a_second_reconcile_of_the_same_generation_does_not_take_ready_back(forgotten: None) -> None:
    """A reconcile of a generation already reconciled (e.g. the rollout tick's after the blocked
    recheck's): an Available event written between its apply and its status write must stay."""
    b = body()
    svc = PaddleModelService.from_body(b)
    kube = StaleApplyKube()
    try:
        reconcile.reconcile(kube, b)  # the first one: the Deployment is new, not Available
        assert [ready(w) for w in kube.writes] == ["False"]
        again = threading.Thread(target=reconcile.reconcile, args=(kube, b))
        again.start()
        assert kube.in_second_apply.wait(5)
        kube.current = available(svc)  # becomes Available while the second reconcile applies
        reconcile.on_child_event(kube, b, "MODIFIED", available(svc))
        kube.gate.set()
        again.join(5)
        assert not again.is_alive()
        assert ready(kube.writes[-1]) == "True", [ready(w) for w in kube.writes]
    finally:
        kube.gate.set()


class RecheckKube(StaleApplyKube):
    """The API server of a first apply of the children (a blocked resource's recheck, or a new
    resource's reconcile): the apply waits at ``gate`` while the children change; GET reads the
    Deployment as ``current`` and any other kind from ``objects`` (the Secret, the HPA) as it is now."""

    def __init__(self) -> None:
        super().__init__()
        self.objects: dict[str, dict[str, Any]] = {}

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        if kind in self.objects:
            return copy.deepcopy(self.objects[kind])
        return super().get(api_version, kind, namespace, name)

    def apply_all(self, objs: list[dict[str, Any]], read_back: Any = None) -> list[tuple[dict[str, Any], None]]:
        self.in_second_apply.set()
        self.gate.wait(5)
        return [(o, None) for o in objs]


def test_a_deployment_event_during_a_blocked_resources_recheck_is_not_lost(forgotten: None) -> None:
    b = body()
    b["spec"]["model"]["signature"] = {"hmacKeySecretRef": {"name": "model-hmac"}}
    svc = PaddleModelService.from_body(b)
    kube = RecheckKube()
    try:
        blocked = reconcile.reconcile(kube, b)  # no Secret: blocked, nothing applied
        assert [p.reason for p in blocked.problems] == ["SecretNotFound"]
        b["status"] = blocked.status
        kube.objects["Secret"] = {"data": {"hmac.key": "czNjcmV0"}}
        recheck = threading.Thread(target=reconcile.reconcile, args=(kube, copy.deepcopy(b)))
        recheck.start()
        assert kube.in_second_apply.wait(5)
        # The new Deployment's events, the last one Available, all handled before the recheck writes.
        kube.current = available(svc)
        reconcile.on_child_event(kube, copy.deepcopy(b), "ADDED", available(svc))
        kube.gate.set()
        recheck.join(5)
        assert not recheck.is_alive()
        assert ready(kube.writes[-1]) == "True", [(ready(w), w.get("readyReplicas")) for w in kube.writes]
    finally:
        kube.gate.set()


def test_an_hpa_event_during_the_first_reconcile_reaches_status(forgotten: None) -> None:
    """The HPA feeds ``status.warnings``: its event, left to the pending reconcile, must not be lost."""
    b = body()
    b["spec"]["autoscaling"] = {"minReplicas": 1, "maxReplicas": 3, "targetQPSPerReplica": 5}
    svc = PaddleModelService.from_body(b)
    kube = RecheckKube()  # the first apply answers the HPA without status
    try:
        first = threading.Thread(target=reconcile.reconcile, args=(kube, copy.deepcopy(b)))
        first.start()
        assert kube.in_second_apply.wait(5)
        hpa = copy.deepcopy(next(c for c in reconcile.plan(svc) if c["kind"] == "HorizontalPodAutoscaler"))
        hpa["status"] = {"conditions": [{"type": "ScalingActive", "status": "False", "reason": "FailedGetPodsMetric",
                                         "message": "no metrics returned from custom metrics API"}]}  # fmt: skip
        kube.objects["HorizontalPodAutoscaler"] = hpa
        _restored, written = reconcile.on_child_event(kube, copy.deepcopy(b), "MODIFIED", hpa)
        assert not written, "left to the reconcile that is still applying"
        kube.gate.set()
        first.join(5)
        assert not first.is_alive()
        warnings = kube.writes[-1].get("warnings") or []
        assert any("ScalingActive=False (FailedGetPodsMetric)" in w for w in warnings), kube.writes[-1]
    finally:
        kube.gate.set()
