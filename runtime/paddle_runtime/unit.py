"""One served model with its resilience parts, built the same way for a single model and for each
stage of a pipeline (an OCR stage is a model like any other)::

    engine (the wiring's factory: Paddle, or the test-only fault injector around it)
      -> Batcher                                              contracts.ModelHandle
      -> FallbackRouter over main + fallback batcher          (when fallback_model_dir is set)
      -> ReloadManager swapping the main batcher's engine     (poll, SIGHUP, admin)

Every engine passes the integrity checks first (:func:`~.loading.load_verified`), like a hot-reload
candidate does, so a model refused in one place is refused everywhere.  ``serve.py`` builds the
units and connects them to the config watcher, the signals and the admin port.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import metrics
from .batcher import Batcher
from .contracts import Engine, ModelHandle, validate_inputs
from .errors import ModelRejected
from .fallback import FALLBACK, TUNABLE, FallbackRouter
from .loading import EngineFactory, check_same_contract, load_verified
from .model_dir import warmup_examples
from .reload import ReloadManager
from .settings import RuntimeSettings

log = logging.getLogger("paddle_runtime.unit")

BATCHING_KEYS = ("max_batch_size", "batch_timeout_ms")
"""Settings the batchers take at run time (``Batcher.set_limits``)."""
LIVE_KEYS = (*BATCHING_KEYS, *TUNABLE)
"""What :meth:`ModelUnit.retune` applies to a running model."""
RESTART_KEYS = ("model_dir", "fallback_model_dir", "hmac_key_file", "public_key_file", "require_signed")
"""Settings of a model that only a restart applies (a new fallback model, other keys)."""


@dataclass
class ModelUnit:
    """A loaded model: its batcher, optional fallback (batcher + router) and its reload manager."""

    settings: RuntimeSettings
    main: Batcher
    reload: ReloadManager
    integrity_checks: tuple[str, ...] = ()
    fallback: Batcher | None = None
    router: FallbackRouter | None = None

    @property
    def handle(self) -> ModelHandle:
        """What serves this model's requests: the fallback router when there is one, else the batcher."""
        return self.router if self.router is not None else self.main

    @property
    def batchers(self) -> list[Batcher]:
        """Main batcher first, then the fallback's."""
        return [self.main] if self.fallback is None else [self.main, self.fallback]

    def retune(self, new: RuntimeSettings) -> dict[str, Any]:
        """Apply the live settings (batching limits, fallback thresholds) that differ from the running ones.

        Returns what changed; a changed setting that needs a restart (a model directory, keys) is logged.
        """
        old = self.settings.model_dump()
        now = new.model_dump()
        changed = {k: now[k] for k in now if now[k] != old[k]}
        if not changed:
            return {}
        self.settings = new
        if any(k in changed for k in BATCHING_KEYS):
            for b in self.batchers:
                b.set_limits(new.max_batch_size, new.batch_timeout_ms)
        if self.router is not None:
            self.router.apply_params({k: v for k, v in changed.items() if k in TUNABLE})
        restart = sorted(k for k in changed if k in RESTART_KEYS)
        if restart:
            log.warning("model %s: %s changed; these take effect only after a restart", self.main.name, restart)
        return changed

    def version_info(self) -> dict[str, Any]:
        """This model's part of ``/version``: reload state, integrity checks, fallback, batching."""
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
        """Stop the reload watcher; unload every engine (after the handle drained)."""
        loop = asyncio.get_running_loop()
        self.reload.stop()
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
            await batcher.infer(validate_inputs(eng.inputs, x, eng.max_rows), warmup=True)
    except Exception as e:  # noqa: BLE001 - see above
        log.warning("warm-up through the batcher failed for model %s (%s); serving anyway", eng.name, e)


async def assemble_unit(settings: RuntimeSettings, factory: EngineFactory) -> ModelUnit:
    """Load ``settings.model_dir`` (and ``fallback_model_dir``) in threads and start every part.

    Raises :class:`~.errors.ModelLoadError` when a model is refused or does not load.
    """
    loop = asyncio.get_running_loop()
    engine, checks = await loop.run_in_executor(None, load_verified, settings, settings.model_dir, "main", factory)
    metrics.set_model_info(engine.name, engine.version, engine.device, engine.role)
    main = Batcher(engine, settings)
    await main.start()
    await warm_through(main)
    fb: Batcher | None = None
    router: FallbackRouter | None = None
    if settings.fallback_model_dir:
        fb_engine = await loop.run_in_executor(None, _load_fallback, settings, engine, factory)
        metrics.set_model_info(fb_engine.name, fb_engine.version, fb_engine.device, FALLBACK)
        fb = Batcher(fb_engine, settings)
        await fb.start()
        await warm_through(fb)
        router = FallbackRouter(main, fb, settings)
        await router.start()
    manager = ReloadManager(main, settings, factory, fallback=fb)
    manager.start()
    return ModelUnit(settings, main, manager, checks, fb, router)


@dataclass
class Served:
    """What the inference app serves: a handle over one model unit, or over the stage units of a pipeline."""

    handle: ModelHandle
    units: dict[str, ModelUnit]
    """By stage (``det``, ``cls``, ``rec``); one unit under ``""`` for a single model."""
    derive: Callable[[RuntimeSettings], dict[str, RuntimeSettings]]
    """Each unit's settings from the runtime's (the config watcher's current ones)."""
    describe: Callable[[], dict[str, Any]]
    """The served part of ``/version``."""

    @classmethod
    def single(cls, unit: ModelUnit) -> Served:
        """One model: its settings are the runtime's, its state the top level of ``/version``."""
        return cls(unit.handle, {"": unit}, lambda s: {"": s}, unit.version_info)

    def retune(self, settings: RuntimeSettings) -> None:
        """Hand the live settings now in force to every unit."""
        for key, s in self.derive(settings).items():
            self.units[key].retune(s)

    def trigger_reload(self) -> None:
        """Ask every unit's reload manager to look now (SIGHUP: safe in a signal handler)."""
        for u in self.units.values():
            u.reload.trigger()

    def reload(self) -> dict[str, Any]:
        """Forced reload of every unit (admin); raises :class:`ModelRejected` naming each refused stage."""
        if set(self.units) == {""}:
            return self.units[""].reload.reload(force=True)
        results: dict[str, Any] = {}
        refused: list[tuple[str, ModelRejected]] = []
        for key, u in self.units.items():
            try:
                results[key] = u.reload.reload(force=True)
            except ModelRejected as exc:
                refused.append((key, exc))
        if refused:
            raise ModelRejected("; ".join(f"stage {k}: {e.message}" for k, e in refused), kind=refused[0][1].kind)
        return {"result": "success", "stages": results}

    async def close(self) -> None:
        """Close every unit (after the handle drained)."""
        for u in self.units.values():
            await u.close()
