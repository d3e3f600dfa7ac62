"""``paddle-runtime serve``: assemble engine -> batcher -> HTTP server, run until SIGTERM, drain.

Start-up order matters for Kubernetes probes: the port opens first (liveness answers "loading"
while a slow model or TensorRT build loads), then the engine loads and warms up in a thread, and
only then does readiness turn 200.  A model that fails to load ends the process with status 1, so
the pod shows the error in CrashLoopBackOff instead of sitting not-ready forever.

Shutdown on SIGTERM/SIGINT: readiness turns 503, the listening socket closes, queued and running
requests finish within ``shutdown_timeout_s``, responses are flushed, connections close, the
engine unloads.

The resilience layer hooks in through :func:`build_handle` (wrap the batcher in a fallback router,
start the reload watcher) and ``App.before_request`` / ``App.add_route`` (auth, admin routes).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import signal
import ssl
import sys
import time
from collections.abc import Awaitable, Callable

from . import metrics
from .batcher import Batcher, ModelHandle
from .errors import ModelLoadError
from .server import App, HttpServer
from .settings import RuntimeSettings

log = logging.getLogger("paddle_runtime.serve")

Cleanup = Callable[[], Awaitable[None]]


async def build_handle(settings: RuntimeSettings, app: App) -> tuple[ModelHandle, Cleanup]:
    """Load the main engine (in a thread: loading blocks) and put a batcher in front of it.

    Returns the handle the server will use and an async cleanup run after the drain.
    """
    from .engine import PaddleEngine  # paddle is imported here, after the port is open
    from .reload import attach_resilience, load_main_engine

    loop = asyncio.get_running_loop()

    def load() -> PaddleEngine:
        # Integrity check first (a refused model never reaches Paddle), then load and warm up.
        return load_main_engine(settings)

    engine = await loop.run_in_executor(None, load)
    metrics.set_model_info(engine.name, engine.version, engine.device, engine.role)
    batcher = Batcher(engine, settings)
    await batcher.start()
    # Fallback routing, hot reload, admin port and auth (reload.py); returns the handle to serve.
    handle, resilience_cleanup = await attach_resilience(settings, app, batcher)

    async def cleanup() -> None:
        await resilience_cleanup()
        await loop.run_in_executor(None, batcher.engine.unload, 5.0)
        metrics.set_model_info(batcher.engine.name, batcher.engine.version, batcher.engine.device,
                               batcher.engine.role, loaded=False)

    return handle, cleanup


def _ssl_context(settings: RuntimeSettings) -> ssl.SSLContext | None:
    if not (settings.tls_cert_file and settings.tls_key_file):
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    return ctx


async def serve_async(settings: RuntimeSettings,
                      build: Callable[[RuntimeSettings, App], Awaitable[tuple[ModelHandle, Cleanup]]] = build_handle,
                      ) -> int:
    """Run the runtime until SIGTERM/SIGINT; returns the process exit status."""
    loop = asyncio.get_running_loop()
    app = App(settings)
    server = HttpServer(app)
    port = await server.start(settings.host, settings.port, ssl=_ssl_context(settings))
    log.info("listening on %s:%d", settings.host, port)
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
    load = asyncio.ensure_future(build(settings, app))
    waiter = asyncio.ensure_future(stop.wait())
    await asyncio.wait({load, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if not load.done():  # SIGTERM during load: nothing to drain
        load.cancel()
        await server.stop_accepting()
        await server.close(1.0)
        return 0
    try:
        handle, cleanup = load.result()
    except ModelLoadError as e:
        app.load_error = str(e)
        log.error("model failed to load: %s", e)
        await server.stop_accepting()
        await server.close(1.0)
        return 1
    app.handle = handle
    log.info("ready: model %s version %s after %.2fs", handle.name, handle.version, time.perf_counter() - t0)

    await waiter
    log.info("shutdown requested: draining (up to %.0fs)", settings.shutdown_timeout_s)
    # Keep serving (readiness 503, every response closing its connection) until the endpoint
    # change has reached the proxies, so keep-alive clients reconnect elsewhere instead of failing.
    app.draining = server.closing = True
    await asyncio.sleep(settings.drain_delay_s)
    app.shutting_down = True
    await server.stop_accepting()
    t1 = time.perf_counter()
    drained = await handle.drain(settings.shutdown_timeout_s)
    await server.close(max(1.0, settings.shutdown_timeout_s - (time.perf_counter() - t1)))
    try:
        await cleanup()
    finally:
        gpu.stop()
    log.info("stopped (%s) in %.2fs", "drained" if drained else "drain deadline hit", time.perf_counter() - t1)
    return 0


def run(settings: RuntimeSettings) -> int:
    """Blocking entry point: uvloop when available, then :func:`serve_async`."""
    logging.basicConfig(level=settings.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        import uvloop

        return uvloop.run(serve_async(settings))
    except ImportError:
        return asyncio.run(serve_async(settings))
