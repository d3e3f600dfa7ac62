"""``paddle-runtime serve``: the one place the runtime is wired together, and its lifecycle.

Assembly (:func:`assemble`), nothing else in the package builds or connects parts::

    engine (PaddleEngine, or the test-only FaultInjector around it)
      -> Batcher (one per model)                       contracts.ModelHandle
      -> FallbackRouter over main + fallback batcher   (when fallback_model_dir is set)
      -> ReloadManager (swaps the main batcher's engine; poll, SIGHUP, admin)
      -> ConfigWatcher (live max_batch_size / batch_timeout_ms -> every batcher, fallback_* -> router,
                        sla_* -> the SLO series)
      -> admin App (own port, same transport) and auth Guard (a hook of the inference App)
      -> InferenceApp + HttpServer (TLS from tls.py on every port)

Start-up order matters for Kubernetes probes: settings that cannot work (TLS, tokens) fail before
the port opens; then the port opens (liveness answers "loading" while a slow model or TensorRT
build loads), the engine loads and warms up in a thread, and only then does readiness turn 200.  A
model that fails to load ends the process with status 1, so the pod shows the error in
CrashLoopBackOff instead of sitting not-ready forever; a configuration error ends it with status 2.

Shutdown on SIGTERM/SIGINT: readiness turns 503, the listening sockets close, queued and running
requests finish within ``shutdown_timeout_s``, responses are flushed, connections close, the
engines unload.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import signal
import ssl
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from . import logs, metrics
from .admin import admin_token, build_admin_app
from .app import InferenceApp
from .auth import Guard
from .batcher import Batcher
from .config_watch import ConfigWatcher
from .contracts import Engine, ModelHandle, validate_inputs
from .engine import PaddleEngine
from .errors import ConfigError, ModelLoadError
from .fallback import FALLBACK, TUNABLE, FallbackRouter
from .faults import FaultInjector
from .loading import EngineFactory, check_same_contract, load_verified
from .model_dir import warmup_examples
from .reload import ReloadManager
from .settings import RuntimeSettings
from .tls import server_ssl_context
from .transport import HttpServer, Request

log = logging.getLogger("paddle_runtime.serve")

BATCHING_KEYS = ("max_batch_size", "batch_timeout_ms")
SLO_KEYS = ("sla_latency_p99_ms", "sla_availability_percent")
"""Settings the batchers take at run time (``Batcher.set_limits``)."""


def engine_factory(settings: RuntimeSettings) -> EngineFactory:
    """How every engine of this process is built: Paddle, wrapped by the fault injector only when
    the test-only ``fault_injection_file`` is set."""
    faults = settings.fault_injection_file

    def make(s: RuntimeSettings, model_dir: str, role: str) -> Engine:
        eng = PaddleEngine(s, model_dir=model_dir, role=role)
        return FaultInjector(eng, faults, role) if faults else eng

    return make


@dataclass
class Runtime:
    """What :func:`assemble` built: the handle the app serves and the parts shutdown stops."""

    handle: ModelHandle
    main: Batcher
    reload: ReloadManager
    config: ConfigWatcher
    fallback: Batcher | None = None
    router: FallbackRouter | None = None
    admin: HttpServer | None = None
    integrity_checks: tuple[str, ...] = ()
    batchers: list[Batcher] = field(default_factory=list)

    def version_info(self) -> dict[str, Any]:
        """The wiring's part of ``/version`` (also the admin status): reload, integrity, fallback, batching."""
        d = self.reload.version_info()
        d["integrity_checks"] = list(self.integrity_checks)
        d["fallback"] = self.router.status() if self.router is not None else None
        d["batching"] = {
            "maxBatchSize": self.main.max_batch_size,
            "batchTimeoutMs": self.main.batch_timeout_ms,
            "batchable": self.main.engine.batchable,
        }
        adaptive = self.main.batching_info()  # on/off, latency budget, the learned size per input shape
        d["batching"].update({k: adaptive[k] for k in ("adaptive", "latency_budget_ms", "shapes")})
        return d

    async def close(self) -> None:
        """Stop watchers and the admin port; unload every engine (after the handle drained)."""
        loop = asyncio.get_running_loop()
        self.config.stop()
        self.reload.stop()
        if self.admin is not None:
            await self.admin.stop_accepting()
            await self.admin.close(1.0)
        for b in self.batchers:
            eng = b.engine
            await loop.run_in_executor(None, eng.unload, 5.0)
            metrics.set_model_info(eng.name, eng.version, eng.device, eng.role, loaded=False)


def _load_fallback(settings: RuntimeSettings, main: Engine, factory: EngineFactory) -> Engine:
    eng, _ = load_verified(settings, settings.fallback_model_dir, FALLBACK, factory)
    check_same_contract(main, eng)
    log.info("fallback model %s %s loaded (%s)", eng.name, eng.version, eng.source)
    return eng


async def warm_through(batcher: Batcher) -> None:
    """One request per warm-up shape through the batcher, before ready: the engine warmed its
    predictors in the load thread; this runs them once more in the batcher's own worker thread,
    on the path a request takes (queue, adaptive batch size, row split). The engine's own warm-up
    already proved the model runs, so a failure here (a test's injected fault) is logged, not fatal."""
    eng = batcher.engine
    try:
        for x in warmup_examples(eng.inputs, 1):
            await batcher.infer(validate_inputs(eng.inputs, x, eng.max_rows))
    except Exception as e:  # noqa: BLE001 - see above
        log.warning("warm-up through the batcher failed for model %s (%s); serving anyway", eng.name, e)


async def assemble(settings: RuntimeSettings, pinned: Iterable[str] = (),
                   admin_ssl: ssl.SSLContext | None = None) -> Runtime:
    """Load the model(s) and connect every part; returns the assembled :class:`Runtime`."""
    loop = asyncio.get_running_loop()
    factory = engine_factory(settings)
    engine, checks = await loop.run_in_executor(None, load_verified, settings, settings.model_dir, "main", factory)
    metrics.set_model_info(engine.name, engine.version, engine.device, engine.role)
    main = Batcher(engine, settings)
    await main.start()
    await warm_through(main)
    batchers = [main]
    handle: ModelHandle = main
    fb: Batcher | None = None
    router: FallbackRouter | None = None
    if settings.fallback_model_dir:
        fb_engine = await loop.run_in_executor(None, _load_fallback, settings, engine, factory)
        metrics.set_model_info(fb_engine.name, fb_engine.version, fb_engine.device, FALLBACK)
        fb = Batcher(fb_engine, settings)
        await fb.start()
        await warm_through(fb)
        batchers.append(fb)
        router = FallbackRouter(main, fb, settings)
        await router.start()
        handle = router

    manager = ReloadManager(main, settings, factory, fallback=fb)
    manager.start()
    if hasattr(signal, "SIGHUP"):
        loop.add_signal_handler(signal.SIGHUP, manager.trigger)

    watcher = ConfigWatcher(settings, pinned)

    def set_limits(_: dict[str, Any]) -> None:
        now = watcher.current
        for b in batchers:
            b.set_limits(now.max_batch_size, now.batch_timeout_ms)

    watcher.subscribe(BATCHING_KEYS, set_limits)

    def set_slo(_: dict[str, Any] | None = None) -> None:
        now = watcher.current
        metrics.set_slo(handle.name, now.sla_latency_p99_ms, now.sla_availability_percent)

    set_slo()
    watcher.subscribe(SLO_KEYS, set_slo)
    if router is not None:
        watcher.subscribe(TUNABLE, router.apply_params)
    watcher.start()

    rt = Runtime(handle, main, manager, watcher, fb, router, None, checks, batchers)
    if settings.admin_port:
        admin_app = build_admin_app(admin_token(settings), rt.version_info, lambda: manager.reload(force=True))
        rt.admin = HttpServer(admin_app, settings.max_body_bytes)
        port = await rt.admin.start(settings.host, settings.admin_port, admin_ssl)
        log.info("admin endpoints on port %d", port)
    return rt


def check_settings(settings: RuntimeSettings) -> tuple[ssl.SSLContext | None, Guard]:
    """Everything that can be refused before the port opens; raises :class:`ConfigError`."""
    ctx = server_ssl_context(settings)
    if settings.admin_port:
        admin_token(settings)
    try:
        guard = Guard(settings)
    except ValueError as exc:  # an unreadable token file
        raise ConfigError(str(exc)) from exc
    return ctx, guard


async def serve_async(settings: RuntimeSettings, pinned: Iterable[str] = ()) -> int:
    """Run the runtime until SIGTERM/SIGINT; returns the process exit status.

    ``pinned`` names settings given as CLI flags: the config watcher never takes them from the file.
    """
    loop = asyncio.get_running_loop()
    try:
        ssl_ctx, guard = check_settings(settings)
    except ConfigError as e:
        log.error("invalid settings: %s", e)
        print(f"paddle-runtime serve: {e}", file=sys.stderr)
        return 2
    app = InferenceApp(settings)
    if guard.active:

        async def guard_hook(req: Request) -> None:
            guard.check(req.path, req.headers.get("authorization"), req.peer)

        app.before_request.append(guard_hook)
    server = HttpServer(app, settings.max_body_bytes)
    port = await server.start(settings.host, settings.port, ssl_ctx)
    log.info("listening on %s:%d%s", settings.host, port, " (TLS)" if ssl_ctx else "")
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # Importing paddle installs its own fatal-signal handler for SIGTERM (it aborts with a C++
    # "Termination signal" trace), so import it now, with the port already open, and take the
    # signals back afterwards; otherwise there is no graceful drain.
    await loop.run_in_executor(None, importlib.import_module, "paddle.inference")
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    gpu = metrics.GpuSampler()
    if settings.device == "gpu":
        gpu.start()

    t0 = time.perf_counter()
    if settings.pipeline:  # a model pipeline (ocr/) instead of one model directory
        from .ocr.serve import assemble_pipeline  # OpenCV and the stages: only when asked for

        load: asyncio.Future[Any] = asyncio.ensure_future(assemble_pipeline(settings, app))
    else:
        load = asyncio.ensure_future(assemble(settings, pinned, ssl_ctx))
    waiter = asyncio.ensure_future(stop.wait())
    await asyncio.wait({load, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if not load.done():  # SIGTERM during load: nothing to drain
        load.cancel()
        await server.stop_accepting()
        await server.close(1.0)
        return 0
    try:
        rt = load.result()
    except (ModelLoadError, ConfigError) as e:
        app.load_failed(str(e))
        log.error("model failed to load: %s", e)
        await server.stop_accepting()
        await server.close(1.0)
        return 1
    app.attach(rt.handle, rt.version_info)
    if settings.pipeline:  # no config watcher there: the SLO as set at start
        metrics.set_slo(rt.handle.name, settings.sla_latency_p99_ms, settings.sla_availability_percent)
    log.info("ready: model %s version %s after %.2fs", rt.handle.name, rt.handle.version, time.perf_counter() - t0)

    await waiter
    log.info("shutdown requested: draining (up to %.0fs)", settings.shutdown_timeout_s)
    # Keep serving (readiness 503, every response closing its connection) until the endpoint
    # change has reached the proxies, so keep-alive clients reconnect elsewhere instead of failing.
    app.draining = server.closing = True
    await asyncio.sleep(settings.drain_delay_s)
    app.begin_shutdown()
    await server.stop_accepting()
    t1 = time.perf_counter()
    drained = await rt.handle.drain(settings.shutdown_timeout_s)
    await server.close(max(1.0, settings.shutdown_timeout_s - (time.perf_counter() - t1)))
    try:
        await rt.close()
    finally:
        gpu.stop()
    log.info("stopped (%s) in %.2fs", "drained" if drained else "drain deadline hit", time.perf_counter() - t1)
    return 0


def run(settings: RuntimeSettings, pinned: Iterable[str] = ()) -> int:
    """Blocking entry point: uvloop when available, then :func:`serve_async`."""
    logs.configure(settings.log_level, settings.log_format)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(serve_async(settings, pinned))
    return uvloop.run(serve_async(settings, pinned))
