"""``ElasticPool``: a thread pool whose idle threads exit, so a burst's threads do not stay resident.

``concurrent.futures.ThreadPoolExecutor`` starts threads on demand but never ends them: after one
burst of new resources the operator kept ~100 threads, and their stacks (~100 KB touched each)
were 10 MB of its steady RSS (benchmarks/README.md). Here a thread that found no work for
``idle_s`` exits, and glibc returns its stack. Threads are started on demand, as there.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

Item = tuple["Future[Any]", Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class _Worker:
    """One pool thread's hand-off: the item it is given while idle, and the lock that wakes it."""

    __slots__ = ("item", "wake")

    def __init__(self) -> None:
        self.item: Item | None = None
        self.wake = threading.Lock()
        self.wake.acquire()  # held: released once per item handed over


class ElasticPool(Executor):
    """At most ``max_workers`` threads; each one exits after ``idle_s`` without work.

    A submit hands its item straight to the most recently idle thread and wakes that one alone (its
    own lock, as the stdlib pool's queue does): the event loop that submits wakes one thread and
    contends for nothing else. Idle threads are reused last-in first-out, so the others stay idle and
    exit. With every thread busy, items wait in a backlog that finishing threads take from.
    """

    def __init__(self, max_workers: int, thread_name_prefix: str = "pool", idle_s: float = 30.0) -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self._max_workers = max_workers  # the name kopf's settings.execution.max_workers sets
        self._prefix = thread_name_prefix
        self._idle_s = idle_s
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []  # a stack: the last one to go idle is woken first
        self._backlog: deque[Item] = deque()
        self._threads = 0
        self._started = 0
        self._shutdown = False

    @property
    def threads(self) -> int:
        """Threads alive now."""
        with self._lock:
            return self._threads

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Run ``fn(*args, **kwargs)`` in a pool thread."""
        future: Future[Any] = Future()
        item: Item = (future, fn, args, kwargs)
        worker: _Worker | None = None
        thread: threading.Thread | None = None
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if self._idle:
                worker = self._idle.pop()
                worker.item = item
            elif self._threads < self._max_workers:
                self._threads += 1
                self._started += 1
                thread = threading.Thread(
                    target=self._run, args=(item,), name=f"{self._prefix}_{self._started}", daemon=True
                )
            else:
                self._backlog.append(item)
        if worker is not None:
            worker.wake.release()
        elif thread is not None:
            thread.start()
        return future

    def _next(self, me: _Worker) -> Item | None:
        """The next item for this thread: the backlog's, else one handed over while idle; None to exit."""
        with self._lock:
            if self._backlog:
                return self._backlog.popleft()
            if self._shutdown:
                self._threads -= 1
                return None
            self._idle.append(me)
        if not me.wake.acquire(timeout=self._idle_s):
            with self._lock:
                if me in self._idle:  # nobody handed anything over: leave
                    self._idle.remove(me)
                    self._threads -= 1
                    return None
            me.wake.acquire()  # a submit took this thread just as it timed out: its item is coming
        item, me.item = me.item, None
        if item is None:  # woken by shutdown
            with self._lock:
                self._threads -= 1
        return item

    def _run(self, item: Item | None) -> None:
        me = _Worker()
        while item is not None:
            future, fn, args, kwargs = item
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args, **kwargs))
                except BaseException as e:  # noqa: BLE001 - handed to the caller, as the stdlib pool does
                    future.set_exception(e)
            del future, fn, args, kwargs  # nothing of the work stays referenced while idle
            item = self._next(me)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop the threads once the backlog is done (``cancel_futures``: cancel it instead)."""
        with self._lock:
            self._shutdown = True
            if cancel_futures:
                while self._backlog:
                    self._backlog.popleft()[0].cancel()
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.wake.release()  # with no item: the thread exits
        if wait:
            while self.threads:
                time.sleep(0.01)
