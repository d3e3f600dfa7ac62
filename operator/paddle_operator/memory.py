"""What this process last decided for each resource's rollout: its shape and state.

Newer than the watch-fed ``status`` (our own write may not have come back yet), so the reconcile's
plan prefers it; after a restart it is rebuilt from ``status`` (:func:`plan.shape_from_status`).
Keyed by (namespace, name, uid). No I/O.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

from . import rollout as ro
from .plan import Shape, shape_from_status
from .spec import PaddleModelService

Key = tuple[str, str, str]


@dataclass
class Memory:
    """One resource's latest rollout decision, the shape last applied, and when its SLA was read."""

    shape: Shape
    state: ro.RolloutState
    applied: Shape | None = None
    last_sla: float = 0.0
    events_sent: set[str] = field(default_factory=set)
    # A canary that lost its traffic keeps its pods until then (canary.py, route drain); 0 = none.
    drain_until: float = 0.0
    drain_from: Shape | None = None
    # After a promotion the stable HPA keeps the canary's size as its floor until then (canary.py,
    # promotion hold); 0 = none.
    hold_until: float = 0.0
    hold_min: int = 0


_memory: dict[Key, Memory] = {}
_lock = threading.Lock()


def key(svc: PaddleModelService) -> Key:
    """The memory key of a resource."""
    return (svc.namespace, svc.name, svc.uid)


def get(k: Key) -> Memory | None:
    """The memory of one resource, if this process has any."""
    with _lock:
        return _memory.get(k)


def put(k: Key, mem: Memory) -> None:
    """Record (or replace) the memory of one resource."""
    with _lock:
        _memory[k] = mem


def setdefault(k: Key, mem: Memory) -> Memory:
    """The memory of one resource, recording ``mem`` when there is none."""
    with _lock:
        return _memory.setdefault(k, mem)


def current(svc: PaddleModelService) -> tuple[Shape, ro.RolloutState]:
    """The rollout shape and state to build children for: memory first, else ``status``."""
    mem = get(key(svc))
    if mem is not None:
        return mem.shape, mem.state
    return shape_from_status(svc)


def settled(namespace: str, name: str, uid: str) -> bool:
    """This process has looked at the resource and its rollout is not in progress (nothing to time)."""
    mem = get((namespace, name, uid))
    return (
        mem is not None
        and mem.state.phase not in ro.ACTIVE_PHASES
        and mem.drain_until == 0.0
        and mem.hold_until == 0.0
    )


# What a status writer (by field manager) last applied to each resource, as compact JSON. The
# watch-fed body lags our own writes while kopf is busy with the resource (a burst), so a writer that
# compared with the body alone applied the same fields again every period.
_written: dict[tuple[str, Key], str] = {}


def fingerprint(fields: dict[str, Any]) -> str:
    """The compact, order-independent JSON of a status patch (what :func:`written` compares)."""
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)


def written(manager: str, k: Key) -> str | None:
    """The fingerprint of what ``manager`` last applied to the resource in this process, if anything."""
    return _written.get((manager, k))


def record_written(manager: str, k: Key, fields: dict[str, Any] | None) -> None:
    """Record what ``manager`` applied (None: forget it, e.g. after the writer released its fields)."""
    with _lock:
        if fields is None:
            _written.pop((manager, k), None)
        else:
            _written[(manager, k)] = fingerprint(fields)


def forget(namespace: str, name: str, uid: str) -> None:
    """Drop the memory of a deleted resource."""
    with _lock:
        _memory.pop((namespace, name, uid), None)
        for w in [w for w in _written if w[1] == (namespace, name, uid)]:
            del _written[w]


def clear() -> None:
    """Forget everything (tests)."""
    with _lock:
        _memory.clear()
        _written.clear()


def compact_json(value: Any) -> str:
    """``value`` as JSON without spaces (what :class:`Compact` and the index keep)."""
    return json.dumps(value, separators=(",", ":"), default=str)


class Compact:
    """Per-resource status dicts kept as compact JSON strings, decoded on each read.

    At 1000 resources the last written statuses, kept as dicts, were megabytes of small objects made
    during a burst; each such object pins the pymalloc arena it sits in (benchmarks/README.md). One
    string per resource is a fraction of the size and, above pymalloc's 512-byte classes, lives in
    glibc's heap, which the operator trims. Every read returns a fresh dict, so no caller can alter
    what is kept.
    """

    def __init__(self) -> None:
        self._docs: dict[Any, str] = {}

    def get(self, k: Any) -> dict[str, Any] | None:
        """The dict kept for ``k`` (a new copy), or None."""
        doc = self._docs.get(k)
        return None if doc is None else json.loads(doc)

    def put(self, k: Any, value: dict[str, Any]) -> None:
        """Keep ``value`` (as it is now) for ``k``."""
        self._docs[k] = compact_json(value)

    def pop(self, k: Any) -> None:
        """Forget ``k``."""
        self._docs.pop(k, None)
