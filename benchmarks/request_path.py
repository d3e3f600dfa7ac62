"""Where a request's time goes: timestamps along the runtime's request path, and CPU per thread.

Runs the real runtime stack (``App`` + ``HttpServer`` + ``Batcher`` + ``PaddleEngine``) in this
process pinned to ``--server-cpu``, with subclasses that only record ``time.perf_counter()`` at each
hand-over (no change to the code measured), and a closed-loop client in a child process pinned to
``--client-cpu`` that records when it starts sending and when it has read the answer
(``perf_counter`` is CLOCK_MONOTONIC, shared between processes).  At concurrency 1 every request's
path is split into segments (medians); at any concurrency the CPU seconds each server thread used
per request are read from ``/proc/self/task``, which is what bounds throughput on one core.

    python benchmarks/request_path.py --model mobilenet_v3_small -c 1 -d 10
    python benchmarks/request_path.py --model ppocrv4_rec -c 32 -d 10

Prints one JSON object (and writes it to ``results/request_path-<model>-c<c>.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from serving import CACHE, models, oip_body, paddle_version  # noqa: E402

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
    """CPU seconds (user + system) per thread name of this process."""
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
    return res


async def main_async(a: argparse.Namespace) -> dict[str, Any]:
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

        def data_received(self, data: bytes) -> None:
            if self._first:
                mark(("first_byte", pc()))
                self._first = False
            super().data_received(data)

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

    await client(2.0)  # warm-up (and the adaptive batcher's first measurements)
    marks.clear()
    cpu0, t0 = thread_cpu(), time.perf_counter()
    sent = await client(a.duration)
    wall, cpu1 = time.perf_counter() - t0, thread_cpu()
    info = batcher.batching_info()
    await batcher.drain(5)
    await server.stop_accepting()
    await server.close(1)
    eng.unload()
    n = len(sent)
    res: dict[str, Any] = {
        "model": a.model, "concurrency": a.concurrency, "requests": n, "req_per_s": n / wall,
        "adaptive": not a.fixed, "cpu_threads": a.cpu_threads, "loadavg": os.getloadavg()[0],
        "cpu_us_per_request": {k: round(1e6 * (cpu1.get(k, 0) - cpu0.get(k, 0)) / n, 1) for k in cpu1
                               if cpu1.get(k, 0) - cpu0.get(k, 0) > 0},
        "client_p50_ms": 1000 * statistics.median(e - s for s, e in sent), "batching": info,
    }
    if a.concurrency == 1:
        res["segments_p50_us"] = segments(marks, sent)
    return res


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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mobilenet_v3_small", choices=["mobilenet_v3_small", "ppocrv4_rec"])
    p.add_argument("-c", "--concurrency", type=int, default=1)
    p.add_argument("-d", "--duration", type=float, default=10.0)
    p.add_argument("--cpu-threads", type=int, default=1)
    p.add_argument("--fixed", action="store_true", help="adaptive batching off")
    p.add_argument("--server-cpu", default="1")
    p.add_argument("--client-cpu", default="0")
    a = p.parse_args()
    os.sched_setaffinity(0, {int(c) for c in a.server_cpu.split(",")})
    try:
        import uvloop

        res = uvloop.run(main_async(a))
    except ImportError:
        res = asyncio.run(main_async(a))
    out = HERE / "results" / f"request_path-{a.model}-c{a.concurrency}.json"
    out.write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
