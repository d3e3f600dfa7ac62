"""The shared rollout loop (handlers._RolloutLoop): which resources it works on, tick by tick.

Idle resources must cost nothing per tick (that was the point of replacing the per-resource kopf
timer), yet a spec or rollout-status change, a rollout in progress and a due SLA refresh must each
still be picked up.
"""

from __future__ import annotations

import asyncio
import copy
from concurrent.futures import ThreadPoolExecutor

import pytest

from paddle_operator import canary, handlers


class FakeKube:
    def __init__(self):
        self.patches = []
        self.events = []

    def get(self, *args):
        return None

    def list(self, *args):
        return []

    def apply(self, obj):
        return obj

    def patch_status(self, namespace, name, status):
        self.patches.append(status)

    def request(self, method, path, body=None, **_):
        self.events.append(body)


def body(tag="v1", stable="v1", sla=False, generation=3, rollout=None):
    spec = {"tag": tag, "replicas": 2, "model": {"uri": "file:///models/m"}}
    if sla:
        spec["sla"] = {"latencyP99Ms": 100, "availability": "99.9"}
    status = {"stableTag": stable}
    if rollout:
        status["rollout"] = rollout
    return {
        "apiVersion": "serving.paddlesla.io/v1alpha1",
        "kind": "PaddleModelService",
        "metadata": {"name": "ocr", "namespace": "prod", "uid": "u-1", "generation": generation},
        "spec": spec,
        "status": status,
    }


KEY = ("prod", "ocr")


@pytest.fixture
def kube(monkeypatch):
    fake = FakeKube()
    monkeypatch.setattr(handlers, "_kube", fake)
    monkeypatch.setattr(canary, "DEFAULT_PROMETHEUS_URL", None)
    canary._memory.clear()
    yield fake
    canary._memory.clear()


@pytest.fixture
def loop():
    rl = handlers._RolloutLoop()
    rl._pool = ThreadPoolExecutor(2)
    yield rl
    rl._pool.shutdown()


def run_due(rl, index, now):
    """One pass: what is due, then do it (as run() does, but awaited)."""
    work = rl.due(index, now)

    async def go():
        await asyncio.gather(*(rl._work(k, b, t, s, now) for k, b, t, s in work))

    asyncio.run(go())
    return [(k, t, s) for k, _b, t, s in work]


def test_idle_resource_is_skipped_until_its_spec_changes(kube, loop):
    index = {KEY: [body()]}
    assert run_due(loop, index, 1000.0) == [(KEY, True, False)]  # first look
    assert run_due(loop, index, 1005.0) == []  # idle: nothing per tick
    assert run_due(loop, index, 1010.0) == []
    assert kube.patches == [] and kube.events == []
    # A new tag (new generation) is a rollout to start: picked up at the next tick.
    index[KEY] = [body(tag="v2", generation=4)]
    assert run_due(loop, index, 1015.0) == [(KEY, True, False)]
    assert kube.patches and kube.patches[-1]["rollout"]["phase"] == "Progressing"


def test_rollout_in_progress_is_ticked_every_period(kube, loop):
    index = {KEY: [body(tag="v2", stable="v1")]}
    assert run_due(loop, index, 1000.0) == [(KEY, True, False)]
    # status as the operator wrote it (the watch delivers it): still in progress, so still ticked
    written = copy.deepcopy(kube.patches[-1]["rollout"])
    index[KEY] = [body(tag="v2", stable="v1", rollout=written)]
    assert run_due(loop, index, 1005.0) == [(KEY, True, False)]
    assert run_due(loop, index, 1010.0) == [(KEY, True, False)]


def test_status_change_wakes_an_idle_resource(kube, loop):
    index = {KEY: [body()]}
    run_due(loop, index, 1000.0)
    assert run_due(loop, index, 1005.0) == []
    index[KEY] = [body(rollout={"phase": "Promoted", "tag": "v1"})]
    assert run_due(loop, index, 1010.0) == [(KEY, True, False)]


def test_sla_refreshed_once_per_period(kube, loop):
    index = {KEY: [body(sla=True)]}
    assert run_due(loop, index, 1000.0) == [(KEY, True, True)]
    # No Prometheus: SLAMet Unknown written once.
    assert any("sla" in p for p in kube.patches)
    assert run_due(loop, index, 1005.0) == []
    assert run_due(loop, index, 1000.0 + canary.SLA_PERIOD_S - 1) == []
    assert run_due(loop, index, 1000.0 + canary.SLA_PERIOD_S) == [(KEY, False, True)]


def test_deleted_resources_are_forgotten(kube, loop):
    index = {KEY: [body(sla=True)]}
    run_due(loop, index, 1000.0)
    assert KEY in loop._idle and KEY in loop._next_sla
    del index[KEY]
    assert run_due(loop, index, 1005.0) == []
    assert KEY not in loop._idle and KEY not in loop._next_sla


def test_rollout_events_are_posted_as_core_events(kube, loop):
    handlers.post_event(body(), "Warning", "RolledBack", "p99 900 ms > 100 ms")
    (event,) = kube.events
    assert event["involvedObject"] == {
        "apiVersion": "serving.paddlesla.io/v1alpha1",
        "kind": "PaddleModelService",
        "name": "ocr",
        "namespace": "prod",
        "uid": "u-1",
    }
    assert (event["type"], event["reason"]) == ("Warning", "RolledBack")
