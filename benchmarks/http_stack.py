"""Which HTTP stack for the runtime: httptools+uvloop (ours) vs aiohttp, same trivial handler.

The handler reads a binary OIP-style body (a 224x224x3 float32 image, 602 KB), wraps it as a
numpy view and answers a small JSON document, i.e. everything the runtime does per request except
inference.  Server pinned to one core, load generator to the other:

    python benchmarks/http_stack.py [--duration 5]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BODY = 224 * 224 * 3 * 4

SERVERS = {
    "httptools+uvloop (paddle_runtime.server)": r'''
import asyncio, sys, numpy as np, uvloop
from paddle_runtime.app import App
from paddle_runtime.transport import HttpServer, json_response
from paddle_runtime.settings import RuntimeSettings
app = App()
async def echo(req):
    a = np.frombuffer(req.body, np.float32)
    return json_response({"n": int(a.size)})
app.add_route("POST", "/echo", echo)
async def main():
    s = HttpServer(app, 1 << 26); await s.start("127.0.0.1", int(sys.argv[1])); await asyncio.Event().wait()
uvloop.run(main())
''',
    "aiohttp+uvloop": r'''
import sys, numpy as np, uvloop, orjson
from aiohttp import web
async def echo(req):
    a = np.frombuffer(await req.read(), np.float32)
    return web.Response(body=orjson.dumps({"n": int(a.size)}), content_type="application/json")
app = web.Application(client_max_size=1 << 26); app.router.add_post("/echo", echo)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, loop=uvloop.new_event_loop())
''',
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(port)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--duration", type=float, default=5)
    p.add_argument("--server-cpu", default="1")
    p.add_argument("--client-cpu", default="0")
    a = p.parse_args()
    with tempfile.NamedTemporaryFile(suffix=".bin", delete=False) as f:
        f.write(os.urandom(BODY))
    results = {}
    for name, code in SERVERS.items():
        port = free_port()
        srv = subprocess.Popen(["taskset", "-c", a.server_cpu, sys.executable, "-c", code, str(port)])
        try:
            wait_port(port)
            for c in (1, 8, 32):
                out = subprocess.run(["taskset", "-c", a.client_cpu, sys.executable, str(HERE / "loadgen.py"),
                                      "--url", f"http://127.0.0.1:{port}/echo", "--body-file", f.name,
                                      "-c", str(c), "-d", str(a.duration)], capture_output=True, text=True, check=True)
                r = json.loads(out.stdout)
                results.setdefault(name, {})[c] = r
                print(f"{name:45s} c={c:<3d} {r['qps']:8.0f} req/s  p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms",
                      flush=True)
        finally:
            srv.terminate()
            srv.wait(10)
    os.unlink(f.name)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "http_stack.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
