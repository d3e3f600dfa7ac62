"""Adaptive batch size: learn, per model and input shape, the batch size with the best throughput.

Batching pays on some models and hurts on others on the same CPU (measured on one pinned core:
MobileNetV3-small 253 img/s at batch 1, 458 at batch 8; PP-OCRv4 rec 48 img/s at batch 1, 44 at
batch 8), so a fixed ``max_batch_size`` is right for one and wrong for the other.  Following
Clipper's adaptive batching, but maximising measured throughput rather than growing to the SLO:

* Candidate sizes are a ladder 1, 2, 4, ... and the cap (``max_batch_size``, which stays a cap).
* Every executed batch reports ``(rows, seconds)``; it is filed under the largest rung <= rows.
  A rung's cost is the lower quartile of seconds-per-row over its last ``window`` samples; samples older than
  ``max_age_s`` are dropped, so the estimates follow a machine whose load changes.
* ``size(available)`` is how many rows to take when ``available`` rows are queued for this shape:
  first every reachable rung gets ``min_samples`` samples (cheapest first); then the chosen rung,
  except that every ``explore_every``-th decision tries a neighbour rung (alternately above and
  below) to keep its estimate fresh.  It never asks for more rows than are queued: the batcher
  never waits for a batch to fill because of this controller.
* The chosen rung is the one with the lowest cost per row whose batch run time stays within the
  latency budget (when one is given: half of it, since a request can wait for one batch and then
  run in the next); another rung must beat the current one by ``margin`` to replace it.

Pure: no asyncio, no engine; the batcher calls it from the event loop only.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any


def ladder(cap: int) -> tuple[int, ...]:
    """Candidate batch sizes up to ``cap``: powers of two and the cap itself."""
    cap = max(1, cap)
    rungs, r = [], 1
    while r < cap:
        rungs.append(r)
        r *= 2
    rungs.append(cap)
    return tuple(rungs)


class BatchSizeController:
    """Learns the batch size with the lowest measured cost per row for one batch key."""

    def __init__(self, cap: int, budget_s: float | None = None, *, window: int = 64, min_samples: int = 3,
                 explore_every: int = 8, margin: float = 0.05, max_age_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.budget_s = budget_s if budget_s and budget_s > 0 else None
        self.window = window
        self.min_samples = min_samples
        self.explore_every = explore_every
        self.margin = margin
        self.max_age_s = max_age_s
        self._clock = clock
        self._samples: dict[int, deque[tuple[float, float, float]]] = {}  # rung -> (t, s/row, s/batch)
        # rung -> (cost per row, median batch seconds) of its fresh samples; dropped when they change.
        # Recomputing every rung's quantiles on every batch cost ~20 us of event-loop time per request.
        self._stats: dict[int, tuple[float, float]] = {}
        self._decisions = 0
        self._asked: dict[int, int] = {}  # rung -> times asked for since its last sample
        self._explore_up = True
        self.rungs: tuple[int, ...] = ()
        self.chosen = 1
        self.set_cap(cap)

    def set_cap(self, cap: int) -> None:
        """Change the cap (``max_batch_size``); estimates for rungs that remain are kept."""
        self.rungs = ladder(cap)
        self._samples = {r: self._samples.get(r, deque(maxlen=self.window)) for r in self.rungs}
        self._stats = {r: v for r, v in self._stats.items() if r in self._samples}
        if self.chosen not in self.rungs:
            self.chosen = max(r for r in self.rungs if r <= self.chosen) if self.chosen > 1 else 1
        self._choose()

    @property
    def cap(self) -> int:
        """The largest rung (``max_batch_size``)."""
        return self.rungs[-1]

    def _rung(self, rows: int) -> int:
        return max(r for r in self.rungs if r <= max(1, rows))

    def _fresh(self, rung: int) -> deque[tuple[float, float, float]]:
        q = self._samples[rung]
        horizon = self._clock() - self.max_age_s
        if q and q[0][0] < horizon:
            while q and q[0][0] < horizon:
                q.popleft()
            self._stats.pop(rung, None)
        return q

    def _stat(self, rung: int) -> tuple[float, float] | None:
        q = self._fresh(rung)
        if not q:
            return None
        st = self._stats.get(rung)
        if st is None:
            n = len(q)
            per_row = sorted(s[1] for s in q)
            batch = sorted(s[2] for s in q)
            median = batch[n // 2] if n % 2 else (batch[n // 2 - 1] + batch[n // 2]) / 2
            st = self._stats[rung] = (per_row[(n - 1) // 4], median)
        return st

    def cost(self, rung: int) -> float | None:
        """Seconds per row at ``rung``: the lower quartile of fresh samples (None when unmeasured).

        On a shared machine noise only ever slows a run down (preemption, cache thrash), so a low
        quantile estimates the model's own cost better than the mean or median do.
        """
        st = self._stat(rung)
        return st[0] if st else None

    def batch_seconds(self, rung: int) -> float | None:
        """Median run time of a whole batch at ``rung`` over fresh samples (None when unmeasured)."""
        st = self._stat(rung)
        return st[1] if st else None

    def size(self, available: int) -> int:
        """Rows to take for the next batch when ``available`` rows of this shape are queued."""
        reach = min(available, self.cap)
        if reach <= 1:
            return 1  # nothing to decide: a lone request runs at once
        self._decisions += 1
        reachable = [r for r in self.rungs if r <= reach]
        # A rung that requests' row counts never fill exactly (3-row requests, rung 4) stops being
        # asked for after a while, so the sweep cannot go on forever.
        unmeasured = [r for r in reachable if len(self._fresh(r)) < self.min_samples
                      and self._asked.get(r, 0) < 4 * self.min_samples]
        if unmeasured:
            self._asked[unmeasured[0]] = self._asked.get(unmeasured[0], 0) + 1
            return unmeasured[0]
        if self._decisions % self.explore_every == 0:
            i = self.rungs.index(self.chosen)
            self._explore_up = not self._explore_up
            j = i + 1 if self._explore_up else i - 1
            if not 0 <= j < len(self.rungs):
                j = i - 1 if self._explore_up else i + 1
            if 0 <= j < len(self.rungs) and self.rungs[j] <= reach:
                return self.rungs[j]
        return min(self.chosen, reach)

    def observe(self, rows: int, seconds: float) -> None:
        """Record one executed batch of ``rows`` rows that took ``seconds``."""
        if rows <= 0 or seconds <= 0:
            return
        rung = self._rung(rows)
        self._samples[rung].append((self._clock(), seconds / rows, seconds))
        self._stats.pop(rung, None)
        self._asked[rung] = 0
        self._choose()

    def _choose(self) -> None:
        costs = {}
        for r in self.rungs:
            st = self._stat(r)
            if st is None or len(self._samples[r]) < min(self.min_samples, self.window):
                continue
            if r > 1 and self.budget_s is not None and st[1] > self.budget_s / 2:
                continue  # a batch this big would eat the latency budget
            costs[r] = st[0]
        if not costs:
            return
        best = min(costs, key=lambda r: costs[r])
        current = costs.get(self.chosen)
        if current is None or costs[best] < current * (1 - self.margin):
            self.chosen = best

    def info(self) -> dict[str, Any]:
        """The chosen size and the measured cost per rung (for ``/version``)."""
        per_row = {}
        for r in self.rungs:
            c = self.cost(r)
            if c is not None:
                per_row[str(r)] = round(c * 1000, 3)
        return {"batch_size": self.chosen, "cap": self.cap, "per_row_ms": per_row}
