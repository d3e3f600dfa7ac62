"""ElasticPool: the operator's thread pools start threads on demand and let idle ones exit."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from paddle_operator.pool import ElasticPool


def wait_for(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def test_results_and_exceptions_reach_the_caller():
    pool = ElasticPool(4, idle_s=5)
    assert pool.submit(lambda a, b=0: a + b, 2, b=3).result(timeout=5) == 5
    with pytest.raises(ZeroDivisionError):
        pool.submit(lambda: 1 / 0).result(timeout=5)
    assert list(pool.map(lambda x: x * x, range(10))) == [x * x for x in range(10)]
    pool.shutdown()


def test_threads_start_on_demand_up_to_the_cap_and_idle_ones_exit():
    pool = ElasticPool(3, thread_name_prefix="t", idle_s=0.3)
    assert pool.threads == 0
    gate = threading.Event()
    running = []
    futures = [pool.submit(lambda i=i: (running.append(i), gate.wait(5))) for i in range(6)]
    assert wait_for(lambda: len(running) == 3)
    assert pool.threads == 3  # the cap: the other three wait in the queue
    gate.set()
    assert all(f.result(timeout=5)[1] for f in futures)
    assert sorted(running) == list(range(6))
    assert wait_for(lambda: pool.threads == 0, timeout=5)  # every idle thread exited
    assert not [t for t in threading.enumerate() if t.name.startswith("t_")]
    # Work after that starts a thread again.
    assert pool.submit(lambda: "again").result(timeout=5) == "again"
    assert pool.threads == 1
    pool.shutdown()
    assert pool.threads == 0


def test_an_idle_thread_takes_new_work_instead_of_a_new_thread():
    pool = ElasticPool(8, idle_s=5)
    for _ in range(50):
        pool.submit(time.sleep, 0).result(timeout=5)
    assert pool.threads == 1
    pool.shutdown()


def test_no_work_is_lost_when_submits_race_with_threads_exiting():
    """Many submitters while threads time out all the time (idle_s shorter than the gaps)."""
    pool = ElasticPool(4, idle_s=0.001)
    done = []
    lock = threading.Lock()

    def job(i):
        with lock:
            done.append(i)
        return i

    def submitter(base):
        fs = []
        for i in range(500):
            fs.append(pool.submit(job, base + i))
            if i % 50 == 0:
                time.sleep(0.005)  # let the threads go idle and exit
        return [f.result(timeout=10) for f in fs]

    threads = [threading.Thread(target=submitter, args=(k * 1000,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(done) == sorted(k * 1000 + i for k in range(4) for i in range(500))
    assert pool.threads <= 4
    pool.shutdown()


def test_shutdown_finishes_queued_work_or_cancels_it():
    pool = ElasticPool(1, idle_s=5)
    gate = threading.Event()
    first = pool.submit(gate.wait, 5)
    queued = pool.submit(lambda: "queued")
    gate.set()
    pool.shutdown(wait=True)
    assert first.result() is True and queued.result() == "queued"
    with pytest.raises(RuntimeError):
        pool.submit(lambda: None)

    pool = ElasticPool(1, idle_s=5)
    gate = threading.Event()
    first = pool.submit(gate.wait, 5)
    assert wait_for(first.running)
    queued = pool.submit(lambda: "queued")
    pool.shutdown(wait=False, cancel_futures=True)
    gate.set()
    assert first.result(timeout=5) is True
    assert queued.cancelled()


def test_asyncio_runs_in_it():
    pool = ElasticPool(2, idle_s=5)

    async def main():
        loop = asyncio.get_running_loop()
        return await asyncio.gather(*(loop.run_in_executor(pool, pow, 2, i) for i in range(8)))

    assert asyncio.run(main()) == [2**i for i in range(8)]
    pool.shutdown()
