"""Hot reload: replace the served model in place without losing a request.

Triggers: a poll of ``DEST/current`` and ``MANIFEST.json`` every ``reload_poll_s`` seconds, SIGHUP,
and ``POST /admin/reload`` on the admin port (see :class:`AdminServer`; off by default).

A reload is done off the request path, in this order, and stops at the first failure:

1. integrity (:func:`paddle_runtime.integrity.verify_model_dir`) with the configured keys;
2. a *child process* loads the candidate and runs one inference (``reload_probe``): Paddle can
   segfault on a broken model (Paddle #28331, #17234), and a segfault there only kills the child;
3. the candidate engine is built in this process and warmed up (``PaddleEngine.load``);
4. its input contract is compared with the served one: requests already admitted were validated
   against it, and clients were written against it, so a changed API needs a restart, not a reload;
5. ``Batcher.swap_engine`` makes it serve the next batch (the batcher reads the engine once per
   batch, so a batch never mixes versions); batches already running finish on the old engine,
   which is unloaded after a grace period once it is idle.

A failed reload keeps the old model serving, increments ``paddle_runtime_reloads_total{result=
"failure"}``, logs the reason, and shows it in ``/version`` (:meth:`ReloadManager.version_info`).
Every load logs ``Loaded model <name> <version> in <ms> ms``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NoReturn

from . import metrics
from .errors import ModelLoadError, RuntimeError_
from .integrity import IntegrityError, load_hmac_key, read_manifest, verify_model_dir
from .model_dir import TensorSpec, resolve_model_dir
from .settings import RuntimeSettings

log = logging.getLogger("paddle_runtime.reload")

_PROBE_ENV = "PADDLE_RUNTIME_PROBE_SETTINGS"
# Old engines are unloaded this long after the swap: the dispatcher may have read the old engine
# for a batch an instant before the swap and not yet handed it to a worker thread.
_RETIRE_GRACE_S = 2.0


class ModelRejected(RuntimeError_):
    """A reload candidate failed a check; the served model is unchanged (422 on the admin port)."""

    status = 422

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


# Nice value for reload work (candidate build, warm-up, the child check): on a CPU-bound pod the
# serving threads must win the CPU while a candidate loads, or every reload is a latency spike.
_BACKGROUND_NICE = 10
# The child check is a whole process (interpreter start, paddle import, load, one run): at nice 10 it
# got ~10 % of a saturated core and took 20 s; at 5 (~25 %) it stays a few seconds.
_CHILD_NICE = 5


def _low_priority_call(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a fresh thread at nice ``_BACKGROUND_NICE`` and return its result (or raise).

    Linux nice is per thread and cannot be lowered back without privilege, hence a throw-away
    thread; Paddle's own threads started inside inherit the low priority.
    """
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), _BACKGROUND_NICE)
        except (OSError, AttributeError):
            pass  # not Linux, or not permitted: the reload still works, at normal priority
        try:
            box["result"] = fn()
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=run, name="reload-build", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["result"]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def integrity_options(settings: RuntimeSettings) -> dict[str, Any]:
    """Keyword arguments for :func:`verify_model_dir` from the settings (keys read now, so a rotated
    Secret is picked up by the next check)."""
    return {
        "hmac_key": load_hmac_key(settings.hmac_key_file or None),
        "public_key": settings.public_key_file or None,
        "require_manifest": settings.require_signed,
    }


def verify_for_start(settings: RuntimeSettings, model_dir: str | None = None) -> tuple[str, ...]:
    """Integrity check before the first load; raises :class:`IntegrityError` (the server must not start)."""
    target = resolve_model_dir(model_dir or settings.model_dir)
    res = verify_model_dir(target, **integrity_options(settings))
    if res.checks:
        log.info("model %s verified (%s)", target, ", ".join(res.checks))
    return res.checks


def _contract(specs: tuple[TensorSpec, ...]) -> dict[str, tuple[str, tuple[int, ...]]]:
    # Batch dimension excluded: it is the one dimension allowed to differ.
    return {s.name: (s.datatype, tuple(s.shape[1:])) for s in specs}


def contract_difference(
    old_in: tuple[TensorSpec, ...],
    new_in: tuple[TensorSpec, ...],
    old_out: tuple[TensorSpec, ...] | None = None,
    new_out: tuple[TensorSpec, ...] | None = None,
) -> str | None:
    """A sentence saying how two models' I/O contracts differ, or None when they match."""
    pairs = [("inputs", old_in, new_in)]
    if old_out is not None and new_out is not None:
        pairs.append(("outputs", old_out, new_out))
    for what, a, b in pairs:
        ca, cb = _contract(a), _contract(b)
        if ca != cb:
            diff = sorted(set(ca.items()) ^ set(cb.items()))
            return f"{what} differ: served {sorted(ca.items())}, candidate {sorted(cb.items())} (changed: {diff[:4]})"
    return None


# ---------------------------------------------------------------- the child-process probe


def probe_in_child(model_dir: Path, settings: RuntimeSettings, timeout_s: float) -> dict[str, Any]:
    """Load ``model_dir`` and run a warm-up inference in a child process; return its I/O description.

    Raises :class:`ModelRejected` when the child fails, crashes (signal) or times out.
    """
    cfg = settings.model_dump(mode="json")
    # The child loads exactly one predictor once: cheap, and enough to find a model Paddle chokes on.
    cfg.update({"config_file": None, "workers": 1, "warmup_runs": 1, "model_dir": str(model_dir)})
    env = {**os.environ, _PROBE_ENV: json.dumps(cfg)}
    cmd = [sys.executable, "-m", "paddle_runtime.reload", "--probe"]
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise ModelRejected(
            "probe", f"checking {model_dir} in a child process took over {timeout_s:.0f}s"
        ) from None
    if proc.returncode < 0:
        try:
            sig = signal.Signals(-proc.returncode).name
        except ValueError:
            sig = str(-proc.returncode)
        raise ModelRejected(
            "crash", f"loading {model_dir} crashed the check process ({sig}); not loaded here"
        )
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        reason = lines[-1] if lines else f"exit status {proc.returncode}"
        raise ModelRejected("load", f"{model_dir} cannot be loaded: {reason[:500]}")
    try:
        info = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise ModelRejected("load", f"check process for {model_dir} printed no result") from None
    log.info(
        "candidate %s passed the child-process check in %.0f ms", model_dir, 1000 * (time.monotonic() - t0)
    )
    return info


def _probe_main() -> int:
    """Child side of :func:`probe_in_child`."""
    try:  # the child lowers its own priority (always allowed; preexec_fn is unsafe with threads)
        os.setpriority(os.PRIO_PROCESS, 0, _CHILD_NICE)
    except (OSError, AttributeError):
        pass
    from .engine import PaddleEngine

    cfg = json.loads(os.environ[_PROBE_ENV])
    try:
        eng = PaddleEngine(RuntimeSettings(**cfg), model_dir=cfg["model_dir"], role="probe")
        eng.load()
    except Exception as exc:  # reported to the parent as one line; the parent decides
        msg = str(exc).strip().splitlines()
        print(f"{type(exc).__name__}: {msg[-1] if msg else ''}", file=sys.stderr)
        return 3
    specs = {
        "inputs": [[s.name, s.datatype, list(s.shape)] for s in eng.inputs],
        "outputs": [[s.name, s.datatype, list(s.shape)] for s in eng.outputs],
    }
    print(json.dumps(specs))
    return 0


# ---------------------------------------------------------------- the manager


class ReloadManager:
    """Watches the model source and swaps the engine of a :class:`~.batcher.Batcher` in place.

    ``engine_factory(settings, model_dir, role)`` builds an unloaded engine (``PaddleEngine`` or a
    wrapper of it, e.g. the test-only fault injector); ``handle`` is the main model's batcher.
    """

    def __init__(
        self,
        handle: Any,
        settings: RuntimeSettings,
        engine_factory: Callable[[RuntimeSettings, str, str], Any],
        fallback: Any = None,
    ) -> None:
        self.handle = handle
        self.fallback = fallback  # when set, a candidate must also keep the fallback's I/O contract
        self.settings = settings
        self.engine_factory = engine_factory
        self._lock = threading.Lock()  # one reload at a time, whatever triggered it
        self._wake = threading.Event()
        self._forced = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        eng = handle.engine
        self.model_dir: Path = Path(eng.files.path)
        self._source_sig = self._signature(self.model_dir)
        self._failed_sig: tuple | None = None
        self.loaded_at = _now()
        self.load_ms = round(
            1000 * (getattr(eng, "load_seconds", 0.0) + getattr(eng, "warmup_seconds", 0.0)), 1
        )
        self.previous_version: str | None = None
        self.last_error: str | None = None
        self.last_error_at: str | None = None
        self.last_attempt_at: str | None = None
        self.counts = {"success": 0, "failure": 0}
        # Both label values exist from the start, so a dashboard shows 0 rather than "no data".
        metrics.RELOADS.labels("success")
        metrics.RELOADS.labels("failure")

    # ---- watching --------------------------------------------------------------------------------
    @staticmethod
    def _signature(path: Path) -> tuple:
        """What identifies the content at ``path``: the directory and its manifest bytes (or mtimes)."""
        try:
            m = read_manifest(path)
        except IntegrityError:
            m = None
        if m is not None:
            return (str(path), m.digest)
        with contextlib.suppress(OSError):
            return (
                str(path),
                tuple(sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in path.iterdir())),
            )
        return (str(path), None)

    def start(self) -> None:
        """Start the watcher thread (it also serves SIGHUP/admin triggers when polling is off)."""
        self._thread = threading.Thread(target=self._loop, name="reload-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def trigger(self) -> None:
        """Ask for a reload now, even of a candidate that failed before (SIGHUP: safe in a handler)."""
        self._forced = True
        self._wake.set()

    def _loop(self) -> None:
        poll = self.settings.reload_poll_s
        while not self._stop.is_set():
            self._wake.wait(poll if poll > 0 else None)
            self._wake.clear()
            if self._stop.is_set():
                return
            forced, self._forced = self._forced, False
            try:
                self.reload(force=forced)
            except ModelRejected:
                pass  # already counted and logged; the old model keeps serving
            except Exception:  # the watcher must survive anything, or reloads silently stop
                log.exception("reload watcher error")

    # ---- reloading ---------------------------------------------------------------------------------
    def reload(self, force: bool = False) -> dict[str, Any]:
        """Reload if the source changed (or ``force``); return a summary; raise :class:`ModelRejected`."""
        with self._lock:
            try:
                target = resolve_model_dir(self.settings.model_dir)
            except ModelLoadError as exc:
                return self._fail(None, ModelRejected("missing", str(exc)))
            sig = self._signature(target)
            if not force and (sig == self._source_sig or sig == self._failed_sig):
                return {"result": "unchanged", "version": self.handle.version}
            return self._reload_locked(target, sig)

    def _reload_locked(self, target: Path, sig: tuple) -> dict[str, Any]:
        self.last_attempt_at = _now()
        t0 = time.perf_counter()
        old = self.handle.engine
        log.info("reloading model %s from %s", self.handle.name, target)
        try:
            try:
                verify_model_dir(target, **integrity_options(self.settings))
            except IntegrityError as exc:
                raise ModelRejected(exc.kind, str(exc)) from exc
            if self.settings.reload_probe:
                probe_in_child(target, self.settings, self.settings.reload_probe_timeout_s)
            # The served name is kept: clients address /v2/models/<name>, which must not move.
            s = self.settings.model_copy(update={"model_name": self.handle.name})
            try:
                eng = self.engine_factory(s, str(target), "main")
                _low_priority_call(eng.load)
            except ModelLoadError as exc:
                raise ModelRejected("load", str(exc)) from exc
            diff = contract_difference(old.inputs, eng.inputs)
            if diff is None and self.fallback is not None:
                fb = self.fallback
                diff = contract_difference(fb.inputs, eng.inputs, tuple(fb.outputs), tuple(eng.outputs))
                diff = diff and f"the fallback model's {diff}"
            if diff:
                with contextlib.suppress(Exception):
                    eng.unload(timeout=0)
                raise ModelRejected(
                    "contract", f"{target}: {diff}; restart the runtime to change the model's API"
                )
        except ModelRejected as exc:
            self._failed_sig = sig
            return self._fail(target, exc)
        except Exception as exc:  # anything else from Paddle: keep serving, report it
            self._failed_sig = sig
            return self._fail(target, ModelRejected("load", f"{type(exc).__name__}: {exc}"))
        self.handle.swap_engine(eng)
        elapsed_ms = 1000 * (time.perf_counter() - t0)
        self.previous_version = old.version
        self.model_dir = target
        self._source_sig, self._failed_sig = sig, None
        self.loaded_at = _now()
        self.load_ms = round(elapsed_ms, 1)
        self.counts["success"] += 1
        metrics.RELOADS.labels("success").inc()
        metrics.set_model_info(old.name, old.version, old.device, "main", loaded=False)
        metrics.set_model_info(eng.name, eng.version, eng.device, "main")
        log.info("Loaded model %s %s in %.0f ms", eng.name, eng.version, elapsed_ms)
        threading.Thread(target=self._retire, args=(old,), name="retire-engine", daemon=True).start()
        return {
            "result": "success",
            "version": eng.version,
            "previous_version": old.version,
            "load_ms": self.load_ms,
        }

    def _retire(self, old: Any) -> None:
        time.sleep(_RETIRE_GRACE_S)
        if not old.wait_idle(self.settings.request_timeout_s):
            log.warning(
                "old engine %s %s still busy after %.0fs; unloading",
                old.name,
                old.version,
                self.settings.request_timeout_s,
            )
        old.unload(timeout=0)

    def _fail(self, target: Path | None, exc: ModelRejected) -> NoReturn:
        self.counts["failure"] += 1
        metrics.RELOADS.labels("failure").inc()
        self.last_error = f"{exc.kind}: {exc.message}"
        self.last_error_at = _now()
        log.error(
            "reload of %s refused (%s); still serving %s %s",
            target,
            self.last_error,
            self.handle.name,
            self.handle.version,
        )
        raise exc

    # ---- reporting ----------------------------------------------------------------------------------
    def version_info(self) -> dict[str, Any]:
        """The reload part of ``/version``."""
        return {
            "model": self.handle.name,
            "version": self.handle.version,
            "model_dir": str(self.model_dir),
            "loaded_at": self.loaded_at,
            "load_ms": self.load_ms,
            "previous_version": self.previous_version,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "last_attempt_at": self.last_attempt_at,
            "reloads": dict(self.counts),
        }


# ---------------------------------------------------------------- admin port


class AdminServer:
    """``POST /admin/reload`` and ``GET /admin/status`` on ``admin_port``, bearer token required.

    A separate port (and a plain thread-per-request server) keeps admin traffic off the inference
    event loop and lets a NetworkPolicy expose the two differently. Off unless ``admin_port`` is set;
    refuses to start without ``admin_token_file``: an unauthenticated reload trigger is a DoS lever.
    """

    def __init__(
        self, settings: RuntimeSettings, status: Callable[[], dict], reload: Callable[[], dict]
    ) -> None:
        from .auth import TokenFile, tls_context  # auth has no dependency on reload; avoid a cycle at import

        if not settings.admin_token_file:
            raise ModelLoadError(
                "admin_port is set but admin_token_file is empty; the admin port needs a token"
            )
        self.token = TokenFile(settings.admin_token_file)
        self.token.get()  # fail at start when unreadable
        status_fn, reload_fn, token = status, reload, self.token

        class Handler(BaseHTTPRequestHandler):
            server_version = "paddle-runtime-admin"

            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug("admin %s", fmt % args)

            def _send(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorized(self) -> bool:
                if token.check(self.headers.get("Authorization")):
                    return True
                self._send(401, {"error": "admin endpoints need 'Authorization: Bearer <admin token>'"})
                return False

            def do_GET(self) -> None:
                if not self._authorized():
                    return
                if self.path in ("/admin/status", "/version"):
                    self._send(200, status_fn())
                else:
                    self._send(404, {"error": f"no admin route {self.path}"})

            def do_POST(self) -> None:
                if not self._authorized():
                    return
                if self.path != "/admin/reload":
                    self._send(404, {"error": f"no admin route {self.path}"})
                    return
                try:
                    self._send(200, reload_fn())
                except RuntimeError_ as exc:
                    self._send(exc.status, {"error": exc.message, "kind": getattr(exc, "kind", "error")})

        self.httpd = ThreadingHTTPServer((settings.host, settings.admin_port), Handler)
        self.httpd.daemon_threads = True
        ctx = tls_context(settings)
        if ctx is not None:
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="admin-http", daemon=True)

    def start(self) -> None:
        self._thread.start()
        log.info("admin endpoints on port %d", self.port)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# ---------------------------------------------------------------- wiring into `serve`


class _LiveInfo(Mapping):
    """A read-only mapping computed on every access: ``App.version_info`` merged into ``/version``."""

    def __init__(self, fn: Callable[[], dict[str, Any]]) -> None:
        self._fn = fn

    def __getitem__(self, key: str) -> Any:
        return self._fn()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._fn())

    def __len__(self) -> int:
        return len(self._fn())


def load_main_engine(settings: RuntimeSettings) -> Any:
    """The start-up load: integrity first (a refused model never reaches Paddle), then load + warm-up."""
    from .fallback import make_engine

    try:
        checks = verify_for_start(settings)
    except IntegrityError as exc:
        raise ModelLoadError(f"model refused: {exc.kind}: {exc}") from exc
    eng = make_engine(settings, settings.model_dir, "main")
    eng.load()
    eng.integrity_checks = checks
    return eng


async def attach_resilience(settings: RuntimeSettings, app: Any, batcher: Any) -> tuple[Any, Callable]:
    """Wrap the main batcher with fallback routing, start hot reload, admin port and auth.

    Returns the handle the server should use and an async cleanup.
    """
    import asyncio

    from .auth import Guard
    from .batcher import Batcher
    from .fallback import FallbackRouter, load_fallback, make_engine

    loop = asyncio.get_running_loop()
    guard = Guard(settings)
    if guard.active:

        async def guard_hook(req: Any) -> None:
            guard.check(req.path, req.headers.get("authorization"), getattr(req, "peer", ""))

        app.before_request.append(guard_hook)

    handle: Any = batcher
    router: FallbackRouter | None = None
    fb_batcher = None
    if settings.fallback_model_dir:
        fb_engine = await loop.run_in_executor(None, load_fallback, settings, batcher.engine)
        fb_batcher = Batcher(fb_engine, settings)
        await fb_batcher.start()
        router = FallbackRouter(batcher, fb_batcher, settings)
        await router.start()
        handle = router

    manager = ReloadManager(batcher, settings, make_engine, fallback=fb_batcher)
    manager.start()
    if hasattr(signal, "SIGHUP"):
        loop.add_signal_handler(signal.SIGHUP, manager.trigger)
    checks = tuple(getattr(batcher.engine, "integrity_checks", ()))

    def info() -> dict[str, Any]:
        d = manager.version_info()
        d["integrity_checks"] = list(checks)
        d["fallback"] = router.status() if router is not None else None
        d["batching"] = batcher.batching_info()  # the adaptive batcher's learned size per input shape
        return d

    app.version_info = _LiveInfo(info)
    admin = None
    if settings.admin_port:
        admin = AdminServer(settings, info, lambda: manager.reload(force=True))
        admin.start()

    async def cleanup() -> None:
        # The server already drained ``handle`` (the router drains both batchers).
        manager.stop()
        if admin is not None:
            admin.stop()
        if fb_batcher is not None:
            await loop.run_in_executor(None, fb_batcher.engine.unload, 5.0)

    return handle, cleanup


if __name__ == "__main__":
    if "--probe" in sys.argv:
        logging.basicConfig(level=logging.WARNING)
        sys.exit(_probe_main())
    sys.exit("usage: python -m paddle_runtime.reload --probe  (internal: child-process model check)")
