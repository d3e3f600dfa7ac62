"""The operator's wiring: the kinds registry drives kopf's watches, the reconcile plans from memory."""

from __future__ import annotations

import kopf

from paddle_operator import handlers, kinds, memory, reconcile
from paddle_operator.plan import RUNNING, Shape
from paddle_operator.pool import ElasticPool
from paddle_operator.settings import OperatorSettings
from paddle_operator.spec import PaddleModelService


def _svc() -> PaddleModelService:
    return PaddleModelService.from_body(
        {
            "metadata": {"name": "ocr", "namespace": "prod", "uid": "u-1", "generation": 2},
            "spec": {"tag": "v2", "replicas": 4, "model": {"uri": "file:///models/m"}},
            "status": {"stableTag": "v1"},
        }
    )


def test_kopf_watches_and_filters_exactly_the_registry_child_kinds() -> None:
    handlers.use_settings(OperatorSettings(workers=7, thread_idle_s=12))
    settings = kopf.OperatorSettings()
    handlers.configure(settings=settings)
    # Children, and the pods (read for failed model fetches), are filtered by the API server.
    assert {s.any_name for s in settings.watching.label_selectors} == {
        k.plural for k in kinds.WATCHED + kinds.OBSERVED
    }
    assert settings.execution.max_workers == 7
    # kopf's handler threads come from our pool, whose idle threads exit (pool.py).
    executor = settings.execution.executor
    assert isinstance(executor, ElasticPool)
    assert (executor._max_workers, executor._idle_s) == (7, 12)
    # Router kinds are owned (applied, pruned) but not watched: their CRDs are optional.
    assert {k.kind for k in kinds.OWNED} - {k.kind for k in kinds.WATCHED} == {
        "HTTPRoute",
        "VirtualService",
        "DestinationRule",
    }


def test_watch_and_api_timeouts_reach_kopf_and_the_client_from_the_settings() -> None:
    ours = OperatorSettings(
        watch_server_timeout_s=40, watch_client_timeout_s=45, watch_connect_timeout_s=3,
        watch_inactivity_timeout_s=9, api_timeout_s=11, api_connect_timeout_s=2,
    )
    handlers.use_settings(ours)
    try:
        settings = kopf.OperatorSettings()
        handlers.configure(settings=settings)
        w, n = settings.watching, settings.networking
        assert (w.server_timeout, w.client_timeout, w.connect_timeout) == (40, 45, 3)
        assert isinstance(w.server_timeout, int)  # sent as timeoutSeconds: the API server refuses "40.0"
        assert w.inactivity_timeout == 9
        assert (n.request_timeout, n.connect_timeout) == (11, 2)
    finally:
        handlers.use_settings(OperatorSettings())


def test_kopf_processes_a_bounded_number_of_objects_at_once_and_releases_idle_workers() -> None:
    """A burst's memory is the objects in process at once (benchmarks/README.md): bounded by default,
    0 lifts the bound."""
    try:
        for ours, limit, idle in ((OperatorSettings(), 64, 0.5), (OperatorSettings(kopf_worker_limit=0,
                                  kopf_idle_timeout_s=5), None, 5)):
            handlers.use_settings(ours)
            settings = kopf.OperatorSettings()
            handlers.configure(settings=settings)
            assert (settings.queueing.worker_limit, settings.queueing.idle_timeout) == (limit, idle)
    finally:
        handlers.use_settings(OperatorSettings())


def test_child_events_run_apart_from_kopf_handler_threads_and_kopf_waits_for_its_own_patch() -> None:
    """In a burst kopf's handler threads are all busy with reconciles: child events (readiness) must
    not queue behind them, and kopf must not re-run the create handler on events queued meanwhile."""
    import inspect

    handlers.use_settings(OperatorSettings(child_workers=3))
    try:
        settings = kopf.OperatorSettings()
        handlers.configure(settings=settings)
        assert settings.persistence.consistency_timeout >= 60
        assert inspect.iscoroutinefunction(handlers.child_event)  # kopf runs it on its loop, not its pool
        handlers._child_pool = None
        assert handlers.child_pool()._max_workers == 3
    finally:
        handlers._child_pool = None
        handlers.use_settings(OperatorSettings())


def test_reconcile_plans_from_the_rollout_memory_before_status() -> None:
    svc = _svc()
    memory.clear()
    try:
        names = {c["metadata"]["name"] for c in reconcile.plan(svc) if c["kind"] == "Deployment"}
        assert names == {"ocr"}  # status: stable v1, no canary yet
        canary = Shape("v1", "v1", RUNNING, "v2", routed_weight=10, sizing_weight=10)
        memory.put(memory.key(svc), memory.Memory(canary, memory.current(svc)[1]))
        names = {c["metadata"]["name"] for c in reconcile.plan(svc) if c["kind"] == "Deployment"}
        assert names == {"ocr", "ocr-canary"}
    finally:
        memory.clear()
        handlers.use_settings(OperatorSettings())
