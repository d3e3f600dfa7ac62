"""Resilience benchmark: latency during hot reloads, and how fast the fallback takes over.

    python benchmarks/resilience.py [--quick] [--concurrency 4] [--reloads 3]

Part 1, reload under load: one ``paddle-runtime serve`` (MobileNetV3-small, CPU) under closed-loop
load for the whole run. Before each reload a *steady* window is recorded; then a new signed version
is published (``fetch``: verify + atomic ``current`` switch) and SIGHUP triggers the reload; the
*reload* window runs from the trigger until one second after ``/version`` shows the new version
(the old engine is retired in that second). Same server, same load, same run: p50/p99 side by side.
Run twice: with the child-process check of the candidate (the default) and without it.

Part 2, fallback switch: main + fallback model, the TEST-ONLY fault injector makes the main model
fail (then, separately, slow). Reported: client-visible errors, requests answered after the fault
before the first fallback answer, and the time to the first fallback answer.

The server is pinned to CPU 0 and the load generator to CPU 1 when the machine has two or more.
Writes ``benchmarks/results/resilience.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("PADDLE_SLA_CACHE", Path.home() / ".cache" / "paddle-sla"))
MODEL = "mobilenet-v3-small"


def exported(seed: int) -> Path:
    """MobileNetV3-small with random weights from ``seed`` (same cache as the tests)."""
    import paddle

    dest = CACHE / "models" / paddle.__version__ / f"mobilenet_v3_small-seed{seed}-vv{seed}"
    if not (dest / "inference.json").is_file():
        code = (
            "import sys; from paddle_runtime.export import export_model; "
            "export_model('mobilenet_v3_small', sys.argv[1], seed=int(sys.argv[2]), version=sys.argv[3])"
        )
        subprocess.run(
            [sys.executable, "-c", code, str(dest), str(seed), f"v{seed}"], check=True, timeout=600
        )
    return dest


def publish(src: Path, dest: Path, version: str, key: bytes) -> None:
    from paddle_runtime.fetch import FetchOptions, fetch
    from paddle_runtime.integrity import sign_model_dir

    staging = dest.parent / f"stage-{version}"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(src, staging)
    meta = yaml.safe_load((staging / "model.yaml").read_text())
    meta["version"] = version
    (staging / "model.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    sign_model_dir(staging, hmac_key=key, version=version)
    fetch(str(staging), dest, FetchOptions(hmac_key=key, keep_versions=3))
    shutil.rmtree(staging)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: list[str], env: dict[str, str], log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "paddle_runtime.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *args,
    ]
    if (os.cpu_count() or 1) >= 2 and shutil.which("taskset"):
        cmd = ["taskset", "-c", "0", *cmd]
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **env})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if urllib.request.urlopen(url + "/v2/health/ready", timeout=2).status == 200:
                return proc, url
        except OSError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server not ready in 120 s")


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def request_bytes(port: int) -> bytes:
    x = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": [1, 3, 224, 224],
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ]
        }
    ).encode()
    body = head + x.tobytes()
    lines = [
        f"POST /v2/models/{MODEL}/infer HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        f"Content-Length: {len(body)}",
        f"Inference-Header-Content-Length: {len(head)}",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Load:
    """Closed-loop keep-alive connections recording (start, end, status, role) per request."""

    def __init__(self, port: int, concurrency: int) -> None:
        self.port, self.concurrency = port, concurrency
        self.req = request_bytes(port)
        self.records: list[tuple[float, float, int, str]] = []
        self.stop = False
        self.tasks: list[asyncio.Task] = []

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self._conn()) for _ in range(self.concurrency)]

    async def close(self) -> None:
        self.stop = True
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _conn(self) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            while not self.stop:
                t0 = time.monotonic()
                writer.write(self.req)
                head = await reader.readuntil(b"\r\n\r\n")
                status, length, role = int(head[9:12]), 0, "?"
                for line in head.split(b"\r\n"):
                    low = line.lower()
                    if low.startswith(b"content-length:"):
                        length = int(line[15:])
                    elif low.startswith(b"x-model-role:"):
                        role = line[13:].strip().decode()
                if length:
                    await reader.readexactly(length)
                self.records.append((t0, time.monotonic(), status, role))
        except (OSError, asyncio.IncompleteReadError) as e:
            self.records.append((time.monotonic(), time.monotonic(), 0, repr(e)))
        finally:
            writer.close()


def stats(recs: list[tuple[float, float, int, str]]) -> dict:
    lat = sorted(1000 * (b - a) for a, b, s, _ in recs if s == 200)

    def pct(p: float) -> float:
        return round(lat[min(len(lat) - 1, int(p * len(lat)))], 2) if lat else float("nan")

    return {
        "requests": len(recs),
        "failed": sum(1 for r in recs if r[2] != 200),
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "max_ms": round(lat[-1], 2) if lat else float("nan"),
    }


async def get_json(url: str) -> dict:
    return await asyncio.to_thread(lambda: json.loads(urllib.request.urlopen(url, timeout=10).read()))


async def reload_under_load(tmp: Path, concurrency: int, reloads: int, steady_s: float, probe: bool) -> dict:
    key = b"benchmark-hmac-key"
    (tmp / "hmac.key").write_bytes(key)
    dest = tmp / f"models-{'probe' if probe else 'noprobe'}"
    seeds = [exported(0), exported(1)]
    publish(seeds[0], dest, "v0", key)
    proc, url = await asyncio.to_thread(
        start_server,
        ["--model-dir", str(dest), "--hmac-key-file", str(tmp / "hmac.key"), "--reload-poll-s", "0"],
        {"PADDLE_RUNTIME_RELOAD_PROBE": "true" if probe else "false"},
        tmp / f"serve-reload-{probe}.log",
    )
    load = Load(int(url.rsplit(":", 1)[1]), concurrency)
    windows: list[dict] = []
    try:
        load.start()
        await asyncio.sleep(2.0)  # warm connections and caches
        for i in range(1, reloads + 1):
            s0 = time.monotonic()
            await asyncio.sleep(steady_s)
            s1 = time.monotonic()
            await asyncio.to_thread(publish, seeds[i % 2], dest, f"v{i}", key)
            r0 = time.monotonic()
            proc.send_signal(signal.SIGHUP)
            while (await get_json(url + "/version"))["version"] != f"v{i}":
                if time.monotonic() - r0 > 120:
                    raise RuntimeError("reload did not finish in 120 s")
                await asyncio.sleep(0.05)
            loaded = time.monotonic()
            await asyncio.sleep(1.0)  # the old engine is retired in this second
            r1 = time.monotonic()
            windows.append({"steady": (s0, s1), "reload": (r0, r1), "reload_s": round(loaded - r0, 2)})
            await asyncio.sleep(0.5)
        info = await get_json(url + "/version")
    finally:
        await load.close()
        await asyncio.to_thread(stop_server, proc)

    def pick(kind: str) -> list:
        return [r for r in load.records for w in windows if w[kind][0] <= r[0] < w[kind][1]]

    steady, during = stats(pick("steady")), stats(pick("reload"))
    return {
        "child_process_check": probe,
        "concurrency": concurrency,
        "reloads": reloads,
        "reload_seconds": [w["reload_s"] for w in windows],
        "steady": steady,
        "during_reload": during,
        "p99_ratio": round(during["p99_ms"] / steady["p99_ms"], 2) if steady["p99_ms"] else None,
        "failed_total": stats(load.records)["failed"],
        "reloads_reported": info["reloads"],
    }


async def fallback_switch(tmp: Path, concurrency: int) -> dict:
    faults, config = tmp / "faults.yaml", tmp / "runtime.yaml"
    faults.write_text("{}\n")
    config.write_text(
        yaml.safe_dump(
            {
                "fallback_latency_threshold_ms": 200,
                "fallback_window": 10,
                "fallback_error_threshold": 3,
                "fallback_hold_s": 2,
                "fallback_ramp_step_s": 1,
            }
        )
    )
    proc, url = await asyncio.to_thread(
        start_server,
        ["--model-dir", str(exported(0)), "--fallback-model-dir", str(exported(1)), "--config", str(config)],
        {"PADDLE_RUNTIME_FAULT_INJECTION_FILE": str(faults), "PADDLE_RUNTIME_RELOAD_POLL_S": "0"},
        tmp / "serve-fallback.log",
    )
    load = Load(int(url.rsplit(":", 1)[1]), concurrency)
    out: dict = {"concurrency": concurrency}
    try:
        load.start()
        for name, fault in (("errors", {"main": {"fail": True}}), ("latency", {"main": {"delay_ms": 500}})):
            await asyncio.sleep(3.0)
            mark = len(load.records)
            t_fault = time.monotonic()
            faults.write_text(yaml.safe_dump(fault))
            while (await get_json(url + "/version"))["fallback"]["state"] != "fallback":
                if time.monotonic() - t_fault > 60:
                    raise RuntimeError(f"no switch on {name}")
                await asyncio.sleep(0.02)
            await asyncio.sleep(1.0)
            after = sorted(load.records[mark:], key=lambda r: r[1])
            first_fb = next(i for i, r in enumerate(after) if r[3] == "fallback")
            out[name] = {
                "client_errors": sum(1 for r in after if r[2] != 200),
                "main_answers_before_first_fallback_answer": first_fb,
                "first_fallback_answer_after_ms": round(1000 * (after[first_fb][1] - t_fault), 1),
                "fallback_answer_latency_p50_ms": stats([r for r in after if r[3] == "fallback"])["p50_ms"],
                "switch_reason": (await get_json(url + "/version"))["fallback"]["last_switch_reason"],
            }
            faults.write_text("{}\n")
            while (await get_json(url + "/version"))["fallback"]["state"] != "main":
                if time.monotonic() - t_fault > 120:
                    raise RuntimeError("no recovery")
                await asyncio.sleep(0.1)
        out["failed_total"] = stats(load.records)["failed"]
    finally:
        await load.close()
        await asyncio.to_thread(stop_server, proc)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="2 reloads, shorter windows, probe variant only")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--reloads", type=int, default=3)
    p.add_argument("--steady-s", type=float, default=6.0)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "resilience.json"))
    a = p.parse_args()
    if a.quick:
        a.reloads, a.steady_s = 2, 4.0
    if (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {1})  # the load generator stays off the server's core
    tmp = Path(tempfile.mkdtemp(prefix="paddle-resilience-bench-"))
    results: dict = {
        "machine": {"cpus": os.cpu_count(), "server_cpus": "0", "loadgen_cpus": "1"},
        "model": "mobilenet_v3_small (random weights), 1x3x224x224 FP32, binary tensors",
    }
    try:
        results["reload"] = [asyncio.run(reload_under_load(tmp, a.concurrency, a.reloads, a.steady_s, True))]
        if not a.quick:
            results["reload"].append(
                asyncio.run(reload_under_load(tmp, a.concurrency, a.reloads, a.steady_s, False))
            )
        results["fallback"] = asyncio.run(fallback_switch(tmp, a.concurrency))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(results, indent=1) + "\n")
    print(
        f"{'reload (c=' + str(a.concurrency) + ')':<28} {'steady p50/p99 ms':>18} {'reload p50/p99 ms':>18} {'p99 x':>6} {'failed':>6}"
    )
    for r in results["reload"]:
        name = "with child check" if r["child_process_check"] else "without child check"
        st, du = r["steady"], r["during_reload"]
        print(
            f"{name:<28} {st['p50_ms']:>8.1f}/{st['p99_ms']:<9.1f} {du['p50_ms']:>8.1f}/{du['p99_ms']:<9.1f}"
            f" {r['p99_ratio']:>6} {r['failed_total']:>6}"
        )
    for name in ("errors", "latency"):
        f = results["fallback"][name]
        print(
            f"fallback on {name:<8} client errors {f['client_errors']}, main answers before first fallback "
            f"answer {f['main_answers_before_first_fallback_answer']}, first fallback answer after "
            f"{f['first_fallback_answer_after_ms']} ms"
        )
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
