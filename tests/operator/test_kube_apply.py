"""Kube.apply_all: children applied concurrently, Services on their own few threads."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kubernetes import client

from paddle_operator.kube import SERVICE_APPLIES, Kube, KubeError


class GatedKube(Kube):
    """Services wait for ``gate`` (the API server creating them one at a time); the rest answer at once."""

    def __init__(self, apply_workers: int) -> None:
        super().__init__(api=client.ApiClient(), apply_workers=apply_workers, thread_idle_s=5)
        self.gate = threading.Event()
        self.lock = threading.Lock()
        self.services_in_flight = 0
        self.most_services_in_flight = 0
        self.applied: list[str] = []

    def apply(self, obj: dict[str, Any], read_back: bool = True) -> dict[str, Any]:
        kind, name = obj["kind"], obj["metadata"]["name"]
        if kind == "Service":
            with self.lock:
                self.services_in_flight += 1
                self.most_services_in_flight = max(self.most_services_in_flight, self.services_in_flight)
            self.gate.wait(10)
            with self.lock:
                self.services_in_flight -= 1
        if name == "bad":
            raise KubeError(422, '{"message": "rejected"}', "apply")
        with self.lock:
            self.applied.append(f"{kind}/{name}")
        return obj


def children(i: int) -> list[dict[str, Any]]:
    return [{"kind": k, "metadata": {"name": f"r{i}"}} for k in ("ConfigMap", "Service", "Deployment")]


def test_a_burst_of_slow_service_applies_does_not_hold_the_other_children() -> None:
    kube = GatedKube(apply_workers=4)
    burst = 3 * SERVICE_APPLIES  # more reconciles than apply threads, each with a Service
    with ThreadPoolExecutor(burst) as reconciles:
        results = [reconciles.submit(kube.apply_all, children(i)) for i in range(burst)]
        deadline = time.monotonic() + 5
        while True:  # every Deployment and ConfigMap applied while the Services still wait
            with kube.lock:
                done = sum(a.startswith(("Deployment/", "ConfigMap/")) for a in kube.applied)
            if done == 2 * burst or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        assert done == 2 * burst, f"{done} of {2 * burst} other children applied behind blocked Services"
        assert kube.most_services_in_flight == SERVICE_APPLIES
        kube.gate.set()
        for i, r in enumerate(results):
            assert [a for a, _ in r.result(timeout=10)] == children(i)  # in plan order
    assert sum(a.startswith("Service/") for a in kube.applied) == burst


def test_a_rejected_child_is_reported_in_its_place() -> None:
    kube = GatedKube(apply_workers=2)
    kube.gate.set()
    objs = [{"kind": "ConfigMap", "metadata": {"name": "ok"}}, {"kind": "Service", "metadata": {"name": "bad"}}]
    (ok, none), (applied, err) = kube.apply_all(objs)
    assert ok == objs[0] and none is None
    assert applied is None and isinstance(err, KubeError) and err.status == 422
