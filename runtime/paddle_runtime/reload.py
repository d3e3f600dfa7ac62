"""Hot reload: replace the served model in place without losing a request.

Triggers: a poll of ``DEST/current`` and ``MANIFEST.json`` every ``reload_poll_s`` seconds, SIGHUP,
and ``POST /admin/reload`` on the admin port (``admin.py``; off by default).

A reload is done off the request path, in this order, and stops at the first failure:

1. integrity (:func:`paddle_runtime.integrity.verify_model_dir`) with the configured keys;
2. a *child process* loads the candidate and runs one inference (``reload_probe``, ``probe.py``):
   Paddle can segfault on a broken model, and a segfault there only kills the child;
3. the candidate engine is built in this process and warmed up (``Engine.load``);
4. its input contract is compared with the served one: requests already admitted were validated
   against it, and clients were written against it, so a changed API needs a restart, not a reload;
5. ``Batcher.swap_engine`` makes it serve the next batch (the batcher reads the engine once per
   batch, so a batch never mixes versions); batches already running finish on the old engine,
   which is unloaded after a grace period once it is idle.

A failed reload keeps the old model serving, increments ``paddle_runtime_reloads_total{result=
"failure"}``, logs the reason, and shows it in ``/version`` (:meth:`ReloadManager.version_info`).

A candidate can also be refused before it reaches this process: ``fetch`` (the model-sync sidecar)
verifies it and leaves ``DEST/fetch-failed.json`` when it refuses it (store.py). Each poll reads that
record; while it is there, ``paddle_runtime_reload_failing{error}`` reports it (unless a refusal of
this process is in force), so the resource's status says why the new version never arrived.
Every load logs ``Loaded model <name> <version> in <ms> ms``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NoReturn

from . import logs, metrics
from .batcher import Batcher
from .contracts import Engine, ModelHandle, contract_difference
from .errors import IntegrityError, ModelLoadError, ModelRejected
from .integrity import read_manifest, verify_model_dir
from .loading import EngineFactory, integrity_options
from .model_dir import resolve_model_dir
from .probe import probe_in_child
from .settings import RuntimeSettings
from .store import read_fetch_failure

log = logging.getLogger("paddle_runtime.reload")

# Old engines are unloaded this long after the swap: the dispatcher may have read the old engine
# for a batch an instant before the swap and not yet handed it to a worker thread.
_RETIRE_GRACE_S = 2.0

# Nice value for reload work (candidate build, warm-up, the child check): on a CPU-bound pod the
# serving threads must win the CPU while a candidate loads, or every reload is a latency spike.
_BACKGROUND_NICE = 10


def _low_priority_call(fn: Callable[[], None]) -> None:
    """Run ``fn`` in a fresh thread at nice ``_BACKGROUND_NICE`` and return its result (or raise).

    Linux nice is per thread and cannot be lowered back without privilege, hence a throw-away
    thread; Paddle's own threads started inside inherit the low priority.
    """
    box: dict[str, BaseException] = {}

    def run() -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), _BACKGROUND_NICE)
        except (OSError, AttributeError):
            pass  # not Linux, or not permitted: the reload still works, at normal priority
        try:
            fn()
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=run, name="reload-build", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class ReloadManager:
    """Watches the model source and swaps the engine of a :class:`~.batcher.Batcher` in place.

    ``engine_factory`` builds an unloaded engine (the wiring's choice); ``handle`` is the main
    model's batcher; ``fallback``, when set, is the fallback model whose I/O contract a candidate
    must also keep.
    """

    def __init__(
        self,
        handle: Batcher,
        settings: RuntimeSettings,
        engine_factory: EngineFactory,
        fallback: ModelHandle | None = None,
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
        self.model_dir: Path = Path(eng.source)
        self._source_sig = self._signature(self.model_dir)
        self._failed_sig: tuple[Any, ...] | None = None
        self.loaded_at = _now()
        self.load_ms = round(1000 * (eng.load_seconds + eng.warmup_seconds), 1)
        self.previous_version: str | None = None
        self.last_error: str | None = None
        self.last_error_at: str | None = None
        self.last_attempt_at: str | None = None
        self.failing = False  # the source on disk is refused now (last_error stays as history)
        self.fetch_error: str | None = None  # the candidate `fetch` refused, while its record is there
        self.counts = {"success": 0, "failure": 0}
        # Both label values exist from the start, so a dashboard shows 0 rather than "no data".
        metrics.RELOADS.labels(handle.name, "success")
        metrics.RELOADS.labels(handle.name, "failure")

    # ---- watching --------------------------------------------------------------------------------
    @staticmethod
    def _signature(path: Path) -> tuple[Any, ...]:
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
        """Stop the watcher thread."""
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
    def _export_failing(self, at: float | None = None) -> None:
        """One ``reload_failing`` series: this process's refusal first, else the fetch's, else none."""
        metrics.set_reload_failing(self.handle.name, self.last_error if self.failing else self.fetch_error, at)

    def _read_fetch_failure(self) -> None:
        rec = read_fetch_failure(self.settings.model_dir)
        error = None
        if rec is not None:
            reason = (rec.get("error") or "refused").removeprefix("fetch failed: ")
            error = f"fetch of {rec.get('version') or rec.get('uri') or 'the new model'} refused: {reason}"
        if error == self.fetch_error:
            return
        if error is not None:
            log.error("%s; still serving %s %s", error, self.handle.name, self.handle.version,
                      extra=logs.event("reload", model=self.handle.name, from_version=self.handle.version,
                                       to_version=rec.get("version") if rec else None, load_ms=None,
                                       result="failure", error=error, model_dir=None))
        else:
            log.info("the refused fetch is no longer pending (%s)", self.fetch_error)
        self.fetch_error = error
        self._export_failing(time.time() if error else None)

    def reload(self, force: bool = False) -> dict[str, Any]:
        """Reload if the source changed (or ``force``); return a summary; raise :class:`ModelRejected`."""
        with self._lock:
            self._read_fetch_failure()
            try:
                target = resolve_model_dir(self.settings.model_dir)
            except ModelLoadError as exc:
                self._fail(None, ModelRejected(str(exc), kind="missing"))
            sig = self._signature(target)
            if sig == self._source_sig and self.failing:
                # The refused candidate is gone (``current`` points at what serves): so is the error.
                self._failed_sig, self.failing = None, False
                self._export_failing()
            if not force and (sig == self._source_sig or sig == self._failed_sig):
                return {"result": "unchanged", "version": self.handle.version}
            return self._reload_locked(target, sig)

    def _reload_locked(self, target: Path, sig: tuple[Any, ...]) -> dict[str, Any]:
        self.last_attempt_at = _now()
        t0 = time.perf_counter()
        old = self.handle.engine
        log.debug("reloading model %s from %s", self.handle.name, target)
        try:
            try:
                verify_model_dir(target, **integrity_options(self.settings))
            except IntegrityError as exc:
                raise ModelRejected(str(exc), kind=exc.kind) from exc
            if self.settings.reload_probe:
                probe_in_child(target, self.settings, self.settings.reload_probe_timeout_s)
            # The served name is kept: clients address /v2/models/<name>, which must not move.
            s = self.settings.model_copy(update={"model_name": self.handle.name})
            try:
                eng = self.engine_factory(s, str(target), "main")
                _low_priority_call(eng.load)
            except ModelLoadError as exc:
                raise ModelRejected(str(exc), kind="load") from exc
            diff = contract_difference(old.inputs, eng.inputs)
            if diff is None and self.fallback is not None:
                fb = self.fallback
                diff = contract_difference(fb.inputs, eng.inputs, fb.outputs, eng.outputs)
                diff = diff and f"the fallback model's {diff}"
            if diff:
                with contextlib.suppress(Exception):
                    eng.unload(timeout=0)
                raise ModelRejected(f"{target}: {diff}; restart the runtime to change the model's API",
                                    kind="contract")
        except ModelRejected as exc:
            self._failed_sig = sig
            self._fail(target, exc)
        except Exception as exc:  # anything else from Paddle: keep serving, report it
            self._failed_sig = sig
            self._fail(target, ModelRejected(f"{type(exc).__name__}: {exc}", kind="load"))
        self.handle.swap_engine(eng)
        elapsed_ms = 1000 * (time.perf_counter() - t0)
        self.previous_version = old.version
        self.model_dir = target
        self._source_sig, self._failed_sig, self.failing = sig, None, False
        self._export_failing()
        self.loaded_at = _now()
        self.load_ms = round(elapsed_ms, 1)
        self.counts["success"] += 1
        metrics.RELOADS.labels(self.handle.name, "success").inc()
        metrics.set_model_info(old.name, old.version, old.device, "main", loaded=False)
        metrics.set_model_info(eng.name, eng.version, eng.device, "main")
        log.info("reloaded model %s: %s -> %s in %.0f ms", eng.name, old.version, eng.version, elapsed_ms,
                 extra=logs.event("reload", model=eng.name, from_version=old.version, to_version=eng.version,
                                  load_ms=self.load_ms, result="success", error=None, model_dir=str(target)))
        threading.Thread(target=self._retire, args=(old,), name="retire-engine", daemon=True).start()
        return {
            "result": "success",
            "version": eng.version,
            "previous_version": old.version,
            "load_ms": self.load_ms,
        }

    def _retire(self, old: Engine) -> None:
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
        metrics.RELOADS.labels(self.handle.name, "failure").inc()
        self.last_error = f"{exc.kind}: {exc.message}"
        self.last_error_at = _now()
        self.failing = True
        self._export_failing(time.time())
        # to_version stays null: a refused candidate may have no readable version at all.
        log.error(
            "reload of %s refused (%s); still serving %s %s",
            target,
            self.last_error,
            self.handle.name,
            self.handle.version,
            extra=logs.event("reload", model=self.handle.name, from_version=self.handle.version, to_version=None,
                             load_ms=None, result="failure", error=self.last_error,
                             model_dir=str(target) if target else None),
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
            "reload_failing": self.failing,
            "fetch_error": self.fetch_error,
            "reloads": dict(self.counts),
        }
