"""The one config watcher: re-reads the mounted config file and hands live changes to their owners.

The operator mounts the runtime ConfigMap as a volume and starts ``serve --config <file>``; kubelet
swaps the file's ``..data`` symlink when the ConfigMap changes (within about a minute).  The watcher
polls the file's *content* (not its mtime: the swap keeps the old file's mtime), validates the whole
document with :class:`~.settings.RuntimeSettings`, and calls each subscriber with the changed keys it
asked for.  The wiring subscribes the batchers (``max_batch_size``, ``batch_timeout_ms`` through
``Batcher.set_limits``) and the fallback router (the ``fallback_*`` thresholds).

Precedence stays as at start-up: a key set by a CLI flag or an env var (``pinned``) is never taken
from the file.  A file that does not validate is logged and ignored (the running values stay).  A
changed key nobody subscribed to (device, workers, ...) needs a restart; the watcher logs that.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

from .settings import ENV_PREFIX, RuntimeSettings

log = logging.getLogger("paddle_runtime.config")

Apply = Callable[[dict[str, Any]], None]


class ConfigWatcher:
    """Polls ``settings.config_file`` every ``interval_s`` seconds in a daemon thread."""

    def __init__(self, settings: RuntimeSettings, pinned: Iterable[str] = (), interval_s: float = 1.0) -> None:
        self.path = Path(settings.config_file) if settings.config_file else None
        self.interval_s = interval_s
        self._current = settings
        self._pinned = frozenset(pinned)
        self._subscribers: list[tuple[frozenset[str], Apply]] = []
        # None, not the file now: the file may have changed while the model loaded, after the
        # settings were read; the first check compares values, so an unchanged file applies nothing.
        self._last: bytes | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def current(self) -> RuntimeSettings:
        """The settings in effect now (start-up values plus every change applied since)."""
        return self._current

    def subscribe(self, keys: Iterable[str], apply: Apply) -> None:
        """Call ``apply(changes)`` with the changed values among ``keys`` whenever the file changes them."""
        self._subscribers.append((frozenset(keys), apply))

    def start(self) -> None:
        """Start polling (nothing to do without a config file)."""
        if self.path is None:
            return
        self._thread = threading.Thread(target=self._loop, name="config-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop polling."""
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
            except Exception:  # the watcher must survive anything, or live config silently stops
                log.exception("config watcher error")

    def _read(self) -> bytes | None:
        if self.path is None:
            return None
        try:
            return self.path.read_bytes()
        except OSError:
            return None

    def check(self) -> dict[str, Any]:
        """Read the file once; apply and return what changed (empty when nothing did)."""
        with self._lock:
            raw = self._read()
            if raw is None or raw == self._last:
                return {}
            self._last = raw
            try:
                doc = yaml.safe_load(raw) or {}
                if not isinstance(doc, dict):
                    raise ValueError("the file must hold a mapping of setting names to values")
                unknown = set(doc) - set(RuntimeSettings.model_fields)
                if unknown:
                    raise ValueError(f"unknown settings: {sorted(unknown)}")
                wanted = {k: v for k, v in doc.items() if not self._is_pinned(k)}
                checked = RuntimeSettings.model_validate({**self._current.model_dump(), **wanted})
            except Exception as exc:
                log.error("ignoring the new %s: %s", self.path, exc)
                return {}
            old = self._current.model_dump()
            new = checked.model_dump()
            changed = {k: new[k] for k in wanted if new[k] != old[k]}
            if not changed:
                return {}
            self._current = checked
        live = set().union(*(keys for keys, _ in self._subscribers)) if self._subscribers else set()
        restart = sorted(set(changed) - live)
        if restart:
            log.warning("%s changed %s; these take effect only after a restart", self.path, restart)
        for keys, apply in self._subscribers:
            mine = {k: v for k, v in changed.items() if k in keys}
            if mine:
                try:
                    apply(mine)
                except Exception:
                    log.exception("applying %s from %s failed", sorted(mine), self.path)
        log.info("config %s applied: %s", self.path, {k: v for k, v in changed.items() if k in live})
        return changed

    def _is_pinned(self, key: str) -> bool:
        # CLI flags and env vars beat the config file (settings.py), at start and at run time.
        return key in self._pinned or f"{ENV_PREFIX}{key.upper()}" in os.environ
