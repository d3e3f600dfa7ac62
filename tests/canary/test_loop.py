"""The shared rollout loop (handlers.RolloutLoop): which resources it works on, tick by tick.

Idle resources must cost nothing per tick (that was the point of replacing the per-resource kopf
timer), yet a spec or rollout-status change, a rollout in progress and a due SLA refresh must each
still be picked up.
"""

from __future__ import annotations

import asyncio
import copy

import pytest

from paddle_operator import handlers, memory
from paddle_operator.settings import OperatorSettings

SETTINGS = OperatorSettings(prometheus_url=None)


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

    def apply_all(self, objs, read_back=None):
        return [(o, None) for o in objs]

    def apply_status(self, namespace, name, status, manager):
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


def entry(b):
    """The index entry kopf would keep for body ``b``."""
    return handlers.Indexed.of(b)


@pytest.fixture
def kube(monkeypatch):
    fake = FakeKube()
    monkeypatch.setattr(handlers, "_kube", fake)
    memory.clear()
    yield fake
    memory.clear()


@pytest.fixture
def loop():
    rl = handlers.RolloutLoop(SETTINGS)
    rl.start_pool()
    yield rl
    rl.stop_pool()


def run_due(rl, index, now):
    """One pass: what is due, then do it (as run() does, but awaited)."""
    work = rl.due(index, now)

    async def go():
        await asyncio.gather(*(rl.work(w, now) for w in work))

    asyncio.run(go())
    return [(w.key, w.tick, w.sla) for w in work]


def test_idle_resource_is_skipped_until_its_spec_changes(kube, loop):
    index = {KEY: [entry(body())]}
    assert run_due(loop, index, 1000.0) == [(KEY, True, False)]  # first look
    assert run_due(loop, index, 1005.0) == []  # idle: nothing per tick
    assert run_due(loop, index, 1010.0) == []
    assert kube.patches == [] and kube.events == []
    # A new tag (new generation) is a rollout to start: picked up at the next tick.
    index[KEY] = [entry(body(tag="v2", generation=4))]
    assert run_due(loop, index, 1015.0) == [(KEY, True, False)]
    assert kube.patches and kube.patches[-1]["rollout"]["phase"] == "Progressing"


def test_rollout_in_progress_is_ticked_every_period(kube, loop):
    index = {KEY: [entry(body(tag="v2", stable="v1"))]}
    assert run_due(loop, index, 1000.0) == [(KEY, True, False)]
    # status as the operator wrote it (the watch delivers it): still in progress, so still ticked
    written = copy.deepcopy(kube.patches[-1]["rollout"])
    index[KEY] = [entry(body(tag="v2", stable="v1", rollout=written))]
    assert run_due(loop, index, 1005.0) == [(KEY, True, False)]
    assert run_due(loop, index, 1010.0) == [(KEY, True, False)]


def test_status_change_wakes_an_idle_resource(kube, loop):
    index = {KEY: [entry(body())]}
    run_due(loop, index, 1000.0)
    assert run_due(loop, index, 1005.0) == []
    index[KEY] = [entry(body(rollout={"phase": "Promoted", "tag": "v1"}))]
    assert run_due(loop, index, 1010.0) == [(KEY, True, False)]


def test_sla_refreshed_once_per_period(kube, loop):
    index = {KEY: [entry(body(sla=True))]}
    assert run_due(loop, index, 1000.0) == [(KEY, True, True)]
    # No Prometheus: SLAMet Unknown written once.
    assert any("sla" in p for p in kube.patches)
    assert run_due(loop, index, 1005.0) == []
    assert run_due(loop, index, 1000.0 + SETTINGS.sla_period_s - 1) == []
    assert run_due(loop, index, 1000.0 + SETTINGS.sla_period_s) == [(KEY, False, True)]


def test_deleted_resources_are_forgotten(kube, loop):
    index = {KEY: [entry(body(sla=True))]}
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


def test_blocked_resource_is_reconciled_again_every_recheck_period(kube, loop):
    """A missing Secret is not retried by kopf: the loop reconciles blocked resources (ReconcileError=True)."""
    blocked = body()
    blocked["status"]["conditions"] = [
        {"type": "ReconcileError", "status": "True", "reason": "SecretNotFound", "message": "no Secret"}
    ]
    index = {KEY: [entry(blocked)]}
    period = SETTINGS.blocked_recheck_s
    assert not any(w.recheck for w in loop.due(index, 1000.0))  # the reconcile that found it just ran
    assert not any(w.recheck for w in loop.due(index, 1000.0 + period - 1))
    (work,) = loop.due(index, 1000.0 + period)
    assert work.recheck
    asyncio.run(loop.work(work, 1000.0 + period))
    # The Secret exists now (the fake finds nothing missing): children applied, status cleared, event.
    cleared = next(p for p in kube.patches if "conditions" in p)
    error = next(c for c in cleared["conditions"] if c["type"] == "ReconcileError")
    assert error["status"] == "False"
    assert [e["reason"] for e in kube.events] == ["Reconciled"]
    # Once the status says unblocked, no more rechecks.
    index[KEY] = [entry(body())]
    assert not any(w.recheck for w in loop.due(index, 1000.0 + 3 * period))


def test_sla_status_is_released_when_the_spec_drops_its_targets(kube, loop):
    measured = body()
    measured["status"]["sla"] = {"summary": "80ms/100ms", "p99Ms": 80.0}
    measured["status"]["conditions"] = [{"type": "SLAMet", "status": "True", "reason": "WithinSLA"}]
    index = {KEY: [entry(measured)]}
    assert run_due(loop, index, 1000.0) == [(KEY, True, True)]
    # The SLA writer applies an empty status under its field manager: its fields are removed.
    assert {} in kube.patches
    # Once per process, not every period (fields of an older writer would stay).
    assert run_due(loop, index, 1000.0 + 2 * SETTINGS.sla_period_s) == []


def test_writes_the_lagging_body_has_not_caught_up_with_are_not_repeated(kube, loop):
    """In a burst the watch-fed body lags our own writes by minutes: the rollout and SLA writers must
    not apply the same status again every period (7 and 4 writes per new resource, measured)."""
    stale = body(tag="v2", stable="v1", sla=True)  # a rollout in progress: ticked every period
    index = {KEY: [entry(stale)]}
    run_due(loop, index, 1000.0)
    rollout_writes = [p for p in kube.patches if "rollout" in p]
    sla_writes = [p for p in kube.patches if "sla" in p]
    assert len(rollout_writes) == 1 and len(sla_writes) == 1
    # The body never shows those writes (it lags); nothing changed, so nothing is applied again.
    for t in (1005.0, 1010.0, 1000.0 + SETTINGS.sla_period_s, 1000.0 + 2 * SETTINGS.sla_period_s):
        run_due(loop, index, t)
    assert [p for p in kube.patches if "rollout" in p] == rollout_writes
    assert [p for p in kube.patches if "sla" in p] == sla_writes
    # A real change is still written.
    index[KEY] = [entry(body(tag="v3", stable="v1", sla=True, generation=4))]
    run_due(loop, index, 1200.0)
    assert len([p for p in kube.patches if "rollout" in p]) == 2


class _Log:
    def info(self, *args):
        pass

    warning = info


def test_a_second_create_of_a_reconciled_generation_does_nothing(kube, monkeypatch):
    """kopf can take an event written during the first reconcile for a new object (its own patch's
    event arriving after its consistency timeout, in a burst): that must not apply everything again."""
    monkeypatch.setattr(handlers.kopf, "info", lambda *a, **k: None)
    fresh = body()
    fresh["status"] = {}
    handlers.pms_reconcile(body=fresh, reason="create", retry=0, logger=_Log())
    writes = len(kube.patches)
    assert writes == 1  # the reconcile's status
    stale = body()  # same uid and generation, status written meanwhile by other writers
    handlers.pms_reconcile(body=stale, reason="create", retry=0, logger=_Log())
    assert len(kube.patches) == writes
    # An update (new generation) or a resume after a restart still reconciles.
    handlers.pms_reconcile(body=body(generation=4), reason="update", retry=0, logger=_Log())
    assert len(kube.patches) == writes + 1
