"""``ElasticPool``: a thread pool whose idle threads exit, so a burst's threads do not stay resident.

``concurrent.futures.ThreadPoolExecutor`` starts threads on demand but never ends them: after one
burst of new resources the operator kept ~100 threads, and their stacks (~100 KB touched each)
were 10 MB of its steady RSS (benchmarks/README.md). Here a thread that found no work for
``idle_s`` exits, and glibc returns its stack. Threads are started on demand, as there.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any


class ElasticPool(Executor):
    """At most ``max_workers`` threads; each one exits after ``idle_s`` without work."""

    def __init__(self, max_workers: int, thread_name_prefix: str = "pool", idle_s: float = 30.0) -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self._max_workers = max_workers  # the name kopf's settings.execution.max_workers sets
        self._prefix = thread_name_prefix
        self._idle_s = idle_s
        self._cv = threading.Condition()
        self._work: deque[tuple[Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = deque()
        self._threads: set[threading.Thread] = set()
        self._waiting = 0  # threads blocked waiting for work (under _cv)
        self._started = 0
        self._shutdown = False

    @property
    def threads(self) -> int:
        """Threads alive now."""
        with self._cv:
            return len(self._threads)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Run ``fn(*args, **kwargs)`` in a pool thread."""
        future: Future[Any] = Future()
        with self._cv:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._work.append((future, fn, args, kwargs))
            # A thread for each queued item: the waiting ones first, then new ones up to the cap.
            if len(self._work) > self._waiting and len(self._threads) < self._max_workers:
                self._started += 1
                t = threading.Thread(target=self._run, name=f"{self._prefix}_{self._started}", daemon=True)
                self._threads.add(t)
                t.start()
            else:
                self._cv.notify()
        return future

    def _next(self) -> tuple[Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]] | None:
        """Under _cv: the next item, or None when this thread is to exit (idle too long, shut down)."""
        while not self._work:
            if self._shutdown:
                return None
            self._waiting += 1
            try:
                woken = self._cv.wait(timeout=self._idle_s)
            finally:
                self._waiting -= 1
            if not woken and not self._work:
                return None
        return self._work.popleft()

    def _run(self) -> None:
        me = threading.current_thread()
        while True:
            with self._cv:
                item = self._next()
                if item is None:
                    self._threads.discard(me)
                    return
            future, fn, args, kwargs = item
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args, **kwargs))
                except BaseException as e:  # noqa: BLE001 - handed to the caller, as the stdlib pool does
                    future.set_exception(e)
            del item, future, fn, args, kwargs  # nothing of the work stays referenced while idle

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop the threads once the queued work is done (``cancel_futures``: cancel it instead)."""
        with self._cv:
            self._shutdown = True
            if cancel_futures:
                while self._work:
                    self._work.popleft()[0].cancel()
            threads = list(self._threads)
            self._cv.notify_all()
        if wait:
            for t in threads:
                t.join()
