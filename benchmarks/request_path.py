"""Where a request's time goes: timestamps along the runtime's request path, and CPU per thread.

Runs the real runtime stack (``App`` + ``HttpServer`` + ``Batcher`` + ``PaddleEngine``) in this
process pinned to ``--server-cpu``, with subclasses that only record ``time.perf_counter()`` at each
hand-over (no change to the code measured), and a closed-loop client in a child process pinned to
``--client-cpu`` that records when it starts sending and when it has read the answer
(``perf_counter`` is CLOCK_MONOTONIC, shared between processes).  At concurrency 1 every request's
path is split into segments (medians); at any concurrency the CPU seconds each server thread used
per request are read from ``/proc/self/task``, which is what bounds throughput on one core.

    python benchmarks/request_path.py --model mobilenet_v3_small -c 1 -d 10
    python benchmarks/request_path.py --model ppocrv4_rec -c 32 -d 10 --profile

Prints one JSON object (and writes it to ``results/request_path-<model>-c<c>.json``).  ``--profile``
adds a py-spy sample of the event-loop thread (microseconds per request by function).

Before/after on the same machine in the same minutes (what counts on a shared box)::

    python benchmarks/request_path.py --ab 0865b0d --rounds 4 -c 1 -d 6 --profile

runs the runtime of git revision ``0865b0d`` and of this working tree alternately (``--rounds`` each,
one process per run, same client), and prints the medians of every figure side by side
(``results/request_path-ab-<model>-c<c>.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from serving import CACHE, checkout, models, oip_body, paddle_version  # noqa: E402

CLIENT = r"""
import json, socket, sys, time, threading
host, port, c, duration = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
req = open(sys.argv[5], "rb").read()
out, stop = [], time.perf_counter() + duration
def conn():
    s = socket.create_connection((host, port)); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    f = s.makefile("rb")
    while time.perf_counter() < stop:
        t0 = time.perf_counter(); s.sendall(req)
        n = 0
        while True:
            line = f.readline()
            if line.lower().startswith(b"content-length:"): n = int(line.split(b":")[1])
            if line == b"\r\n": break
        f.read(n); out.append((t0, time.perf_counter()))
ts = [threading.Thread(target=conn) for _ in range(c)]
[t.start() for t in ts]; [t.join() for t in ts]
print(json.dumps(out))
"""


def thread_cpu() -> dict[str, float]:
    """CPU seconds (user + system) per thread name of this process, and minor page faults
    (``<name> faults``): a buffer that is fresh memory costs a fault per 4 KiB page on first touch."""
    tick = os.sysconf("SC_CLK_TCK")
    names = {t.native_id: t.name for t in threading.enumerate()}
    res: dict[str, float] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            stat = Path(f"/proc/self/task/{tid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        name = names.get(int(tid), "other")
        name = "predict" if name.startswith("predict") else name
        res[name] = res.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
        res[name + " faults"] = res.get(name + " faults", 0.0) + int(fields[7]) / 1e6  # shown per request
    return res


async def main_async(a: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from paddle_runtime.app import InferenceApp
    from paddle_runtime.batcher import Batcher
    from paddle_runtime.engine import PaddleEngine
    from paddle_runtime.settings import RuntimeSettings
    from paddle_runtime.transport import HttpProtocol, HttpServer

    m = models(paddle_version())[a.model]
    settings = RuntimeSettings(model_dir=str(m["dir"]), workers=1, cpu_threads=a.cpu_threads, max_batch_size=8,
                               batch_timeout_ms=5, adaptive_batching=not a.fixed, log_level="WARNING")
    marks: list[tuple[str, float]] = []  # (event, perf_counter) in order; c=1 makes them per request
    mark = marks.append
    pc = time.perf_counter

    class TimedEngine(PaddleEngine):
        def predict(self, inputs: Any) -> Any:
            mark(("predict_start", pc()))
            try:
                if a.no_inference:  # the rest of the path alone: answers of the right shape, no Paddle run
                    rows = next(iter(inputs.values())).shape[0]
                    return {n: np.zeros((rows, *s.shape[1:]), s.dtype) for n, s in self.no_inference_outputs}
                return super().predict(inputs)
            finally:
                mark(("predict_end", pc()))

    class TimedBatcher(Batcher):
        async def infer(self, inputs: Any) -> Any:
            mark(("infer_enter", pc()))
            try:
                return await super().infer(inputs)
            finally:
                mark(("infer_exit", pc()))

    class TimedProtocol(HttpProtocol):
        _first = True

        def data_received(self, data: bytes) -> None:  # a plain Protocol (the runtime before 2026-12)
            if self._first:
                mark(("first_byte", pc()))
                self._first = False
            super().data_received(data)

        def buffer_updated(self, nbytes: int) -> None:  # a BufferedProtocol: bytes read into our buffer
            if self._first:
                mark(("first_byte", pc()))
                self._first = False
            super().buffer_updated(nbytes)  # type: ignore[misc]

        def on_message_complete(self) -> None:
            mark(("message_complete", pc()))
            self._first = True
            super().on_message_complete()

        async def _write(self, r: Any, keep_alive: bool) -> None:
            await super()._write(r, keep_alive)
            mark(("written", pc()))

    loop = asyncio.get_running_loop()
    eng = TimedEngine(settings)
    await loop.run_in_executor(None, eng.load)
    if a.no_inference:
        out = eng._run(eng._pool.queue[0], eng._example(1))  # real output shapes
        eng.no_inference_outputs = [(n, v) for n, v in out.items()]
    batcher = TimedBatcher(eng, settings)
    await batcher.start()
    app = InferenceApp(settings)
    app.attach(batcher, lambda: {"batching": batcher.batching_info()})
    server = HttpServer(app, settings.max_body_bytes)
    server._server = await loop.create_server(lambda: TimedProtocol(app, server), "127.0.0.1", 0)
    port = server._server.sockets[0].getsockname()[1]
    body, headers = oip_body(m["shape"], m["output"])
    head = [f"POST /v2/models/{m['name']}/infer HTTP/1.1", f"Host: 127.0.0.1:{port}", f"Content-Length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    reqf = CACHE / "request-path-body.bin"
    reqf.write_bytes(("\r\n".join(head) + "\r\n\r\n").encode() + body)

    async def client(duration: float) -> list[tuple[float, float]]:
        proc = await asyncio.create_subprocess_exec(
            "taskset", "-c", a.client_cpu, sys.executable, "-c", CLIENT, "127.0.0.1", str(port), str(a.concurrency),
            str(duration), str(reqf), stdout=asyncio.subprocess.PIPE)
        out, _ = await proc.communicate()
        return [tuple(x) for x in json.loads(out)]

    from prometheus_client import REGISTRY

    def batches() -> tuple[float, float]:  # (rows, batches) the batcher ran so far
        return (REGISTRY.get_sample_value("paddle_runtime_batch_size_sum", {"model": eng.name}) or 0.0,
                REGISTRY.get_sample_value("paddle_runtime_batch_size_count", {"model": eng.name}) or 0.0)

    await client(2.0)  # warm-up (and the adaptive batcher's first measurements)
    marks.clear()
    spy = None
    if a.profile:
        raw = Path(tempfile.mkstemp(suffix=".txt")[1])
        spy = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(os.getpid()), "--threads", "--gil",
            "--nonblocking", "--function", "--rate", str(a.profile_rate), "--format", "raw", "--output", str(raw),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        await asyncio.sleep(0.5)  # attached
    cpu0, t0, batches0 = thread_cpu(), time.perf_counter(), batches()
    sent = await client(a.duration)
    wall, cpu1, batches1 = time.perf_counter() - t0, thread_cpu(), batches()
    if spy is not None:
        spy.send_signal(2)  # SIGINT: py-spy writes what it sampled and exits
        await spy.wait()
    info = batcher.batching_info()
    await batcher.drain(5)
    await server.stop_accepting()
    await server.close(1)
    eng.unload()
    n = len(sent)
    res: dict[str, Any] = {
        "model": a.model, "concurrency": a.concurrency, "requests": n, "req_per_s": n / wall,
        "adaptive": not a.fixed, "cpu_threads": a.cpu_threads, "no_inference": a.no_inference,
        "loadavg": os.getloadavg()[0],
        "cpu_us_per_request": {k: round(1e6 * (cpu1.get(k, 0) - cpu0.get(k, 0)) / n, 1) for k in cpu1
                               if cpu1.get(k, 0) - cpu0.get(k, 0) > 0},
        "client_p50_ms": 1000 * statistics.median(e - s for s, e in sent), "batching": info,
        "rows_per_batch": (batches1[0] - batches0[0]) / max(1.0, batches1[1] - batches0[1]),
    }
    if a.concurrency == 1:
        res["segments_p50_us"] = segments(marks, sent)
    if spy is not None:
        res["py_spy_loop_us_per_request"] = loop_profile(raw.read_text(), wall, n, a.profile_rate)
        raw.unlink()
    return res


def loop_profile(raw: str, wall: float, n: int, rate: int, top: int = 30) -> dict[str, float]:
    """Event-loop thread samples (py-spy raw format) as microseconds per request by function.

    Inclusive: a function counts once per sample it is on the stack in.  Only samples in which the
    thread holds the GIL count (``py-spy --gil``): waiting in the poll or for the GIL (which Paddle's
    ``run()`` holds) is not work.  The loop's top frames (``run``, ``run_forever``) are left out.
    """
    per_fn: dict[str, int] = {}
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        thread = frames[0]
        if "MainThread" not in thread or any(f.startswith("main_async (") for f in frames):
            continue  # another thread, or the harness itself (starting the client process)
        seen = set()
        for f in frames[1:]:
            name = f.split(" (")[0]
            where = f.split(" (")[1].rstrip(")") if " (" in f else ""
            key = f"{name} ({where.split(':')[0]})"
            if name.rsplit(".", 1)[-1] in ("<module>", "main", "run", "run_until_complete", "run_forever",
                                           "_run_once") or key in seen:
                continue
            seen.add(key)
            per_fn[key] = per_fn.get(key, 0) + int(count)
    us = {k: round(1e6 * v / rate / n, 1) for k, v in per_fn.items()}
    return dict(sorted(us.items(), key=lambda kv: -kv[1])[:top])


ORDER = ("first_byte", "message_complete", "infer_enter", "predict_start", "predict_end", "infer_exit", "written")
NAMES = ("receive body + parse", "parse done -> Batcher.infer (task wake-up, routing, decode)",
         "Batcher.infer -> predict starts (queue, dispatcher, thread hand-off)", "engine.predict (Paddle)",
         "predict done -> infer returns (thread hand-back, futures)", "encode + write answer")


def segments(marks: list[tuple[str, float]], sent: list[tuple[float, float]]) -> dict[str, float]:
    """Per-request segment durations (medians, microseconds), pairing marks with client timestamps."""
    reqs, cur = [], {}
    for ev, t in marks:
        if ev == "first_byte":
            cur = {}
        cur.setdefault(ev, t)
        if ev == "written" and all(k in cur for k in ORDER):
            reqs.append(cur)
    seg: dict[str, list[float]] = {k: [] for k in ("client send -> first byte", *NAMES, "written -> client has read it")}
    for r in reqs:
        s, e = min(sent, key=lambda p: abs(p[0] - r["first_byte"]) if p[0] <= r["first_byte"] else 1e9)
        seg["client send -> first byte"].append(r["first_byte"] - s)
        for name, (x, y) in zip(NAMES, zip(ORDER, ORDER[1:], strict=False), strict=True):
            seg[name].append(r[y] - r[x])
        seg["written -> client has read it"].append(e - r["written"])
    return {k: round(1e6 * statistics.median(v), 1) for k, v in seg.items() if v}


def ab(a: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    """Run revision ``a.ab`` and this working tree alternately; medians of each figure per side."""
    sides = {"before": str(checkout(a.ab)), "after": str(REPO / "runtime")}
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in sides}
    child = [x for x in argv if x not in ("--ab", a.ab) and not x.startswith("--rounds") and x != str(a.rounds)]
    for rnd in range(a.rounds):
        order = list(sides) if rnd % 2 == 0 else list(reversed(sides))  # ABBA: neither side always goes first
        for side in order:
            out = Path(tempfile.mkstemp(suffix=".json")[1])
            subprocess.run([sys.executable, __file__, *child, "--src", sides[side], "--json-out", str(out)],
                           check=True, stdout=subprocess.DEVNULL)
            r = json.loads(out.read_text())
            out.unlink()
            runs[side].append(r)
            print(f"round {rnd + 1} {side:6s} {r['req_per_s']:7.1f} req/s  client p50 {r['client_p50_ms']:.2f} ms  "
                  f"rows/batch {r.get('rows_per_batch', 0):.2f}  "
                  f"load {r['loadavg']:.1f}  cpu/req {r['cpu_us_per_request']}", file=sys.stderr, flush=True)

    def med(side: str, get: Any) -> float | None:
        vals = [v for v in (get(r) for r in runs[side]) if v is not None]
        return round(statistics.median(vals), 1) if vals else None

    res: dict[str, Any] = {"model": a.model, "concurrency": a.concurrency, "rounds": a.rounds, "before": a.ab,
                           "loadavg": [r["loadavg"] for s in runs for r in runs[s]], "runs": runs, "median": {}}
    keys: list[tuple[str, Any]] = [("req_per_s", lambda r: r["req_per_s"]),
                                   ("client_p50_us", lambda r: 1000 * r["client_p50_ms"]),
                                   ("rows_per_batch", lambda r: r.get("rows_per_batch"))]
    for t in ("MainThread", "predict", "other", "MainThread faults", "predict faults"):
        keys.append((f"cpu_us_per_request.{t}", lambda r, t=t: r["cpu_us_per_request"].get(t)))
    for seg in runs["after"][0].get("segments_p50_us", {}):
        keys.append((f"segment.{seg}", lambda r, seg=seg: r.get("segments_p50_us", {}).get(seg)))
    fns = set()
    for side in runs:
        for r in runs[side]:
            fns.update(r.get("py_spy_loop_us_per_request", {}))
    for fn in sorted(fns):
        keys.append((f"py-spy.{fn}", lambda r, fn=fn: r.get("py_spy_loop_us_per_request", {}).get(fn, 0.0)))
    for k, get in keys:
        res["median"][k] = {side: med(side, get) for side in sides}
    return res


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mobilenet_v3_small", choices=["mobilenet_v3_small", "ppocrv4_rec"])
    p.add_argument("-c", "--concurrency", type=int, default=1)
    p.add_argument("-d", "--duration", type=float, default=10.0)
    p.add_argument("--cpu-threads", type=int, default=1)
    p.add_argument("--fixed", action="store_true", help="adaptive batching off")
    p.add_argument("--no-inference", action="store_true",
                   help="skip the Paddle run (zeros of the output shape): the event loop's own cost per request")
    p.add_argument("--server-cpu", default="1")
    p.add_argument("--client-cpu", default="0")
    p.add_argument("--profile", action="store_true", help="py-spy the event-loop thread during the measurement")
    p.add_argument("--profile-rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--ab", metavar="REF", help="compare git revision REF (before) with this tree (after)")
    p.add_argument("--rounds", type=int, default=4, help="runs per side with --ab")
    p.add_argument("--src", help=argparse.SUPPRESS)  # import paddle_runtime from here (--ab)
    p.add_argument("--json-out", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.ab:
        res = ab(a, sys.argv[1:])
        out = HERE / "results" / f"request_path-ab-{a.model}-c{a.concurrency}{'-noinf' if a.no_inference else ''}.json"
        out.write_text(json.dumps(res, indent=1))
        print(f"# {a.model} c={a.concurrency}: before = {a.ab}, after = this tree; medians of {a.rounds} "
              f"interleaved runs each; load average {min(res['loadavg']):.1f}-{max(res['loadavg']):.1f}")
        print("| figure | before | after |\n|---|---|---|")
        for k, v in res["median"].items():
            print(f"| {k} | {v['before']} | {v['after']} |")
        return 0
    if a.src:
        sys.path.insert(0, a.src)
    os.sched_setaffinity(0, {int(c) for c in a.server_cpu.split(",")})
    try:
        import uvloop

        res = uvloop.run(main_async(a))
    except ImportError:
        res = asyncio.run(main_async(a))
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(res))
        return 0
    out = HERE / "results" / f"request_path-{a.model}-c{a.concurrency}{'-noinf' if a.no_inference else ''}.json"
    out.write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
